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

__all__ = ["HEAL_TEXT_FILE", "HealingText", "healing_text", "split_rows", "healing_text_key", "load_healing_text",
           "save_healing_text"]

HEAL_TEXT_FILE = "prunenet-healtext.safetensors"
"""Healing's self-text, saved beside the policy: healing again at another ratio (``--policy FILE --heal``)
skips its generation, the longest step of healing on a CPU."""


@dataclass(frozen=True)
class HealingText:
    train: list[torch.Tensor]
    """[1, L] id rows, all the same length (so they batch without padding)."""
    held_out: list[torch.Tensor]
    rows: list[torch.Tensor]
    """Every row in generation order (what is saved; :func:`split_rows` of it gives this split again)."""

    @property
    def tokens(self) -> int:
        return sum(r.numel() for r in self.train + self.held_out)


def split_rows(rows: list[torch.Tensor], cfg: HealConfig) -> HealingText:
    """Crop every row to one common length (at most ``sample_len``) and hold out a seeded subset."""
    length = min(cfg.sample_len, *(r.numel() for r in rows))
    rows = [r.reshape(1, -1)[:, :length].contiguous() for r in rows]
    order = torch.randperm(len(rows), generator=torch.Generator().manual_seed(cfg.seed)).tolist()
    held = sorted(order[: cfg.held_out])
    return HealingText([rows[i] for i in sorted(order[cfg.held_out:])], [rows[i] for i in held], rows)


def healing_text(source: Path, cfg: HealConfig, device: torch.device, dtype: torch.dtype) -> HealingText:
    """Generate ``cfg.tokens`` tokens of self-text on ``device`` in ``dtype`` and split it."""
    from prunenet.planning.selfdata import self_text_ids

    rows = self_text_ids(source, cfg.tokens, cfg.seed + 1, device, dtype, sample_len=cfg.sample_len)
    return split_rows(rows, cfg)


def healing_text_key(source_fingerprint: str, cfg: HealConfig) -> dict:
    """Everything the generated ids depend on; a saved text with another key is generated afresh."""
    from prunenet.planning.selftext_cache import self_text_key

    return {**self_text_key(source_fingerprint, cfg.seed + 1, cfg.tokens), "sample_len": cfg.sample_len,
            "use": "healing"}


def save_healing_text(path: Path, text: HealingText, key: dict) -> None:
    from prunenet.planning.selftext_cache import save_self_text

    save_self_text(path, text.rows, key)


def load_healing_text(path: Path, key: dict, cfg: HealConfig) -> HealingText | None:
    """The saved text split as ``cfg`` splits it, or None when ``path`` holds none for ``key``."""
    from prunenet.planning.selftext_cache import load_self_text

    rows = load_self_text(path, key)
    return split_rows(rows, cfg) if rows else None
