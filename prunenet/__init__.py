"""PruneNet: calibration-free structured FFN pruning with a learned policy (ICLR 2025).

The Python API is one call, :func:`prunenet.export` (what ``prunenet-export`` runs; it is
:func:`prunenet.jobs.api.export`, imported on first use so ``import prunenet`` stays light)::

    import prunenet
    report = prunenet.export(ratio=0.3, target="vllm", out="out")
"""

from __future__ import annotations

from typing import Any

from prunenet.version import __version__

__all__ = ["export", "__version__"]


def __getattr__(name: str) -> Any:
    if name == "export":
        from prunenet.jobs.api import export

        return export
    raise AttributeError(f"module 'prunenet' has no attribute {name!r}")
