"""REINFORCE training of the shared policy (paper §3; reference ``prunenet.py::_training``).

An episode visits every layer: the policy scores the layer's rows, ``k`` rows are drawn from
the Gumbel-sigmoid keep-probabilities, and the reward says how well they preserve the layer.
Layers do not affect each other's state, so no model copy is needed (the reference deep-copies
the whole LLM every episode).

Two estimators:

* ``fixed`` (our default): the same noise for sampling and for the loss, several rollouts per
  layer with a leave-one-out baseline and normalised advantages, the paper's per-layer discount,
  one optimizer step per episode, gradient clipping that takes effect, and the best policy
  (by the deterministic top-k reward) restored at the end.
* ``paper``: as published: reward ``1/KS``, fresh noise in the loss, no baseline, one optimizer
  step per layer, clipping after ``zero_grad`` (a no-op), last policy kept.
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch

from prunenet.policy.network import PolicyNetwork, gumbel_sigmoid
from prunenet.progress import track

__all__ = ["TrainConfig", "TrainResult", "train_policy", "ESTIMATORS"]

log = logging.getLogger(__name__)
Cost = Callable[[torch.Tensor], float]


@dataclass(frozen=True)
class TrainConfig:
    episodes: int = 20
    lr: float = 1e-3
    gamma: float = 0.99
    """The paper's per-layer discount: layer ``l``'s reward is weighted by gamma**l."""
    rollouts: int = 4
    clip: float = 1.0
    estimator: str = "fixed"
    seed: int = 0
    ratio_spread: float = 0.5
    """Fixed estimator: each episode prunes each layer at the ratio times U(1 - spread, 1 + spread), so the
    policy ranks well at every ratio it will be reused at ("prune once"), not only the training one."""


@dataclass
class TrainResult:
    policy: PolicyNetwork
    history: list[dict] = field(default_factory=list)
    best_episode: int = -1


def _sample(logits: torch.Tensor, k: int, g: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    u = torch.rand(logits.shape, generator=g, device="cpu").to(logits.device)
    o = gumbel_sigmoid(logits, u)
    kept = torch.multinomial(o.detach().clamp_min(1e-12), k, replacement=False, generator=None)
    return o, kept


def _greedy_cost(policy: PolicyNetwork, states: Sequence[torch.Tensor], costs: Sequence[Cost], ks: Sequence[int]) -> float:
    with torch.no_grad():
        return sum(c(torch.topk(policy.keep_logits(S), k).indices) for S, c, k in zip(states, costs, ks, strict=True))


def train_policy(
    policy: PolicyNetwork,
    states: Sequence[torch.Tensor],
    costs: Sequence[Cost],
    ks: Sequence[int],
    cfg: TrainConfig,
) -> TrainResult:
    """Train ``policy`` in place on per-layer ``states``; ``costs[l](kept)`` is lower-is-better."""
    threads = torch.get_num_threads()
    if states[0].device.type == "cpu" and states[0].shape[0] <= 4096:
        # every op here is small (one layer's m x d matrix, a d x d eigenproblem): one thread is as fast as
        # two on a quiet machine and 10-30x faster when another process is busy (OpenMP spin-waits). Wider
        # layers (7B and up) score rollouts with k x |R| x k sketch products, which do use every core.
        torch.set_num_threads(1)
    try:
        return _train(policy, states, costs, ks, cfg)
    finally:
        torch.set_num_threads(threads)


def _train(policy, states, costs, ks, cfg: TrainConfig) -> TrainResult:
    torch.manual_seed(cfg.seed)
    g = torch.Generator().manual_seed(cfg.seed)
    opt = torch.optim.AdamW(policy.parameters(), lr=cfg.lr, foreach=True)
    result = TrainResult(policy)
    estimator = ESTIMATORS[cfg.estimator]
    best = float("inf")
    best_state = copy.deepcopy(policy.state_dict())
    for episode in track(range(cfg.episodes), "Training policy (episodes)", total=cfg.episodes):
        mean_cost = estimator.episode(policy, opt, states, costs, ks, cfg, g)
        entry = {"episode": episode, "sampled_cost": mean_cost}
        if not estimator.select_best:
            result.history.append(entry)
            continue
        greedy = _greedy_cost(policy, states, costs, ks)
        result.history.append({**entry, "greedy_cost": greedy})
        log.info("episode %d: sampled cost %.4f, top-k cost %.4f", episode, mean_cost, greedy)
        if greedy < best:
            best, result.best_episode = greedy, episode
            best_state = copy.deepcopy(policy.state_dict())
    if estimator.select_best:
        policy.load_state_dict(best_state)
    return result


def _fixed_episode(policy, opt, states, costs, ks, cfg, g) -> float:
    opt.zero_grad()
    loss = torch.zeros(())
    total = 0.0
    for layer, (S, cost, k) in enumerate(zip(states, costs, ks, strict=True)):
        logits = policy.keep_logits(S)
        m = S.shape[0]
        scale = 1.0 + cfg.ratio_spread * (2.0 * float(torch.rand((), generator=g)) - 1.0)
        k = int(min(m - 1, max(1, round(m - (m - k) * scale))))
        samples = [_sample(logits, k, g) for _ in range(cfg.rollouts)]
        r = torch.tensor([-cost(kept) for _, kept in samples])
        total += float(-r.mean())
        # leave-one-out baseline, normalised (a single rollout has no baseline)
        adv = (r - (r.sum() - r) / (cfg.rollouts - 1)) / (r.std() + 1e-8) if cfg.rollouts > 1 else r
        for (o, kept), a in zip(samples, adv, strict=True):
            logp = torch.log(o[kept].clamp_min(1e-12)).sum() / k
            loss = loss - (cfg.gamma**layer) * float(a) * logp
    (loss / (len(states) * cfg.rollouts)).backward()
    torch.nn.utils.clip_grad_norm_(policy.parameters(), cfg.clip)
    opt.step()
    return total / len(states)


def _paper_episode(policy, opt, states, costs, ks, cfg, g) -> float:
    rewards, actions = [], []
    total = 0.0
    for S, cost, k in zip(states, costs, ks, strict=True):
        with torch.no_grad():
            _, kept = _sample(policy.keep_logits(S), k, g)
        c = cost(kept)
        total += c
        rewards.append(99999.0 if c == 0 else 1.0 / c)
        actions.append(kept)
    for layer, (S, kept) in enumerate(zip(states, actions, strict=True)):
        o, _ = _sample(policy.keep_logits(S), 1, g)  # fresh noise in the loss, as published
        loss = -(cfg.gamma**layer) * rewards[layer] * torch.log(o[kept].clamp_min(1e-12)).sum()
        loss.backward()
        opt.step()
        opt.zero_grad()
        torch.nn.utils.clip_grad_norm_(policy.parameters(), cfg.clip)  # after zero_grad: no effect
    return total / len(states)


@dataclass(frozen=True)
class Estimator:
    episode: Callable[..., float]
    """One episode: sample, score, step the optimizer; returns the mean sampled cost."""
    select_best: bool
    """Restore the policy with the best deterministic top-k cost (the paper keeps the last one)."""


ESTIMATORS: dict[str, Estimator] = {
    "fixed": Estimator(_fixed_episode, select_best=True),
    "paper": Estimator(_paper_episode, select_best=False),
}
