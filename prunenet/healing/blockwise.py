"""Block-by-block healing: each pruned decoder block learns the dense block's outputs, one block resident.

For models whose pruned copy and optimizer state do not fit the device. Three streams of hidden states
travel through the layers: the dense trajectory (the targets), the healed one (the inputs each block
trains on, so later blocks learn to correct what earlier ones could not) and the unhealed pruned one
(only for the held-out and reference rows, to report "before"). Each block is trained on the mean
squared error between its output and the dense block's, stopped on the held-out rows, then the healed
stream is propagated through it and its FFN tensors are stored. Each block starts from the least-squares
refit of its output projection on the dense stream (:mod:`prunenet.healing.refit`) when that lowers its
held-out error. Memory: one dense layer, its pruned copy, and the three streams.
"""

from __future__ import annotations

import copy
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from prunenet.compute import Compute
from prunenet.healing.config import HealConfig
from prunenet.healing.data import HealingText
from prunenet.healing.loop import autocast, fit
from prunenet.healing.measure import row_quality
from prunenet.healing.outcome import HealOutcome
from prunenet.healing.refit import OutputRefit
from prunenet.healing.weights import HealedWeights, ffn_parameters
from prunenet.planning.plan import PruningPlan
from prunenet.planning.surgery import apply_layer_plan_
from prunenet.progress import status, track
from prunenet.source.layerwise import LayerwiseModel

__all__ = ["heal_blockwise"]


@dataclass
class _BlockFit:
    """One pruned block trained to reproduce its dense block's outputs on the training rows, fed the
    already healed stream (so it also learns to absorb the earlier blocks' remaining error)."""

    lm: LayerwiseModel
    block: torch.nn.Module
    layer: int
    inputs: list[torch.Tensor]
    """The healed stream's hidden states entering this block, one per row."""
    targets: list[torch.Tensor]
    """The dense block's outputs, one per row."""
    kwargs: list
    held_out: range
    """Row indices held out for early stopping."""

    def out(self, r: int) -> torch.Tensor:
        return self.lm.run_layer(self.block, self.inputs[r], self.kwargs[r][self.layer]).float()

    def batch_loss(self, idx: list[int]) -> torch.Tensor:
        return sum(torch.nn.functional.mse_loss(self.out(r), self.targets[r].float()) for r in idx) / len(idx)

    def held_loss(self) -> float:
        with torch.no_grad():
            return sum(float(torch.nn.functional.mse_loss(self.out(r), self.targets[r].float()))
                       for r in self.held_out) / len(self.held_out)


def _trainable(block: torch.nn.Module, spec, prefix: str) -> tuple[dict[str, torch.nn.Parameter], dict]:
    """The block's FFN tensors as fp32 master weights (the rest frozen), and their original dtypes."""
    params = ffn_parameters(block, spec, prefix)
    originals = {n: p.dtype for n, p in params.items()}
    for p in block.parameters():
        p.requires_grad_(False)
    for p in params.values():
        p.data = p.data.float()  # fp32 master weights whatever the compute dtype
        p.requires_grad_(True)
    return params, originals


def _heal_block(run: _BlockFit, params: dict, originals: dict, cfg: HealConfig, n_train: int,
                generator: torch.Generator) -> dict:
    """Fit one block; returns its history entry. The weights go back to their dtype, frozen."""
    with autocast(run.lm.device, run.lm.dtype):
        result = fit(list(params.values()), run.batch_loss, run.held_loss, n_train, cfg,
                     f"Healing block {run.layer}", generator)
    for name, p in params.items():
        p.requires_grad_(False)
        p.data = p.data.to(originals[name])
    return {"layer": run.layer, "steps": result.steps, "held_out_before": result.initial,
            "held_out_after": result.best, "held_out_worst": max(h["held_out"] for h in result.history)}


def heal_blockwise(source: Path, plan: PruningPlan, text: HealingText, cfg: HealConfig, *,
                   compute: Compute, weights: HealedWeights,
                   reference: list[torch.Tensor] | None = None) -> HealOutcome:
    """Heal ``plan``'s pruned blocks one at a time; same inputs, outputs and record as end-to-end mode."""
    start = time.perf_counter()
    reference = reference or []
    n_train, n_held = len(text.train), len(text.held_out)
    rows = text.train + text.held_out + reference
    lm = LayerwiseModel(source, device=compute.device, dtype=compute.heal_layer)
    with status("Preparing the block-by-block pass"):
        dense, kwargs = lm.prepare(rows)
    healed = list(dense)
    unhealed = list(dense[n_train:])  # held-out and reference rows only
    g = torch.Generator().manual_seed(cfg.seed)
    n_tensors = refit_layers = 0
    refits = OutputRefit(lm.spec, plan, rows=n_train) if cfg.refit else None
    history: list[dict] = []
    for i in track(range(lm.num_layers), "Healing block by block", total=lm.num_layers):
        lp = plan.layers[i]
        with lm.layer(i) as module:
            targets = lm.forward_layer(refits(i, module) if refits is not None else module, i, dense, kwargs)
            if refits is not None:
                refits.finish()
            if lp.width == lp.original_width:
                healed = lm.forward_layer(module, i, healed, kwargs)
                unhealed = lm.forward_layer(module, i, unhealed, kwargs[n_train:])
                dense = targets
                continue
            block = apply_layer_plan_(copy.deepcopy(module), lm.spec, lp)
        unhealed = lm.forward_layer(block, i, unhealed, kwargs[n_train:])
        params, originals = _trainable(block, lm.spec, f"{lm.spec.layers_prefix}.{i}.")
        run = _BlockFit(lm, block, i, healed, targets, kwargs, range(n_train, n_train + n_held))
        if refits is not None:
            with autocast(lm.device, lm.dtype):
                refit_layers += refits.start_({i: block}, run.held_loss, run.held_loss())[0]
        history.append(_heal_block(run, params, originals, cfg, n_train, g))
        healed = lm.forward_layer(block, i, healed, kwargs)
        weights.save_layer(i, params)
        n_tensors += len(params)
        dense = targets
        del block, params, run

    def quality(sub: list[torch.Tensor], at: int, stream: list[torch.Tensor], base: int) -> dict:
        return row_quality(sub, lambda r: lm.logits(rows[at + r], dense[at + r]),
                           lambda r: lm.logits(rows[at + r], stream[at - base + r]))

    return HealOutcome(
        "block", text.tokens,
        held_out_before=quality(text.held_out, n_train, unhealed, n_train),
        held_out_after=quality(text.held_out, n_train, healed, 0),
        reference_before=quality(reference, n_train + n_held, unhealed, n_train) if reference else None,
        reference_after=quality(reference, n_train + n_held, healed, 0) if reference else None,
        steps=sum(h["steps"] for h in history), healed_tensors=n_tensors, seconds=time.perf_counter() - start,
        history=history, refit_layers=refit_layers)
