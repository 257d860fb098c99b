"""ONNX export: builder-made graphs that onnxruntime-genai runs as they are; the traced graph elsewhere.

The fast tests export each tiny random family once (module-scoped; the builder needs a tokenizer,
so each model gets the small test tokenizer) and check what ships: ORT and onnxruntime-genai greedy
decoding == torch, the genai_config against config.json, strict shape inference, one graph. The
integration test exports the real default model pruned non-uniformly.
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
from tiny_models import TINY_CONFIGS, with_tokenizer

from exporters.hf import write_hf_checkpoint
from exporters.onnx.export import OnnxExportError, export_onnx
from exporters.onnx.families import BUILDER_FAMILIES
from prunenet.arch import ARCH_SPECS
from prunenet.errors import ExportValidationError, UnsupportedArchitecture

STANDARD_DOMAINS = {"", "ai.onnx"}
TRACED_FAMILIES = sorted(set(ARCH_SPECS) - set(BUILDER_FAMILIES))
WIDTHS = [96, 160, 128]


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Tiny models run fastest on one thread; extra OpenMP threads only fight other jobs for the cores."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def sources(tiny_models, tmp_path_factory) -> dict[str, Path]:
    """model_type -> a non-uniform pruned HF export (widths 96/160/128) with a tokenizer."""
    root = tmp_path_factory.mktemp("onnx-src")

    class Sources(dict):
        def __missing__(self, model_type: str) -> Path:
            src = with_tokenizer(tiny_models[model_type], root / f"{model_type}-tok")
            hf = root / model_type
            hf.mkdir()
            write_hf_checkpoint(src, outlier_plan(src, widths=WIDTHS), hf)
            self[model_type] = hf
            return hf

    return Sources()


@pytest.fixture(scope="module")
def exported(sources, tmp_path_factory) -> dict[str, tuple[Path, dict]]:
    """model_type -> (ONNX directory, export report), each family exported once, on first use."""
    root = tmp_path_factory.mktemp("onnx")

    class Exports(dict):
        def __missing__(self, model_type: str) -> tuple[Path, dict]:
            out = root / model_type
            out.mkdir()
            self[model_type] = (out, export_onnx(sources[model_type], out))
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
    assert json.loads((out / "prunenet-onnx.json").read_text())["max_logit_diff"] == report["max_logit_diff"]
    if model_type in BUILDER_FAMILIES:  # the directory runs in onnxruntime-genai as it is, with torch's tokens
        assert report["genai"] is True and report["validation"]["genai"]["greedy_match"] is True
        assert report["validation"]["genai"]["max_logit_diff"] < 1e-4
    else:
        assert report["genai"] is False and report["validation"]["padded_batch_max_diff"] < 1e-4


@pytest.mark.parametrize("model_type", BUILDER_FAMILIES)
def test_builder_graph_ships_one_fused_graph_and_a_genai_config(exported, sources, model_type):
    out, report = exported[model_type]
    graph = onnx.load(str(out / "model.onnx"))
    ops = {n.op_type for n in graph.graph.node}
    assert {"GroupQueryAttention", "SkipSimplifiedLayerNormalization"} <= ops
    assert "position_ids" not in {i.name for i in graph.graph.input}
    assert not list(out.glob("*.data")) and not list(out.glob("*unoptimized*")) and not list(out.glob(".*"))
    assert report["external_data"] is False
    dims = {d for t in graph.graph.initializer for d in t.dims}
    assert set(WIDTHS) <= dims and 192 not in dims  # every layer at its own width, none at the dense one
    config = json.loads((sources[model_type] / "config.json").read_text())
    genai = json.loads((out / "genai_config.json").read_text())["model"]
    decoder = genai["decoder"]
    head_dim = config.get("head_dim") or config["hidden_size"] // config["num_attention_heads"]
    assert genai["type"] == model_type and genai["vocab_size"] == config["vocab_size"]
    assert (decoder["num_hidden_layers"], decoder["num_attention_heads"], decoder["num_key_value_heads"],
            decoder["head_size"], decoder["hidden_size"]) == (
        config["num_hidden_layers"], config["num_attention_heads"], config["num_key_value_heads"], head_dim,
        config["hidden_size"])
    assert decoder["filename"] == "model.onnx" and genai["context_length"] == config["max_position_embeddings"]
    assert decoder["session_options"]["session.intra_op.allow_spinning"] == "1"
    assert (out / "tokenizer.json").is_file() and (out / "tokenizer_config.json").is_file()


@pytest.mark.parametrize("model_type", BUILDER_FAMILIES)
def test_strict_shape_inference_loads_the_graph(exported, model_type):
    """The builder annotates FFN values with the widest layer's width; those annotations must be gone."""
    out, _ = exported[model_type]
    options = ort.SessionOptions()
    options.add_session_config_entry("session.strict_shape_type_inference", "1")
    ort.InferenceSession(str(out / "model.onnx"), options, providers=["CPUExecutionProvider"])


