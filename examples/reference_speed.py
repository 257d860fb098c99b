"""Engine speed and memory vs the authors' own package (efficient-pruners 0.1.0), same model and settings.

Both prune the default model (SmolLM2-135M) at ratio 0.3 with 20 episodes, each in its own
subprocess so wall time and peak RSS are measured the same way. The reference is installed with
``pip install --no-deps`` (plus scipy) into a throwaway directory, never into the project venv; it
picks the architecture by the substring "llama" in the model path, so it gets a symlink named so.

    python examples/reference_speed.py [--episodes 20] [--ratio 0.3]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
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


def _measure(cmd: list[str], env: dict) -> dict:
    start = time.perf_counter()
    proc = psutil.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    peak = 0
    while proc.poll() is None:
        with contextlib.suppress(psutil.Error):
            peak = max(peak, sum(p.memory_info().rss for p in [proc, *proc.children(recursive=True)]))
        time.sleep(0.05)
    seconds = time.perf_counter() - start
    if proc.returncode != 0:
        raise SystemExit(f"{cmd[:3]} failed:\n{proc.stderr.read().decode()[-2000:]}")
    return {"seconds": round(seconds, 2), "peak_rss_mb": round(peak / 2**20, 1)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--episodes", type=int, default=20)
    ap.add_argument("--ratio", type=float, default=0.3)
    ap.add_argument("--method", default="prunenet-paper", help="our method to time (same reward as the reference)")
    args = ap.parse_args()
    from prunenet.source.resolve import resolve_model

    model = resolve_model(None).path
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "2"), "HF_HUB_OFFLINE": "1"}
    with tempfile.TemporaryDirectory() as tmp:
        site = Path(tmp) / "site"
        subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", str(site), REFERENCE,
                        "scipy"], check=True)
        link = Path(tmp) / "smollm2-llama"
        link.symlink_to(model)
        ours = _measure([sys.executable, "-c", _OURS, str(model), str(args.ratio), str(args.episodes), args.method], env)
        ref_env = {**env, "PYTHONPATH": str(site)}
        ref = _measure([sys.executable, "-c", _REFERENCE, str(link), str(args.ratio), str(args.episodes),
                        str(Path(tmp) / "ckpt")], ref_env)
    result = {"episodes": args.episodes, "ratio": args.ratio, "ours": {"method": args.method, **ours},
              "reference": {"package": REFERENCE, **ref},
              "speedup": round(ref["seconds"] / ours["seconds"], 2),
              "memory_ratio": round(ours["peak_rss_mb"] / ref["peak_rss_mb"], 3)}
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
