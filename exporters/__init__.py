"""Export targets: each consumes a source checkpoint and a pruning plan and writes one directory.

``EXPORTERS`` maps ``--target`` names to functions ``(source, plan, out, cfg) -> report``. They
write into ``out`` (a staging directory; the caller commits it atomically) and know nothing of
the policy or of how the plan was made.
"""

from __future__ import annotations

import math
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from prunenet.arch import get_arch_spec
from prunenet.planning.plan import PruningPlan
from prunenet.source.checkpoint import Checkpoint

__all__ = ["ExportConfig", "EXPORTERS", "export_hf", "export_onnx_target", "parameter_stats"]


@dataclass(frozen=True)
class ExportConfig:
    compat: str = "native"
    """'native' (per-layer widths, remote code / vLLM plugin) or 'padded' (stock architecture)."""
    validate: bool = True
    device: str = "cpu"


def export_hf(source: Path, plan: PruningPlan, out: Path, cfg: ExportConfig) -> dict[str, Any]:
    from .hf import write_hf_checkpoint
    from .validate import validate_hf_export

    config = write_hf_checkpoint(source, plan, out, compat=cfg.compat)
    report: dict[str, Any] = {"architecture": config["architectures"][0], "compat": cfg.compat}
    if cfg.validate:
        report["max_logit_diff"] = validate_hf_export(source, out, plan)
    return report


def export_onnx_target(source: Path, plan: PruningPlan, out: Path, cfg: ExportConfig) -> dict[str, Any]:
    from .onnx import export_onnx

    # the intermediate HF directory lives inside the (staging) output, so a killed run leaves one directory
    # to clean, never a stray sibling
    with tempfile.TemporaryDirectory(prefix=".prunenet-hf-", dir=out) as tmp:
        hf_dir = Path(tmp)
        report = export_hf(source, plan, hf_dir, ExportConfig(cfg.compat, cfg.validate, cfg.device))
        report["onnx"] = export_onnx(hf_dir, out, device=cfg.device, validate=cfg.validate)
    return report


EXPORTERS: dict[str, Callable[[Path, PruningPlan, Path, ExportConfig], dict[str, Any]]] = {
    "hf": export_hf,
    "vllm": export_hf,  # same directory; the CLI then checks that vLLM resolves it
    "onnx": export_onnx_target,
}


def parameter_stats(source: Path, plan: PruningPlan) -> dict[str, Any]:
    """Parameter counts before/after, from tensor shapes (no weights read)."""
    ckpt = Checkpoint(source)
    spec = get_arch_spec(plan.model_type)
    shapes = ckpt.shapes()
    before = sum(math.prod(s) for s in shapes.values())
    ffn_before = removed = 0
    for i, lp in enumerate(plan.layers):
        for suffix in spec.row_sliced + spec.col_sliced:
            shape = shapes.get(spec.layer_name(i, suffix))
            if shape is None:
                continue
            per_neuron = math.prod(shape) // lp.original_width
            ffn_before += math.prod(shape)
            removed += per_neuron * (lp.original_width - lp.width)
    return {
        "params_before": before,
        "params_after": before - removed,
        "param_reduction": removed / before if before else 0.0,
        "ffn_params_before": ffn_before,
        "ffn_params_after": ffn_before - removed,
        "ffn_neurons_before": sum(plan.original_widths),
        "ffn_neurons_after": sum(plan.widths),
    }
