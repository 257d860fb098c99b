"""The one greedy decoding loop every engine runs, and what it records.

One prompt pass, then one model call per new token, greedy (argmax) sampling and a fixed number of
new tokens (no early stop at end-of-text), so two models are compared on identical work.
:class:`Generation` records the model time of the prompt pass, each decode step and each sampling
step separately, as ONNX Runtime's LLaMA ``benchmark_e2e.py`` does. The ONNX exporter validates
with it (ORT tokens and logits == torch) and the benchmark times with it.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np

from prunenet.errors import PruneNetError

__all__ = ["Generation", "Decoder", "EngineError", "greedy"]


class EngineError(PruneNetError):
    """An engine cannot run this directory (wrong kind of directory, or a length the graph does not support)."""


@dataclass
class Generation:
    """One greedy generation and where its time went (seconds)."""

    tokens: np.ndarray
    """New token ids, shape [batch, new_tokens]."""
    prefill_s: float
    """Model time of the prompt pass."""
    first_token_s: float
    """Prompt start to first new token chosen (time to first token)."""
    step_s: list[float]
    """Model time of each decode step (new_tokens - 1 of them)."""
    sampling_s: list[float]
    """Argmax time after each model call."""
    wall_s: float
    logits: list[np.ndarray] | None = field(default=None, repr=False)
    """With ``keep_logits``: the [batch, vocab] float32 logits that chose each new token."""


class Decoder(Protocol):
    name: str

    def generate(self, input_ids: np.ndarray, new_tokens: int, *, keep_logits: bool = False) -> Generation: ...

    def close(self) -> None: ...


Step = Callable[[np.ndarray, np.ndarray, int], np.ndarray]
"""``step(ids, position_ids, total_length)`` runs the model and returns the last position's logits."""


def greedy(step: Step, input_ids: np.ndarray, new_tokens: int, keep_logits: bool) -> Generation:
    """The shared loop over an engine's ``step``; timing is taken around each call."""
    batch, prompt = input_ids.shape
    tokens = np.zeros((batch, new_tokens), dtype=np.int64)
    kept: list[np.ndarray] = []
    step_s: list[float] = []
    sampling_s: list[float] = []
    start = time.perf_counter()
    logits = step(input_ids, np.tile(np.arange(prompt, dtype=np.int64), (batch, 1)), prompt)
    prefill_s = time.perf_counter() - start
    for i in range(new_tokens):
        t0 = time.perf_counter()
        tokens[:, i] = logits.argmax(-1)
        if keep_logits:
            kept.append(np.asarray(logits, dtype=np.float32))
        sampling_s.append(time.perf_counter() - t0)
        if i == 0:
            first_token_s = time.perf_counter() - start
        if i == new_tokens - 1:
            break
        t1 = time.perf_counter()
        pos = np.full((batch, 1), prompt + i, dtype=np.int64)
        logits = step(tokens[:, i:i + 1], pos, prompt + i + 1)
        step_s.append(time.perf_counter() - t1)
    return Generation(tokens, prefill_s, first_token_s, step_s, sampling_s, time.perf_counter() - start,
                      kept if keep_logits else None)
