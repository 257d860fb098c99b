"""Turn ``--quant`` / ``--quant-group`` into a resolved spec and a planner width step, before any work."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

from prunenet.arch import get_arch_spec
from prunenet.planning.parallel import check_tensor_parallel
from prunenet.planning.plan import PruningPlan
from prunenet.quantization.checks import check_plan_widths, linear_shapes, resolve_quant, width_multiple
from prunenet.quantization.schemes import QuantSpec
from prunenet.source.checkpoint import Checkpoint

__all__ = ["prepare_quant", "plan_with_quant"]


def prepare_quant(source: Path, scheme: str, group: int | None, tp: Sequence[int],
                  align: int, rounding: str = "auto") -> tuple[QuantSpec | None, int]:
    """``(spec, align)``: the resolved scheme (None for ``none``) and the ``--align`` the planner must use,
    the least common multiple of ``--align`` and what the scheme's kernels need per rank times ``--tp``.
    Also refuses a ``--tp`` that vLLM could not shard the attention heads by."""
    ckpt = Checkpoint(source)
    check_tensor_parallel(ckpt.config, tp)
    spec = get_arch_spec(ckpt.config.get("model_type"))
    quant = resolve_quant(scheme, group, ckpt.config, linear_shapes(ckpt.shapes(), spec.layers_prefix), tp,
                          rounding=rounding)
    return quant, math.lcm(align, width_multiple(quant, tp))


def plan_with_quant(plan: PruningPlan, quant: QuantSpec | None, tp: Sequence[int] = ()) -> PruningPlan:
    """The plan, recording the quantization (a saved plan's widths are checked against it first)."""
    if quant is None:
        return plan
    check_plan_widths(plan.widths, max(lp.original_width for lp in plan.layers), quant, tp)
    return replace(plan, extra={**plan.extra, "quantization": quant.record()})
