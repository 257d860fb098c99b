"""Quantize decoder linears while the HF writer streams them: one weight in, its compressed tensors out.

A quantized linear is stored as compressed-tensors lays it out (``weight`` int8/fp8 + ``weight_scale``,
or ``weight_packed`` int32 + ``weight_scale`` + ``weight_shape`` for 4 bits), packed by
compressed-tensors' own compressor so that vLLM and transformers read exactly what they expect. The
shard writer asks for tensors in its own order (by element size, then name), so a module's parts
arrive apart: only its scales are kept between them (a few floats per row or group), never a weight.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from exporters.hf.shards import TensorSpec
from prunenet.quantization.numerics import compute_scales
from prunenet.quantization.schemes import QuantSpec

__all__ = ["StreamingQuantizer"]


class StreamingQuantizer:
    """Maps the writer's planned tensors to compressed ones and produces them on demand."""

    def __init__(self, spec: QuantSpec, linears: set[str], scale_dtype: torch.dtype,
                 given: Callable[[str], torch.Tensor | None] | None = None):
        """``linears``: names of the weights to quantize; ``scale_dtype``: scales are rounded to it (the
        written activation dtype, which vLLM's 4-bit kernels hold them in). ``given(name)``: the scales a
        weight was already rounded with (GPTQ), None where they are searched here."""
        from compressed_tensors.compressors import BaseCompressor

        self.spec, self.linears, self.scale_dtype, self.given = spec, linears, scale_dtype, given
        self.scheme = spec.ct_scheme()
        self.compressor = BaseCompressor.get_value_from_registry(spec.info.format)
        self._parts: dict[str, tuple[str, str]] = {}  # output name -> (source weight name, part)
        self._scales: dict[str, torch.Tensor] = {}
        self._pending: dict[str, set[str]] = {}
        self._shapes: dict[str, tuple[int, int]] = {}

    def expand(self, t: TensorSpec) -> list[TensorSpec]:
        """The tensors written in place of ``t`` (``t`` itself unless it is a quantized linear)."""
        if t.name not in self.linears:
            return [t]
        base = t.name.removesuffix("weight")
        n, k = t.shape
        s = self.spec.info
        scale = TensorSpec(base + "weight_scale", torch.float32, (n, k // self.spec.group if s.grouped else 1))
        if s.format == "pack-quantized":
            per_int = 32 // s.bits
            out = [TensorSpec(base + "weight_packed", torch.int32, (n, -(-k // per_int))), scale,
                   TensorSpec(base + "weight_shape", torch.int64, (2,))]
        else:
            out = [TensorSpec(t.name, torch.float8_e4m3fn if s.kind == "float" else torch.int8, (n, k)), scale]
        for o in out:
            self._parts[o.name] = (t.name, o.name.removeprefix(base))
        self._pending[t.name] = {o.name for o in out}
        self._shapes[t.name] = (n, k)
        return out

    def produce(self, name: str, read: Callable[[str], torch.Tensor]) -> torch.Tensor:
        """Output tensor ``name``; ``read(source_name)`` gives the (sliced, cast) tensor the plan writes."""
        if name not in self._parts:
            return read(name)
        source, part = self._parts[name]
        self._pending[source].discard(name)
        if part == "weight_shape":
            out = torch.tensor(self._shapes[source], dtype=torch.int64)
        elif part == "weight_scale" and source in self._scales:
            out = self._scales[source]
        else:
            w = read(source).float()
            scale = self._scales.get(source)
            if scale is None and self.given is not None:
                scale = self.given(source)
            if scale is None:
                scale = compute_scales(w, self.spec.info, self.spec.group, self.spec.clipping, self.scale_dtype)
            self._scales[source] = scale
            out = scale if part == "weight_scale" else self.compressor.compress(
                {"weight": w, "weight_scale": scale}, self.scheme)[part]
        if all(self._parts[p][1] == "weight_shape" for p in self._pending[source]):
            self._scales.pop(source, None)  # every part that needs the scale is written
        return out
