"""A 4/8-bit graph proves itself against torch running the same round-to-nearest weights.

Greedy tokens of a quantized graph cannot be required to equal torch's: on CPU the MatMulNBits
kernel also quantizes its activations to int8 per block (``accuracy_level=4``), so near-ties
resolve differently. The reference is the torch model with :func:`~exporters.onnx.quant.fake_quantize_`
weights, teacher-forced on the graph's own greedy sequence; the graph must pick the reference's
top-1 token at :data:`MIN_TOP1` of the positions, and the mean KL divergence of its next-token
distribution from the reference's must stay under :data:`KL_TOL`. On the default model pruned at
0.3 the int4 graph (MSE-clipped scales; head and tied embedding one 4-bit matrix) sits at top-1 0.948
/ KL 0.006 against the right reference, while a reference with block 16 or 64, or none, scored top-1
<= 0.875 / KL >= 0.37 (measured with round-to-nearest weights): KL is the bound that separates them;
the 4-bit top-1 bound leaves room for the activation rounding's near-ties (96 positions).
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

__all__ = ["MIN_TOP1", "KL_TOL", "validate_quantized", "compare_to_reference"]

MIN_TOP1 = {4: 0.85, 8: 0.9}
"""Teacher-forced top-1 agreement with the reference, per weight bit width."""
KL_TOL = {4: 0.15, 8: 0.05}
"""Mean KL(reference || graph) over the generated positions, per weight bit width."""


def compare_to_reference(model, out_dir: Path, config: dict, prompts: list[str], bits: int, block: int, *,
                         head: bool, scales: str | None = None, given=None) -> dict[str, Any]:
    """Top-1 agreement and relative logit error of the graph vs the fake-quantized torch model."""
    reference = copy.deepcopy(model)
    fake_quantize_(reference, bits, block, head=head, scales=scales, given=given)
    ort_model, torch_model = OrtDecoder(out_dir), TorchDecoder(reference)
    agree = total = 0
    kl_sum = worst = 0.0
    try:
        for ids in _prompt_ids(out_dir, prompts, int(config["vocab_size"])):
            got = ort_model.generate(ids, GREEDY_TOKENS, keep_logits=True)
            seq = np.concatenate([ids, got.tokens[:, :-1]], axis=1)
            ref = torch_model.forward(seq, np.ones_like(seq), np.tile(np.arange(seq.shape[1]), (1, 1)))
            ref = ref[:, ids.shape[1] - 1:]
            steps = np.stack(got.logits, axis=1)
            agree += int((ref.argmax(-1) == got.tokens).sum())
            total += got.tokens.size
            kl_sum += float(_kl(ref, steps).sum())
            worst = max(worst, float(np.abs(ref - steps).max()))
    finally:
        ort_model.close()
    return {"top1_agreement": agree / total, "kl": kl_sum / total, "max_logit_diff": worst, "positions": total}


def _kl(ref: np.ndarray, got: np.ndarray) -> np.ndarray:
    """KL(softmax(ref) || softmax(got)) over the last axis."""
    def log_softmax(x: np.ndarray) -> np.ndarray:
        x = x.astype(np.float64) - x.max(-1, keepdims=True)
        return x - np.log(np.exp(x).sum(-1, keepdims=True))

    lr, lg = log_softmax(ref), log_softmax(got)
    return (np.exp(lr) * (lr - lg)).sum(-1)


def validate_quantized(model, out_dir: Path, config: dict, prompts: list[str], bits: int, block: int, *,
                       head: bool, scales: str | None = None, given=None) -> dict[str, Any]:
    """:func:`compare_to_reference`, raising when it falls outside the bounds of the module docstring."""
    result = compare_to_reference(model, out_dir, config, prompts, bits, block, head=head, scales=scales,
                                  given=given)
    tol = KL_TOL[bits]
    min_top1 = MIN_TOP1[bits]
    if result["top1_agreement"] < min_top1 or result["kl"] > tol:
        raise ExportValidationError(
            f"the int{bits} graph disagrees with torch on the same rounded weights: top-1 agreement "
            f"{result['top1_agreement']:.3f} (need {min_top1}), KL {result['kl']:.3g} (tolerance {tol})")
    scales = scales or ("mse" if bits == 4 else "rtn")
    return {**result, "method": f"teacher-forced torch pass, int{bits} fake-quant weights (block {block}, "
                                f"{scales} scales)",
            "prompts": len(prompts), "tokens_per_prompt": GREEDY_TOKENS, "min_top1": min_top1, "kl_tolerance": tol,
            "greedy_match": None}
