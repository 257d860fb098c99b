"""Shared fixtures: tiny random models per family and the real default model (integration)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from tiny_models import TINY_CONFIGS, make_tiny_model

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory) -> dict[str, Path]:
    """One saved tiny random model directory per supported ``model_type``."""
    root = tmp_path_factory.mktemp("tiny")
    return {mt: make_tiny_model(mt, root / mt) for mt in TINY_CONFIGS}


@pytest.fixture(scope="session")
def default_model() -> Path:
    """The real default model (SmolLM2-135M-Instruct), built into the cache on first use."""
    from prunenet.source.resolve import resolve_model

    return resolve_model(None).path


def readme_quickstart() -> list[str]:
    """The README's quick-start block (the one that starts with ``prunenet-export``), comments removed."""
    import re

    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    for block in re.findall(r"```bash\n(.*?)```", readme, flags=re.S):
        lines = [line.split(" #", 1)[0].strip() for line in block.splitlines()]
        if lines and lines[0].startswith("prunenet-export"):
            return [line for line in lines if line]
    raise AssertionError("README has no quick-start block starting with prunenet-export")


@pytest.fixture(scope="session")
def quickstart(default_model, tmp_path_factory) -> tuple[Path, Path, dict]:
    """The README's main job, run as written (``--json`` appended) on the real default model.

    Returns the working directory, the output directory and the JSON result; later README lines run
    in the same working directory.
    """
    import json
    import shlex
    import subprocess
    import sys

    cwd = tmp_path_factory.mktemp("quickstart")
    args = shlex.split(readme_quickstart()[0])
    out = cwd / args[args.index("--out") + 1]
    bin_dir = Path(sys.executable).parent
    proc = subprocess.run([str(bin_dir / args[0]), *args[1:], "--json"], cwd=cwd, capture_output=True, text=True,
                          timeout=1200)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return cwd, out, json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="session")
def tiny_with_tokenizer(tmp_path_factory) -> Path:
    """A tiny llama with a word-level tokenizer of its vocabulary (self-text needs one)."""
    import importlib.util
    import sys

    path = make_tiny_model("llama", tmp_path_factory.mktemp("tok") / "llama")
    spec = importlib.util.spec_from_file_location(
        "scale_checkpoints", Path(__file__).resolve().parents[1] / "examples" / "scale_checkpoints.py")
    builder = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = builder  # its dataclasses look their module up
    spec.loader.exec_module(builder)
    builder.write_tokenizer(TINY_CONFIGS["llama"][1]["vocab_size"], path)
    return path
