"""Teacher-forced log-probs from vLLM's offline engine, to compare numerically with transformers.

vLLM runs in a child process (:mod:`serving.childproc`): it changes thread counts, signal handlers
and transformers classes in the process that hosts it. No tokenizer is needed (tiny test models
have none). With ``plugin=False`` our classes are not registered and ``VLLM_PLUGINS`` is empty:
what a stock vLLM image does with the directory.
"""

from __future__ import annotations

import importlib.util
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from serving.childproc import child_main, run_json_child
from serving.vllm.errors import NOT_INSTALLED, VllmResolveError, VllmUnavailable
from serving.vllm.runtime import server_env

__all__ = ["vllm_prompt_logprobs"]


def vllm_prompt_logprobs(
    model_dirs: Sequence[Path | str], token_ids: Sequence[int], *, dtype: str = "float32",
    max_model_len: int = 256, kv_cache_bytes: int = 256 << 20, timeout: float = 900.0,
    plugin: bool = True, trust_remote_code: bool = False,
) -> dict[str, dict[str, Any]]:
    """Score ``token_ids`` with vLLM's offline engine for each directory, in one child process.

    Returns ``{dir: {"logprobs": [...], "top1": [...], "architecture": ...}}``: for every position
    after the first, the log-prob vLLM gives the actual token and vLLM's most likely token there, and
    the architecture vLLM resolved; or ``{"error": msg}`` for a directory vLLM could not run.
    """
    if importlib.util.find_spec("vllm") is None:
        raise VllmUnavailable(NOT_INSTALLED)
    env = server_env()
    env["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"  # one process loads every model in turn
    env.pop("VLLM_CPU_KVCACHE_SPACE", None)  # it would override kv_cache_bytes on CPU
    if not plugin:
        env["VLLM_PLUGINS"] = ""  # no general plugin at all: stock vLLM
    request = {"dirs": [str(d) for d in model_dirs], "token_ids": list(token_ids), "dtype": dtype,
               "max_model_len": max_model_len, "kv_cache_bytes": kv_cache_bytes, "plugin": plugin,
               "trust_remote_code": trust_remote_code}
    return run_json_child(__name__, request, env=env, timeout=timeout, what="vLLM scoring process",
                          error=VllmResolveError)


def _score_all(request: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Child side of :func:`vllm_prompt_logprobs` (runs with vLLM in this process)."""
    import gc

    from vllm import LLM, SamplingParams
    from vllm.inputs import TokensPrompt

    if request["plugin"]:
        from serving.vllm.plugin import register_classes

        register_classes()
    ids = request["token_ids"]
    params = SamplingParams(max_tokens=1, temperature=0, prompt_logprobs=1, detokenize=False)
    results: dict[str, dict[str, Any]] = {}
    for model_dir in request["dirs"]:
        try:
            llm = LLM(model=model_dir, skip_tokenizer_init=True, dtype=request["dtype"], enforce_eager=True,
                      max_model_len=request["max_model_len"], kv_cache_memory_bytes=request["kv_cache_bytes"],
                      max_num_seqs=1, seed=0, trust_remote_code=request["trust_remote_code"])
            out = llm.generate([TokensPrompt(prompt_token_ids=ids)], params, use_tqdm=False)[0]
            positions = out.prompt_logprobs[1:]
            results[model_dir] = {
                "logprobs": [pos[tok].logprob for pos, tok in zip(positions, ids[1:], strict=True)],
                "top1": [next(t for t, lp in pos.items() if lp.rank == 1) for pos in positions],
                "architecture": llm.model_config.architecture,
            }
            del llm
        except Exception as exc:  # report per directory; the caller decides what a failure means
            results[model_dir] = {"error": f"{exc.__class__.__name__}: {str(exc)[:300]}"}
        gc.collect()
    return results


if __name__ == "__main__":
    sys.exit(child_main(_score_all))
