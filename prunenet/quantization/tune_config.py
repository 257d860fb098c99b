"""Scale tuning's settings (:mod:`prunenet.quantization.tuning`), importable without torch (the CLI reads
its defaults)."""

from __future__ import annotations

from dataclasses import asdict, dataclass

from prunenet.errors import PruneNetError

__all__ = ["TuneConfig"]


@dataclass(frozen=True)
class TuneConfig:
    steps: int = 10
    """Most optimizer steps; 0 turns tuning off."""
    lr: float = 5e-3
    """Of the log-scales: 5e-3 moves a scale by about half a percent per step."""
    batch: int = 8
    """Self-text rows per step."""
    holdout: float = 0.125
    """Fraction of the rows held out for keeping the best step (at least 1)."""
    eval_every: int = 5
    patience: int = 2
    warmup: int = 2
    seed: int = 0

    def __post_init__(self) -> None:
        if self.steps < 0:
            raise PruneNetError(f"--quant-tune-steps must be >= 0, got {self.steps}")
        if not self.lr > 0:
            raise PruneNetError(f"the scale-tuning learning rate must be > 0, got {self.lr}")

    def to_dict(self) -> dict:
        return asdict(self)
