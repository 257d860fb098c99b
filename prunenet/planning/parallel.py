"""Tensor parallelism beyond FFN widths: vLLM shards attention heads, so ``--tp`` must divide them too."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from prunenet.errors import BudgetError

__all__ = ["check_tensor_parallel"]


def check_tensor_parallel(config: dict[str, Any], tp: Sequence[int]) -> None:
    """vLLM's rule: attention heads divide by the TP size; KV heads divide by it, or it by them (replicated)."""
    heads = config.get("num_attention_heads") or config.get("n_head")
    if heads is None:
        return
    kv = config.get("num_key_value_heads") or heads
    for t in tp:
        if heads % t:
            raise BudgetError(f"--tp {t} does not divide the {heads} attention heads; vLLM could not shard "
                              "this model (pick a --tp that divides them)")
        if (kv >= t and kv % t) or (kv < t and t % kv):
            raise BudgetError(f"--tp {t} does not fit the {kv} key/value heads (one must divide the other)")
