"""Export directories: formats, reload parity, atomicity and refusal of bad outputs."""

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
from tiny_models import SENTENCE, TINY_CONFIGS, with_tokenizer
from transformers import AutoModelForCausalLM

from exporters import ExportConfig, export_hf
from exporters.staging import staged_output
from prunenet.arch import ARCH_SPECS, MODELING_FILE
from prunenet.cli import main
from prunenet.errors import OutputExistsError
from prunenet.interrupts import Terminated, catching_signals
from prunenet.planning.surgery import apply_plan_

IDS = torch.randint(0, 500, (2, 10), generator=torch.Generator().manual_seed(0))


def _logits(model):
    with torch.no_grad():
        return model(IDS).logits


@pytest.mark.parametrize("model_type", sorted(TINY_CONFIGS))
def test_nonuniform_export_reloads_identically_and_fails_loudly_without_remote_code(tiny_models, tmp_path,
                                                                                     model_type):
    src = tiny_models[model_type]
    plan = outlier_plan(src, ratio=0.4, align=16)
    assert not plan.is_uniform
    report = export_hf(src, plan, tmp_path, ExportConfig())
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["architectures"] == [report["architecture"]] and report["architecture"].startswith("Pruned")
    assert config["intermediate_sizes"] == plan.widths and (tmp_path / MODELING_FILE).is_file()
    reference = apply_plan_(AutoModelForCausalLM.from_pretrained(src).eval(), plan)
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path, trust_remote_code=True).eval()
    assert torch.equal(_logits(reloaded), _logits(reference))
    with pytest.raises(RuntimeError, match="ignore_mismatched_sizes"):  # stock class, per-layer weights: refused
        AutoModelForCausalLM.from_pretrained(tmp_path)


def test_padded_and_uniform_exports_are_stock(tiny_models, tmp_path):
    src = tiny_models["llama"]
    plan = outlier_plan(src, ratio=0.4, align=16)
    export_hf(src, plan, tmp_path / "padded", ExportConfig(compat="padded"))
    cfg = json.loads((tmp_path / "padded" / "config.json").read_text())
    assert cfg["architectures"] == ["LlamaForCausalLM"] and "auto_map" not in cfg
    padded = AutoModelForCausalLM.from_pretrained(tmp_path / "padded").eval()
    reference = apply_plan_(AutoModelForCausalLM.from_pretrained(src).eval(), plan)
    assert type(padded).__name__ == "LlamaForCausalLM"
    assert torch.allclose(_logits(padded), _logits(reference), atol=1e-5)
    uniform = outlier_plan(src, widths=[112, 112, 112])
    export_hf(src, uniform, tmp_path / "uniform", ExportConfig())
    cfg = json.loads((tmp_path / "uniform" / "config.json").read_text())
    assert cfg["intermediate_size"] == uniform.widths[0] and "intermediate_sizes" not in cfg
    assert not (tmp_path / "uniform" / MODELING_FILE).exists()
    assert type(AutoModelForCausalLM.from_pretrained(tmp_path / "uniform")).__name__ == "LlamaForCausalLM"


def test_ratio_zero_reproduces_source_logits(tiny_models, tmp_path):
    src = tiny_models["qwen2"]
    plan = outlier_plan(src, widths=[192, 192, 192])
    export_hf(src, plan, tmp_path, ExportConfig())
    assert torch.equal(_logits(AutoModelForCausalLM.from_pretrained(tmp_path)),
                       _logits(AutoModelForCausalLM.from_pretrained(src)))


def test_modeling_file_is_small_and_pinned():
    import hashlib

    data = TEMPLATE.read_bytes()
    imports = {line.split()[1] for line in data.decode().splitlines() if line.startswith(("import ", "from "))}
    assert imports <= {"copy", "transformers", "torch"}
    assert len(data) < 6000
    assert hashlib.sha256(data).hexdigest() == MODELING_SHA256


MODELING_SHA256 = "8a22e4a391759f03e14205c317707139ef43b952068bdcee5c443be40020c114"
TEMPLATE = Path(__file__).resolve().parents[1] / "exporters" / "hf" / "templates" / MODELING_FILE
TEMPLATE_ABSENT: dict[str, str] = {}
"""ARCH_SPECS families the shipped template deliberately does not cover, with the reason (none today)."""


