"""Scale benchmark: random-weight checkpoints of real LLaMA shapes, pruned and timed phase by phase.

``build`` writes a random-weight Hugging Face LLaMA checkpoint of a real shape (any layer count) shard by
shard, one safetensors shard per decoder layer plus one for the embeddings, final norm and LM head, with
host memory bounded by one chunk of one tensor. ``run`` prunes checkpoints with ``prunenet-export`` under
``/usr/bin/time`` and prints one table (wall time, peak RSS, and the per-phase numbers of the export's JSON
report), the growth per layer between the smallest and the largest depth, and a linear extrapolation.

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
import struct
import subprocess
import sys
import time
import zlib
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

# --------------------------------------------------------------------------------------------- shapes


@dataclass(frozen=True)
class Shape:
    """The architecture numbers of one LLaMA-family model (everything but the depth)."""

    hidden: int
    ffn: int
    heads: int
    kv_heads: int
    vocab: int
    rope_theta: float = 10000.0
    rms_eps: float = 1e-5

    @property
    def head_dim(self) -> int:
        return self.hidden // self.heads


SHAPES: dict[str, Shape] = {
    "llama2-7b": Shape(hidden=4096, ffn=11008, heads=32, kv_heads=32, vocab=32000),
    "llama3-8b": Shape(hidden=4096, ffn=14336, heads=32, kv_heads=8, vocab=128256, rope_theta=500000.0),
    "llama3-70b": Shape(hidden=8192, ffn=28672, heads=64, kv_heads=8, vocab=128256, rope_theta=500000.0),
    # For tests: head_dim 64 (vLLM-CPU's attention kernels reject 16), FFN 688 as in the 7B's ratio.
    "tiny": Shape(hidden=256, ffn=688, heads=4, kv_heads=4, vocab=1000),
}

DTYPES = {"bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32}
# safetensors' dtype names.
_ST_DTYPE = {torch.bfloat16: "BF16", torch.float16: "F16", torch.float32: "F32"}
BOS_ID, EOS_ID, UNK_ID = 1, 2, 0
INIT_STD = 0.02  # the LLaMA initializer range: keeps activations sane through 80 random layers
CHUNK_BYTES = 256 << 20  # generate big tensors in row chunks of about this size


def layer_tensors(shape: Shape, i: int) -> list[tuple[str, tuple[int, ...], str]]:
    """(name, shape, init) of decoder layer ``i``; init is "normal" or "ones"."""
    h, f, kv = shape.hidden, shape.ffn, shape.kv_heads * shape.head_dim
    p = f"model.layers.{i}."
    return [
        (p + "input_layernorm.weight", (h,), "ones"),
        (p + "self_attn.q_proj.weight", (h, h), "normal"),
        (p + "self_attn.k_proj.weight", (kv, h), "normal"),
        (p + "self_attn.v_proj.weight", (kv, h), "normal"),
        (p + "self_attn.o_proj.weight", (h, h), "normal"),
        (p + "post_attention_layernorm.weight", (h,), "ones"),
        (p + "mlp.gate_proj.weight", (f, h), "normal"),
        (p + "mlp.up_proj.weight", (f, h), "normal"),
        (p + "mlp.down_proj.weight", (h, f), "normal"),
    ]


def outer_tensors(shape: Shape) -> list[tuple[str, tuple[int, ...], str]]:
    """Embeddings, final norm and (untied) LM head."""
    return [
        ("model.embed_tokens.weight", (shape.vocab, shape.hidden), "normal"),
        ("model.norm.weight", (shape.hidden,), "ones"),
        ("lm_head.weight", (shape.vocab, shape.hidden), "normal"),
    ]


# ---------------------------------------------------------------------------------------------- build


def _tensor_chunks(name: str, dims: tuple[int, ...], init: str, dtype: torch.dtype, seed: int,
                   device: str) -> Iterator[torch.Tensor]:
    """The tensor's values as CPU row chunks, from a generator seeded by (seed, name): reproducible."""
    if init == "ones":
        yield torch.ones(dims, dtype=dtype)
        return
    gen = torch.Generator(device=device).manual_seed(seed * 1_000_003 + zlib.crc32(name.encode()))
    row_bytes = math.prod(dims[1:]) * torch.empty((), dtype=dtype).element_size()
    step = max(1, CHUNK_BYTES // row_bytes)
    for start in range(0, dims[0], step):
        rows = min(step, dims[0] - start)
        chunk = torch.empty((rows, *dims[1:]), device=device, dtype=dtype).normal_(0.0, INIT_STD, generator=gen)
        yield chunk.cpu()


def write_safetensors(path: Path, tensors: list[tuple[str, tuple[int, ...], str]], dtype: torch.dtype,
                      seed: int, device: str) -> int:
    """Stream a safetensors file: the header first (sizes are known), then each tensor chunk by chunk.

    safetensors' own ``save_file`` needs every tensor of the shard in memory at once (2 x 2.1 GB for a
    Llama-3-70B embedding shard); the format is an 8-byte header length, a JSON header and raw
    little-endian bytes, so writing it directly keeps one chunk resident. Returns the data bytes.
    """
    item = torch.empty((), dtype=dtype).element_size()
    header: dict[str, Any] = {"__metadata__": {"format": "pt"}}
    offset = 0
    for name, dims, _ in tensors:
        nbytes = math.prod(dims) * item
        header[name] = {"dtype": _ST_DTYPE[dtype], "shape": list(dims), "data_offsets": [offset, offset + nbytes]}
        offset += nbytes
    blob = json.dumps(header, separators=(",", ":")).encode()
    blob += b" " * (-len(blob) % 8)  # the data section starts 8-byte aligned
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as fh:
        fh.write(struct.pack("<Q", len(blob)))
        fh.write(blob)
        for name, dims, init in tensors:
            for chunk in _tensor_chunks(name, dims, init, dtype, seed, device):
                # view as bytes: numpy has no bfloat16, the raw little-endian bytes are what the format wants
                fh.write(memoryview(chunk.contiguous().view(torch.uint8).numpy()))
    tmp.replace(path)
    return offset


def write_tokenizer(vocab_size: int, out: Path) -> None:
    """A word-level tokenizer with exactly ``vocab_size`` entries: <unk>, <s>, </s>, t3 .. t{V-1}.

    Every generated id decodes to a word ("t123") that re-encodes to the same id, so self-generated
    text survives the decode/encode round trip. Encoding adds <s> first, as LLaMA's tokenizer does.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    vocab = {"<unk>": UNK_ID, "<s>": BOS_ID, "</s>": EOS_ID}
    vocab.update({f"t{i}": i for i in range(3, vocab_size)})
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    # WordPiece's decoder with an unused prefix joins tokens with single spaces (the WhitespaceSplit inverse).
    tok.decoder = decoders.WordPiece(prefix="\u2581\u2581", cleanup=False)
    tok.post_processor = processors.TemplateProcessing(single="<s> $A", pair="<s> $A <s> $B",
                                                       special_tokens=[("<s>", BOS_ID)])
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", unk_token="<unk>",
                                   model_max_length=4096, clean_up_tokenization_spaces=False)
    fast.save_pretrained(out)
    # transformers 5 writes its own class name, which 4.x cannot load; the portable spelling loads in both.
    cfg_path = out / "tokenizer_config.json"
    cfg = json.loads(cfg_path.read_text())
    cfg["tokenizer_class"] = "PreTrainedTokenizerFast"
    cfg_path.write_text(json.dumps(cfg, indent=2) + "\n")


def write_config(shape: Shape, layers: int, dtype_name: str, out: Path) -> None:
    from transformers import GenerationConfig, LlamaConfig

    cfg = LlamaConfig(vocab_size=shape.vocab, hidden_size=shape.hidden, intermediate_size=shape.ffn,
                      num_hidden_layers=layers, num_attention_heads=shape.heads,
                      num_key_value_heads=shape.kv_heads, head_dim=shape.head_dim, max_position_embeddings=4096,
                      rms_norm_eps=shape.rms_eps, rope_theta=shape.rope_theta, tie_word_embeddings=False,
                      bos_token_id=BOS_ID, eos_token_id=EOS_ID, architectures=["LlamaForCausalLM"])
    data = cfg.to_diff_dict()  # what save_pretrained writes: the non-default fields
    data["torch_dtype"] = data["dtype"] = dtype_name  # both spellings: transformers 4.x and 5.x
    (out / "config.json").write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")
    GenerationConfig(bos_token_id=BOS_ID, eos_token_id=EOS_ID).save_pretrained(out)


def build_checkpoint(shape_name: str, layers: int, out: Path, dtype_name: str = "bfloat16", seed: int = 0,
                     device: str = "cpu") -> Path:
    """Write a random-weight LLaMA checkpoint into ``out``, one shard per decoder layer (see module doc)."""
    if layers < 1:
        raise ValueError("--layers must be at least 1")
    shape, dtype = SHAPES[shape_name], DTYPES[dtype_name]
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    elif device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("error: --device cuda, but torch sees no CUDA device (use --device cpu or auto)")
    out.mkdir(parents=True, exist_ok=True)
    n = layers + 1
    groups = [outer_tensors(shape)] + [layer_tensors(shape, i) for i in range(layers)]
    weight_map: dict[str, str] = {}
    total = 0
    for k, tensors in enumerate(groups):
        shard = f"model-{k + 1:05d}-of-{n:05d}.safetensors"
        total += write_safetensors(out / shard, tensors, dtype, seed, device)
        weight_map.update({name: shard for name, _, _ in tensors})
    index = {"metadata": {"total_size": total}, "weight_map": dict(sorted(weight_map.items()))}
    (out / "model.safetensors.index.json").write_text(json.dumps(index, indent=2) + "\n")
    write_config(shape, layers, dtype_name, out)
    write_tokenizer(shape.vocab, out)
    (out / "scale-benchmark.json").write_text(json.dumps(
        {"shape": shape_name, "layers": layers, "dtype": dtype_name, "seed": seed, "init_std": INIT_STD}) + "\n")
    return out


def checkpoint_ok(path: Path, shape_name: str, layers: int, dtype_name: str) -> bool:
    """True when ``path`` holds a finished build of exactly this shape/depth/dtype (written last)."""
    try:
        meta = json.loads((path / "scale-benchmark.json").read_text())
    except (OSError, ValueError):
        return False
    return (meta.get("shape"), meta.get("layers"), meta.get("dtype")) == (shape_name, layers, dtype_name)


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
            try:
                return json.loads(line)
            except ValueError:
                continue
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


def checkpoint_shape(model: Path) -> str:
    """The builder's shape name, else the directory name (a checkpoint not built here)."""
    try:
        return str(json.loads((model / "scale-benchmark.json").read_text())["shape"])
    except (OSError, ValueError, KeyError):
        return model.name


def checkpoint_layers(model: Path) -> int | None:
    try:
        return int(json.loads((model / "config.json").read_text())["num_hidden_layers"])
    except (OSError, ValueError, KeyError):
        return None


# ------------------------------------------------------------------------------------------- reporting


def _fmt(x: float | None, nd: int = 1) -> str:
    return "-" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.{nd}f}"


