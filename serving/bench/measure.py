"""Timing: every model alternately, then medians per model and shape, and ratios to the first directory.

Busy machines drift: a neighbour's job can halve the speed for a minute. Running each model once
per repetition, in alternating order, spreads that drift evenly instead of charging it to
whichever model happened to be measured during it. Metric names follow ONNX Runtime's LLaMA
``benchmark_e2e.py`` (ms and tokens/s).
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from exporters.onnx.greedy import Decoder, EngineError, Generation
from prunenet.errors import PruneNetError
from prunenet.progress import track
from serving.bench.config import BenchConfig
from serving.bench.memory import MemorySampler

__all__ = ["Loaded", "measure", "summarize", "with_ratios", "RATIO_KEYS"]


@dataclass
class Loaded:
    """One engine x directory, loaded and ready, and the samples of the shape being measured."""

    engine: str
    label: str
    decoder: Decoder
    load_s: float
    size_mb: float
    artefact: str
    """The directory the engine loaded (for onnxruntime: the ONNX export, maybe a cache entry)."""
    samples: list[tuple[Generation, MemorySampler]] = field(default_factory=list)


def measure(loaded: list[Loaded], cfg: BenchConfig, prompts: dict) -> list[dict[str, Any]]:
    """Warm up, then time every model alternately (order reversed on odd runs); one row per model x shape."""
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


def summarize(item: Loaded, batch: int, plen: int, cfg: BenchConfig) -> dict[str, Any]:
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


def with_ratios(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Rows plus ``vs_first``: each metric over the first directory's, same engine and shape (1.0 for it)."""
    first: dict[tuple, dict[str, Any]] = {}
    for row in rows:
        first.setdefault((row["engine"], row["batch_size"], row["prompt_length"]), row)
    out = []
    for row in rows:
        base = first[(row["engine"], row["batch_size"], row["prompt_length"])]
        out.append(row | {"vs_first": {k: round(row[k] / base[k], 4) if base.get(k) else None for k in RATIO_KEYS}})
    return out
