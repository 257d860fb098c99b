"""The engines a benchmark can load: torch and ONNX Runtime in this process, vLLM's offline engine.

torch, ONNX Runtime and onnxruntime-genai decoders are the ONNX exporter's own (:mod:`exporters.onnx.decoders`, the
graph I/O they speak is defined there); vLLM exposes no per-step hook, so :class:`VllmDecoder` derives
the decode time from two calls. Every decoder runs the same greedy loop and returns a
:class:`~exporters.onnx.greedy.Generation`.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from exporters.onnx.decoders import OrtDecoder, TorchDecoder
from exporters.onnx.genai import GenaiDecoder
from exporters.onnx.greedy import Decoder, EngineError, Generation

__all__ = ["ONNX_ENGINES", "VllmDecoder", "load_decoder", "artefact_mb"]

ONNX_ENGINES = ("onnxruntime", "onnxruntime-genai")
"""Engines that run an ONNX export directory (the same one: the genai engine reads its genai_config.json)."""


class VllmDecoder:
    """vLLM's offline engine. It exposes no per-step hook, so decode time is derived from two calls.

    The prompt pass is timed as a 1-token generation; a full generation then costs one prompt pass
    plus ``new_tokens - 1`` decode steps, so each step is ``(full - prompt) / (new_tokens - 1)``.
    Prefix caching is off so the second call really recomputes the prompt.
    """

    name = "vllm"

    def __init__(self, hf_dir: Path, *, max_model_len: int, max_num_seqs: int, dtype: str = "auto") -> None:
        from vllm import LLM

        self.llm = LLM(model=str(hf_dir), skip_tokenizer_init=True, dtype=dtype, enforce_eager=True,
                       max_model_len=max_model_len, max_num_seqs=max_num_seqs, enable_prefix_caching=False,
                       seed=0)

    def _timed(self, prompts: list, max_tokens: int) -> tuple[float, list]:
        from vllm import SamplingParams

        params = SamplingParams(max_tokens=max_tokens, temperature=0, ignore_eos=True, detokenize=False)
        start = time.perf_counter()
        outs = self.llm.generate(prompts, params, use_tqdm=False)
        return time.perf_counter() - start, outs

    def generate(self, input_ids: np.ndarray, new_tokens: int, *, keep_logits: bool = False) -> Generation:
        from vllm.inputs import TokensPrompt

        prompts = [TokensPrompt(prompt_token_ids=row.tolist()) for row in input_ids]
        prefill_s, _ = self._timed(prompts, 1)
        full_s, outs = self._timed(prompts, new_tokens)
        per_step = max(full_s - prefill_s, 0.0) / max(new_tokens - 1, 1)
        tokens = np.array([list(o.outputs[0].token_ids) for o in outs], dtype=np.int64)
        return Generation(tokens, prefill_s, prefill_s, [per_step] * (new_tokens - 1), [0.0] * new_tokens, full_s)

    def close(self) -> None:
        self.llm = None


def load_decoder(engine: str, path: Path, *, device: str = "cpu", threads: int | None = None) -> Decoder:
    """An in-process decoder: ``path`` is an HF directory (torch) or an ONNX export directory (onnxruntime)."""
    if engine == "onnxruntime":
        return OrtDecoder(path, device=device, threads=threads)
    if engine == "onnxruntime-genai":
        return GenaiDecoder(path, device=device, threads=threads)
    if engine == "torch":
        return TorchDecoder.load(path, device=device)
    raise EngineError(f"engine {engine!r} cannot be loaded in this process")


def artefact_mb(engine: str, path: Path) -> float:
    """Size on disk of what the engine loads (the ORT graph and its data; not the unoptimized copy)."""
    files = [f for f in path.iterdir() if f.is_file()]
    if engine in ONNX_ENGINES:
        files = [f for f in files if f.name.startswith("model.onnx")]
    else:
        files = [f for f in files if f.suffix == ".safetensors"]
    return round(sum(f.stat().st_size for f in files) / 2**20, 3)
