"""Quantization schemes as data: one entry per ``--quant`` name, read by the planner, writer and checks.

Each entry says how weights are rounded (bits, integer or float, per output channel or per group of
input columns, always symmetric: vLLM's CPU and CUDA kernels take no zero points for these formats),
how activations are handled at run time (nothing is stored for them: every scheme here is data-free)
and which widths the kernels that serve it accept. The kernel facts are vLLM's: ``k_multiple`` /
``n_multiple`` are what its CPU kernels need per tensor-parallel rank (CUDA's Marlin/CUTLASS need no
more for these widths), and a grouped scheme's group must also divide K per rank.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

__all__ = ["QuantScheme", "QuantSpec", "SCHEMES", "QUANT_CHOICES", "GROUP_CHOICES", "CLIPPINGS", "ROUNDINGS"]


@dataclass(frozen=True)
class QuantScheme:
    name: str
    bits: int
    kind: str
    """'int' or 'float' (float8 e4m3)."""
    grouped: bool
    """Scales per group of ``group`` input columns (else one per output channel)."""
    format: str
    """compressed-tensors format name: how the quantized weight is stored."""
    activations: str | None
    """Run-time activation quantization: 'int' / 'float' dynamic per token (8 bits), None: unquantized."""
    k_multiple: int = 1
    n_multiple: int = 1
    device_note: str = ""
    rounding: str = "nearest"
    """How weights are rounded unless ``--quant-rounding`` says otherwise (:data:`ROUNDINGS`)."""

    @property
    def qmax(self) -> float:
        """The largest magnitude the symmetric grid represents."""
        return 448.0 if self.kind == "float" else float(2 ** (self.bits - 1) - 1)

    def width_multiple(self, group: int | None) -> int:
        """What every per-rank K and N must be a multiple of, for this scheme's kernels."""
        base = math.lcm(self.k_multiple, self.n_multiple)
        return math.lcm(base, group) if self.grouped and group else base


SCHEMES: dict[str, QuantScheme] = {
    # int8 weights per channel, int8 activations quantized per token at run time (oneDNN on CPU, CUTLASS on CUDA)
    "w8a8": QuantScheme("w8a8", 8, "int", False, "int-quantized", "int", k_multiple=16, n_multiple=16),
    # int4 weights in groups, bf16/fp16 activations (vLLM CPUWNA16 / Marlin): K and N multiples of 32
    # (GPTQ on self-text by default: at 4 bits round-to-nearest costs a small model most of its quality)
    "w4a16": QuantScheme("w4a16", 4, "int", True, "pack-quantized", None, k_multiple=32, n_multiple=32,
                         rounding="gptq"),
    # fp8 e4m3 weights per channel, fp8 activations per token (CUDA compute capability >= 8.9)
    "fp8": QuantScheme("fp8", 8, "float", False, "float-quantized", "float", k_multiple=16, n_multiple=16,
                       device_note="needs CUDA compute capability >= 8.9"),
}

QUANT_CHOICES = ("none", *SCHEMES)
GROUP_CHOICES = (128, 64, 32)
"""Group sizes tried, largest first (fewer scales), when ``--quant-group`` is not given."""
CLIPPINGS = ("mse", "minmax")
ROUNDINGS = ("gptq", "nearest")
"""``gptq``: GPTQ on the model's own self-text (:mod:`prunenet.quantization.gptq`); ``nearest``: each
weight on its own."""


@dataclass(frozen=True)
class QuantSpec:
    """A scheme resolved for one model: the group size and scale search chosen."""

    scheme: str
    group: int | None = None
    clipping: str = "mse"
    rounding: str = "nearest"

    @property
    def info(self) -> QuantScheme:
        return SCHEMES[self.scheme]

    def record(self) -> dict[str, Any]:
        """What the plan, the model card and the JSON report say about it."""
        s = self.info
        return {"scheme": self.scheme, "bits": s.bits, "type": s.kind, "symmetric": True,
                "granularity": f"group {self.group}" if s.grouped else "channel", "group": self.group,
                "clipping": self.clipping, "rounding": self.rounding, "activations": f"dynamic per-token {s.activations}8" if s.activations
                else "unquantized", "format": s.format, "ignored": ["lm_head", "embeddings"]}

    def ct_scheme(self, targets: Sequence[str] = ("Linear",)):
        """The compressed-tensors :class:`QuantizationScheme` the writer packs with and readers decompress by."""
        from compressed_tensors.quantization import QuantizationArgs, QuantizationScheme

        s = self.info
        weights = QuantizationArgs(num_bits=s.bits, type=s.kind, symmetric=True, dynamic=False,
                                   strategy="group" if s.grouped else "channel",
                                   group_size=self.group if s.grouped else None)
        acts = (QuantizationArgs(num_bits=8, type=s.activations, strategy="token", symmetric=True, dynamic=True)
                if s.activations else None)
        return QuantizationScheme(targets=list(targets), weights=weights, input_activations=acts, format=s.format)

    def ct_config(self) -> dict[str, Any]:
        """``config.json``'s ``quantization_config``: every decoder Linear, the LM head left out."""
        from compressed_tensors.quantization import QuantizationConfig

        cfg = QuantizationConfig(config_groups={"group_0": self.ct_scheme()}, format=self.info.format,
                                 ignore=["lm_head"], quantization_status="compressed")
        return {**cfg.model_dump(exclude_none=True), "quant_method": "compressed-tensors"}
