"""The rules for where and in which dtype the algorithm computes, and how much memory a device offers.

Pure functions of (device, stored dtype) and one CPU probe. A job combines them once into a
:class:`~prunenet.compute.Compute`, which is what the phases read.
"""

from __future__ import annotations

import os

import torch

from prunenet.errors import PruneNetError

__all__ = ["resolve_device", "available_bytes", "model_dtype", "layer_dtype", "cpu_has_fast_bf16", "heal_source_dtype",
           "MEMORY_BUDGET_ENV"]

MEMORY_BUDGET_ENV = "PRUNENET_MEMORY_BUDGET_GB"
"""Caps the memory the pre-flight check assumes is available (GB, applies to every device)."""


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    device = str(device)
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise PruneNetError("--device cuda requested but no CUDA device is available; use --device cpu")
    try:
        return torch.device(device)
    except RuntimeError:
        raise PruneNetError(f"--device {device}: not a device torch knows (use auto, cpu or cuda[:N])") from None


def available_bytes(device: torch.device) -> int:
    """Memory free for this process on ``device`` now (host RAM for the CPU), capped by the budget variable."""
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
    else:
        import psutil

        free = psutil.virtual_memory().available
    cap = os.environ.get(MEMORY_BUDGET_ENV)
    if cap:
        try:
            free = min(free, int(float(cap) * 1e9))
        except ValueError:
            raise PruneNetError(f"{MEMORY_BUDGET_ENV}={cap!r}: expected a number of GB") from None
    return int(free)


def model_dtype(stored: torch.dtype, device: torch.device) -> torch.dtype:
    """Compute dtype of a phase that holds the whole model (self-text generation): the checkpoint's own
    (a bf16 7B is 13.5 GB; in fp32 it would not fit), except fp16 on the CPU, which computes in fp32."""
    return torch.float32 if stored == torch.float16 and device.type == "cpu" else stored


def cpu_has_fast_bf16() -> bool:
    """Whether this CPU multiplies bf16 matrices natively (oneDNN's AVX-512 BF16 / AMX kernels).

    With them bf16 products are several times faster than fp32 ones; without them (AVX2-only CPUs)
    bf16 takes an emulated path slower than fp32 (``docs/scale.md`` has the measurements).
    """
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def layer_dtype(stored: torch.dtype, device: torch.device) -> torch.dtype:
    """Compute dtype of a phase that holds one decoder layer at a time (capture, validation, the report).

    On a GPU, and on a CPU with native bf16 products for a bf16 checkpoint, the checkpoint's dtype is
    kept. Otherwise the CPU computes in fp32 (the layer is cast once as it is onloaded): fp16 and
    emulated bf16 products are slower there than fp32 ones.
    """
    if device.type != "cpu" or (stored == torch.bfloat16 and cpu_has_fast_bf16()):
        return stored
    return torch.float32


def heal_source_dtype(stored: torch.dtype, device: torch.device) -> torch.dtype:
    """The dtype healing treats the source as, for its self-text (:func:`model_dtype` of it) and its dense
    layers (:func:`layer_dtype` of it), in both modes; what it trains keeps fp32 master weights either way.

    ``stored``, except that a CPU with native bf16 products heals an fp32 source as bf16: the same
    quality in about two thirds of the time (``docs/healing.md``), which buys more steps.
    """
    if device.type == "cpu" and stored == torch.float32 and cpu_has_fast_bf16():
        return torch.bfloat16
    return stored
