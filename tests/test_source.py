"""Model resolution and the default-model cache: locking, validation and rebuilds."""

from __future__ import annotations

import multiprocessing
import time
from pathlib import Path

import pytest

from prunenet.errors import ModelSourceError
from prunenet.source.resolve import _cached_entry, resolve_model


def _slow_build(out: Path, counter: Path) -> None:
    with counter.open("a") as f:
        f.write("built\n")
    time.sleep(1.0)
    (out / "model.safetensors").write_bytes(b"x" * 100)


def _worker(root: str, counter: str, results) -> None:
    import os

    os.environ["PRUNENET_CACHE"] = root
    path = _cached_entry("entry", lambda out: _slow_build(out, Path(counter)))
    results.put((path / "model.safetensors").stat().st_size)


def test_concurrent_processes_build_the_cache_once(tmp_path, monkeypatch):
    monkeypatch.setenv("PRUNENET_CACHE", str(tmp_path / "cache"))
    counter = tmp_path / "count"
    ctx = multiprocessing.get_context("spawn")
    results = ctx.Queue()
    procs = [ctx.Process(target=_worker, args=(str(tmp_path / "cache"), str(counter), results)) for _ in range(2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
    assert [results.get(timeout=5) for _ in procs] == [100, 100]
    assert counter.read_text().count("built") == 1


def test_corrupt_cache_entry_is_rebuilt(tmp_path, monkeypatch):
    monkeypatch.setenv("PRUNENET_CACHE", str(tmp_path))
    counter = tmp_path / "count"
    entry = _cached_entry("entry", lambda out: _slow_build(out, counter))
    (entry / "model.safetensors").write_bytes(b"truncated")  # size no longer matches the manifest
    again = _cached_entry("entry", lambda out: _slow_build(out, counter))
    assert (again / "model.safetensors").stat().st_size == 100
    assert counter.read_text().count("built") == 2
    assert _cached_entry("entry", lambda out: _slow_build(out, counter)) == again
    assert counter.read_text().count("built") == 2  # a valid entry is reused


def test_failed_build_leaves_no_entry(tmp_path, monkeypatch):
    monkeypatch.setenv("PRUNENET_CACHE", str(tmp_path))

    def boom(out: Path) -> None:
        (out / "partial").write_text("x")
        raise ModelSourceError("download failed")

    with pytest.raises(ModelSourceError):
        _cached_entry("entry", boom)
    assert not (tmp_path / "entry").exists() and not list(tmp_path.glob(".entry.*"))


def test_hub_id_not_in_local_cache_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path))
    with pytest.raises(ModelSourceError, match="not in the local Hugging Face cache"):
        resolve_model("someorg/some-model")


def test_directory_with_only_pickled_weights_is_refused(tmp_path):
    (tmp_path / "config.json").write_text("{}")
    (tmp_path / "pytorch_model.bin").write_bytes(b"pickle")
    with pytest.raises(ModelSourceError, match="never loads"):
        resolve_model(tmp_path)
