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
top-``k`` neurons of a ranking for each ``k``, which drives the non-uniform allocation.
"""

from __future__ import annotations

import torch

from prunenet.policy.spectrum import gram_singular_values, ks_distance, singular_values
from prunenet.source.ffn import LayerFFN

__all__ = ["SpectralReward", "OutputReward", "PeakReward", "synthetic_inputs", "spike_inputs"]


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


def synthetic_inputs(ffn: LayerFFN, n: int, generator: torch.Generator) -> torch.Tensor:
    """Data-free FFN inputs: a normalised hidden state has unit RMS, scaled by the norm's gain."""
    z = torch.randn(n, ffn.W.shape[1], generator=generator, device="cpu").to(ffn.W.device)
    return z * ffn.gain


def spike_inputs(ffn: LayerFFN) -> torch.Tensor:
    """One normalised hidden state per channel, all its RMS in that channel (d x d)."""
    d = ffn.W.shape[1]
    return torch.diag(ffn.gain) * d**0.5


class PeakReward:
    """Share of the layer's peak output mass removed: a linear cost, outlier neurons weigh most."""

    def __init__(self, ffn: LayerFFN, X: torch.Tensor) -> None:
        self.H = ffn.hidden(X)
        self.peak = self.H.abs().amax(0) * ffn.D.abs().amax(1)
        self.total = max(float(self.peak.sum()), 1e-30)

    def cost(self, kept: torch.Tensor) -> float:
        return 1.0 - float(self.peak[kept].sum()) / self.total

    def curve(self, order: torch.Tensor, widths: list[int]) -> list[float]:
        cum = torch.cat([self.peak.new_zeros(1), self.peak[order].cumsum(0)])
        return [1.0 - float(cum[k]) / self.total for k in widths]


class OutputReward:
    """Relative squared error of the FFN output when only ``kept`` neurons remain."""

    gram_limit = 4096
    """Up to this width the error is a quadratic form in an m x m matrix (fast, O(m^2) per call)."""

    def __init__(self, ffn: LayerFFN, X: torch.Tensor) -> None:
        H = ffn.hidden(X)  # N x m
        self.H, self.D = H, ffn.D
        self.total = max(float((H @ ffn.D).pow(2).sum()), 1e-30)
        self.output_energy = self.total / H.shape[0]
        """Mean squared norm of the FFN output per token."""
        # ||H_R D_R||^2 = 1_R^T ((H^T H) o (D D^T)) 1_R: precompute the m x m form when it is small
        self.M = (H.T @ H) * (ffn.D @ ffn.D.T) if H.shape[1] <= self.gram_limit else None

    def _removed_error(self, removed: torch.Tensor) -> float:
        if removed.numel() == 0:
            return 0.0
        if self.M is not None:
            r = torch.zeros(self.M.shape[0], dtype=self.M.dtype, device=self.M.device)
            r[removed] = 1.0
            return float(r @ (self.M @ r)) / self.total
        return float((self.H[:, removed] @ self.D[removed]).pow(2).sum()) / self.total

    def cost(self, kept: torch.Tensor) -> float:
        mask = torch.ones(self.H.shape[1], dtype=torch.bool, device=self.H.device)
        mask[kept] = False
        return self._removed_error(mask.nonzero().squeeze(-1))

    def curve(self, order: torch.Tensor, widths: list[int]) -> list[float]:
        return [self._removed_error(order[k:]) for k in widths]
