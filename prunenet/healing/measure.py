"""How far a pruned model is from the dense one on id rows: KL(dense || pruned) and the perplexity ratio."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch

from prunenet.evaluation.scoring import dense_window, score_window

__all__ = ["kl_loss", "row_quality"]


def kl_loss(teacher_logits: torch.Tensor, student_logits: torch.Tensor) -> torch.Tensor:
    """Mean KL(teacher || student) per position, in fp32 (differentiable in the student)."""
    t = torch.log_softmax(teacher_logits.float(), dim=-1)
    s = torch.log_softmax(student_logits.float(), dim=-1)
    return (t.exp() * (t - s)).sum(-1).mean()


def row_quality(rows: Sequence[torch.Tensor], teacher: Callable[[int], torch.Tensor],
                student: Callable[[int], torch.Tensor]) -> dict[str, float]:
    """``{"kl", "ppl_ratio", "tokens"}`` over ``rows``; ``teacher(i)``/``student(i)`` give row i's (L, V) logits."""
    kl = nll_d = nll_s = 0.0
    n = 0
    with torch.no_grad():
        for i, row in enumerate(rows):
            ids = row.reshape(-1).cpu()
            dense = dense_window(teacher(i).reshape(ids.numel(), -1).cpu(), ids, torch.float32)
            scored = score_window(dense, student(i).reshape(ids.numel(), -1).cpu())
            kl += scored["kl"].double().sum().item()
            nll_d += dense.nll.double().sum().item()
            nll_s += scored["nll"].double().sum().item()
            n += ids.numel() - 1
    n = max(n, 1)
    return {"kl": kl / n, "ppl_ratio": math.exp((nll_s - nll_d) / n), "tokens": n}
