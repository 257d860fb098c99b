"""Evaluate an exported directory against the dense source it records (``prunenet eval``, the export's report)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from prunenet.errors import ModelSourceError, PruneNetError
from prunenet.evaluation.report import QualityReport
from prunenet.evaluation.windows import DEFAULT_SEQ_LEN, token_windows
from prunenet.planning.plan import PLAN_FILE, PruningPlan
from prunenet.progress import status

__all__ = ["reference_source", "evaluate_dirs", "evaluate_genres", "default_seq_len"]


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


def _setup(pruned_dir: str | Path, reference_dir: str | Path | None, device: str):
    """``(pruned_dir, ref_dir, compute, tokenizer, meta)`` for a comparison, the directories checked first."""
    from prunenet.compute import Compute
    from prunenet.source.loaders import load_tokenizer
    from prunenet.source.resolve import check_model_dir

    pruned_dir = Path(pruned_dir)
    if not pruned_dir.is_dir():
        raise ModelSourceError(f"{pruned_dir}: no such directory")
    check_model_dir(pruned_dir)
    ref_dir = _resolve_reference(pruned_dir, reference_dir)
    compute = Compute.for_checkpoint(device, ref_dir)
    meta: dict = {"pruned": str(pruned_dir), "reference": str(ref_dir)}
    plan = _plan(pruned_dir)
    if plan is not None:
        meta["widths"] = plan.widths
    return pruned_dir, ref_dir, compute, load_tokenizer(pruned_dir, ref_dir), meta


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
    from prunenet.evaluation.streaming import compare_streaming
    from prunenet.source.loaders import load_causal_lm
    from prunenet.texts import reference_text, self_generated_text

    pruned_dir, ref_dir, compute, tokenizer, meta = _setup(pruned_dir, reference_dir, device)
    if self_generated:
        dense = load_causal_lm(ref_dir, dtype=compute.generate, device=compute.device)
        with status("Sampling self-generated text from the dense model"):
            text, text_name = self_generated_text(dense, tokenizer), "self-generated (8 x 200 tokens, seed 0)"
        del dense
    elif text is None:
        text, text_name = reference_text("default"), text_name or "reference (default slice)"
    windows = token_windows(tokenizer, text, seq_len or default_seq_len(ref_dir), max_tokens)
    return compare_streaming(ref_dir, pruned_dir, windows, compute=compute,
                             meta={"text": text_name or "custom", **meta})


def evaluate_genres(pruned_dir: str | Path, reference_dir: str | Path | None = None, *, whole: bool = False,
                    device: str = "auto") -> dict[str, QualityReport]:
    """:func:`evaluate_dirs` on every bundled genre (:data:`~prunenet.texts.GENRES`, quick slices unless
    ``whole``), both checkpoints streamed once for all of them."""
    from prunenet.evaluation.streaming import compare_streaming_groups
    from prunenet.texts import GENRES, genre_text

    pruned_dir, ref_dir, compute, tokenizer, meta = _setup(pruned_dir, reference_dir, device)
    seq_len = default_seq_len(ref_dir)
    groups = {g: token_windows(tokenizer, genre_text(g, whole), seq_len, None if whole else 8192) for g in GENRES}
    part = "whole text" if whole else "quick slice"
    return compare_streaming_groups(ref_dir, pruned_dir, groups, compute=compute,
                                    meta={g: {"text": f"{g} ({part})", **meta} for g in GENRES})
