"""``"module:function"`` references, imported when used: registries (targets, healing modes) name their
code this way so that listing them (``--help``) imports nothing heavy."""

from __future__ import annotations

import importlib
from typing import Any

__all__ = ["load_ref"]


def load_ref(ref: str) -> Any:
    module, _, name = ref.partition(":")
    return getattr(importlib.import_module(module), name)
