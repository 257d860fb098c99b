"""How much did pruning change the model? Perplexity, KL and top-1 agreement on the same tokens.

Both models score exactly the same token windows: perplexity of each on the text, the mean
per-token KL(dense || pruned) of their next-token distributions, and how often their top-1
next tokens agree. KL and agreement need no labels and say more than a perplexity ratio on a
few thousand tokens: they compare the pruned model with the dense one at every position.

Everything runs in fp32 under ``no_grad``, streaming over windows in small batches, so two
models fit in memory at once. To score many variants against one dense model (a methods x
ratios benchmark), build a :class:`DenseReference` once: it keeps the dense log-probabilities
per window, and :meth:`DenseReference.compare` / :meth:`DenseReference.compare_plan` score
each pruned model (on disk or sliced in memory from the dense weights) with one forward pass.
The numbers are bit-identical to :func:`compare_models` when the cache is fp32.

Windows are non-overlapping slices of the token stream; the first token of each window is
context only, so ``n_tokens`` (the scored predictions) is the token count minus the windows.
"""

from __future__ import annotations

import copy
import json
import logging
import math
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from prunenet.errors import ModelSourceError, PruneNetError
from prunenet.planning.plan import PLAN_FILE, PruningPlan
from prunenet.progress import status, track

__all__ = [
    "EvalInputError",
    "QualityReport",
    "DenseReference",
    "token_windows",
    "split_windows",
    "compare_models",
    "pruned_copy",
    "load_causal_lm",
    "load_tokenizer",
    "reference_source",
    "evaluate_dirs",
    "DEFAULT_SEQ_LEN",
]

log = logging.getLogger("prunenet.evaluation.quality")

DEFAULT_SEQ_LEN = 512
_TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model", "vocab.json")
_CACHE_FP32_LIMIT = 3 << 29  # 1.5 GiB of dense log-probs; above that they are kept in fp16
_MIN_LOGPROB = -1e4  # finite floor so fp16 storage and 0 * log(0) never produce inf/nan


class EvalInputError(PruneNetError):
    """The evaluation text, windows or model pair cannot be evaluated together."""


# --------------------------------------------------------------------------- report


@dataclass(frozen=True)
class QualityReport:
    """Dense vs pruned quality on one set of token windows."""

    n_tokens: int
    """Scored next-token predictions."""
    n_windows: int
    seq_len: int
    dense_ppl: float
    pruned_ppl: float
    kl: float
    """Mean KL(dense || pruned) per token, in nats."""
    kl_max: float
    """Largest per-token KL."""
    top1_agreement: float
    """Fraction of positions where both models' most likely next token is the same."""
    dense_top1_acc: float
    pruned_top1_acc: float
    seconds: float = 0.0
    """Wall time of the pruned model's scoring (and the dense one's, when done together)."""
    meta: dict[str, Any] = field(default_factory=dict)
    """Free-form context: text name, model paths, widths."""

    @property
    def ppl_ratio(self) -> float:
        return self.pruned_ppl / self.dense_ppl

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["ppl_ratio"] = self.ppl_ratio
        return data

    def rows(self) -> list[tuple[str, str, str]]:
        """``(metric, dense, pruned)`` rows shared by the table renderings."""
        return [
            ("perplexity", f"{self.dense_ppl:.3f}", f"{self.pruned_ppl:.3f}"),
            ("perplexity ratio", "1", f"{self.ppl_ratio:.3f}"),
            ("KL(dense || pruned), nats/token", "0", f"{self.kl:.4f}"),
            ("top-1 agreement with dense", "1", f"{self.top1_agreement:.4f}"),
            ("top-1 next-token accuracy", f"{self.dense_top1_acc:.4f}", f"{self.pruned_top1_acc:.4f}"),
        ]

    def caption(self) -> str:
        text = self.meta.get("text")
        return (f"{self.n_tokens} tokens in {self.n_windows} windows of <= {self.seq_len}"
                + (f", text: {text}" if text else "") + f", {self.seconds:.1f} s")

    def to_markdown(self) -> str:
        lines = ["| metric | dense | pruned |", "| --- | ---: | ---: |"]
        lines += [f"| {m} | {d} | {p} |" for m, d, p in self.rows()]
        return "\n".join(lines) + f"\n\n{self.caption()}\n"

    def to_rich(self):
        """A rich renderable: the :meth:`rows` table, then the caption line."""
        from rich.console import Group
        from rich.table import Table
        from rich.text import Text

        table = Table(show_edge=False)
        table.add_column("metric")
        table.add_column("dense", justify="right")
        table.add_column("pruned", justify="right")
        for row in self.rows():
            table.add_row(*row)
        return Group(table, Text(self.caption(), style="dim"))


