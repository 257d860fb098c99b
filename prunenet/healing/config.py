"""What decides a healing run: one frozen :class:`HealConfig`; the CLI maps ``--heal-*`` options onto it."""

from __future__ import annotations

from dataclasses import asdict, dataclass

from prunenet.errors import PruneNetError

__all__ = ["HealConfig", "MODES"]

MODES = ("auto", "end-to-end", "block")
"""``end-to-end``: distil the whole pruned model's logits (it and its optimizer state must fit the device);
``block``: one decoder block at a time against the dense block (one block resident); ``auto`` picks
end-to-end when it fits."""


@dataclass(frozen=True)
class HealConfig:
    """Data-free healing: distil the pruned model toward the dense one on text the dense model writes."""

    tokens: int = 12288
    """Self-text tokens generated for healing (training and held-out together)."""
    sample_len: int = 256
    """Tokens per self-text sample (one training sequence)."""
    steps: int = 100
    """Most optimizer steps (per block in block mode); early stopping usually ends sooner."""
    lr: float = 4e-4
    batch: int = 4
    """Sequences per step."""
    holdout: float = 0.125
    """Fraction of the self-text samples held out for early stopping (at least 2 samples)."""
    eval_every: int = 10
    patience: int = 3
    """Stop after this many held-out evaluations without improvement; the best weights are kept."""
    mode: str = "auto"
    seed: int = 0

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise PruneNetError(f"unknown --heal-mode {self.mode!r}; choose from {', '.join(MODES)}")
        for name in ("tokens", "sample_len", "steps", "batch", "eval_every", "patience"):
            if getattr(self, name) < 1:
                raise PruneNetError(f"--heal-{name.replace('_', '-')} must be >= 1, got {getattr(self, name)}")
        if not self.lr > 0:
            raise PruneNetError(f"--heal-lr must be > 0, got {self.lr}")
        if not 0 < self.holdout < 1:
            raise PruneNetError(f"the held-out fraction must be in (0, 1), got {self.holdout}")
        if self.samples < 3:
            raise PruneNetError(f"--heal-tokens {self.tokens} gives {self.samples} samples of {self.sample_len}; "
                                "healing needs at least 3 (some are held out)")

    @property
    def samples(self) -> int:
        return -(-self.tokens // self.sample_len)

    @property
    def held_out(self) -> int:
        return min(self.samples - 1, max(2, round(self.samples * self.holdout)))

    def to_dict(self) -> dict:
        return asdict(self)
