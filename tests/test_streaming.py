"""Layer streaming: the sequential runner, compact summaries, the streamed quality report, pre-flight memory."""

from __future__ import annotations

import json

import pytest
import torch
from click.testing import CliRunner
from tiny_models import TINY_CONFIGS

from prunenet.arch import get_arch_spec
from prunenet.cli import main
from prunenet.compute import Compute
from prunenet.evaluation.reference import compare_models, pruned_copy
from prunenet.evaluation.streaming import compare_streaming
from prunenet.planning.planner import PruneConfig, make_plan
from prunenet.policy.rewards import OutputReward, spike_hidden, spike_inputs
from prunenet.preflight import MemoryError_, check_memory, estimate_phases
from prunenet.source.checkpoint import Checkpoint
from prunenet.source.ffn import load_layer_ffn
from prunenet.source.layerwise import LayerwiseModel
from prunenet.source.loaders import load_causal_lm

IDS = torch.randint(0, 500, (1, 24), generator=torch.Generator().manual_seed(1))


@pytest.mark.parametrize("model_type", sorted(TINY_CONFIGS))
def test_layerwise_forward_is_the_model_forward(tiny_models, model_type):
    """One layer at a time, arguments caught from transformers' own forward: bit-identical logits."""
    want = load_causal_lm(tiny_models[model_type])(IDS).logits.detach()
    lm = LayerwiseModel(tiny_models[model_type])
    hidden, kwargs = lm.prepare([IDS])
    for i in range(lm.num_layers):
        with lm.layer(i) as module:
            hidden = lm.forward_layer(module, i, hidden, kwargs)
        assert all(p.device.type == "meta" for p in lm.layers[i].parameters())  # offloaded again
    assert torch.equal(lm.logits(IDS, hidden[0]), want)


@pytest.mark.parametrize("model_type", sorted(TINY_CONFIGS))
def test_spike_hidden_equals_the_matrix_product(tiny_models, model_type):
    ckpt = Checkpoint(tiny_models[model_type])
    ffn = load_layer_ffn(ckpt, get_arch_spec(ckpt.config["model_type"]), 1)
    assert torch.equal(spike_hidden(ffn).abs(), ffn.hidden(spike_inputs(ffn)).abs())


def test_sketched_output_reward_tracks_the_exact_one(tiny_models, monkeypatch):
    ckpt = Checkpoint(tiny_models["llama"])
    ffn = load_layer_ffn(ckpt, get_arch_spec("llama"), 0)
    H = ffn.hidden(torch.randn(512, 64, generator=torch.Generator().manual_seed(0)))
    exact = OutputReward(ffn, H)
    monkeypatch.setattr(OutputReward, "gram_limit", 16)
    monkeypatch.setattr(OutputReward, "sketch", 256)
    sketched = OutputReward(ffn, H)
    assert exact.M is not None and sketched.M is None and sketched.A.shape == (256, 192)
    order = torch.randperm(192, generator=torch.Generator().manual_seed(2))
    widths = [32, 64, 96, 128, 160]
    a, b = exact.curve(order, widths), sketched.curve(order, widths)
    assert all(abs(x - y) <= 0.25 * x + 1e-6 for x, y in zip(a, b, strict=True)), (a, b)
    assert b == sorted(b, reverse=True)  # keeping more neurons never costs more
    assert b == pytest.approx([sketched.cost(order[:k]) for k in widths], rel=1e-4)  # incremental curve = cost


def test_streamed_quality_report_equals_the_in_memory_one(tiny_models, tmp_path):
    from plans import outlier_plan

    from exporters.hf.writer import write_hf_checkpoint

    src = tiny_models["llama"]
    plan = outlier_plan(src)
    write_hf_checkpoint(src, plan, tmp_path / "out")
    dense = load_causal_lm(src)
    windows = [torch.randint(0, 500, (40,), generator=torch.Generator().manual_seed(s)) for s in range(3)]
    want = compare_models(dense, pruned_copy(dense, plan), windows, batch_size=1)
    got = compare_streaming(src, tmp_path / "out", windows)
    for key in ("dense_ppl", "pruned_ppl", "kl", "top1_agreement", "n_tokens"):
        assert getattr(got, key) == pytest.approx(getattr(want, key), rel=1e-5), key
    assert got.kl > 0


def _held_bytes(summary) -> int:
    """Bytes of every tensor a layer summary keeps (its state, scores and reward statistics)."""
    tensors = [summary.state, summary.score]
    for reward in (summary.output, summary.spectral):
        tensors += [v for v in vars(reward).values() if isinstance(v, torch.Tensor)] if reward else []
    unique = {id(t): t for t in tensors if t is not None}
    return sum(t.numel() * t.element_size() for t in unique.values())


