"""GPTQ rounding on self-text: the algorithm on its own, then the export step that writes its codes."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from prunenet.cli import main
from prunenet.quantization.gptq import gptq_round
from prunenet.quantization.numerics import compute_scales, fake_quantize
from prunenet.quantization.schemes import SCHEMES

W4 = SCHEMES["w4a16"]


def _correlated_inputs(rows: int, k: int, seed: int = 0) -> torch.Tensor:
    """Inputs with strongly correlated features, as hidden states are (where GPTQ has error to pass on)."""
    g = torch.Generator().manual_seed(seed)
    basis = torch.randn(k // 4, k, generator=g)
    return torch.randn(rows, k // 4, generator=g) @ basis + 0.1 * torch.randn(rows, k, generator=g)


@pytest.mark.parametrize("scheme", ["w4a16", "w8a8"])
def test_gptq_beats_nearest_on_the_layer_output_with_the_same_grid(scheme):
    s = SCHEMES[scheme]
    group = 32 if s.grouped else None
    g = torch.Generator().manual_seed(1)
    w, x = torch.randn(96, 128, generator=g), _correlated_inputs(512, 128)
    q, scales = gptq_round(w, x.T @ x, s, group)
    torch.testing.assert_close(scales, compute_scales(w, s, group))  # the scheme's own scales, fixed first
    codes = q / scales.repeat_interleave(q.shape[1] // scales.shape[1], dim=1)
    torch.testing.assert_close(codes, codes.round(), atol=1e-4, rtol=0)  # on the grid the writer packs
    assert codes.round().min() >= -s.qmax - 1 and codes.round().max() <= s.qmax
    nearest = fake_quantize(w, s, group)
    err_gptq = (x @ (q - w).T).pow(2).mean()
    err_nearest = (x @ (nearest - w).T).pow(2).mean()
    assert err_gptq < 0.6 * err_nearest, (err_gptq, err_nearest)


def test_gptq_zeroes_inputs_that_never_occur_and_survives_a_singular_moment():
    w = torch.randn(16, 64, generator=torch.Generator().manual_seed(2))
    x = _correlated_inputs(8, 64)  # fewer rows than inputs: X^T X is singular
    x[:, 5] = 0.0
    q, _ = gptq_round(w, x.T @ x, W4, 32)
    assert torch.isfinite(q).all() and (q[:, 5] == 0).all()
    with pytest.raises(ValueError, match="does not match"):
        gptq_round(w, torch.eye(32), W4, 32)


def _export(src: Path, out: Path, *args: str) -> tuple[int, str, dict | None]:
    result = CliRunner().invoke(main, ["export", "--model", str(src), "--episodes", "1", "--no-eval", "--no-heal",
                                       "--out", str(out), "--json", *args])
    report = json.loads(result.output[result.output.index("{"):]) if result.exit_code == 0 else None
    return result.exit_code, result.output, report


def test_w4a16_export_rounds_with_gptq_on_self_text_and_writes_exactly_those_codes(tiny_with_tokenizer, tmp_path):
    from transformers import AutoModelForCausalLM

    from prunenet.planning.plan import PLAN_FILE, PruningPlan

    src = tiny_with_tokenizer
    code, output, gptq = _export(src, tmp_path / "gptq", "--ratio", "0.45", "--quant", "w4a16")
    assert code == 0, output
    assert gptq["quantization"]["rounding"] == "gptq" and "quantize" in [p["name"] for p in gptq["phases"]]
    assert gptq["export"]["max_logit_diff"] < 1e-4  # the self-check used the very scales GPTQ chose
    assert not list((tmp_path / "gptq").glob(".prunenet-*"))  # the rounded tensors are not shipped
    plan = PruningPlan.load(tmp_path / "gptq" / PLAN_FILE)
    code, output, nearest = _export(src, tmp_path / "nearest", "--plan", str(tmp_path / "gptq" / PLAN_FILE),
                                    "--ratio", "0.45", "--quant", "w4a16", "--quant-rounding", "nearest")
    assert code == 0, output
    assert nearest["quantization"]["rounding"] == "nearest" and nearest["widths"] == plan.widths

    ids = torch.randint(0, 100, (1, 24), generator=torch.Generator().manual_seed(0))
    logits = {}
    for name in ("gptq", "nearest"):
        model = AutoModelForCausalLM.from_pretrained(tmp_path / name, trust_remote_code=True, dtype=torch.float32)
        with torch.no_grad():
            logits[name] = model(ids).logits
    assert (logits["gptq"] - logits["nearest"]).abs().max() > 1e-3  # different codes, same plan and grid


def test_gptq_without_a_tokenizer_falls_back_or_refuses(tiny_models, tmp_path):
    src = tiny_models["llama"]
    code, output, report = _export(src, tmp_path / "auto", "--self-data", "0", "--ratio", "0.45", "--quant", "w4a16")
    assert code == 0, output
    assert report["quantization"]["rounding"] == "nearest"
    assert any("GPTQ needs the source's tokenizer" in n for n in report["notes"])
    code, output, _ = _export(src, tmp_path / "explicit", "--self-data", "0", "--ratio", "0.45", "--quant", "w4a16",
                              "--quant-rounding", "gptq")
    assert code != 0 and "needs the source's tokenizer" in output and output.count("\n") <= 2
    assert not (tmp_path / "explicit").exists()


@pytest.mark.parametrize("args, message", [
    (["--quant-rounding", "gptq"], "--quant-rounding needs --quant"),
    (["--quant", "w8a8", "--quant-rounding", "gptq", "--target", "onnx"], "for --target onnx applies to w4a16"),
    (["--quant-rounding", "nearest", "--target", "onnx"], "--quant-rounding needs --quant"),
])
def test_rounding_option_misuse_is_refused_before_any_work(tiny_with_tokenizer, tmp_path, args, message):
    code, output, _ = _export(tiny_with_tokenizer, tmp_path / "out", "--ratio", "0.3", *args)
    assert code != 0 and message in output, output
    assert not (tmp_path / "out").exists()


def test_onnx_int4_packs_gptq_codes_with_their_scales_found_by_row():
    """The builder hands the quantizer packed QKV under its own names: scales are found by row content,
    and the packed codes dequantize to exactly the GPTQ-rounded rows."""
    from exporters.onnx.nbits import RowScales, pack_int4, unpack_int4

    g = torch.Generator().manual_seed(3)
    table, rounded, scales = RowScales(), [], []
    for n in (64, 32, 32):  # q, k, v
        w, x = torch.randn(n, 64, generator=g), _correlated_inputs(256, 64, seed=n)
        q, s = gptq_round(w, x.T @ x, W4, 32)
        table.add(q.numpy(), s.numpy())
        rounded.append(q)
        scales.append(s)
    packed_qkv = torch.cat(rounded)
    found = table.lookup(packed_qkv.numpy())
    np.testing.assert_array_equal(found, torch.cat(scales).numpy())
    codes, stored, _ = pack_int4(np.ascontiguousarray(packed_qkv.T.numpy()), 32, found)
    np.testing.assert_array_equal(unpack_int4(codes, stored), packed_qkv.numpy())
    assert table.lookup(torch.randn(4, 64, generator=g).numpy()) is None  # any unknown row: no scales
    nearest, _, _ = pack_int4(np.ascontiguousarray(packed_qkv.T.numpy()), 32)
    assert not np.array_equal(nearest, codes)  # the search would have chosen other scales


def test_onnx_w4a16_export_rounds_with_gptq(tiny_with_tokenizer, tmp_path):
    src = tiny_with_tokenizer
    code, output, report = _export(src, tmp_path / "gptq", "--ratio", "0.45", "--target", "onnx", "--quant", "w4a16")
    assert code == 0, output
    onnx_report = report["export"]["onnx"]
    assert onnx_report["scales"] == "gptq" and "quantize" in [p["name"] for p in report["phases"]]
    # every decoder MatMul (packed qkv, o, gate, up, down per layer) and the head hold GPTQ's codes
    assert onnx_report["int4_weights"] == {"gptq": 3 * 5 + 1, "mse": 0, "rtn": 0}
    assert onnx_report["validation"]["kl"] < 0.05  # against torch with the same codes (the bound is 0.15)
    manifest = json.loads((tmp_path / "gptq" / "prunenet-onnx.json").read_text())["files"]
    assert not [f for f in manifest if ".prunenet-" in f]
    assert sorted(manifest) == sorted(str(p.relative_to(tmp_path / "gptq")) for p in (tmp_path / "gptq").rglob("*")
                                      if p.is_file())
    code, output, nearest = _export(src, tmp_path / "nearest", "--ratio", "0.45", "--target", "onnx", "--quant",
                                    "w4a16", "--quant-rounding", "nearest")
    assert code == 0, output
    assert nearest["export"]["onnx"]["scales"] == "mse" and "quantize" not in [p["name"] for p in nearest["phases"]]
    assert nearest["export"]["onnx"]["int4_weights"] == {"gptq": 0, "mse": 3 * 5, "rtn": 1}


@pytest.mark.parametrize("scheme, group", [("w4a16", 32), ("w8a8", None)])
def test_writer_and_self_check_use_the_given_scales(scheme, group):
    """A GPTQ-rounded weight is packed with GPTQ's scales, not ones searched again on it (which could pick
    another grid), and the self-check's reference rounds with the same ones."""
    from exporters.hf.quantized import StreamingQuantizer
    from exporters.hf.shards import TensorSpec
    from prunenet.quantization.apply import fake_quantize_layer_
    from prunenet.quantization.compressed import compressed_reader
    from prunenet.quantization.numerics import dequantize, quantize
    from prunenet.quantization.schemes import QuantSpec

    spec = QuantSpec(scheme, group, "mse", "gptq")
    g = torch.Generator().manual_seed(4)
    w = torch.randn(64, 128, generator=g)
    given = compute_scales(w, spec.info, group) * 1.37  # a grid the search would not choose
    rounded = dequantize(quantize(w, given, spec.info), given)
    quantizer = StreamingQuantizer(spec, {"m.weight"}, torch.float32, given=lambda n: given if n == "m.weight" else None)
    outs = quantizer.expand(TensorSpec("m.weight", torch.float32, tuple(w.shape)))
    written = {o.name: quantizer.produce(o.name, lambda _: rounded) for o in outs}
    torch.testing.assert_close(written["m.weight_scale"], given, rtol=0, atol=0)
    (_, rebuilt), = compressed_reader({"quantization_config": spec.ct_config()}).tensors(list(written),
                                                                                       written.__getitem__)
    torch.testing.assert_close(rebuilt.float(), rounded, rtol=0, atol=0)

    layer = torch.nn.Linear(128, 64, bias=False)
    layer.weight.data.copy_(rounded)
    fake_quantize_layer_(layer, "m.", {"m.weight"}, spec, torch.float32, scales=lambda n: given)
    torch.testing.assert_close(layer.weight.data, rounded, rtol=0, atol=0)


