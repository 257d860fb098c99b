"""Symmetric weight quantization as pure functions: scales, rounding, the fake-quantized weight.

Scales are one per output channel (``group=None``) or one per ``group`` consecutive input columns.
``minmax`` maps each row's (group's) largest magnitude onto the grid's end, so nothing is clipped;
``mse`` shrinks that range by the factor (from a fixed grid) that minimises the group's squared
rounding error: clipping a few outliers buys a finer step for every other weight, which matters at 4
bits. Both use the weights alone (data-free). Rounding matches compressed-tensors' quantizer
(divide, round half to even, clamp) so that a checkpoint it decompresses equals :func:`fake_quantize`.
"""

from __future__ import annotations

import torch

from prunenet.quantization.schemes import QuantScheme

__all__ = ["compute_scales", "quantize", "dequantize", "fake_quantize", "fake_quantize_", "CLIP_GRID", "ROW_BLOCK"]

CLIP_GRID = tuple(1.0 - 0.025 * i for i in range(21))
"""Range shrink factors the MSE search tries (1.0 = min-max, down to 0.5)."""
_TINY = 1e-12


def _grouped(w: torch.Tensor, group: int | None) -> torch.Tensor:
    """[N, K] -> [N, K/group, group] (or [N, 1, K] per channel), in fp32."""
    n, k = w.shape
    g = group or k
    if k % g:
        raise ValueError(f"group {g} does not divide K={k}")
    return w.float().reshape(n, k // g, g)


def _round(x: torch.Tensor, scheme: QuantScheme) -> torch.Tensor:
    """Values on the scheme's grid (still fp32), saturating at the grid's ends."""
    if scheme.kind == "float":
        return x.clamp(-scheme.qmax, scheme.qmax).to(torch.float8_e4m3fn).float()
    return torch.round(x).clamp(-scheme.qmax - 1, scheme.qmax)


def _store(scale: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """Scales rounded to ``dtype`` (kept in fp32): vLLM's 4-bit kernels hold them in the activation dtype,
    so every reader then reconstructs the same weights."""
    return scale.clamp_min(_TINY).to(dtype).float()


ROW_BLOCK = 256
"""Rows searched at a time: every row's scales are independent, and small blocks keep the search's
temporaries (a few copies of the block per clipping factor) in cache instead of a few copies of a
7B-size matrix per factor."""


def compute_scales(w: torch.Tensor, scheme: QuantScheme, group: int | None = None, clipping: str = "mse",
                   scale_dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """fp32 scales, shape [N, K/group] ([N, 1] per channel). An all-zero row gets a tiny positive scale."""
    if clipping not in ("mse", "minmax"):
        raise ValueError(f"unknown clipping {clipping!r}")
    return torch.cat([_block_scales(w[i:i + ROW_BLOCK], scheme, group, clipping, scale_dtype)
                      for i in range(0, w.shape[0], ROW_BLOCK)])


def _block_scales(w: torch.Tensor, scheme: QuantScheme, group: int | None, clipping: str,
                  scale_dtype: torch.dtype) -> torch.Tensor:
    g = _grouped(w, group if scheme.grouped else None)
    amax = g.abs().amax(dim=-1)
    best = _store(amax / scheme.qmax, scale_dtype)
    if clipping == "minmax" or scheme.kind == "float":
        return best
    best_err = _error(g, best, scheme)
    for factor in CLIP_GRID[1:]:
        scale = _store(amax * factor / scheme.qmax, scale_dtype)
        err = _error(g, scale, scheme)
        better = err < best_err
        best = torch.where(better, scale, best)
        best_err = torch.where(better, err, best_err)
    return best


def _error(g: torch.Tensor, scale: torch.Tensor, scheme: QuantScheme) -> torch.Tensor:
    s = scale.unsqueeze(-1)
    return (_round(g / s, scheme) * s - g).pow_(2).sum(dim=-1)


def _expand(scale: torch.Tensor, k: int) -> torch.Tensor:
    """[N, K/group] -> [N, K]: each column's scale."""
    return scale.repeat_interleave(k // scale.shape[1], dim=1)


def quantize(w: torch.Tensor, scale: torch.Tensor, scheme: QuantScheme) -> torch.Tensor:
    """Grid values: int8 (int schemes, 4-bit values in int8) or float8_e4m3fn."""
    q = _round(w.float() / _expand(scale, w.shape[1]), scheme)
    return q.to(torch.float8_e4m3fn if scheme.kind == "float" else torch.int8)


def dequantize(q: torch.Tensor, scale: torch.Tensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    return (q.float() * _expand(scale, q.shape[1])).to(dtype)


def fake_quantize(w: torch.Tensor, scheme: QuantScheme, group: int | None = None, clipping: str = "mse",
                  scale_dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """The weight a reader of the quantized checkpoint reconstructs, in ``w``'s dtype."""
    return fake_quantize_(w.clone(), scheme, group, clipping, scale_dtype)


@torch.no_grad()
def fake_quantize_(w: torch.Tensor, scheme: QuantScheme, group: int | None = None, clipping: str = "mse",
                   scale_dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """:func:`fake_quantize` in place, :data:`ROW_BLOCK` rows at a time: the self-check rounds a 7B
    layer's weights without a full-size temporary per step."""
    if clipping not in ("mse", "minmax"):
        raise ValueError(f"unknown clipping {clipping!r}")
    for i in range(0, w.shape[0], ROW_BLOCK):
        rows = w[i:i + ROW_BLOCK]
        scale = _block_scales(rows, scheme, group, clipping, scale_dtype)
        rows.copy_(dequantize(quantize(rows, scale, scheme), scale, w.dtype))
    return w


def fake_quantize_activations(x: torch.Tensor, kind: str) -> torch.Tensor:
    """Dynamic symmetric per-token 8-bit quantize-dequantize of a linear's input (``kind`` 'int' or 'float'),
    as compressed-tensors computes it at run time: scale = each token's max |x| / (half the grid's span)."""
    span = 448.0 if kind == "float" else 127.5
    xf = x.float()
    scale = (xf.abs().amax(dim=-1, keepdim=True) / span).clamp_min(_TINY)
    if kind == "float":
        q = (xf / scale).clamp(-448.0, 448.0).to(torch.float8_e4m3fn).float()
    else:
        q = torch.round(xf / scale).clamp(-128, 127)
    return (q * scale).to(x.dtype)
