"""Prune once, instantly: the self-text a policy was trained on, saved beside the policy file.

Re-planning with ``--policy FILE`` at another ratio needs the same activation statistics, and
generating the text again is most of a run on a small model. The token ids
are tiny (a few thousand ints), so they are stored next to the policy, keyed by the source
fingerprint, the seed and the token count; a key mismatch means the text is generated afresh.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file

__all__ = ["SELF_TEXT_FILE", "save_self_text", "load_self_text", "self_text_key"]

SELF_TEXT_FILE = "prunenet-selftext.safetensors"


def self_text_key(source_fingerprint: str, seed: int, tokens: int) -> dict:
    return {"source_fingerprint": source_fingerprint, "seed": int(seed), "tokens": int(tokens)}


def save_self_text(path: Path, rows: list[torch.Tensor], key: dict) -> None:
    flat = torch.cat([r.reshape(-1) for r in rows]).to(torch.int64)
    lengths = torch.tensor([r.numel() for r in rows], dtype=torch.int64)
    save_file({"ids": flat.contiguous(), "lengths": lengths}, str(path), metadata={"prunenet": json.dumps(key)})


def load_self_text(path: Path, key: dict) -> list[torch.Tensor] | None:
    """The saved rows if ``path`` holds self-text for exactly ``key``; None otherwise (never an error)."""
    try:
        with safe_open(str(path), framework="pt") as f:
            if json.loads((f.metadata() or {}).get("prunenet", "{}")) != key:
                return None
            flat, lengths = f.get_tensor("ids"), f.get_tensor("lengths")
    except Exception:  # missing or unreadable: regenerate rather than fail a re-plan
        return None
    return [row.reshape(1, -1) for row in flat.split(lengths.tolist())]
