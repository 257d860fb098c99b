"""Read a safetensors checkpoint tensor by tensor, without building the model.

The policy needs only the FFN matrices; the exporter streams every tensor once. Both go
through :class:`Checkpoint`, which maps tensor names to shard files (single file or
``model.safetensors.index.json``) and reports clear errors for truncated or corrupt shards.
"""

from __future__ import annotations

import hashlib
import json
import math
from functools import cached_property
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open

from prunenet.errors import ModelSourceError

__all__ = ["Checkpoint"]

_DTYPES = {"F32": torch.float32, "BF16": torch.bfloat16, "F16": torch.float16, "F64": torch.float64}
_ALL_DTYPES = {**_DTYPES, "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8,
               "U8": torch.uint8, "BOOL": torch.bool}


class Checkpoint:
    """A model directory: its config dict and lazy access to its safetensors tensors."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        try:
            self.config: dict[str, Any] = json.loads((self.path / "config.json").read_text())
        except (OSError, ValueError) as exc:
            raise ModelSourceError(f"{self.path}: cannot read config.json ({exc.__class__.__name__})") from None

    @cached_property
    def weight_map(self) -> dict[str, str]:
        """Tensor name -> shard file name."""
        index = self.path / "model.safetensors.index.json"
        if index.is_file():
            try:
                return dict(json.loads(index.read_text())["weight_map"])
            except (OSError, ValueError, KeyError) as exc:
                raise ModelSourceError(f"{index}: unreadable index ({exc.__class__.__name__})") from None
        mapping: dict[str, str] = {}
        for shard in sorted(self.path.glob("*.safetensors")):
            for name in self._keys(shard):
                mapping[name] = shard.name
        if not mapping:
            raise ModelSourceError(f"{self.path}: no safetensors weights found")
        return mapping

    def _open(self, shard: Path):
        try:
            return safe_open(str(shard), framework="pt")
        except Exception as exc:  # safetensors raises its own error type for bad headers
            raise ModelSourceError(
                f"{shard}: corrupt or truncated safetensors file ({str(exc).splitlines()[0][:120]}); "
                "re-download or re-save the model"
            ) from None

    def _keys(self, shard: Path) -> list[str]:
        with self._open(shard) as f:
            return list(f.keys())

    @property
    def shards(self) -> list[str]:
        return sorted(set(self.weight_map.values()))

    def has(self, name: str) -> bool:
        return name in self.weight_map

    def get(self, name: str) -> torch.Tensor:
        """Load one tensor; a truncated shard is reported, not raised as a low-level error."""
        shard = self.path / self.weight_map[name]
        with self._open(shard) as f:
            try:
                return f.get_tensor(name)
            except Exception as exc:
                raise ModelSourceError(
                    f"{shard}: cannot read tensor {name} ({str(exc).splitlines()[0][:120]}); the file is corrupt"
                ) from None

    @cached_property
    def _headers(self) -> dict[str, tuple[tuple[int, ...], str]]:
        """Name -> (shape, safetensors dtype name) of every tensor, read once from the shard headers."""
        out: dict[str, tuple[tuple[int, ...], str]] = {}
        for shard in self.shards:
            with self._open(self.path / shard) as f:
                for name in f.keys():  # noqa: SIM118 - safe_open is not a dict
                    sl = f.get_slice(name)
                    out[name] = (tuple(sl.get_shape()), sl.get_dtype())
        return out

    @cached_property
    def dtype(self) -> torch.dtype:
        """The dtype of the checkpoint's weights (the most common floating dtype among its tensors)."""
        counts: dict[str, int] = {}
        for _, kind in self._headers.values():
            counts[kind] = counts.get(kind, 0) + 1
        floats = {k: v for k, v in counts.items() if k in _DTYPES}
        return _DTYPES[max(floats, key=floats.get)] if floats else torch.float32

    def tensor_infos(self) -> dict[str, tuple[tuple[int, ...], torch.dtype]]:
        """Name -> (shape, dtype) of every tensor, from the shard headers (no data read)."""
        return {name: (shape, _ALL_DTYPES[kind]) for name, (shape, kind) in self._headers.items()}

    def shapes(self) -> dict[str, tuple[int, ...]]:
        return {name: shape for name, (shape, _) in self._headers.items()}

    def num_parameters(self) -> int:
        """Stored parameters (a tied lm_head that is not stored is not counted twice)."""
        return sum(math.prod(s) for s in self.shapes().values())

    def fingerprint(self, names: list[str] | None = None) -> str:
        """sha256 of the config and of the named tensors' bytes (default: the shard headers)."""
        h = hashlib.sha256(json.dumps(self.config, sort_keys=True).encode())
        if names is None:
            for name, shape in sorted(self.shapes().items()):
                h.update(f"{name}:{shape}".encode())
        else:
            for name in names:
                t = self.get(name).contiguous()
                h.update(name.encode())
                h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
        return h.hexdigest()[:32]
