"""The quality report: dense vs pruned perplexity, KL and top-1 agreement on the same tokens.

KL and agreement need no labels and say more than a perplexity ratio on a few thousand tokens: they
compare the pruned model with the dense one at every position.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any

import torch

from prunenet.errors import PruneNetError
from prunenet.evaluation.scoring import DenseWindow

__all__ = ["EvalInputError", "QualityReport", "Totals"]


class EvalInputError(PruneNetError):
    """The evaluation text, windows or model pair cannot be evaluated together."""


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


class Totals:
    """Running sums over scored positions (float64)."""

    def __init__(self) -> None:
        self.n = 0
        self.nll_dense = self.nll_pruned = self.kl = self.agree = self.acc_dense = self.acc_pruned = 0.0
        self.kl_max = 0.0

    def add(self, dense: DenseWindow, scored: dict[str, torch.Tensor]) -> None:
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
