"""The ONNX export cache: an HF directory's graph, built once per content and reused.

``prunenet bench --engine onnxruntime DIR`` needs a graph for a directory that may hold only
safetensors. The export is written under ``$PRUNENET_CACHE/onnx/<name>-<fingerprint>`` atomically
and under a file lock, so concurrent runs build it once; the fingerprint covers the config, the plan
and the weight files, so a re-export or re-prune gets a new entry.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

from exporters.onnx import export as onnx_export  # module attribute: tests replace export_onnx
from exporters.onnx.manifest import REPORT_FILE
from exporters.staging import staged_output
from prunenet.progress import status

__all__ = ["ONNX_CACHE_FORMAT", "onnx_dir_for"]

ONNX_CACHE_FORMAT = 4
"""Bump when the exporter changes what it writes, so stale cached graphs are rebuilt."""


def onnx_dir_for(hf_dir: Path, *, device: str = "cpu", validate: bool = True) -> Path:
    """``hf_dir`` itself if it holds model.onnx, else its cached export (built once, atomically, under a lock)."""
    if (hf_dir / "model.onnx").is_file():
        return hf_dir
    from filelock import FileLock

    from prunenet.source.resolve import cache_dir

    root = cache_dir() / "onnx"
    root.mkdir(parents=True, exist_ok=True)
    entry = root / _fingerprint(hf_dir, device)
    with FileLock(str(entry) + ".lock"):
        if (entry / REPORT_FILE).is_file() and (entry / "model.onnx").is_file():
            return entry
        with status(f"Exporting {hf_dir.name} to ONNX (cached in {entry})"), staged_output(entry, force=True) as tmp:
            onnx_export.export_onnx(hf_dir, tmp, device=device, validate=validate)
    return entry


def _fingerprint(hf_dir: Path, device: str) -> str:
    """Config, plan and weight files (name, size, mtime): a re-export or re-prune gets a new entry."""
    from prunenet.version import __version__

    h = hashlib.sha256(f"{ONNX_CACHE_FORMAT}:{__version__}:{device}".encode())
    for name in ("config.json", "prunenet-plan.json"):
        if (hf_dir / name).is_file():
            h.update((hf_dir / name).read_bytes())
    for f in sorted(hf_dir.glob("*.safetensors")):
        st = f.stat()
        h.update(f"{f.name}:{st.st_size}:{st.st_mtime_ns}".encode())
    return f"{hf_dir.name}-{h.hexdigest()[:16]}"
