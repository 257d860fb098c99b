"""Safetensors shards written tensor by tensor: the writer never holds a shard in memory.

``safetensors.torch.save_file`` needs the whole shard as a dict and serialises it to one bytes buffer
(a 2 GiB shard costs ~4 GiB at its peak). Here the layout of every shard is planned first from
the tensors' output shapes and dtypes, which are known before any weight is read; each shard's
header is written, then each tensor is produced (read, sliced, cast), written and dropped. The file
format is the one ``save_file`` writes: an 8-byte header length, the JSON header (padded with spaces
to 8 bytes), then the data in header order, tensors sorted by (element size descending, name).
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch

__all__ = ["TensorSpec", "plan_shards", "write_shard", "ST_DTYPES"]

ST_DTYPES = {
    torch.float64: "F64", torch.float32: "F32", torch.float16: "F16", torch.bfloat16: "BF16",
    torch.int64: "I64", torch.int32: "I32", torch.int16: "I16", torch.int8: "I8", torch.uint8: "U8",
    torch.bool: "BOOL", torch.float8_e4m3fn: "F8_E4M3",
}


@dataclass(frozen=True)
class TensorSpec:
    name: str
    dtype: torch.dtype
    shape: tuple[int, ...]

    @property
    def nbytes(self) -> int:
        return math.prod(self.shape) * torch.empty((), dtype=self.dtype).element_size()


@dataclass
class Shard:
    tensors: list[TensorSpec] = field(default_factory=list)

    @property
    def nbytes(self) -> int:
        return sum(t.nbytes for t in self.tensors)


def plan_shards(specs: list[TensorSpec], max_bytes: int) -> list[Shard]:
    """Group tensors in order into shards of at most ``max_bytes`` (a bigger tensor gets its own)."""
    shards = [Shard()]
    for spec in specs:
        if shards[-1].tensors and shards[-1].nbytes + spec.nbytes > max_bytes:
            shards.append(Shard())
        shards[-1].tensors.append(spec)
    return shards


def _layout(shard: Shard) -> list[TensorSpec]:
    return sorted(shard.tensors, key=lambda t: (-torch.empty((), dtype=t.dtype).element_size(), t.name))


def _header(tensors: list[TensorSpec], metadata: dict[str, str]) -> bytes:
    entries: dict[str, object] = {"__metadata__": metadata}
    offset = 0
    for t in tensors:
        entries[t.name] = {"dtype": ST_DTYPES[t.dtype], "shape": list(t.shape),
                           "data_offsets": [offset, offset + t.nbytes]}
        offset += t.nbytes
    raw = json.dumps(entries, separators=(",", ":")).encode()
    return raw + b" " * (-len(raw) % 8)


def write_shard(path: Path, shard: Shard, produce: Callable[[str], torch.Tensor],
                metadata: dict[str, str] | None = None) -> None:
    """Write ``shard`` to ``path``; ``produce(name)`` returns each tensor, one at a time, as planned."""
    tensors = _layout(shard)
    header = _header(tensors, metadata or {"format": "pt"})
    with open(path, "wb") as f:
        f.write(len(header).to_bytes(8, "little"))
        f.write(header)
        for spec in tensors:
            t = produce(spec.name).contiguous()
            if t.dtype != spec.dtype or tuple(t.shape) != spec.shape:
                raise ValueError(f"{spec.name}: produced {t.dtype} {tuple(t.shape)}, planned {spec.dtype} {spec.shape}")
            if t.numel():
                f.write(memoryview(t.reshape(-1).view(torch.uint8).numpy()))
            del t