def phase_cell(phases: dict[str, dict[str, float]] | None, name: str) -> str:
    if not phases or name not in phases:
        return "-"
    ph = phases[name]
    return f"{_fmt(ph['seconds'])} s / {_fmt(ph['peak_rss_mb'] / 1024, 2)} GB"


def phase_names(results: list[RunResult]) -> list[str]:
    """The known phases in pipeline order, then any other name a report used (so none is dropped)."""
    seen = [name for r in results for name in (r.phases or {})]
    return PHASES + [name for name in dict.fromkeys(seen) if name not in PHASES]


def results_table(results: list[RunResult]) -> str:
    """A Markdown table: one row per run, one column per phase ("seconds / peak RSS")."""
    names = phase_names(results)
    head = ["shape", "layers", "mode", "wall s", "peak RSS GB", *names]
    rows = [head, ["---"] * len(head)]
    for r in results:
        status = "" if r.returncode == 0 else f" (rc {r.returncode})"
        rows.append([r.shape, str(r.layers if r.layers is not None else "?"), r.mode + status, _fmt(r.wall_s),
                     _fmt(r.peak_rss_gb, 2), *(phase_cell(r.phases, p) for p in names)])
    return "\n".join("| " + " | ".join(row) + " |" for row in rows)


def growth(results: list[RunResult], extrapolate_to: int | None) -> list[dict[str, Any]]:
    """Per (shape, mode): per-layer growth between the smallest and the largest depth, and a linear extrapolation.

    per_layer = (value(L_max) - value(L_min)) / (L_max - L_min); value(N) = value(L_min) + per_layer * (N - L_min).
    Done for the total wall time and peak RSS and for every phase both ends report.
    """
    out = []
    for shape, mode in dict.fromkeys((r.shape, r.mode) for r in results):
        ok = sorted((r for r in results if (r.shape, r.mode) == (shape, mode) and r.returncode == 0 and r.layers),
                    key=lambda r: r.layers)
        if len(ok) < 2 or ok[0].layers == ok[-1].layers:
            continue
        lo, hi = ok[0], ok[-1]
        dl = hi.layers - lo.layers
        series = {"wall s": (lo.wall_s, hi.wall_s), "peak RSS GB": (lo.peak_rss_gb, hi.peak_rss_gb)}
        for p in phase_names([lo, hi]):
            if lo.phases and hi.phases and p in lo.phases and p in hi.phases:
                series[f"{p} s"] = (lo.phases[p]["seconds"], hi.phases[p]["seconds"])
                series[f"{p} GB"] = (lo.phases[p]["peak_rss_mb"] / 1024, hi.phases[p]["peak_rss_mb"] / 1024)
        for quantity, (a, b) in series.items():
            per = (b - a) / dl
            row = {"shape": shape, "mode": mode, "quantity": quantity, "layers": f"{lo.layers}->{hi.layers}", "at_min": a,
                   "at_max": b, "per_layer": per, "ratio_max_min": b / a if a else math.nan}
            if extrapolate_to:
                row[f"at_{extrapolate_to}"] = a + per * (extrapolate_to - lo.layers)
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