def test_preflight_counts_the_quantize_phase(tiny_with_tokenizer):
    """The pre-flight adds GPTQ's phase (its moments grow with K^2) only when GPTQ will run."""
    from prunenet.compute import Compute
    from prunenet.planning.config import PruneConfig
    from prunenet.preflight import check_memory
    from prunenet.quantization.rounding import gptq_bytes
    from prunenet.quantization.schemes import QuantSpec
    from prunenet.source.checkpoint import Checkpoint

    ckpt = Checkpoint(tiny_with_tokenizer)
    compute = Compute.resolve("cpu", ckpt.dtype)
    cfg = PruneConfig(ratio=0.3)
    plain = check_memory(ckpt, cfg, evaluate=False, compute=compute)
    phases = check_memory(ckpt, cfg, evaluate=False, compute=compute, rounding=QuantSpec("w4a16", 32, "mse", "gptq"))
    assert [p.name for p in phases] == [p.name for p in plain] + ["quantize"]
    hidden = ckpt.config["hidden_size"]
    assert phases[-1].need == gptq_bytes(ckpt, 2048) > 7 * hidden * hidden * 4  # at least every linear's moment


def test_calibration_prefers_healing_text_then_the_plans_then_fresh(tiny_with_tokenizer):
    from prunenet.quantization.rounding import CALIBRATION_TOKENS, calibration_rows

    plan_text, heal_text = [torch.arange(8).reshape(1, -1)], [torch.arange(16).reshape(1, -1)]
    cpu = torch.device("cpu")
    assert calibration_rows(plan_text, heal_text, tiny_with_tokenizer, 0, cpu, torch.float32) is heal_text
    assert calibration_rows(plan_text, None, tiny_with_tokenizer, 0, cpu, torch.float32) is plan_text
    fresh = calibration_rows(None, None, tiny_with_tokenizer, 0, cpu, torch.float32)
    assert sum(r.numel() for r in fresh) >= CALIBRATION_TOKENS
    again = calibration_rows(None, None, tiny_with_tokenizer, 0, cpu, torch.float32)
    assert all(torch.equal(a, b) for a, b in zip(fresh, again, strict=True))  # seeded: the same text
