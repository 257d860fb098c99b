"""Wall time and peak memory per pipeline phase (read, self-text, capture, training, ...).

The export report lists one entry per phase, so a user (and the scale benchmark) sees where time
and memory go. Peak host memory is sampled from the process RSS by a background thread, which is
what ``/usr/bin/time`` reports too; on CUDA the device's peak allocation is recorded as well.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass

__all__ = ["Phase", "PhaseLog"]


@dataclass
class Phase:
    name: str
    seconds: float
    peak_rss_mb: float
    peak_device_mb: float | None = None


class PhaseLog:
    """Collects :class:`Phase` entries; ``with log.phase("read"): ...`` measures one."""

    def __init__(self, interval_s: float = 0.05) -> None:
        self.phases: list[Phase] = []
        self.interval_s = interval_s

    @contextlib.contextmanager
    def phase(self, name: str, device=None) -> Iterator[None]:
        import psutil
        import torch

        proc = psutil.Process()
        peak = [proc.memory_info().rss]
        stop = threading.Event()

        def sample() -> None:
            while not stop.wait(self.interval_s):
                peak[0] = max(peak[0], proc.memory_info().rss)

        cuda = device is not None and getattr(device, "type", str(device)).startswith("cuda")
        if cuda:
            torch.cuda.reset_peak_memory_stats(device)
        thread = threading.Thread(target=sample, daemon=True)
        thread.start()
        start = time.perf_counter()
        try:
            yield
        finally:
            stop.set()
            thread.join()
            peak[0] = max(peak[0], proc.memory_info().rss)
            dev = torch.cuda.max_memory_allocated(device) / 2**20 if cuda else None
            self.phases.append(Phase(name, round(time.perf_counter() - start, 3), round(peak[0] / 2**20, 1),
                                     None if dev is None else round(dev, 1)))

    def to_list(self) -> list[dict]:
        return [asdict(p) for p in self.phases]
