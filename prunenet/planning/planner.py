"""From a source checkpoint to a :class:`PruningPlan`: summarise each layer, score, allocate, select.

This is the library entry point behind ``prunenet-export``. It streams the checkpoint one decoder
layer at a time (the FFN tensors the method needs and, with ``--self-data``, that layer's captured
inputs), keeps a compact :class:`~prunenet.planning.summaries.LayerSummary` per layer, trains (or
loads) the policy on the summaries, ranks every layer's neurons, spends the global budget across
layers and returns the plan. Host memory is one layer plus the summaries. Nothing is written here.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from prunenet.arch import ArchSpec, get_arch_spec
from prunenet.compute import Compute
from prunenet.errors import PolicyMismatch
from prunenet.phases import PhaseLog
from prunenet.planning.allocation import input_layer_prior, sensitivity_widths, uniform_widths, width_step
from prunenet.planning.config import PruneConfig
from prunenet.planning.methods import METHODS, Method
from prunenet.planning.plan import LayerPlan, PruningPlan
from prunenet.planning.selfdata import self_text_ids
from prunenet.planning.selftext_cache import SELF_TEXT_FILE, load_self_text, self_text_key
from prunenet.planning.summaries import LayerSummary, needs_activations, summarize_layer
from prunenet.policy.features import FEATURES
from prunenet.policy.network import PolicyNetwork, load_policy, policy_fingerprint
from prunenet.policy.train import TrainConfig, train_policy
from prunenet.progress import track
from prunenet.source.checkpoint import Checkpoint
from prunenet.source.ffn import load_layer_ffn

__all__ = ["PruneConfig", "PlanResult", "make_plan"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class PlanResult:
    plan: PruningPlan
    policy: PolicyNetwork | None = None
    policy_metadata: dict = field(default_factory=dict)
    self_text: list[torch.Tensor] | None = None
    """The self-generated token ids the statistics came from (saved beside the policy for reuse)."""


def make_plan(source: Path, cfg: PruneConfig, source_name: str | None = None, *,
              phases: PhaseLog | None = None, self_text: list[torch.Tensor] | None = None,
              compute: Compute | None = None) -> PlanResult:
    """Build the pruning plan for the checkpoint at ``source``.

    ``self_text``: token ids to take the statistics from instead of generating them (prune once: a
    saved policy reused at another ratio also reuses its self-text; a benchmark planning several
    ratios passes one text to all). ``compute``: the job's; resolved from ``cfg.device`` if None.
    """
    phases = phases or PhaseLog()
    ckpt = Checkpoint(source)
    spec = get_arch_spec(ckpt.config.get("model_type"))
    full = [spec.width(ckpt.config)] * spec.num_layers(ckpt.config)
    step = width_step(cfg.align, cfg.tp)
    method = METHODS[cfg.method]
    common = dict(model_type=str(ckpt.config["model_type"]), method=cfg.method, ratio=cfg.ratio,
                  allocation=cfg.allocation, align=step, seed=cfg.seed, source=source_name or str(source),
                  source_fingerprint=ckpt.fingerprint())
    if cfg.ratio == 0:
        return PlanResult(PruningPlan(layers=tuple(LayerPlan(tuple(range(m)), m) for m in full), **common))
    uniform_widths(full, cfg.ratio, step)  # validates the step against the widths before any work
    compute = compute or Compute.resolve(cfg.device, ckpt.dtype)
    device = compute.device
    torch.manual_seed(cfg.seed)
    uses_text = bool(cfg.self_data) and needs_activations(method, cfg.allocation)
    if uses_text and self_text is None and cfg.policy is not None:
        key = self_text_key(common["source_fingerprint"], cfg.seed, cfg.self_data)
        self_text = load_self_text(Path(cfg.policy).with_name(SELF_TEXT_FILE), key)
        if self_text is not None:
            log.info("reusing the self-text saved beside %s", cfg.policy)
    if uses_text and self_text is None:
        with phases.phase("self-text", device):
            self_text = self_text_ids(source, cfg.self_data, cfg.seed, device, compute.generate)
    summaries = _summaries(ckpt, spec, method, cfg, compute, self_text if uses_text else None, phases)
    # a layer's cost counts relative to the residual stream it writes into (measured on self-text);
    # weights alone cannot measure that, so a prior protects the input layers instead
    weights = ([s.output.output_energy / s.residual for s in summaries] if uses_text
               else input_layer_prior(len(full)))
    with phases.phase("training", device):
        scores, policy, meta = _scores(method, summaries, full, cfg, common)
    with phases.phase("allocation", device):
        orders = [torch.argsort(s, descending=True, stable=True).cpu() for s in scores]
        if cfg.allocation == "uniform":
            widths = uniform_widths(full, cfg.ratio, step)
        else:
            widths = sensitivity_widths(full, cfg.ratio, step, lambda i, ws: [
                weights[i] * c for c in summaries[i].output.curve(orders[i].to(device), ws)])
    layers = tuple(
        LayerPlan(tuple(sorted(order[:w].tolist())), m, tuple(s.float().cpu().tolist()))
        for order, w, m, s in zip(orders, widths, full, scores, strict=True)
    )
    plan = PruningPlan(layers=layers, policy_fingerprint=meta.get("fingerprint"),
                       extra={"self_data_tokens": cfg.self_data if needs_activations(method, cfg.allocation) else 0},
                       **common)
    return PlanResult(plan, policy, meta, self_text if uses_text else None)


def _layer_inputs(ckpt: Checkpoint, compute: Compute, self_text, seed: int) -> Iterator[tuple]:
    """``(X, residual)`` per layer: captured on the self-text, or ``(None, None)`` for weights only."""
    if self_text is None:
        while True:
            yield None, None
    from prunenet.planning.selfdata import stream_ffn_inputs

    for _, X, residual in stream_ffn_inputs(ckpt.path, self_text, device=compute.device, dtype=compute.layer,
                                            seed=seed):
        yield X.to(compute.device), residual


def _summaries(ckpt: Checkpoint, spec: ArchSpec, method: Method, cfg: PruneConfig, compute: Compute,
               self_text, phases: PhaseLog) -> list[LayerSummary]:
    """Stream the layers: read what the method needs, summarise, drop the matrices."""
    n = spec.num_layers(ckpt.config)
    only_state = not needs_activations(method, cfg.allocation)  # the paper's method, uniform widths: W alone
    g = torch.Generator().manual_seed(cfg.seed)
    out: list[LayerSummary] = []
    device = compute.device
    inputs = _layer_inputs(ckpt, compute, self_text, cfg.seed)
    label = "Capturing and summarising layers" if self_text is not None else "Reading and summarising layers"
    with phases.phase("capture" if self_text is not None else "read", device):
        for i in track(range(n), label, total=n):
            X, residual = next(inputs)
            ffn = load_layer_ffn(ckpt, spec, i, state_only=only_state).to(device)
            out.append(summarize_layer(ffn, method, X=X, residual=residual, generator=g, allocation=cfg.allocation))
            del ffn, X
    with contextlib.suppress(StopIteration):
        next(inputs)  # let the stream finish (and release its model)
    return out


def _scores(method: Method, summaries: list[LayerSummary], full: list[int], cfg: PruneConfig, common: dict):
    """Per-layer keep scores, and the policy that made them (None for untrained baselines)."""
    if method.scorer != "policy":
        return [s.score for s in summaries], None, {}
    states = [s.state for s in summaries]
    meta = {"method": method.name, "model_type": common["model_type"], "width": full[0], "num_layers": len(full),
            "hidden_size": summaries[0].hidden_size,
            "features": list(FEATURES) if method.state == "features" else [],
            "source_fingerprint": common["source_fingerprint"]}
    if cfg.policy is not None:
        policy, meta = _loaded_policy(cfg.policy, meta, states[0].shape[1])
    else:
        policy = PolicyNetwork(states[0].shape[1], full[0]).to(states[0].device)
        ks = [max(1, int((1 - cfg.ratio) * m)) for m in full]
        tcfg = TrainConfig(episodes=cfg.episodes, lr=cfg.lr, seed=cfg.seed, estimator=method.estimator)
        trained = train_policy(policy, states, [s.train_cost(method) for s in summaries], ks, tcfg)
        meta = {**meta, "train": {**asdict(tcfg), "ratio": cfg.ratio, "self_data": cfg.self_data,
                                  "best_episode": trained.best_episode},
                "fingerprint": policy_fingerprint(policy)}
    with torch.no_grad():
        scores = [policy.keep_logits(S.float()) for S in track(states, "Scoring layers", total=len(states))]
    return scores, policy, meta


def _loaded_policy(path: Path, meta: dict, state_dim: int) -> tuple[PolicyNetwork, dict]:
    policy, saved = load_policy(path)
    if saved.get("method") != meta["method"]:
        raise PolicyMismatch(f"--policy {path} was trained with --method {saved.get('method')}; pass that method")
    if int(saved.get("width", -1)) != meta["width"] or int(saved.get("state_dim", -1)) != state_dim:
        raise PolicyMismatch(
            f"--policy {path} was built for FFN width {saved.get('width')} x state {saved.get('state_dim')}, "
            f"this model needs {meta['width']} x {state_dim}; train a new policy"
        )
    return policy, saved
