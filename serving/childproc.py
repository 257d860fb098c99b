"""One way to run a piece of work in a fresh Python process and get its JSON result back.

vLLM reconfigures threads, signal handlers and transformers classes in the process that hosts it,
and a model's peak memory can only be measured in a process that holds nothing else, so several
steps run as ``python -m <module> REQUEST RESULT``: the parent writes the request as JSON, the child
(:func:`child_main`) calls one function on it and writes its JSON result atomically, and the parent
(:func:`run_json_child`) reads it back or raises with the child's last stderr lines.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from prunenet.errors import PruneNetError

__all__ = ["ChildProcessFailed", "run_json_child", "child_main"]


class ChildProcessFailed(PruneNetError):
    """A child process exited with an error or wrote no result."""


def run_json_child(module: str, request: Any, *, env: Mapping[str, str] | None = None,
                   timeout: float | None = None, what: str = "child process",
                   error: type[Exception] = ChildProcessFailed, tail_lines: int = 3) -> Any:
    """Run ``python -m module REQUEST RESULT`` on ``request``; returns the child's JSON result.

    A non-zero exit or a missing result raises ``error`` naming ``what``, the exit code and the
    child's last ``tail_lines`` stderr lines (the traceback's end, usually the message).
    """
    with tempfile.TemporaryDirectory(prefix="prunenet-child-") as tmp:
        req, res = Path(tmp) / "request.json", Path(tmp) / "result.json"
        req.write_text(json.dumps(request))
        proc = subprocess.run([sys.executable, "-m", module, str(req), str(res)], env=None if env is None else
                              dict(env), capture_output=True, text=True, timeout=timeout)
        if proc.returncode != 0 or not res.is_file():
            tail = " | ".join(proc.stderr.strip().splitlines()[-tail_lines:])
            raise error(f"{what} failed (exit {proc.returncode}): {tail[-400:]}")
        return json.loads(res.read_text())


def child_main(work: Callable[[Any], Any], argv: Sequence[str] | None = None) -> int:
    """The child side: ``work(request)`` and write its result; use as ``sys.exit(child_main(fn))``."""
    args = list(sys.argv[1:] if argv is None else argv)
    if len(args) != 2:
        print("internal entry point: python -m MODULE REQUEST.json RESULT.json", file=sys.stderr)
        return 2
    request, result = Path(args[0]), Path(args[1])
    value = work(json.loads(request.read_text()))
    tmp = result.with_suffix(".tmp")
    tmp.write_text(json.dumps(value))
    os.replace(tmp, result)
    return 0
