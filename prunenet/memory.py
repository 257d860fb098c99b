"""Sizes the per-phase memory estimates share, read from ``config.json`` and the tensor headers only.

Each phase's estimate lives beside the phase's code (self-text and capture in
:mod:`prunenet.planning.selfdata`, summaries in :mod:`prunenet.planning.summaries`, healing in
:mod:`prunenet.healing.memory`, the quality report in :mod:`prunenet.evaluation.streaming`);
:mod:`prunenet.preflight` composes them before any long step.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from prunenet.arch import ArchSpec
from prunenet.source.checkpoint import Checkpoint

__all__ = ["ModelSizes", "model_sizes", "two_streams", "generation_bytes"]


@dataclass(frozen=True)
class ModelSizes:
    per_layer: int
    """Bytes of one decoder layer in the compute dtype."""
    rest: int
    """Bytes of everything outside the decoder layers (embeddings, head, final norm)."""
    largest: int
    """Bytes of the largest single tensor."""


def model_sizes(ckpt: Checkpoint, spec: ArchSpec, compute_bytes: int) -> ModelSizes:
    shapes = ckpt.shapes()
    layer0 = spec.layers_prefix + ".0."
    layer_prefix = spec.layers_prefix + "."
    return ModelSizes(
        per_layer=sum(math.prod(s) for n, s in shapes.items() if n.startswith(layer0)) * compute_bytes,
        rest=sum(math.prod(s) for n, s in shapes.items() if not n.startswith(layer_prefix)) * compute_bytes,
        largest=max((math.prod(s) for s in shapes.values()), default=0) * compute_bytes,
    )


def two_streams(ckpt: Checkpoint, spec: ArchSpec, sizes: ModelSizes) -> int:
    """Two :class:`~prunenet.source.layerwise.LayerwiseModel` s run one after the other per layer (export
    validation, the quality report): both embeddings and heads, one layer of either at a time, and the
    stored-dtype copy of that layer's largest tensor while it is cast."""
    layer0 = spec.layers_prefix + ".0."
    largest_in_layer = max((math.prod(s) for n, s in ckpt.shapes().items() if n.startswith(layer0)), default=0)
    return 2 * sizes.rest + sizes.per_layer + largest_in_layer * ckpt.dtype.itemsize


def generation_bytes(c: dict, layers: int, model: int, samples: int, sample_len: int, whole: int) -> int:
    """Sampling text with the whole model (``model`` bytes, ``whole`` bytes per element): the model, the
    KV cache of every sample and a few vocabulary-wide rows per sample."""
    d = int(c.get("hidden_size") or 0)
    heads = int(c.get("num_attention_heads") or 1)
    kv = int(c.get("num_key_value_heads") or heads)
    head_dim = int(c.get("head_dim") or (d // heads if heads else 0))
    cache = samples * (sample_len + 16) * layers * 2 * kv * head_dim * whole
    return int(model * 1.05) + cache + samples * int(c.get("vocab_size") or 0) * 4 * 3
