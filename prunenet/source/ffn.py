"""A layer's FFN, read straight from the checkpoint: the matrices the algorithm looks at.

Only FFN tensors (and the FFN input norm's gain) are loaded; the model itself is never built.
Every family is reduced to the same view: ``W`` (first matrix, rows = neurons), ``U`` (up
matrix of a gated FFN), ``D`` (output matrix transposed, rows = neurons) and an activation, so
rewards and statistics are written once.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from transformers.activations import ACT2FN

from prunenet.arch import ArchSpec
from prunenet.source.checkpoint import Checkpoint

__all__ = ["LayerFFN", "load_layer_ffn"]


@dataclass
class LayerFFN:
    """One decoder layer's FFN, in fp32, rows indexed by neuron."""

    W: torch.Tensor
    """First FFN matrix (gate for gated FFNs, fc1 otherwise): the paper's state, m x d."""
    D: torch.Tensor | None
    """Output matrix transposed (down/fc2 columns as rows): m x d_out (None when only the state was read)."""
    gain: torch.Tensor
    """Gain of the norm in front of the FFN (d,), the scale of its inputs."""
    act: str
    U: torch.Tensor | None = None
    """Up matrix of a gated FFN, m x d."""
    bias: torch.Tensor | None = None
    """Bias of the first matrix (fc1), m."""

    @property
    def width(self) -> int:
        return self.W.shape[0]

    def hidden(self, X: torch.Tensor) -> torch.Tensor:
        """Per-neuron activations h(X) (N x m): act(X W^T + b) [* X U^T]."""
        pre = X @ self.W.T
        if self.bias is not None:
            pre = pre + self.bias
        h = ACT2FN[self.act](pre)
        return h * (X @ self.U.T) if self.U is not None else h

    def to(self, device: torch.device | str) -> LayerFFN:
        move = lambda t: None if t is None else t.to(device)  # noqa: E731
        return LayerFFN(move(self.W), move(self.D), move(self.gain), self.act, move(self.U), move(self.bias))


def load_layer_ffn(ckpt: Checkpoint, spec: ArchSpec, layer: int, *, state_only: bool = False) -> LayerFFN:
    """One layer's FFN in fp32. ``state_only`` reads the first matrix alone (the paper's method needs nothing else)."""
    state = ckpt.get(spec.layer_name(layer, spec.state)).float()
    U = None
    if spec.fused_gate_up:  # Phi-3: [gate; up] stacked on rows
        state, U = state.chunk(2, dim=0)
    elif spec.up is not None and not state_only:
        U = ckpt.get(spec.layer_name(layer, spec.up)).float()
    bias_name = spec.layer_name(layer, spec.state.replace(".weight", ".bias"))
    bias = ckpt.get(bias_name).float() if ckpt.has(bias_name) else None
    D = None if state_only else ckpt.get(spec.layer_name(layer, spec.out_proj)).float().T.contiguous()
    norm_name = spec.layer_name(layer, spec.ffn_norm)
    if ckpt.has(norm_name):
        gain = ckpt.get(norm_name).float() + spec.norm_offset
    else:
        gain = torch.ones(state.shape[1])
    return LayerFFN(W=state.contiguous(), D=D, gain=gain, act=spec.activation(ckpt.config), U=U, bias=bias)
