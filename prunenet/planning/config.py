"""What decides a plan: one frozen :class:`PruneConfig`; the CLI maps its options onto it."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from prunenet.errors import PruneNetError
from prunenet.planning.allocation import ALLOCATIONS, width_step
from prunenet.planning.methods import METHODS

__all__ = ["PruneConfig"]


@dataclass(frozen=True)
class PruneConfig:
    """Everything that decides a plan."""

    ratio: float
    """Fraction of all FFN neurons removed, in [0, 1)."""
    method: str = "prunenet"
    allocation: str = "sensitivity"
    align: int = 64
    """Every width is a multiple of this (tensor cores, quantized kernels, TP sharding)."""
    tp: tuple[int, ...] = ()
    """Tensor-parallel sizes every width must be divisible by."""
    episodes: int = 20
    lr: float = 1e-3
    seed: int = 0
    device: str = "auto"
    """Where every phase computes: ``auto`` (CUDA when present), ``cpu``, ``cuda[:N]``."""
    policy: Path | None = None
    """A saved policy to reuse (no training)."""
    self_data: int = 2048
    """Tokens of text the model generates itself, for activation statistics; 0 = weights only.
    On by default because it measurably wins over weights alone (``docs/quality.md``)."""

    def __post_init__(self) -> None:
        if not 0.0 <= self.ratio < 1.0:
            raise PruneNetError(f"--ratio must be in [0, 1), got {self.ratio}")
        if self.method not in METHODS:
            raise PruneNetError(f"unknown --method {self.method!r}; choose from {', '.join(METHODS)}")
        if self.allocation not in ALLOCATIONS:
            raise PruneNetError(f"unknown --allocation {self.allocation!r}; choose from {', '.join(ALLOCATIONS)}")
        if self.episodes < 1:
            raise PruneNetError(f"--episodes must be >= 1, got {self.episodes}")
        if self.self_data < 0:
            raise PruneNetError(f"--self-data must be >= 0, got {self.self_data}")
        width_step(self.align, self.tp)
