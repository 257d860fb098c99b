"""The pruning methods, as data: what each scores neurons by and how it is trained.

Every method yields per-layer keep scores (higher = keep); selection and allocation are shared,
so baselines are compared at identical widths. The planner dispatches on these fields only: to add
a method, add a row here (and, for a new scorer, state or reward, one entry in the tables of
:mod:`prunenet.planning.summaries`; for a new estimator, in :data:`prunenet.policy.train.ESTIMATORS`).
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["Method", "METHODS"]


@dataclass(frozen=True)
class Method:
    name: str
    summary: str
    scorer: str = "policy"
    """'policy' (trained with REINFORCE), or an untrained baseline: 'random', 'magnitude'."""
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
               state="features", reward="output", estimator="fixed"),
        Method("prunenet-ks", "the paper's state and KS spectral reward with the fixed REINFORCE estimator",
               state="weights", reward="spectral", estimator="fixed"),
        Method("prunenet-paper", "the paper's method with the reference estimator, as published",
               state="weights", reward="spectral", estimator="paper"),
        Method("random", "uniformly random neurons (baseline)", scorer="random"),
        Method("magnitude", "largest L2 norm rows of the first FFN matrix (baseline)", scorer="magnitude"),
    )
}
