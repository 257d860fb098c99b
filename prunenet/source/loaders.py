"""The one way this project loads a Hugging Face model or tokenizer from a directory.

Every reader (planner, validation, evaluation, benchmarks, the ONNX exporter) goes through
:func:`load_causal_lm`, so the remote-code decision is made once: only directories that ship our
own ``modeling_pruned.py`` (per-layer widths) get ``trust_remote_code``; anything else is loaded
with the stock transformers classes.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from prunenet.arch import MODELING_FILE
from prunenet.errors import ModelSourceError, PruneNetError

__all__ = ["TOKENIZER_FILES", "needs_remote_code", "has_tokenizer", "load_causal_lm", "load_tokenizer",
           "TokenizerMissing"]

TOKENIZER_FILES = (
    "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "tokenizer.model",
    "vocab.json", "merges.txt", "vocab.txt", "added_tokens.json", "chat_template.jinja", "chat_template.json",
)
"""Every file a tokenizer may consist of (copied beside exported weights)."""
_TOKENIZER_MARKERS = ("tokenizer.json", "tokenizer.model", "vocab.json", "vocab.txt")
"""Any one of these means the directory carries a loadable tokenizer."""


class TokenizerMissing(PruneNetError):
    """No directory of those given carries a tokenizer."""


def needs_remote_code(model_dir: Path | str) -> bool:
    """Our per-layer-width directories ship ``modeling_pruned.py``; nothing else gets remote code."""
    return (Path(model_dir) / MODELING_FILE).is_file()


def has_tokenizer(model_dir: Path | str) -> bool:
    return any((Path(model_dir) / f).is_file() for f in _TOKENIZER_MARKERS)


def load_causal_lm(path: Path | str, *, dtype: Any = None, device: Any = "cpu", check: bool = True, **kwargs):
    """Load a causal LM for inference (fp32 unless ``dtype``), eval mode, on ``device``.

    ``device=None`` leaves placement to ``kwargs`` (an accelerate ``device_map`` with offload).
    ``check`` turns transformers' many exception types for a malformed checkpoint into one line.
    """
    import torch
    from transformers import AutoModelForCausalLM

    from prunenet.progress import status

    path = Path(path)
    if check:
        from prunenet.source.resolve import check_model_dir

        check_model_dir(path)
    dtype = torch.float32 if dtype is None else dtype
    try:
        with status(f"Loading {path.name or path}"):
            model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype, trust_remote_code=needs_remote_code(path),
                                                         **kwargs)
    except Exception as exc:  # transformers raises many types for malformed checkpoints
        if not check:
            raise
        msg = str(exc).splitlines()[0][:200] if str(exc) else exc.__class__.__name__
        raise ModelSourceError(f"{path}: cannot load as a causal LM ({msg})") from None
    return (model if device is None else model.to(device)).eval()


def load_tokenizer(*dirs: Path | str):
    """The tokenizer of the first directory that has one."""
    from transformers import AutoTokenizer

    for d in dirs:
        if has_tokenizer(d):
            return AutoTokenizer.from_pretrained(d)
    raise TokenizerMissing(f"no tokenizer in {' or '.join(str(d) for d in dirs)}; copy the source's tokenizer files in")
