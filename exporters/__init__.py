"""Export targets: each consumes a source checkpoint and a pruning plan and writes one directory.

A healed run adds one more input, the healed FFN tensors (``ExportConfig.healed``), read in place of
the sliced source tensors of the same names.

Each target in :data:`exporters.targets.TARGETS` names a writer ``(source, plan, out, cfg) -> report``
defined here. Writers write into ``out`` (a staging directory; the job commits it atomically) and know
nothing of the policy or of how the plan was made. A new target is one ``TARGETS`` entry and one
sub-package (``exporters/hf``, ``exporters/onnx``); staging and the model card are shared by all.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from prunenet.planning.plan import PruningPlan
from prunenet.quantization.schemes import QuantSpec

__all__ = ["ExportConfig", "export_hf", "export_onnx_target"]


@dataclass(frozen=True)
class ExportConfig:
    compat: str = "native"
    """'native' (per-layer widths, remote code / vLLM plugin) or 'padded' (stock architecture)."""
    validate: bool = True
    device: str = "cpu"
    """Where validation (and the ONNX export's checks) compute."""
    dtype: str | None = None
    """dtype of the written weights ('bfloat16', 'float16', 'float32'); None keeps the source's."""
    healed: Path | None = None
    """A :class:`~prunenet.healing.weights.HealedWeights` directory: its tensors replace the sliced source ones."""
    quant: QuantSpec | None = None
    """Decoder linears written quantized (compressed-tensors); None: floating point."""
    scheme: str = "none"
    """The ``--quant`` name for a target that quantizes in its own format (onnx: MatMulNBits), with ``group``."""
    group: int | None = None


def export_hf(source: Path, plan: PruningPlan, out: Path, cfg: ExportConfig) -> dict[str, Any]:
    import torch

    from exporters.hf.validate import validate_hf_export
    from exporters.hf.writer import write_hf_checkpoint
    from prunenet.healing.weights import HealedWeights

    dtype = getattr(torch, cfg.dtype) if cfg.dtype else None
    healed = HealedWeights(cfg.healed) if cfg.healed is not None else None
    config = write_hf_checkpoint(source, plan, out, compat=cfg.compat, dtype=dtype, healed=healed, quant=cfg.quant)
    report: dict[str, Any] = {"architecture": config["architectures"][0], "compat": cfg.compat,
                              "dtype": config.get("dtype") or config.get("torch_dtype")}
    if cfg.validate:
        report["max_logit_diff"] = validate_hf_export(source, out, plan, dtype=dtype, device=cfg.device,
                                                       healed=healed, quant=cfg.quant)
    return report


def export_onnx_target(source: Path, plan: PruningPlan, out: Path, cfg: ExportConfig) -> dict[str, Any]:
    from exporters.onnx.export import export_onnx
    from exporters.onnx.quant import OnnxOptions

    # the intermediate HF directory lives inside the (staging) output, so a killed run leaves one directory
    # to clean, never a stray sibling
    with tempfile.TemporaryDirectory(prefix=".prunenet-hf-", dir=out) as tmp:
        hf_dir = Path(tmp)
        report = export_hf(source, plan, hf_dir, cfg)
        report["onnx"] = export_onnx(hf_dir, out, device=cfg.device, validate=cfg.validate, dtype=cfg.dtype,
                                     options=OnnxOptions(quant=cfg.scheme, group=cfg.group), given=_given_scales(cfg, source))
    return report


def _given_scales(cfg: ExportConfig, source: Path):
    """The scales of the weights GPTQ rounded (they sit with the healed tensors), keyed as the builder reads them."""
    import torch

    from exporters.onnx.nbits import RowScales
    from prunenet.healing.weights import HealedWeights
    from prunenet.source.checkpoint import Checkpoint

    if cfg.healed is None:
        return None
    dtype = getattr(torch, cfg.dtype) if cfg.dtype else Checkpoint(source).dtype
    table = RowScales.from_weights(HealedWeights(cfg.healed), dtype)
    return table or None

