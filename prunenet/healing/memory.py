"""Healing's memory estimate, beside its code: the pre-flight composes it, ``auto`` mode decides by it."""

from __future__ import annotations

from prunenet.arch import get_arch_spec
from prunenet.compute import Compute
from prunenet.healing.measure import TOP_K
from prunenet.healing.refit import refit_bytes
from prunenet.memory import generation_bytes, model_sizes
from prunenet.source.checkpoint import Checkpoint

__all__ = ["healing_bytes"]


def healing_bytes(ckpt: Checkpoint, cfg, compute: Compute, kept: float) -> dict[str, int]:
    """Peak bytes of healing's phases: ``heal-text`` (generation), ``end-to-end`` and ``block``.

    ``cfg`` is a :class:`~prunenet.healing.config.HealConfig`; ``kept`` the fraction of FFN neurons the
    plan keeps (``1 - ratio`` before there is a plan). End-to-end holds the pruned model in fp32,
    gradients, two AdamW moments and a best copy of the FFN tensors it trains, the dense head, every
    row's final hidden state, the training rows' top-k targets and one batch's activations and
    vocabulary-wide logits; block mode holds one dense layer and its pruned copy (plus the same four
    copies of its FFN), three hidden-state streams and one row's activations. The least-squares refit
    (one layer's Gram matrix and solve) runs before training, so it peaks instead of, not beside,
    the training activations."""
    spec = get_arch_spec(ckpt.config.get("model_type"))
    c = ckpt.config
    d, vocab, n_layers = int(c.get("hidden_size") or 0), int(c.get("vocab_size") or 0), spec.num_layers(c)
    layer_bytes, whole = compute.heal_layer.itemsize, compute.heal_generate.itemsize
    sizes = model_sizes(ckpt, spec, layer_bytes)
    per_layer, rest = sizes.per_layer, sizes.rest
    per_layer_fp32 = per_layer * 4 // layer_bytes
    ffn_full = 3 * spec.width(c) * d * 4
    ffn_after = int(n_layers * ffn_full * kept)
    model_fp32 = (rest + n_layers * per_layer) * 4 // layer_bytes - n_layers * ffn_full + ffn_after
    rows = cfg.samples + 4
    tokens = cfg.batch * cfg.sample_len
    m = spec.width(c)
    activations = tokens * n_layers * (12 * d + 4 * m) * 4 + tokens * vocab * 4 * 5
    streams = 3 * rows * cfg.sample_len * d * layer_bytes
    refit = refit_bytes(m, kept, d) if cfg.refit else 0
    one_row = cfg.sample_len * (12 * d + 4 * m) * 4 * 2 + cfg.sample_len * vocab * 4 * 4
    return {
        "heal-text": generation_bytes(c, n_layers, (rest + n_layers * per_layer) * whole // layer_bytes, cfg.samples,
                                      cfg.sample_len, whole),
        "end-to-end": model_fp32 + 4 * ffn_after + rest + rows * cfg.sample_len * (d * layer_bytes + TOP_K * 12)
                      + max(activations, refit),
        "block": rest + 2 * per_layer_fp32 + 4 * ffn_full + streams + max(one_row, refit),
    }
