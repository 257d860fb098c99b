"""Token windows: the evaluation text cut into non-overlapping slices both models score.

The first token of each window is context only, so ``n_tokens`` (the scored predictions) is the token
count minus the windows.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from prunenet.evaluation.report import EvalInputError

__all__ = ["DEFAULT_SEQ_LEN", "split_windows", "token_windows", "batches"]

DEFAULT_SEQ_LEN = 512


def split_windows(ids: Sequence[int] | torch.Tensor, seq_len: int, max_tokens: int | None = None) -> list[torch.Tensor]:
    """Cut a token stream into non-overlapping windows of ``seq_len`` (the last may be shorter)."""
    if seq_len < 2:
        raise EvalInputError(f"seq_len must be at least 2, got {seq_len}")
    flat = torch.as_tensor(ids, dtype=torch.long).flatten()
    if max_tokens is not None:
        flat = flat[:max_tokens]
    windows = [w for w in flat.split(seq_len) if w.numel() >= 2]
    if not windows:
        raise EvalInputError(f"the evaluation text has {flat.numel()} token(s); at least 2 are needed")
    return windows


def token_windows(tokenizer, text: str | Sequence[str], seq_len: int = 512,
                  max_tokens: int | None = None) -> list[torch.Tensor]:
    """Tokenize ``text`` (no special tokens) into windows; a list of texts is windowed document by document."""
    docs = [text] if isinstance(text, str) else list(text)
    windows: list[torch.Tensor] = []
    budget = max_tokens
    for doc in docs:
        ids = tokenizer(doc, add_special_tokens=False)["input_ids"]
        if budget is not None:
            ids = ids[:budget]
            budget -= len(ids)
        if len(ids) >= 2:
            windows += split_windows(ids, seq_len)
        if budget is not None and budget <= 0:
            break
    if not windows:
        raise EvalInputError("the evaluation text is empty or shorter than 2 tokens")
    return windows


def batches(windows: list[torch.Tensor], batch_size: int) -> list[torch.Tensor]:
    """Stack consecutive windows of equal length, ``batch_size`` at a time (no padding needed)."""
    out: list[torch.Tensor] = []
    group: list[torch.Tensor] = []
    for w in windows:
        if group and (len(group) == batch_size or w.numel() != group[0].numel()):
            out.append(torch.stack(group))
            group = []
        group.append(w)
    if group:
        out.append(torch.stack(group))
    return out
