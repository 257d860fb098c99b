"""Compute dtypes per device: the rules, the one :class:`Compute` a job resolves, and that phases read it."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from prunenet import device as dev
from prunenet.compute import Compute
from prunenet.healing.loop import autocast

CPU, CUDA = torch.device("cpu"), torch.device("cuda")


def _cuda(monkeypatch) -> None:
    """Resolve ``cuda`` on a machine without one: the dtype rules only read the device type."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)


@pytest.mark.parametrize("fast", [True, False])
def test_compute_on_the_cpu_narrows_only_with_native_bf16(monkeypatch, fast):
    monkeypatch.setattr(dev, "cpu_has_fast_bf16", lambda: fast)
    narrow = torch.bfloat16 if fast else torch.float32
    bf16 = Compute.resolve("cpu", torch.bfloat16)
    assert (bf16.generate, bf16.layer, bf16.heal_layer) == (torch.bfloat16, narrow, narrow)
    fp32 = Compute.resolve("cpu", torch.float32)
    assert (fp32.generate, fp32.layer) == (torch.float32, torch.float32)  # planning keeps the source's fp32
    assert (fp32.heal_generate, fp32.heal_layer) == (narrow, narrow)  # healing narrows an fp32 source
    fp16 = Compute.resolve("cpu", torch.float16)  # no fast fp16 products on CPUs
    assert {fp16.generate, fp16.layer, fp16.heal_generate, fp16.heal_layer} == {torch.float32}
    assert fp32.check == bf16.check == torch.float32


def test_compute_on_a_gpu_keeps_the_checkpoint_dtype(monkeypatch):
    _cuda(monkeypatch)
    for dt in (torch.bfloat16, torch.float16, torch.float32):
        c = Compute.resolve("cuda", dt)
        assert c.device.type == "cuda" and {c.generate, c.layer, c.heal_generate, c.heal_layer} == {dt}


def test_compute_resolves_auto_and_refuses_a_missing_gpu(monkeypatch):
    from prunenet.errors import PruneNetError

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert Compute.resolve("auto", torch.float32).device == CPU
    with pytest.raises(PruneNetError, match="no CUDA device"):
        Compute.resolve("cuda", torch.float32)
    assert Compute.resolve("cpu", torch.bfloat16).to_dict()["device"] == "cpu"


def test_fast_bf16_probe_matches_the_cpu_flags():
    from prunenet.cpuinfo import cpu_flags, cpu_name

    info = Path("/proc/cpuinfo")
    if not info.is_file():
        pytest.skip("no /proc/cpuinfo to compare with")
    flags = cpu_flags()
    assert flags and flags <= set(info.read_text().split()) and cpu_name() in info.read_text()
    assert ("avx2" in flags) == ("avx2" in info.read_text().split())
    assert dev.cpu_has_fast_bf16() == bool(flags & {"avx512_bf16", "amx_bf16"})


def test_healing_autocasts_exactly_when_the_teacher_is_narrower():
    with autocast(CPU, torch.float32):
        assert not torch.is_autocast_enabled("cpu")
    with autocast(CPU, torch.bfloat16):
        assert torch.is_autocast_enabled("cpu") and torch.get_autocast_dtype("cpu") == torch.bfloat16


def test_training_inside_one_autocast_context_sees_its_own_updates():
    """autocast's cast cache would keep the first bf16 copy of the weight for the whole context."""
    torch.manual_seed(0)
    lin = torch.nn.Linear(8, 8)
    x = torch.randn(4, 8)
    opt = torch.optim.SGD(lin.parameters(), lr=0.5)
    with autocast(CPU, torch.bfloat16):
        before = lin(x).float()
        lin(x).float().pow(2).mean().backward()
        opt.step()
        after = lin(x).float()
    assert (after - before).abs().max() > 1e-2


def test_the_preflight_estimates_healing_in_the_dtype_healing_runs_in(tiny_models):
    """The pre-flight reads the same Compute as healing: a narrower healing dtype lowers its estimate."""
    from dataclasses import replace

    from prunenet.healing.config import HealConfig
    from prunenet.healing.memory import healing_bytes
    from prunenet.source.checkpoint import Checkpoint

    ckpt = Checkpoint(tiny_models["llama"])
    wide = Compute.resolve("cpu", torch.float32)
    wide = replace(wide, heal_generate=torch.float32, heal_layer=torch.float32)
    narrow = replace(wide, heal_generate=torch.bfloat16, heal_layer=torch.bfloat16)
    cfg = HealConfig(tokens=256, sample_len=32)
    a, b = healing_bytes(ckpt, cfg, wide, 0.7), healing_bytes(ckpt, cfg, narrow, 0.7)
    assert all(b[k] < a[k] for k in ("heal-text", "block"))


def test_planning_computes_in_the_jobs_dtypes(tiny_with_tokenizer, monkeypatch):
    """make_plan generates its self-text in ``compute.generate`` and captures in ``compute.layer``."""
    from dataclasses import replace

    from prunenet.planning import planner, selfdata
    from prunenet.planning.config import PruneConfig

    seen: dict[str, torch.dtype] = {}
    real_ids, real_stream = planner.self_text_ids, selfdata.stream_ffn_inputs

    def ids(*args, **kw):
        seen["generate"] = args[4]
        return real_ids(*args, **kw)

    def stream(*args, **kw):
        seen["layer"] = kw["dtype"]
        return real_stream(*args, **kw)

    monkeypatch.setattr(planner, "self_text_ids", ids)
    monkeypatch.setattr(selfdata, "stream_ffn_inputs", stream)
    compute = replace(Compute.resolve("cpu", torch.float32), generate=torch.bfloat16, layer=torch.bfloat16)
    planner.make_plan(tiny_with_tokenizer, PruneConfig(ratio=0.3, align=1, episodes=1, self_data=64), compute=compute)
    assert seen == {"generate": torch.bfloat16, "layer": torch.bfloat16}
