"""Quantization's own share of the quality loss: the same plan scored without quantization beside it.

A quantized export holds no floating-point copy of its weights, so the unquantized reference is the
source with the plan applied layer by layer while it streams (nothing written). Scored on the same
windows as the report, the difference of the two KLs is what quantization adds on top of pruning.
"""

from __future__ import annotations

from pathlib import Path

import torch

from prunenet.evaluation.report import QualityReport
from prunenet.planning.plan import PruningPlan

__all__ = ["evaluate_plan"]


def evaluate_plan(source: Path, plan: PruningPlan, *, device: str = "auto",
                  max_tokens: int | None = 8192) -> QualityReport:
    """Dense source vs the source pruned by ``plan`` (floating point), on the report's default text."""
    from prunenet.arch import get_arch_spec
    from prunenet.compute import Compute
    from prunenet.evaluation.directories import default_seq_len
    from prunenet.evaluation.streaming import compare_streaming
    from prunenet.evaluation.windows import token_windows
    from prunenet.planning.surgery import apply_layer_plan_
    from prunenet.source.loaders import load_tokenizer
    from prunenet.texts import reference_text

    spec = get_arch_spec(plan.model_type)
    windows = token_windows(load_tokenizer(source), reference_text("default"), default_seq_len(source), max_tokens)

    def pruned(i: int, module: torch.nn.Module) -> torch.nn.Module:
        return apply_layer_plan_(module, spec, plan.layers[i])

    meta = {"text": "reference (default slice)", "pruned": "the plan, unquantized", "reference": str(source)}
    return compare_streaming(source, source, windows, compute=Compute.for_checkpoint(device, source), meta=meta,
                             pruned_edit=pruned)
