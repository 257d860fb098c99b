"""End-to-end healing: distil the whole pruned model's next-token distribution toward the dense one's.

The loss is KL(dense || pruned) per position on self-text, and only the FFN tensors pruning sliced are
trained (fp32 master weights), so the result is a plain checkpoint at the same widths. The dense model
is never held whole: one layer-by-layer pass (:class:`~prunenet.source.layerwise.LayerwiseModel`)
records its final hidden states for every row, and the Gram matrices the least-squares refit of the
output projections needs (:mod:`prunenet.healing.refit`), which is where training starts. The training rows' distributions are reduced to
:class:`~prunenet.healing.measure.TeacherTargets` once; the held-out and reference rows' logits are
replayed through the head when quality is measured.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from prunenet.compute import Compute
from prunenet.healing.config import HealConfig
from prunenet.healing.data import HealingText
from prunenet.healing.loop import autocast, fit
from prunenet.healing.measure import TeacherTargets, row_quality, sparse_kl_loss
from prunenet.healing.outcome import HealOutcome
from prunenet.healing.refit import OutputRefit
from prunenet.healing.weights import HealedWeights, ffn_parameters
from prunenet.planning.plan import PruningPlan
from prunenet.planning.surgery import apply_plan_
from prunenet.progress import status
from prunenet.source.layerwise import LayerwiseModel

__all__ = ["heal_end_to_end"]

log = logging.getLogger(__name__)


@dataclass
class _Teacher:
    """The dense side, recorded in one layer-by-layer pass: top-k targets of the training rows and the
    final hidden states of the held-out and reference rows (replayed through the head when measured)."""

    model: LayerwiseModel
    targets: list[TeacherTargets]
    held: list[torch.Tensor]
    ref: list[torch.Tensor]
    refit: OutputRefit | None

    def logits(self, ids: torch.Tensor, hidden: torch.Tensor) -> torch.Tensor:
        return self.model.logits(ids, hidden).float()


def _record_teacher(source: Path, plan: PruningPlan, text: HealingText, reference: list[torch.Tensor],
                    compute: Compute, refit: bool) -> _Teacher:
    model = LayerwiseModel(source, device=compute.device, dtype=compute.heal_layer)
    n_train, n_held = len(text.train), len(text.held_out)
    refits = OutputRefit(model.spec, plan, rows=n_train) if refit else None
    finals = model.final_hidden(text.train + text.held_out + reference, label="Dense pass over the healing text",
                                edit=refits)
    if refits is not None:
        refits.finish()
    with status("Recording the dense model's next-token distributions"):
        targets = [TeacherTargets.from_logits(model.logits(r, h))
                   for r, h in zip(text.train, finals[:n_train], strict=True)]
    log.info("healing targets: the dense top-%d tokens hold %.1f%% of the mass", targets[0].logp.shape[1],
             100 * TeacherTargets.cat(targets).mass)
    return _Teacher(model, targets, finals[n_train: n_train + n_held], finals[n_train + n_held:], refits)


def _load_student(source: Path, plan: PruningPlan, compute: Compute, spec) -> tuple[torch.nn.Module, dict]:
    """The pruned model in fp32, frozen but for the FFN tensors of the layers the plan pruned."""
    from prunenet.source.loaders import load_causal_lm

    with status("Loading the pruned model for healing"):
        student = apply_plan_(load_causal_lm(source, dtype=torch.float32, device=compute.device), plan).eval()
    for p in student.parameters():
        p.requires_grad_(False)
    layers = student.get_submodule(spec.layers_prefix)
    trained: dict[str, torch.nn.Parameter] = {}
    for i, lp in enumerate(plan.layers):
        if lp.width != lp.original_width:
            trained.update(ffn_parameters(layers[i], spec, f"{spec.layers_prefix}.{i}."))
    for p in trained.values():
        p.requires_grad_(True)
    return student, trained


@dataclass
class _Distillation:
    """Student against teacher: the training loss on a batch of rows and the quality of a row set."""

    teacher: _Teacher
    student: torch.nn.Module
    train_rows: list[torch.Tensor]
    device: torch.device
    report_seconds: float = 0.0
    """Time spent measuring the reference text (reported, never used for stopping)."""

    def student_logits(self, ids: torch.Tensor) -> torch.Tensor:
        return self.student(input_ids=ids.to(self.device), use_cache=False).logits

    def batch_loss(self, idx: list[int]) -> torch.Tensor:
        ids = torch.cat([self.train_rows[i] for i in idx])
        return sparse_kl_loss(TeacherTargets.cat([self.teacher.targets[i] for i in idx]), self.student_logits(ids))

    def quality(self, rows: list[torch.Tensor], hidden: list[torch.Tensor]) -> dict:
        return row_quality(rows, lambda i: self.teacher.logits(rows[i], hidden[i]),
                           lambda i: self.student_logits(rows[i]))

    def reference(self, rows: list[torch.Tensor]) -> dict | None:
        start = time.perf_counter()
        out = self.quality(rows, self.teacher.ref) if rows else None
        self.report_seconds += time.perf_counter() - start
        return out


def heal_end_to_end(source: Path, plan: PruningPlan, text: HealingText, cfg: HealConfig, *,
                    compute: Compute, weights: HealedWeights,
                    reference: list[torch.Tensor] | None = None) -> HealOutcome:
    """Heal the pruned model of ``plan`` in memory and store its healed FFN tensors in ``weights``."""
    start = time.perf_counter()
    reference = reference or []
    teacher = _record_teacher(source, plan, text, reference, compute, cfg.refit)
    spec = teacher.model.spec
    student, trained = _load_student(source, plan, compute, spec)
    run = _Distillation(teacher, student, text.train, compute.device)
    held = (text.held_out, teacher.held)
    scored: dict[float, dict] = {}  # held-out quality by KL: the weights kept are the best scored, so no rerun

    def held_kl() -> float:
        quality = run.quality(*held)
        scored[quality["kl"]] = quality
        return quality["kl"]

    with autocast(compute.device, teacher.model.dtype):  # before, during and after alike, so they compare
        initial, ref_before = held_kl(), run.reference(reference)
        held_before, refit = scored[initial], 0
        if teacher.refit is not None:
            layers = student.get_submodule(spec.layers_prefix)
            refit, initial = teacher.refit.start_(dict(enumerate(layers)), held_kl, initial)
        result = fit(list(trained.values()), run.batch_loss, held_kl, len(text.train), cfg, "Healing (end to end)",
                     torch.Generator().manual_seed(cfg.seed), initial=initial)
        for p in trained.values():
            p.requires_grad_(False)
        held_after, ref_after = scored[result.best], run.reference(reference)
    if reference:
        log.info("healing: %.0f s measuring the reference text before and after", run.report_seconds)
    for i in range(len(plan.layers)):
        prefix = f"{spec.layers_prefix}.{i}."
        weights.save_layer(i, {n: p for n, p in trained.items() if n.startswith(prefix)})
    return HealOutcome("end-to-end", text.tokens, held_before, held_after, ref_before, ref_after,
                       steps=result.steps, healed_tensors=len(trained), seconds=time.perf_counter() - start,
                       history=result.history, refit_layers=refit)
