"""Data-free healing: held-out loss never rises, the export carries the healed weights, both modes agree."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from plans import outlier_plan
from tiny_models import with_tokenizer
from transformers import AutoModelForCausalLM

from exporters import ExportConfig, export_hf
from prunenet.cli import main
from prunenet.compute import Compute
from prunenet.errors import PruneNetError
from prunenet.healing.config import HEAL_MODES, HealConfig
from prunenet.healing.data import HEAL_TEXT_FILE, split_rows
from prunenet.healing.measure import TeacherTargets, row_quality, sparse_kl_loss
from prunenet.healing.weights import HealedWeights
from prunenet.planning.plan import PruningPlan
from prunenet.planning.surgery import apply_plan_


@pytest.fixture(autouse=True)
def fp32_cpu(monkeypatch):
    """The exact comparisons below are of the fp32 path; a CPU with native bf16 would heal in bf16
    (``test_bf16_healing_learns_and_its_export_reloads`` covers that path on any CPU)."""
    import prunenet.device

    monkeypatch.setattr(prunenet.device, "cpu_has_fast_bf16", lambda: False)


def _text(cfg: HealConfig, n: int = 24, length: int = 33, vocab: int = 500):
    g = torch.Generator().manual_seed(1)
    return split_rows([torch.randint(0, vocab, (1, length), generator=g) for _ in range(n)], cfg)


def _cfg(**kw) -> HealConfig:
    return HealConfig(**{"tokens": 24 * 32, "sample_len": 32, "steps": 30, "eval_every": 10, "lr": 1e-3, **kw})


def _heal(src: Path, mode: str, out: Path, cfg: HealConfig, plan=None):
    plan = plan or outlier_plan(src)
    return plan, _run(mode, src, plan, _text(cfg), cfg, out)


def _run(mode: str, src: Path, plan, text, cfg: HealConfig, out: Path):
    """One healing mode, fp32 on the CPU (the compute resolved after the fixture fixed the probe)."""
    compute = Compute.for_checkpoint("cpu", src)
    return HEAL_MODES[mode].run()(src, plan, text, cfg, compute=compute, weights=HealedWeights(out))


def _worst_held_out(outcome) -> float:
    """The highest held-out loss healing saw at any evaluation, relative to where it started."""
    if outcome.mode == "block":
        return max(h["held_out_worst"] / h["held_out_before"] for h in outcome.history)
    return max(h["held_out"] for h in outcome.history) / outcome.history[0]["held_out"]


@pytest.mark.parametrize("mode", list(HEAL_MODES))
def test_held_out_loss_falls_and_never_rises(tiny_models, tmp_path, mode):
    _, good = _heal(tiny_models["llama"], mode, tmp_path / "good", _cfg())
    assert good.held_out_after["kl"] < 0.9 * good.held_out_before["kl"]
    # a learning rate that wrecks the weights: training made the held-out loss worse, yet the early stop
    # kept the best weights it saw, so the written model is no worse than the unhealed one
    _, bad = _heal(tiny_models["llama"], mode, tmp_path / "bad", _cfg(lr=5.0, patience=1))
    assert _worst_held_out(bad) > 1.5
    assert bad.held_out_after["kl"] <= bad.held_out_before["kl"] + 1e-6


def test_top_k_targets_bound_the_full_kl_and_vanish_only_at_the_teacher():
    g = torch.Generator().manual_seed(0)
    teacher, student = torch.randn(2, 7, 300, generator=g) * 3, torch.randn(2, 7, 300, generator=g) * 3
    t, s = torch.log_softmax(teacher, -1), torch.log_softmax(student, -1)
    full = (t.exp() * (t - s)).sum(-1).mean()  # KL(teacher || student) over the whole vocabulary
    assert torch.allclose(sparse_kl_loss(TeacherTargets.from_logits(teacher, k=300), student), full, atol=1e-5)
    values = [float(sparse_kl_loss(TeacherTargets.from_logits(teacher, k=k), student)) for k in (1, 16, 128)]
    assert 0 < values[0] <= values[1] <= values[2] <= float(full) + 1e-6  # a finer coarsening is closer
    at_teacher = teacher.clone().requires_grad_(True)
    loss = sparse_kl_loss(TeacherTargets.from_logits(teacher, k=16), at_teacher)
    loss.backward()
    assert abs(float(loss.detach())) < 1e-5 and at_teacher.grad.abs().max() < 1e-5
    parts = TeacherTargets.cat([TeacherTargets.from_logits(teacher[:1], k=16), TeacherTargets.from_logits(teacher[1:], k=16)])
    assert torch.equal(parts.index, TeacherTargets.from_logits(teacher, k=16).index)


def test_block_mode_has_end_to_end_interface(tiny_models, tmp_path):
    cfg = _cfg()
    _, e2e = _heal(tiny_models["llama"], "end-to-end", tmp_path / "e2e", cfg)
    _, blk = _heal(tiny_models["llama"], "block", tmp_path / "blk", cfg)
    assert e2e.held_out_before == blk.held_out_before  # the same unhealed model, measured the same way
    a, b = HealedWeights(tmp_path / "e2e"), HealedWeights(tmp_path / "blk")
    assert a.names() == b.names() and len(a) == e2e.healed_tensors == blk.healed_tensors > 0
    assert all(a.get(n).shape == b.get(n).shape for n in a.names())


def test_healing_is_deterministic_on_cpu(tiny_models, tmp_path):
    _heal(tiny_models["llama"], "end-to-end", tmp_path / "one", _cfg())
    _heal(tiny_models["llama"], "end-to-end", tmp_path / "two", _cfg())
    one, two = HealedWeights(tmp_path / "one"), HealedWeights(tmp_path / "two")
    assert one.names() == two.names()
    assert all(torch.equal(one.get(n), two.get(n)) for n in one.names())


@pytest.mark.parametrize("model_type", ["llama", "phi3", "opt"])
def test_healed_export_reloads_with_its_widths_and_healed_logits(tiny_models, tmp_path, model_type):
    """The written directory is the healed model: its held-out KL is the one healing reported."""
    src = tiny_models[model_type]
    cfg = _cfg()
    text = _text(cfg)
    plan = outlier_plan(src)
    outcome = _run("end-to-end", src, plan, text, cfg, tmp_path / "healed")
    out = tmp_path / "out"
    export_hf(src, plan, out, ExportConfig(dtype="float32", healed=tmp_path / "healed"))
    exported = AutoModelForCausalLM.from_pretrained(out, trust_remote_code=True).eval()
    dense = AutoModelForCausalLM.from_pretrained(src).eval()
    assert PruningPlan.load(out / "prunenet-plan.json").widths == plan.widths
    with torch.no_grad():
        q = row_quality(text.held_out, lambda i: dense(text.held_out[i]).logits,
                        lambda i: exported(text.held_out[i]).logits)
        sliced = apply_plan_(AutoModelForCausalLM.from_pretrained(src).eval(), plan)
        changed = (exported(text.held_out[0]).logits - sliced(text.held_out[0]).logits).abs().max()
    assert q["kl"] == pytest.approx(outcome.held_out_after["kl"], rel=1e-4, abs=1e-7)
    assert changed > 1e-4  # the healed tensors, not the sliced source ones, were written


def test_bf16_healing_learns_and_its_export_reloads(tiny_models, tmp_path, monkeypatch):
    """On a CPU with native bf16 an fp32 source heals in bf16 (fp32 master weights): it must still learn
    (autocast's cast cache once froze it) and write what it measured."""
    import prunenet.device

    monkeypatch.setattr(prunenet.device, "cpu_has_fast_bf16", lambda: True)
    src = tiny_models["llama"]
    cfg = _cfg()
    text = _text(cfg)
    plan = outlier_plan(src)
    outcome = _run("end-to-end", src, plan, text, cfg, tmp_path / "healed")
    assert outcome.held_out_after["kl"] < 0.9 * outcome.held_out_before["kl"]
    out = tmp_path / "out"
    export_hf(src, plan, out, ExportConfig(dtype="float32", healed=tmp_path / "healed"))
    exported = AutoModelForCausalLM.from_pretrained(out, trust_remote_code=True).eval()
    dense = AutoModelForCausalLM.from_pretrained(src).eval()
    with torch.no_grad():
        q = row_quality(text.held_out, lambda i: dense(text.held_out[i]).logits,
                        lambda i: exported(text.held_out[i]).logits)
    assert q["kl"] == pytest.approx(outcome.held_out_after["kl"], rel=0.05)  # fp32 reload vs bf16 measure
    _, blk = _heal(src, "block", tmp_path / "blk", cfg)
    assert blk.held_out_before["kl"] == pytest.approx(outcome.held_out_before["kl"], rel=0.05)


def _healing_cli(src: Path, out: Path, *extra: str) -> list[str]:
    return ["export", "--model", str(src), "--ratio", "0.3", "--align", "16", "--episodes", "2", "--self-data", "0",
            "--heal", "--heal-tokens", "2048", "--heal-steps", "10", "--out", str(out), "--json", *extra]


def test_cli_heal_records_healing_in_plan_and_card(tiny_models, tmp_path):
    src = with_tokenizer(tiny_models["llama"], tmp_path / "src")
    out = tmp_path / "out"
    r = CliRunner().invoke(main, _healing_cli(src, out))
    assert r.exit_code == 0, r.output
    result = json.loads(r.output.strip().splitlines()[-1])
    healing = result["healing"]
    assert healing["mode"] == "end-to-end" and healing["settings"]["tokens"] == 2048
    assert healing["held_out_after"]["kl"] <= healing["held_out_before"]["kl"]
    assert healing["reference_before"] and healing["reference_after"]
    assert PruningPlan.load(out / "prunenet-plan.json").extra["healing"] == healing
    card = (out / "README.md").read_text()
    assert "## Healing" in card and "held-out self-text" in card and "reference text" in card
    assert healing["settings"]["refit"] and f"{healing['refit_layers']} output projections refit" in card
    # no adapter or scratch files: only the healing text, kept beside the policy for healing again
    assert [p.name for p in out.iterdir() if "heal" in p.name] == [HEAL_TEXT_FILE]
    assert [p["name"] for p in result["phases"]][:2] == ["read", "training"]
    assert {"heal-text", "heal"} <= {p["name"] for p in result["phases"]}


def test_healing_again_with_the_policy_reuses_its_text(tiny_models, tmp_path, monkeypatch):
    """Prune once: another ratio with ``--policy`` heals from the saved text, generating none."""
    from prunenet.planning import selfdata

    src = with_tokenizer(tiny_models["llama"], tmp_path / "src")
    first = tmp_path / "first"
    r = CliRunner().invoke(main, _healing_cli(src, first, "--no-eval"))
    assert r.exit_code == 0, r.output
    before = json.loads(r.output.strip().splitlines()[-1])["healing"]["held_out_before"]

    def generated(*args, **kwargs):
        raise RuntimeError("healing text was generated again")

    monkeypatch.setattr(selfdata, "self_text_ids", generated)
    policy = ("--policy", str(first / "prunenet-policy.safetensors"))
    r = CliRunner().invoke(main, _healing_cli(src, tmp_path / "second", "--no-eval", *policy))
    assert r.exit_code == 0, r.output
    again = json.loads(r.output.strip().splitlines()[-1])["healing"]
    assert again["held_out_before"] == before  # same ratio and policy: the same text, so the same "before"
    r = CliRunner().invoke(main, _healing_cli(src, tmp_path / "third", "--no-eval", *policy, "--heal-tokens", "4096"))
    assert "generated again" in str(r.exception)  # another budget is another text: it is generated


def test_cli_heal_block_mode_and_bad_input(tiny_models, tmp_path):
    src = with_tokenizer(tiny_models["llama"], tmp_path / "src")
    r = CliRunner().invoke(main, _healing_cli(src, tmp_path / "blk", "--heal-mode", "block", "--no-eval"))
    assert r.exit_code == 0, r.output
    assert json.loads(r.output.strip().splitlines()[-1])["healing"]["mode"] == "block"
    r = CliRunner().invoke(main, _healing_cli(src, tmp_path / "few", "--heal-tokens", "300"))
    assert r.exit_code != 0 and "healing needs at least 3" in r.output and "Traceback" not in r.output
    assert not (tmp_path / "few").exists()


def test_preflight_refuses_healing_that_cannot_fit(tiny_models, tmp_path, monkeypatch):
    from prunenet.preflight import RUNTIME_BYTES

    src = with_tokenizer(tiny_models["llama"], tmp_path / "src")
    monkeypatch.setenv("PRUNENET_MEMORY_BUDGET_GB", f"{(RUNTIME_BYTES + 3e6) / 1e9}")
    r = CliRunner().invoke(main, _healing_cli(src, tmp_path / "out", "--heal-tokens", "200000", "--no-eval"))
    assert r.exit_code == 1 and "heal" in r.output and "--no-heal" in r.output, r.output
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("sig, code", [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_signal_while_healing_leaves_nothing(tiny_models, tmp_path, sig, code):
    src = with_tokenizer(tiny_models["llama"], tmp_path / "src")
    out = tmp_path / "out"
    args = _healing_cli(src, out, "--heal-steps", "100000", "--no-eval", "-v")[1:]
    args.remove("--json")
    proc = subprocess.Popen([sys.executable, "-m", "prunenet.cli.export", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, env={**os.environ, "PRUNENET_PROGRESS": "0"})
    deadline = time.monotonic() + 120
    seen = b""
    while b"Healing (end to end): held-out" not in seen and time.monotonic() < deadline:
        line = proc.stderr.readline()
        if not line and proc.poll() is not None:
            break
        seen += line
    time.sleep(1.0)  # well inside the step loop
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=60)
    err = seen + err
    assert proc.returncode == code, err.decode()[-800:]
    assert not out.exists() and not list(tmp_path.glob(".out*"))
    assert b"Traceback" not in err


def _default_cli(src: Path, out: Path, *extra: str) -> list[str]:
    """An export with healing left to its default (neither --heal nor --no-heal)."""
    return ["export", "--model", str(src), "--ratio", "0.3", "--align", "16", "--episodes", "2", "--self-data", "0",
            "--heal-tokens", "2048", "--heal-steps", "10", "--no-eval", "--out", str(out), "--json", *extra]


def test_healing_is_on_by_default_for_small_sources_only(tiny_models, tmp_path, monkeypatch):
    """Unset, --heal heals a small source with a tokenizer; --no-heal, a larger source, a tokenizer-less one
    and a plan that prunes nothing are exported unhealed, each with a note saying why."""
    from prunenet.healing import config

    def run(src: Path, name: str, *extra: str) -> dict:
        r = CliRunner().invoke(main, _default_cli(src, tmp_path / name, *extra))
        assert r.exit_code == 0, r.output
        return json.loads(r.output.strip().splitlines()[-1])

    src = with_tokenizer(tiny_models["llama"], tmp_path / "src")
    healed = run(src, "default")
    assert healed["healing"]["mode"] == "end-to-end" and healed["notes"] == []
    assert healed["healing"]["held_out_after"]["kl"] < healed["healing"]["held_out_before"]["kl"]
    off = run(src, "off", "--no-heal")
    assert off["healing"] is None and off["notes"] == []
    bare = run(tiny_models["llama"], "bare")  # no tokenizer to write healing's text with
    assert bare["healing"] is None and "no tokenizer" in bare["notes"][0]
    r = CliRunner().invoke(main, [*_default_cli(tiny_models["llama"], tmp_path / "forced"), "--heal"])
    assert r.exit_code != 0 and "tokenizer" in r.output  # asked for, it is an error, not a note
    nothing = run(src, "nothing", "--ratio", "0")
    assert nothing["healing"] is None and nothing["notes"] == ["not healed: the plan prunes nothing"]
    monkeypatch.setattr(config, "AUTO_MAX_PARAMS", 1000)
    big = run(src, "big")
    assert big["healing"] is None and "pass --heal" in big["notes"][0]
    assert run(src, "asked", "--heal")["healing"]["mode"] == "end-to-end"


def test_auto_heal_rule():
    from prunenet.healing.config import AUTO_MAX_PARAMS, auto_heal_skip

    assert auto_heal_skip(135_000_000) is None and auto_heal_skip(AUTO_MAX_PARAMS) is None
    assert "6,738M" in auto_heal_skip(6_738_415_616) and "pass --heal" in auto_heal_skip(AUTO_MAX_PARAMS + 1)
    assert "tokenizer" in auto_heal_skip(135_000_000, has_tokenizer=False)


def test_refit_projection_is_the_regularised_least_squares_fit():
    from prunenet.healing.refit import refit_projection

    g = torch.Generator().manual_seed(0)
    # correlated neurons (as real FFN activations are): the kept ones can stand in for the dropped ones
    acts = torch.randn(400, 8, generator=g) @ torch.randn(8, 24, generator=g) + 0.1 * torch.randn(400, 24, generator=g)
    weight = torch.randn(6, 24, generator=g)
    kept = [0, 3, 4, 9, 15, 20, 23, 11, 7]
    kept.sort()
    gram = (acts.T @ acts).double()
    target = acts @ weight.T

    def error(w: torch.Tensor) -> float:
        return float((acts[:, kept] @ w.T - target).square().sum())

    exact = torch.linalg.lstsq(acts[:, kept].double(), target.double()).solution.T.float()
    assert torch.allclose(refit_projection(weight, gram, kept, damping=1e-9), exact, rtol=1e-3, atol=1e-3)
    fitted = refit_projection(weight, gram, kept, damping=1.0)
    assert error(exact) <= error(fitted) < 0.5 * error(weight[:, kept])  # between the exact fit and the slice
    assert torch.allclose(refit_projection(weight, gram, kept, damping=1e6), weight[:, kept], atol=1e-3)
    assert refit_projection(weight, torch.zeros_like(gram), kept) is None  # kept neurons never fired


def test_refit_records_only_the_training_rows_of_the_dense_pass(tiny_models):
    """The Gram matrices come from the dense layers' own output-projection inputs on the first rows."""
    from prunenet.healing.refit import OutputRefit, output_projection, refit_projection
    from prunenet.source.layerwise import LayerwiseModel

    src = tiny_models["llama"]
    plan = outlier_plan(src)
    text = _text(_cfg())
    lm = LayerwiseModel(src)
    refit = OutputRefit(lm.spec, plan, rows=len(text.train))
    lm.final_hidden(text.train + text.held_out, edit=refit)
    refit.finish()
    dense = AutoModelForCausalLM.from_pretrained(src).eval()
    layers = dense.get_submodule(lm.spec.layers_prefix)
    pruned = [i for i, lp in enumerate(plan.layers) if lp.width != lp.original_width]
    assert sorted(refit.weights) == pruned
    for i in pruned:
        linear = output_projection(layers[i], lm.spec)
        inputs: list[torch.Tensor] = []
        handle = linear.register_forward_pre_hook(
            lambda _m, args, seen=inputs: seen.append(args[0].reshape(-1, args[0].shape[-1])))
        with torch.no_grad():
            for row in text.train:
                dense(row)
        handle.remove()
        acts = torch.cat(inputs).double()
        expected = refit_projection(linear.weight.detach(), acts.T @ acts, plan.layers[i].kept)
        assert torch.allclose(refit.weights[i], expected, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("mode", list(HEAL_MODES))
def test_healing_starts_from_the_refit_when_it_helps(tiny_models, tmp_path, mode):
    plan, on = _heal(tiny_models["llama"], mode, tmp_path / "on", _cfg(steps=1))
    _, off = _heal(tiny_models["llama"], mode, tmp_path / "off", _cfg(steps=1, refit=False), plan)
    assert on.refit_layers == sum(lp.width != lp.original_width for lp in plan.layers) > 0
    assert off.refit_layers == 0
    assert on.held_out_before == off.held_out_before  # "before" is the sliced model, refit or not
    assert on.held_out_after["kl"] < off.held_out_after["kl"]


def test_a_refit_that_does_not_help_is_undone():
    from prunenet.arch import get_arch_spec
    from prunenet.healing.refit import OutputRefit, output_projection

    spec = get_arch_spec("llama")
    layer = torch.nn.Module()
    layer.mlp = torch.nn.Module()
    layer.mlp.down_proj = torch.nn.Linear(4, 3, bias=False)
    original = layer.mlp.down_proj.weight.detach().clone()
    refit = OutputRefit(spec, None, rows=1)
    refit.weights[0] = torch.ones(3, 4)
    assert refit.start_({0: layer}, lambda: 2.0, before=1.0) == (0, 1.0)
    assert torch.equal(output_projection(layer, spec).weight, original)
    assert refit.start_({0: layer}, lambda: 0.5, before=1.0) == (1, 0.5)
    assert torch.equal(output_projection(layer, spec).weight, torch.ones(3, 4))


@pytest.mark.parametrize("mode", list(HEAL_MODES))
def test_zero_steps_heals_with_the_refit_alone(tiny_models, tmp_path, mode):
    plan, outcome = _heal(tiny_models["llama"], mode, tmp_path / "refit", _cfg(steps=0))
    assert outcome.steps == 0 and outcome.refit_layers > 0
    assert outcome.held_out_after["kl"] < outcome.held_out_before["kl"]
    healed = HealedWeights(tmp_path / "refit")
    assert len(healed) == outcome.healed_tensors > 0
    with pytest.raises(PruneNetError, match="needs --heal-refit"):
        HealConfig(steps=0, refit=False)


def test_cli_zero_heal_steps_without_refit_is_one_line(tiny_models, tmp_path):
    src = with_tokenizer(tiny_models["llama"], tmp_path / "src")
    args = _healing_cli(src, tmp_path / "none", "--no-eval", "--no-heal-refit")
    r = CliRunner().invoke(main, [*args[: args.index("--heal-steps") + 1], "0", *args[args.index("--heal-steps") + 2:]])
    assert r.exit_code != 0 and "needs --heal-refit" in r.output and "Traceback" not in r.output
    assert not (tmp_path / "none").exists()
