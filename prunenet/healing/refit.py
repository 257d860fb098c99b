"""Healing's closed-form start: refit each pruned layer's output projection by least squares.

Pruning drops neurons, and the kept ones can carry part of what the dropped ones wrote. Let A be the
dense FFN's hidden activations (the output projection's input, all neurons) on the training rows of
healing's self-text, G = A^T A, W the dense output projection and k the kept neurons. The projection
over the kept neurons that best reproduces the dense FFN's output A W^T, pulled toward the plain slice
W[:, k] so that a short text cannot overfit it, is

    W_k = argmin ||A_k X^T - A W^T||^2 + lam ||X - W[:, k]||^2
        = W[:, k] + ((G_kk + lam I)^-1 G_kd W[:, d]^T)^T,   lam = DAMPING * mean(diag G_kk)

with d the dropped neurons: the kept columns stay and take on what the dropped ones wrote, as far as
their activations can stand in for the dropped ones'.

G comes from the dense pass healing makes anyway (:class:`OutputRefit` is a layer ``edit`` for
:meth:`~prunenet.source.layerwise.LayerwiseModel.final_hidden`), so the refit costs one Gram matrix and
one solve per layer; gradient healing then starts from it and needs fewer steps to get further.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence

import torch

from prunenet.arch import ArchSpec
from prunenet.planning.plan import PruningPlan

__all__ = ["DAMPING", "OutputRefit", "refit_projection", "output_projection", "refit_bytes"]

log = logging.getLogger(__name__)

DAMPING = 1.0
"""lam relative to the mean diagonal of G_kk; measured on the default model (``docs/healing.md``)."""


def refit_bytes(width: int, kept: float, hidden: int) -> int:
    """Peak bytes of one layer's refit (fp32): its Gram matrix, the kept block and its factor, the
    kept-by-dropped block, the weight, and the few [kept, hidden] products of the solve."""
    m, k = width, int(width * kept)
    return 4 * (m * m + 2 * k * k + k * (m - k) + 6 * hidden * m)


def output_projection(layer: torch.nn.Module, spec: ArchSpec) -> torch.nn.Linear:
    """The linear whose weight is ``spec.out_proj`` (down_proj, fc2) in one decoder layer."""
    return layer.get_submodule(spec.out_proj.rpartition(".")[0])


def refit_projection(weight: torch.Tensor, gram: torch.Tensor, kept: Sequence[int],
                     damping: float = DAMPING) -> torch.Tensor | None:
    """The refit ``[out, len(kept)]`` fp32 weight from the dense ``weight`` [out, width] and ``gram``
    [width, width] of its inputs, solved in ``gram``'s dtype; None when the kept neurons never fired.

    fp32 is enough: lam bounds the condition number by about the number of kept neurons, and the
    result is written in the export's (narrower) dtype."""
    k = torch.as_tensor(list(kept), dtype=torch.long, device=gram.device)
    dropped = torch.ones(gram.shape[0], dtype=torch.bool, device=gram.device)
    dropped[k] = False
    d = dropped.nonzero().flatten()
    w = weight.to(device=gram.device, dtype=gram.dtype)
    g_kk = gram[k[:, None], k[None, :]]
    lam = damping * float(g_kk.diagonal().mean())
    if not lam > 0:
        return None
    g_kk.diagonal().add_(lam)
    # (G_kk + lam I)^-1 (G_kk W_k^T + lam W_k^T) is W_k^T itself, so only the dropped neurons' part is solved
    rhs = gram[k[:, None], d[None, :]] @ w[:, d].T
    fitted = w[:, k].T + torch.cholesky_solve(rhs, torch.linalg.cholesky(g_kk))  # G_kk + lam I is positive definite
    return fitted.T.float().contiguous()


class OutputRefit:
    """Records each pruned layer's Gram matrix while a dense pass runs, and solves for its refit.

    Use it as the ``edit`` of a layer-by-layer pass: ``refit(index, module)`` starts recording layer
    ``index`` (finishing the one before) and returns the module unchanged. Only each layer's first
    ``rows`` calls count (the training rows come first; held-out and reference rows never fit).
    """

    def __init__(self, spec: ArchSpec, plan: PruningPlan, rows: int, damping: float = DAMPING):
        self.spec, self.plan, self.rows, self.damping = spec, plan, rows, damping
        self.weights: dict[int, torch.Tensor] = {}
        """Refit output projections by layer index, fp32 on the pass's device."""
        self._open: tuple[int, torch.Tensor, torch.Tensor, torch.utils.hooks.RemovableHandle] | None = None
        self._seen = 0

    def __call__(self, index: int, module: torch.nn.Module) -> torch.nn.Module:
        self.finish()
        lp = self.plan.layers[index]
        if lp.width == lp.original_width:
            return module
        linear = output_projection(module, self.spec)
        gram = torch.zeros(lp.original_width, lp.original_width, dtype=torch.float32, device=linear.weight.device)
        self._seen = 0

        def record(_module, args):
            if self._seen < self.rows:
                x = args[0].detach().reshape(-1, args[0].shape[-1]).float()
                gram.addmm_(x.T, x)
            self._seen += 1

        handle = linear.register_forward_pre_hook(record)
        self._open = (index, linear.weight.detach().float().clone(), gram, handle)
        return module

    def finish(self) -> None:
        """Solve for the layer being recorded (call once the pass is over)."""
        if self._open is None:
            return
        index, weight, gram, handle = self._open
        handle.remove()
        self._open = None
        fitted = refit_projection(weight, gram, self.plan.layers[index].kept, self.damping)
        if fitted is not None:
            self.weights[index] = fitted

    def start_(self, layers: Mapping[int, torch.nn.Module], held_out_loss: Callable[[], float],
               before: float) -> tuple[int, float]:
        """Give the sliced decoder ``layers`` (by index) their refit projections, and keep them only if the
        held-out loss falls below ``before`` (the sliced model's), so healing never starts worse than
        pruning left it. Returns how many layers kept a refit and the held-out loss training starts from."""
        params = {i: output_projection(m, self.spec).weight for i, m in layers.items() if i in self.weights}
        if not params:
            return 0, before
        saved = {i: p.detach().clone() for i, p in params.items()}
        with torch.no_grad():
            for i, p in params.items():
                p.copy_(self.weights[i].to(device=p.device, dtype=p.dtype))
            after = held_out_loss()
            if after < before:
                log.info("healing: %d output projections refit by least squares (held-out %.4g -> %.4g)",
                         len(params), before, after)
                return len(params), after
            for i, p in params.items():
                p.copy_(saved[i])
        log.info("healing: the least-squares refit did not lower the held-out loss (%.4g -> %.4g); not used",
                 before, after)
        return 0, before
