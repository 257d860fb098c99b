"""A 4/8-bit graph proves itself against torch running the same round-to-nearest weights.

Greedy tokens of a quantized graph cannot be required to equal torch's: on CPU the MatMulNBits
kernel also quantizes its activations to int8 per block (``accuracy_level=4``), so near-ties
resolve differently. The reference is the torch model with :func:`~exporters.onnx.quant.fake_quantize_`
weights, teacher-forced on the graph's own greedy sequence; the graph must pick the reference's
top-1 token at :data:`MIN_TOP1` of the positions and stay within :data:`RELATIVE_TOL` of its
logits (relative to the largest logit). Both bounds are loose enough for the activation rounding
and tight enough that a wrong block size, an asymmetric code or a missing layer fails.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import numpy as np

from exporters.onnx.decoders import OrtDecoder, TorchDecoder
from exporters.onnx.quant import fake_quantize_
from exporters.onnx.validate import GREEDY_TOKENS, _prompt_ids
from prunenet.errors import ExportValidationError

__all__ = ["MIN_TOP1", "RELATIVE_TOL", "validate_quantized", "compare_to_reference"]

MIN_TOP1 = 0.9
RELATIVE_TOL = {4: 0.08, 8: 0.03}
"""Largest |graph - reference| logit over the largest |reference| logit, per weight bit width."""


def compare_to_reference(model, out_dir: Path, config: dict, prompts: list[str], bits: int, block: int, *,
                         head: bool) -> dict[str, Any]:
    """Top-1 agreement and relative logit error of the graph vs the fake-quantized torch model."""
    reference = copy.deepcopy(model)
    fake_quantize_(reference, bits, block, head=head)
    ort_model, torch_model = OrtDecoder(out_dir), TorchDecoder(reference)
    agree = total = 0
    worst = 0.0
    try:
        for ids in _prompt_ids(out_dir, prompts, int(config["vocab_size"])):
            got = ort_model.generate(ids, GREEDY_TOKENS, keep_logits=True)
            seq = np.concatenate([ids, got.tokens[:, :-1]], axis=1)
            ref = torch_model.forward(seq, np.ones_like(seq), np.tile(np.arange(seq.shape[1]), (1, 1)))
            ref = ref[:, ids.shape[1] - 1:]
            steps = np.stack(got.logits, axis=1)
            agree += int((ref.argmax(-1) == got.tokens).sum())
            total += got.tokens.size
            worst = max(worst, float(np.abs(ref - steps).max() / max(1.0, np.abs(ref).max())))
    finally:
        ort_model.close()
    return {"top1_agreement": agree / total, "relative_logit_diff": worst, "positions": total}


def validate_quantized(model, out_dir: Path, config: dict, prompts: list[str], bits: int, block: int, *,
                       head: bool) -> dict[str, Any]:
    """:func:`compare_to_reference`, raising when it falls outside the bounds of the module docstring."""
    result = compare_to_reference(model, out_dir, config, prompts, bits, block, head=head)
    tol = RELATIVE_TOL[bits]
    if result["top1_agreement"] < MIN_TOP1 or result["relative_logit_diff"] > tol:
        raise ExportValidationError(
            f"the int{bits} graph disagrees with torch on the same rounded weights: top-1 agreement "
            f"{result['top1_agreement']:.3f} (need {MIN_TOP1}), relative logit diff "
            f"{result['relative_logit_diff']:.3g} (tolerance {tol})")
    return {**result, "method": f"teacher-forced torch pass, int{bits} fake-quant weights (block {block})",
            "prompts": len(prompts), "tokens_per_prompt": GREEDY_TOKENS, "min_top1": MIN_TOP1,
            "relative_tolerance": tol, "max_logit_diff": result["relative_logit_diff"], "greedy_match": None}
