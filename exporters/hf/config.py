"""Rewrite a source ``config.json`` for a pruning plan: the one place per-layer widths are encoded.

Uniform widths give a stock config. Non-uniform widths keep ``model_type`` (so every tool
parses the config), name a ``Pruned<Base>ForCausalLM`` architecture (served by our vLLM
plugin, and unknown elsewhere so nothing silently loads the wrong shapes), set the scalar width
to the widest layer, list every layer's width in ``intermediate_sizes`` and map the auto classes
to the ``modeling_pruned.py`` shipped in the directory. ``padded`` zero-pads every layer to the
widest one and keeps the stock architecture.
"""

from __future__ import annotations

import copy
from typing import Any

from prunenet.arch import MODELING_FILE, ArchSpec
from prunenet.planning.plan import PruningPlan
from prunenet.version import __version__

__all__ = ["COMPAT_MODES", "rewrite_config", "needs_modeling_file"]

COMPAT_MODES = ("native", "padded")


def needs_modeling_file(plan: PruningPlan, compat: str) -> bool:
    """Only non-uniform native exports ship remote code; padded and uniform ones are stock."""
    return compat == "native" and not plan.is_uniform


def rewrite_config(config: dict[str, Any], spec: ArchSpec, plan: PruningPlan, compat: str = "native") -> dict[str, Any]:
    """Return a new config dict describing the pruned model."""
    if compat not in COMPAT_MODES:
        raise ValueError(f"compat must be one of {COMPAT_MODES}")
    cfg = copy.deepcopy(config)
    for key in ("intermediate_sizes", "auto_map", "quantization_config"):
        cfg.pop(key, None)
    widths = plan.widths
    cfg[spec.width_attr] = max(widths)
    cfg["architectures"] = [spec.hf_architecture]
    if needs_modeling_file(plan, compat):
        module = MODELING_FILE.removesuffix(".py")
        cfg["architectures"] = [spec.pruned_architecture]
        cfg["intermediate_sizes"] = list(widths)
        cfg["auto_map"] = {
            "AutoModel": f"{module}.{spec.pruned_base_model}",
            "AutoModelForCausalLM": f"{module}.{spec.pruned_architecture}",
        }
    cfg["pruning"] = {
        "tool": f"prunenet-deploy {__version__}",
        "method": plan.method,
        "ratio": plan.ratio,
        "allocation": plan.allocation,
        "align": plan.align,
        "seed": plan.seed,
        "source": plan.source,
        "calibration_data": "none",
        "compat": compat if not plan.is_uniform else "stock",
        "widths": list(widths),
    }
    return cfg
