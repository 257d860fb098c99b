"""Compute dtypes per device: what each phase multiplies in, decided in one place."""

from __future__ import annotations

import pytest
import torch

from prunenet import device as dev
from prunenet.healing.loop import autocast

CPU, CUDA = torch.device("cpu"), torch.device("cuda")


@pytest.mark.parametrize("fast", [True, False])
def test_layer_dtype_on_the_cpu_keeps_bf16_only_with_native_bf16(monkeypatch, fast):
    monkeypatch.setattr(dev, "cpu_has_fast_bf16", lambda: fast)
    assert dev.layer_dtype(torch.bfloat16, CPU) == (torch.bfloat16 if fast else torch.float32)
    assert dev.layer_dtype(torch.float16, CPU) == torch.float32  # no fast fp16 products on CPUs
    assert dev.layer_dtype(torch.float32, CPU) == torch.float32


def test_layer_dtype_on_a_gpu_is_the_checkpoint_dtype():
    for dt in (torch.bfloat16, torch.float16, torch.float32):
        assert dev.layer_dtype(dt, CUDA) == dt


def test_model_dtype_never_computes_fp16_on_the_cpu():
    assert dev.model_dtype(torch.float16, CPU) == torch.float32
    assert dev.model_dtype(torch.bfloat16, CPU) == torch.bfloat16
    assert dev.model_dtype(torch.float16, CUDA) == torch.float16


def test_healing_autocasts_exactly_when_the_teacher_is_narrower():
    with autocast(CPU, torch.float32):
        assert not torch.is_autocast_enabled("cpu")
    with autocast(CPU, torch.bfloat16):
        assert torch.is_autocast_enabled("cpu")
        y = torch.nn.functional.linear(torch.randn(2, 8), torch.randn(4, 8))
    assert y.dtype == torch.bfloat16


def test_fast_bf16_probe_answers_a_bool():
    assert isinstance(dev.cpu_has_fast_bf16(), bool)


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


@pytest.mark.parametrize("fast", [True, False])
def test_healing_treats_an_fp32_source_as_bf16_only_on_a_cpu_with_native_bf16(monkeypatch, fast):
    monkeypatch.setattr(dev, "cpu_has_fast_bf16", lambda: fast)
    narrow = torch.bfloat16 if fast else torch.float32
    assert dev.heal_source_dtype(torch.float32, CPU) == narrow
    assert dev.layer_dtype(dev.heal_source_dtype(torch.float32, CPU), CPU) == narrow
    assert dev.model_dtype(dev.heal_source_dtype(torch.float32, CPU), CPU) == narrow
    assert dev.heal_source_dtype(torch.float16, CPU) == torch.float16  # computes in fp32 there anyway
    assert dev.heal_source_dtype(torch.float32, CUDA) == torch.float32
