"""GPTQ rounding on self-text: the algorithm on its own, then the export step that writes its codes."""

from __future__ import annotations

import json
from pathlib import Path

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
    (["--quant", "w4a16", "--quant-rounding", "gptq", "--target", "onnx"], "applies to the compressed-tensors"),
])
def test_rounding_option_misuse_is_refused_before_any_work(tiny_with_tokenizer, tmp_path, args, message):
    code, output, _ = _export(tiny_with_tokenizer, tmp_path / "out", "--ratio", "0.3", *args)
    assert code != 0 and message in output, output
    assert not (tmp_path / "out").exists()
