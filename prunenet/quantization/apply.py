"""Fake-quantize a loaded decoder layer in place: the reference a quantized export must reproduce."""

from __future__ import annotations

from collections.abc import Callable

import torch

from prunenet.quantization.numerics import dequantize, fake_quantize_, fake_quantize_activations, quantize
from prunenet.quantization.schemes import QuantSpec

__all__ = ["fake_quantize_layer_", "quantize_inputs_"]


@torch.no_grad()
def fake_quantize_layer_(module: torch.nn.Module, prefix: str, linears: set[str], spec: QuantSpec,
                         scale_dtype: torch.dtype,
                         scales: Callable[[str], torch.Tensor | None] | None = None) -> torch.nn.Module:
    """Replace every weight of ``module`` named (with ``prefix``) in ``linears`` by its quantize-dequantize
    round trip; the same rounding the writer stores. ``scales(name)``: the scales a weight was already
    rounded with (GPTQ), None where the scheme's own search chooses them."""
    for name, param in module.named_parameters():
        if prefix + name in linears:
            given = scales(prefix + name) if scales is not None else None
            if given is None:
                fake_quantize_(param.data, spec.info, spec.group, spec.clipping, scale_dtype)
            else:
                param.data.copy_(dequantize(quantize(param.data, given, spec.info), given, param.dtype))
    if spec.info.activations:
        quantize_inputs_(module, prefix, linears, spec.info.activations)
    return module


def quantize_inputs_(module: torch.nn.Module, prefix: str, linears: set[str], kind: str) -> torch.nn.Module:
    """Quantize the inputs of ``module``'s linears named in ``linears`` per token at run time (W8A8, FP8),
    as the serving kernels do; a hook, so it goes when the layer is offloaded and rebuilt."""
    for name, sub in module.named_modules():
        if f"{prefix}{name}.weight" in linears and not getattr(sub, "_prunenet_act_quant", False):
            sub.register_forward_pre_hook(lambda _m, args: (fake_quantize_activations(args[0], kind), *args[1:]))
            sub._prunenet_act_quant = True
    return module