class _Totals:
    """Running sums over scored positions (float64)."""

    def __init__(self) -> None:
        self.n = 0
        self.nll_dense = self.nll_pruned = self.kl = self.agree = self.acc_dense = self.acc_pruned = 0.0
        self.kl_max = 0.0

    def add(self, dense: _DenseWindow, scored: dict[str, torch.Tensor]) -> None:
        self.n += dense.nll.numel()
        self.nll_dense += dense.nll.double().sum().item()
        self.acc_dense += (dense.top1 == dense.targets).sum().item()
        self.nll_pruned += scored["nll"].double().sum().item()
        self.kl += scored["kl"].double().sum().item()
        self.kl_max = max(self.kl_max, scored["kl"].max().item())
        self.agree += (scored["top1"] == dense.top1).sum().item()
        self.acc_pruned += (scored["top1"] == dense.targets).sum().item()

    def report(self, n_windows: int, seq_len: int, seconds: float, meta: dict[str, Any]) -> QualityReport:
        n = self.n
        return QualityReport(
            n_tokens=n, n_windows=n_windows, seq_len=seq_len,
            dense_ppl=math.exp(self.nll_dense / n), pruned_ppl=math.exp(self.nll_pruned / n),
            kl=self.kl / n, kl_max=self.kl_max, top1_agreement=self.agree / n,
            dense_top1_acc=self.acc_dense / n, pruned_top1_acc=self.acc_pruned / n,
            seconds=seconds, meta=dict(meta),
        )


# --------------------------------------------------------------------------- windows


def split_windows(ids: Sequence[int] | torch.Tensor, seq_len: int, max_tokens: int | None = None) -> list[torch.Tensor]:
    """Cut a token stream into non-overlapping windows of ``seq_len`` (the last may be shorter)."""
    if seq_len < 2:
        raise EvalInputError(f"seq_len must be at least 2, got {seq_len}")
    flat = torch.as_tensor(ids, dtype=torch.long).flatten()
    if max_tokens is not None:
        flat = flat[:max_tokens]
    windows = [w for w in flat.split(seq_len) if w.numel() >= 2]
    if not windows:
        raise EvalInputError(f"the evaluation text has {flat.numel()} token(s); at least 2 are needed")
    return windows


def token_windows(tokenizer, text: str | Sequence[str], seq_len: int = 512,
                  max_tokens: int | None = None) -> list[torch.Tensor]:
    """Tokenize ``text`` (no special tokens) into windows; a list of texts is windowed document by document."""
    docs = [text] if isinstance(text, str) else list(text)
    windows: list[torch.Tensor] = []
    budget = max_tokens
    for doc in docs:
        ids = tokenizer(doc, add_special_tokens=False)["input_ids"]
        if budget is not None:
            ids = ids[:budget]
            budget -= len(ids)
        if len(ids) >= 2:
            windows += split_windows(ids, seq_len)
        if budget is not None and budget <= 0:
            break
    if not windows:
        raise EvalInputError("the evaluation text is empty or shorter than 2 tokens")
    return windows


def _batches(windows: list[torch.Tensor], batch_size: int) -> list[torch.Tensor]:
    """Stack consecutive windows of equal length, ``batch_size`` at a time (no padding needed)."""
    out: list[torch.Tensor] = []
    group: list[torch.Tensor] = []
    for w in windows:
        if group and (len(group) == batch_size or w.numel() != group[0].numel()):
            out.append(torch.stack(group))
            group = []
        group.append(w)
    if group:
        out.append(torch.stack(group))
    return out


# --------------------------------------------------------------------------- scoring


@dataclass
class _DenseWindow:
    targets: torch.Tensor  # (T-1,) next tokens
    logprobs: torch.Tensor  # (T-1, V) dense log-probs (fp32, or fp16 in a large cache)
    neg_entropy: torch.Tensor  # (T-1,) sum_v p log p
    nll: torch.Tensor  # (T-1,)
    top1: torch.Tensor  # (T-1,)

    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in (self.targets, self.logprobs, self.neg_entropy,
                                                          self.nll, self.top1))


