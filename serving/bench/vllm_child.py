"""vLLM measurements in a child process (vLLM reconfigures threads and transformers in its host process).

The parent sends the directories, labels, config and prompt ids through :mod:`serving.childproc`;
the child loads every directory in vLLM's offline engine (in-process, so its RSS is the child's)
and runs the same interleaved loop as the in-process engines.
"""

from __future__ import annotations

import sys
import time
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

import numpy as np

from prunenet.errors import PruneNetError
from prunenet.progress import status
from serving.bench.config import BenchConfig
from serving.childproc import child_main, run_json_child

__all__ = ["vllm_rows"]


def vllm_rows(dirs: list[Path], labels: list[str], cfg: BenchConfig, prompts: dict) -> list[dict[str, Any]]:
    """Run the vLLM measurements in a child process (``python -m serving.bench.vllm_child``); its rows."""
    import json

    from serving.vllm.runtime import server_env

    env = server_env()
    env["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"  # the engine runs in the child itself, so its RSS is sampled
    config = json.loads(json.dumps(asdict(replace(cfg, out=None, engines=("vllm",))), default=str))
    request = {"dirs": [str(d) for d in dirs], "labels": labels, "config": config,
               "prompts": [[b, p, prompts[(b, p)].tolist()] for b, p in prompts]}
    with status("Benchmarking vllm (child process)"):
        return run_json_child(__name__, request, env=env, what="vLLM benchmark", error=PruneNetError)


def _measure_in_vllm(request: dict[str, Any]) -> list[dict[str, Any]]:
    """Child side of :func:`vllm_rows`: load every directory in vLLM, then the same interleaved loop."""
    from serving.bench.engines import VllmDecoder, artefact_mb
    from serving.bench.measure import Loaded, measure
    from serving.vllm.plugin import register_classes
    from serving.vllm.runtime import install_version_shim

    install_version_shim()
    register_classes()
    cfg = BenchConfig.from_json(request["config"])
    prompts = {(b, p): np.array(ids, dtype=np.int64) for b, p, ids in request["prompts"]}
    loaded = []
    for d, label in zip(request["dirs"], request["labels"], strict=True):
        start = time.perf_counter()
        decoder = VllmDecoder(Path(d), max_model_len=max(cfg.prompt_lengths) + cfg.generation_length + 8,
                              max_num_seqs=max(cfg.batch_sizes))
        loaded.append(Loaded("vllm", label, decoder, time.perf_counter() - start, artefact_mb("vllm", Path(d)), d))
    return measure(loaded, cfg, prompts)


if __name__ == "__main__":
    sys.exit(child_main(_measure_in_vllm))
