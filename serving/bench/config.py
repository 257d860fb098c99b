"""What a benchmark measures: engines, shapes, repetitions and threads, checked once.

The CLI options map one to one onto :class:`BenchConfig`'s fields; the vLLM child process rebuilds
the same config from JSON (:meth:`BenchConfig.from_json`).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

__all__ = ["ENGINES", "SCHEMA", "BenchConfig", "default_threads"]

ENGINES = ("torch", "onnxruntime", "onnxruntime-genai", "vllm")
SCHEMA = "prunenet-bench/1"


@dataclass(frozen=True)
class BenchConfig:
    """What to measure; the CLI options map one to one onto these fields."""

    engines: tuple[str, ...] = ("onnxruntime",)
    """Engines to run, each over every directory: torch (eager PyTorch), onnxruntime (a plain ORT loop),
    onnxruntime-genai (its own generator, on the same ONNX directory), vllm."""
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

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> BenchConfig:
        """The config a parent sent as JSON (lists back to tuples, ``out`` dropped)."""
        values = {f.name: data[f.name] for f in fields(cls) if f.name in data}
        for name in ("engines", "batch_sizes", "prompt_lengths"):
            values[name] = tuple(values[name])
        return cls(**(values | {"out": None}))


def default_threads() -> int:
    """The default intra-op thread count: physical cores."""
    import psutil

    return psutil.cpu_count(logical=False) or os.cpu_count() or 1

