"""The optimisation loop both healing modes share: AdamW, cosine decay, held-out early stopping.

The held-out loss is measured before the first step, so the weights returned are never worse on it
than the pruned model's own: if no step helps, healing leaves the weights as they were.
"""

from __future__ import annotations

import contextlib
import logging
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch

from prunenet.healing.config import HealConfig
from prunenet.progress import track

__all__ = ["FitResult", "fit", "autocast"]

log = logging.getLogger(__name__)

WARMUP = 10


def autocast(device: torch.device, dtype: torch.dtype):
    """Mixed precision when the teacher computes narrower than fp32 (master weights stay fp32): on a GPU,
    or a CPU with native bf16 products (:func:`~prunenet.device.layer_dtype` chose that dtype).

    Without its cast cache: autocast keeps the narrow copy of a weight that requires grad until the
    context exits, and the whole loop runs inside one, so every forward would see the weights as they
    were at the first step and healing would never move the held-out loss."""
    if dtype != torch.float32:
        return torch.autocast(device.type, dtype=dtype, cache_enabled=False)
    return contextlib.nullcontext()


@dataclass
class FitResult:
    initial: float
    """Held-out loss before the first step."""
    best: float
    best_step: int
    steps: int
    history: list[dict] = field(default_factory=list)


def fit(params: Sequence[torch.Tensor], batch_loss: Callable[[list[int]], torch.Tensor],
        held_out_loss: Callable[[], float], n_train: int, cfg: HealConfig, label: str,
        generator: torch.Generator, initial: float | None = None, warmup: int = WARMUP) -> FitResult:
    """Minimise ``batch_loss(indices)`` over ``params``; stop on ``held_out_loss``; keep the best weights.

    ``batch_loss`` gets ``cfg.batch`` training-row indices and returns a scalar loss (backward is done
    here); ``held_out_loss`` runs without gradients. ``initial`` is its value before the first step when
    the caller has measured it already (a held-out pass is not free). ``warmup``: steps of linear
    learning-rate warm-up before the cosine decay.
    """
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=0.0)
    decay = max(cfg.steps - warmup, 1)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / warmup) * 0.5 * (
        1 + math.cos(math.pi * min(max(s - warmup, 0), decay) / decay)))
    initial = best = held_out_loss() if initial is None else initial
    best_state = [p.detach().clone() for p in params]
    result = FitResult(initial, best, 0, 0, [{"step": 0, "held_out": initial}])
    log.info("%s: held-out loss %.5g before the first step", label, initial)
    stale = 0
    for step in track(range(1, cfg.steps + 1), label, total=cfg.steps):
        idx = torch.randint(n_train, (min(cfg.batch, n_train),), generator=generator).tolist()
        loss = batch_loss(idx)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        result.steps = step
        if step % cfg.eval_every and step != cfg.steps:
            continue
        held = held_out_loss()
        result.history.append({"step": step, "train": float(loss.detach()), "held_out": held})
        log.info("%s: step %d, training loss %.5g, held-out loss %.5g", label, step, float(loss.detach()), held)
        if held < best:
            best, result.best, result.best_step, stale = held, held, step, 0
            best_state = [p.detach().clone() for p in params]
        else:
            stale += 1
            if stale >= cfg.patience:
                break
    with torch.no_grad():
        for p, b in zip(params, best_state, strict=True):
            p.copy_(b)
    return result
