"""In-memory comparison: a dense model and pruned variants held side by side (small models).

To score many variants against one dense model (a methods x ratios benchmark), build a
:class:`DenseReference` once: it keeps the dense log-probabilities per window, and
:meth:`DenseReference.compare` / :meth:`DenseReference.compare_plan` score each pruned model with one
forward pass. The numbers are bit-identical to :func:`compare_models` when the cache is fp32. Models
that do not fit twice in memory are compared by :mod:`prunenet.evaluation.streaming` instead.
"""

from __future__ import annotations

import copy
import math
import time
from typing import Any

import torch

from prunenet.evaluation.report import EvalInputError, QualityReport, Totals
from prunenet.evaluation.scoring import DenseWindow, dense_window, score_window
from prunenet.evaluation.windows import batches
from prunenet.planning.plan import PruningPlan
from prunenet.planning.surgery import apply_plan_
from prunenet.progress import track

__all__ = ["DenseReference", "compare_models", "pruned_copy", "check_inputs"]

_CACHE_FP32_LIMIT = 3 << 29  # 1.5 GiB of dense log-probs; above that they are kept in fp16


def _forward(model, batch: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(input_ids=batch, use_cache=False).logits


def _vocab_size(model) -> int:
    emb = model.get_output_embeddings()
    if emb is not None and getattr(emb, "weight", None) is not None:
        return int(emb.weight.shape[0])
    return int(model.config.vocab_size)


def check_inputs(windows: list[torch.Tensor], *models) -> None:
    if not windows:
        raise EvalInputError("no token windows to evaluate")
    sizes = {_vocab_size(m) for m in models}
    if len(sizes) > 1:
        raise EvalInputError(f"the models have different vocabularies ({sorted(sizes)}); they cannot be compared")
    top = max(int(w.max()) for w in windows)
    if top >= min(sizes):
        raise EvalInputError(f"token id {top} is outside the model's vocabulary of {min(sizes)}; wrong tokenizer?")
    limit = getattr(models[0].config, "max_position_embeddings", None)
    longest = max(w.numel() for w in windows)
    if limit and longest > limit:
        raise EvalInputError(f"windows of {longest} tokens exceed the model's {limit} positions; lower --seq-len")


def _cache_dtype(windows: list[torch.Tensor], vocab: int, cache_dtype: torch.dtype | None) -> torch.dtype:
    if cache_dtype is not None:
        return cache_dtype
    n = sum(w.numel() - 1 for w in windows)
    return torch.float32 if n * vocab * 4 <= _CACHE_FP32_LIMIT else torch.float16


class DenseReference:
    """The dense model's predictions on fixed windows, kept to score many pruned variants quickly.

    Memory: scored tokens x vocab x 4 bytes (fp32; about 100 MB per 512 tokens for a 49k
    vocabulary). Above 1.5 GiB the log-probs are kept in fp16 unless ``cache_dtype`` says
    otherwise; that changes KL by well under 1e-3 nats.
    """

    def __init__(self, model, windows: list[torch.Tensor], *, batch_size: int = 4,
                 cache_dtype: torch.dtype | None = None, meta: dict[str, Any] | None = None) -> None:
        check_inputs(windows, model)
        self.model = model.eval()
        self.windows = list(windows)
        self.batch_size = batch_size
        self.meta = dict(meta or {})
        dtype = _cache_dtype(self.windows, _vocab_size(model), cache_dtype)
        start = time.perf_counter()
        self.entries: list[DenseWindow] = []
        for batch in track(batches(self.windows, batch_size), "Scoring the dense model"):
            logits = _forward(model, batch)
            self.entries += [dense_window(logits[i], batch[i], dtype) for i in range(len(batch))]
            del logits
        self.seconds = time.perf_counter() - start

    @property
    def seq_len(self) -> int:
        return max(w.numel() for w in self.windows)

    @property
    def ppl(self) -> float:
        nll = sum(e.nll.double().sum().item() for e in self.entries)
        return math.exp(nll / sum(e.nll.numel() for e in self.entries))

    def compare(self, pruned, *, meta: dict[str, Any] | None = None) -> QualityReport:
        """Score ``pruned`` (any causal LM on the same vocabulary) against the cached dense predictions."""
        check_inputs(self.windows, self.model, pruned)
        pruned.eval()
        totals = Totals()
        start = time.perf_counter()
        entries = iter(self.entries)
        for batch in track(batches(self.windows, self.batch_size), "Scoring the pruned model"):
            logits = _forward(pruned, batch)
            for i in range(len(batch)):
                dense = next(entries)
                totals.add(dense, score_window(dense, logits[i]))
            del logits
        return totals.report(len(self.windows), self.seq_len, time.perf_counter() - start,
                             {**self.meta, **(meta or {})})

    def compare_plan(self, plan: PruningPlan, *, meta: dict[str, Any] | None = None) -> QualityReport:
        """Slice a copy of the dense model to ``plan`` in memory and score it; nothing is written."""
        pruned = pruned_copy(self.model, plan)
        try:
            return self.compare(pruned, meta={"method": plan.method, "ratio": plan.ratio,
                                              "widths": plan.widths, **(meta or {})})
        finally:
            del pruned


def compare_models(dense, pruned, windows: list[torch.Tensor], *, batch_size: int = 4,
                   meta: dict[str, Any] | None = None) -> QualityReport:
    """Score ``pruned`` against ``dense`` on ``windows``, both models batch by batch (nothing cached)."""
    check_inputs(windows, dense, pruned)
    dense.eval()
    pruned.eval()
    totals = Totals()
    start = time.perf_counter()
    for batch in track(batches(windows, batch_size), "Scoring dense and pruned models"):
        dense_logits = _forward(dense, batch)
        entries = [dense_window(dense_logits[i], batch[i], torch.float32) for i in range(len(batch))]
        del dense_logits
        logits = _forward(pruned, batch)
        for i, entry in enumerate(entries):
            totals.add(entry, score_window(entry, logits[i]))
        del logits, entries
    return totals.report(len(windows), max(w.numel() for w in windows), time.perf_counter() - start, meta or {})


def pruned_copy(model, plan: PruningPlan):
    """A pruned deep copy of an in-memory model (the original is left untouched)."""
    return apply_plan_(copy.deepcopy(model), plan).eval()