@pytest.mark.parametrize("model_type", TRACED_FAMILIES)
def test_traced_graph_follows_optimum_layout(exported, sources, model_type):
    out, report = exported[model_type]
    session = ort.InferenceSession(str(out / "model.onnx"), providers=["CPUExecutionProvider"])
    n = report["num_layers"]
    past = [f"past_key_values.{i}.{kind}" for i in range(n) for kind in ("key", "value")]
    inputs = {i.name: i.shape for i in session.get_inputs()}
    assert list(inputs) == ["input_ids", "attention_mask", "position_ids", *past]
    assert [o.name for o in session.get_outputs()] == ["logits", *(p.replace("past_key_values", "present") for p in past)]
    assert inputs["attention_mask"] == ["batch_size", "past_sequence_length + sequence_length"]
    assert sorted(p.name for p in out.iterdir() if "onnx" in p.name and p.name != "prunenet-onnx.json") == ["model.onnx"]
    assert not (out / "genai_config.json").exists()
    config = json.loads((out / "config.json").read_text())
    assert config["model_type"] == model_type and config["use_cache"] is True and "auto_map" not in config


def test_sliding_window_bounds_the_graph(exported):
    _, report = exported["gemma3_text"]
    assert report["max_total_length"] == 4095  # tiny Gemma3 has a 4096-token sliding window


@pytest.mark.parametrize("quant, bits", [("w4a16", 4), ("w8a8", 8)])
def test_quantized_graph_agrees_with_fake_quant_torch(sources, tmp_path, quant, bits):
    from exporters.onnx.quant import OnnxOptions
    from exporters.onnx.validate_quant import KL_TOL, MIN_TOP1

    out = tmp_path / quant
    out.mkdir()
    report = export_onnx(sources["llama"], out, options=OnnxOptions(quant=quant))
    v = report["validation"]
    assert v["top1_agreement"] >= MIN_TOP1[bits] and v["kl"] <= KL_TOL[bits] and v["positions"] == 96
    nodes = [n for n in onnx.load(str(out / "model.onnx")).graph.node if n.op_type == "MatMulNBits"]
    attrs = [{a.name: onnx.helper.get_attribute_value(a) for a in n.attribute} for n in nodes]
    assert len(nodes) == 3 * 5 + 1  # per layer: packed qkv, o, gate, up, down; plus the head
    assert {a["bits"] for a in attrs} == {bits} and {a["block_size"] for a in attrs} == {32}
    assert report["block_size"] == 32 and report["quant"] == quant


