"""Peak memory: sampled around each generation, and of each model alone in a fresh process.

In the benchmark process several models (and any on-the-fly export) share one heap, so its RSS
cannot be attributed to a model. :func:`isolated_memory` therefore runs a child
(:mod:`serving.childproc`) that imports the engine, loads the model, generates once and reports its
peak RSS, its RSS after the engine's imports, and device memory on CUDA.
"""

from __future__ import annotations

import sys
import threading
from pathlib import Path
from typing import Any

import numpy as np

from exporters.onnx.greedy import EngineError
from serving.childproc import child_main, run_json_child

__all__ = ["MemorySampler", "isolated_memory"]


class MemorySampler:
    """Peak RSS of this process and its children (and device memory on CUDA), sampled in a thread."""

    def __init__(self, device: str = "cpu", interval_s: float = 0.005) -> None:
        import psutil

        self._proc = psutil.Process()
        self._interval = interval_s
        self._cuda = device.startswith("cuda")
        self._stop = threading.Event()
        self.baseline_mb = self.peak_mb = self.rss_mb()
        self.device_peak_mb: float | None = None

    def rss_mb(self) -> float:
        total = self._proc.memory_info().rss
        for child in self._proc.children(recursive=True):
            try:
                total += child.memory_info().rss
            except Exception:  # a child can exit between listing and reading
                continue
        return total / 2**20

    def _device_mb(self) -> float:
        import torch

        free, total = torch.cuda.mem_get_info()
        return (total - free) / 2**20

    def _loop(self) -> None:
        while not self._stop.wait(self._interval):
            self.peak_mb = max(self.peak_mb, self.rss_mb())
            if self._cuda:
                self.device_peak_mb = max(self.device_peak_mb or 0.0, self._device_mb())

    def __enter__(self) -> MemorySampler:
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak_mb = max(self.peak_mb, self.rss_mb())


def isolated_memory(engine: str, path: Path, *, device: str, threads: int, batch: int, prompt: int,
                    new_tokens: int, vocab: int, timeout: float = 900.0) -> dict[str, Any]:
    """Peak memory of the model served alone: a fresh process imports the engine, loads, generates once."""
    request = {"engine": engine, "path": str(path), "device": device, "threads": threads, "batch": batch,
               "prompt": prompt, "new_tokens": new_tokens, "vocab": vocab}
    return run_json_child(__name__, request, timeout=timeout, what=f"memory measurement of {path} ({engine})",
                          error=EngineError, tail_lines=2)


def _measure_alone(request: dict[str, Any]) -> dict[str, Any]:
    """Child side of :func:`isolated_memory`: the baseline is taken after the engine's imports."""
    if request["engine"] == "torch":
        import torch
        import transformers  # noqa: F401  (counted in the baseline, like onnxruntime below)

        torch.set_num_threads(request["threads"])
    elif request["engine"] == "onnxruntime":
        import onnxruntime  # noqa: F401
    elif request["engine"] == "onnxruntime-genai":
        import onnxruntime_genai  # noqa: F401
    else:
        raise EngineError(f"engine {request['engine']!r} cannot be measured in a child process")
    from serving.bench.engines import load_decoder

    sampler = MemorySampler(request["device"])
    baseline = sampler.baseline_mb
    decoder = load_decoder(request["engine"], Path(request["path"]), device=request["device"],
                           threads=request["threads"])
    ids = np.random.default_rng(0).integers(3, request["vocab"], size=(request["batch"], request["prompt"]),
                                            dtype=np.int64)
    with sampler:
        decoder.generate(ids, request["new_tokens"])
    peak = max(sampler.peak_mb, _high_water_mb())
    return {"peak_rss_mb": round(peak, 1), "baseline_rss_mb": round(baseline, 1),
            "model_memory_mb": round(peak - baseline, 1), "steady_rss_mb": round(sampler.rss_mb(), 1),
            "device_peak_mb": sampler.device_peak_mb}


def _high_water_mb() -> float:
    """VmHWM: the true peak RSS of this process image (``ru_maxrss`` would carry the parent's peak over exec)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


if __name__ == "__main__":
    sys.exit(child_main(_measure_alone))
