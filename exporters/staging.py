"""Atomic output directories: build in a hidden sibling, then rename into place.

An interrupted or failed export leaves nothing at ``out``; a stale staging directory left by a
killed process (its PID no longer alive) is removed by the next run.
"""

from __future__ import annotations

import contextlib
import os
import shutil
from collections.abc import Iterator
from pathlib import Path

from prunenet.errors import OutputExistsError
from prunenet.interrupts import check as check_interrupts

__all__ = ["staged_output", "check_output_dir", "clean_stale_staging"]

_TAG = ".prunenet-tmp-"


def check_output_dir(out: Path, *, force: bool, source: Path | None = None) -> Path:
    """Refuse a non-empty ``out`` (unless ``force``), a file, or a path inside the source model."""
    out = Path(out).expanduser().resolve()
    if source is not None:
        src = Path(source).resolve()
        if out == src or src in out.parents:
            raise OutputExistsError(f"--out {out} is inside the source model directory; choose another path")
        if out in src.parents:
            raise OutputExistsError(f"--out {out} contains the source model; choose another path")
    if out.exists() and not out.is_dir():
        raise OutputExistsError(f"--out {out} is a file; choose a directory path")
    if out.is_dir() and any(out.iterdir()) and not force:
        raise OutputExistsError(f"--out {out} exists and is not empty; pass --force to replace it")
    return out


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def clean_stale_staging(out: Path) -> list[Path]:
    """Remove staging directories of ``out`` whose owning process is gone."""
    removed = []
    for tmp in out.parent.glob(f".{out.name}{_TAG}*"):
        pid = tmp.name.rsplit("-", 1)[-1]
        if pid.isdigit() and not _pid_alive(int(pid)):
            shutil.rmtree(tmp, ignore_errors=True)
            removed.append(tmp)
    return removed


@contextlib.contextmanager
def staged_output(out: Path, *, force: bool = False, source: Path | None = None) -> Iterator[Path]:
    """Yield a staging directory that becomes ``out`` only if the block completes."""
    out = check_output_dir(out, force=force, source=source)
    out.parent.mkdir(parents=True, exist_ok=True)
    clean_stale_staging(out)
    tmp = out.parent / f".{out.name}{_TAG}{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        yield tmp
        check_interrupts()  # a signal some library swallowed still cancels the commit
        if out.exists():
            old = out.parent / f".{out.name}{_TAG}old-{os.getpid()}"
            os.replace(out, old)
            os.replace(tmp, out)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