def test_int4_graph_holds_the_mse_clipped_weights(sources, tmp_path):
    """The graph's 4-bit decoder weights (dequantized here) are prunenet.quantization's w4a16 MSE-clipped
    weights, not ONNX Runtime's round-to-nearest (which the head keeps); the torch reference of the
    self-check rounds the same way."""
    from exporters.onnx.export import load_for_export
    from exporters.onnx.nbits import unpack_int4
    from exporters.onnx.quant import OnnxOptions, _round_to_nearest, fake_quantize_
    from prunenet.quantization.numerics import fake_quantize
    from prunenet.quantization.schemes import SCHEMES

    out = tmp_path / "int4"
    out.mkdir()
    report = export_onnx(sources["llama"], out, options=OnnxOptions(quant="w4a16"), validate=False)
    assert report["scales"] == "mse"
    graph = onnx.load(str(out / "model.onnx"))
    weights = {t.name: onnx.numpy_helper.to_array(t) for t in graph.graph.initializer}

    def dequant(name: str) -> np.ndarray:
        node = next(n for n in graph.graph.node if n.op_type == "MatMulNBits" and name in n.name)
        return unpack_int4(weights[node.input[1]], weights[node.input[2]])

    model, _ = load_for_export(sources["llama"])
    attn = model.model.layers[1].self_attn
    decoder = {"layers.1/mlp/down_proj": model.model.layers[1].mlp.down_proj.weight,
               "layers.1/attn/qkv_proj": torch.cat([attn.q_proj.weight, attn.k_proj.weight, attn.v_proj.weight])}
    for name, w in decoder.items():
        got, w = dequant(name), w.detach().float()
        mse = fake_quantize(w, SCHEMES["w4a16"], 32, "mse").numpy()
        assert got.shape == mse.shape
        np.testing.assert_allclose(got, mse, rtol=1e-6, atol=1e-7, err_msg=name)
        rtn = _round_to_nearest(w, 4, 32).numpy()
        assert np.abs(got - rtn).max() > 1e-3, name  # the test can fail: round-to-nearest weights differ
    head = _round_to_nearest(model.lm_head.weight.detach().float(), 4, 32).numpy()
    np.testing.assert_allclose(dequant("lm_head"), head, rtol=1e-6, atol=1e-7)
    embed = model.get_input_embeddings().weight.detach().clone()
    fake_quantize_(model, 4, 32, head=True)
    for name, module in (("layers.1/mlp/down_proj", model.model.layers[1].mlp.down_proj), ("lm_head", model.lm_head)):
        np.testing.assert_allclose(dequant(name), module.weight.detach().numpy(), rtol=1e-6, atol=1e-7)
    assert torch.equal(model.get_input_embeddings().weight, embed)  # untied: the graph's Gather is float
    assert [t.data_type for t in graph.graph.initializer if "embed_tokens" in t.name] == [onnx.TensorProto.FLOAT]
    # tied: the builder stores the embedding in 4 bits with the head (one matrix), and the reference does too
    model.model.embed_tokens.weight = model.lm_head.weight = torch.nn.Parameter(embed.clone())
    fake_quantize_(model, 4, 32, head=True)
    tied = _round_to_nearest(embed.float(), 4, 32)
    assert torch.equal(model.get_input_embeddings().weight, tied) and torch.equal(model.lm_head.weight, tied)


def test_quant_validation_rejects_the_wrong_reference(sources, tmp_path):
    """A reference rounded with another block size must fail the bounds (the check can fail)."""
    from exporters.onnx.export import load_for_export
    from exporters.onnx.quant import OnnxOptions
    from exporters.onnx.validate_quant import compare_to_reference

    out = tmp_path / "int4"
    out.mkdir()
    export_onnx(sources["llama"], out, options=OnnxOptions(quant="w4a16"), validate=False)
    model, config = load_for_export(sources["llama"])
    right = compare_to_reference(model, out, config, ["one two three"], 4, 32, head=True)
    wrong = compare_to_reference(model, out, config, ["one two three"], 4, 16, head=True)
    assert wrong["kl"] > 3 * right["kl"] and wrong["max_logit_diff"] > 2 * right["max_logit_diff"]


def test_onnx_target_manifest_lists_exactly_the_directory(sources, tmp_path):
    """The intermediate HF export lives inside the output and is removed: the manifest must not list it."""
    from exporters import ExportConfig
    from exporters.targets import TARGETS

    out = tmp_path / "onnx"
    out.mkdir()
    src = sources["llama"]
    TARGETS["onnx"].write()(src, outlier_plan(src, widths=WIDTHS), out, ExportConfig())
    manifest = json.loads((out / "prunenet-onnx.json").read_text())
    present = sorted(str(p.relative_to(out)) for p in out.rglob("*") if p.is_file())
    assert manifest["files"] == present
    assert {"model.onnx", "genai_config.json", "tokenizer.json", "tokenizer_config.json", "config.json",
            "prunenet-plan.json", "prunenet-onnx.json"} <= set(present) and not list(out.glob(".*"))
    assert not any(f.endswith(".data") or "unoptimized" in f for f in present)


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
        export_onnx(tiny_models["opt"], tmp_path / "out")
    assert "\n" not in str(err.value) and "opt" in str(err.value)


