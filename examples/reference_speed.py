"""Engine speed and memory vs the authors' own package (efficient-pruners 0.1.0), same model and settings.

Both prune the default model (SmolLM2-135M) at ratio 0.3 with 20 episodes: ours as the export command
with every default (``--no-eval --no-heal``) and as the paper's method alone, each in its own
subprocess so wall time and peak RSS are measured the same way. The two sides alternate (ours,
reference, ours, reference, ...) so a machine that gets busier or quieter during the run biases
neither; the result takes each side's median. Every measurement is printed as it finishes, and a
failed or stopped run is reported with what was measured before it, not lost. The reference is
installed with ``pip install --no-deps`` (plus scipy) into a throwaway directory, never into the
project venv; it picks the architecture by the substring "llama" in the model path, so it gets a
symlink named so.

    python examples/reference_speed.py [--ours defaults prunenet-paper] [--episodes 20] [--ratio 0.3]
        [--rounds 2] [--timeout 3600]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil

REFERENCE = "efficient-pruners==0.1.0"

_OURS = """
import sys, torch
from prunenet.planning.planner import PruneConfig, make_plan
from prunenet.source.loaders import load_causal_lm
from prunenet.planning.surgery import apply_plan_
res = make_plan(sys.argv[1], PruneConfig(ratio=float(sys.argv[2]), method=sys.argv[4], episodes=int(sys.argv[3]),
                                         allocation="uniform", align=1))
apply_plan_(load_causal_lm(sys.argv[1]), res.plan)
"""

_REFERENCE = """
import sys
from efficient_pruners import PruneNet, PruningConfig
pruner = PruneNet(PruningConfig(num_episodes=int(sys.argv[3]), learning_rate=1e-3, device="cpu", save_dir=sys.argv[4]))
pruner.fit(sys.argv[1], compression_ratio=float(sys.argv[2]))
pruner.compress(float(sys.argv[2]))
"""


def _measure(cmd: list[str], env: dict, timeout: float) -> dict:
    """Wall time and peak RSS (the process and its children) of one run; a failure or timeout is recorded.

    stderr goes to a file, not a pipe (a full pipe would stall the run); a stopped reference run reports
    how many of its episodes it had finished (its log says ``Episode k/N``).
    """
    with tempfile.TemporaryFile() as err:
        start = time.perf_counter()
        proc = psutil.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=err)
        peak, stopped = 0, False
        while proc.poll() is None:
            with contextlib.suppress(psutil.Error):
                peak = max(peak, sum(p.memory_info().rss for p in [proc, *proc.children(recursive=True)]))
            if time.perf_counter() - start > timeout:
                stopped = True
                for p in [*proc.children(recursive=True), proc]:
                    with contextlib.suppress(psutil.Error):
                        p.kill()
                proc.wait()
                break
            time.sleep(0.05)
        out = {"seconds": round(time.perf_counter() - start, 2), "peak_rss_mb": round(peak / 2**20, 1)}
        err.seek(0)
        log = err.read().decode(errors="replace")
    episodes = re.findall(r"Episode (\d+)/\d+", log)
    if stopped:
        out["stopped_after_timeout"] = True
        if episodes:
            out["episodes_done"] = int(episodes[-1])
    elif proc.returncode != 0:
        out["error"] = log.strip().splitlines()[-1:] or [f"exit {proc.returncode}"]
    return out


def _summary(runs: list[dict]) -> dict:
    """Median over the runs that completed (a stopped run is a lower bound on the time, kept apart)."""
    done = [r for r in runs if "error" not in r and not r.get("stopped_after_timeout")]
    out: dict = {"runs": runs}
    if done:
        out["seconds"] = statistics.median(r["seconds"] for r in done)
        out["peak_rss_mb"] = statistics.median(r["peak_rss_mb"] for r in done)
    stopped = [r for r in runs if r.get("stopped_after_timeout")]
    if stopped:
        out["seconds_at_least"] = min(r["seconds"] for r in stopped)
        out["peak_rss_mb_at_least"] = max(r["peak_rss_mb"] for r in stopped)
    return out


def _ours(name: str, model: Path, args: argparse.Namespace, tmp: Path) -> list[str]:
    """Our side: ``defaults`` is the export command with every default but the report and healing (``--no-eval
    --no-heal``: the reference has neither); any other name is that planning method alone, like the reference's ``fit`` + ``compress``."""
    if name == "defaults":
        exe = Path(sys.executable).with_name("prunenet-export")
        return [str(exe), "--model", str(model), "--ratio", str(args.ratio), "--episodes", str(args.episodes),
                "--no-eval", "--no-heal", "--force", "--out", str(tmp / "out")]
    return [sys.executable, "-c", _OURS, str(model), str(args.ratio), str(args.episodes), name]


