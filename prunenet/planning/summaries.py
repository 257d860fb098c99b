"""One decoder layer reduced to what planning needs across layers: a compact :class:`LayerSummary`.

The planner streams the checkpoint one layer at a time: the layer's FFN matrices (and, with
``--self-data``, its captured FFN inputs) are read, turned into a summary here, and dropped. What is
kept scales with the FFN width, not with the model: the policy state (per-neuron features, or the
gate matrix for the paper's state), the reward's statistics, and a few scalars.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from prunenet.planning.methods import Method
from prunenet.policy.features import neuron_features
from prunenet.policy.rewards import OutputReward, PeakReward, SpectralReward, spike_hidden
from prunenet.source.ffn import LayerFFN

__all__ = ["LayerSummary", "summarize_layer", "needs_activations", "INPUT_REWARDS", "STATES", "UNTRAINED_SCORES"]

INPUT_REWARDS = {"self-text": OutputReward, "spikes": PeakReward}
"""The output-error reward for each kind of FFN input: captured self-text activations, or the
data-free one-channel spikes (``--self-data 0``)."""

STATES = {
    "features": lambda ffn, H: neuron_features(ffn, H),
    "weights": lambda ffn, H: ffn.W,
}
"""The policy's per-layer state, by :attr:`Method.state`."""

UNTRAINED_SCORES = {
    "random": lambda ffn, g: torch.rand(ffn.width, generator=g),
    "magnitude": lambda ffn, g: ffn.W.norm(dim=1),
}
"""Baselines scored directly from one layer (keep = higher), by :attr:`Method.scorer`."""


@dataclass
class LayerSummary:
    """Everything the policy, the training loop and the allocation need from one layer."""

    width: int
    hidden_size: int
    state: torch.Tensor | None = None
    """Policy state (m x state_dim); None for untrained scorers."""
    score: torch.Tensor | None = None
    """Keep scores of an untrained scorer (random, magnitude)."""
    output: Any = None
    """The output-error reward (:data:`INPUT_REWARDS`): drives the sensitivity allocation."""
    spectral: SpectralReward | None = None
    """The paper's KS reward, for methods trained on it."""
    residual: float | None = None
    """Mean squared norm of the residual stream entering the layer (self-text only)."""

    def train_cost(self, method: Method):
        return self.spectral.cost if method.reward == "spectral" else self.output.cost


def summary_bytes(method: Method, allocation: str, m: int, d: int, self_text: bool) -> int:
    """Bytes a layer's summary keeps across the stream (fp32): the pre-flight's share of this module."""
    from prunenet.policy.features import FEATURES

    total = 0
    if needs_activations(method, allocation):
        if self_text:
            total += m * m * 4 if m <= OutputReward.gram_limit else 2 * OutputReward.sketch * m * 4
        else:
            total += m * 4
    if method.state == "features":
        total += m * len(FEATURES) * 4
    if method.reward == "spectral" or method.state == "weights":
        total += m * d * 4 + d * d * 4
    return total


def needs_activations(method: Method, allocation: str) -> bool:
    """Whether the FFN output statistics are needed: our reward, our state, or the sensitivity allocation.

    The paper's method with uniform widths needs none of them (and no self-generated text)."""
    return method.reward == "output" or method.state == "features" or allocation == "sensitivity"


def summarize_layer(ffn: LayerFFN, method: Method, *, X: torch.Tensor | None, residual: float | None,
                    generator: torch.Generator, allocation: str) -> LayerSummary:
    """Reduce one layer's FFN (and its captured inputs ``X``, or None for weights only) to a summary."""
    summary = LayerSummary(width=ffn.width, hidden_size=int(ffn.W.shape[1]), residual=residual)
    H = None
    if needs_activations(method, allocation):
        kind = "self-text" if X is not None else "spikes"
        H = ffn.hidden(X) if X is not None else spike_hidden(ffn)
        summary.output = INPUT_REWARDS[kind](ffn, H)
    if method.scorer in UNTRAINED_SCORES:
        summary.score = UNTRAINED_SCORES[method.scorer](ffn, generator)
    else:
        summary.state = STATES[method.state](ffn, H)
        if method.reward == "spectral":
            summary.spectral = SpectralReward(ffn)
    return summary
