"""The ONNX export proves itself: ORT greedy decoding (KV cache, IO binding) must equal torch's.

Torch scores ORT's whole generated sequence in one uncached pass (teacher forcing). If torch's
argmax at every new position is the token ORT chose, torch's own greedy loop would have produced
the same tokens, by induction, so this equals comparing two greedy loops at the cost of one pass,
and it checks ORT's cache plumbing against a cache-free reference. A left-padded batch checks
that a traced graph really uses ``attention_mask`` (the builder's graphs take no ``position_ids``
and assume no left padding, as onnxruntime-genai feeds them). For a builder-made directory,
onnxruntime-genai's own generator must then produce ORT's tokens (the directory runs as it is).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from exporters.onnx.decoders import OrtDecoder, TorchDecoder
from prunenet.arch import get_arch_spec
from prunenet.errors import ExportValidationError
from prunenet.source.loaders import has_tokenizer, load_tokenizer

__all__ = ["DEFAULT_PROMPTS", "GREEDY_TOKENS", "validate_decoding"]

DEFAULT_PROMPTS = (
    "The capital of France is",
    "Once upon a time, there was a little girl who",
    "def fibonacci(n):",
)
GREEDY_TOKENS = 32
_RELATIVE_TOL = {"float32": None, "float16": 2e-2, "bfloat16": 5e-2}  # None: the family's ArchSpec.atol


def validate_decoding(model, out_dir: Path, config: dict, prompts: list[str], dtype: str,
                      device: str, *, genai: bool = False) -> dict[str, Any]:
    """ORT greedy decoding of ``prompts`` must be ``model``'s (see the module docstring); raises otherwise."""
    rel = _RELATIVE_TOL[dtype] or get_arch_spec(config.get("model_type")).atol
    ort_model, torch_model = OrtDecoder(out_dir, device=device), TorchDecoder(model)
    outcomes = []
    prompt_ids = _prompt_ids(out_dir, prompts, int(config["vocab_size"]))
    for ids in prompt_ids:
        outcomes.append(_teacher_forced(torch_model, ids, ort_model.generate(ids, GREEDY_TOKENS, keep_logits=True),
                                        rel))
    padded = _padded_batch_diff(torch_model, ort_model, int(config["vocab_size"]), rel) \
        if ort_model.has_position_ids else None
    ort_model.close()
    _raise_on_failure(outcomes, padded)
    result = {
        "prompts": len(outcomes), "tokens_per_prompt": GREEDY_TOKENS, "method": "teacher-forced torch pass",
        "max_logit_diff": max(o["max_logit_diff"] for o in outcomes + ([padded] if padded else [])),
        "greedy_match": all(o["first_mismatch"] is None for o in outcomes),
        "near_ties": sum(o["ties"] for o in outcomes), "relative_tolerance": rel,
        "padded_batch_max_diff": padded["max_logit_diff"] if padded else None,
    }
    if genai:
        result["genai"] = _genai_check(torch_model, out_dir, prompt_ids, rel, device)
    return result


def _teacher_forced(torch_model, ids: np.ndarray, got, rel: float) -> dict[str, Any]:
    """Torch's logits on the engine's own sequence, compared position by position (see :func:`_compare`)."""
    seq = np.concatenate([ids, got.tokens[:, :-1]], axis=1)
    ref = torch_model.forward(seq, np.ones_like(seq), np.tile(np.arange(seq.shape[1]), (seq.shape[0], 1)))
    return _compare(ref[:, ids.shape[1] - 1:], got, rel)


