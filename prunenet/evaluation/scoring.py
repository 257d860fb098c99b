"""Per-window scoring: the dense model's log-probs once, then each pruned model against them.

Everything is fp32 under ``no_grad``; log-probs are floored so fp16 storage and ``0 * log 0`` never
produce inf/nan.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

__all__ = ["DenseWindow", "dense_window", "score_window", "logprobs"]

MIN_LOGPROB = -1e4  # finite floor so fp16 storage and 0 * log(0) never produce inf/nan


@dataclass
class DenseWindow:
    targets: torch.Tensor  # (T-1,) next tokens
    logprobs: torch.Tensor  # (T-1, V) dense log-probs (fp32, or fp16 in a large cache)
    neg_entropy: torch.Tensor  # (T-1,) sum_v p log p
    nll: torch.Tensor  # (T-1,)
    top1: torch.Tensor  # (T-1,)


def logprobs(logits: torch.Tensor) -> torch.Tensor:
    return torch.log_softmax(logits.float(), dim=-1).clamp_min_(MIN_LOGPROB)


def dense_window(logits: torch.Tensor, ids: torch.Tensor, store_dtype: torch.dtype) -> DenseWindow:
    """Everything about one window the pruned model is later compared with; ``logits`` is (T, V)."""
    targets = ids[1:]
    lp = logprobs(logits[:-1]).to(store_dtype)
    lp32 = lp.float()
    return DenseWindow(
        targets=targets,
        logprobs=lp,
        neg_entropy=(lp32.exp() * lp32).sum(-1),
        nll=-lp32.gather(-1, targets[:, None]).squeeze(-1),
        top1=lp32.argmax(-1),
    )


def score_window(dense: DenseWindow, logits: torch.Tensor) -> dict[str, torch.Tensor]:
    """The pruned model's NLL, KL(dense || pruned) and top-1 per position of one window."""
    lp = logprobs(logits[:-1])
    p_dense = dense.logprobs.float().exp()
    return {
        "nll": -lp.gather(-1, dense.targets[:, None]).squeeze(-1),
        "kl": dense.neg_entropy - (p_dense * lp).sum(-1),
        "top1": lp.argmax(-1),
    }
