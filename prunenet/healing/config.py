"""What decides a healing run: one frozen :class:`HealConfig`; the CLI maps ``--heal-*`` options onto it."""

from __future__ import annotations

from dataclasses import asdict, dataclass

from prunenet.errors import PruneNetError
from prunenet.refs import load_ref

__all__ = ["HealConfig", "HealMode", "HEAL_MODES", "MODES", "AUTO_MAX_PARAMS", "auto_heal_skip"]


@dataclass(frozen=True)
class HealMode:
    name: str
    summary: str
    """One line for ``--help`` and the docs."""
    runner: str
    """``"module:function"`` with the signature of :func:`~prunenet.healing.end_to_end.heal_end_to_end`."""

    def run(self):
        return load_ref(self.runner)


HEAL_MODES: dict[str, HealMode] = {m.name: m for m in (
    HealMode("end-to-end", "distils the whole pruned model's logits (it and its optimizer state must fit the device)",
             "prunenet.healing.end_to_end:heal_end_to_end"),
    HealMode("block", "heals one decoder block at a time against the dense block (one block resident)",
             "prunenet.healing.blockwise:heal_blockwise"),
)}
"""In order of preference: ``auto`` takes the first whose memory estimate fits the device, else the last."""

MODES = ("auto", *HEAL_MODES)

AUTO_MAX_PARAMS = 200_000_000
"""Sources up to this many parameters heal unless ``--no-heal``: there healing takes minutes on a CPU, and
it wins on every evaluation text. Above it, healing's cost grows with the parameters (a 7B has 50 times
the default model's), so it runs only when asked for (``--heal``)."""


def auto_heal_skip(params: int, has_tokenizer: bool = True) -> str | None:
    """Why a source is not healed by default (its size, or no tokenizer to write healing's text), or None."""
    if not has_tokenizer:
        return "not healed: the source has no tokenizer for healing's self-text; pass --heal with one in place"
    if params <= AUTO_MAX_PARAMS:
        return None
    return (f"not healed: healing is on by default up to {AUTO_MAX_PARAMS / 1e6:.0f}M parameters and this model has "
            f"{params / 1e6:,.0f}M; pass --heal to heal it")


@dataclass(frozen=True)
class HealConfig:
    """Data-free healing: distil the pruned model toward the dense one on text the dense model writes."""

    tokens: int = 6144
    """Self-text tokens generated for healing (training and held-out together)."""
    sample_len: int = 256
    """Tokens per self-text sample (one training sequence)."""
    steps: int = 10
    """Most optimizer steps (per block in block mode); early stopping may end sooner. 0: the refit alone."""
    lr: float = 8e-4
    batch: int = 4
    """Sequences per step."""
    holdout: float = 0.125
    """Fraction of the self-text samples held out for early stopping (at least 2 samples)."""
    eval_every: int = 10
    patience: int = 3
    """Stop after this many held-out evaluations without improvement; the best weights are kept."""
    mode: str = "auto"
    refit: bool = True
    """Start from the least-squares refit of each pruned layer's output projection (:mod:`~prunenet.healing.refit`)."""
    seed: int = 0

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise PruneNetError(f"unknown --heal-mode {self.mode!r}; choose from {', '.join(MODES)}")
        for name in ("tokens", "sample_len", "batch", "eval_every", "patience"):
            if getattr(self, name) < 1:
                raise PruneNetError(f"--heal-{name.replace('_', '-')} must be >= 1, got {getattr(self, name)}")
        if self.steps < 0 or (self.steps == 0 and not self.refit):
            raise PruneNetError(f"--heal-steps must be >= 1 (0 = the least-squares refit alone, which needs "
                                f"--heal-refit), got {self.steps}")
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
