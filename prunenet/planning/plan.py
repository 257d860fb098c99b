"""The pruning plan: the one artefact between the algorithm and everything downstream.

Per layer it records the kept neuron indices (sorted), the width, and the scores they were
chosen by, plus how the plan was made. Written as ``prunenet-plan.json`` next to every
output so a result can be rebuilt and audited.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from prunenet.errors import PlanMismatch

__all__ = ["FORMAT_VERSION", "PLAN_FILE", "LayerPlan", "PruningPlan"]

FORMAT_VERSION = 1
PLAN_FILE = "prunenet-plan.json"


@dataclass(frozen=True)
class LayerPlan:
    """One decoder layer: which FFN neurons survive."""

    kept: tuple[int, ...]
    """Sorted indices of the kept neurons (rows of the first FFN matrix)."""
    original_width: int
    scores: tuple[float, ...] | None = None
    """Keep scores of all ``original_width`` neurons (higher = keep); lets any ratio be re-made."""

    @property
    def width(self) -> int:
        return len(self.kept)

    def __post_init__(self) -> None:
        kept = self.kept
        if any(b <= a for a, b in zip(kept, kept[1:], strict=False)):
            raise PlanMismatch("plan kept indices must be strictly increasing")
        if kept and (kept[0] < 0 or kept[-1] >= self.original_width):
            raise PlanMismatch(f"plan kept index out of range for FFN width {self.original_width}")


@dataclass(frozen=True)
class PruningPlan:
    """Which neurons every layer keeps, and how that was decided."""

    model_type: str
    layers: tuple[LayerPlan, ...]
    method: str
    ratio: float
    allocation: str = "uniform"
    align: int = 1
    seed: int = 0
    source: str = ""
    source_fingerprint: str = ""
    policy_fingerprint: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    format_version: int = FORMAT_VERSION

    @property
    def widths(self) -> list[int]:
        return [lp.width for lp in self.layers]

    @property
    def original_widths(self) -> list[int]:
        return [lp.original_width for lp in self.layers]

    @property
    def is_uniform(self) -> bool:
        return len(set(self.widths)) <= 1

    @property
    def is_identity(self) -> bool:
        return all(lp.width == lp.original_width for lp in self.layers)

    @property
    def removed_fraction(self) -> float:
        """Fraction of all FFN neurons removed (what ``--ratio`` asks for)."""
        total = sum(self.original_widths)
        return 1.0 - sum(self.widths) / total if total else 0.0

    def to_json(self, *, with_scores: bool = True) -> str:
        data = asdict(self)
        data["layers"] = [
            {
                "width": lp.width,
                "original_width": lp.original_width,
                "kept": list(lp.kept),
                **({"scores": [round(s, 7) for s in lp.scores]} if with_scores and lp.scores else {}),
            }
            for lp in self.layers
        ]
        return json.dumps(data, indent=1)

    def save(self, directory: Path) -> Path:
        path = Path(directory) / PLAN_FILE
        path.write_text(self.to_json())
        return path

    @classmethod
    def from_json(cls, text: str) -> PruningPlan:
        try:
            data = json.loads(text)
            if data.get("format_version") != FORMAT_VERSION:
                raise PlanMismatch(
                    f"plan format_version {data.get('format_version')} is not {FORMAT_VERSION}; re-create the plan"
                )
            layers = tuple(
                LayerPlan(
                    kept=tuple(int(i) for i in lp["kept"]),
                    original_width=int(lp["original_width"]),
                    scores=tuple(float(s) for s in lp["scores"]) if lp.get("scores") else None,
                )
                for lp in data.pop("layers")
            )
            return cls(layers=layers, **data)
        except PlanMismatch:
            raise
        except (ValueError, KeyError, TypeError) as exc:
            raise PlanMismatch(f"not a valid pruning plan ({exc.__class__.__name__}: {exc})") from None

    @classmethod
    def load(cls, path: Path) -> PruningPlan:
        path = Path(path)
        if path.is_dir():
            path = path / PLAN_FILE
        try:
            return cls.from_json(path.read_text())
        except OSError as exc:
            raise PlanMismatch(f"{path}: cannot read plan ({exc.strerror})") from None