def _compare(ours: dict, ref: dict, runs: list[dict], episodes: int) -> dict:
    """Speed-up and memory ratio of one of our sides against the reference (bounds when it was stopped)."""
    out: dict = {}
    ref_s, ref_mb = ref.get("seconds", ref.get("seconds_at_least")), ref.get("peak_rss_mb", ref.get("peak_rss_mb_at_least"))
    if "seconds" not in ours or ref_s is None:
        return out
    bound = "" if "seconds" in ref else "_at_least"
    out["speedup" + bound] = round(ref_s / ours["seconds"], 2)
    out["memory_ratio" + ("" if "seconds" in ref else "_at_most")] = round(ours["peak_rss_mb"] / ref_mb, 3)
    paced = [r["seconds"] * episodes / r["episodes_done"] for r in runs if r.get("episodes_done")]
    if "seconds" not in ref and paced:  # stopped runs: their pace per finished episode, over every episode
        out["speedup_projected"] = round(statistics.median(paced) / ours["seconds"], 1)
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--episodes", type=int, default=20)
    ap.add_argument("--ratio", type=float, default=0.3)
    ap.add_argument("--ours", nargs="+", default=["defaults", "prunenet-paper"],
                    help="our sides: 'defaults' (prunenet-export, every default, --no-eval --no-heal) and/or planning "
                         "methods timed alone (prunenet-paper has the reference's reward)")
    ap.add_argument("--rounds", type=int, default=2, help="alternations of (ours..., reference)")
    ap.add_argument("--timeout", type=float, default=3600.0, help="stop one run after this many seconds")
    args = ap.parse_args()
    if args.rounds < 1 or args.episodes < 1 or args.timeout <= 0:
        ap.error("--rounds, --episodes and --timeout must be positive")
    from prunenet.source.resolve import resolve_model

    model = resolve_model(None).path
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "2"), "HF_HUB_OFFLINE": "1"}
    runs: dict[str, list[dict]] = {**{f"ours:{name}": [] for name in args.ours}, "reference": []}
    with tempfile.TemporaryDirectory() as tmp:
        site = Path(tmp) / "site"
        subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", str(site), REFERENCE,
                        "scipy"], check=True)
        link = Path(tmp) / "smollm2-llama"
        link.symlink_to(model)
        for round_ in range(1, args.rounds + 1):
            sides = {f"ours:{name}": (_ours(name, model, args, Path(tmp)), env) for name in args.ours}
            # a fresh save_dir each round: the reference loads a policy it finds there instead of training
            sides["reference"] = ([sys.executable, "-c", _REFERENCE, str(link), str(args.ratio), str(args.episodes),
                                   str(Path(tmp) / f"ckpt-{round_}")], {**env, "PYTHONPATH": str(site)})
            for side, (cmd, side_env) in sides.items():
                run = _measure(cmd, side_env, args.timeout)
                runs[side].append(run)
                print(f"round {round_}/{args.rounds} {side}: {json.dumps(run)}", file=sys.stderr, flush=True)
    ref = _summary(runs["reference"])
    result: dict = {"episodes": args.episodes, "ratio": args.ratio, "reference": {"package": REFERENCE, **ref}}
    for name in args.ours:
        ours = _summary(runs[f"ours:{name}"])
        result[f"ours:{name}"] = {**ours, **_compare(ours, ref, runs["reference"], args.episodes)}
    print(json.dumps(result, indent=1))
    failed = any("error" in r for side in runs.values() for r in side) or any(
        "seconds" not in result[f"ours:{name}"] for name in args.ours)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
