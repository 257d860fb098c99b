"""Singular-value spectra and the two-sample Kolmogorov-Smirnov distance, in torch.

PruneNet's reward (paper §3, reference code ``_calculate_activation_reward``) compares the
singular values of a layer's first FFN matrix with those of its kept rows. Only the values are
needed, so they come from the eigenvalues of the small Gram matrix, never from a full SVD.
"""

from __future__ import annotations

import torch

__all__ = ["singular_values", "gram_singular_values", "ks_distance"]


def singular_values(W: torch.Tensor) -> torch.Tensor:
    """Singular values of ``W`` (descending) via the eigenvalues of its smaller Gram matrix."""
    W = W.float()
    return gram_singular_values(W.T @ W if W.shape[0] >= W.shape[1] else W @ W.T)


def gram_singular_values(G: torch.Tensor) -> torch.Tensor:
    """Singular values (descending) of any matrix whose Gram matrix is ``G``."""
    return torch.linalg.eigvalsh(G).clamp_min(0).sqrt().flip(0)


def ks_distance(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Two-sample KS statistic sup_x |F_a(x) - F_b(x)| (same value as ``scipy.stats.ks_2samp``)."""
    a, b = torch.sort(a.double().flatten()).values, torch.sort(b.double().flatten()).values
    grid = torch.cat([a, b])
    cdf_a = torch.searchsorted(a, grid, right=True).double() / a.numel()
    cdf_b = torch.searchsorted(b, grid, right=True).double() / b.numel()
    return (cdf_a - cdf_b).abs().max()
