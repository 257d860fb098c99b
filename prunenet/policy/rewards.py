"""Rewards: how much a kept neuron set preserves a layer. Higher is better.

* :class:`SpectralReward` is the paper's: the KS distance between the singular values of the
  first FFN matrix and of its kept rows (§3). It only sees ``W``, so it is blind to neurons with
  small gate rows but huge, rare outputs (measured on SmolLM2: removing them wrecks the model).
* :class:`OutputReward` is ours with ``--self-data``: the relative error of the whole FFN output
  when the removed neurons are dropped, on the model's own activations on text it generated.
* :class:`PeakReward` is ours from weights alone: the share of the layer's peak output mass that
  is removed. Real hidden states carry massive activations in a few channels, so the inputs are
  normalised one-channel spikes (``sqrt(d) * gain_j * e_j``); a neuron's peak is its largest
  activation on any spike times the largest entry of its output column. (Gaussian inputs, the
  obvious data-free choice, rank like gate-row magnitude, which measured far worse than random.)

Both expose ``cost(kept)`` (lower is better) and ``curve(order, widths)``, the cost of keeping the
top-``k`` neurons of a ranking for each ``k``, which drives the non-uniform allocation. They are built
from one layer's activations ``H`` and keep only compact statistics, so a planner can hold every
layer's reward while it streams the checkpoint one layer at a time.
"""

from __future__ import annotations

import torch
from transformers.activations import ACT2FN

from prunenet.policy.spectrum import gram_singular_values, ks_distance, singular_values
from prunenet.source.ffn import LayerFFN

__all__ = ["SpectralReward", "OutputReward", "PeakReward", "spike_inputs", "spike_hidden"]


class SpectralReward:
    """KS distance between spectra of ``W`` and ``W[S]`` (the paper's reward signal)."""

    def __init__(self, ffn: LayerFFN) -> None:
        self.W = ffn.W.float()
        self.gram = self.W.T @ self.W if self.W.shape[0] >= self.W.shape[1] else None
        self.sigma_ref = gram_singular_values(self.gram) if self.gram is not None else singular_values(self.W)

    def cost(self, kept: torch.Tensor) -> float:
        m, d = self.W.shape
        if self.gram is None or len(kept) < d or 2 * len(kept) <= m:
            return float(ks_distance(self.sigma_ref, singular_values(self.W[kept])))
        # keeping most rows: Gram of the kept rows = full Gram - Gram of the few dropped ones (half the FLOPs)
        drop = torch.ones(m, dtype=torch.bool, device=self.W.device)
        drop[kept] = False
        Wd = self.W[drop]
        return float(ks_distance(self.sigma_ref, gram_singular_values(self.gram - Wd.T @ Wd)))

    def curve(self, order: torch.Tensor, widths: list[int]) -> list[float]:
        return [self.cost(order[:k]) if k < len(order) else 0.0 for k in widths]


def spike_inputs(ffn: LayerFFN) -> torch.Tensor:
    """One normalised hidden state per channel, all its RMS in that channel (d x d)."""
    d = ffn.W.shape[1]
    return torch.diag(ffn.gain) * d**0.5


def spike_hidden(ffn: LayerFFN) -> torch.Tensor:
    """``ffn.hidden(spike_inputs(ffn))`` without the d x d x m products (d x m).

    A spike input has one non-zero channel, so each pre-activation is one product: ``x_j W_ij``. The
    matrix product adds exact zeros to that product, so this is the same number, at 1/d of the FLOPs.
    """
    x = ffn.gain * ffn.W.shape[1] ** 0.5
    pre = (ffn.W.T * x[:, None]).contiguous()  # row-major like the product: activations vectorise alike
    if ffn.bias is not None:
        pre = pre + ffn.bias
    h = ACT2FN[ffn.act](pre)
    return h * (ffn.U.T * x[:, None]).contiguous() if ffn.U is not None else h


