"""Files copied beside exported weights: the tokenizer, chat template and generation config.

They are copied byte for byte, with one exception: a ``tokenizer_config.json`` that names
``TokenizersBackend`` (what transformers 5 writes) is rewritten to name ``PreTrainedTokenizerFast``.
transformers 4.5x, which optimum-onnx 0.1.0 pins, has no ``TokenizersBackend`` class and fails in
``AutoTokenizer.from_pretrained``; both 4.5x and 5.x know ``PreTrainedTokenizerFast`` and tokenize a
``tokenizer.json``-backed tokenizer identically with it.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from prunenet.source.loaders import TOKENIZER_FILES

__all__ = ["SIDE_FILES", "PORTABLE_TOKENIZER_CLASS", "copy_side_files"]

SIDE_FILES = (*TOKENIZER_FILES, "generation_config.json")
"""Copied from the source when present, in this order."""
PORTABLE_TOKENIZER_CLASS = "PreTrainedTokenizerFast"
_BACKEND_ONLY = "TokenizersBackend"
"""transformers 5's generic fast tokenizer; unknown to transformers 4.5x."""


def copy_side_files(source: Path, out: Path, names: tuple[str, ...] = SIDE_FILES) -> list[str]:
    """Copy every ``names`` file ``source`` has into ``out``; returns the names copied."""
    copied = []
    for name in names:
        if not (source / name).is_file():
            continue
        if name == "tokenizer_config.json":
            _write_tokenizer_config(source / name, out / name)
        else:
            shutil.copyfile(source / name, out / name)
        copied.append(name)
    return copied


def _write_tokenizer_config(src: Path, dst: Path) -> None:
    """Byte copy unless the class is transformers 5's ``TokenizersBackend`` (see the module docstring)."""
    text = src.read_text()
    try:
        config = json.loads(text)
    except ValueError:  # not ours to repair; transformers will report it
        config = None
    if (isinstance(config, dict) and config.get("tokenizer_class") == _BACKEND_ONLY
            and (src.parent / "tokenizer.json").is_file()):
        config["tokenizer_class"] = PORTABLE_TOKENIZER_CLASS
        text = json.dumps(config, indent=2, ensure_ascii=False) + "\n"
    dst.write_text(text)
