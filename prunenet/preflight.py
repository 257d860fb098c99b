"""Pre-flight memory check: estimate each phase's peak before any long step, refuse what cannot fit.

The estimate reads only ``config.json`` and the tensor headers (shapes, dtypes), and follows the
memory model of the pipeline: the planner holds one decoder layer plus compact per-layer summaries;
self-text generation holds the whole model in its dtype (it is autoregressive); the writer holds one
tensor, its validation one layer of the source and one of the export; the quality report two decoder
layers plus hidden states and one window's logits.
A phase that needs more than the device offers is a one-line error that says what to change, so
nothing is ever killed by the kernel halfway through a run, and nothing is written.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from prunenet.arch import ArchSpec, get_arch_spec
from prunenet.compute import Compute
from prunenet.device import MEMORY_BUDGET_ENV, available_bytes
from prunenet.errors import PruneNetError
from prunenet.healing.config import HEAL_MODES
from prunenet.healing.measure import TOP_K
from prunenet.planning.config import PruneConfig
from prunenet.planning.methods import METHODS
from prunenet.planning.selfdata import CAPTURE_ROWS, SAMPLE_LEN
from prunenet.planning.summaries import needs_activations
from prunenet.policy.features import FEATURES
from prunenet.policy.rewards import OutputReward
from prunenet.source.checkpoint import Checkpoint

__all__ = ["MemoryError_", "PhaseEstimate", "estimate_phases", "check_memory", "RUNTIME_BYTES", "healing_bytes"]

RUNTIME_BYTES = int(1.2e9)
"""Python, torch and transformers themselves (measured ~0.9-1.1 GB RSS after imports on this project)."""
EVAL_TOKENS = 1536
"""Tokens of the default quality-report text (the bundled text's default slice is ~1.45k)."""


class MemoryError_(PruneNetError):  # noqa: N801 - not the builtin MemoryError, which means "already failed"
    """A phase would need more memory than the device offers."""


@dataclass(frozen=True)
class PhaseEstimate:
    name: str
    need: int
    """Estimated peak bytes on the device."""
    hint: str
    """What to change when it does not fit."""


def _gb(n: float) -> str:
    return f"{n / 1e9:.1f} GB"


def _sizes(ckpt: Checkpoint, spec: ArchSpec, compute_bytes: int) -> tuple[int, int, int]:
    """(bytes of one decoder layer, of everything else, largest single tensor) in the compute dtype."""
    shapes = ckpt.shapes()
    layer0 = spec.layers_prefix + ".0."
    layer_prefix = spec.layers_prefix + "."
    per_layer = sum(math.prod(s) for n, s in shapes.items() if n.startswith(layer0)) * compute_bytes
    rest = sum(math.prod(s) for n, s in shapes.items() if not n.startswith(layer_prefix)) * compute_bytes
    largest = max((math.prod(s) for s in shapes.values()), default=0) * compute_bytes
    return per_layer, rest, largest


def _two_streams(ckpt: Checkpoint, spec: ArchSpec, per_layer: int, rest: int) -> int:
    """Two :class:`~prunenet.source.layerwise.LayerwiseModel` s run one after the other per layer (export
    validation, the quality report): both embeddings and heads (``rest``), one layer of either at a time,
    and the stored-dtype copy of that layer's largest tensor while it is cast."""
    layer0 = spec.layers_prefix + ".0."
    largest_in_layer = max((math.prod(s) for n, s in ckpt.shapes().items() if n.startswith(layer0)), default=0)
    return 2 * rest + per_layer + largest_in_layer * ckpt.dtype.itemsize


def _summary_bytes(cfg: PruneConfig, m: int, d: int, self_text: bool) -> int:
    """Bytes kept per layer across the stream (fp32), following :mod:`prunenet.planning.summaries`."""
    method = METHODS[cfg.method]
    total = 0
    if needs_activations(method, cfg.allocation):
        if self_text:
            total += m * m * 4 if m <= OutputReward.gram_limit else 2 * OutputReward.sketch * m * 4
        else:
            total += m * 4
    if method.state == "features":
        total += m * len(FEATURES) * 4
    if method.reward == "spectral" or method.state == "weights":
        total += m * d * 4 + d * d * 4
    return total


def _generation_bytes(c: dict, layers: int, model: int, samples: int, sample_len: int, whole: int) -> int:
    """Whole model in its dtype, the KV cache of every sample and a few vocabulary-wide rows per sample."""
    d = int(c.get("hidden_size") or 0)
    heads = int(c.get("num_attention_heads") or 1)
    kv = int(c.get("num_key_value_heads") or heads)
    head_dim = int(c.get("head_dim") or (d // heads if heads else 0))
    cache = samples * (sample_len + 16) * layers * 2 * kv * head_dim * whole
    return int(model * 1.05) + cache + samples * int(c.get("vocab_size") or 0) * 4 * 3


def healing_bytes(ckpt: Checkpoint, cfg, compute: Compute, kept: float) -> dict[str, int]:
    """Peak bytes of healing's phases: ``heal-text`` (generation), ``end-to-end`` and ``block``.

    ``kept``: the fraction of FFN neurons the plan keeps (``1 - ratio`` before there is a plan).
    End-to-end holds the pruned model in fp32, gradients, two AdamW moments and a best copy of the FFN
    tensors it trains, the dense head, every row's final hidden state, the training rows' top-k targets
    and one batch's activations and vocabulary-wide logits; block mode holds one dense layer and its
    pruned copy (plus the same four copies of its FFN), three hidden-state streams and one row's
    activations."""
    spec = get_arch_spec(ckpt.config.get("model_type"))
    c = ckpt.config
    d, vocab, n_layers = int(c.get("hidden_size") or 0), int(c.get("vocab_size") or 0), spec.num_layers(c)
    layer_bytes, whole = compute.heal_layer.itemsize, compute.heal_generate.itemsize
    per_layer, rest, _ = _sizes(ckpt, spec, layer_bytes)
    per_layer_fp32 = per_layer * 4 // layer_bytes
    ffn_full = 3 * spec.width(c) * d * 4
    ffn_after = int(n_layers * ffn_full * kept)
    model_fp32 = (rest + n_layers * per_layer) * 4 // layer_bytes - n_layers * ffn_full + ffn_after
    rows = cfg.samples + 4
    tokens = cfg.batch * cfg.sample_len
    m = spec.width(c)
    activations = tokens * n_layers * (12 * d + 4 * m) * 4 + tokens * vocab * 4 * 5
    streams = 3 * rows * cfg.sample_len * d * layer_bytes
    return {
        "heal-text": _generation_bytes(c, n_layers, (rest + n_layers * per_layer) * whole // layer_bytes, cfg.samples,
                                       cfg.sample_len, whole),
        "end-to-end": model_fp32 + 4 * ffn_after + rest + rows * cfg.sample_len * (d * layer_bytes + TOP_K * 12)
                      + activations,
        "block": rest + 2 * per_layer_fp32 + 4 * ffn_full + streams + cfg.sample_len * (12 * d + 4 * m) * 4 * 2
                 + cfg.sample_len * vocab * 4 * 4,
    }


def estimate_phases(ckpt: Checkpoint, cfg: PruneConfig, *, evaluate: bool, compute: Compute,
                    planning: bool = True, validate: bool = True) -> list[PhaseEstimate]:
    """Peak bytes per phase; ``planning=False`` for a saved ``--plan`` (no self-text, no capture)."""
    spec = get_arch_spec(ckpt.config.get("model_type"))
    c = ckpt.config
    n_layers, m = spec.num_layers(c), spec.width(c)
    d = int(c.get("hidden_size") or 0)
    vocab = int(c.get("vocab_size") or 0)
    whole, layer_bytes = compute.generate.itemsize, compute.layer.itemsize
    per_layer, rest, largest = _sizes(ckpt, spec, layer_bytes)
    model = (rest + n_layers * per_layer) * whole // layer_bytes
    method = METHODS[cfg.method]
    self_text = planning and bool(cfg.self_data) and needs_activations(method, cfg.allocation) and cfg.ratio > 0
    tokens = max(cfg.self_data, 1)
    summaries = n_layers * _summary_bytes(cfg, m, d, self_text)
    ffn_fp32 = 3 * m * d * 4
    if self_text:  # one onloaded layer of the model, its FFN read again, the captured rows and activations
        rows = min(CAPTURE_ROWS, tokens)
        streamed = rest + 2 * per_layer + ffn_fp32 + 3 * rows * max(m, d) * 4
    else:  # weights only: one layer's FFN (and its stored-dtype copy while cast), the d x m spike activations
        streamed = ffn_fp32 + ffn_fp32 // 4 * ckpt.dtype.itemsize + 3 * d * m * 4
    phases = []
    if self_text:
        samples = -(-tokens // SAMPLE_LEN)
        phases.append(PhaseEstimate("self-text", _generation_bytes(c, n_layers, model, samples, SAMPLE_LEN, whole),
                                    "use --self-data 0 (weights only), or a --device with more memory"))
    if planning:
        phases.append(PhaseEstimate("capture" if self_text else "read", streamed + summaries,
                                    "use --self-data 0 or --method prunenet (compact summaries), or another --device"))
    # the writer holds one tensor at a time; its validation reads the source and the export back, one layer
    # each, always in fp32 (exporters.hf.validate)
    validation = _two_streams(ckpt, spec, *_sizes(ckpt, spec, compute.check.itemsize)[:2]) if validate else 0
    phases.append(PhaseEstimate("write", max(3 * largest, validation),
                                "use --no-validate (skips the reload check), free memory or use another --device"))
    if evaluate:  # the quality report streams both models the same way, in the layer dtype
        hidden = 2 * EVAL_TOKENS * d * layer_bytes * 3
        logits = 512 * vocab * 4 * 4
        phases.append(PhaseEstimate("eval", _two_streams(ckpt, spec, per_layer, rest) + hidden + logits,
                                    "use --no-eval"))
    return phases


def check_memory(ckpt: Checkpoint, cfg: PruneConfig, *, evaluate: bool, compute: Compute,
                 planning: bool = True, heal=None, validate: bool = True) -> list[PhaseEstimate]:
    """Raise :class:`MemoryError_` (one line: need, available, what to change) when a phase cannot fit.

    On CUDA, self-text generation may offload layers to host memory (accelerate), so it is checked
    against the GPU and the host together."""
    device = compute.device
    device_free = available_bytes(device)
    host_free = available_bytes(torch.device("cpu")) if device.type == "cuda" else 0
    phases = estimate_phases(ckpt, cfg, evaluate=evaluate, compute=compute, planning=planning, validate=validate)
    if heal is not None:  # a HealConfig: its text generation, and the cheaper mode it may pick
        need = healing_bytes(ckpt, heal, compute, 1 - cfg.ratio)
        modes = list(HEAL_MODES) if heal.mode == "auto" else [heal.mode]
        phases += [PhaseEstimate("heal-text", need["heal-text"], "lower --heal-tokens, or use --no-heal"),
                   PhaseEstimate("heal", min(need[m] for m in modes),
                                 "use --heal-mode block, lower --heal-batch, or --no-heal")]
    for phase in phases:
        available = device_free + (host_free if phase.name == "self-text" else 0)
        need = phase.need + (RUNTIME_BYTES if device.type == "cpu" else 0)
        if need > available:
            capped = " (capped by " + MEMORY_BUDGET_ENV + ")" if _capped() else ""
            raise MemoryError_(
                f"not enough memory for the {phase.name} phase on {device.type}: needs about {_gb(need)}, "
                f"{_gb(available)} available{capped}; {phase.hint}"
            )
    return phases


def _capped() -> bool:
    import os

    return bool(os.environ.get(MEMORY_BUDGET_ENV))
