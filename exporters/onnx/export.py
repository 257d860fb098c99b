"""ONNX export of a (pruned) HF decoder with KV cache, in optimum's decoder layout, validated by greedy decoding.

Per-layer FFN widths need no special support here: the model is built by transformers (with the
shipped remote code for non-uniform widths) and every weight becomes a graph constant with its own
shape. The graph is traced by ``torch.onnx.export(dynamo=True)`` through a thin adapter that takes
the cache as flat tensors, so inputs and outputs are named the way optimum's
``ORTModelForCausalLM`` expects: ``input_ids``, ``attention_mask``, ``position_ids``,
``past_key_values.N.key|value`` -> ``logits``, ``present.N.key|value``, with dynamic batch,
sequence and past lengths.

Written files: ``model.onnx`` (what ``ORTModelForCausalLM.from_pretrained(dir)`` and our bench
load; rewritten by ONNX Runtime's transformer optimizer when ``optimize``), ``model_unoptimized.onnx``
(with ``optimize``: the plain opset-18 graph any ONNX runtime can run; optimum loads it with
``file_name="model_unoptimized.onnx"``), weights in side files above 1 GiB, ``config.json``,
``generation_config.json``, the tokenizer files, and ``prunenet-onnx.json`` (the export report,
including ``max_total_length`` for models whose sliding-window cache bounds the graph). The export
proves itself: ORT greedy decoding must equal torch greedy decoding on the same model.
"""

from __future__ import annotations

import contextlib
import json
import logging
import shutil
import time
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from prunenet.arch import get_arch_spec
from prunenet.errors import ExportValidationError, ModelSourceError, PruneNetError
from prunenet.progress import status

from .hf import COPIED_FILES
from .hf_config import MODELING_FILE

__all__ = ["OnnxExportError", "CacheLayout", "DEFAULT_PROMPTS", "REPORT_FILE", "export_onnx", "load_for_export"]

log = logging.getLogger(__name__)

OPSET = 18
REPORT_FILE = "prunenet-onnx.json"
UNOPTIMIZED_FILE = "model_unoptimized.onnx"
"""The plain graph next to an optimized model.onnx (a different name, so optimum's loader is not confused)."""
DEFAULT_PROMPTS = (
    "The capital of France is",
    "Once upon a time, there was a little girl who",
    "def fibonacci(n):",
)
GREEDY_TOKENS = 32
_TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "vocab.json", "vocab.txt")
_RELATIVE_TOL = {"float32": None, "float16": 2e-2}  # None: the family's ArchSpec.atol


class OnnxExportError(PruneNetError):
    """torch.onnx could not trace or translate the model; the message names the failing piece."""


@dataclass(frozen=True)
class CacheLayout:
    """What the KV cache of one model looks like, read from a real forward pass (not from config keys)."""

    kv_shapes: tuple[tuple[int, int], ...]
    """(heads, head_dim) of every cache tensor, in input order: layer 0 key, layer 0 value, ..."""
    max_total_length: int | None
    """Longest past + new sequence the graph is exact for (sliding-window caches), else None."""

    @property
    def num_layers(self) -> int:
        return len(self.kv_shapes) // 2

    def past_names(self) -> list[str]:
        return [f"past_key_values.{i}.{kind}" for i in range(self.num_layers) for kind in ("key", "value")]

    def present_names(self) -> list[str]:
        return [n.replace("past_key_values.", "present.") for n in self.past_names()]


def export_onnx(
    hf_dir: Path,
    out_dir: Path,
    *,
    device: str = "cpu",
    optimize: bool = True,
    validate: bool = True,
    prompts: list[str] | None = None,
) -> dict[str, Any]:
    """Export ``hf_dir`` into ``out_dir`` (created by the caller, staged atomically); returns a report."""
    from prunenet.planning.planner import resolve_device

    hf_dir, out_dir = Path(hf_dir), Path(out_dir)
    device = resolve_device(device).type
    timings: dict[str, float] = {}
    with _timed(timings, "load_s"), status(f"Loading {hf_dir.name} for ONNX export"):
        model, config = load_for_export(hf_dir, device)
    with _timed(timings, "export_s"), status("Tracing the decoder with torch.onnx (dynamo)"):
        layout = probe_cache(model)
        program = _trace(model, layout, config.get("model_type"))
    report = _write_graphs(program, out_dir, optimize, device, timings)
    _copy_side_files(hf_dir, out_dir)
    dtype = "float16" if device.startswith("cuda") else "float32"
    report.update(model_type=config.get("model_type"), opset=OPSET, dtype=dtype, device=device,
                  num_layers=layout.num_layers, max_total_length=layout.max_total_length)
    if validate:
        with _timed(timings, "validate_s"), status("Validating: ORT greedy decoding vs torch"):
            report["validation"] = _validate(model, out_dir, config, list(prompts or DEFAULT_PROMPTS), dtype, device)
        report["max_logit_diff"] = report["validation"]["max_logit_diff"]
        report["greedy_match"] = report["validation"]["greedy_match"]
    report["timings"] = {k: round(v, 2) for k, v in timings.items()}
    report["files"] = sorted(str(p.relative_to(out_dir)) for p in out_dir.rglob("*") if p.is_file())
    (out_dir / REPORT_FILE).write_text(json.dumps(report, indent=2) + "\n")
    return report


