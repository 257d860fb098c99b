"""The README's quick-start block runs as written, line by line, on the real default model.

The first line (the main job) is the session's ``quickstart`` fixture; ``make run`` runs that same
command and CI itself is ``make test``. The CUDA install block needs a GPU machine and is not run.
Options appended here only make a line faster or machine-readable; the documented words stay.
"""

from __future__ import annotations

import json
import shlex
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from conftest import readme_quickstart

pytestmark = [pytest.mark.integration, pytest.mark.slow]

BIN = Path(sys.executable).parent


def _line(word: str) -> list[str]:
    """The quick-start line whose subcommand is ``word``, as argv with the console script's full path."""
    for line in readme_quickstart():
        args = shlex.split(line)
        if len(args) > 1 and args[0] == "prunenet" and args[1] == word:
            return [str(BIN / args[0]), *args[1:]]
    raise AssertionError(f"the README quick-start has no 'prunenet {word}' line")


def _run(argv: list[str], cwd: Path) -> dict:
    proc = subprocess.run([*argv, "--json"], cwd=cwd, capture_output=True, text=True, timeout=1200)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_readme_lines_cover_the_commands():
    assert readme_quickstart()[0].startswith("prunenet-export --ratio 0.3 --target vllm --out out")
    assert {shlex.split(line)[1] for line in readme_quickstart()[1:]} == {"serve", "eval", "bench"}


def test_readme_eval_reproduces_the_exports_quality_summary(quickstart):
    cwd, _, exported = quickstart
    report = _run(_line("eval"), cwd)
    assert report["dense_ppl"] < report["pruned_ppl"] < 4 * report["dense_ppl"]
    assert report["kl"] == pytest.approx(exported["quality"]["kl"], rel=0.02)
    assert report["top1_agreement"] == pytest.approx(exported["quality"]["top1_agreement"], abs=0.01)


def test_readme_bench_compares_dense_and_pruned_on_onnxruntime(quickstart):
    cwd, _, _ = quickstart
    quick = ["--runs", "1", "--warmup", "1", "--prompt-lengths", "16", "--generation-length", "8"]
    report = _run([*_line("bench"), *quick], cwd)
    rows = report["results"]
    assert {r["engine"] for r in rows} == {"onnxruntime"} and len(rows) == 2
    dense, pruned = rows
    assert pruned["model_size_mb"] < dense["model_size_mb"] and all(r["decode_latency_ms"] > 0 for r in rows)


def test_readme_serve_answers_on_loopback(quickstart):
    pytest.importorskip("vllm")
    from serving.vllm.server import free_port

    cwd, _, _ = quickstart
    port = free_port()
    proc = subprocess.Popen([*_line("serve"), "--port", str(port), "--max-model-len", "256", "--enforce-eager"],
                            cwd=cwd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    url = f"http://127.0.0.1:{port}"
    try:
        model = None
        deadline = time.monotonic() + 600
        while model is None and time.monotonic() < deadline and proc.poll() is None:
            try:
                with urllib.request.urlopen(url + "/v1/models", timeout=5) as resp:
                    model = json.loads(resp.read())["data"][0]["id"]
            except OSError:
                time.sleep(2)
        assert proc.poll() is None, proc.stderr.read().decode()[-2000:] if proc.stderr else ""
        assert model is not None, "prunenet serve did not answer within 600 s"
        body = json.dumps({"model": model, "prompt": "The capital of France is", "max_tokens": 8,
                           "temperature": 0}).encode()
        req = urllib.request.Request(url + "/v1/completions", data=body, headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=120) as resp:
            choice = json.loads(resp.read())["choices"][0]
        assert choice["text"].strip()
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
    assert proc.returncode in (0, 130), proc.returncode
