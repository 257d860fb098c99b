"""One :class:`Compute` per job: the device and every phase's compute dtype, resolved once.

The job resolves it at the start and passes it down; the planner, healing, the quality report and the
pre-flight all read the same object, so what the pre-flight estimates is what the run computes in.
The per-dtype rules themselves are the pure functions of :mod:`prunenet.device`.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from prunenet.device import heal_source_dtype, layer_dtype, model_dtype, resolve_device

__all__ = ["Compute"]


@dataclass(frozen=True)
class Compute:
    device: torch.device
    stored: torch.dtype
    """The source checkpoint's dtype."""
    generate: torch.dtype
    """Phases that hold the whole model and generate autoregressively (the planner's self-text)."""
    layer: torch.dtype
    """Phases that hold one decoder layer at a time (capture, the quality report)."""
    heal_generate: torch.dtype
    """Healing's self-text generation."""
    heal_layer: torch.dtype
    """Healing's dense layers and its autocast dtype (it trains fp32 master weights whatever this is)."""
    check: torch.dtype = torch.float32
    """The export self-check compares logits in fp32 whatever the source."""

    @classmethod
    def resolve(cls, device: str | torch.device, stored: torch.dtype) -> Compute:
        """``device`` as ``--device`` gives it (``auto``, ``cpu``, ``cuda[:N]``); ``stored`` the source dtype."""
        dev = resolve_device(device)
        healed_as = heal_source_dtype(stored, dev)
        return cls(device=dev, stored=stored, generate=model_dtype(stored, dev), layer=layer_dtype(stored, dev),
                   heal_generate=model_dtype(healed_as, dev), heal_layer=layer_dtype(healed_as, dev))

    @classmethod
    def for_checkpoint(cls, device: str | torch.device, source) -> Compute:
        from prunenet.source.checkpoint import Checkpoint

        return cls.resolve(device, Checkpoint(source).dtype)

    def to_dict(self) -> dict[str, str]:
        """For the JSON report: which device and dtype every phase used."""
        name = lambda d: str(d).removeprefix("torch.")  # noqa: E731
        return {"device": str(self.device), "stored": name(self.stored), "generate": name(self.generate),
                "layer": name(self.layer), "heal_generate": name(self.heal_generate),
                "heal_layer": name(self.heal_layer), "check": name(self.check)}
