"""The KV cache a decoder builds, read from a real forward pass: what the graph's cache I/O looks like.

Heads and head dims come from the cache tensors themselves (not from config keys, which differ per
family), and a sliding-window layer bounds the total length the graph is exact for.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["CacheLayout", "probe_cache"]


@dataclass(frozen=True)
class CacheLayout:
    """What the KV cache of one model looks like, read from a real forward pass (not from config keys)."""

    kv_shapes: tuple[tuple[int, int], ...]
    """(heads, head_dim) of every cache tensor, in input order: layer 0 key, layer 0 value, ..."""
    max_total_length: int | None
    """Longest past + new sequence the graph is exact for (sliding-window caches), else None."""

    @property
    def num_layers(self) -> int:
        return len(self.kv_shapes) // 2

    def past_names(self) -> list[str]:
        return [f"past_key_values.{i}.{kind}" for i in range(self.num_layers) for kind in ("key", "value")]

    def present_names(self) -> list[str]:
        return [n.replace("past_key_values.", "present.") for n in self.past_names()]


def probe_cache(model) -> CacheLayout:
    """Run two tokens through the model and read the cache it builds: heads, head dims, sliding windows."""
    import torch
    from transformers.cache_utils import DynamicCache

    cache = DynamicCache(config=model.config)
    ids = torch.tensor([[1, 2]], device=model.device)
    with torch.no_grad():
        model(input_ids=ids, past_key_values=cache, use_cache=True)
    shapes: list[tuple[int, int]] = []
    windows = []
    for layer in cache.layers:
        shapes += [(int(layer.keys.shape[1]), int(layer.keys.shape[3])),
                   (int(layer.values.shape[1]), int(layer.values.shape[3]))]
        if getattr(layer, "is_sliding", False):
            windows.append(int(layer.sliding_window))
    # A sliding layer crops its cache past window-1 tokens, after which the layers' past lengths differ.
    return CacheLayout(tuple(shapes), min(windows) - 1 if windows else None)


