"""End-to-end healing: distil the whole pruned model's next-token distribution toward the dense one's.

The loss is KL(dense || pruned) per position on self-text, and only the FFN tensors pruning sliced are
trained (fp32 master weights), so the result is a plain checkpoint at the same widths. The dense model
is never held whole: one layer-by-layer pass (:class:`~prunenet.source.layerwise.LayerwiseModel`)
records its final hidden states for every row. The training rows' distributions are reduced to
:class:`~prunenet.healing.measure.TeacherTargets` once; the held-out and reference rows' logits are
replayed through the head when quality is measured.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

import torch

from prunenet.compute import Compute
from prunenet.healing.config import HealConfig
from prunenet.healing.data import HealingText
from prunenet.healing.loop import autocast, fit
from prunenet.healing.measure import TeacherTargets, row_quality, sparse_kl_loss
from prunenet.healing.outcome import HealOutcome
from prunenet.healing.weights import HealedWeights, ffn_parameters
from prunenet.planning.plan import PruningPlan
from prunenet.planning.surgery import apply_plan_
from prunenet.progress import status
from prunenet.source.layerwise import LayerwiseModel

__all__ = ["heal_end_to_end"]

log = logging.getLogger(__name__)


def heal_end_to_end(source: Path, plan: PruningPlan, text: HealingText, cfg: HealConfig, *,
                    compute: Compute, weights: HealedWeights,
                    reference: list[torch.Tensor] | None = None) -> HealOutcome:
    """Heal the pruned model of ``plan`` in memory and store its healed FFN tensors in ``weights``."""
    from prunenet.source.loaders import load_causal_lm

    start = time.perf_counter()
    reference = reference or []
    rows = text.train + text.held_out + reference
    teacher = LayerwiseModel(source, device=compute.device, dtype=compute.heal_layer)
    finals = teacher.final_hidden(rows, label="Dense pass over the healing text")  # one layer resident
    held_h = finals[len(text.train): len(text.train) + len(text.held_out)]
    ref_h = finals[len(text.train) + len(text.held_out):]
    with status("Recording the dense model's next-token distributions"):
        targets = [TeacherTargets.from_logits(teacher.logits(r, h))
                   for r, h in zip(text.train, finals[: len(text.train)], strict=True)]
    del finals[: len(text.train)]  # the training rows' hidden states are not needed again
    log.info("healing targets: the dense top-%d tokens hold %.1f%% of the mass", targets[0].logp.shape[1],
             100 * TeacherTargets.cat(targets).mass)

    with status("Loading the pruned model for healing"):
        student = apply_plan_(load_causal_lm(source, dtype=torch.float32, device=compute.device), plan).eval()
    for p in student.parameters():
        p.requires_grad_(False)
    spec = teacher.spec
    layers = student.get_submodule(spec.layers_prefix)
    trained: dict[str, torch.nn.Parameter] = {}
    for i, lp in enumerate(plan.layers):
        if lp.width != lp.original_width:
            trained.update(ffn_parameters(layers[i], spec, f"{spec.layers_prefix}.{i}."))
    for p in trained.values():
        p.requires_grad_(True)

    def teacher_logits(ids: torch.Tensor, hidden: torch.Tensor) -> torch.Tensor:
        return teacher.logits(ids, hidden).float()

    def student_logits(ids: torch.Tensor) -> torch.Tensor:
        return student(input_ids=ids.to(compute.device), use_cache=False).logits

    def quality(rows_: list[torch.Tensor], hidden: list[torch.Tensor]) -> dict:
        return row_quality(rows_, lambda i: teacher_logits(rows_[i], hidden[i]), lambda i: student_logits(rows_[i]))

    def batch_loss(idx: list[int]) -> torch.Tensor:
        ids = torch.cat([text.train[i] for i in idx])
        return sparse_kl_loss(TeacherTargets.cat([targets[i] for i in idx]), student_logits(ids))

    def reported(rows_: list[torch.Tensor], hidden: list[torch.Tensor]) -> dict | None:
        """Quality on the reference text: the report's share of healing (never used for stopping)."""
        nonlocal report_s
        t = time.perf_counter()
        out = quality(rows_, hidden) if rows_ else None
        report_s += time.perf_counter() - t
        return out

    report_s = 0.0
    with autocast(compute.device, teacher.dtype):  # before, during and after alike, so they compare
        held_before = quality(text.held_out, held_h)
        ref_before = reported(reference, ref_h)
        result = fit(list(trained.values()), batch_loss, lambda: quality(text.held_out, held_h)["kl"],
                     len(text.train), cfg, "Healing (end to end)", torch.Generator().manual_seed(cfg.seed),
                     initial=held_before["kl"])
        for p in trained.values():
            p.requires_grad_(False)
        held_after = quality(text.held_out, held_h)
        ref_after = reported(reference, ref_h)
    if reference:
        log.info("healing: %.0f s measuring the reference text before and after", report_s)
    for i in range(len(plan.layers)):
        prefix = f"{spec.layers_prefix}.{i}."
        weights.save_layer(i, {n: p for n, p in trained.items() if n.startswith(prefix)})
    return HealOutcome("end-to-end", text.tokens, held_before, held_after, ref_before, ref_after,
                       steps=result.steps, healed_tensors=len(trained), seconds=time.perf_counter() - start,
                       history=result.history)