class PeakReward:
    """Share of the layer's peak output mass removed: a linear cost, outlier neurons weigh most."""

    def __init__(self, ffn: LayerFFN, H: torch.Tensor) -> None:
        """``H``: the neuron activations on the spike inputs (:func:`spike_inputs`)."""
        self.peak = H.abs().amax(0) * ffn.D.abs().amax(1)
        self.total = max(float(self.peak.sum()), 1e-30)

    def cost(self, kept: torch.Tensor) -> float:
        return 1.0 - float(self.peak[kept].sum()) / self.total

    def curve(self, order: torch.Tensor, widths: list[int]) -> list[float]:
        cum = torch.cat([self.peak.new_zeros(1), self.peak[order].cumsum(0)])
        return [1.0 - float(cum[k]) / self.total for k in widths]


class OutputReward:
    """Relative squared error of the FFN output when only ``kept`` neurons remain.

    The error of removing neurons ``R`` is ``||H_R D_R||^2``. Up to :attr:`gram_limit` neurons it is the
    exact quadratic form ``1_R^T ((H^T H) o (D D^T)) 1_R`` in an m x m matrix. Wider layers (7B: 11,008,
    70B: 28,672) would need that matrix or ``H`` and ``D`` themselves, hundreds of MB per layer, so the
    error is measured through a fixed two-sided Gaussian sketch ``(G H)_R (D S)_R`` (k x k): unbiased,
    a relative error of about ``sqrt(2/k)`` that is the same for every subset compared, at 2 k m numbers
    per layer.
    """

    gram_limit = 4096
    sketch = 1024
    """Sketch size k for layers wider than :attr:`gram_limit`."""

    def __init__(self, ffn: LayerFFN, H: torch.Tensor, seed: int = 0) -> None:
        # the sketch's seed is fixed, not --seed: it is part of the measurement, not of the search
        """``H``: the neuron activations (N x m) on the layer's captured FFN inputs."""
        self.width = H.shape[1]
        self.M = self.A = self.B = None
        if self.width <= self.gram_limit:
            self.total = max(float((H @ ffn.D).pow(2).sum()), 1e-30)
            self.M = (H.T @ H) * (ffn.D @ ffn.D.T)
        else:
            g = torch.Generator().manual_seed(seed)
            k = self.sketch
            G = (torch.randn(k, H.shape[0], generator=g) / k**0.5).to(H.device, H.dtype)
            S = (torch.randn(ffn.D.shape[1], k, generator=g) / k**0.5).to(H.device, H.dtype)
            self.A, self.B = G @ H, ffn.D @ S  # k x m, m x k
            self.total = max(float((self.A @ self.B).pow(2).sum()), 1e-30)
        self.output_energy = self.total / H.shape[0]
        """Mean squared norm of the FFN output per token."""

    def _removed_error(self, removed: torch.Tensor) -> float:
        if removed.numel() == 0:
            return 0.0
        if self.M is not None:
            r = torch.zeros(self.M.shape[0], dtype=self.M.dtype, device=self.M.device)
            r[removed] = 1.0
            return float(r @ (self.M @ r)) / self.total
        return float((self.A[:, removed] @ self.B[removed]).pow(2).sum()) / self.total

    def cost(self, kept: torch.Tensor) -> float:
        mask = torch.ones(self.width, dtype=torch.bool, device=kept.device)
        mask[kept] = False
        return self._removed_error(mask.nonzero().squeeze(-1))

    def curve(self, order: torch.Tensor, widths: list[int]) -> list[float]:
        if self.M is not None:
            return [self._removed_error(order[k:]) for k in widths]
        # sketched: grow the removed set from the end of the ranking, one slice per width (one pass over m)
        out: dict[int, float] = {}
        E = self.A.new_zeros(self.A.shape[0], self.B.shape[1])
        end = len(order)
        for k in sorted(set(widths), reverse=True):
            if k < end:
                idx = order[k:end]
                E += self.A[:, idx] @ self.B[idx]
                end = k
            out[k] = float(E.pow(2).sum()) / self.total
        return [out[k] for k in widths]
