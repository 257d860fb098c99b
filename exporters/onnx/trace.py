"""Tracing a decoder into an ONNX program with ``torch.onnx.export(dynamo=True)``.

The model is wrapped in an adapter that takes the cache as flat tensors, so inputs and outputs are
named the way optimum's ``ORTModelForCausalLM`` expects, with dynamic batch, sequence and past
lengths. Failures become one line naming the failing piece (the root cause of torch's chain).
"""

from __future__ import annotations

import contextlib
import logging
import warnings

from exporters.onnx.layout import CacheLayout
from exporters.onnx.optimize import quiet_loggers
from prunenet.errors import PruneNetError

__all__ = ["OPSET", "OnnxExportError", "flat_cache_module", "trace"]

log = logging.getLogger(__name__)

OPSET = 18


class OnnxExportError(PruneNetError):
    """torch.onnx could not trace or translate the model; the message names the failing piece."""


def flat_cache_module(model, layout: CacheLayout):
    """Adapter with flat cache tensors in and out (the names optimum uses), built around ``model``."""
    from torch import nn
    from transformers.cache_utils import DynamicCache

    class FlatCacheDecoder(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.model = model

        def forward(self, input_ids, attention_mask, position_ids, past):
            cache = DynamicCache(config=self.model.config)
            for i in range(layout.num_layers):
                cache.update(past[2 * i], past[2 * i + 1], i)
            out = self.model(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                             past_key_values=cache, use_cache=True)
            present = []
            for layer in out.past_key_values.layers:
                present += [layer.keys, layer.values]
            return (out.logits, *present)

    return FlatCacheDecoder().eval()


def _sample_inputs(model, layout: CacheLayout):
    """Batch 2 / past 4 / new 3: sizes above 1 keep every dimension symbolic in the traced graph."""
    import torch

    batch, seq, past = 2, 3, 4
    device, dtype = model.device, model.dtype
    ids = torch.randint(3, int(model.config.vocab_size), (batch, seq), device=device)
    mask = torch.ones(batch, past + seq, dtype=torch.long, device=device)
    pos = torch.arange(past, past + seq, device=device).expand(batch, seq)
    cache = tuple(torch.randn(batch, h, past, d, device=device, dtype=dtype) for h, d in layout.kv_shapes)
    return ids, mask, pos, cache


def _dynamic_shapes(layout: CacheLayout):
    from torch.export import Dim

    batch, seq = Dim("batch_size"), Dim("sequence_length")
    past = Dim("past_sequence_length", max=layout.max_total_length) if layout.max_total_length else \
        Dim("past_sequence_length")
    # The cache part must be ONE nested tuple matching the tuple argument (see module docstring of env notes).
    return ({0: batch, 1: seq}, {0: batch, 1: Dim.AUTO}, {0: batch, 1: seq},
            tuple({0: batch, 2: past} for _ in layout.kv_shapes))


def trace(model, layout: CacheLayout, model_type: str | None):
    """torch.onnx.export(dynamo=True) -> ONNXProgram; failures become one line naming the failing piece."""
    import torch

    from prunenet.interrupts import check as check_interrupts

    wrapper = flat_cache_module(model, layout)
    args = _sample_inputs(model, layout)
    names = ["input_ids", "attention_mask", "position_ids", *layout.past_names()]
    try:
        with warnings.catch_warnings(), torch.no_grad(), contextlib.redirect_stdout(_NullWriter()), \
                quiet_loggers("onnx_ir", "onnxscript", "torch.onnx", level=logging.ERROR), \
                quiet_loggers("torch._subclasses.fake_tensor", level=logging.CRITICAL):
            # fake-tensor propagation logs (and swallows) a Ctrl-C with a stack dump; check_interrupts re-raises
            warnings.simplefilter("ignore")
            program = torch.onnx.export(
                wrapper, (*args[:3], args[3]), dynamo=True, opset_version=OPSET,
                dynamic_shapes=_dynamic_shapes(layout), input_names=names,
                output_names=["logits", *layout.present_names()], optimize=True, verbose=False,
            )
        check_interrupts()
        return program
    except Exception as exc:  # torch raises many types; the user needs the root cause in one line
        raise OnnxExportError(f"ONNX export of {model_type} failed: {_root_cause(exc)}") from exc


class _NullWriter:
    """The dynamo exporter prints progress lines to stdout; library code must not print."""

    def write(self, text: str) -> int:
        if text.strip():
            log.debug(text.rstrip())
        return len(text)

    def flush(self) -> None:
        pass


def _root_cause(exc: BaseException) -> str:
    while exc.__cause__ is not None:
        exc = exc.__cause__
    lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
    return f"{type(exc).__name__}: {lines[0][:240] if lines else 'no message'}"