def _genai_check(torch_model, out_dir: Path, prompt_ids: list, rel: float, device: str) -> dict[str, Any]:
    """onnxruntime-genai's generator, loading the directory as it is, held to the same rule as ORT.

    Its KV buffer is shared and preallocated, so attention sums in another order than the plain
    loop's: near-ties may go the other way, which the teacher-forced rule accepts.
    """
    from exporters.onnx.genai import GenaiDecoder

    try:
        decoder = GenaiDecoder(out_dir, device=device)
    except Exception as exc:  # a CPU-only onnxruntime-genai cannot open a CUDA graph; ORT's check still ran
        if not device.startswith("cuda"):
            raise
        return {"skipped": f"onnxruntime-genai cannot load the CUDA graph here: {str(exc).splitlines()[0][:200]}"}
    try:
        outcomes = [_teacher_forced(torch_model, ids, decoder.generate(ids, GREEDY_TOKENS, keep_logits=True,
                                                                   stop_at_eos=True), rel)
                    for ids in prompt_ids]
    finally:
        decoder.close()
    for i, o in enumerate(outcomes):
        if (o["first_mismatch"] is not None and not o["all_ties"]) or o["max_logit_diff"] > o["tolerance"]:
            raise ExportValidationError(
                f"onnxruntime-genai's generator disagrees with torch on prompt {i + 1} (first mismatch at new token "
                f"{o['first_mismatch']}, max logit diff {o['max_logit_diff']:.3g}, tolerance {o['tolerance']:.3g})")
    return {"greedy_match": all(o["first_mismatch"] is None for o in outcomes),
            "max_logit_diff": max(o["max_logit_diff"] for o in outcomes), "near_ties": sum(o["ties"] for o in outcomes)}


def _prompt_ids(out_dir: Path, prompts: list[str], vocab: int) -> list:
    """Token ids of ``prompts`` ([1, n] each); seeded random ids where the directory has no tokenizer."""
    if has_tokenizer(out_dir):
        tok = load_tokenizer(out_dir)
        return [np.array([tok(p)["input_ids"]], dtype=np.int64) for p in prompts]
    rng = np.random.default_rng(0)
    return [rng.integers(3, vocab, size=(1, 4 + 3 * i), dtype=np.int64) for i in range(len(prompts))]


def _compare(ref: np.ndarray, got, rel: float) -> dict[str, Any]:
    """``ref``: torch logits [batch, new, vocab] at the positions where ORT chose ``got.tokens``.

    A position where torch prefers another token is a tie (not a failure) when torch's logit for
    ORT's token is within tolerance of its best one: float noise may then pick either.
    """
    steps = np.stack(got.logits, axis=1)
    diff = float(np.abs(ref - steps).max())
    tol = rel * max(1.0, float(np.abs(ref).max()))
    best = ref.argmax(-1)
    wrong = np.argwhere(best != got.tokens)
    margins = [ref[b, i, best[b, i]] - ref[b, i, got.tokens[b, i]] for b, i in wrong]
    return {"first_mismatch": int(wrong[:, 1].min()) if len(wrong) else None, "max_logit_diff": diff,
            "tolerance": tol, "ties": len(margins), "all_ties": all(m <= tol for m in margins)}


def _padded_batch_diff(torch_model, ort_model, vocab: int, rel: float) -> dict[str, Any]:
    """One left-padded batch of two: the graph must honour ``attention_mask`` (not assume all ones)."""
    rng = np.random.default_rng(1)
    ids = rng.integers(3, vocab, size=(2, 8), dtype=np.int64)
    mask = np.ones_like(ids)
    mask[0, :3] = 0
    pos = np.clip(mask.cumsum(-1) - 1, 0, None)
    ref = torch_model.forward(ids, mask, pos)
    got = ort_model.forward(ids, mask, pos)
    valid = mask.astype(bool)
    diff = float(np.abs(ref - got)[valid].max())
    return {"max_logit_diff": diff, "tolerance": rel * max(1.0, float(np.abs(ref[valid]).max()))}


def _raise_on_failure(outcomes: list[dict[str, Any]], padded: dict[str, Any] | None) -> None:
    if padded is not None and padded["max_logit_diff"] > padded["tolerance"]:
        raise ExportValidationError(
            f"ONNX graph mishandles padding: left-padded batch logits differ from torch by "
            f"{padded['max_logit_diff']:.3g} (tolerance {padded['tolerance']:.3g})"
        )
    for i, o in enumerate(outcomes):
        if o["first_mismatch"] is not None and not o["all_ties"]:
            raise ExportValidationError(
                f"ONNX Runtime greedy decoding diverged from torch on prompt {i + 1} at new token "
                f"{o['first_mismatch']} (max logit diff {o['max_logit_diff']:.3g}, tolerance {o['tolerance']:.3g})"
            )
        if o["max_logit_diff"] > o["tolerance"]:
            raise ExportValidationError(
                f"ONNX logits differ from torch by {o['max_logit_diff']:.3g} on prompt {i + 1} "
                f"(tolerance {o['tolerance']:.3g})"
            )
