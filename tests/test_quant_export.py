"""Quantized exports end to end on tiny models: transformers loads them and matches our fake-quantized model."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from safetensors import safe_open

from prunenet.cli import main


def _export(src: Path, out: Path, *args: str) -> dict:
    result = CliRunner().invoke(main, ["export", "--model", str(src), "--self-data", "0", "--episodes", "1",
                                       "--no-eval", "--out", str(out), "--json", *args])
    assert result.exit_code == 0, result.output
    return json.loads(result.output[result.output.index("{"):])


def _reference_logits(src: Path, out: Path, ids: torch.Tensor) -> torch.Tensor:
    """The source with the export's plan applied and every decoder linear fake-quantized, in transformers."""
    from transformers import AutoModelForCausalLM

    from prunenet.arch import get_arch_spec
    from prunenet.planning.plan import PLAN_FILE, PruningPlan
    from prunenet.planning.surgery import apply_layer_plan_
    from prunenet.quantization.apply import fake_quantize_layer_
    from prunenet.quantization.schemes import QuantSpec

    plan = PruningPlan.load(out / PLAN_FILE)
    q = plan.extra["quantization"]
    spec = QuantSpec(q["scheme"], q["group"], q["clipping"])
    model = AutoModelForCausalLM.from_pretrained(src, dtype=torch.float32).eval()
    arch = get_arch_spec(plan.model_type)
    linears = {n for n, p in model.named_parameters() if n.startswith(arch.layers_prefix + ".") and p.dim() == 2}
    for i, layer in enumerate(model.get_submodule(arch.layers_prefix)):
        apply_layer_plan_(layer, arch, plan.layers[i])
        fake_quantize_layer_(layer, f"{arch.layers_prefix}.{i}.", linears, spec, torch.float32)
    with torch.no_grad():
        return model(ids).logits


@pytest.mark.parametrize("scheme", ["w8a8", "w4a16", "fp8"])
def test_non_uniform_quantized_export_loads_in_transformers_and_matches(tiny_models, tmp_path, scheme):
    from transformers import AutoModelForCausalLM

    src, out = tiny_models["llama"], tmp_path / "out"
    report = _export(src, out, "--ratio", "0.45", "--quant", scheme)
    config = json.loads((out / "config.json").read_text())
    assert config["architectures"] == ["PrunedLlamaForCausalLM"], config["intermediate_sizes"]  # non-uniform
    qc = config["quantization_config"]
    assert qc["quant_method"] == "compressed-tensors" and qc["ignore"] == ["lm_head"]
    assert qc["quantization_status"] == "compressed"
    assert report["quantization"]["scheme"] == scheme and report["export"]["max_logit_diff"] < 1e-3
    with safe_open(str(out / "model.safetensors"), "pt") as f:
        kinds = {k.rpartition(".")[2]: f.get_slice(k).get_dtype() for k in f.keys() if ".mlp.down_proj." in k}  # noqa: SIM118
        assert f.get_slice("model.embed_tokens.weight").get_dtype() == "F32"  # embeddings stay unquantized
    assert kinds == ({"weight_packed": "I32", "weight_scale": "F32", "weight_shape": "I64"} if scheme == "w4a16"
                     else {"weight": "I8" if scheme == "w8a8" else "F8_E4M3", "weight_scale": "F32"})
    ids = torch.randint(0, 512, (2, 12), generator=torch.Generator().manual_seed(1))
    model = AutoModelForCausalLM.from_pretrained(out, trust_remote_code=True, dtype=torch.float32).eval()
    with torch.no_grad():
        got = model(ids).logits
    expected = _reference_logits(src, out, ids)
    torch.testing.assert_close(got, expected, atol=1e-4, rtol=1e-4)
    assert f"`{scheme}`" in (out / "README.md").read_text()


def test_the_self_check_catches_a_writer_that_rounds_differently(tiny_models, tmp_path, monkeypatch):
    import exporters.hf.quantized as quantized
    from prunenet.quantization.numerics import compute_scales

    def coarse(w, scheme, group=None, clipping="mse", scale_dtype=torch.float32):
        return compute_scales(w, scheme, group, clipping, scale_dtype) * 1.5  # wrong scales, still valid tensors

    monkeypatch.setattr(quantized, "compute_scales", coarse)
    out = tmp_path / "out"
    result = CliRunner().invoke(main, ["export", "--model", str(tiny_models["llama"]), "--self-data", "0",
                                       "--episodes", "1", "--no-eval", "--ratio", "0.3", "--quant", "w8a8",
                                       "--out", str(out)])
    assert result.exit_code != 0 and "differs" in result.output, result.output
    assert not out.exists()


def test_quant_aligns_widths_to_the_group(tiny_models, tmp_path):
    report = _export(tiny_models["llama"], tmp_path / "out", "--ratio", "0.3", "--align", "16", "--quant", "w4a16")
    assert report["quantization"]["group"] == 64  # hidden 64: the largest of 128/64/32 dividing every K
    assert all(w % 64 == 0 for w in report["widths"]), report["widths"]


def test_quality_report_shows_quantizations_own_share(tiny_models, tmp_path):
    from tiny_models import with_tokenizer

    src = with_tokenizer(tiny_models["llama"], tmp_path / "src")
    args = ["--model", str(src), "--self-data", "0", "--episodes", "1", "--ratio", "0.45", "--no-heal", "--json"]
    runner = CliRunner()
    plain = runner.invoke(main, ["export", *args, "--out", str(tmp_path / "plain")])
    assert plain.exit_code == 0, plain.output
    quant = runner.invoke(main, ["export", *args, "--out", str(tmp_path / "q"), "--quant", "w4a16",
                                 "--plan", str(tmp_path / "plain" / "prunenet-plan.json")])
    assert quant.exit_code == 0, quant.output
    q = json.loads(quant.output[quant.output.index("{"):])["quality"]
    p = json.loads(plain.output[plain.output.index("{"):])["quality"]
    assert q["unquantized"]["kl"] == pytest.approx(p["kl"], rel=1e-4, abs=1e-6)  # the same plan, unquantized
    assert q["kl"] != pytest.approx(p["kl"], rel=1e-3)  # 4-bit weights do change the output
    assert q["quantization_kl"] == pytest.approx(q["kl"] - p["kl"], rel=1e-3, abs=1e-6)


def test_healed_quantized_report_takes_the_unquantized_side_from_healing(tiny_models, tmp_path):
    """A healed export keeps no floating-point copy; healing scored its weights on the report's text, so
    quantization's share is measured against that."""
    from tiny_models import with_tokenizer

    src = with_tokenizer(tiny_models["llama"], tmp_path / "src")
    args = ["export", "--model", str(src), "--self-data", "0", "--episodes", "1", "--ratio", "0.45", "--heal",
            "--heal-tokens", "1024", "--heal-steps", "2", "--quant", "w8a8", "--json", "--out", str(tmp_path / "q")]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    report = json.loads(result.output[result.output.index("{"):])
    healed = report["healing"]["reference_after"]
    q = report["quality"]
    assert q["unquantized"]["kl"] == pytest.approx(healed["kl"])
    assert q["quantization_kl"] == pytest.approx(q["kl"] - healed["kl"])
    assert report["healing"]["reference_after"]["tokens"] == q["n_tokens"]  # the same text was scored