def test_weights_only_summaries_do_not_keep_matrices(tiny_models):
    from prunenet.planning import planner

    seen = []
    original = planner.summarize_layer

    def spy(ffn, *args, **kwargs):
        summary = original(ffn, *args, **kwargs)
        seen.append(_held_bytes(summary))
        return summary

    planner.summarize_layer = spy
    try:
        make_plan(tiny_models["llama"], PruneConfig(ratio=0.3, self_data=0, align=1, episodes=1))
    finally:
        planner.summarize_layer = original
    m = 192
    assert len(seen) == 3 and all(n <= m * (8 + 1) * 4 for n in seen), seen  # features + peak, never m x d


def test_policy_reuse_reuses_the_saved_self_text(tiny_with_tokenizer, tmp_path, monkeypatch):
    runner = CliRunner()
    out = tmp_path / "a"
    args = ["export", "--model", str(tiny_with_tokenizer), "--self-data", "64", "--align", "16", "--episodes", "1",
            "--no-eval", "-q"]
    assert runner.invoke(main, [*args, "--ratio", "0.3", "--out", str(out)]).exit_code == 0
    assert (out / "prunenet-selftext.safetensors").is_file()
    from prunenet.planning import planner

    monkeypatch.setattr(planner, "self_text_ids", lambda *a, **k: pytest.fail("self-text was generated again"))
    result = runner.invoke(main, [*args, "--ratio", "0.2", "--out", str(tmp_path / "b"),
                                  "--policy", str(out / "prunenet-policy.safetensors")])
    assert result.exit_code == 0, result.output
    # the reused text gives the plan a fresh run at 0.2 would give (same seed, same generated text)
    monkeypatch.undo()
    fresh = runner.invoke(main, [*args, "--ratio", "0.2", "--out", str(tmp_path / "c")])
    assert fresh.exit_code == 0, fresh.output
    reused_plan = json.loads((tmp_path / "b" / "prunenet-plan.json").read_text())
    fresh_plan = json.loads((tmp_path / "c" / "prunenet-plan.json").read_text())
    assert [lp["kept"] for lp in reused_plan["layers"]] == [lp["kept"] for lp in fresh_plan["layers"]]


def test_no_validate_skips_the_reload_check_and_its_memory(tiny_models, tmp_path, monkeypatch):
    """The reload check is the write phase's peak at 70B shapes; --no-validate drops it from the estimate."""
    from prunenet.preflight import RUNTIME_BYTES

    ckpt = Checkpoint(tiny_models["llama"])
    cfg = PruneConfig(ratio=0.3, self_data=0)

    def needs(validate: bool) -> dict[str, int]:
        phases = estimate_phases(ckpt, cfg, evaluate=False, compute=Compute.for_checkpoint("cpu", ckpt.path), validate=validate)
        return {p.name: p.need for p in phases}

    checked, unchecked = needs(True), needs(False)
    assert unchecked["write"] < checked["write"] and unchecked["read"] == checked["read"]
    budget = RUNTIME_BYTES + max(unchecked.values()) + 10_000
    assert budget < RUNTIME_BYTES + checked["write"]
    monkeypatch.setenv("PRUNENET_MEMORY_BUDGET_GB", f"{budget / 1e9}")
    args = ["export", "--model", str(tiny_models["llama"]), "--ratio", "0.3", "--align", "16", "--episodes", "1",
            "--self-data", "0", "--no-eval", "--json"]
    refused = CliRunner().invoke(main, [*args, "--out", str(tmp_path / "a")])
    assert refused.exit_code == 1 and "write phase" in refused.output and "--no-validate" in refused.output
    assert not (tmp_path / "a").exists()
    result = CliRunner().invoke(main, [*args, "--no-validate", "--out", str(tmp_path / "b")])
    assert result.exit_code == 0, result.output
    report = json.loads(result.output.strip().splitlines()[-1])
    assert "max_logit_diff" not in report["export"] and "not validated (--no-validate)" in report["warnings"][0]
    assert (tmp_path / "b" / "config.json").is_file()


def test_preflight_rejects_a_budget_too_small(tiny_models, tmp_path, monkeypatch):
    ckpt = Checkpoint(tiny_models["llama"])
    cfg = PruneConfig(ratio=0.3)
    names = [p.name for p in estimate_phases(ckpt, cfg, evaluate=True, compute=Compute.for_checkpoint("cpu", ckpt.path))]
    assert names == ["self-text", "capture", "write", "eval"]
    monkeypatch.setenv("PRUNENET_MEMORY_BUDGET_GB", "0.5")
    with pytest.raises(MemoryError_, match="needs about .* GB, 0.5 GB available"):
        check_memory(ckpt, cfg, evaluate=True, compute=Compute.for_checkpoint("cpu", ckpt.path))
    out = tmp_path / "out"
    result = CliRunner().invoke(main, ["export", "--model", str(tiny_models["llama"]), "--ratio", "0.3",
                                       "--out", str(out)])
    assert result.exit_code == 1 and "not enough memory for the self-text phase" in result.output
    assert "--self-data 0" in result.output and "Traceback" not in result.output
    assert not out.exists()