def test_validation_rejects_a_graph_that_differs(exported, sources):
    """Validating an export against a slightly different torch model must fail, not pass silently."""
    from exporters.onnx.export import DEFAULT_PROMPTS, load_for_export
    from exporters.onnx.validate import validate_decoding

    out, _ = exported["llama"]
    model, config = load_for_export(sources["llama"])
    with torch.no_grad():
        model.lm_head.weight.mul_(1.01)
    with pytest.raises(ExportValidationError, match="differ|diverged"):
        validate_decoding(model, out, config, list(DEFAULT_PROMPTS), "float32", "cpu", genai=True)


@pytest.mark.integration
@pytest.mark.slow
def test_real_model_pruned_nonuniform(default_model, tmp_path):
    """SmolLM2 pruned at 0.3 with per-layer widths: ORT and onnxruntime-genai greedy == torch (3 x 32 tokens)."""
    plan = outlier_plan(default_model, ratio=0.3, align=64)
    assert not plan.is_uniform
    hf = tmp_path / "hf"
    hf.mkdir()
    write_hf_checkpoint(default_model, plan, hf)
    out = tmp_path / "onnx"
    out.mkdir()
    report = export_onnx(hf, out)
    assert report["greedy_match"] is True and report["validation"]["genai"]["greedy_match"] is True, report
    assert report["validation"]["prompts"] == 3 and report["validation"]["tokens_per_prompt"] == 32
    assert report["max_logit_diff"] < 5e-3
    graph = onnx.load(str(out / "model.onnx"), load_external_data=False).graph
    assert sum(n.op_type == "GroupQueryAttention" for n in graph.node) == 30
    ffn_dims = {d for t in graph.initializer if 576 in t.dims for d in t.dims} - {576}
    assert set(plan.widths) <= ffn_dims and 1536 not in ffn_dims
    assert (out / "tokenizer.json").is_file() and (out / "genai_config.json").is_file()


@pytest.mark.slow
def test_graph_over_2gb_uses_external_data(tmp_path):
    """fp32 weights above protobuf's 2 GiB: the graph keeps the builder's ``model.onnx.data``, ORT runs it."""
    import transformers

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
    with_tokenizer(src, tmp_path / "big-tok")
    src = tmp_path / "big-tok"
    assert sum(f.stat().st_size for f in src.glob("*.safetensors")) > 2.1e9
    out = tmp_path / "onnx"
    out.mkdir()
    report = export_onnx(src, out, prompts=["one"])
    assert report["external_data"] is True and report["greedy_match"] is True
    assert (out / "model.onnx").stat().st_size < 50e6 and (out / "model.onnx.data").stat().st_size > 2.1e9
    assert sorted(report["files"]) == sorted(str(p.relative_to(out)) for p in out.rglob("*") if p.is_file())


def test_genai_bench_engine_times_a_fixed_length(exported):
    """The bench's onnxruntime-genai engine: end-of-text does not stop it, one decode time per new token."""
    from serving.bench.engines import artefact_mb, load_decoder

    out, _ = exported["llama"]
    ids = np.array([[5, 6, 7, 8]], dtype=np.int64)
    genai, plain = load_decoder("onnxruntime-genai", out, threads=1), load_decoder("onnxruntime", out, threads=1)
    got, ref = genai.generate(ids, 40), plain.generate(ids, 40)
    assert got.tokens.shape == (1, 40) and len(got.step_s) == 39 and got.prefill_s > 0
    np.testing.assert_array_equal(got.tokens, ref.tokens)
    assert artefact_mb("onnxruntime-genai", out) == artefact_mb("onnxruntime", out) > 0


def test_quant_without_a_tokenizer_is_refused(tiny_models, tmp_path):
    from exporters.onnx.quant import OnnxOptions, OnnxQuantError

    with pytest.raises(OnnxQuantError, match="tokenizer"):
        export_onnx(tiny_models["llama"], tmp_path, options=OnnxOptions(quant="w4a16"))
    assert not list(tmp_path.iterdir())
