"""GPTQ rounding: each weight column's rounding error is passed on to the columns not yet rounded.

Round-to-nearest rounds every weight on its own. GPTQ (Frantar et al., 2022) rounds the columns of a
linear one at a time and corrects the remaining ones so that the layer's output on its inputs ``X``
changes least; it needs only their second moment ``H = X^T X / n``. Here ``X`` comes from the model's
own self-text, so the export stays data-free. Scales are fixed before rounding (the scheme's own MSE
or min-max search on the unrounded weights, so readers and the writer agree on them), and columns are
visited by decreasing ``diag(H)`` (the "act-order" heuristic: the inputs that matter most are rounded
while there is most freedom left to compensate them). Both measurably beat the per-group scales chosen
as the sweep reaches each group. The updates are applied in blocks of columns (the lazy-batch form),
so the work is a few matrix products per block.
"""

from __future__ import annotations

import torch

from prunenet.quantization.numerics import _expand, _round, compute_scales
from prunenet.quantization.schemes import QuantScheme

__all__ = ["gptq_round", "DAMPING", "COLUMN_BLOCK"]

DAMPING = 0.01
"""Added to H's diagonal, as a fraction of its mean: keeps the inverse stable for rarely used inputs."""
COLUMN_BLOCK = 32


@torch.no_grad()
def gptq_round(w: torch.Tensor, hessian: torch.Tensor, scheme: QuantScheme, group: int | None = None,
               clipping: str = "mse", scale_dtype: torch.dtype = torch.float32) -> tuple[torch.Tensor, torch.Tensor]:
    """``(weight, scales)``: the rounded ``[N, K]`` weight (fp32, on the scheme's grid times its scales)
    and the fp32 scales, laid out as :func:`~prunenet.quantization.numerics.compute_scales` returns them.

    ``hessian``: ``[K, K]``, the inputs' second moment. Inputs that were always zero keep no weight
    (nothing reaches them)."""
    w = w.detach().float().clone()
    n, k = w.shape
    h = hessian.detach().to(w.device, torch.float32).clone()
    if h.shape != (k, k):
        raise ValueError(f"hessian {tuple(h.shape)} does not match K={k}")
    dead = torch.diag(h) == 0
    h[dead, dead] = 1.0
    w[:, dead] = 0.0
    scales = compute_scales(w, scheme, group if scheme.grouped else None, clipping, scale_dtype)
    order = torch.argsort(torch.diag(h), descending=True)
    w, h = w[:, order], h[order][:, order]
    col_scale = _expand(scales, k)[:, order]
    hinv = _inverse_cholesky(h)
    out = torch.empty_like(w)
    for b0 in range(0, k, COLUMN_BLOCK):
        b1 = min(b0 + COLUMN_BLOCK, k)
        block, hb = w[:, b0:b1].clone(), hinv[b0:b1, b0:b1]
        err = torch.empty_like(block)
        for j in range(b1 - b0):
            col, s = block[:, j], col_scale[:, b0 + j]
            q = _round(col / s, scheme) * s
            out[:, b0 + j] = q
            e = (col - q) / hb[j, j]
            block[:, j:] -= e.unsqueeze(1) * hb[j, j:].unsqueeze(0)
            err[:, j] = e
        w[:, b1:] -= err @ hinv[b0:b1, b1:]
    return out[:, torch.argsort(order)].contiguous(), scales


def _inverse_cholesky(h: torch.Tensor) -> torch.Tensor:
    """Upper Cholesky factor of H^-1 (after damping), retrying with more damping if H is near singular."""
    mean = torch.diag(h).mean()
    eye = torch.eye(h.shape[0], dtype=h.dtype, device=h.device)
    for damp in (DAMPING, 0.1, 1.0):
        factor, info = torch.linalg.cholesky_ex(h + damp * mean * eye)
        if not info:
            return torch.linalg.cholesky(torch.cholesky_inverse(factor), upper=True)
    raise ValueError("the inputs' second moment is not positive definite even with damping")
