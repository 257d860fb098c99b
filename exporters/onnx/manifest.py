"""``prunenet-onnx.json``: the report an ONNX export directory carries about itself.

It records how the graph was made and validated and lists the directory's files. The list is taken
when the report is written, of the directory as it will be committed: files of an input directory
that lives inside the output (the ``--target onnx`` intermediate HF export, removed before the
commit) are left out, and the report names itself.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

__all__ = ["REPORT_FILE", "write_manifest", "read_manifest", "listed_files", "refresh_manifest"]

REPORT_FILE = "prunenet-onnx.json"
SCRATCH_PREFIX = ".prunenet-"


def listed_files(out_dir: Path, *, exclude: tuple[Path, ...] = ()) -> list[str]:
    """Every file under ``out_dir`` (relative, sorted) except those under ``exclude`` and the export's
    scratch directories (``.prunenet-*``: healed or rounded tensors, the intermediate HF export, removed
    before the commit), plus the report."""
    out_dir = Path(out_dir).resolve()
    skipped = [Path(p).resolve() for p in exclude]
    files = {REPORT_FILE}
    for path in out_dir.rglob("*"):
        scratch = path.relative_to(out_dir).parts[0].startswith(SCRATCH_PREFIX)
        if path.is_file() and not scratch and not any(path == s or s in path.parents for s in skipped):
            files.add(str(path.relative_to(out_dir)))
    return sorted(files)


def write_manifest(out_dir: Path, report: dict[str, Any], *, exclude: tuple[Path, ...] = ()) -> dict[str, Any]:
    """Write ``report`` plus its ``files`` list; returns the report as written."""
    report = {**report, "files": listed_files(out_dir, exclude=exclude)}
    (Path(out_dir) / REPORT_FILE).write_text(json.dumps(report, indent=2) + "\n")
    return report


def read_manifest(out_dir: Path) -> dict[str, Any]:
    """The report of ``out_dir``; empty when there is none (a graph exported by another tool)."""
    try:
        return json.loads((Path(out_dir) / REPORT_FILE).read_text())
    except (OSError, ValueError):
        return {}


def refresh_manifest(out_dir: Path) -> None:
    """Re-list the files of an ONNX directory whose report exists (files added after the export: model card,
    policy); a directory without a report is left alone."""
    report = read_manifest(out_dir)
    if report:
        write_manifest(out_dir, {k: v for k, v in report.items() if k != "files"})
