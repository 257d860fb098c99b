"""ONNX export: optimum's decoder layout, ORT == torch (logits and greedy tokens) for every family.

The fast tests export each tiny random family once (module-scoped) and check the graph contract
optimum relies on; the integration test exports the real default model pruned non-uniformly.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from plans import outlier_plan
from tiny_models import TINY_CONFIGS

from exporters.hf import write_hf_checkpoint
from exporters.onnx.export import OnnxExportError, export_onnx
from prunenet.arch import ARCH_SPECS
from prunenet.errors import ExportValidationError, UnsupportedArchitecture

STANDARD_DOMAINS = {"", "ai.onnx"}


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Tiny models run fastest on one thread; extra OpenMP threads only fight other jobs for the cores."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def exported(tiny_models, tmp_path_factory) -> dict[str, tuple[Path, dict]]:
    """model_type -> (ONNX directory, export report), each family exported once, on first use."""
    root = tmp_path_factory.mktemp("onnx")

    class Exports(dict):
        def __missing__(self, model_type: str) -> tuple[Path, dict]:
            out = root / model_type
            out.mkdir()
            self[model_type] = (out, export_onnx(tiny_models[model_type], out))
            return self[model_type]

    return Exports()


def test_tiny_models_cover_every_family():
    assert set(TINY_CONFIGS) == set(ARCH_SPECS)


@pytest.mark.parametrize("model_type", sorted(ARCH_SPECS))
def test_export_reproduces_torch(exported, model_type):
    out, report = exported[model_type]
    assert report["greedy_match"] is True
    assert report["validation"]["prompts"] == 3 and report["validation"]["tokens_per_prompt"] == 32
    assert report["max_logit_diff"] < 1e-4
    assert report["validation"]["padded_batch_max_diff"] < 1e-4
    assert json.loads((out / "prunenet-onnx.json").read_text())["max_logit_diff"] == report["max_logit_diff"]


@pytest.mark.parametrize("model_type", sorted(ARCH_SPECS))
def test_graph_follows_optimum_layout(exported, tiny_models, model_type):
    out, report = exported[model_type]
    session = ort.InferenceSession(str(out / "model.onnx"), providers=["CPUExecutionProvider"])
    n = report["num_layers"]
    past = [f"past_key_values.{i}.{kind}" for i in range(n) for kind in ("key", "value")]
    inputs = {i.name: i.shape for i in session.get_inputs()}
    assert list(inputs) == ["input_ids", "attention_mask", "position_ids", *past]
    assert [o.name for o in session.get_outputs()] == ["logits", *(p.replace("past_key_values", "present") for p in past)]
    assert inputs["input_ids"] == ["batch_size", "sequence_length"]
    assert inputs["attention_mask"] == ["batch_size", "past_sequence_length + sequence_length"]
    assert inputs[past[0]][0] == "batch_size" and inputs[past[0]][2] == "past_sequence_length"
    config = json.loads((out / "config.json").read_text())
    source = json.loads((tiny_models[model_type] / "config.json").read_text())
    assert config["model_type"] == source["model_type"] and config["use_cache"] is True
    assert "auto_map" not in config


@pytest.mark.parametrize("model_type", ["llama", "falcon"])
def test_unoptimized_graph_is_plain_onnx_and_agrees(exported, model_type):
    out, report = exported[model_type]
    plain = onnx.load(str(out / "model_unoptimized.onnx"))
    fused = onnx.load(str(out / "model.onnx"))
    assert {n.domain for n in plain.graph.node} <= STANDARD_DOMAINS
    assert report["fusions"] and {n.domain for n in fused.graph.node} - STANDARD_DOMAINS  # ORT contrib ops
    logits = []
    for path in (out / "model.onnx", out / "model_unoptimized.onnx"):
        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        feeds = {"input_ids": np.array([[5, 6, 7, 8]]), "attention_mask": np.ones((1, 4), dtype=np.int64),
                 "position_ids": np.arange(4)[None]}
        for i in session.get_inputs()[3:]:
            feeds[i.name] = np.zeros((1, i.shape[1], 0, i.shape[3]), dtype=np.float32)
        logits.append(session.run(["logits"], feeds)[0])
    np.testing.assert_allclose(logits[0], logits[1], atol=1e-4)


def test_sliding_window_bounds_the_graph(exported):
    _, report = exported["gemma3_text"]
    assert report["max_total_length"] == 4095  # tiny Gemma3 has a 4096-token sliding window


def test_nonuniform_widths_become_graph_constants(tiny_models, tmp_path):
    plan = outlier_plan(tiny_models["llama"], widths=[96, 160, 128])
    hf = tmp_path / "hf"
    hf.mkdir()
    write_hf_checkpoint(tiny_models["llama"], plan, hf)
    out = tmp_path / "onnx"
    out.mkdir()
    report = export_onnx(hf, out, optimize=False)
    assert report["greedy_match"] and report["max_logit_diff"] < 1e-4
    dims = {d for t in onnx.load(str(out / "model.onnx")).graph.initializer for d in t.dims}
    assert {96, 160, 128} <= dims and 192 not in dims
    assert (out / "prunenet-plan.json").is_file()


def test_onnx_target_manifest_lists_exactly_the_directory(tiny_models, tmp_path):
    """The intermediate HF export lives inside the output and is removed: the manifest must not list it."""
    from exporters import ExportConfig
    from exporters.targets import TARGETS

    out = tmp_path / "onnx"
    out.mkdir()
    src = tiny_models["llama"]
    TARGETS["onnx"].write()(src, outlier_plan(src, widths=[96, 160, 128]), out, ExportConfig())
    manifest = json.loads((out / "prunenet-onnx.json").read_text())
    present = sorted(str(p.relative_to(out)) for p in out.rglob("*") if p.is_file())
    assert manifest["files"] == present
    assert {"model.onnx", "model_unoptimized.onnx", "config.json", "prunenet-plan.json", "prunenet-onnx.json"} \
        <= set(present) and not list(out.glob(".*"))
    assert manifest["external_data"] is False and not any("_data" in f for f in present)


def test_unsupported_family_fails_in_one_line(tiny_models, tmp_path):
    src = tmp_path / "src"
    shutil.copytree(tiny_models["llama"], src)
    config = json.loads((src / "config.json").read_text())
    (src / "config.json").write_text(json.dumps(config | {"model_type": "gpt2"}))
    with pytest.raises(UnsupportedArchitecture, match="gpt2") as err:
        export_onnx(src, tmp_path / "out")
    assert "\n" not in str(err.value)


def test_export_failure_names_the_operator(tiny_models, tmp_path, monkeypatch):
    import exporters.onnx.trace as onnx_trace

    class NoOnnxOp(torch.nn.Module):  # an op without an ONNX translation
        def forward(self, input_ids, attention_mask, position_ids, past):
            return torch.special.bessel_j0(input_ids.float())

    monkeypatch.setattr(onnx_trace, "flat_cache_module", lambda model, layout: NoOnnxOp())
    (tmp_path / "out").mkdir()
    with pytest.raises(OnnxExportError, match="bessel_j0") as err:
        export_onnx(tiny_models["llama"], tmp_path / "out")
    assert "\n" not in str(err.value) and "llama" in str(err.value)


def test_validation_rejects_a_graph_that_differs(exported, tiny_models):
    """Validating an export against a slightly different torch model must fail, not pass silently."""
    from exporters.onnx.export import DEFAULT_PROMPTS, load_for_export
    from exporters.onnx.validate import validate_decoding

    out, _ = exported["llama"]
    model, config = load_for_export(tiny_models["llama"])
    with torch.no_grad():
        model.lm_head.weight.mul_(1.01)
    with pytest.raises(ExportValidationError, match="differ|diverged"):
        validate_decoding(model, out, config, list(DEFAULT_PROMPTS), "float32", "cpu")


@pytest.mark.integration
@pytest.mark.slow
def test_real_model_pruned_nonuniform(default_model, tmp_path):
    """SmolLM2 pruned at 0.3 with per-layer widths: ORT greedy == torch greedy (3 prompts x 32 tokens)."""
    plan = outlier_plan(default_model, ratio=0.3, align=64)
    assert not plan.is_uniform
    hf = tmp_path / "hf"
    hf.mkdir()
    write_hf_checkpoint(default_model, plan, hf)
    out = tmp_path / "onnx"
    out.mkdir()
    report = export_onnx(hf, out)
    assert report["greedy_match"] is True, report["validation"]
    assert report["validation"]["prompts"] == 3 and report["validation"]["tokens_per_prompt"] == 32
    assert report["max_logit_diff"] < 5e-3
    assert report["fusions"].get("SkipSimplifiedLayerNormalization", 0) == 60  # 2 per layer
    graph = onnx.load(str(out / "model.onnx"), load_external_data=False).graph
    ffn_dims = {d for t in graph.initializer if 576 in t.dims for d in t.dims} - {576}
    assert set(plan.widths) <= ffn_dims and 1536 not in ffn_dims
    assert (out / "tokenizer.json").is_file() and (out / "generation_config.json").is_file()


@pytest.mark.slow
def test_graph_over_2gb_uses_external_data(tmp_path):
    """fp32 weights above protobuf's 2 GiB: both graphs get an optimum-style ``_data`` file, ORT runs them."""
    import transformers

    from exporters.onnx.optimize import EXTERNAL_DATA_SUFFIX

    config = transformers.LlamaConfig(vocab_size=32000, hidden_size=4096, intermediate_size=11008, num_hidden_layers=2,
                                      num_attention_heads=32, num_key_value_heads=32, max_position_embeddings=256,
                                      tie_word_embeddings=False)
    torch.manual_seed(0)
    with torch.device("meta"):
        model = transformers.LlamaForCausalLM(config)
    model = model.to_empty(device="cpu")
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, 0.02)
    src = tmp_path / "big"
    model.save_pretrained(src)
    del model
    assert sum(f.stat().st_size for f in src.glob("*.safetensors")) > 2.1e9
    out = tmp_path / "onnx"
    out.mkdir()
    report = export_onnx(src, out, prompts=["one"])
    assert report["external_data"] is True and report["greedy_match"] is True
    assert report["max_logit_diff"] < 1e-3
    for graph in ("model.onnx", "model_unoptimized.onnx"):
        data = out / (graph + EXTERNAL_DATA_SUFFIX)
        assert (out / graph).stat().st_size < 50e6 and data.stat().st_size > 2.1e9, graph
        assert graph + EXTERNAL_DATA_SUFFIX in report["files"]
    assert report["fusions"].get("SkipSimplifiedLayerNormalization") == 4  # 2 per layer, as without external data
    assert sorted(report["files"]) == sorted(str(p.relative_to(out)) for p in out.rglob("*") if p.is_file())
