"""Quality benchmark: methods x ratios x allocations on one model, dense vs pruned on the same tokens.

Every variant is sliced in memory from the dense weights and scored against the dense model's cached
predictions on the bundled texts of every genre (ordinary English neither we nor the model wrote;
see ``prunenet.texts.BUNDLED``) and on text the dense model generates itself. Trained methods are trained
once at ``--train-ratio`` and the same policy prunes every ratio ("prune once"); ``--prune-once-check``
also trains the default method at each ratio to measure what reuse costs.

    python examples/quality_benchmark.py --out bench-results/quality
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import torch

from prunenet.evaluation.reference import DenseReference
from prunenet.evaluation.windows import token_windows
from prunenet.planning.planner import PruneConfig, make_plan
from prunenet.policy.network import save_policy
from prunenet.source.loaders import load_causal_lm, load_tokenizer
from prunenet.source.resolve import resolve_model
from prunenet.texts import BUNDLED, GENRES, genre_text, self_generated_text

VARIANTS = [  # (label, method, self_data)
    ("random", "random", 0),
    ("magnitude", "magnitude", 0),
    ("prunenet-paper", "prunenet-paper", 0),
    ("prunenet (weights only)", "prunenet", 0),
    ("prunenet (self-data)", "prunenet", 2048),
]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default=None)
    ap.add_argument("--out", type=Path, default=Path("bench-results/quality"))
    ap.add_argument("--ratios", type=float, nargs="+", default=[0.1, 0.2, 0.3])
    ap.add_argument("--allocations", nargs="+", default=["uniform", "sensitivity"])
    ap.add_argument("--variants", nargs="+", default=[v[0] for v in VARIANTS])
    ap.add_argument("--train-ratio", type=float, default=0.3)
    ap.add_argument("--episodes", type=int, default=20)
    ap.add_argument("--self-tokens", type=int, default=2048, help="self-data tokens of the self-data variant")
    ap.add_argument("--full", action="store_true", help="score the whole bundled texts, not their quick slices")
    ap.add_argument("--prune-once-check", action="store_true")
    args = ap.parse_args()
    torch.set_num_threads(max(1, torch.get_num_threads()))
    source = resolve_model(args.model)
    model, tok = load_causal_lm(source.path), load_tokenizer(source.path)
    refs = {genre: DenseReference(model, token_windows(tok, genre_text(genre, args.full), seq_len=512))
            for genre in GENRES}
    refs["self"] = DenseReference(model, token_windows(tok, self_generated_text(model, tok, 8, 200, seed=1234),
                                                       seq_len=256))
    rows: list[dict] = []
    args.out.mkdir(parents=True, exist_ok=True)
    texts: dict[int, list] = {}  # one self-text per token count, shared by every plan that uses it
    with tempfile.TemporaryDirectory() as tmp:
        for label, method, self_data in VARIANTS:
            if label not in args.variants:
                continue
            for allocation in args.allocations:
                policy_path = None
                for ratio in sorted(args.ratios, key=lambda r: r != args.train_ratio):
                    cfg = PruneConfig(ratio=ratio, method=method, allocation=allocation, episodes=args.episodes,
                                      self_data=self_data if self_data == 0 else args.self_tokens, policy=policy_path)
                    start = time.perf_counter()
                    result = make_plan(source.path, cfg, source_name=source.name, self_text=texts.get(cfg.self_data))
                    seconds = time.perf_counter() - start
                    if result.self_text is not None:
                        texts.setdefault(cfg.self_data, result.self_text)
                    if result.policy is not None and policy_path is None:
                        policy_path = Path(tmp) / f"{label}-{allocation}.safetensors".replace(" ", "_")
                        save_policy(result.policy, policy_path, result.policy_metadata)
                    rows.append(_score(refs, result.plan, label, allocation, ratio, seconds, reused=cfg.policy is not None))
                    print(_line(rows[-1]), flush=True)
        if args.prune_once_check:
            for ratio in args.ratios:
                if ratio == args.train_ratio:
                    continue
                cfg = PruneConfig(ratio=ratio, method="prunenet", allocation="sensitivity", episodes=args.episodes,
                                  self_data=args.self_tokens)
                result = make_plan(source.path, cfg, source_name=source.name, self_text=texts.get(cfg.self_data))
                rows.append(_score(refs, result.plan, "prunenet (self-data), trained at this ratio", "sensitivity",
                                   ratio, 0.0, reused=False))
                print(_line(rows[-1]), flush=True)
    meta = {"model": source.name, "texts": BUNDLED, "full_texts": args.full, "episodes": args.episodes,
            "train_ratio": args.train_ratio, "dense_ppl": {k: r.ppl for k, r in refs.items()},
            "tokens": {k: sum(w.numel() - 1 for w in r.windows) for k, r in refs.items()}}
    (args.out / "quality.json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=1))
    (args.out / "quality.md").write_text(to_markdown(rows, meta))
    print(to_markdown(rows, meta))


def _score(refs, plan, label, allocation, ratio, seconds, reused) -> dict:
    row = {"variant": label, "allocation": allocation, "ratio": ratio, "plan_seconds": round(seconds, 1),
           "policy_reused": reused, "widths": plan.widths}
    for name, ref in refs.items():
        q = ref.compare_plan(plan)
        row[name] = {"ppl": q.pruned_ppl, "ppl_ratio": q.ppl_ratio, "kl": q.kl, "top1": q.top1_agreement}
    return row


def _line(row: dict) -> str:
    scores = " | ".join(f"{name} ppl x{row[name]['ppl_ratio']:.2f} KL {row[name]['kl']:.3f}"
                        for name in (*GENRES, "self"))
    return f"{row['variant']:<28} {row['allocation']:<11} {row['ratio']:.1f}  {scores}"


def to_markdown(rows: list[dict], meta: dict) -> str:
    names = (*GENRES, "self")
    dense = ", ".join(f"{meta['dense_ppl'][n]:.2f} on {n} text ({meta['tokens'][n]} tokens)" for n in names)
    lines = [
        f"Model: {meta['model']}; dense perplexity {dense}.",
        "",
        "| method | allocation | ratio | " + " | ".join(f"{n} ppl (x dense) | {n} KL" for n in names) + " | fiction top-1 |",
        "|---|---|---:|" + "---:|" * (2 * len(names) + 1),
    ]
    for row in rows:
        cells = " | ".join(f"{row[n]['ppl']:.1f} (x{row[n]['ppl_ratio']:.2f}) | {row[n]['kl']:.3f}" for n in names)
        lines.append(f"| {row['variant']} | {row['allocation']} | {row['ratio']} | {cells} | "
                     f"{row[GENRES[0]]['top1']:.3f} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
