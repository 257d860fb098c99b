"""``--quant`` bad input: one line, non-zero exit, nothing written, before any planning."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from click.testing import CliRunner

from prunenet.cli import main


def _run(model: Path, out: Path, *args: str):
    return CliRunner().invoke(main, ["export", "--model", str(model), "--self-data", "0", "--episodes", "1",
                                     "--no-eval", "--ratio", "0.3", "--out", str(out), *args])


def _edited(src: Path, dst: Path, **changes) -> Path:
    shutil.copytree(src, dst)
    cfg = json.loads((src / "config.json").read_text())
    (dst / "config.json").write_text(json.dumps({**cfg, **changes}))
    return dst


@pytest.mark.parametrize(("args", "expect"), [
    (["--quant", "int3"], "--quant"),
    (["--quant", "w4a16", "--quant-group", "48"], "does not divide K=64"),
    (["--quant", "w4a16", "--quant-group", "128"], "does not divide K=64"),
    (["--quant", "w8a8", "--quant-group", "64"], "grouped schemes"),
    (["--quant-group", "64"], "needs --quant w4a16"),
])
def test_bad_quant_options(tiny_models, tmp_path, args, expect, monkeypatch):
    import prunenet.planning.planner as planner

    monkeypatch.setattr(planner, "make_plan", lambda *a, **k: pytest.fail("planned before refusing"))
    out = tmp_path / "out"
    result = _run(tiny_models["llama"], out, *args)
    assert result.exit_code != 0 and "Traceback" not in result.output, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:") and expect in lines[0], result.output
    assert not out.exists()


@pytest.mark.parametrize("method", ["gptq", "awq", "compressed-tensors", "bitsandbytes"])
def test_an_already_quantized_source_is_refused_with_quant(tiny_models, tmp_path, method):
    src = _edited(tiny_models["llama"], tmp_path / "src", quantization_config={"quant_method": method, "bits": 4})
    out = tmp_path / "out"
    result = _run(src, out, "--quant", "w8a8")
    assert result.exit_code == 1 and f"already quantized ({method})" in result.output, result.output
    assert not out.exists()


def test_tp_must_divide_attention_heads(tiny_models, tmp_path):
    src = _edited(tiny_models["llama"], tmp_path / "src", num_attention_heads=4, num_key_value_heads=2)
    out = tmp_path / "out"
    result = _run(src, out, "--tp", "8", "--align", "8")
    assert result.exit_code == 1 and "4 attention heads" in result.output, result.output
    assert not out.exists()
    bad_kv = _edited(tiny_models["llama"], tmp_path / "src2", num_attention_heads=6, num_key_value_heads=4)
    result = _run(bad_kv, out, "--tp", "3", "--align", "8")
    assert result.exit_code == 1 and "4 key/value heads" in result.output, result.output
