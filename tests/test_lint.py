"""The code stays ruff-clean (the project's lint settings live in pyproject.toml)."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def test_ruff_clean():
    ruff = shutil.which("ruff", path=str(Path(sys.executable).parent)) or shutil.which("ruff")
    if ruff is None:
        pytest.skip("ruff not installed (pip install -e '.[dev]')")
    proc = subprocess.run([ruff, "check", "prunenet", "exporters", "serving", "tests", "examples"], cwd=ROOT,
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout[-3000:]


def test_nothing_is_ever_unpickled():
    """Policies and plans are safetensors/JSON; no code path may unpickle (a pickle runs arbitrary code)."""
    import re

    risky = re.compile(r"\bpickle\.loads?\(|\bdill\.|\bjoblib\.load\(|\btorch\.load\((?![^)]*weights_only=True)")
    hits = [f"{path.relative_to(ROOT)}:{n}" for pkg in ("prunenet", "exporters", "serving", "examples")
            for path in (ROOT / pkg).rglob("*.py")
            for n, line in enumerate(path.read_text().splitlines(), 1) if risky.search(line)]
    assert not hits, hits