def _template_facts() -> tuple[dict[str, tuple[str, str, str]], set[str], list[str]]:
    """The template's ``_FAMILIES`` table, the classes it defines and its layer paths, read without importing it."""
    import ast

    tree = ast.parse(TEMPLATE.read_text())
    families, classes, paths = {}, set(), []
    for node in tree.body:
        if isinstance(node, ast.Assign) and isinstance(node.targets[0], ast.Name):
            name = node.targets[0].id
            if name == "_FAMILIES":
                families = ast.literal_eval(node.value)
            elif isinstance(node.value, ast.Call) and getattr(node.value.func, "id", "") == "_pruned":
                assert name == "Pruned" + node.value.args[0].value, name  # the class is named after its base
                classes.add(name)
        if isinstance(node, ast.FunctionDef) and node.name == "_decoder_layers":
            paths = next(ast.literal_eval(n.iter) for n in ast.walk(node) if isinstance(n, ast.For))
    return families, classes, paths


def test_modeling_template_matches_arch_specs():
    """The shipped file keeps its own copy of the per-family facts (it must not import this package)."""
    families, classes, paths = _template_facts()
    assert set(families) | set(TEMPLATE_ABSENT) == set(ARCH_SPECS) and not set(families) & set(TEMPLATE_ABSENT)
    for model_type, (width_attr, base_model, causal_lm) in families.items():
        spec = ARCH_SPECS[model_type]
        assert (width_attr, base_model, causal_lm) == (spec.width_attr, spec.hf_base_model, spec.hf_architecture)
        assert {spec.pruned_base_model, spec.pruned_architecture} <= classes, model_type
        assert spec.layers_prefix in paths, model_type
    assert len(classes) == 2 * len(families)


def test_staged_output_is_atomic_and_refuses_existing(tmp_path):
    out = tmp_path / "out"
    with pytest.raises(RuntimeError), staged_output(out) as stage:
        (stage / "half-written").write_text("x")
        raise RuntimeError("boom")
    assert not out.exists() and not list(tmp_path.iterdir())
    out.mkdir()
    (out / "keep").write_text("precious")
    with pytest.raises(OutputExistsError), staged_output(out):
        pass
    assert (out / "keep").read_text() == "precious"
    with staged_output(out, force=True) as stage:
        (stage / "new").write_text("y")
    assert sorted(p.name for p in out.iterdir()) == ["new"]


def test_stale_staging_dir_of_a_killed_run_is_cleaned(tmp_path):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    stale = tmp_path / f".out.prunenet-tmp-{dead.pid}"
    stale.mkdir()
    (stale / "model.safetensors").write_bytes(b"partial")
    with staged_output(tmp_path / "out") as stage:
        (stage / "ok").write_text("1")
    assert not stale.exists() and (tmp_path / "out" / "ok").exists()


def test_cli_refuses_nonempty_out_and_out_inside_source(tiny_models, tmp_path):
    runner = CliRunner()
    out = tmp_path / "out"
    out.mkdir()
    (out / "x").write_text("1")
    r = runner.invoke(main, ["export", "--model", str(tiny_models["llama"]), "--ratio", "0.3", "--out", str(out),
                             "--self-data", "0"])
    assert r.exit_code == 1 and "--force" in r.output and (out / "x").exists()
    inside = tiny_models["llama"] / "pruned"
    r = runner.invoke(main, ["export", "--model", str(tiny_models["llama"]), "--ratio", "0.3", "--out", str(inside)])
    assert r.exit_code == 1 and "inside the source" in r.output and not inside.exists()


def test_cli_export_end_to_end_json(tiny_models, tmp_path):
    out = tmp_path / "out"
    r = CliRunner().invoke(main, ["export", "--model", str(tiny_models["mistral"]), "--ratio", "0.3", "--align", "16",
                                  "--episodes", "2", "--out", str(out), "--no-eval", "--json", "--self-data", "0"])
    assert r.exit_code == 0, r.output
    result = json.loads(r.output.strip().splitlines()[-1])
    assert abs(result["achieved_ratio"] - 0.3) <= 16 / 192
    for name in ("config.json", "model.safetensors", "prunenet-plan.json", "prunenet-policy.safetensors",
                 "README.md", "prunenet-widths.png"):
        assert (out / name).is_file(), name
    assert result["export"]["max_logit_diff"] < 1e-4
    # the saved policy prunes at another ratio with no training
    r2 = CliRunner().invoke(main, ["export", "--model", str(tiny_models["mistral"]), "--ratio", "0.1", "--align", "16",
                                   "--policy", str(out / "prunenet-policy.safetensors"), "--out",
                                   str(tmp_path / "out2"), "--no-eval", "--json", "--self-data", "0"])
    assert r2.exit_code == 0, r2.output
    assert json.loads(r2.output.strip().splitlines()[-1])["policy_fingerprint"] == result["policy_fingerprint"]


