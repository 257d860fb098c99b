"""The Hugging Face directory target: streamed pruned weights, rewritten config, shipped remote code.

``writer`` streams the source safetensors through the plan, ``config`` rewrites ``config.json`` for
per-layer widths, ``side_files`` copies the tokenizer and generation config, ``validate`` reloads the
result with transformers and compares logits. ``templates/modeling_pruned.py`` is the file shipped
into non-uniform outputs.
"""

from __future__ import annotations

from exporters.hf.writer import write_hf_checkpoint

__all__ = ["write_hf_checkpoint"]
