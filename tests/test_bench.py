"""Benchmark harness: report schema, interleaving, the ONNX export cache, outputs and the CLI (tiny models)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from plans import outlier_plan

from exporters.hf import write_hf_checkpoint
from exporters.onnx.greedy import Generation
from prunenet.cli import main
from prunenet.cli.bench import join_multi_values
from serving.bench.config import BenchConfig
from serving.bench.measure import RATIO_KEYS, Loaded, measure, with_ratios
from serving.bench.outputs import markdown_table
from serving.bench.run import benchmark

ROW_METRICS = ("prompt_latency_ms", "first_token_latency_ms", "decode_latency_ms", "decode_latency_first_half_ms",
               "prompt_throughput_tps", "decode_throughput_tps", "wall_clock_throughput_tps", "peak_rss_mb",
               "model_memory_mb", "process_peak_rss_mb", "model_size_mb", "load_s")


@pytest.fixture(scope="module")
def pair(tiny_models, tmp_path_factory) -> tuple[Path, Path]:
    """(dense, pruned) tiny Llama directories; the pruned one has per-layer widths."""
    dense = tiny_models["llama"]
    pruned = tmp_path_factory.mktemp("bench") / "pruned"
    pruned.mkdir()
    write_hf_checkpoint(dense, outlier_plan(dense, widths=[96, 160, 128]), pruned)
    return dense, pruned


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    """One PRUNENET_CACHE for the module, so the tiny ONNX exports are built once."""
    root = tmp_path_factory.mktemp("cache")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("PRUNENET_CACHE", str(root))
        before = torch.get_num_threads()
        yield root
        torch.set_num_threads(before)


def _fast(**kw) -> BenchConfig:
    base = dict(prompt_lengths=(8,), generation_length=4, warmup=1, runs=2, threads=1, validate_export=False)
    return BenchConfig(**(base | kw))


def test_report_schema_and_outputs(pair, cache, tmp_path):
    out = tmp_path / "results"
    report = benchmark(list(pair), _fast(engines=("torch", "onnxruntime"), prompt_lengths=(8, 16), out=out))
    assert report["schema"] == "prunenet-bench/1"
    assert report["config"]["threads"] == 1 and report["environment"]["versions"]["onnxruntime"]
    dense, pruned = report["models"]
    assert pruned["parameters"] < dense["parameters"] and pruned["widths"] == [96, 160, 128]
    rows = report["results"]
    assert [(r["engine"], r["prompt_length"], r["model"]) for r in rows] == [
        (e, p, m) for e in ("torch", "onnxruntime") for p in (8, 16) for m in (dense["label"], pruned["label"])]
    for row in rows:
        assert all(row[k] > 0 for k in ROW_METRICS), row
        assert row["runs"] == 2 and len(row["decode_latency_ms_runs"]) == 2
        assert row["generation_length"] == 4 and row["batch_size"] == 1
    for base, other in zip(rows[::2], rows[1::2], strict=True):  # dense then pruned, same engine and shape
        assert other["vs_first"] == {k: round(other[k] / base[k], 4) for k in RATIO_KEYS}, other["engine"]
    onnx_pruned = next(r for r in rows if r["engine"] == "onnxruntime" and r["model"] == pruned["label"])
    assert onnx_pruned["vs_first"]["model_size_mb"] < 1.0  # the pruned graph is smaller on disk
    assert all(r["memory_shape"] == [1, 16] and r["peak_rss_mb"] > r["model_memory_mb"] for r in rows)
    assert report["files"] == ["results.json", "results.csv", "results.md", "results.png"]
    assert json.loads((out / "results.json").read_text())["results"] == rows
    csv_lines = (out / "results.csv").read_text().strip().splitlines()
    assert len(csv_lines) == 1 + len(rows) and "decode_latency_ms" in csv_lines[0]
    assert (out / "results.md").read_text() == markdown_table(rows)
    assert (out / "results.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_onnx_exports_are_cached_and_reused(pair, cache, monkeypatch):
    benchmark(list(pair), _fast(runs=1, warmup=0))  # builds (or finds) both cache entries
    entries = sorted(p.name for p in (cache / "onnx").iterdir() if p.is_dir())
    assert len(entries) == 2 and all((cache / "onnx" / e / "model.onnx").is_file() for e in entries)

    import exporters.onnx.export

    monkeypatch.setattr(exporters.onnx.export, "export_onnx", lambda *a, **k: pytest.fail("cache entry was rebuilt"))
    report = benchmark(list(pair), _fast(runs=1, warmup=0))
    assert {m["artefacts"]["onnxruntime"] for m in report["models"]} == {str(cache / "onnx" / e) for e in entries}


class _Recorder:
    """A fake decoder that records the order it is called in."""

    def __init__(self, name: str, calls: list[str]) -> None:
        self.name, self.calls = name, calls

    def generate(self, input_ids, new_tokens, *, keep_logits=False) -> Generation:
        self.calls.append(self.name)
        return Generation(np.zeros((1, new_tokens), dtype=np.int64), 0.01, 0.011, [0.002] * (new_tokens - 1),
                          [0.0] * new_tokens, 0.02)

    def close(self) -> None:
        pass


def test_models_are_measured_alternately():
    calls: list[str] = []
    loaded = [Loaded("fake", n, _Recorder(n, calls), 0.1, 1.0, n) for n in ("A", "B")]
    cfg = BenchConfig(prompt_lengths=(4,), generation_length=3, warmup=1, runs=4, threads=1)
    rows = measure(loaded, cfg, {(1, 4): np.zeros((1, 4), dtype=np.int64)})
    # warm-up (rep -1) then runs 0..3: the order flips every repetition so neither model always goes first
    assert calls == ["B", "A", "A", "B", "B", "A", "A", "B", "B", "A"]
    assert [r["model"] for r in rows] == ["A", "B"] and all(r["runs"] == 4 for r in rows)
    assert rows[0]["decode_latency_ms"] == pytest.approx(2.0) and rows[0]["prompt_latency_ms"] == pytest.approx(10.0)


def test_ratios_divide_by_the_first_directory_of_the_same_engine_and_shape():
    def row(engine, plen, model, value):
        return {"engine": engine, "batch_size": 1, "prompt_length": plen, "model": model,
                **{k: value * (i + 1) for i, k in enumerate(RATIO_KEYS)}}

    rows = [row("torch", 8, "A", 2.0), row("torch", 16, "A", 4.0), row("torch", 8, "B", 3.0),
            row("onnxruntime", 8, "A", 10.0), row("onnxruntime", 8, "B", 5.0), row("torch", 16, "B", 1.0)]
    rows[3]["model_memory_mb"] = None  # not measured: no ratio for it, in that engine only
    ratios = [r["vs_first"] for r in with_ratios(rows)]
    assert [r["decode_latency_ms"] for r in ratios] == [1.0, 1.0, 1.5, 1.0, 0.5, 0.25]
    assert ratios[4]["model_memory_mb"] is None and ratios[2]["model_memory_mb"] == 1.5
    assert all(len(set(r.values())) == 1 for i, r in enumerate(ratios) if i not in (3, 4))


def test_multi_value_options_are_joined():
    args = ["a", "b", "--prompt-lengths", "32", "128", "--engine", "torch", "onnxruntime", "c", "--runs", "3"]
    assert join_multi_values(args) == ["a", "b", "--prompt-lengths", "32,128", "--engine", "torch,onnxruntime",
                                       "c", "--runs", "3"]
    assert join_multi_values(["--batch-sizes=1", "2", "d"]) == ["--batch-sizes", "1,2", "d"]


def test_config_rejects_bad_values():
    with pytest.raises(ValueError, match="engines"):
        BenchConfig(engines=("tensorrt",))
    with pytest.raises(ValueError, match="generation length"):
        BenchConfig(generation_length=1)


def test_cli_prints_json_with_every_shape(pair, cache):
    args = ["bench", *map(str, pair), "--engine", "onnxruntime", "--prompt-lengths", "8", "12",
            "--generation-length", "3", "--warmup", "0", "--runs", "1", "--threads", "1", "--json"]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    report = json.loads(result.output.strip().splitlines()[-1])
    assert sorted({r["prompt_length"] for r in report["results"]}) == [8, 12]
    assert len(report["results"]) == 4


def test_cli_errors_are_one_line(tmp_path):
    runner = CliRunner()
    empty = tmp_path / "empty"
    empty.mkdir()
    result = runner.invoke(main, ["bench", str(empty)])
    assert result.exit_code == 1 and "no config.json" in result.output and result.output.count("\n") == 1
    result = runner.invoke(main, ["bench", str(empty), "--engine", "tensorrt"])
    assert result.exit_code == 2
    help_text = runner.invoke(main, ["bench", "--help"]).output
    assert "Example:" in help_text and "--prompt-lengths" in help_text


@pytest.mark.vllm
@pytest.mark.slow
def test_vllm_engine_runs(pair, cache):
    pytest.importorskip("vllm")
    report = benchmark(list(pair), _fast(engines=("vllm",), warmup=1, runs=1, generation_length=16))
    rows = report["results"]
    assert [r["engine"] for r in rows] == ["vllm", "vllm"]
    for r in rows:
        assert r["prompt_latency_ms"] > 0 and r["process_peak_rss_mb"] > 0
        # the decode time is derived, (16-token call - 1-token call) / 15 steps: it must be real time, and
        # the one run's wall clock (the 16-token call) must be the prompt pass plus those 15 steps
        assert r["decode_latency_ms"] > 0 and r["decode_throughput_tps"] is not None
        assert r["wall_clock_s"] * 1e3 == pytest.approx(r["prompt_latency_ms"] + 15 * r["decode_latency_ms"], abs=0.2)