@pytest.mark.parametrize("sig, code", [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_signal_during_training_leaves_nothing(tiny_models, tmp_path, sig, code):
    out = tmp_path / "out"
    proc = subprocess.Popen(
        [sys.executable, "-m", "prunenet.cli.export", "--model", str(tiny_models["llama"]), "--ratio", "0.3",
         "--episodes", "100000", "--align", "16", "--out", str(out), "--no-eval", "-v", "--self-data", "0"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, env={**os.environ, "PRUNENET_PROGRESS": "0"},
    )
    deadline = time.monotonic() + 120
    seen = b""
    while b"episode 2:" not in seen and time.monotonic() < deadline:  # wait until training is under way
        seen += proc.stderr.readline()
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=60)
    err = seen + err
    assert proc.returncode == code, err.decode()[-500:]
    assert not out.exists() and not list(tmp_path.glob(".out*"))
    assert b"Traceback" not in err


def test_cli_onnx_target(tiny_models, tmp_path):
    out = tmp_path / "onnx"
    r = CliRunner().invoke(main, ["export", "--model", str(tiny_models["llama"]), "--ratio", "0.3", "--align", "16",
                                  "--episodes", "2", "--target", "onnx", "--out", str(out), "--no-eval", "--json",
                                  "--self-data", "0"])
    assert r.exit_code == 0, r.output
    result = json.loads(r.output.strip().splitlines()[-1])
    onnx_report = result["export"]["onnx"]
    assert onnx_report["greedy_match"] is True and onnx_report["max_logit_diff"] < 1e-4
    for name in ("model.onnx", "config.json", "prunenet-plan.json", "README.md"):
        assert (out / name).is_file(), name
    # no weights of the intermediate HF export are left: the only safetensors is the trained policy
    assert sorted(p.name for p in out.glob("*.safetensors")) == ["prunenet-policy.safetensors"]
    present = sorted(str(p.relative_to(out)) for p in out.rglob("*") if p.is_file())
    manifest = json.loads((out / "prunenet-onnx.json").read_text())
    assert manifest["files"] == present  # including what the job adds after the graph (card, policy)
    assert {"README.md", "prunenet-widths.png", "prunenet-policy.safetensors"} <= set(present)


def test_full_disk_is_a_clear_error_and_leaves_nothing(tiny_models, tmp_path):
    """A file-size limit (ulimit -f) stands in for a full disk: writing the weights fails mid-export."""
    out = tmp_path / "out"
    cmd = (f"ulimit -f 64; exec {sys.executable} -m prunenet.cli.export --model {tiny_models['llama']} --ratio 0.3 "
           f"--align 16 --episodes 1 --self-data 0 --no-eval --out {out}")
    proc = subprocess.run(["bash", "-c", cmd], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 1, proc.stderr[-1500:]
    assert "error:" in proc.stderr and "Traceback" not in proc.stderr
    assert not out.exists() and not list(tmp_path.glob(".out*"))


def _interrupt_when_staging_appears(cmd: list[str], parent: Path, sig: int, delay: float) -> subprocess.CompletedProcess:
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            env={**os.environ, "PRUNENET_PROGRESS": "0"})
    deadline = time.monotonic() + 240
    while not list(parent.glob(".out.prunenet-tmp-*")) and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.05)
    time.sleep(delay)
    proc.send_signal(sig)
    out, err = proc.communicate(timeout=120)
    return subprocess.CompletedProcess(cmd, proc.returncode, out, err)


def _fingerprinted_plan(model_dir: Path):
    """A tests/plans.py plan the CLI accepts for ``model_dir`` (``--plan`` checks the source fingerprint)."""
    import dataclasses

    from prunenet.source.checkpoint import Checkpoint

    plan = outlier_plan(model_dir, ratio=0.3, align=64)
    return dataclasses.replace(plan, source_fingerprint=Checkpoint(model_dir).fingerprint())


@pytest.mark.integration
@pytest.mark.slow
@pytest.mark.parametrize("sig, code", [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_signal_while_writing_the_real_model_leaves_nothing(default_model, tmp_path, sig, code):
    from prunenet.planning.plan import PLAN_FILE

    _fingerprinted_plan(default_model).save(tmp_path)
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "prunenet.cli.export", "--ratio", "0.3", "--plan", str(tmp_path / PLAN_FILE),
           "--out", str(out), "--no-eval", "--no-heal"]
    done = _interrupt_when_staging_appears(cmd, tmp_path, sig, 0.5)
    assert done.returncode == code, done.stderr.decode()[-800:]
    assert not out.exists() and not list(tmp_path.glob(".out*"))


@pytest.mark.integration
@pytest.mark.slow
def test_sigkill_mid_write_is_cleaned_by_the_next_run(default_model, tmp_path):
    """A killed export leaves its staging directory; the next run removes it and succeeds."""
    from prunenet.planning.plan import PLAN_FILE

    _fingerprinted_plan(default_model).save(tmp_path)
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "prunenet.cli.export", "--ratio", "0.3", "--plan", str(tmp_path / PLAN_FILE),
           "--out", str(out), "--no-eval", "--no-heal"]
    killed = _interrupt_when_staging_appears(cmd, tmp_path, signal.SIGKILL, 0.5)
    assert killed.returncode == -signal.SIGKILL
    stale = list(tmp_path.glob(".out.prunenet-tmp-*"))
    assert stale and not out.exists()  # what a crash leaves behind
    again = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stderr[-800:]
    assert (out / "config.json").is_file() and not any(p.exists() for p in stale)


def test_a_signal_inside_a_finalizer_prints_no_traceback_and_still_cancels(monkeypatch, capsys):
    """A signal that lands in ``__del__`` cannot propagate: Python would print "Exception ignored" with a
    traceback. Under catching_signals it is silent, and check() still raises it."""
    import gc

    from prunenet.interrupts import check

    class Finalized:
        def __del__(self):
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(0.5)

    monkeypatch.setattr(sys, "unraisablehook", sys.__unraisablehook__)  # Python's own, not pytest's
    with pytest.raises(Terminated), catching_signals():
        Finalized()
        gc.collect()
        check()
    assert "Traceback" not in capsys.readouterr().err


@pytest.mark.parametrize("sig, expected", [(signal.SIGINT, KeyboardInterrupt), (signal.SIGTERM, Terminated)])
def test_a_signal_swallowed_by_a_library_still_cancels_the_commit(tmp_path, sig, expected):
    """torch.export's fake-tensor pass catches Ctrl-C and carries on; the staged output must not appear."""
    out = tmp_path / "out"
    with pytest.raises(expected), catching_signals(), staged_output(out) as tmp:
        (tmp / "config.json").write_text("{}")
        try:
            os.kill(os.getpid(), sig)
            time.sleep(1)
        except BaseException:  # what the offending library does
            pass
    assert not out.exists() and not list(tmp_path.glob(".out*"))


@pytest.mark.parametrize("sig, code", [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_a_signal_turned_into_a_library_error_still_exits_as_the_signal(tmp_path, sig, code):
    """A signal inside safetensors' reader came out as "cannot read tensor ...; the file is corrupt" (exit 1)."""
    from prunenet.cli.common import handle_errors
    from prunenet.errors import ModelSourceError

    out = tmp_path / "out"

    @handle_errors
    def command():
        with staged_output(out) as tmp:
            (tmp / "config.json").write_text("{}")
            try:
                os.kill(os.getpid(), sig)
                time.sleep(1)
            except BaseException as exc:  # what the C extension's wrapper does
                raise ModelSourceError("model.safetensors: cannot read tensor x; the file is corrupt") from exc

    with pytest.raises(SystemExit) as exit_:
        command()
    assert exit_.value.code == code
    assert not out.exists() and not list(tmp_path.glob(".out*"))


@pytest.mark.parametrize("sig, code", [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_signal_during_onnx_export_leaves_nothing(tiny_models, tmp_path, sig, code):
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "prunenet.cli.export", "--model", str(tiny_models["llama"]), "--ratio", "0.3",
           "--align", "16", "--episodes", "1", "--self-data", "0", "--target", "onnx", "--out", str(out), "--no-eval"]
    done = _interrupt_when_staging_appears(cmd, tmp_path, sig, 3.0)
    assert done.returncode == code, done.stderr.decode()[-800:]
    assert b"Traceback" not in done.stderr
    assert not out.exists() and not list(tmp_path.glob(".out*")) and not list(tmp_path.glob(".prunenet-hf-*"))


def test_sharded_export_streams_into_several_files_and_reloads(tiny_models, tmp_path):
    from exporters.hf import write_hf_checkpoint

    src = tiny_models["llama"]
    plan = outlier_plan(src, ratio=0.4, align=16)
    write_hf_checkpoint(src, plan, tmp_path, max_shard_bytes=200_000)
    shards = sorted(p.name for p in tmp_path.glob("model-*.safetensors"))
    index = json.loads((tmp_path / "model.safetensors.index.json").read_text())
    assert len(shards) > 1 and sorted(set(index["weight_map"].values())) == shards
    reference = apply_plan_(AutoModelForCausalLM.from_pretrained(src).eval(), plan)
    assert torch.equal(_logits(AutoModelForCausalLM.from_pretrained(tmp_path, trust_remote_code=True)),
                       _logits(reference))




def test_exported_tokenizer_loads_in_transformers_4_and_5(tiny_models, tmp_path):
    """optimum-onnx's transformers 4.57 has no TokenizersBackend; PreTrainedTokenizerFast is known to both."""
    import tokenizers
    from transformers import AutoTokenizer

    from exporters.hf import write_hf_checkpoint
    from exporters.onnx.export import _copy_side_files

    src = with_tokenizer(tiny_models["llama"], tmp_path / "src")
    out = tmp_path / "hf"
    write_hf_checkpoint(src, outlier_plan(src, ratio=0.4, align=16), out)
    onnx_side = tmp_path / "onnx"
    onnx_side.mkdir()
    _copy_side_files(src, onnx_side)  # what the ONNX exporter copies from a directory it did not write
    for d in (out, onnx_side):
        written = json.loads((d / "tokenizer_config.json").read_text())
        source = json.loads((src / "tokenizer_config.json").read_text())
        assert written == source | {"tokenizer_class": "PreTrainedTokenizerFast"}
        assert (d / "tokenizer.json").read_bytes() == (src / "tokenizer.json").read_bytes()
        loaded = AutoTokenizer.from_pretrained(d)
        assert type(loaded).__name__ in {"PreTrainedTokenizerFast", "TokenizersBackend"}  # 5.x aliases the two
        expected = AutoTokenizer.from_pretrained(src)(SENTENCE)["input_ids"]
        assert loaded(SENTENCE)["input_ids"] == expected and len(expected) > 5
        assert tokenizers.Tokenizer.from_file(str(d / "tokenizer.json")).encode(SENTENCE).ids == expected


def test_streamed_shards_are_the_bytes_save_file_writes(tmp_path):
    """The tensor-by-tensor shard writer produces exactly safetensors' own file (and loads back with it)."""
    from safetensors.torch import load_file, save_file

    from exporters.hf.shards import TensorSpec, plan_shards, write_shard

    g = torch.Generator().manual_seed(0)
    tensors = {"b.weight": torch.randn(5, 3, generator=g), "a.bias": torch.randn(7, generator=g),
               "c.scale": torch.randn((), generator=g)}
    save_file(tensors, str(tmp_path / "ref.safetensors"), metadata={"format": "pt"})
    [shard] = plan_shards([TensorSpec(n, t.dtype, tuple(t.shape)) for n, t in tensors.items()], 1 << 20)
    write_shard(tmp_path / "ours.safetensors", shard, tensors.__getitem__)
    assert (tmp_path / "ours.safetensors").read_bytes() == (tmp_path / "ref.safetensors").read_bytes()
    mixed = {"x": torch.randn(4, 4, generator=g).to(torch.bfloat16), "y": torch.arange(6), "z": torch.randn(3)}
    specs = [TensorSpec(n, t.dtype, tuple(t.shape)) for n, t in mixed.items()]
    shards = plan_shards(specs, 40)
    assert [[t.name for t in s.tensors] for s in shards] == [["x"], ["y"], ["z"]]  # 32 + 48 + 12 bytes, cap 40
    for i, s in enumerate(shards):
        write_shard(tmp_path / f"m{i}.safetensors", s, mixed.__getitem__)
        for name, t in load_file(str(tmp_path / f"m{i}.safetensors")).items():
            assert torch.equal(t, mixed[name]) and t.dtype == mixed[name].dtype
    with pytest.raises(ValueError, match="planned"):
        write_shard(tmp_path / "bad.safetensors", shards[0], lambda n: torch.zeros(2))
