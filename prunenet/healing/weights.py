"""Healed weights: the FFN tensors healing changed, one safetensors file per decoder layer.

Healing runs before any exporter; exporters then read a tensor from here instead of slicing the
source's (same name, already at the pruned width). One file per layer keeps both the writer and block
mode to one layer in memory, and the directory lives inside the staged output, so an interrupted run
leaves nothing behind.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file

__all__ = ["HealedWeights", "ffn_parameters"]

_INDEX = "index.json"


class HealedWeights:
    """A directory of healed tensors keyed by their checkpoint names."""

    def __init__(self, root: Path | str):
        self.root = Path(root)
        index = self.root / _INDEX
        self._files: dict[str, str] = json.loads(index.read_text()) if index.exists() else {}

    def save_layer(self, layer: int, tensors: dict[str, torch.Tensor]) -> None:
        """Store one layer's healed tensors (checkpoint names, any device; written contiguous on the CPU)."""
        if not tensors:
            return
        self.root.mkdir(parents=True, exist_ok=True)
        file = f"layer-{layer:05d}.safetensors"
        save_file({n: t.detach().to("cpu").contiguous() for n, t in tensors.items()}, str(self.root / file))
        self._files.update(dict.fromkeys(tensors, file))
        (self.root / _INDEX).write_text(json.dumps(self._files, indent=1, sort_keys=True))

    def __contains__(self, name: str) -> bool:
        return name in self._files

    def __len__(self) -> int:
        return len(self._files)

    def names(self) -> list[str]:
        return sorted(self._files)

    def get(self, name: str) -> torch.Tensor:
        with safe_open(str(self.root / self._files[name]), framework="pt") as f:
            return f.get_tensor(name)

    def assign_(self, module: torch.nn.Module, prefix: str, dtype: torch.dtype | None = None,
                round_to: torch.dtype | None = None) -> torch.nn.Module:
        """Copy the healed tensors under ``prefix`` (e.g. ``model.layers.3.``) into an already sliced module."""
        for name, param in module.named_parameters():
            full = prefix + name
            if full in self:
                value = self.get(full)
                if round_to is not None:
                    value = value.to(round_to)
                if value.shape != param.shape:
                    from prunenet.errors import PlanMismatch

                    raise PlanMismatch(f"healed tensor {full} has shape {tuple(value.shape)}, "
                                       f"the pruned model expects {tuple(param.shape)}")
                param.data = value.to(dtype or param.dtype).to(param.device)
        return module


def ffn_parameters(layer: torch.nn.Module, spec, prefix: str) -> dict[str, torch.nn.Parameter]:
    """The FFN tensors of one (sliced) decoder layer that pruning changed, by checkpoint name: what healing trains."""
    out: dict[str, torch.nn.Parameter] = {}
    for suffix in spec.row_sliced + spec.col_sliced:
        try:
            out[prefix + suffix] = layer.get_parameter(suffix)
        except AttributeError:  # an optional tensor (a bias) this family does not have
            continue
    return out