def cmd_build(args: argparse.Namespace) -> int:
    t0 = time.monotonic()
    build_checkpoint(args.shape, args.layers, args.out, args.dtype, args.seed, args.device)
    size = sum(p.stat().st_size for p in args.out.glob("*.safetensors")) / 1e9
    print(f"wrote {args.out}: {args.shape}, {args.layers} layers, {args.dtype}, {size:.2f} GB "
          f"in {time.monotonic() - t0:.1f} s")
    return 0


def _checkpoints(args: argparse.Namespace) -> list[Path]:
    if args.model:
        return list(args.model)
    if not args.shape or not args.layers_list:
        raise SystemExit("error: give --model DIR (repeatable) or --shape with --layers-list")
    paths = []
    for n in args.layers_list:
        path = args.cache / f"{args.shape}-{n}-{args.dtype}"
        if not checkpoint_ok(path, args.shape, n, args.dtype):
            if not args.build:
                raise SystemExit(f"error: {path} is missing; add --build to write it")
            print(f"== building {path}", file=sys.stderr, flush=True)
            shutil.rmtree(path, ignore_errors=True)
            build_checkpoint(args.shape, n, path, args.dtype, args.seed, args.build_device)
        paths.append(path)
    return paths


def cmd_run(args: argparse.Namespace) -> int:
    models = _checkpoints(args)
    args.out_root.mkdir(parents=True, exist_ok=True)
    results: list[RunResult] = []
    failed: RunResult | None = None
    for model in models:
        for mode in args.mode:
            out = args.out_root / f"{model.name}-{mode}"
            cmd = export_command(model, out, mode, args.target, args.device, args.ratio, args.export_arg)
            print(f"== {' '.join(cmd)}", file=sys.stderr, flush=True)
            rc, wall, rss_kb, stdout, stderr = timed_run(cmd, args.out_root / "logs" / out.name, args.timeout)
            report = parse_report(stdout)
            res = RunResult(str(model), checkpoint_layers(model), mode, args.target, wall, rss_kb / 1024**2, rc,
                            phases_of(report), cmd, report, checkpoint_shape(model))
            results.append(res)
            print(f"   rc {rc}, {wall:.1f} s, peak RSS {res.peak_rss_gb:.2f} GB", file=sys.stderr, flush=True)
            if not args.keep:
                shutil.rmtree(out, ignore_errors=True)  # a 32-layer 7B export is ~9 GB
            if rc != 0:
                failed = res
                print(f"error: export failed (rc {rc}); last stderr lines:\n{stderr[-3000:]}", file=sys.stderr)
                break
        if failed:
            break
    table = results_table(results)
    rows = growth(results, args.extrapolate_layers)
    text = f"## Runs (target {args.target}, ratio {args.ratio}, device {args.device})\n\n{table}\n"
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

    b = sub.add_parser("build", help="write a random-weight checkpoint of a real shape, shard by shard")
    b.add_argument("--shape", choices=sorted(SHAPES), required=True)
    b.add_argument("--layers", type=int, required=True, help="decoder layers (any count)")
    b.add_argument("--out", type=Path, required=True)
    b.add_argument("--dtype", choices=sorted(DTYPES), default="bfloat16")
    b.add_argument("--seed", type=int, default=0)
    b.add_argument("--device", choices=["cpu", "cuda", "auto"], default="cpu",
                   help="where the random numbers are drawn (cuda is several times faster)")
    b.set_defaults(fn=cmd_build)

    r = sub.add_parser("run", help="prune checkpoints with prunenet-export and tabulate time and peak RSS")
    r.add_argument("--model", type=Path, action="append", help="checkpoint directory (repeatable)")
    r.add_argument("--shape", choices=sorted(SHAPES), help="with --layers-list: use (or --build) cached shapes")
    r.add_argument("--layers-list", type=_layers_list, help="e.g. 8,16,32")
    r.add_argument("--cache", type=Path, default=Path("scale-checkpoints"),
                   help="where --shape checkpoints live  [default: scale-checkpoints]")
    r.add_argument("--build", action="store_true", help="build missing --shape checkpoints first")
    r.add_argument("--build-device", choices=["cpu", "cuda", "auto"], default="auto")
    r.add_argument("--dtype", choices=sorted(DTYPES), default="bfloat16", help="dtype of built checkpoints")
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
