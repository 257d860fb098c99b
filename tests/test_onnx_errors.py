"""Bad ONNX input (issue 19): one line, non-zero exit, nothing written, refused before any planning."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from click.testing import CliRunner

from prunenet.cli import main


@pytest.fixture()
def no_planning(monkeypatch):
    """Planning is the first real work: a refusal must come before it."""
    import prunenet.planning.planner as planner

    def refuse(*args, **kwargs):
        raise AssertionError("planning started before the bad input was refused")

    monkeypatch.setattr(planner, "make_plan", refuse)


def _fails_cleanly(args: list[str], out: Path, expect: str) -> None:
    result = CliRunner().invoke(main, ["export", "--self-data", "0", "--no-eval", "--out", str(out), *args])
    assert result.exit_code != 0, result.output
    assert "Traceback" not in result.output and "AssertionError" not in result.output, result.output
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(result.exception)
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:"), result.output
    assert expect.lower() in lines[0].lower(), result.output
    assert not out.exists()


@pytest.mark.parametrize("args, expect", [
    (["--quant", "fp8"], "fp8 is not available for --target onnx"),
    (["--quant", "w4a16", "--quant-group", "128"], "does not divide"),  # hidden size 64
    (["--quant", "w4a16", "--quant-group", "48"], "MatMulNBits takes"),
    (["--quant", "w4a16", "--align", "8"], "not a multiple of the block size 32"),
    (["--quant-group", "32"], "needs --quant"),
])
def test_bad_onnx_quant_options(tiny_models, tmp_path, no_planning, args, expect):
    _fails_cleanly(["--model", str(tiny_models["llama"]), "--ratio", "0.3", "--target", "onnx", *args],
                   tmp_path / "out", expect)


@pytest.mark.parametrize("model_type", ["opt", "falcon", "phi3"])
def test_quant_on_a_family_the_builder_does_not_build(tiny_models, tmp_path, no_planning, model_type):
    _fails_cleanly(["--model", str(tiny_models[model_type]), "--ratio", "0.3", "--target", "onnx",
                    "--quant", "w4a16"], tmp_path / "out", "llama, mistral, qwen2, qwen3")


def test_unknown_family_names_the_supported_ones(tiny_models, tmp_path, no_planning):
    src = tmp_path / "src"
    shutil.copytree(tiny_models["llama"], src)
    config = json.loads((src / "config.json").read_text())
    (src / "config.json").write_text(json.dumps(config | {"model_type": "gpt2"}))
    _fails_cleanly(["--model", str(src), "--ratio", "0.3", "--target", "onnx"], tmp_path / "out", "gpt2")
