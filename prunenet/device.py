"""Where the algorithm computes: ``--device`` resolved once, and how much memory that device offers.

Every phase (planning, self-text, rewards, training, export validation, the quality report) takes the
device from here, so ``--device cuda`` reaches all of them and ``auto`` means the same thing everywhere.
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
    """Whether this CPU multiplies bf16 matrices natively (oneDNN's AVX-512 / AMX kernels).

    Measured with torch 2.13 on 2 cores: with AVX-512 BF16, bf16 products run 1.6-5x faster than fp32
    ones (4096 x 11008 weights: 199 vs 40 GFLOP/s at 16 rows, 351 vs 142 at 2,048); on AVX2-only CPUs
    they take an emulated path (11 GFLOP/s per thread vs 28 in fp32).
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

    ``stored``, except that a CPU with native bf16 products heals an fp32 source as bf16: measured on the
    default model at ratio 0.3 (2-core AVX-512 CPU, fp32 vs bf16, 60 steps): 385 vs 249 s, reference KL 0.539 vs
    0.543; the time saved buys the default 100 steps (388 s: KL 0.535, perplexity x1.700).
    """
    if device.type == "cpu" and stored == torch.float32 and cpu_has_fast_bf16():
        return torch.bfloat16
    return stored
