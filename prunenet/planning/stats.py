"""Plan statistics: parameter counts before and after a plan, from tensor shapes alone (no weights read)."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from prunenet.arch import get_arch_spec
from prunenet.planning.plan import PruningPlan
from prunenet.source.checkpoint import Checkpoint

__all__ = ["parameter_stats"]


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
