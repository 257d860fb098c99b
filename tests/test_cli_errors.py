"""Bad input: every case is a clear error, a non-zero exit, no traceback and no output directory."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from prunenet.cli import main


def _run(args: list[str]):
    return CliRunner().invoke(main, ["export", "--self-data", "0", *args])


def _assert_clean_failure(result, out: Path, expect: str) -> None:
    assert result.exit_code != 0, result.output
    assert "Traceback" not in result.output, result.output
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(result.exception)
    assert expect.lower() in result.output.lower(), result.output
    assert not out.exists()


@pytest.fixture()
def broken_models(tiny_models, tmp_path) -> dict[str, Path]:
    src = tiny_models["llama"]
    made = {}
    made["no_config"] = tmp_path / "no_config"
    made["no_config"].mkdir()
    shutil.copy(src / "model.safetensors", made["no_config"])
    made["bert"] = tmp_path / "bert"
    shutil.copytree(src, made["bert"])
    cfg = json.loads((src / "config.json").read_text())
    (made["bert"] / "config.json").write_text(json.dumps({**cfg, "model_type": "bert"}))
    made["truncated"] = tmp_path / "truncated"
    shutil.copytree(src, made["truncated"])
    data = (src / "model.safetensors").read_bytes()
    (made["truncated"] / "model.safetensors").write_bytes(data[: len(data) // 2])
    made["corrupt_header"] = tmp_path / "corrupt_header"
    shutil.copytree(src, made["corrupt_header"])
    (made["corrupt_header"] / "model.safetensors").write_bytes(b"\xff" * 64)
    made["file"] = tmp_path / "weights.bin"
    made["file"].write_bytes(b"x")
    made["gguf_truncated"] = tmp_path / "model.gguf"
    made["gguf_truncated"].write_bytes(b"GGUF\x03\x00\x00\x00" + b"\x00" * 20)
    made["gguf_unsupported_quant"] = _gguf_with_quant(tmp_path / "q8_1.gguf")
    return made


def _gguf_with_quant(path: Path) -> Path:
    """A well-formed llama GGUF whose tensor uses Q8_1, a type transformers cannot dequantize."""
    import gguf
    import numpy as np

    w = gguf.GGUFWriter(str(path), "llama")
    w.add_block_count(1)
    w.add_context_length(64)
    w.add_embedding_length(32)
    w.add_feed_forward_length(64)
    w.add_head_count(1)
    w.add_tokenizer_model("llama")
    w.add_token_list(["<unk>", "<s>", "</s>", "a", "b"])
    w.add_token_scores([0.0] * 5)
    w.add_token_types([2, 3, 3, 1, 1])
    w.add_tensor("token_embd.weight", np.zeros((4, 40), dtype=np.uint8), raw_shape=(4, 40),
                 raw_dtype=gguf.GGMLQuantizationType.Q8_1)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


CASES = [
    (["--ratio", "1.0"], "ratio"),
    (["--ratio", "-0.1"], "ratio"),
    (["--ratio", "abc"], "ratio"),
    (["--ratio", "0.3", "--align", "0"], "align"),
    (["--ratio", "0.3", "--align", "-4"], "align"),
    (["--ratio", "0.3", "--episodes", "0"], "episodes"),
    (["--ratio", "0.3", "--target", "tflite"], "target"),
    (["--ratio", "0.3", "--method", "sparsegpt"], "method"),
    (["--ratio", "0.3", "--allocation", "greedy"], "allocation"),
    (["--ratio", "0.3", "--align", "256"], "width step"),
    (["--ratio", "0.3", "--tp", "5", "--align", "64"], "attention heads"),  # vLLM could not shard 2 heads by 5
]


@pytest.mark.parametrize("args, expect", CASES)
def test_bad_options(tiny_models, tmp_path, args, expect):
    out = tmp_path / "out"
    result = _run(["--model", str(tiny_models["llama"]), "--out", str(out), "--no-eval", *args])
    _assert_clean_failure(result, out, expect)
    lines = result.output.strip().splitlines()  # usage errors too: one line, not click's three
    assert len(lines) == 1 and lines[0].startswith("error:"), result.output
    assert (result.exit_code == 2) == ("--help" in lines[0])  # usage errors point at --help


@pytest.mark.parametrize("kind, expect", [
    ("missing", "no such file"), ("file", "is a file"), ("no_config", "config.json"),
    ("bert", "not supported"), ("truncated", "corrupt"), ("corrupt_header", "corrupt"),
    ("gguf_truncated", "gguf"), ("gguf_unsupported_quant", "Q8_1"),
])
def test_bad_models(broken_models, tmp_path, kind, expect, monkeypatch):
    monkeypatch.setenv("PRUNENET_CACHE", str(tmp_path / "cache"))
    model = tmp_path / "does-not-exist" if kind == "missing" else broken_models[kind]
    out = tmp_path / "out"
    result = _run(["--model", str(model), "--ratio", "0.3", "--out", str(out), "--no-eval", "--episodes", "1"])
    _assert_clean_failure(result, out, expect)
    # one line (a third-party progress bar drawn before the failure in this long-lived test process aside;
    # the CLI silences those bars in a fresh process)
    lines = [line for line in result.output.strip().splitlines() if "it/s]" not in line]
    assert len(lines) == 1 and lines[0].startswith("error:"), result.output


def test_unreadable_model_dir(tiny_models, tmp_path):
    """As root (CI containers) the CLI runs without the capabilities that let root read a chmod-0 directory."""
    prefix: list[str] = []
    if os.geteuid() == 0:
        if not shutil.which("setpriv"):
            pytest.skip("root reads every directory and setpriv (util-linux) is missing")
        prefix = ["setpriv", "--bounding-set=-dac_override,-dac_read_search", "--"]
    locked = tmp_path / "locked"
    shutil.copytree(tiny_models["llama"], locked)
    locked.chmod(0)
    cmd = [*prefix, sys.executable, "-m", "prunenet.cli.export", "--model", str(locked), "--ratio", "0.3",
           "--out", str(tmp_path / "o"), "--self-data", "0", "--no-eval"]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    finally:
        locked.chmod(0o755)
    assert proc.returncode == 1, proc.stderr[-800:]
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip() and "RuntimeWarning" not in ln]
    assert lines == [f"error: {locked}: directory is not readable (check its permissions)"], proc.stderr
    assert not (tmp_path / "o").exists()


def test_foreign_and_corrupt_policy_and_plan(tiny_models, tmp_path):
    first = tmp_path / "first"
    ok = _run(["--model", str(tiny_models["qwen2"]), "--ratio", "0.3", "--align", "16", "--episodes", "1",
               "--out", str(first), "--no-eval"])
    assert ok.exit_code == 0, ok.output
    from prunenet.policy.network import PolicyNetwork, save_policy

    other_shape = tmp_path / "other.safetensors"
    save_policy(PolicyNetwork(8, 77), other_shape, {"method": "prunenet"})
    out = tmp_path / "out"
    for args, expect in [
        (["--policy", str(other_shape)], "ffn width 77"),
        (["--policy", str(first / "config.json")], "policy"),
        (["--plan", str(first / "prunenet-plan.json")], "another model"),
    ]:
        result = _run(["--model", str(tiny_models["opt"]), "--ratio", "0.3", "--align", "16", "--out", str(out),
                       "--no-eval", *args])
        _assert_clean_failure(result, out, expect)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(ratio=st.one_of(st.floats(max_value=-1e-9, allow_nan=False), st.floats(min_value=1.0, allow_nan=False),
                       st.just(float("nan"))))
def test_property_out_of_range_ratios_are_rejected(tiny_models, tmp_path, ratio):
    out = tmp_path / "out"
    result = _run(["--model", str(tiny_models["llama"]), "--ratio", repr(ratio), "--out", str(out)])
    assert result.exit_code in (1, 2) and "ratio" in result.output.lower() and not out.exists()


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(align=st.integers(max_value=0))
def test_property_nonpositive_align_is_rejected(tiny_models, tmp_path, align):
    out = tmp_path / "out"
    result = _run(["--model", str(tiny_models["llama"]), "--ratio", "0.3", "--align", str(align), "--out", str(out)])
    assert result.exit_code == 2 and "align" in result.output.lower() and not out.exists()


def test_a_dtype_the_target_cannot_compute_on_the_cpu_is_refused_before_planning(tiny_models, tmp_path, monkeypatch):
    """ONNX on the CPU is fp32: --dtype bfloat16 is refused, not silently written as fp32."""
    from prunenet.planning import planner

    monkeypatch.setattr(planner, "make_plan", lambda *a, **k: pytest.fail("planning ran"))
    out = tmp_path / "out"
    result = _run(["--model", str(tiny_models["llama"]), "--ratio", "0.3", "--target", "onnx", "--device", "cpu",
                   "--dtype", "bfloat16", "--out", str(out)])
    _assert_clean_failure(result, out, "--target onnx computes in float32 on the CPU, not bfloat16")
