"""Post-processing of an exported decoder graph: optimum's dimension names, ORT fusions, saving.

``torch.onnx.export(dynamo=True)`` returns a plain opset-18 graph that any ONNX runtime executes.
ONNX Runtime's transformer optimizer (``onnxruntime.transformers.optimizer``, GPT-2 fusion set)
rewrites it to ORT contrib operators; on these graphs it fuses the norms with the residual adds.
Measured on SmolLM2-135M, batch 1, 2 CPU threads, interleaved A/B on the same ORT session options
(median ms per decode step): plain 89.4, ORT-optimizer 87.3, onnxscript's fuller
``ort_fusions`` (adds MultiHeadAttention and RotaryEmbedding) 94.6, optimum's export 89.3. So the
ORT optimizer is used (it is never slower; its gain on CPU decode is small, the step being bound
by reading weights) and the more aggressive attention fusions are not. The fused graph runs only
on ONNX Runtime, so the plain graph is kept next to it.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

__all__ = ["EXTERNAL_DATA_BYTES", "EXTERNAL_DATA_SUFFIX", "TOTAL_LENGTH_DIM", "name_dims_", "ort_optimize",
           "save_model", "quiet_loggers", "initializer_bytes", "external_data_file"]

log = logging.getLogger(__name__)

EXTERNAL_DATA_BYTES = 1 << 30
"""Weights above this size go to a side file (protobuf caps a single file at 2 GiB)."""
EXTERNAL_DATA_SUFFIX = "_data"
"""``model.onnx`` -> ``model.onnx_data``: optimum's name for a graph's external weights."""
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


def ort_optimize(src: Path, dst: Path, *, use_gpu: bool, external: bool) -> dict[str, int]:
    """ONNX Runtime's transformer optimizer (GPT-2 style fusions) from ``src`` to ``dst``; returns fusion counts.

    On these graphs it fuses RMSNorm/LayerNorm with the residual add (``SkipSimplifiedLayerNormalization``,
    ``SkipLayerNormalization``) and GELU variants. ``opt_level=0`` keeps ORT's hardware-specific
    session rewrites out of the file: the session applies them when it loads the graph.
    """
    from onnxruntime.transformers.fusion_options import FusionOptions
    from onnxruntime.transformers.optimizer import optimize_model

    with quiet_loggers("onnxruntime", "onnx_ir", "onnxscript", level=logging.ERROR):
        # With external data the fusions run on the graph alone: the optimizer copies the model several
        # times (shape inference), which for a 2.7 GB graph took the process from 3.4 to 18 GB of RSS.
        # Shape inference (needed by the skip-norm fusion) checks that external data files exist,
        # relative to the working directory for an in-memory graph: run it from the graph's directory.
        graph = _weightless(src) if external else str(src)
        with contextlib.chdir(src.parent) if external else contextlib.nullcontext():
            optimized = optimize_model(graph, model_type="gpt2", num_heads=0, hidden_size=0, opt_level=0,
                                       optimization_options=FusionOptions("gpt2"), use_gpu=use_gpu)
        fired = {name: int(n) for name, n in optimized.get_fused_operator_statistics().items() if n}
        if external:
            from onnx.external_data_helper import load_external_data_for_model

            load_external_data_for_model(optimized.model, str(src.parent))
            _save_external(optimized, dst)
        else:
            optimized.save_model_to_file(str(dst), use_external_data_format=False, all_tensors_to_one_file=True)
    log.info("ORT fusions: %s", fired or "none matched")
    return fired


def _weightless(src: Path) -> Any:
    """The graph of ``src`` with its large weights left in the data file (references, not bytes)."""
    import onnx

    return onnx.load(str(src), load_external_data=False)


def external_data_file(graph: Path) -> Path:
    return graph.with_name(graph.name + EXTERNAL_DATA_SUFFIX)


def _save_external(optimized: Any, dst: Path) -> None:
    """What ``save_model_to_file(use_external_data_format=True)`` does, but with optimum's data-file name
    (ORT's own helper always writes ``<graph>.data``)."""
    import onnx

    optimized.topological_sort()
    model = optimized.model
    if any(n.domain == "com.microsoft" for n in model.graph.node) and \
            not any(o.domain == "com.microsoft" for o in model.opset_import):
        model.opset_import.add(domain="com.microsoft", version=1)
    data = external_data_file(dst)
    data.unlink(missing_ok=True)  # onnx appends to an existing data file
    onnx.save_model(model, str(dst), save_as_external_data=True, all_tensors_to_one_file=True,
                    location=data.name, size_threshold=1024)


@contextlib.contextmanager
def quiet_loggers(*loggers: str, level: int = logging.WARNING) -> Iterator[None]:
    """Raise third-party loggers to ``level`` for a block.

    onnx_ir's INFO messages are noisy (one is malformed and prints a traceback under ``-v``), and
    the ONNX exporter warns on every first export that torchvision ops are not registered.
    """
    saved = [(logging.getLogger(n), logging.getLogger(n).level) for n in loggers]
    for logger, _ in saved:
        logger.setLevel(max(logger.getEffectiveLevel(), level))
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
        data = external_data_file(path)
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
