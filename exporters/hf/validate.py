"""Every export proves itself: reload the written directory with transformers and compare logits.

The reference is the source model with the plan applied in memory (``apply_plan_``), so a
mistake anywhere in streaming, slicing, padding or the config rewrite shows up as a mismatch.
"""

from __future__ import annotations

from pathlib import Path

import torch

from prunenet.arch import get_arch_spec
from prunenet.errors import ExportValidationError
from prunenet.planning.plan import PruningPlan
from prunenet.planning.surgery import apply_plan_

__all__ = ["validate_hf_export", "load_pruned"]


def load_pruned(path: Path, dtype: torch.dtype = torch.float32):
    """Load an exported directory the way users do (remote code only if the directory ships it)."""
    from transformers import AutoModelForCausalLM

    trust = (Path(path) / "modeling_pruned.py").is_file()
    return AutoModelForCausalLM.from_pretrained(path, dtype=dtype, trust_remote_code=trust).eval()


def validate_hf_export(source: Path, out: Path, plan: PruningPlan, seq_len: int = 16) -> float:
    """Max |logit difference| between the export and the in-memory pruned source; raises if too large."""
    from transformers import AutoModelForCausalLM

    spec = get_arch_spec(plan.model_type)
    reference = AutoModelForCausalLM.from_pretrained(source, dtype=torch.float32).eval()
    apply_plan_(reference, plan)
    exported = load_pruned(out)
    vocab = int(reference.config.vocab_size)
    ids = torch.randint(0, vocab, (2, seq_len), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        diff = (reference(ids).logits - exported(ids).logits).abs().max().item()
    if not diff <= spec.atol * max(1.0, reference(ids).logits.abs().max().item()):
        raise ExportValidationError(f"exported model differs from the pruned model (max |logit diff| {diff:.3g})")
    return diff