@contextlib.contextmanager
def _timed(timings: dict[str, float], key: str) -> Iterator[None]:
    start = time.perf_counter()
    try:
        yield
    finally:
        timings[key] = timings.get(key, 0.0) + time.perf_counter() - start


def load_for_export(hf_dir: Path, device: str = "cpu"):
    """Build the model the way users load it: remote code only for directories we wrote with per-layer widths."""
    import torch
    from transformers import AutoModelForCausalLM

    try:
        config = json.loads((hf_dir / "config.json").read_text())
    except (OSError, ValueError) as exc:
        raise ModelSourceError(f"{hf_dir}: cannot read config.json ({exc.__class__.__name__})") from None
    get_arch_spec(config.get("model_type"))  # unsupported families fail here, in one line
    trust = "auto_map" in config and "pruning" in config and (hf_dir / MODELING_FILE).is_file()
    dtype = torch.float16 if device.startswith("cuda") else torch.float32
    model = AutoModelForCausalLM.from_pretrained(
        hf_dir, dtype=dtype, trust_remote_code=trust, attn_implementation="eager"
    )
    return model.to(device).eval(), config


def probe_cache(model) -> CacheLayout:
    """Run two tokens through the model and read the cache it builds: heads, head dims, sliding windows."""
    import torch
    from transformers.cache_utils import DynamicCache

    cache = DynamicCache(config=model.config)
    ids = torch.tensor([[1, 2]], device=model.device)
    with torch.no_grad():
        model(input_ids=ids, past_key_values=cache, use_cache=True)
    shapes: list[tuple[int, int]] = []
    windows = []
    for layer in cache.layers:
        shapes += [(int(layer.keys.shape[1]), int(layer.keys.shape[3])),
                   (int(layer.values.shape[1]), int(layer.values.shape[3]))]
        if getattr(layer, "is_sliding", False):
            windows.append(int(layer.sliding_window))
    # A sliding layer crops its cache past window-1 tokens, after which the layers' past lengths differ.
    return CacheLayout(tuple(shapes), min(windows) - 1 if windows else None)


def _flat_cache_module(model, layout: CacheLayout):
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


def _trace(model, layout: CacheLayout, model_type: str | None):
    """torch.onnx.export(dynamo=True) -> ONNXProgram; failures become one line naming the failing piece."""
    import torch

    from prunenet import interrupts

    from .onnx_optimize import quiet_loggers

    wrapper = _flat_cache_module(model, layout)
    args = _sample_inputs(model, layout)
    names = ["input_ids", "attention_mask", "position_ids", *layout.past_names()]
    try:
        with warnings.catch_warnings(), torch.no_grad(), contextlib.redirect_stdout(_NullWriter()), \
                quiet_loggers("onnx_ir", "onnxscript", "torch.onnx", level=logging.ERROR), \
                quiet_loggers("torch._subclasses.fake_tensor", level=logging.CRITICAL):
            # fake-tensor propagation logs (and swallows) a Ctrl-C with a stack dump; interrupts.check re-raises
            warnings.simplefilter("ignore")
            program = torch.onnx.export(
                wrapper, (*args[:3], args[3]), dynamo=True, opset_version=OPSET,
                dynamic_shapes=_dynamic_shapes(layout), input_names=names,
                output_names=["logits", *layout.present_names()], optimize=True, verbose=False,
            )
        interrupts.check()
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


def _write_graphs(program, out_dir: Path, optimize: bool, device: str,
                  timings: dict[str, float]) -> dict[str, Any]:
    """model.onnx: ORT-optimized when ``optimize`` (the plain graph is then kept as model_unoptimized.onnx)."""
    from .onnx_optimize import EXTERNAL_DATA_BYTES, initializer_bytes, name_dims_, ort_optimize, save_model

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
    for name in (*COPIED_FILES, "prunenet-plan.json"):
        if (hf_dir / name).is_file():
            shutil.copyfile(hf_dir / name, out_dir / name)


