"""Scale benchmark: random-weight checkpoints of real LLaMA shapes, pruned and timed phase by phase.

Why: the export must stay flat in memory as depth grows, and this measures it on real shapes. ``run`` prunes
checkpoints with ``prunenet-export`` under ``/usr/bin/time`` and prints one table (wall time, peak RSS and the
export's per-phase numbers), the growth per layer between the smallest and the largest depth, and a linear
extrapolation. ``build`` writes a random-weight checkpoint of a real shape (``scale_checkpoints.py`` does it).

Example:
    python examples/scale_benchmark.py build --shape llama2-7b --layers 8 --out ckpt/llama2-7b-8
    python examples/scale_benchmark.py run --shape llama2-7b --layers-list 8,16,32 --build \\
        --cache ckpt --mode defaults --mode weights-only --target vllm --report scale.md
    python examples/scale_benchmark.py run --model ckpt/llama2-7b-8 --mode weights-only --target hf
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from contextlib import suppress
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

# examples/ is no package: import the sibling builder from this file's directory, also when loaded by path.
sys.path.insert(0, str(Path(__file__).resolve().parent))
import scale_checkpoints as ck  # noqa: E402

# ------------------------------------------------------------------------------------------------ run

PHASES = ["read", "self-text", "capture", "training", "allocation", "write", "validate", "eval"]
MODES = {"defaults": [], "weights-only": ["--self-data", "0", "--no-eval"]}


@dataclass
class RunResult:
    model: str
    layers: int | None
    mode: str
    target: str
    wall_s: float
    peak_rss_gb: float
    returncode: int
    phases: dict[str, dict[str, float]] | None  # name -> {"seconds", "peak_rss_mb"}; None: not reported
    command: list[str] = field(default_factory=list)
    report: dict[str, Any] | None = None
    shape: str = "?"


def export_bin() -> str:
    """prunenet-export beside this interpreter (the venv), else from PATH."""
    local = Path(sys.executable).parent / "prunenet-export"
    return str(local) if local.exists() else (shutil.which("prunenet-export") or "prunenet-export")


def export_command(model: Path, out: Path, mode: str, target: str, device: str, ratio: float,
                   extra: Sequence[str] = ()) -> list[str]:
    return [export_bin(), "--model", str(model), "--ratio", str(ratio), "--target", target, "--out", str(out),
            "--force", "--json", "--device", device, *MODES[mode], *extra]


def timed_run(cmd: list[str], workdir: Path, timeout: float | None) -> tuple[int, float, float, str, str]:
    """Run ``cmd``; return (returncode, wall s, peak RSS KB, stdout, stderr).

    Uses ``/usr/bin/time -f "%e %M"`` when present (the issue's measure); otherwise ``os.wait4``, which
    reads the same kernel counter (the child's max RSS, as GNU time does).
    """
    workdir.mkdir(parents=True, exist_ok=True)
    out_f, err_f, time_f = (workdir / n for n in ("stdout.txt", "stderr.txt", "time.txt"))
    gnu_time = Path("/usr/bin/time").exists()
    full = ["/usr/bin/time", "-o", str(time_f), "-f", "%e %M", *cmd] if gnu_time else cmd
    deadline = math.inf if timeout is None else time.monotonic() + timeout
    sig = signal.SIGTERM
    t0 = time.monotonic()
    with open(out_f, "w") as so, open(err_f, "w") as se:
        proc = subprocess.Popen(full, stdout=so, stderr=se, start_new_session=True)
        while True:  # reap it ourselves: wait4 hands back this child's own rusage
            pid, status, rusage = os.wait4(proc.pid, os.WNOHANG)
            if pid:
                break
            if time.monotonic() > deadline:  # the whole group: time and the export under it
                print(f"   timeout after {timeout} s: sending {sig.name}", file=sys.stderr, flush=True)
                os.killpg(proc.pid, sig)
                sig, deadline = signal.SIGKILL, time.monotonic() + 30
            time.sleep(0.2)
    proc.returncode = os.waitstatus_to_exitcode(status)
    wall, rss_kb = time.monotonic() - t0, float(rusage.ru_maxrss)
    if gnu_time:
        fields = time_f.read_text().split() if time_f.exists() else []
        # "Command exited with non-zero status N" may come first; the numbers are the last two words.
        if len(fields) >= 2 and fields[-1].isdigit():
            wall, rss_kb = float(fields[-2]), float(fields[-1])
    return proc.returncode, wall, rss_kb, out_f.read_text(), err_f.read_text()


def parse_report(stdout: str) -> dict[str, Any] | None:
    """The export's JSON result: the last stdout line that parses as a JSON object."""
    for line in reversed(stdout.strip().splitlines()):
        if line.startswith("{"):
            with suppress(ValueError):
                return json.loads(line)
    return None


def phases_of(report: dict[str, Any] | None) -> dict[str, dict[str, float]] | None:
    """``report["phases"]`` as {name: {"seconds", "peak_rss_mb"}}; None when the build does not report it."""
    if not report or not isinstance(report.get("phases"), list):
        return None
    out: dict[str, dict[str, float]] = {}
    for ph in report["phases"]:
        if isinstance(ph, dict) and "name" in ph:
            out[str(ph["name"])] = {"seconds": float(ph.get("seconds", math.nan)),
                                    "peak_rss_mb": float(ph.get("peak_rss_mb", math.nan))}
    return out


# ------------------------------------------------------------------------------------------- reporting


def _fmt(x: float | None, nd: int = 1) -> str:
    return "-" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.{nd}f}"


def phase_cell(phases: dict[str, dict[str, float]] | None, name: str) -> str:
    ph = (phases or {}).get(name)
    return "-" if ph is None else f"{_fmt(ph['seconds'])} s / {_fmt(ph['peak_rss_mb'] / 1024, 2)} GiB"


def phase_names(results: list[RunResult]) -> list[str]:
    """The known phases in pipeline order, then any other name a report used (so none is dropped)."""
    seen = [name for r in results for name in (r.phases or {})]
    return PHASES + [name for name in dict.fromkeys(seen) if name not in PHASES]


def results_table(results: list[RunResult]) -> str:
    """A Markdown table: one row per run, one column per phase ("seconds / peak RSS")."""
    names = phase_names(results)
    head = ["shape", "layers", "mode", "wall s", "peak RSS GiB", *names]
    rows = [head, ["---"] * len(head)]
    for r in results:
        status = "" if r.returncode == 0 else f" (rc {r.returncode})"
        rows.append([r.shape, str(r.layers if r.layers is not None else "?"), r.mode + status, _fmt(r.wall_s),
                     _fmt(r.peak_rss_gb, 2), *(phase_cell(r.phases, p) for p in names)])
    return "\n".join("| " + " | ".join(row) + " |" for row in rows)


def growth(results: list[RunResult], extrapolate_to: int | None) -> list[dict[str, Any]]:
    """Per (shape, mode): per-layer growth between the smallest and the largest depth, and a linear extrapolation.

    per_layer = max(0, (value(L_max) - value(L_min)) / (L_max - L_min)), value(N) = value(L_max) + per_layer *
    (N - L_max), for the total and every phase: a flat peak measured with noise never extrapolates downward."""
    out = []
    for shape, mode in dict.fromkeys((r.shape, r.mode) for r in results):
        ok = sorted((r for r in results if (r.shape, r.mode) == (shape, mode) and r.returncode == 0 and r.layers),
                    key=lambda r: r.layers)
        if len(ok) < 2 or ok[0].layers == ok[-1].layers:
            continue
        lo, hi = ok[0], ok[-1]
        dl = hi.layers - lo.layers
        series = {"wall s": (lo.wall_s, hi.wall_s), "peak RSS GiB": (lo.peak_rss_gb, hi.peak_rss_gb)}
        for p in phase_names([lo, hi]):
            if lo.phases and hi.phases and p in lo.phases and p in hi.phases:
                series[f"{p} s"] = (lo.phases[p]["seconds"], hi.phases[p]["seconds"])
                series[f"{p} GiB"] = (lo.phases[p]["peak_rss_mb"] / 1024, hi.phases[p]["peak_rss_mb"] / 1024)
        for quantity, (a, b) in series.items():
            per = max(0.0, (b - a) / dl)
            row = {"shape": shape, "mode": mode, "quantity": quantity, "layers": f"{lo.layers}->{hi.layers}", "at_min": a,
                   "at_max": b, "per_layer": per, "ratio_max_min": b / a if a else math.nan}
            if extrapolate_to:
                row[f"at_{extrapolate_to}"] = b + per * (extrapolate_to - hi.layers)
            out.append(row)
    return out


def growth_table(rows: list[dict[str, Any]], extrapolate_to: int | None) -> str:
    head = ["shape", "mode", "quantity", "layers", "at min", "at max", "max/min", "per layer"]
    if extrapolate_to:
        head.append(f"at {extrapolate_to} layers")
    lines = [head, ["---"] * len(head)]
    for r in rows:
        line = [r["shape"], r["mode"], r["quantity"], r["layers"], _fmt(r["at_min"], 2), _fmt(r["at_max"], 2),
                _fmt(r["ratio_max_min"], 2), _fmt(r["per_layer"], 3)]
        if extrapolate_to:
            line.append(_fmt(r[f"at_{extrapolate_to}"], 1))
        lines.append(line)
    return "\n".join("| " + " | ".join(x) + " |" for x in lines)


# ------------------------------------------------------------------------------------------------- CLI


def _layers_list(text: str) -> list[int]:
    try:
        values = [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a comma-separated list of integers: {text!r}") from None
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError("layer counts must be positive")
    return values


def _checkpoints(args: argparse.Namespace) -> list[Path]:
    if args.model:
        return list(args.model)
    if not args.shape or not args.layers_list:
        raise SystemExit("error: give --model DIR (repeatable) or --shape with --layers-list")
    return [ck.cached_checkpoint(args.cache, args.shape, n, args.dtype, args.seed, args.build_device, args.build)
            for n in args.layers_list]


def cmd_run(args: argparse.Namespace) -> int:
    models = _checkpoints(args)
    args.out_root.mkdir(parents=True, exist_ok=True)
    results: list[RunResult] = []
    failed: RunResult | None = None
    for model, mode in [(m, mode) for m in models for mode in args.mode]:
        out = args.out_root / f"{model.name}-{mode}"
        cmd = export_command(model, out, mode, args.target, args.device, args.ratio, args.export_arg)
        print(f"== {' '.join(cmd)}", file=sys.stderr, flush=True)
        rc, wall, rss_kb, stdout, stderr = timed_run(cmd, args.out_root / "logs" / out.name, args.timeout)
        report = parse_report(stdout)
        res = RunResult(str(model), ck.checkpoint_layers(model), mode, args.target, wall, rss_kb / 1024**2, rc,
                        phases_of(report), cmd, report, ck.checkpoint_shape(model))
        results.append(res)
        print(f"   rc {rc}, {wall:.1f} s, peak RSS {res.peak_rss_gb:.2f} GiB", file=sys.stderr, flush=True)
        if not args.keep:
            shutil.rmtree(out, ignore_errors=True)  # a 32-layer 7B export is ~9 GB
        if rc != 0:
            failed = res
            print(f"error: export failed (rc {rc}); last stderr lines:\n{stderr[-3000:]}", file=sys.stderr)
            break
    rows = growth(results, args.extrapolate_layers)
    text = f"## Runs (target {args.target}, ratio {args.ratio}, device {args.device})\n\n{results_table(results)}\n"
    if rows:
        text += f"\n## Growth per layer\n\n{growth_table(rows, args.extrapolate_layers)}\n"
    print(text)
    if args.report:
        args.report.write_text(text)
    json_path = args.json or (args.report.with_suffix(".json") if args.report else args.out_root / "scale.json")
    json_path.write_text(json.dumps({"runs": [asdict(r) for r in results], "growth": rows}, indent=2,
                                    default=str) + "\n")
    print(f"results: {json_path}" + (f", {args.report}" if args.report else ""), file=sys.stderr)
    return 1 if failed else 0


def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 epilog="Example:\n" + __doc__.split("Example:\n", 1)[1],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="command", required=True)

    b = sub.add_parser("build", help="write a random-weight checkpoint of a real shape (scale_checkpoints.py)")
    ck.add_build_arguments(b).set_defaults(fn=ck.cmd_build)

    r = sub.add_parser("run", help="prune checkpoints with prunenet-export and tabulate time and peak RSS")
    r.add_argument("--model", type=Path, action="append", help="checkpoint directory (repeatable)")
    r.add_argument("--shape", choices=sorted(ck.SHAPES), help="with --layers-list: use (or --build) cached shapes")
    r.add_argument("--layers-list", type=_layers_list, help="e.g. 8,16,32")
    r.add_argument("--cache", type=Path, default=Path("scale-checkpoints"),
                   help="where --shape checkpoints live  [default: scale-checkpoints]")
    r.add_argument("--build", action="store_true", help="build missing --shape checkpoints first")
    r.add_argument("--build-device", choices=["cpu", "cuda", "auto"], default="auto")
    r.add_argument("--dtype", choices=sorted(ck.DTYPES), default="bfloat16", help="dtype of built checkpoints")
    r.add_argument("--seed", type=int, default=0, help="seed of built checkpoints")
    r.add_argument("--mode", choices=sorted(MODES), action="append",
                   help="defaults: every export default; weights-only: --self-data 0 --no-eval. "
                        "Repeatable  [default: defaults]")
    r.add_argument("--target", choices=["hf", "vllm", "onnx"], default="vllm")
    r.add_argument("--ratio", type=float, default=0.3)
    r.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    r.add_argument("--export-arg", action="append", default=[], metavar="ARG",
                   help="extra argument for prunenet-export (repeatable), e.g. --export-arg=--episodes=2")
    r.add_argument("--out-root", type=Path, default=Path("scale-out"), help="exports and logs go here")
    r.add_argument("--keep", action="store_true", help="keep the exports (default: delete each after its run)")
    r.add_argument("--timeout", type=float, default=None, help="seconds per export before it is stopped")
    r.add_argument("--extrapolate-layers", type=int, default=None, metavar="N",
                   help="also extrapolate linearly to N layers (e.g. 80)")
    r.add_argument("--report", type=Path, help="write the tables as Markdown here (and JSON beside it)")
    r.add_argument("--json", type=Path, help="JSON results file  [default: beside --report, or OUT_ROOT/scale.json]")
    r.set_defaults(fn=cmd_run)
    return ap


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    if args.command == "run" and not args.mode:
        args.mode = ["defaults"]
    return args.fn(args)


if __name__ == "__main__":
    sys.exit(main())