def _logprobs(logits: torch.Tensor) -> torch.Tensor:
    return torch.log_softmax(logits.float(), dim=-1).clamp_min_(_MIN_LOGPROB)


def _dense_window(logits: torch.Tensor, ids: torch.Tensor, store_dtype: torch.dtype) -> _DenseWindow:
    """Everything about one window the pruned model is later compared with; ``logits`` is (T, V)."""
    targets = ids[1:]
    lp = _logprobs(logits[:-1]).to(store_dtype)
    lp32 = lp.float()
    return _DenseWindow(
        targets=targets,
        logprobs=lp,
        neg_entropy=(lp32.exp() * lp32).sum(-1),
        nll=-lp32.gather(-1, targets[:, None]).squeeze(-1),
        top1=lp32.argmax(-1),
    )


def _score(dense: _DenseWindow, logits: torch.Tensor) -> dict[str, torch.Tensor]:
    """The pruned model's NLL, KL(dense || pruned) and top-1 per position of one window."""
    lp = _logprobs(logits[:-1])
    p_dense = dense.logprobs.float().exp()
    return {
        "nll": -lp.gather(-1, dense.targets[:, None]).squeeze(-1),
        "kl": dense.neg_entropy - (p_dense * lp).sum(-1),
        "top1": lp.argmax(-1),
    }


def _forward(model, batch: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(input_ids=batch, use_cache=False).logits


def _vocab_size(model) -> int:
    emb = model.get_output_embeddings()
    if emb is not None and getattr(emb, "weight", None) is not None:
        return int(emb.weight.shape[0])
    return int(model.config.vocab_size)


def _check_inputs(windows: list[torch.Tensor], *models) -> None:
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
        _check_inputs(windows, model)
        self.model = model.eval()
        self.windows = list(windows)
        self.batch_size = batch_size
        self.meta = dict(meta or {})
        dtype = _cache_dtype(self.windows, _vocab_size(model), cache_dtype)
        start = time.perf_counter()
        self.entries: list[_DenseWindow] = []
        for batch in track(_batches(self.windows, batch_size), "Scoring the dense model"):
            logits = _forward(model, batch)
            self.entries += [_dense_window(logits[i], batch[i], dtype) for i in range(len(batch))]
            del logits
        self.seconds = time.perf_counter() - start

    @classmethod
    def from_text(cls, model, tokenizer, text: str | Sequence[str] | None = None, *, seq_len: int = DEFAULT_SEQ_LEN,
                  max_tokens: int | None = None, **kwargs) -> DenseReference:
        """Window ``text`` (default: the bundled reference text's ``default`` slice) and score ``model`` on it."""
        from prunenet.texts import reference_text

        windows = token_windows(tokenizer, reference_text("default") if text is None else text, seq_len, max_tokens)
        return cls(model, windows, **kwargs)

    @property
    def nbytes(self) -> int:
        return sum(e.nbytes() for e in self.entries)

    @property
    def seq_len(self) -> int:
        return max(w.numel() for w in self.windows)

    @property
    def ppl(self) -> float:
        nll = sum(e.nll.double().sum().item() for e in self.entries)
        return math.exp(nll / sum(e.nll.numel() for e in self.entries))

    def compare(self, pruned, *, meta: dict[str, Any] | None = None) -> QualityReport:
        """Score ``pruned`` (any causal LM on the same vocabulary) against the cached dense predictions."""
        _check_inputs(self.windows, self.model, pruned)
        pruned.eval()
        totals = _Totals()
        start = time.perf_counter()
        entries = iter(self.entries)
        for batch in track(_batches(self.windows, self.batch_size), "Scoring the pruned model"):
            logits = _forward(pruned, batch)
            for i in range(len(batch)):
                dense = next(entries)
                totals.add(dense, _score(dense, logits[i]))
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
    _check_inputs(windows, dense, pruned)
    dense.eval()
    pruned.eval()
    totals = _Totals()
    start = time.perf_counter()
    for batch in track(_batches(windows, batch_size), "Scoring dense and pruned models"):
        dense_logits = _forward(dense, batch)
        entries = [_dense_window(dense_logits[i], batch[i], torch.float32) for i in range(len(batch))]
        del dense_logits
        logits = _forward(pruned, batch)
        for i, entry in enumerate(entries):
            totals.add(entry, _score(entry, logits[i]))
        del logits, entries
    return totals.report(len(windows), max(w.numel() for w in windows), time.perf_counter() - start, meta or {})


def pruned_copy(model, plan: PruningPlan):
    """A pruned deep copy of an in-memory model (the original is left untouched)."""
    from prunenet.planning.surgery import apply_plan_

    return apply_plan_(copy.deepcopy(model), plan).eval()


# --------------------------------------------------------------------------- directories


def load_causal_lm(path: Path):
    """Load an HF causal LM in fp32 for evaluation (``trust_remote_code`` for non-uniform exports)."""
    from transformers import AutoModelForCausalLM

    from prunenet.source.resolve import check_model_dir

    check_model_dir(Path(path))
    try:
        with status(f"Loading {path}"):
            model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32, trust_remote_code=True)
    except Exception as exc:  # transformers raises many types for malformed checkpoints
        msg = str(exc).splitlines()[0][:200] if str(exc) else exc.__class__.__name__
        raise ModelSourceError(f"{path}: cannot load as a causal LM ({msg})") from None
    return model.eval()


