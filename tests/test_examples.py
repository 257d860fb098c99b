"""The examples and the README's CLI reference run as documented (on a tiny model for speed)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from prunenet.cli import main

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


def _env() -> dict:
    return {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}", "SELF_DATA": "0", "ALIGN": "16"}


def test_python_api_example(tiny_with_tokenizer, tmp_path):
    """The one-call API runs the whole job: the written directory carries the quality report's numbers."""
    import re

    proc = subprocess.run([sys.executable, str(ROOT / "examples" / "python_api.py"), str(tiny_with_tokenizer),
                           str(tmp_path / "out")], capture_output=True, text=True, env=_env(), timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    kl = float(re.search(r"KL (\S+)", proc.stdout).group(1))
    assert kl > 0 and "fewer parameters" in proc.stdout
    assert f"{kl:.4f}"[:5] in (tmp_path / "out" / "README.md").read_text()  # the model card got the report


def test_reuse_policy_example(tiny_models, tmp_path):
    env = {**_env(), "OUT": str(tmp_path / "reuse")}
    proc = subprocess.run(["bash", str(ROOT / "examples" / "reuse_policy.sh"), "--model", str(tiny_models["qwen3"]),
                           "--self-data", "0", "--align", "16", "--episodes", "2", "--no-eval", "-q"],
                          capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    for ratio in ("0.1", "0.2", "0.3"):
        assert (tmp_path / "reuse" / ratio / "prunenet-plan.json").is_file()
    assert not (tmp_path / "reuse" / "0.1" / "prunenet-policy.safetensors").exists()  # reused, not retrained


def test_readme_options_exist_and_help_ends_with_examples():
    readme = (ROOT / "README.md").read_text()
    documented = set(re.findall(r"`(--[a-z][a-z-]+)", readme))
    help_text = CliRunner().invoke(main, ["export", "--help"]).output
    missing = {opt for opt in documented if opt not in help_text}
    other = "".join(CliRunner().invoke(main, [c, "--help"]).output for c in ("eval", "bench", "serve"))
    assert not {opt for opt in missing if opt not in other and opt != "--version"}, missing
    for cmd in ("export", "eval", "bench", "serve"):
        assert "Example" in CliRunner().invoke(main, [cmd, "--help"]).output, cmd
    assert CliRunner().invoke(main, ["--version"]).output.startswith("prunenet, version")


@pytest.mark.integration
@pytest.mark.vllm
@pytest.mark.slow
def test_prune_and_serve_example(default_model, tmp_path):
    """examples/prune_and_serve.sh on a ready export (the pruning step is the main job, tested elsewhere)."""
    pytest.importorskip("vllm")
    from plans import outlier_plan

    from exporters.hf import write_hf_checkpoint
    from serving.vllm.server import free_port

    out = tmp_path / "smol-pruned"
    write_hf_checkpoint(default_model, outlier_plan(default_model, ratio=0.3, align=64), out)
    port = free_port()
    proc = subprocess.run(["bash", str(ROOT / "examples" / "prune_and_serve.sh"), str(out)], capture_output=True,
                          text=True, env={**_env(), "PORT": str(port)}, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert '"object":"text_completion"' in proc.stdout.replace(" ", "")
    assert '"object":"chat.completion"' in proc.stdout.replace(" ", "")
