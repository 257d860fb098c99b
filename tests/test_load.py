"""Bounded concurrent load on ``prunenet serve`` (loopback only): dense and pruned in one run.

32 concurrent clients send 256 completions of 32 tokens each to the pruned and then the dense
default model. Every response must be complete and error-free; latency percentiles and throughput
are printed and compared as a ratio, not asserted (this machine is shared and noisy).
"""

from __future__ import annotations

import json
import statistics
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor

import pytest

pytestmark = [pytest.mark.vllm, pytest.mark.integration, pytest.mark.slow]

CLIENTS, REQUESTS, MAX_TOKENS = 32, 256, 32
PROMPTS = ["The history of the city begins", "In the morning the market", "Our teacher said that",
           "The recipe needs", "When the train stopped", "A good book should"]


def _complete(url: str, model: str, i: int) -> tuple[float, int, str]:
    body = json.dumps({"model": model, "prompt": PROMPTS[i % len(PROMPTS)], "max_tokens": MAX_TOKENS,
                       "temperature": 0, "ignore_eos": True}).encode()
    req = urllib.request.Request(url + "/v1/completions", data=body, headers={"Content-Type": "application/json"})
    start = time.perf_counter()
    with urllib.request.urlopen(req, timeout=300) as resp:
        data = json.loads(resp.read())
    choice = data["choices"][0]
    return time.perf_counter() - start, data["usage"]["completion_tokens"], choice["finish_reason"]


def _load(directory) -> dict:
    from serving.vllm.server import VllmServer

    with VllmServer(directory, max_model_len=256, enforce_eager=True) as server:
        assert server.host == "127.0.0.1"
        start = time.perf_counter()
        with ThreadPoolExecutor(CLIENTS) as pool:
            results = list(pool.map(lambda i: _complete(server.url, server.model_name, i), range(REQUESTS)))
        wall = time.perf_counter() - start
    latencies = sorted(r[0] for r in results)
    assert all(tokens == MAX_TOKENS and reason == "length" for _, tokens, reason in results)
    return {"p50_s": statistics.median(latencies), "p99_s": latencies[int(0.99 * (len(latencies) - 1))],
            "tokens_per_s": sum(r[1] for r in results) / wall, "wall_s": wall,
            "tokens": sum(r[1] for r in results)}


@pytest.fixture(scope="module")
def pruned_default(default_model, tmp_path_factory):
    from plans import outlier_plan

    from exporters.hf import write_hf_checkpoint

    out = tmp_path_factory.mktemp("load") / "pruned"
    write_hf_checkpoint(default_model, outlier_plan(default_model, ratio=0.3, align=64), out)
    return out


def test_concurrent_load_dense_vs_pruned(default_model, pruned_default):
    pytest.importorskip("vllm")
    pruned = _load(pruned_default)
    dense = _load(default_model)
    print(f"\nload {CLIENTS} clients x {REQUESTS} completions x {MAX_TOKENS} tokens (127.0.0.1)")
    for name, r in (("dense", dense), ("pruned", pruned)):
        print(f"  {name:<7} p50 {r['p50_s']:.2f}s  p99 {r['p99_s']:.2f}s  {r['tokens_per_s']:.0f} tok/s")
    ratio = pruned["tokens_per_s"] / dense["tokens_per_s"]
    print(f"  pruned/dense throughput ratio {ratio:.3f}")
    for r in (dense, pruned):
        assert r["tokens"] == REQUESTS * MAX_TOKENS and r["p50_s"] <= r["p99_s"] <= r["wall_s"]
    # fewer FFN weights must not make serving slower (README: 1.19x); a fallback off vLLM's own
    # kernels (e.g. its Transformers backend) would. Loose bound: this machine is shared.
    assert ratio >= 0.8, ratio
