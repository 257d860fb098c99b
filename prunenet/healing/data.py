"""The text healing learns from: samples the dense model writes itself, split into training and held-out.

No user data and never the bundled evaluation text (that stays for evaluation). The samples come from
their own seed (``seed + 1``), so they are not the planning self-text either; the held-out samples
are only ever used to decide when to stop.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from prunenet.healing.config import HealConfig

__all__ = ["HealingText", "healing_text", "split_rows"]


@dataclass(frozen=True)
class HealingText:
    train: list[torch.Tensor]
    """[1, L] id rows, all the same length (so they batch without padding)."""
    held_out: list[torch.Tensor]

    @property
    def tokens(self) -> int:
        return sum(r.numel() for r in self.train + self.held_out)


def split_rows(rows: list[torch.Tensor], cfg: HealConfig) -> HealingText:
    """Crop every row to one common length (at most ``sample_len``) and hold out a seeded subset."""
    length = min(cfg.sample_len, *(r.numel() for r in rows))
    rows = [r.reshape(1, -1)[:, :length].contiguous() for r in rows]
    order = torch.randperm(len(rows), generator=torch.Generator().manual_seed(cfg.seed)).tolist()
    held = sorted(order[: cfg.held_out])
    return HealingText([rows[i] for i in sorted(order[cfg.held_out:])], [rows[i] for i in held])


def healing_text(source: Path, cfg: HealConfig, device: torch.device, dtype: torch.dtype) -> HealingText:
    """Generate ``cfg.tokens`` tokens of self-text on ``device`` in ``dtype`` and split it."""
    from prunenet.planning.selfdata import self_text_ids

    rows = self_text_ids(source, cfg.tokens, cfg.seed + 1, device, dtype, sample_len=cfg.sample_len)
    return split_rows(rows, cfg)
