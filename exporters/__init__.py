"""Export targets: each consumes a source checkpoint and a pruning plan and writes one directory.

``EXPORTERS`` maps ``--target`` names to functions ``(source, plan, out, cfg) -> report``. They
write into ``out`` (a staging directory; the caller commits it atomically) and know nothing of
the policy or of how the plan was made.
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from prunenet.planning.plan import PruningPlan

__all__ = ["ExportConfig", "EXPORTERS", "export_hf", "export_onnx_target"]


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
