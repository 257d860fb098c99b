"""MSE-clipped scales for the builder's 4-bit MatMulNBits weights.

The builder's int4 graphs are quantized by ONNX Runtime's default blockwise quantizer
(``DefaultWeightOnlyQuantizer.qbits_block_quant``, the MLAS kernel): for each block of ``block`` inputs
of one output column, scale = the block's largest-magnitude value / -8 (so that value lands on the
most negative code), codes = round(w / scale) clamped to [-8, 7], stored + 8 (symmetric
MatMulNBits has no zero-point input; 8 is the kernel's default), two codes per byte, low nibble
first, as ``[N, K/block, block/2]`` uint8 with scales ``[N, K/block]``. That round-to-nearest over
the block's full range costs a 135M model half its top-1 agreement.

:func:`mse_int4_scales` replaces that one step while the builder runs: every decoder weight the
quantizer is handed (``[K, N]``, exactly what the graph's MatMul holds, e.g. packed QKV) gets the
scales of :func:`prunenet.quantization.numerics.compute_scales` with ``clipping="mse"`` (the
``w4a16`` HF/vLLM scales: each block's range shrunk by the factor that minimises its squared
rounding error, codes in [-8, 7]), written in the same layout; the graph, its operators and
attributes are the builder's. The torch reference (:func:`exporters.onnx.quant.fake_quantize_`)
rounds with the same function. The LM head keeps ONNX Runtime's rule: on the default model
(ratio 0.3, torch, weights only) MSE scales on the head cost more KL than round-to-nearest
(0.115 against 0.090 with a float body), while on the decoder they cost less (0.301 against 0.319
with a float head). 8-bit weights keep ONNX Runtime's rule.

Weights GPTQ already rounded (:mod:`prunenet.quantization.rounding`) come with their scales
(:class:`RowScales`), so the graph stores exactly GPTQ's codes. The builder hands the quantizer
reshaped and packed matrices (QKV side by side) under names of its own, so a scale row is found by the
content of the weight row it belongs to.
"""

from __future__ import annotations

import contextlib
import hashlib
from collections.abc import Iterator

import numpy as np

from prunenet.quantization.schemes import SCHEMES

__all__ = ["HEAD_NODE", "INT4_SCHEME", "RowScales", "mse_int4_scales", "pack_int4", "unpack_int4"]

INT4_SCHEME = SCHEMES["w4a16"]
"""Symmetric 4-bit integers, scales per group: the HF/vLLM w4a16 scheme, whose grid MatMulNBits shares."""


class RowScales:
    """Scales chosen before the build, by the content of the weight row (one output channel) they scale."""

    def __init__(self) -> None:
        self._rows: dict[bytes, np.ndarray] = {}

    @staticmethod
    def _key(row: np.ndarray) -> bytes:
        return hashlib.blake2b(np.ascontiguousarray(row, dtype=np.float32).tobytes(), digest_size=16).digest()

    def add(self, weight_nk: np.ndarray, scales: np.ndarray) -> None:
        """``weight_nk``: ``[N, K]`` as the graph's builder will read it (fp32); ``scales``: ``[N, K/block]``."""
        for row, scale in zip(weight_nk, scales, strict=True):
            self._rows[self._key(row)] = np.asarray(scale, dtype=np.float32)

    def lookup(self, weight_nk: np.ndarray) -> np.ndarray | None:
        """``[N, K/block]`` scales of every row, or None if any row is unknown."""
        found = [self._rows.get(self._key(row)) for row in weight_nk]
        return None if any(s is None for s in found) else np.stack(found)

    def __len__(self) -> int:
        return len(self._rows)

    @classmethod
    def from_weights(cls, weights, dtype) -> RowScales:
        """From a :class:`~prunenet.healing.weights.HealedWeights` directory of GPTQ-rounded weights,
        keyed by the weights as written in ``dtype`` and read back in fp32."""
        from prunenet.quantization.rounding import SCALE_SUFFIX

        table = cls()
        for name in weights.names():
            if name + SCALE_SUFFIX in weights:
                w = weights.get(name).to(dtype).float().numpy()
                table.add(w, weights.get(name + SCALE_SUFFIX).float().numpy())
        return table


