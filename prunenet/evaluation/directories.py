"""Evaluate an exported directory against the dense source it records (``prunenet eval``, the export's report)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from prunenet.errors import ModelSourceError, PruneNetError
from prunenet.evaluation.report import QualityReport
from prunenet.evaluation.windows import DEFAULT_SEQ_LEN, token_windows
from prunenet.planning.plan import PLAN_FILE, PruningPlan
from prunenet.progress import status

__all__ = ["reference_source", "evaluate_dirs", "default_seq_len"]


def _plan(pruned_dir: Path) -> PruningPlan | None:
    try:
        return PruningPlan.load(pruned_dir / PLAN_FILE)
    except (OSError, PruneNetError):
        return None


def reference_source(pruned_dir: Path) -> str | None:
    """The dense source a pruned directory was made from, as its plan (``prunenet-plan.json``) records it."""
    plan = _plan(Path(pruned_dir))
    return str(plan.source) if plan is not None and plan.source else None


def _resolve_reference(pruned_dir: Path, reference: str | Path | None) -> Path:
    from prunenet.source.resolve import resolve_model

    if reference is not None:
        return resolve_model(reference).path
    source = reference_source(pruned_dir)
    if source is None:
        raise ModelSourceError(f"{pruned_dir}: records no source model; pass --reference with the dense model")
    try:
        return resolve_model(source).path
    except ModelSourceError as exc:
        raise ModelSourceError(f"{exc} (recorded as the source of {pruned_dir}); pass --reference") from None


def default_seq_len(model_dir: Path) -> int:
    """The report's window length: :data:`DEFAULT_SEQ_LEN`, or the model's context if that is shorter."""
    from prunenet.source.checkpoint import Checkpoint

    context = Checkpoint(model_dir).config.get("max_position_embeddings") or DEFAULT_SEQ_LEN
    return min(DEFAULT_SEQ_LEN, int(context))


def evaluate_dirs(pruned_dir: str | Path, reference_dir: str | Path | None = None,
                  text: str | Sequence[str] | None = None, *, text_name: str | None = None,
                  self_generated: bool = False, seq_len: int | None = None, max_tokens: int | None = 8192,
                  device: str = "auto") -> QualityReport:
    """Compare a pruned model directory with its dense reference on ``text``.

    ``reference_dir`` defaults to the source recorded in the pruned directory (resolved like
    ``--model``). ``text`` defaults to the bundled reference text's ``default`` slice; with
    ``self_generated`` the dense model writes the text itself (8 samples x 200 tokens, seed 0).
    ``seq_len`` defaults to :data:`DEFAULT_SEQ_LEN`, or the model's context if that is shorter.
    Both models are streamed layer by layer on ``device`` (:func:`compare_streaming`).
    """
    from prunenet.compute import Compute
    from prunenet.evaluation.streaming import compare_streaming
    from prunenet.source.loaders import load_causal_lm, load_tokenizer
    from prunenet.source.resolve import check_model_dir
    from prunenet.texts import reference_text, self_generated_text

    pruned_dir = Path(pruned_dir)
    if not pruned_dir.is_dir():
        raise ModelSourceError(f"{pruned_dir}: no such directory")
    check_model_dir(pruned_dir)
    ref_dir = _resolve_reference(pruned_dir, reference_dir)
    compute = Compute.for_checkpoint(device, ref_dir)
    tokenizer = load_tokenizer(pruned_dir, ref_dir)
    if self_generated:
        dense = load_causal_lm(ref_dir, dtype=compute.generate, device=compute.device)
        with status("Sampling self-generated text from the dense model"):
            text, text_name = self_generated_text(dense, tokenizer), "self-generated (8 x 200 tokens, seed 0)"
        del dense
    elif text is None:
        text, text_name = reference_text("default"), text_name or "reference (default slice)"
    if seq_len is None:
        seq_len = default_seq_len(ref_dir)
    windows = token_windows(tokenizer, text, seq_len, max_tokens)
    meta = {"text": text_name or "custom", "pruned": str(pruned_dir), "reference": str(ref_dir)}
    plan = _plan(pruned_dir)
    if plan is not None:
        meta["widths"] = plan.widths
    return compare_streaming(ref_dir, pruned_dir, windows, compute=compute, meta=meta)
