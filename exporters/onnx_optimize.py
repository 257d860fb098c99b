"""Post-processing of an exported decoder graph: optimum's dimension names, ORT fusions, saving.

The graph ``torch.onnx.export(dynamo=True)`` returns is a plain opset-18 graph that any ONNX
runtime can execute. ONNX Runtime runs faster on a graph whose RMSNorm/LayerNorm, residual-add,
rotary-embedding and attention subgraphs are replaced by its fused contrib operators
(``SkipSimplifiedLayerNormalization``, ``RotaryEmbedding``, ``MultiHeadAttention`` ...). Those
fusions are pattern rewrites written for exactly this exporter's output
(``onnxscript.rewriter.ort_fusions``; ORT's older ``onnxruntime.transformers.optimizer`` targets
TorchScript-exported graphs and only finds the norm fusions in dynamo graphs). The fused graph
runs only on ONNX Runtime, so the plain graph is always kept next to it.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

__all__ = ["EXTERNAL_DATA_BYTES", "TOTAL_LENGTH_DIM", "name_dims_", "fuse_for_ort_", "save_model", "quiet_loggers",
           "initializer_bytes"]

log = logging.getLogger(__name__)

EXTERNAL_DATA_BYTES = 1 << 30
"""Weights above this size go to a side file (protobuf caps a single file at 2 GiB)."""
TOTAL_LENGTH_DIM = "past_sequence_length + sequence_length"
"""Optimum's name for the attention-mask / present length (the exporter calls it ``s53``-style)."""


def initializer_bytes(model: Any) -> int:
    """Bytes of all weights of an ``onnx_ir`` model (decides external data)."""
    total = 0
    for value in model.graph.initializers.values():
        tensor = value.const_value
        if tensor is not None:
            total += tensor.nbytes
    return total


def name_dims_(model: Any) -> None:
    """Give the attention mask optimum's symbolic length name instead of the exporter's ``sNN``."""
    import onnx_ir as ir

    for value in model.graph.inputs:
        if value.name == "attention_mask" and value.shape is not None and len(value.shape) == 2:
            batch = value.shape[0]
            value.shape = ir.Shape([batch, TOTAL_LENGTH_DIM])


def fuse_for_ort_(model: Any) -> dict[str, int]:
    """Apply ONNX Runtime's transformer fusions in place; returns how often each one fired."""
    from onnxscript.rewriter.ort_fusions import optimize_for_ort

    with quiet_loggers("onnx_ir", "onnxscript"):
        _, stats = optimize_for_ort(model)
    fired = {name: int(count) for name, count in stats.items() if count}
    log.info("ORT fusions: %s", fired or "none matched")
    return fired


@contextlib.contextmanager
def quiet_loggers(*loggers: str) -> Iterator[None]:
    """onnx_ir's INFO messages are noisy (and one of them is malformed); keep them out of ``-v`` output."""
    saved = [(logging.getLogger(n), logging.getLogger(n).level) for n in loggers]
    for logger, _ in saved:
        logger.setLevel(max(logger.getEffectiveLevel(), logging.WARNING))
    try:
        yield
    finally:
        for logger, level in saved:
            logger.setLevel(level)


def save_model(model: Any, path: Path, *, external: bool) -> list[Path]:
    """Write an ``onnx_ir`` model (weights in ``<name>_data`` when ``external``); returns the files."""
    import onnx_ir as ir

    path.parent.mkdir(parents=True, exist_ok=True)
    if external:
        data = path.with_name(path.name + "_data")
        ir.save(model, path, external_data=data.name)
        return [path, data]
    _internalize_(model)
    ir.save(model, path)
    return [path]


def _internalize_(model: Any) -> None:
    """Load weights that an earlier save moved to a side file, so a single-file save is self-contained."""
    import onnx_ir as ir

    for value in model.graph.initializers.values():
        tensor = value.const_value
        if isinstance(tensor, ir.ExternalTensor):
            value.const_value = ir.Tensor(tensor.numpy(), name=tensor.name)
