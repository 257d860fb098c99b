"""Per-neuron state for the improved policy: weight statistics of the whole FFN.

The paper's state is the raw first matrix ``W``. Our default policy reads, for every neuron,
log-magnitudes from all three FFN matrices and from its activations on the reward's inputs,
standardised within the layer, so one small shared policy can weigh "large gate row" against
"rare but huge output" (the outlier neurons the paper's state cannot see).
"""

from __future__ import annotations

import torch

from prunenet.source.ffn import LayerFFN

__all__ = ["FEATURES", "neuron_features"]

FEATURES = (
    "log_norm_W",
    "log_norm_U",
    "log_norm_D",
    "log_absmax_D",
    "log_rms_h",
    "log_absmax_h",
    "log_energy",
    "log_outlier",
)


def _log(t: torch.Tensor) -> torch.Tensor:
    return torch.log(t.clamp_min(1e-12))


def neuron_features(ffn: LayerFFN, H: torch.Tensor) -> torch.Tensor:
    """m x len(FEATURES) standardised features; ``H`` are the neuron activations on the reward inputs."""
    norm_D = ffn.D.norm(dim=1)
    absmax_D = ffn.D.abs().amax(dim=1)
    rms_h = H.pow(2).mean(0).sqrt()
    absmax_h = H.abs().amax(0)
    cols = [
        _log(ffn.W.norm(dim=1)),
        _log(ffn.U.norm(dim=1)) if ffn.U is not None else torch.zeros_like(norm_D),
        _log(norm_D),
        _log(absmax_D),
        _log(rms_h),
        _log(absmax_h),
        _log(rms_h * norm_D),
        _log(absmax_h * absmax_D),
    ]
    F = torch.stack(cols, dim=1)
    return (F - F.mean(0)) / F.std(0).clamp_min(1e-6)
