"""vLLM general plugin: teach vLLM the ``Pruned<Base>ForCausalLM`` architectures of non-uniform exports.

vLLM calls :func:`register` in every process it starts (API server, engine core, workers), through
the ``vllm.general_plugins`` entry point declared in ``pyproject.toml``. It must therefore be cheap
and re-entrant: it registers lazy ``"module:Class"`` strings (no torch or vLLM model code is imported
here; vLLM imports :mod:`serving.vllm.models` only when a pruned directory is actually loaded) and
never overrides an architecture vLLM already knows.
"""

from __future__ import annotations

import logging

from serving.vllm.models import MODELS_MODULE, pruned_architectures

__all__ = ["register", "register_classes", "PLUGIN_NAME"]

PLUGIN_NAME = "prunenet"
"""The entry-point name (what ``VLLM_PLUGINS`` must list when a user restricts plugins)."""

logger = logging.getLogger(__name__)


def register() -> list[str]:
    """Register every pruned architecture vLLM does not know yet; returns the ones added by this call."""
    from vllm import ModelRegistry

    known = set(ModelRegistry.get_supported_archs())
    added = []
    for arch in pruned_architectures():
        if arch not in known:
            ModelRegistry.register_model(arch, f"{MODELS_MODULE}:{arch}")
            added.append(arch)
    if added:
        logger.debug("prunenet: registered %s", ", ".join(added))
    return added


def register_classes() -> None:
    """Register the classes themselves (not lazy strings), for a process that runs vLLM's engine in-process.

    The lazy form makes vLLM inspect each class in yet another subprocess.
    """
    from vllm import ModelRegistry

    from serving.vllm import models

    for arch in pruned_architectures():
        ModelRegistry.register_model(arch, getattr(models, arch))
