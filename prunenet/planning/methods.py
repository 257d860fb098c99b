"""The pruning methods, as data: what each scores neurons by and how it is trained.

Every method yields per-layer keep scores (higher = keep); selection and allocation are shared,
so baselines are compared at identical widths.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["Method", "METHODS"]


@dataclass(frozen=True)
class Method:
    name: str
    summary: str
    trained: bool = False
    state: str = ""
    """'weights' (the paper's: the first FFN matrix) or 'features' (per-neuron FFN statistics)."""
    reward: str = ""
    """'spectral' (the paper's KS distance of singular values) or 'output' (FFN output error)."""
    estimator: str = ""
    """'fixed' or 'paper' (see :mod:`prunenet.policy.train`)."""


METHODS: dict[str, Method] = {
    m.name: m
    for m in (
        Method("prunenet", "policy on all-FFN statistics, output-error reward, fixed REINFORCE (default)",
               trained=True, state="features", reward="output", estimator="fixed"),
        Method("prunenet-ks", "the paper's state and KS spectral reward with the fixed REINFORCE estimator",
               trained=True, state="weights", reward="spectral", estimator="fixed"),
        Method("prunenet-paper", "the paper's method with the reference estimator, as published",
               trained=True, state="weights", reward="spectral", estimator="paper"),
        Method("random", "uniformly random neurons (baseline)"),
        Method("magnitude", "largest L2 norm rows of the first FFN matrix (baseline)"),
    )
}
