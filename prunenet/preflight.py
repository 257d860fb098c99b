"""Pre-flight memory check: estimate each phase's peak before any long step, refuse what cannot fit.

Each phase's estimate lives beside its code and reads only ``config.json``, the tensor headers and the
job's :class:`~prunenet.compute.Compute` (the dtypes the run will use); this module composes them: the
planner holds one decoder layer plus compact per-layer summaries; self-text generation holds the whole
model (it is autoregressive); the writer holds one tensor, its validation one layer of the source and
one of the export; the quality report two decoder layers plus hidden states and one window's logits.
A phase that needs more than the device offers is a one-line error that says what to change, so
nothing is ever killed by the kernel halfway through a run, and nothing is written.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from prunenet.arch import get_arch_spec
from prunenet.compute import Compute
from prunenet.device import MEMORY_BUDGET_ENV, available_bytes
from prunenet.errors import PruneNetError
from prunenet.evaluation.streaming import report_bytes
from prunenet.healing.config import HEAL_MODES
from prunenet.healing.memory import healing_bytes
from prunenet.memory import model_sizes, two_streams
from prunenet.planning.config import PruneConfig
from prunenet.planning.methods import METHODS
from prunenet.planning.selfdata import capture_bytes, self_text_bytes
from prunenet.planning.summaries import needs_activations, summary_bytes
from prunenet.source.checkpoint import Checkpoint

__all__ = ["MemoryError_", "PhaseEstimate", "estimate_phases", "check_memory", "RUNTIME_BYTES"]

RUNTIME_BYTES = int(1.2e9)
"""Python, torch and transformers themselves (measured ~0.9-1.1 GB RSS after imports on this project)."""


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


def estimate_phases(ckpt: Checkpoint, cfg: PruneConfig, *, evaluate: bool, compute: Compute,
                    planning: bool = True, validate: bool = True) -> list[PhaseEstimate]:
    """Peak bytes per phase; ``planning=False`` for a saved ``--plan`` (no self-text, no capture)."""
    spec = get_arch_spec(ckpt.config.get("model_type"))
    c = ckpt.config
    n_layers, m = spec.num_layers(c), spec.width(c)
    d = int(c.get("hidden_size") or 0)
    whole, layer_bytes = compute.generate.itemsize, compute.layer.itemsize
    sizes = model_sizes(ckpt, spec, layer_bytes)
    method = METHODS[cfg.method]
    self_text = planning and bool(cfg.self_data) and needs_activations(method, cfg.allocation) and cfg.ratio > 0
    summaries = n_layers * summary_bytes(method, cfg.allocation, m, d, self_text)
    phases = []
    if self_text:
        model = (sizes.rest + n_layers * sizes.per_layer) * whole // layer_bytes
        phases.append(PhaseEstimate("self-text", self_text_bytes(c, n_layers, model, cfg.self_data, whole),
                                    "use --self-data 0 (weights only), or a --device with more memory"))
        phases.append(PhaseEstimate("capture", capture_bytes(sizes.rest, sizes.per_layer, m, d, cfg.self_data)
                                    + summaries, _PLAN_HINT))
    elif planning:  # weights only: one layer's FFN (and its stored-dtype copy while cast), the d x m spikes
        ffn_fp32 = 3 * m * d * 4
        streamed = ffn_fp32 + ffn_fp32 // 4 * ckpt.dtype.itemsize + 3 * d * m * 4
        phases.append(PhaseEstimate("read", streamed + summaries, _PLAN_HINT))
    # the writer holds one tensor at a time; its validation reads the source and the export back, one layer
    # each, in the self-check's dtype (exporters.hf.validate)
    validation = two_streams(ckpt, spec, model_sizes(ckpt, spec, compute.check.itemsize)) if validate else 0
    phases.append(PhaseEstimate("write", max(3 * sizes.largest, validation),
                                "use --no-validate (skips the reload check), free memory or use another --device"))
    if evaluate:
        phases.append(PhaseEstimate("eval", report_bytes(ckpt, spec, sizes, d, int(c.get("vocab_size") or 0),
                                                         layer_bytes), "use --no-eval"))
    return phases


_PLAN_HINT = "use --self-data 0 or --method prunenet (compact summaries), or another --device"


def check_memory(ckpt: Checkpoint, cfg: PruneConfig, *, evaluate: bool, compute: Compute,
                 planning: bool = True, heal=None, validate: bool = True, rounding=None,
                 tuning=None) -> list[PhaseEstimate]:
    """Raise :class:`MemoryError_` (one line: need, available, what to change) when a phase cannot fit.
    ``rounding``: the :class:`~prunenet.quantization.schemes.QuantSpec` GPTQ rounds with, if any;
    ``tuning``: the :class:`~prunenet.quantization.tune_config.TuneConfig` its scales are tuned with, if any.

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
    if rounding is not None:
        from prunenet.quantization.rounding import CALIBRATION_TOKENS, gptq_bytes

        tokens = max(cfg.self_data, heal.tokens if heal is not None else 0, CALIBRATION_TOKENS)
        phases.append(PhaseEstimate("quantize", gptq_bytes(ckpt, tokens), "use --quant-rounding nearest"))
        if tuning is not None:
            from prunenet.planning.selfdata import SAMPLE_LEN
            from prunenet.quantization.tuning import tuning_bytes

            tokens = cfg.self_data or tokens
            need = tuning_bytes(ckpt, compute, 1 - cfg.ratio, -(-tokens // SAMPLE_LEN), SAMPLE_LEN + 16, tuning.batch)
            phases.append(PhaseEstimate("tune", need, "use --quant-tune-steps 0"))
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