def _validate(model, out_dir: Path, config: dict, prompts: list[str], dtype: str, device: str) -> dict[str, Any]:
    """ORT greedy decoding (KV cache, IO binding) must be torch's greedy decoding; raises otherwise.

    Torch scores ORT's whole generated sequence in one uncached pass (teacher forcing). If torch's
    argmax at every new position is the token ORT chose, torch's own greedy loop would have produced
    the same tokens, by induction, so this equals comparing two greedy loops at the cost of one pass,
    and it checks ORT's cache plumbing against a cache-free reference. A left-padded batch checks
    that the graph really uses ``attention_mask``.
    """
    from serving.bench_engines import OrtDecoder, TorchDecoder

    rel = _RELATIVE_TOL[dtype] or get_arch_spec(config.get("model_type")).atol
    ort_model, torch_model = OrtDecoder(out_dir, device=device), TorchDecoder(model)
    outcomes = []
    for ids in _prompt_ids(out_dir, prompts, int(config["vocab_size"])):
        got = ort_model.generate(ids, GREEDY_TOKENS, keep_logits=True)
        seq = np.concatenate([ids, got.tokens[:, :-1]], axis=1)
        ref = torch_model.forward(seq, np.ones_like(seq), np.tile(np.arange(seq.shape[1]), (seq.shape[0], 1)))
        outcomes.append(_compare(ref[:, ids.shape[1] - 1:], got, rel))
    padded = _padded_batch_diff(torch_model, ort_model, int(config["vocab_size"]), rel)
    ort_model.close()
    _raise_on_failure(outcomes, padded)
    return {
        "prompts": len(outcomes), "tokens_per_prompt": GREEDY_TOKENS, "method": "teacher-forced torch pass",
        "max_logit_diff": max(o["max_logit_diff"] for o in outcomes + [padded]),
        "greedy_match": all(o["first_mismatch"] is None for o in outcomes),
        "near_ties": sum(o["ties"] for o in outcomes), "relative_tolerance": rel,
        "padded_batch_max_diff": padded["max_logit_diff"],
    }


def _prompt_ids(out_dir: Path, prompts: list[str], vocab: int) -> list:
    """Token ids of ``prompts`` ([1, n] each); seeded random ids where the directory has no tokenizer."""
    if any((out_dir / name).is_file() for name in _TOKENIZER_FILES):
        from transformers import AutoTokenizer

        tok = AutoTokenizer.from_pretrained(out_dir)
        return [np.array([tok(p)["input_ids"]], dtype=np.int64) for p in prompts]
    rng = np.random.default_rng(0)
    return [rng.integers(3, vocab, size=(1, 4 + 3 * i), dtype=np.int64) for i in range(len(prompts))]


def _compare(ref: np.ndarray, got, rel: float) -> dict[str, Any]:
    """``ref``: torch logits [batch, new, vocab] at the positions where ORT chose ``got.tokens``.

    A position where torch prefers another token is a tie (not a failure) when torch's logit for
    ORT's token is within tolerance of its best one: float noise may then pick either.
    """
    steps = np.stack(got.logits, axis=1)
    diff = float(np.abs(ref - steps).max())
    tol = rel * max(1.0, float(np.abs(ref).max()))
    best = ref.argmax(-1)
    wrong = np.argwhere(best != got.tokens)
    margins = [ref[b, i, best[b, i]] - ref[b, i, got.tokens[b, i]] for b, i in wrong]
    return {"first_mismatch": int(wrong[:, 1].min()) if len(wrong) else None, "max_logit_diff": diff,
            "tolerance": tol, "ties": len(margins), "all_ties": all(m <= tol for m in margins)}


def _padded_batch_diff(torch_model, ort_model, vocab: int, rel: float) -> dict[str, Any]:
    """One left-padded batch of two: the graph must honour ``attention_mask`` (not assume all ones)."""
    rng = np.random.default_rng(1)
    ids = rng.integers(3, vocab, size=(2, 8), dtype=np.int64)
    mask = np.ones_like(ids)
    mask[0, :3] = 0
    pos = np.clip(mask.cumsum(-1) - 1, 0, None)
    ref = torch_model.forward(ids, mask, pos)
    got = ort_model.forward(ids, mask, pos)
    valid = mask.astype(bool)
    diff = float(np.abs(ref - got)[valid].max())
    return {"max_logit_diff": diff, "tolerance": rel * max(1.0, float(np.abs(ref[valid]).max()))}


def _raise_on_failure(outcomes: list[dict[str, Any]], padded: dict[str, Any]) -> None:
    if padded["max_logit_diff"] > padded["tolerance"]:
        raise ExportValidationError(
            f"ONNX graph mishandles padding: left-padded batch logits differ from torch by "
            f"{padded['max_logit_diff']:.3g} (tolerance {padded['tolerance']:.3g})"
        )
    for i, o in enumerate(outcomes):
        if o["first_mismatch"] is not None and not o["all_ties"]:
            raise ExportValidationError(
                f"ONNX Runtime greedy decoding diverged from torch on prompt {i + 1} at new token "
                f"{o['first_mismatch']} (max logit diff {o['max_logit_diff']:.3g}, tolerance {o['tolerance']:.3g})"
            )
        if o["max_logit_diff"] > o["tolerance"]:
            raise ExportValidationError(
                f"ONNX logits differ from torch by {o['max_logit_diff']:.3g} on prompt {i + 1} "
                f"(tolerance {o['tolerance']:.3g})"
            )
