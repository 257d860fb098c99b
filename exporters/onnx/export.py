"""ONNX export of a (pruned) HF decoder with KV cache, in optimum's decoder layout, validated by greedy decoding.

Per-layer FFN widths need no special support here: the model is built by transformers (with the
shipped remote code for non-uniform widths) and every weight becomes a graph constant with its own
shape. The graph is traced by :mod:`exporters.onnx.trace` with inputs and outputs named the way
optimum's ``ORTModelForCausalLM`` expects: ``input_ids``, ``attention_mask``, ``position_ids``,
``past_key_values.N.key|value`` -> ``logits``, ``present.N.key|value``.

Written files: ``model.onnx`` (what ``ORTModelForCausalLM.from_pretrained(dir)`` and our bench
load; rewritten by ONNX Runtime's transformer optimizer when ``optimize``), ``model_unoptimized.onnx``
(with ``optimize``: the plain opset-18 graph any ONNX runtime can run; optimum loads it with
``file_name="model_unoptimized.onnx"``), weights in ``<graph>_data`` side files above 1 GiB (protobuf
caps one file at 2 GiB; optimum names them the same way), ``config.json``, ``generation_config.json``,
the tokenizer files, and ``prunenet-onnx.json`` (:mod:`exporters.onnx.manifest`, including
``max_total_length`` for models whose sliding-window cache bounds the graph). The export proves
itself (:mod:`exporters.onnx.validate`): ORT greedy decoding must equal torch greedy decoding.
"""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from exporters.hf.side_files import SIDE_FILES, copy_side_files
from exporters.onnx.layout import probe_cache
from exporters.onnx.manifest import REPORT_FILE, write_manifest
from exporters.onnx.optimize import (
    EXTERNAL_DATA_BYTES,
    initializer_bytes,
    name_dims_,
    ort_optimize,
    save_model,
)
from exporters.onnx.trace import OPSET, OnnxExportError, trace
from exporters.onnx.validate import DEFAULT_PROMPTS, validate_decoding
from prunenet.arch import get_arch_spec
from prunenet.errors import ModelSourceError
from prunenet.progress import status

__all__ = ["OnnxExportError", "DEFAULT_PROMPTS", "REPORT_FILE", "UNOPTIMIZED_FILE", "export_onnx",
           "load_for_export"]

UNOPTIMIZED_FILE = "model_unoptimized.onnx"
"""The plain graph next to an optimized model.onnx (a different name, so optimum's loader is not confused)."""


def export_onnx(
    hf_dir: Path,
    out_dir: Path,
    *,
    device: str = "cpu",
    optimize: bool = True,
    validate: bool = True,
    prompts: list[str] | None = None,
) -> dict[str, Any]:
    """Export ``hf_dir`` into ``out_dir`` (created by the caller, staged atomically); returns a report.

    ``hf_dir`` may live inside ``out_dir`` (the ``--target onnx`` intermediate export); its files are
    then not listed in the report, since the caller removes them before the commit.
    """
    from prunenet.device import resolve_device

    hf_dir, out_dir = Path(hf_dir), Path(out_dir)
    device = resolve_device(device).type
    timings: dict[str, float] = {}
    with _timed(timings, "load_s"):
        model, config = load_for_export(hf_dir, device)
    with _timed(timings, "export_s"), status("Tracing the decoder with torch.onnx (dynamo)"):
        layout = probe_cache(model)
        program = trace(model, layout, config.get("model_type"))
    report = _write_graphs(program, out_dir, optimize, device, timings)
    del program  # the graph's weights are on disk now; validation needs the memory
    _copy_side_files(hf_dir, out_dir)
    dtype = "float16" if device.startswith("cuda") else "float32"
    report.update(model_type=config.get("model_type"), opset=OPSET, dtype=dtype, device=device,
                  num_layers=layout.num_layers, max_total_length=layout.max_total_length)
    if validate:
        with _timed(timings, "validate_s"), status("Validating: ORT greedy decoding vs torch"):
            report["validation"] = validate_decoding(model, out_dir, config, list(prompts or DEFAULT_PROMPTS),
                                                     dtype, device)
        report["max_logit_diff"] = report["validation"]["max_logit_diff"]
        report["greedy_match"] = report["validation"]["greedy_match"]
    report["timings"] = {k: round(v, 2) for k, v in timings.items()}
    return write_manifest(out_dir, report, exclude=(hf_dir,))


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
    """model.onnx: ORT-optimized when ``optimize`` (the plain graph is then kept as model_unoptimized.onnx)."""
    model = program.model
    name_dims_(model)
    external = initializer_bytes(model) > EXTERNAL_DATA_BYTES
    plain = out_dir / (UNOPTIMIZED_FILE if optimize else "model.onnx")
    with _timed(timings, "save_s"), status("Writing the ONNX graph"):
        save_model(model, plain, external=external)
    fusions: dict[str, int] = {}
    if optimize:
        with _timed(timings, "optimize_s"), status("Applying ONNX Runtime transformer fusions"):
            fusions = ort_optimize(plain, out_dir / "model.onnx", use_gpu=device.startswith("cuda"),
                                   external=external)
    return {"optimized": optimize, "fusions": fusions, "external_data": external}


def _copy_side_files(hf_dir: Path, out_dir: Path) -> None:
    """config.json (use_cache on, no remote-code map: the graph replaces the modeling file), tokenizer, plan."""
    config = json.loads((hf_dir / "config.json").read_text())
    config.pop("auto_map", None)
    config["use_cache"] = True
    (out_dir / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    copy_side_files(hf_dir, out_dir, (*SIDE_FILES, "prunenet-plan.json"))
