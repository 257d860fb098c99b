"""The scale benchmark's checkpoint builder (``scale_checkpoints.py``) and report (``scale_benchmark.py``), the GPU check script's plan, and a 7B-shape smoke test.

The smoke test prunes a 2-layer LLaMA-2-7B-shaped checkpoint (1.3 GB bf16) end to end; the 8/16/32-layer
runs of ``examples/scale_benchmark.py run`` are benchmarks, not tests.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import math
import os
import random
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


def _load_example(name: str):
    spec = importlib.util.spec_from_file_location(name, ROOT / "examples" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses look the module up by name
    spec.loader.exec_module(module)
    return module


sc = _load_example("scale_checkpoints")  # the checkpoint builder
sb = _load_example("scale_benchmark")  # the runner and report; imports the builder above (one module object)


BYTES_PER_ELEMENT = {"BF16": 2, "F16": 2, "F32": 4}


def _tensor_shapes(ckpt: Path) -> dict[str, tuple[list[int], str]]:
    """name -> (shape, safetensors dtype) over every shard, read from the headers only."""
    from safetensors import safe_open

    out = {}
    for shard in sorted(ckpt.glob("*.safetensors")):
        if shard.name.startswith("prunenet-"):
            continue  # the policy file beside an export
        with safe_open(str(shard), framework="pt") as f:
            for name in f.keys():  # noqa: SIM118 (safe_open is not a mapping)
                sl = f.get_slice(name)
                out[name] = (list(sl.get_shape()), sl.get_dtype())
    return out


def _check_checkpoint(ckpt: Path, shape: sc.Shape, layers: int) -> None:
    index = json.loads((ckpt / "model.safetensors.index.json").read_text())
    wmap = index["weight_map"]
    shards = set(wmap.values())
    assert len(shards) == layers + 1 and all((ckpt / s).is_file() for s in shards)
    layer_shards = [{s for n, s in wmap.items() if n.startswith(f"model.layers.{i}.")} for i in range(layers)]
    assert all(len(s) == 1 for s in layer_shards), "each decoder layer lives in exactly one shard"
    assert len(set().union(*layer_shards)) == layers, "one shard per layer"
    outer = {wmap[n] for n in ("model.embed_tokens.weight", "model.norm.weight", "lm_head.weight")}
    assert len(outer) == 1 and not outer & set().union(*layer_shards)

    tensors = _tensor_shapes(ckpt)
    assert set(tensors) == set(wmap)
    assert {dt for _, dt in tensors.values()} == {"BF16"}
    h, f, kv = shape.hidden, shape.ffn, shape.kv_heads * shape.head_dim
    assert tensors["model.embed_tokens.weight"][0] == tensors["lm_head.weight"][0] == [shape.vocab, h]
    for i in range(layers):
        p = f"model.layers.{i}."
        assert tensors[p + "mlp.gate_proj.weight"][0] == tensors[p + "mlp.up_proj.weight"][0] == [f, h]
        assert tensors[p + "mlp.down_proj.weight"][0] == [h, f]
        assert tensors[p + "self_attn.k_proj.weight"][0] == [kv, h]
        assert tensors[p + "self_attn.q_proj.weight"][0] == [h, h]
    # the index's total_size is the tensors' data, headers excluded (as transformers writes it)
    data_bytes = sum(math.prod(dims) * BYTES_PER_ELEMENT[dt] for dims, dt in tensors.values())
    assert index["metadata"]["total_size"] == data_bytes

    cfg = json.loads((ckpt / "config.json").read_text())
    assert cfg["model_type"] == "llama" and cfg["architectures"] == ["LlamaForCausalLM"]
    assert (cfg["num_hidden_layers"], cfg["intermediate_size"], cfg["vocab_size"]) == (layers, f, shape.vocab)
    assert cfg["torch_dtype"] == cfg["dtype"] == "bfloat16" and cfg["tie_word_embeddings"] is False


def _check_tokenizer(ckpt: Path, vocab: int) -> None:
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(ckpt)
    assert len(tok) == vocab and (tok.bos_token_id, tok.eos_token_id, tok.unk_token_id) == (1, 2, 0)
    ids = random.Random(0).sample(range(3, vocab), 50)
    text = tok.decode(ids, skip_special_tokens=True)
    assert tok(text, add_special_tokens=False)["input_ids"] == ids
    assert tok("t5 t7")["input_ids"] == [1, 5, 7]  # BOS first, as LLaMA's tokenizer does


# ------------------------------------------------------------------------------------------- fast tests


def test_build_tiny_shape_loads_and_is_reproducible(tmp_path):
    import torch
    from transformers import AutoModelForCausalLM

    shape = sc.SHAPES["tiny"]
    a = sc.build_checkpoint("tiny", 2, tmp_path / "a")
    _check_checkpoint(a, shape, 2)
    _check_tokenizer(a, shape.vocab)
    assert sc.checkpoint_ok(a, "tiny", 2, "bfloat16") and not sc.checkpoint_ok(a, "tiny", 3, "bfloat16")

    model = AutoModelForCausalLM.from_pretrained(a)
    assert model.dtype == torch.bfloat16 and model.config.num_hidden_layers == 2
    w = model.model.layers[1].mlp.gate_proj.weight.detach().float()
    assert abs(float(w.std()) - sc.INIT_STD) < 1e-3 and abs(float(w.mean())) < 1e-3
    with torch.no_grad():
        logits = model(torch.tensor([[1, 5, 9, 400]])).logits.float()
    assert torch.isfinite(logits).all() and 0.05 < float(logits.std()) < 10  # numerically sane

    def digest(path: Path) -> str:
        return hashlib.sha256(path.read_bytes()).hexdigest()

    b = sc.build_checkpoint("tiny", 1, tmp_path / "b")  # same seed: layer 0 and the outer shard are identical
    assert digest(a / "model-00002-of-00003.safetensors") == digest(b / "model-00002-of-00002.safetensors")
    c = sc.build_checkpoint("tiny", 1, tmp_path / "c", seed=1)
    assert digest(b / "model-00002-of-00002.safetensors") != digest(c / "model-00002-of-00002.safetensors")


def test_cli_build_help_and_errors(tmp_path):
    script = str(ROOT / "examples" / "scale_benchmark.py")
    proc = subprocess.run([sys.executable, script, "--help"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and "Example:" in proc.stdout and "llama2-7b" in proc.stdout
    proc = subprocess.run([sys.executable, script, "run", "--shape", "tiny", "--layers-list", "1",
                           "--cache", str(tmp_path / "none")], capture_output=True, text=True, timeout=120)
    assert proc.returncode != 0 and "--build" in proc.stderr


def test_builder_runs_on_its_own_and_through_the_benchmark(tmp_path):
    assert sb.ck is sc  # the benchmark imports the builder module, it does not copy it
    script = str(ROOT / "examples" / "scale_checkpoints.py")
    proc = subprocess.run([sys.executable, script, "--help"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and "Example:" in proc.stdout and "--layers" in proc.stdout
    for tool, out in ((script, tmp_path / "own"), (str(ROOT / "examples" / "scale_benchmark.py"), tmp_path / "sb")):
        cmd = [sys.executable, tool, *([] if tool == script else ["build"]), "--shape", "tiny", "--layers", "1",
               "--out", str(out)]
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
        assert proc.returncode == 0 and "wrote" in proc.stdout, proc.stderr[-2000:]
        assert sc.checkpoint_ok(out, "tiny", 1, "bfloat16") and sc.checkpoint_shape(out) == "tiny"
    digest = [hashlib.sha256((d / "model-00002-of-00002.safetensors").read_bytes()).hexdigest()
              for d in (tmp_path / "own", tmp_path / "sb")]
    assert digest[0] == digest[1]


def _result(layers: int, wall: float, rss: float, phases=None, mode="weights-only", rc=0):
    return sb.RunResult("m", layers, mode, "hf", wall, rss, rc, phases)


def test_table_growth_and_missing_phases():
    ph = {8: {"read": {"seconds": 2.0, "peak_rss_mb": 1024.0}, "write": {"seconds": 4.0, "peak_rss_mb": 2048.0}},
          32: {"read": {"seconds": 8.0, "peak_rss_mb": 1536.0}, "write": {"seconds": 16.0, "peak_rss_mb": 2048.0}}}
    results = [_result(8, 10.0, 2.0, ph[8]), _result(16, 20.0, 2.2), _result(32, 40.0, 2.4, ph[32]),
               _result(8, 100.0, 5.0, mode="defaults", phases=None)]
    table = sb.results_table(results)
    lines = table.splitlines()
    assert lines[0].split("|")[1:6] == [" shape ", " layers ", " mode ", " wall s ", " peak RSS GiB "]
    assert all(p in lines[0] for p in sb.PHASES)
    assert "2.0 s / 1.00 GiB" in lines[2] and lines[3].count("| - ") == len(sb.PHASES)  # no phases: "-"

    rows = {(r["mode"], r["quantity"]): r for r in sb.growth(results, 80)}
    assert not any(m == "defaults" for m, _ in rows)  # one depth only: no growth
    wall = rows[("weights-only", "wall s")]
    assert wall["per_layer"] == pytest.approx(30.0 / 24) and wall["at_80"] == pytest.approx(10 + 30.0 / 24 * 72)
    assert rows[("weights-only", "peak RSS GiB")]["ratio_max_min"] == pytest.approx(1.2)
    assert rows[("weights-only", "read GiB")]["per_layer"] == pytest.approx(0.5 / 24)
    shrinking = sb.growth([_result(2, 10.0, 20.0), _result(4, 12.0, 19.7)], 80)
    peak = next(r for r in shrinking if r["quantity"] == "peak RSS GiB")
    assert peak["per_layer"] == 0.0 and peak["at_80"] == pytest.approx(19.7)  # flat, not extrapolated downward
    assert "at 80 layers" in sb.growth_table(list(rows.values()), 80)

    report = {"phases": [{"name": "read", "seconds": 1.5, "peak_rss_mb": 300}, {"name": "new-phase", "seconds": 1}]}
    phases = sb.phases_of(report)
    assert phases["read"] == {"seconds": 1.5, "peak_rss_mb": 300.0}
    assert "new-phase" in sb.results_table([_result(2, 1.0, 0.1, phases)])  # unknown names get a column
    assert sb.phases_of({"widths": [1]}) is None and sb.phases_of(None) is None
    assert sb.parse_report('log line\n{"a": 1}\n') == {"a": 1} and sb.parse_report("no json") is None


def test_reference_speed_records_failures_and_stopped_runs():
    """The speed comparison keeps what it measured when a side fails or is stopped (it once printed nothing)."""
    rs = _load_example("reference_speed")
    env = dict(os.environ)
    ok = rs._measure([sys.executable, "-c", "import time; b = b'x' * (100 << 20); time.sleep(0.5)"], env, timeout=60)
    failed = rs._measure([sys.executable, "-c", "raise SystemExit('boom')"], env, timeout=60)
    stopped = rs._measure([sys.executable, "-c", "import sys, time; sys.stderr.write('x' * 200_000 + "
                           "'Episode 1/20 | Loss 1\\nEpisode 2/20 | Loss 1\\n'); sys.stderr.flush(); time.sleep(30)"],
                          env, timeout=3.0)
    assert "error" not in ok and ok["peak_rss_mb"] >= 100
    assert failed["error"] == ["boom"]
    assert stopped["stopped_after_timeout"] and stopped["seconds"] < 10
    assert stopped["episodes_done"] == 2  # read from its log, which outgrew a pipe's buffer without stalling it
    summary = rs._summary([ok, failed, stopped, {**ok, "seconds": ok["seconds"] + 2}])
    assert summary["seconds"] == pytest.approx(ok["seconds"] + 1)  # median of the completed runs
    assert summary["seconds_at_least"] == stopped["seconds"] and len(summary["runs"]) == 4


def test_reference_speed_compares_each_of_our_sides(tmp_path):
    """Every side of ours gets its own ratios against the reference; a stopped reference gives bounds."""
    import argparse

    rs = _load_example("reference_speed")
    args = argparse.Namespace(ratio=0.3, episodes=20)
    cli = rs._ours("defaults", tmp_path / "m", args, tmp_path)
    assert Path(cli[0]).name == "prunenet-export" and "--no-eval" in cli and cli[cli.index("--episodes") + 1] == "20"
    assert rs._ours("prunenet-paper", tmp_path / "m", args, tmp_path)[-1] == "prunenet-paper"
    done = rs._compare({"seconds": 10.0, "peak_rss_mb": 500.0}, {"seconds": 80.0, "peak_rss_mb": 2000.0}, [], 20)
    assert done == {"speedup": 8.0, "memory_ratio": 0.25}
    stopped = [{"seconds": 100.0, "stopped_after_timeout": True, "episodes_done": 5}]
    bound = rs._compare({"seconds": 10.0, "peak_rss_mb": 500.0},
                        {"seconds_at_least": 100.0, "peak_rss_mb_at_least": 1000.0}, stopped, 20)
    assert bound == {"speedup_at_least": 10.0, "memory_ratio_at_most": 0.5, "speedup_projected": 40.0}
    assert rs._compare({"runs": []}, {"seconds": 1.0, "peak_rss_mb": 1.0}, [], 20) == {}


def test_timed_run_measures_and_reports_failure(tmp_path):
    cmd = [sys.executable, "-c", "import time; b = bytearray(200 << 20); time.sleep(1.5); print('{\"x\": 2}')"]
    rc, wall, rss_kb, out, _ = sb.timed_run(cmd, tmp_path / "ok", timeout=60)
    assert rc == 0 and sb.parse_report(out) == {"x": 2} and 1.5 <= wall < 30 and rss_kb > 200 * 1024
    rc, _, _, _, err = sb.timed_run([sys.executable, "-c", "import sys; sys.exit('boom')"], tmp_path / "bad", 60)
    assert rc == 1 and "boom" in err
    rc, wall, _, _, _ = sb.timed_run([sys.executable, "-c", "import time; time.sleep(60)"], tmp_path / "slow", 1)
    assert rc != 0 and wall < 30


def _gpu_check_dry_run(tmp_path, **env) -> list[str]:
    full_env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}", "DRY_RUN": "1",
                "OUT": str(tmp_path / "gc"), **env}
    proc = subprocess.run(["bash", str(ROOT / "examples" / "gpu_check.sh")], capture_output=True, text=True,
                          env=full_env, timeout=300)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert "| step | wall s | peak RSS GB |" in proc.stdout
    return [line[2:] for line in proc.stdout.splitlines() if line.startswith("+ ")]


def test_gpu_check_dry_run_command_list(tmp_path):
    cmds = _gpu_check_dry_run(tmp_path, EVAL_HAS_DEVICE="1", MODEL="/models/m")
    out = tmp_path / "gc"
    assert len(cmds) == 7, cmds
    build, dhf, donnx, donnx4, deval, bhf, beval = cmds
    assert "scale_benchmark.py build --shape llama2-7b --layers 32" in build and "--device cuda" in build
    assert f"--out {out}/llama2-7b-32" in build and "--dtype bfloat16" in build
    for cmd, target in ((dhf, "hf"), (donnx, "onnx"), (bhf, "hf")):
        assert cmd.startswith("prunenet-export ") and "--ratio 0.3" in cmd and "--device cuda" in cmd
        assert f"--target {target}" in cmd and "--json" in cmd and "--no-eval" not in cmd
    assert "--model /models/m" in dhf and "--model /models/m" in donnx
    assert "--no-heal" not in dhf and "--no-heal" in donnx and "--no-heal" in donnx4  # the default heals once
    assert "--target onnx --quant w4a16" in donnx4 and f"--plan {out}/default-onnx/prunenet-plan.json" in donnx4
    assert f"--model {out}/llama2-7b-32" in bhf
    assert deval == f"prunenet eval {out}/default-hf --device cuda --json"
    assert beval == f"prunenet eval {out}/llama2-7b-hf --device cuda --json"


def test_gpu_check_dry_run_skips_eval_without_device_option(tmp_path):
    cmds = _gpu_check_dry_run(tmp_path, EVAL_HAS_DEVICE="0", LAYERS="4")
    assert len(cmds) == 5 and not any(" eval " in c for c in cmds)
    assert "--layers 4" in cmds[0] and "--model SmolLM2-135M-Instruct" in cmds[1]


def test_gpu_check_script_syntax():
    assert subprocess.run(["bash", "-n", str(ROOT / "examples" / "gpu_check.sh")]).returncode == 0


# ------------------------------------------------------------------------------------------- smoke test


def _header_only_checkpoint(shape_name: str, layers: int, out: Path) -> Path:
    """A real-shape checkpoint whose data section is a hole (sparse file): headers and config, no weights."""
    import struct

    shape = sc.SHAPES[shape_name]
    out.mkdir()
    tensors = sc.outer_tensors(shape) + [t for i in range(layers) for t in sc.layer_tensors(shape, i)]
    header: dict = {"__metadata__": {"format": "pt"}}
    offset = 0
    for name, dims, _ in tensors:
        n = math.prod(dims) * 2
        header[name] = {"dtype": "BF16", "shape": list(dims), "data_offsets": [offset, offset + n]}
        offset += n
    blob = json.dumps(header).encode()
    blob += b" " * (-len(blob) % 8)
    with open(out / "model.safetensors", "wb") as fh:
        fh.write(struct.pack("<Q", len(blob)) + blob)
        fh.truncate(8 + len(blob) + offset)
    sc.write_config(shape, layers, "bfloat16", out)
    return out


# Peak RSS (GiB, /usr/bin/time) per phase of weights-only exports, measured at real shapes (docs/scale.md).
MEASURED_PEAKS = [("llama2-7b", 8, "read", 1.51), ("llama2-7b", 8, "write", 3.20),
                  ("llama3-70b", 2, "read", 6.46), ("llama3-70b", 2, "write", 19.97)]


@pytest.mark.parametrize("shape, layers, phase, measured", MEASURED_PEAKS)
def test_preflight_estimate_brackets_the_measured_peak(tmp_path, shape, layers, phase, measured):
    """Never below what a real run used (nothing the check accepts is OOM-killed), and not so far above
    that it refuses runs that fit: the 70B-shape write once needed 24.9 GB by the estimate, 21.4 in fact."""

    from prunenet.compute import Compute
    from prunenet.planning.config import PruneConfig
    from prunenet.preflight import RUNTIME_BYTES, estimate_phases
    from prunenet.source.checkpoint import Checkpoint

    ckpt = Checkpoint(_header_only_checkpoint(shape, layers, tmp_path / "ckpt"))
    phases = estimate_phases(ckpt, PruneConfig(ratio=0.3, self_data=0), evaluate=False,
                             compute=Compute.resolve("cpu", ckpt.dtype))
    need = {p.name: p.need + RUNTIME_BYTES for p in phases}[phase]
    assert measured * 2**30 <= need <= 1.6 * measured * 2**30, need / 2**30
    if shape == "llama3-70b":
        assert need < 23.0e9  # what a 24 GB machine offers: the run that fits is accepted


# Every default (2,048 tokens of self-text, the quality report), 32-layer llama2-7b, on a CPU with native
# bf16 products, where the one-layer phases compute in bf16 (docs/scale.md).
MEASURED_DEFAULT_PEAKS = {"self-text": 13.997, "capture": 4.853, "write": 3.906, "eval": 1.927}


def test_preflight_estimate_brackets_the_measured_defaults_peaks_with_native_bf16(tmp_path, monkeypatch):
    """The export's own self-check computes in fp32 whatever the layer dtype; its estimate must say so."""

    from prunenet import device as dev
    from prunenet.compute import Compute
    from prunenet.planning.config import PruneConfig
    from prunenet.preflight import RUNTIME_BYTES, estimate_phases
    from prunenet.source.checkpoint import Checkpoint

    monkeypatch.setattr(dev, "cpu_has_fast_bf16", lambda: True)
    ckpt = Checkpoint(_header_only_checkpoint("llama2-7b", 32, tmp_path / "ckpt"))
    phases = estimate_phases(ckpt, PruneConfig(ratio=0.3), evaluate=True, compute=Compute.resolve("cpu", ckpt.dtype))
    need = {p.name: (p.need + RUNTIME_BYTES) / 2**30 for p in phases}
    for phase, measured in MEASURED_DEFAULT_PEAKS.items():
        assert measured <= need[phase] <= 1.6 * measured, (phase, need[phase])
    assert need["self-text"] * 2**30 < 16e9 * 1.1  # the whole bf16 model: within the 16 GB the defaults target


