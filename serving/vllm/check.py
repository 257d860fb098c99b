"""Prove cheaply that vLLM (with our plugin) resolves an exported directory to the intended class.

:func:`check_vllm_resolves` is what ``--target vllm`` runs after writing: it reads ``config.json``,
loads vLLM's general plugins (ours among them), resolves the architecture in vLLM's
``ModelRegistry`` and imports the class, without loading weights or starting an engine.
Importable without vLLM: a missing or broken vLLM raises :class:`VllmUnavailable`, which the
caller can downgrade to a warning.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any

from prunenet.arch import ARCH_SPECS
from serving.vllm.directory import ConfigView, read_config, stray_files_message, stray_weight_files
from serving.vllm.errors import NOT_INSTALLED, VllmResolveError, VllmUnavailable
from serving.vllm.models import VLLM_FAMILIES, layer_widths

__all__ = ["check_vllm_resolves"]


def _import_registry() -> Any:
    if importlib.util.find_spec("vllm") is None:
        raise VllmUnavailable(NOT_INSTALLED)
    try:
        from vllm import ModelRegistry
        from vllm.plugins import load_general_plugins
    except Exception as exc:  # e.g. a CUDA torchvision next to a CPU torch
        first = str(exc).splitlines()[0][:160] if str(exc) else exc.__class__.__name__
        raise VllmUnavailable(f"vLLM is installed but cannot be imported ({first})") from None
    from serving.vllm.plugin import register

    load_general_plugins()
    register()  # also when VLLM_PLUGINS leaves us out: the check is about our classes
    return ModelRegistry


def _check_widths(config: dict[str, Any], arch: str) -> None:
    """Pruned archs need consistent per-layer widths; stock ones must fit vLLM's stock model."""
    spec = ARCH_SPECS.get(str(config.get("model_type")))
    if spec is None:
        return
    family = VLLM_FAMILIES.get(str(config.get("model_type")))
    if arch == spec.pruned_architecture:
        try:
            layer_widths(ConfigView(config), spec.num_layers(config))
        except ValueError as exc:
            raise VllmResolveError(str(exc)) from None
    elif family is not None and family.stock_ffn_ratio:
        expected = family.stock_ffn_ratio * int(config["hidden_size"])
        if spec.width(config) != expected:
            raise VllmResolveError(
                f"vLLM's stock {arch} always builds an FFN of {family.stock_ffn_ratio} x hidden_size = {expected}, "
                f"this export has {spec.width(config)}; export with per-layer widths (architecture "
                f"{spec.pruned_architecture}, served by the prunenet plugin) instead"
            )


def check_vllm_resolves(out_dir: Path | str) -> str:
    """Return the vLLM model class name that will serve ``out_dir``; raise if there is none.

    Raises :class:`VllmUnavailable` when vLLM cannot be imported and :class:`VllmResolveError` when
    the architecture is unknown to vLLM, its class cannot be imported, the widths do not fit it, or
    the directory holds safetensors files vLLM would mistake for weights.
    """
    config = read_config(Path(out_dir))
    stray = stray_weight_files(Path(out_dir))
    if stray:
        raise VllmResolveError(stray_files_message(Path(out_dir), stray))
    archs = list(config.get("architectures") or [])
    if not archs:
        raise VllmResolveError(f"{out_dir}/config.json lists no 'architectures'")
    registry = _import_registry()
    supported = set(registry.get_supported_archs())
    arch = next((a for a in archs if a in supported), None)
    if arch is None:
        raise VllmResolveError(f"vLLM does not know architecture {', '.join(archs)} (is the prunenet plugin "
                               "installed in the environment that runs vLLM?)")
    _check_widths(config, arch)
    try:
        cls = registry.models[arch].load_model_cls()
    except Exception as exc:
        first = str(exc).splitlines()[0][:200] if str(exc) else exc.__class__.__name__
        raise VllmResolveError(f"vLLM resolves {arch} but its class cannot be imported ({first})") from None
    return cls.__name__
