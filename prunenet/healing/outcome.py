"""What a healing run reports, whichever mode ran it (both modes return the same record)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

__all__ = ["HealOutcome"]


@dataclass
class HealOutcome:
    mode: str
    tokens: int
    """Self-text tokens used (training + held-out)."""
    held_out_before: dict
    """``row_quality`` of the unhealed pruned model on the held-out self-text."""
    held_out_after: dict
    reference_before: dict | None = None
    """The same on the reference windows (reported, never used for stopping); None without them."""
    reference_after: dict | None = None
    steps: int = 0
    """Optimizer steps run (summed over blocks in block mode)."""
    healed_tensors: int = 0
    refit_layers: int = 0
    """Layers whose output projection started from the least-squares refit (``history[0]`` is after it)."""
    seconds: float = 0.0
    history: list[dict] = field(default_factory=list)

    def to_dict(self) -> dict:
        return asdict(self)