def load_tokenizer(*dirs: Path):
    """The tokenizer of the first directory that has one."""
    from transformers import AutoTokenizer

    for d in dirs:
        if any((Path(d) / f).is_file() for f in _TOKENIZER_FILES):
            return AutoTokenizer.from_pretrained(d)
    raise EvalInputError(f"no tokenizer in {' or '.join(str(d) for d in dirs)}; copy the source's tokenizer files in")


def reference_source(pruned_dir: Path) -> str | None:
    """The dense source a pruned directory was made from: ``config.json`` pruning metadata, else its plan."""
    pruned_dir = Path(pruned_dir)
    for path, get in ((pruned_dir / "config.json", lambda d: (d.get("pruning") or {}).get("source")),
                      (pruned_dir / PLAN_FILE, lambda d: d.get("source"))):
        try:
            source = get(json.loads(path.read_text()))
        except (OSError, ValueError, AttributeError):
            continue
        if source:
            return str(source)
    return None


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


def evaluate_dirs(pruned_dir: str | Path, reference_dir: str | Path | None = None,
                  text: str | Sequence[str] | None = None, *, text_name: str | None = None,
                  self_generated: bool = False, seq_len: int | None = None, max_tokens: int | None = 8192,
                  batch_size: int = 4) -> QualityReport:
    """Compare a pruned model directory with its dense reference on ``text``.

    ``reference_dir`` defaults to the source recorded in the pruned directory (resolved like
    ``--model``). ``text`` defaults to the bundled reference text's ``default`` slice; with
    ``self_generated`` the dense model writes the text itself (8 samples x 200 tokens, seed 0).
    ``seq_len`` defaults to :data:`DEFAULT_SEQ_LEN`, or the model's context if that is shorter.
    """
    from prunenet.source.resolve import check_model_dir
    from prunenet.texts import reference_text, self_generated_text

    pruned_dir = Path(pruned_dir)
    if not pruned_dir.is_dir():
        raise ModelSourceError(f"{pruned_dir}: no such directory")
    check_model_dir(pruned_dir)
    ref_dir = _resolve_reference(pruned_dir, reference_dir)
    tokenizer = load_tokenizer(pruned_dir, ref_dir)
    dense = load_causal_lm(ref_dir)
    if self_generated:
        with status("Sampling self-generated text from the dense model"):
            text, text_name = self_generated_text(dense, tokenizer), "self-generated (8 x 200 tokens, seed 0)"
    elif text is None:
        text, text_name = reference_text("default"), text_name or "reference (default slice)"
    if seq_len is None:
        seq_len = min(DEFAULT_SEQ_LEN, getattr(dense.config, "max_position_embeddings", None) or DEFAULT_SEQ_LEN)
    windows = token_windows(tokenizer, text, seq_len, max_tokens)
    pruned = load_causal_lm(pruned_dir)
    widths = (json.loads((pruned_dir / "config.json").read_text()).get("pruning") or {}).get("widths")
    meta = {"text": text_name or "custom", "pruned": str(pruned_dir), "reference": str(ref_dir)}
    if widths:
        meta["widths"] = widths
    return compare_models(dense, pruned, windows, batch_size=batch_size, meta=meta)
