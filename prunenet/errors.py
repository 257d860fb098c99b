"""One exception family for every user-facing failure.

The CLI turns a :class:`PruneNetError` into a one-line message and exit code 1; anything
else is a bug and keeps its traceback.
"""

from __future__ import annotations

__all__ = [
    "PruneNetError",
    "ModelSourceError",
    "UnsupportedArchitecture",
    "PolicyMismatch",
    "PlanMismatch",
    "OutputExistsError",
    "ExportValidationError",
    "BudgetError",
]


class PruneNetError(Exception):
    """Base class: the message is one line that says what went wrong and what to do."""

    exit_code = 1


class ModelSourceError(PruneNetError):
    """The model to prune could not be found, read or converted."""


class UnsupportedArchitecture(PruneNetError):
    """``config.model_type`` is not in :data:`prunenet.arch.ARCH_SPECS`."""


class PolicyMismatch(PruneNetError):
    """A saved policy does not fit the model (other FFN shape) or is unreadable."""


class PlanMismatch(PruneNetError):
    """A pruning plan does not belong to this model or cannot be read."""


class OutputExistsError(PruneNetError):
    """The output directory exists and is not empty, and ``--force`` was not given."""


class ExportValidationError(PruneNetError):
    """The exported artefact did not reproduce the in-memory pruned model."""


class BudgetError(PruneNetError):
    """The requested widths cannot satisfy the ratio, alignment and tensor-parallel constraints."""
