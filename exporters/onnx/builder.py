"""The decoder graph built by onnxruntime-genai's model builder, from a pruned HF directory.

The builder emits GroupQueryAttention with fused rotary, packed QKV and skip-norm fusions, a KV
buffer shared between past and present, and MatMulNBits for 4/8-bit weights: the graph
onnxruntime-genai runs as it is. It builds every decoder layer from that layer's own weights, so
per-layer FFN widths need nothing special, but it dispatches on ``config.architectures[0]`` against
its own list. A non-uniform export names ``PrunedLlamaForCausalLM``; the builder is therefore given
a *view* of the directory (symlinked files, a config naming the stock architecture, our
``auto_map`` kept) and loads it with ``trust_remote_code`` (``hf_remote=true``), which picks up
the shipped modeling file.

The builder annotates every FFN intermediate value with ``config.intermediate_size`` (the widest
layer); ORT's strict shape inference refuses those annotations on narrower layers, so they are
removed. 4-bit weights get MSE-clipped scales instead of the builder's round-to-nearest
(:mod:`exporters.onnx.nbits`). The builder always writes an external data file; the graph is
re-saved as one file unless its weights pass :data:`EXTERNAL_DATA_BYTES` (protobuf caps a file at 2 GiB).
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import os
import shutil
from pathlib import Path
from typing import Any

from exporters.onnx.families import BUILDER_FAMILIES
from exporters.onnx.nbits import RowScales, mse_int4_scales
from exporters.onnx.optimize import quiet_loggers
from exporters.onnx.quant import OnnxOptions
from prunenet.arch import ARCH_SPECS
from prunenet.errors import PruneNetError

__all__ = ["BUILDER_FAMILIES", "GRAPH_FILE", "DATA_SUFFIX", "OnnxBuildError", "build_graph", "builder_precision"]

log = logging.getLogger(__name__)

GRAPH_FILE = "model.onnx"
DATA_SUFFIX = ".data"
"""``model.onnx`` -> ``model.onnx.data``: the builder's and onnxruntime-genai's external data name."""
EXTERNAL_DATA_BYTES = (1 << 31) - (64 << 20)
"""Weights above this go to the data file: protobuf caps one file at 2 GiB, the graph itself needs a margin."""


class OnnxBuildError(PruneNetError):
    """onnxruntime-genai's model builder failed on this model; the message carries its last line."""


def builder_precision(options: OnnxOptions, device: str, dtype: str | None) -> str:
    """The builder's ``precision``: int4/int8 with --quant, else fp32 on CPU and fp16 (or bf16) on CUDA."""
    if options.bits is not None:
        return f"int{options.bits}"
    if not device.startswith("cuda"):
        return "fp32"
    return {"bfloat16": "bf16", "float32": "fp32"}.get(dtype or "", "fp16")


def build_graph(hf_dir: Path, out_dir: Path, *, precision: str, device: str, block: int | None,
                options: OnnxOptions, work: Path, given: RowScales | None = None) -> dict[str, Any]:
    """Run the builder on a view of ``hf_dir`` into ``out_dir``; ``work`` is a scratch directory (removed).
    ``given``: scales of GPTQ-rounded weights (int4), used instead of searching them."""
    config = json.loads((Path(hf_dir) / "config.json").read_text())
    view, cache = work / "view", work / "cache"
    _make_view(Path(hf_dir), view, config)
    extra = ["hf_remote=true", "hf_token=false"]
    if block is not None:
        extra += [f"block_size={block}", "is_symmetric=true", "accuracy_level=4" if device == "cpu" else
                  "accuracy_level=0"]
        if not options.quantize_head:
            extra.append("nodes_to_exclude=/lm_head/MatMul")
    ep = "cuda" if device.startswith("cuda") else "cpu"
    mse = precision == "int4"
    try:
        with mse_int4_scales(block, given=given) if mse else contextlib.nullcontext({}) as written:
            _run_builder(view, out_dir, precision, ep, cache, extra)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    if mse and not written["mse"] + written["gptq"]:  # the builder no longer quantizes through ORT's blockwise quantizer
        raise OnnxBuildError("onnxruntime-genai's model builder wrote int4 weights without ONNX Runtime's "
                             "blockwise quantizer: the MSE scales were not applied")
    external = _strip_and_save(out_dir / GRAPH_FILE)
    scales = ("gptq" if written.get("gptq") else "mse") if mse else ("rtn" if block is not None else None)
    if given and written["mse"]:  # (the head is not searched here at all: it keeps ONNX Runtime's rule)
        raise OnnxBuildError(f"{written['mse']} int4 weight(s) did not match the GPTQ-rounded weights; "
                             "the graph would not hold the codes GPTQ chose")
    return {"builder": "onnxruntime-genai model builder", "precision": precision, "execution_provider": ep,
            "block_size": block, "scales": scales, "external_data": external, "builder_options": extra,
            "int4_weights": dict(written) if mse else None}


def _make_view(hf_dir: Path, view: Path, config: dict[str, Any]) -> None:
    """Symlinks to ``hf_dir``'s files and a config naming the stock architecture (auto_map kept)."""
    view.mkdir(parents=True)
    for f in hf_dir.iterdir():
        if f.is_file() and f.name != "config.json":
            os.symlink(f.resolve(), view / f.name)
    stock = ARCH_SPECS[config["model_type"]].hf_architecture
    (view / "config.json").write_text(json.dumps({**config, "architectures": [stock]}, indent=2))


def _run_builder(view: Path, out_dir: Path, precision: str, ep: str, cache: Path, extra: list[str]) -> None:
    from onnxruntime_genai.models.builder import create_model, parse_extra_options

    printed = io.StringIO()
    try:
        with contextlib.redirect_stdout(printed), contextlib.redirect_stderr(printed), \
                quiet_loggers("onnx_ir", "onnxruntime", "transformers", level=logging.ERROR):
            options = parse_extra_options(None, str(view), str(out_dir), precision, ep, str(cache), extra)
            create_model(None, str(view), str(out_dir), precision, ep, str(cache), **options)
    except Exception as exc:  # the builder raises bare Exception/NotImplementedError; one line for the user
        last = [ln for ln in str(exc).splitlines() if ln.strip()] or [type(exc).__name__]
        raise OnnxBuildError(f"onnxruntime-genai's model builder failed ({precision}, {ep}): {last[0][:240]}") \
            from exc
    finally:
        log.debug("model builder output:\n%s", printed.getvalue()[-4000:])


def _strip_and_save(graph: Path) -> bool:
    """Drop the ``/mlp/`` shape annotations; one file unless the weights need the data file. Returns external."""
    import onnx
    from onnx.external_data_helper import load_external_data_for_model

    model = onnx.load(str(graph), load_external_data=False)
    kept = [v for v in model.graph.value_info if "/mlp/" not in v.name]
    del model.graph.value_info[:]
    model.graph.value_info.extend(kept)
    data = graph.with_name(graph.name + DATA_SUFFIX)
    external = data.is_file() and data.stat().st_size > EXTERNAL_DATA_BYTES
    tmp = graph.with_name(".tmp-" + graph.name)
    if not external:
        load_external_data_for_model(model, str(graph.parent))
        for tensor in model.graph.initializer:  # now in memory: no reference to the data file
            tensor.data_location = onnx.TensorProto.DEFAULT
            del tensor.external_data[:]
    onnx.save(model, str(tmp))  # external: the references to model.onnx.data stay as the builder wrote them
    os.replace(tmp, graph)
    if not external:
        data.unlink(missing_ok=True)
    return external