@pytest.mark.slow
def test_smoke_2_layer_7b_shape(tmp_path):
    """Build a 2-layer LLaMA-2-7B shape, then prune it weights-only through the benchmark's run path."""
    shape = sc.SHAPES["llama2-7b"]
    ckpt = sc.build_checkpoint("llama2-7b", 2, tmp_path / "ckpt")
    _check_checkpoint(ckpt, shape, 2)
    _check_tokenizer(ckpt, shape.vocab)

    out = tmp_path / "out"
    cmd = sb.export_command(ckpt, out, "weights-only", "hf", "auto", 0.3)  # what `run --mode weights-only` runs
    assert cmd[0] == str(BIN / "prunenet-export") and {"--self-data", "--no-eval", "--json"} <= set(cmd)
    rc, wall, rss_kb, stdout, stderr = sb.timed_run(cmd, tmp_path / "log", timeout=600)
    assert rc == 0, stderr[-3000:]
    report = sb.parse_report(stdout)
    assert report is not None, stdout[-2000:]

    widths = report["widths"]
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["pruning"]["widths"] == widths and cfg["intermediate_size"] == max(widths)
    assert cfg.get("intermediate_sizes") == (widths if len(set(widths)) > 1 else None)  # only when non-uniform
    assert len(widths) == 2 and all(w % 64 == 0 and 0 < w <= shape.ffn for w in widths)
    assert min(widths) < shape.ffn
    assert abs(sum(widths) - 0.7 * 2 * shape.ffn) <= 64 * 2  # within one 64-step per layer

    tensors = _tensor_shapes(out)
    h = shape.hidden
    for i, w in enumerate(widths):
        p = f"model.layers.{i}.mlp."
        assert tensors[p + "gate_proj.weight"][0] == tensors[p + "up_proj.weight"][0] == [w, h]
        assert tensors[p + "down_proj.weight"][0] == [h, w]
    assert tensors["lm_head.weight"][0] == [shape.vocab, h]

    # the benchmark's row for this run: the measured wall time and RSS, and the phases the export reported
    phases = sb.phases_of(report)
    assert {"read", "write"} <= set(phases) and "eval" not in phases  # --no-eval: no quality report
    assert all(0 <= ph["seconds"] <= wall and 0 < ph["peak_rss_mb"] <= rss_kb / 1024 * 1.01 for ph in phases.values())
    row = sb.RunResult(str(ckpt), 2, "weights-only", "hf", wall, rss_kb / 1024**2, rc, phases,
                       shape=sc.checkpoint_shape(ckpt))
    cells = [c.strip() for c in sb.results_table([row]).splitlines()[2].strip("|").split("|")]
    expected = {n: f"{ph['seconds']:.1f} s / {ph['peak_rss_mb'] / 1024:.2f} GiB" for n, ph in phases.items()}
    assert cells[:5] == ["llama2-7b", "2", "weights-only", f"{wall:.1f}", f"{rss_kb / 1024**2:.2f}"]
    assert cells[5:] == [expected.get(n, "-") for n in sb.phase_names([row])]


# Peak RSS above the baseline of one LLaMA-2-7B-shape layer's least-squares refit at ratio 0.3 (width 11008,
# 7705 kept, fp32; docs/healing.md), measured with the layer's Gram matrix and weight resident.
MEASURED_REFIT_GIB = 1.66


def test_preflight_counts_the_refit_at_its_measured_peak(tmp_path):
    from prunenet.compute import Compute
    from prunenet.healing.config import HealConfig
    from prunenet.healing.memory import healing_bytes
    from prunenet.healing.refit import refit_bytes
    from prunenet.source.checkpoint import Checkpoint

    refit = refit_bytes(11008, 0.7, 4096)
    assert MEASURED_REFIT_GIB * 2**30 <= refit <= 1.6 * MEASURED_REFIT_GIB * 2**30
    ckpt = Checkpoint(_header_only_checkpoint("llama2-7b", 2, tmp_path / "ckpt"))
    compute = Compute.resolve("cpu", ckpt.dtype)
    on, off = (healing_bytes(ckpt, HealConfig(refit=r), compute, 0.7) for r in (True, False))
    assert 0 < on["block"] - off["block"] <= refit  # it peaks instead of a training row, not beside it
    assert on["heal-text"] == off["heal-text"]
