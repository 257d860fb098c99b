"""ONNX export of a (pruned) HF decoder: a directory onnxruntime-genai runs as it is, validated against torch.

For the families onnxruntime-genai's model builder supports (:data:`BUILDER_FAMILIES`) the graph is
the builder's (:mod:`exporters.onnx.builder`): GroupQueryAttention, fused rotary and norms, a KV
buffer shared between past and present, fp32 on CPU, fp16/bf16 on CUDA, or 4/8-bit MatMulNBits
weights with ``--quant`` (:mod:`exporters.onnx.quant`). The directory holds ``model.onnx`` (its
weights in ``model.onnx.data`` past 2 GiB), ``genai_config.json`` (:mod:`exporters.onnx.genai`),
the tokenizer files, ``config.json``, ``generation_config.json``, the plan and ``prunenet-onnx.json``
(:mod:`exporters.onnx.manifest`).

A source without tokenizer files (onnxruntime-genai needs them; test models) gets the traced graph
too, with a warning, and ``--quant`` is refused for it. opt and falcon, which the builder does not
build, keep the graph traced by torch.onnx in optimum's
layout (:mod:`exporters.onnx.trace`, fused by ORT's transformer optimizer); there is still one
graph, ``model.onnx``, and no genai_config (onnxruntime-genai has no such model types); ``--quant``
is refused for them.

The export proves itself: a float graph's ONNX Runtime greedy decoding must equal torch's
(:mod:`exporters.onnx.validate`), and onnxruntime-genai's generator must produce the same tokens;
a 4/8-bit graph must agree with torch running the same round-to-nearest weights
(:mod:`exporters.onnx.validate_quant`).
"""

from __future__ import annotations

import contextlib
import json
import logging
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from exporters.hf.side_files import SIDE_FILES, copy_side_files
from exporters.onnx.builder import build_graph, builder_precision
from exporters.onnx.families import BUILDER_FAMILIES, check_family
from exporters.onnx.genai import tune_genai_config
from exporters.onnx.layout import probe_cache
from exporters.onnx.manifest import REPORT_FILE, write_manifest
from exporters.onnx.nbits import RowScales
from exporters.onnx.optimize import (
    EXTERNAL_DATA_BYTES,
    external_data_file,
    initializer_bytes,
    name_dims_,
    ort_optimize,
    save_model,
)
from exporters.onnx.quant import OnnxOptions, OnnxQuantError, choose_block, matmul_ks
from exporters.onnx.trace import OPSET, OnnxExportError, trace
from exporters.onnx.validate import DEFAULT_PROMPTS, validate_decoding
from prunenet.arch import get_arch_spec
from prunenet.errors import ModelSourceError
from prunenet.progress import status
from prunenet.source.loaders import has_tokenizer

log = logging.getLogger(__name__)

__all__ = ["OnnxExportError", "DEFAULT_PROMPTS", "REPORT_FILE", "export_onnx", "load_for_export"]


def export_onnx(
    hf_dir: Path,
    out_dir: Path,
    *,
    device: str = "cpu",
    optimize: bool = True,
    validate: bool = True,
    prompts: list[str] | None = None,
    options: OnnxOptions | None = None,
    dtype: str | None = None,
    given: RowScales | None = None,
) -> dict[str, Any]:
    """Export ``hf_dir`` into ``out_dir`` (created by the caller, staged atomically); returns a report.

    ``hf_dir`` may live inside ``out_dir`` (the ``--target onnx`` intermediate export); its files are
    then not listed in the report, since the caller removes them before the commit. ``dtype`` only
    chooses between fp16 (default) and bf16 on CUDA; ``optimize`` applies to the traced graph only.
    ``given``: the scales of weights GPTQ rounded (int4 graphs store exactly those codes).
    """
    from prunenet.device import resolve_device

    hf_dir, out_dir = Path(hf_dir), Path(out_dir)
    options = options or OnnxOptions()
    device = resolve_device(device).type
    config = _read_config(hf_dir)
    check_family(config.get("model_type"), quantized=options.bits is not None)
    timings: dict[str, float] = {}
    if config["model_type"] in BUILDER_FAMILIES and has_tokenizer(hf_dir):
        report = _export_built(hf_dir, out_dir, config, device, options, dtype, timings, given)
    elif options.bits is not None:
        raise OnnxQuantError(f"{hf_dir.name}: --quant for --target onnx needs the model's tokenizer files "
                             "(onnxruntime-genai's model builder and runtime read them)")
    else:
        if config["model_type"] in BUILDER_FAMILIES:
            log.warning("%s has no tokenizer files, which onnxruntime-genai needs: writing the traced graph",
                        hf_dir.name)
        report = _export_traced(hf_dir, out_dir, device, optimize, timings)
    _copy_side_files(hf_dir, out_dir)
    report.update(model_type=config.get("model_type"), device=device, quant=options.quant)
    if validate:
        with _timed(timings, "validate_s"), status("Validating the graph against torch"):
            report["validation"] = _validate(hf_dir, out_dir, config, report, list(prompts or DEFAULT_PROMPTS),
                                             device, given)
        report["max_logit_diff"] = report["validation"]["max_logit_diff"]
        report["greedy_match"] = report["validation"].get("greedy_match")
    report["timings"] = {k: round(v, 2) for k, v in timings.items()}
    return write_manifest(out_dir, report, exclude=(hf_dir,))


