"""Pre-flight checks of a model directory, before vLLM spends a long start-up rejecting it.

They read ``config.json`` and the file listing only (no vLLM, no torch), so ``prunenet serve`` and the
``--target vllm`` check fail in one line, and the checks are importable where vLLM is not installed.
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path
from typing import Any

from prunenet.arch import is_pruned_architecture
from serving.vllm.errors import NOT_INSTALLED, ServerError, VllmResolveError, VllmUnavailable
from serving.vllm.models import layer_widths

__all__ = ["ConfigView", "read_config", "stray_weight_files", "stray_files_message", "check_servable"]


class ConfigView:
    """Attribute view of a config.json dict (what :func:`serving.vllm.models.layer_widths` expects)."""

    def __init__(self, data: dict[str, Any]) -> None:
        self.__dict__.update(data)


def read_config(out_dir: Path) -> dict[str, Any]:
    config = Path(out_dir) / "config.json"
    try:
        return json.loads(config.read_text())
    except FileNotFoundError:
        raise VllmResolveError(f"{out_dir}: no config.json; not a model directory") from None
    except (OSError, ValueError) as exc:
        raise VllmResolveError(f"{config}: unreadable or not JSON ({exc.__class__.__name__})") from None


def stray_weight_files(out_dir: Path) -> list[str]:
    """``*.safetensors`` files vLLM would load as weights although they are not the model's.

    Without ``model.safetensors.index.json`` vLLM's loader reads *every* ``*.safetensors`` file of
    the directory (with one, only the files it names), so e.g. a policy checkpoint saved next to a
    single-file model fails the load with "no module or parameter named ...".
    """
    out_dir = Path(out_dir)
    if (out_dir / "model.safetensors.index.json").is_file():
        return []
    files = sorted(p.name for p in out_dir.glob("*.safetensors"))
    return [] if len(files) <= 1 else [f for f in files if f != "model.safetensors"]


def stray_files_message(out_dir: Path, stray: list[str]) -> str:
    return (f"{out_dir}: vLLM would load {', '.join(stray)} as model weights (without "
            "model.safetensors.index.json it reads every *.safetensors file); move it out or write an index")


def check_servable(out_dir: Path | str) -> dict:
    """One-line errors, before vLLM starts, for directories it would reject after a long start-up."""
    path = Path(out_dir)
    if not path.exists():
        raise ServerError(f"{path}: no such directory")
    if not path.is_dir():
        raise ServerError(f"{path}: is not a directory; pass an exported model directory")
    try:
        config = read_config(path)
    except VllmResolveError as exc:
        raise ServerError(str(exc)) from None
    if not list(path.glob("*.safetensors")):
        raise ServerError(f"{path}: no .safetensors weights; not an exported model directory")
    stray = stray_weight_files(path)
    if stray:
        raise ServerError(stray_files_message(path, stray))
    if any(is_pruned_architecture(a) for a in config.get("architectures") or []):
        try:
            layer_widths(ConfigView(config), int(config.get("num_hidden_layers", -1)))
        except ValueError as exc:
            raise ServerError(f"{path}: {exc}") from None
    if importlib.util.find_spec("vllm") is None:
        raise VllmUnavailable(NOT_INSTALLED)
    return config
