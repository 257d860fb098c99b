"""Data-free healing, the entry point: self-text -> the pruned model distilled toward the dense one.

After the plan is fixed, the pruned model is trained to match the dense model on text the dense model
wrote itself (never user data, never the evaluation text), touching only the FFN tensors pruning
sliced. The result is a directory of healed tensors (:class:`HealedWeights`) that every exporter reads
instead of the sliced source tensors, so widths, configs, the vLLM plugin and the modeling file are
unchanged. ``end-to-end`` distils logits and wins where it fits; ``block`` keeps one block resident.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import torch

from prunenet.compute import Compute
from prunenet.errors import PruneNetError
from prunenet.healing.config import HEAL_MODES, HealConfig
from prunenet.healing.data import HealingText, healing_text
from prunenet.healing.outcome import HealOutcome
from prunenet.healing.weights import HealedWeights
from prunenet.phases import PhaseLog
from prunenet.planning.plan import PruningPlan
from prunenet.source.checkpoint import Checkpoint

__all__ = ["HealResult", "heal_plan", "choose_mode"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class HealResult:
    outcome: HealOutcome
    weights: HealedWeights
    config: HealConfig
    text: HealingText
    """The self-text healing learnt from (saved beside the policy, so healing again can skip generating it)."""

    def record(self) -> dict:
        """What the plan file and the model card keep: the settings and the quality before and after."""
        o = self.outcome.to_dict()
        o.pop("history")
        return {"settings": self.config.to_dict(), **o}


def choose_mode(ckpt: Checkpoint, plan: PruningPlan, cfg: HealConfig, compute: Compute) -> str:
    """``cfg.mode``, with ``auto`` resolved: the first of :data:`HEAL_MODES` whose estimate fits the device,
    else the last (the one that keeps least resident)."""
    from prunenet.device import available_bytes
    from prunenet.healing.memory import healing_bytes
    from prunenet.preflight import RUNTIME_BYTES

    if cfg.mode != "auto":
        return cfg.mode
    kept = sum(plan.widths) / max(sum(plan.original_widths), 1)
    need = healing_bytes(ckpt, cfg, compute, kept)
    runtime = RUNTIME_BYTES if compute.device.type == "cpu" else 0
    free = available_bytes(compute.device)
    return next((m for m in HEAL_MODES if need[m] + runtime <= free), list(HEAL_MODES)[-1])


def heal_plan(source: Path, plan: PruningPlan, cfg: HealConfig, *, compute: Compute, workdir: Path,
              reference: list[torch.Tensor] | None = None, phases: PhaseLog | None = None,
              text: HealingText | None = None) -> HealResult:
    """Heal the pruned model of ``plan``; its healed tensors go to ``workdir`` (inside the staged output).

    ``reference``: id rows to report before/after quality on (the evaluation text); never trained on.
    ``text``: healing's self-text when it was saved before (:func:`~prunenet.healing.data.load_healing_text`).
    """
    phases = phases or PhaseLog()
    ckpt = Checkpoint(source)
    if plan.is_identity:
        raise PruneNetError("--heal: the plan prunes nothing, so there is nothing to heal")
    mode = choose_mode(ckpt, plan, cfg, compute)
    if text is None:
        with phases.phase("heal-text", compute.device):
            text = healing_text(source, cfg, compute.device, compute.heal_generate)
    weights = HealedWeights(workdir)
    with phases.phase("heal", compute.device):
        outcome = HEAL_MODES[mode].run()(source, plan, text, cfg, compute=compute, weights=weights,
                                         reference=reference)
    log.info("healed %d tensors (%s): held-out self-text KL %.4f -> %.4f", outcome.healed_tensors, mode,
             outcome.held_out_before["kl"], outcome.held_out_after["kl"])
    return HealResult(outcome, weights, cfg, text)