def _read_config(hf_dir: Path) -> dict[str, Any]:
    try:
        return json.loads((hf_dir / "config.json").read_text())
    except (OSError, ValueError) as exc:
        raise ModelSourceError(f"{hf_dir}: cannot read config.json ({exc.__class__.__name__})") from None


def _export_built(hf_dir: Path, out_dir: Path, config: dict[str, Any], device: str, options: OnnxOptions,
                  dtype: str | None, timings: dict[str, float], given: RowScales | None = None) -> dict[str, Any]:
    """onnxruntime-genai's model builder on ``hf_dir`` (see :mod:`exporters.onnx.builder`)."""
    spec = get_arch_spec(config["model_type"])
    widths = config.get("intermediate_sizes") or [config[spec.width_attr]]
    block = choose_block(matmul_ks(config, widths), options.group) if options.bits else None
    precision = builder_precision(options, device, dtype)
    with _timed(timings, "build_s"), status(f"Building the {precision} graph with onnxruntime-genai's model builder"):
        report = build_graph(hf_dir, out_dir, precision=precision, device=device, block=block, options=options,
                             work=out_dir / ".prunenet-build", given=given if block else None)
    tune_genai_config(out_dir, config)
    report.update(dtype={"fp16": "float16", "bf16": "bfloat16"}.get(precision, "float32"),
                  quantize_head=options.quantize_head if block else None, num_layers=config["num_hidden_layers"],
                  max_total_length=None, genai=True)
    return report


def _export_traced(hf_dir: Path, out_dir: Path, device: str, optimize: bool,
                   timings: dict[str, float]) -> dict[str, Any]:
    """torch.onnx's graph in optimum's layout, for the families the builder does not build."""
    with _timed(timings, "load_s"):
        model, _ = load_for_export(hf_dir, device)
    with _timed(timings, "export_s"), status("Tracing the decoder with torch.onnx (dynamo)"):
        layout = probe_cache(model)
        program = trace(model, layout, model.config.model_type)
    del model
    report = _write_graphs(program, out_dir, optimize, device, timings)
    del program
    report.update(opset=OPSET, dtype="float16" if device.startswith("cuda") else "float32",
                  num_layers=layout.num_layers, max_total_length=layout.max_total_length, genai=False)
    return report


def _validate(hf_dir: Path, out_dir: Path, config: dict[str, Any], report: dict[str, Any], prompts: list[str],
              device: str, given: RowScales | None = None) -> dict[str, Any]:
    """Float graphs: greedy decoding == torch's (and the genai generator's); 4/8-bit: vs torch fake-quant."""
    model, _ = load_for_export(hf_dir, device)
    if report.get("block_size"):
        from exporters.onnx.validate_quant import validate_quantized

        bits = int(report["precision"].removeprefix("int"))
        return validate_quantized(model, out_dir, config, prompts, bits, report["block_size"],
                                  head=bool(report["quantize_head"]), scales=report["scales"], given=given)
    return validate_decoding(model, out_dir, config, prompts, report["dtype"], device, genai=report["genai"])


@contextlib.contextmanager
def _timed(timings: dict[str, float], key: str) -> Iterator[None]:
    start = time.perf_counter()
    try:
        yield
    finally:
        timings[key] = timings.get(key, 0.0) + time.perf_counter() - start


def load_for_export(hf_dir: Path, device: str = "cpu"):
    """Build the model the way users load it (:func:`prunenet.source.loaders.load_causal_lm`), eager attention."""
    import torch

    from prunenet.source.loaders import load_causal_lm

    try:
        config = json.loads((hf_dir / "config.json").read_text())
    except (OSError, ValueError) as exc:
        raise ModelSourceError(f"{hf_dir}: cannot read config.json ({exc.__class__.__name__})") from None
    get_arch_spec(config.get("model_type"))  # unsupported families fail here, in one line
    dtype = torch.float16 if device.startswith("cuda") else torch.float32
    model = load_causal_lm(hf_dir, dtype=dtype, device=device, check=False, attn_implementation="eager")
    return model, config


def _write_graphs(program, out_dir: Path, optimize: bool, device: str,
                  timings: dict[str, float]) -> dict[str, Any]:
    """model.onnx: ORT-optimized when ``optimize`` (the plain graph is an intermediate file, removed)."""
    model = program.model
    name_dims_(model)
    external = initializer_bytes(model) > EXTERNAL_DATA_BYTES
    plain = out_dir / (".unoptimized.onnx" if optimize else "model.onnx")
    with _timed(timings, "save_s"), status("Writing the ONNX graph"):
        save_model(model, plain, external=external)
    fusions: dict[str, int] = {}
    if optimize:
        with _timed(timings, "optimize_s"), status("Applying ONNX Runtime transformer fusions"):
            fusions = ort_optimize(plain, out_dir / "model.onnx", use_gpu=device.startswith("cuda"),
                                   external=external)
        plain.unlink()
        external_data_file(plain).unlink(missing_ok=True)
    return {"optimized": optimize, "fusions": fusions, "external_data": external}


def _copy_side_files(hf_dir: Path, out_dir: Path) -> None:
    """config.json (use_cache on, no remote-code map: the graph replaces the modeling file), tokenizer, plan."""
    config = json.loads((hf_dir / "config.json").read_text())
    config.pop("auto_map", None)
    config["use_cache"] = True
    (out_dir / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    copy_side_files(hf_dir, out_dir, (*SIDE_FILES, "prunenet-plan.json"))
