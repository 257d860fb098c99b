"""How far a pruned model is from the dense one on id rows: KL(dense || pruned) and the perplexity ratio.

Training compares against :class:`TeacherTargets`, the dense model's distribution kept as its top-k
log-probabilities and the mass of the rest: recorded once, 6 KB per position whatever the vocabulary,
so a healing step runs no dense head and no vocabulary-wide softmax of the dense logits. Reported quality
(:func:`row_quality`) always uses the full distributions.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from prunenet.evaluation.scoring import dense_window, score_window

__all__ = ["row_quality", "TeacherTargets", "TOP_K", "sparse_kl_loss"]

TOP_K = 512
"""Dense-model tokens kept per position; the rest is matched as one bucket. Large enough that training
on the truncated distribution ends as close to the full KL as measurement tells (``docs/healing.md``)."""


@dataclass(frozen=True)
class TeacherTargets:
    """Per position: the dense model's top-k log-probabilities, their token ids, and the mass outside them."""

    logp: torch.Tensor
    """[positions, k] fp32."""
    index: torch.Tensor
    """[positions, k] int64."""
    tail: torch.Tensor
    """[positions] fp32, 1 - sum(exp(logp))."""

    @classmethod
    def from_logits(cls, logits: torch.Tensor, k: int = TOP_K) -> TeacherTargets:
        logp = torch.log_softmax(logits.detach().float().reshape(-1, logits.shape[-1]), dim=-1)
        top, index = logp.topk(min(k, logp.shape[-1]), dim=-1)
        tail = (1 - top.double().exp().sum(-1)).clamp_min(0).float()
        return cls(top.contiguous(), index.contiguous(), tail)

    @classmethod
    def cat(cls, parts: Sequence[TeacherTargets]) -> TeacherTargets:
        return cls(*(torch.cat([getattr(p, f) for p in parts]) for f in ("logp", "index", "tail")))

    @property
    def mass(self) -> float:
        """Mean share of the dense distribution the top k hold."""
        return float(1 - self.tail.mean())


def sparse_kl_loss(teacher: TeacherTargets, student_logits: torch.Tensor) -> torch.Tensor:
    """Mean KL(teacher || student) over the teacher's top-k tokens plus one bucket for all others.

    A coarsening of the full KL: equal to it when the top k hold all the mass, never above it, and zero
    only where the student matches the teacher on every kept token and on the rest's total.
    """
    s = torch.log_softmax(student_logits.float().reshape(-1, student_logits.shape[-1]), dim=-1)
    kept = s.gather(-1, teacher.index.to(s.device))
    logp, tail = teacher.logp.to(s.device), teacher.tail.to(s.device)
    rest = torch.log1p(-kept.exp().sum(-1).clamp(max=1 - 1e-6))
    return ((logp.exp() * (logp - kept)).sum(-1) + torch.xlogy(tail, tail) - tail * rest).mean()


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
