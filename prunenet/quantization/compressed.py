"""Read a compressed-tensors checkpoint back to floating weights, one module at a time.

The layer-by-layer readers (:class:`~prunenet.source.layerwise.LayerwiseModel`: the export's self-check,
the quality report, ``prunenet eval``) see the quantized linears as vLLM and transformers do: the
scheme comes from the directory's own ``config.json`` and compressed-tensors' own decompressor
rebuilds each weight, so a wrong config or a wrong packing shows up as a quality or validation failure.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from typing import Any

import torch

__all__ = ["CompressedReader", "compressed_reader"]

_PARTS = ("weight", "weight_packed", "weight_scale", "weight_shape", "weight_zero_point", "weight_g_idx")


class CompressedReader:
    def __init__(self, scheme: Any, fmt: str):
        from compressed_tensors.compressors import BaseCompressor

        self.scheme = scheme
        self.compressor = BaseCompressor.get_value_from_registry(fmt)

    def tensors(self, names: Iterable[str], get: Callable[[str], torch.Tensor]) -> Iterator[tuple[str, torch.Tensor]]:
        """``(name, tensor)`` for ``names`` with every compressed module's parts replaced by its ``weight``."""
        names = list(names)
        bases = {n.removesuffix("weight_scale") for n in names if n.endswith(".weight_scale")}
        for name in names:
            base, _, part = name.rpartition(".")
            base += "."
            if base not in bases:
                yield name, get(name)
            elif part == "weight_scale":  # one trigger per module
                local = {p: get(base + p) for p in _PARTS if base + p in names}
                yield base + "weight", self.compressor.decompress(local, self.scheme)["weight"]


    def activations(self) -> str | None:
        """'int' / 'float' when inputs are quantized per token at run time, else None."""
        acts = self.scheme.input_activations
        return None if acts is None else str(getattr(acts.type, "value", acts.type))


def compressed_reader(config: dict[str, Any]) -> CompressedReader | None:
    """The reader for a directory whose config.json has a compressed-tensors ``quantization_config``."""
    qc = config.get("quantization_config")
    if not isinstance(qc, dict) or qc.get("quant_method") != "compressed-tensors":
        return None
    from compressed_tensors.quantization import QuantizationConfig

    parsed = QuantizationConfig.model_validate({k: v for k, v in qc.items() if k != "quant_method"})
    if len(parsed.config_groups) != 1:
        raise ValueError("only one quantization config group is supported")
    scheme = next(iter(parsed.config_groups.values()))
    return CompressedReader(scheme, scheme.format or parsed.format)
