"""Dense vs pruned quality with one decoder layer of each resident: the report that scales.

Both checkpoints are read layer by layer (:class:`~prunenet.source.layerwise.LayerwiseModel`): the
windows' hidden states go through the dense model one onloaded layer at a time, then through the
pruned one, and only at the end does each model's head turn its final hidden states into logits,
one window at a time. Memory is both models' embeddings and heads, one layer, the hidden states of
the windows and one window's logits: a 7B is scored on a machine that could not hold it twice.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from prunenet.evaluation.reference import check_inputs
from prunenet.evaluation.report import EvalInputError, QualityReport, Totals
from prunenet.evaluation.scoring import dense_window, score_window

if TYPE_CHECKING:
    from prunenet.compute import Compute

__all__ = ["compare_streaming", "compare_streaming_groups", "report_bytes", "EVAL_TOKENS"]

EVAL_TOKENS = 3584
"""Tokens of the export's quality report: every genre's quick slice, scored in one pass (~1.45k + ~1.9k)."""


def compare_streaming(dense_dir: Path, pruned_dir: Path, windows: list[torch.Tensor], *,
                      compute: Compute | None = None, meta: dict[str, Any] | None = None,
                      pruned_edit=None) -> QualityReport:
    """Score ``pruned_dir`` against ``dense_dir`` on ``windows``, streaming both checkpoints.

    Both models compute on ``compute.device`` in ``compute.layer`` (default: the CPU, in the one-layer
    dtype of the dense checkpoint). ``pruned_edit(index, layer)`` changes each of the pruned side's layers
    before it runs (score a plan on the source itself, without writing it).
    """
    return compare_streaming_groups(dense_dir, pruned_dir, {"": windows}, compute=compute, meta={"": meta or {}},
                                    pruned_edit=pruned_edit)[""]


def compare_streaming_groups(dense_dir: Path, pruned_dir: Path, groups: dict[str, list[torch.Tensor]], *,
                             compute: Compute | None = None, meta: dict[str, dict[str, Any]] | None = None,
                             pruned_edit=None) -> dict[str, QualityReport]:
    """One report per group of windows (e.g. per genre), from a single streamed pass over both checkpoints:
    each layer is read once for all groups. ``meta`` is per group; ``seconds`` is the whole pass's."""
    from prunenet.compute import Compute
    from prunenet.source.layerwise import LayerwiseModel

    compute = compute or Compute.for_checkpoint("cpu", dense_dir)
    device, dtype = compute.device, compute.layer
    dense = LayerwiseModel(dense_dir, device=device, dtype=dtype)
    pruned = LayerwiseModel(pruned_dir, device=device, dtype=dtype)
    empty = [name or "the text" for name, ws in groups.items() if not ws]
    if empty:
        raise EvalInputError(f"no token windows to evaluate for {', '.join(empty)}")
    windows = [w for ws in groups.values() for w in ws]
    check_inputs(windows, dense.model, pruned.model)
    if dense.num_layers != pruned.num_layers:
        raise EvalInputError(f"{pruned_dir} has {pruned.num_layers} layers, {dense_dir} has {dense.num_layers}")
    start = time.perf_counter()
    rows = [w.reshape(1, -1) for w in windows]
    h_dense = dense.final_hidden(rows, label="Scoring the dense model, layer by layer")
    h_pruned = pruned.final_hidden(rows, label="Scoring the pruned model, layer by layer", edit=pruned_edit)
    totals = {name: Totals() for name in groups}
    owner = [name for name, ws in groups.items() for _ in ws]
    for name, row, hd, hp in zip(owner, rows, h_dense, h_pruned, strict=True):
        entry = dense_window(dense.logits(row, hd)[0].float().cpu(), row[0], torch.float32)
        totals[name].add(entry, score_window(entry, pruned.logits(row, hp)[0].float().cpu()))
    seconds = time.perf_counter() - start
    return {name: totals[name].report(len(ws), max(w.numel() for w in ws), seconds, (meta or {}).get(name, {}))
            for name, ws in groups.items()}


def report_bytes(ckpt, spec, sizes, d: int, vocab: int, layer_bytes: int) -> int:
    """Peak bytes of :func:`compare_streaming` on the default text: both models streamed (two embeddings
    and heads, one layer), both models' hidden states of the text, and one window's logits."""
    from prunenet.memory import two_streams

    hidden = 2 * EVAL_TOKENS * d * layer_bytes * 3
    logits = 512 * vocab * 4 * 4
    return two_streams(ckpt, spec, sizes) + hidden + logits
