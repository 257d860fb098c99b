"""Grouped-query attention that reads the KV cache as it is, for batched sampling on a CPU.

transformers' SDPA path copies every key and value head ``num_key_value_groups`` times (``repeat_kv``),
each layer at each decode step, whenever an attention mask is passed, as it always is when
samples of different prompt lengths are batched with left padding. On a CPU, PyTorch's SDPA takes the
grouped heads and the mask together (``enable_gqa``) and gives bit-identical outputs without the copy,
so :func:`grouped_attention` switches a model to it for the length of a ``generate`` call: the
self-text is the same, and it is sampled sooner. GPUs keep transformers' rule (a masked grouped call
would fall back to the math kernel there).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
from transformers import AttentionInterface, AttentionMaskInterface
from transformers.masking_utils import sdpa_mask

__all__ = ["GROUPED_SDPA", "grouped_sdpa_forward", "grouped_attention"]

GROUPED_SDPA = "prunenet_grouped_sdpa"
"""The name the attention function is registered under (never written into a saved config)."""


def grouped_sdpa_forward(module: torch.nn.Module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                         attention_mask: torch.Tensor | None, dropout: float = 0.0, scaling: float | None = None,
                         is_causal: bool | None = None, **kwargs) -> tuple[torch.Tensor, None]:
    """transformers' attention-function signature; ``key``/``value`` keep their KV heads."""
    causal = is_causal if is_causal is not None else getattr(module, "is_causal", True)
    out = torch.nn.functional.scaled_dot_product_attention(
        query, key, value, attn_mask=attention_mask, dropout_p=dropout, scale=scaling,
        is_causal=bool(query.shape[2] > 1 and attention_mask is None and causal),
        enable_gqa=query.shape[1] != key.shape[1],
    )
    return out.transpose(1, 2).contiguous(), None


AttentionInterface.register(GROUPED_SDPA, grouped_sdpa_forward)
AttentionMaskInterface.register(GROUPED_SDPA, sdpa_mask)


@contextlib.contextmanager
def grouped_attention(model) -> Iterator[None]:
    """Run ``model`` with :func:`grouped_sdpa_forward` inside the block when it is on a CPU with SDPA attention."""
    config = model.config
    if model.device.type != "cpu" or getattr(config, "_attn_implementation", None) != "sdpa":
        yield
        return
    model.set_attn_implementation(GROUPED_SDPA)
    try:
        yield
    finally:
        model.set_attn_implementation("sdpa")
