"""Scale tuning after GPTQ: the codes stay, the scales move, the held-out KL never rises, and the export
writes exactly the tuned scales."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from safetensors import safe_open

from prunenet.cli import main
from prunenet.quantization.numerics import _expand
from prunenet.quantization.tune_config import TuneConfig


def _export(src: Path, out: Path, *args: str) -> tuple[int, str, dict | None]:
    result = CliRunner().invoke(main, ["export", "--model", str(src), "--episodes", "1", "--no-eval", "--no-heal",
                                       "--out", str(out), "--json", *args])
    report = json.loads(result.output[result.output.index("{"):]) if result.exit_code == 0 else None
    return result.exit_code, result.output, report


def _packed(out: Path) -> dict[str, torch.Tensor]:
    tensors = {}
    for file in out.glob("*.safetensors"):
        if file.name.startswith("prunenet-"):
            continue
        with safe_open(str(file), "pt") as f:
            tensors |= {n: f.get_tensor(n) for n in f.keys() if n.endswith(("weight_packed", "weight_scale"))}  # noqa: SIM118
    return tensors


def test_scaled_codes_start_at_the_rounded_weight_and_train_only_the_scales():
    from prunenet.quantization.gptq import gptq_round
    from prunenet.quantization.schemes import SCHEMES
    from prunenet.quantization.tuning import ScaledCodes

    torch.manual_seed(0)
    linear = torch.nn.Linear(64, 16, bias=True)
    x = torch.randn(256, 64)
    rounded, scales = gptq_round(linear.weight, x.T @ x, SCHEMES["w4a16"], group=32)
    linear.weight.data = rounded
    module = ScaledCodes(linear, scales)
    assert torch.equal(module.weight(), rounded)
    assert torch.allclose(module(x), linear(x), atol=1e-6)
    assert module.codes.dtype == torch.int8 and module.codes.abs().max() <= 8
    assert {n for n, _ in module.named_parameters()} == {"log_scale", "bias"}  # the weight is codes x scales
    module.bias.requires_grad_(False)
    loss = module(x).pow(2).mean()
    loss.backward()
    assert module.log_scale.grad is not None and module.log_scale.grad.abs().sum() > 0


def test_tuning_keeps_the_codes_moves_the_scales_and_lowers_the_held_out_kl(tiny_with_tokenizer, tmp_path):
    from prunenet.compute import Compute
    from prunenet.planning.selfdata import self_text_ids
    from prunenet.quantization.rounding import SCALE_SUFFIX, gptq_weights
    from prunenet.quantization.schemes import QuantSpec
    from prunenet.quantization.tuning import tune_scales
    from tests.plans import outlier_plan

    src = tiny_with_tokenizer
    plan = outlier_plan(src, ratio=0.4, align=32)
    compute = Compute.resolve("cpu", torch.float32)
    rows = self_text_ids(src, 1024, 0, compute.device, torch.float32)
    spec = QuantSpec("w4a16", 32, "mse", "gptq")
    rounded = gptq_weights(src, plan, spec, rows, tmp_path / "rounded", dtype=torch.bfloat16)
    before = {n: rounded.get(n) for n in rounded.names()}
    outcome = tune_scales(src, plan, rounded, rows, TuneConfig(steps=10, eval_every=2, patience=5), compute=compute,
                          scale_dtype=torch.bfloat16)
    assert outcome.tuned_tensors == 7 * len(plan.layers)  # q, k, v, o, gate, up, down per layer
    assert outcome.held_out_after < outcome.held_out_before
    moved = 0
    for name in before:
        if not name.endswith(SCALE_SUFFIX):
            continue
        weight = name.removesuffix(SCALE_SUFFIX)
        old_codes = before[weight] / _expand(before[name], before[weight].shape[1])
        new_scale = rounded.get(name)
        new_codes = rounded.get(weight) / _expand(new_scale, before[weight].shape[1])
        assert torch.equal(new_codes, old_codes.round()) and torch.equal(new_codes, new_codes.round())
        assert torch.equal(new_scale, new_scale.to(torch.bfloat16).float())  # stored as the writer stores them
        moved += int(not torch.equal(new_scale, before[name]))
    assert moved == outcome.tuned_tensors


def test_w4a16_export_tunes_by_default_and_writes_the_same_codes_with_new_scales(tiny_with_tokenizer, tmp_path):
    from prunenet.planning.plan import PLAN_FILE

    src = tiny_with_tokenizer
    code, output, tuned = _export(src, tmp_path / "tuned", "--ratio", "0.45", "--quant", "w4a16")
    assert code == 0, output
    record = tuned["scale_tuning"]
    assert record["steps"] >= 1 and record["held_out_after"] <= record["held_out_before"]
    assert "tune" in [p["name"] for p in tuned["phases"]]
    assert tuned["export"]["max_logit_diff"] < 1e-4  # the self-check read the tuned scales
    assert "scales tuned" in (tmp_path / "tuned" / "README.md").read_text()
    code, output, plain = _export(src, tmp_path / "plain", "--plan", str(tmp_path / "tuned" / PLAN_FILE), "--ratio",
                                  "0.45", "--quant", "w4a16", "--quant-tune-steps", "0")
    assert code == 0, output
    assert plain["scale_tuning"] is None and "tune" not in [p["name"] for p in plain["phases"]]
    a, b = _packed(tmp_path / "tuned"), _packed(tmp_path / "plain")
    assert sorted(a) == sorted(b)
    packed = [n for n in a if n.endswith("weight_packed")]
    assert packed and all(torch.equal(a[n], b[n]) for n in packed)  # the same 4-bit codes
    assert sum(not torch.equal(a[n], b[n]) for n in a if n.endswith("weight_scale")) == len(packed)


@pytest.mark.parametrize("args, message", [
    (["--quant-tune-steps", "5"], "--quant-tune-steps tunes the scales"),
    (["--quant", "w8a8", "--quant-tune-steps", "5"], "--quant-tune-steps tunes the scales"),
    (["--quant", "w4a16", "--quant-rounding", "nearest", "--quant-tune-steps", "5"], "--quant-tune-steps tunes"),
])
def test_tuning_where_nothing_is_tuned_is_refused_before_any_work(tiny_with_tokenizer, tmp_path, args, message):
    code, output, _ = _export(tiny_with_tokenizer, tmp_path / "out", "--ratio", "0.3", *args)
    assert code != 0 and message in output and output.count("\n") <= 2, output
    assert not (tmp_path / "out").exists()


def test_preflight_counts_the_tune_phase(tiny_with_tokenizer):
    from prunenet.compute import Compute
    from prunenet.planning.config import PruneConfig
    from prunenet.preflight import check_memory
    from prunenet.quantization.schemes import QuantSpec
    from prunenet.source.checkpoint import Checkpoint

    ckpt = Checkpoint(tiny_with_tokenizer)
    compute = Compute.resolve("cpu", ckpt.dtype)
    cfg, spec = PruneConfig(ratio=0.3), QuantSpec("w4a16", 32, "mse", "gptq")
    rounding = check_memory(ckpt, cfg, evaluate=False, compute=compute, rounding=spec)
    tuned = check_memory(ckpt, cfg, evaluate=False, compute=compute, rounding=spec, tuning=TuneConfig())
    assert [p.name for p in tuned] == [p.name for p in rounding] + ["tune"]
    assert tuned[-1].need > ckpt.num_parameters() * 4 * 0.5  # the pruned fp32 model, at least


def test_equal_rows_cut_to_the_shortest():
    from prunenet.quantization.tuning import _equal_rows

    rows = _equal_rows([torch.arange(7), torch.arange(5).reshape(1, -1), torch.arange(6)])
    assert [tuple(r.shape) for r in rows] == [(1, 5)] * 3 and torch.equal(rows[0], torch.arange(5).reshape(1, -1))