def pack_int4(weight_kn: np.ndarray, block: int,
              given: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(packed, scales, zero_points)`` of a ``[K, N]`` weight, as ONNX Runtime's quantizer returns them.

    Scales keep the weight's dtype (fp32, or fp16 for a CUDA fp16 graph) and are searched at that
    precision, so the codes are those of the stored scales; ``given`` ``[N, K/block]`` scales are used
    as they are instead (GPTQ's, for a weight already on their grid).
    """
    import torch

    from prunenet.quantization.numerics import compute_scales, quantize

    k, n = weight_kn.shape
    if k % block:
        raise ValueError(f"block {block} does not divide K={k}")
    dtype = torch.float16 if weight_kn.dtype == np.float16 else torch.float32
    w = torch.from_numpy(np.ascontiguousarray(weight_kn.T, dtype=np.float32))  # [N, K]
    scales = (torch.from_numpy(given).to(dtype).float() if given is not None
              else compute_scales(w, INT4_SCHEME, block, clipping="mse", scale_dtype=dtype))
    codes = (quantize(w, scales, INT4_SCHEME).to(torch.int16) + 8).to(torch.uint8).numpy()
    codes = codes.reshape(n, k // block, block)
    packed = codes[..., 0::2] | (codes[..., 1::2] << 4)
    zero_points = np.zeros((n, (k // block + 1) // 2), dtype=np.uint8)  # unused: symmetric
    return np.ascontiguousarray(packed), scales.numpy().astype(weight_kn.dtype), zero_points


def unpack_int4(packed: np.ndarray, scales: np.ndarray) -> np.ndarray:
    """The ``[N, K]`` fp32 weight a symmetric 4-bit MatMulNBits node computes with."""
    n = packed.shape[0]
    codes = np.stack([packed & 0x0F, packed >> 4], -1).reshape(n, -1).astype(np.int8) - 8
    block = codes.shape[1] // scales.reshape(n, -1).shape[1]
    return codes * np.repeat(scales.reshape(n, -1).astype(np.float32), block, axis=1)


HEAD_NODE = "/lm_head/MatMul"
"""The builder's LM head MatMul: it keeps ONNX Runtime's round-to-nearest (see the module docstring)."""


@contextlib.contextmanager
def mse_int4_scales(block: int, keep_rtn: tuple[str, ...] = (HEAD_NODE,),
                    given: RowScales | None = None) -> Iterator[dict[str, int]]:
    """While open, ONNX Runtime's symmetric 4-bit blockwise quantizer (QOperator format) writes
    :func:`pack_int4`'s weights for every MatMul, with the ``given`` scales of the weights that have
    them; those named in ``keep_rtn`` keep ONNX Runtime's own rounding unless their scales are given.
    Yields a counter of the weights written (``{"mse": n, "gptq": m, "rtn": r}``)."""
    from onnxruntime.quantization.matmul_nbits_quantizer import DefaultWeightOnlyQuantizer
    from onnxruntime.quantization.quant_utils import QuantFormat

    original = DefaultWeightOnlyQuantizer.quantize_matmul
    written = {"mse": 0, "gptq": 0, "rtn": 0}

    def block_quant(fp32weight, own_rounding=None):
        if fp32weight.ndim != 2 or fp32weight.shape[0] % block:
            raise ValueError(f"MatMulNBits weight {fp32weight.shape}: block {block} does not divide K")
        scales = given.lookup(fp32weight.T) if given else None
        if scales is None and own_rounding is not None:
            written["rtn"] += 1
            return own_rounding(fp32weight)
        written["mse" if scales is None else "gptq"] += 1
        return pack_int4(fp32weight, block, scales)

    def quantize_matmul(self, node, graph_stack):
        cfg = self.config
        if (cfg.bits != 4 or not cfg.is_symmetric or cfg.quant_format != QuantFormat.QOperator
                or cfg.block_size != block):
            return original(self, node, graph_stack)
        if node.name in keep_rtn and not given:
            written["rtn"] += 1
            return original(self, node, graph_stack)
        own = self.qbits_block_quant if node.name in keep_rtn else None
        # this call only: the instance attribute shadows the method
        self.qbits_block_quant = lambda w: block_quant(w, own)
        try:
            return original(self, node, graph_stack)
        finally:
            del self.qbits_block_quant

    DefaultWeightOnlyQuantizer.quantize_matmul = quantize_matmul
    try:
        yield written
    finally:
        DefaultWeightOnlyQuantizer.quantize_matmul = original
