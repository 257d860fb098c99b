"""Hugging Face directory export: stream the source safetensors through the plan, shard by shard.

No second copy of the model is ever held: each tensor is read, sliced (and zero-padded in
``padded`` mode) and appended to the current output shard, which is flushed when it reaches
``max_shard_bytes``. Tokenizer, chat template and generation config are copied
(:mod:`exporters.hf.side_files`); the config is rewritten by :func:`exporters.hf.config.rewrite_config`.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch
from safetensors.torch import save_file

from exporters.hf.config import needs_modeling_file, rewrite_config
from exporters.hf.side_files import copy_side_files
from prunenet.arch import MODELING_FILE, get_arch_spec
from prunenet.errors import PlanMismatch, PruneNetError
from prunenet.planning.plan import PruningPlan
from prunenet.planning.surgery import layer_tensor_roles, pad_tensor, slice_tensor
from prunenet.progress import track
from prunenet.source.checkpoint import Checkpoint

__all__ = ["write_hf_checkpoint", "OutputWriteError"]


class OutputWriteError(PruneNetError):
    """The output could not be written (disk full, file-size limit, I/O error)."""


_TEMPLATE = Path(__file__).parent / "templates" / MODELING_FILE


def _tensor_bytes(t: torch.Tensor) -> int:
    return t.numel() * t.element_size()


def write_hf_checkpoint(
    source: Path, plan: PruningPlan, out: Path, *, compat: str = "native", max_shard_bytes: int = 2 << 30,
    dtype: torch.dtype | None = None,
) -> dict:
    """Write the pruned checkpoint into the (staging) directory ``out``; returns the new config.

    ``dtype`` casts every floating tensor (None keeps the source's); config.json records it."""
    ckpt = Checkpoint(source)
    spec = get_arch_spec(ckpt.config.get("model_type"))
    out.mkdir(parents=True, exist_ok=True)
    n_layers = spec.num_layers(ckpt.config)
    if len(plan.layers) != n_layers:
        raise PlanMismatch(f"plan has {len(plan.layers)} layers, the model has {n_layers}")
    target = max(plan.widths)
    current: dict[str, torch.Tensor] = {}
    size = 0
    written: list[list[str]] = []  # tensor names of each flushed shard

    def flush() -> None:
        nonlocal current, size
        try:
            save_file(current, str(out / f".shard-{len(written)}.safetensors"), metadata={"format": "pt"})
        except Exception as exc:  # safetensors reports ENOSPC/EFBIG as its own error type
            reason = str(exc).splitlines()[0][:160]
            raise OutputWriteError(f"cannot write weights to {out.parent} ({reason}); free space and retry") from None
        written.append(list(current))
        current, size = {}, 0

    for shard in track(ckpt.shards, "Writing pruned weights", total=len(ckpt.shards)):
        for name, tensor in ckpt.iter_shard(shard):
            role = layer_tensor_roles(spec, name)
            if role is not None:
                layer, suffix = role
                lp = plan.layers[layer]
                if lp.width != lp.original_width:
                    tensor = slice_tensor(spec, suffix, tensor, lp.kept)
                if compat == "padded":
                    tensor = pad_tensor(spec, suffix, tensor, target)
            if dtype is not None and tensor.is_floating_point():
                tensor = tensor.to(dtype)
            if size and size + _tensor_bytes(tensor) > max_shard_bytes:
                flush()
            current[name] = tensor
            size += _tensor_bytes(tensor)
    if current or not written:
        flush()
    _name_shards(out, written)
    config = rewrite_config(ckpt.config, spec, plan, compat)
    if dtype is not None:
        name = str(dtype).removeprefix("torch.")
        config["dtype"] = name
        if "torch_dtype" in config:
            config["torch_dtype"] = name
    (out / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    if needs_modeling_file(plan, compat):
        shutil.copyfile(_TEMPLATE, out / MODELING_FILE)
    copy_side_files(source, out)
    plan.save(out)
    return config


def _name_shards(out: Path, names: list[list[str]]) -> None:
    """Final shard names plus an index, even for one shard: the policy file shares the directory, and
    vLLM loads every ``*.safetensors`` it finds unless an index names the weight files."""
    total = len(names)
    weight_map = {}
    for i, shard_names in enumerate(names):
        final = "model.safetensors" if total == 1 else f"model-{i + 1:05d}-of-{total:05d}.safetensors"
        (out / f".shard-{i}.safetensors").rename(out / final)
        weight_map.update(dict.fromkeys(shard_names, final))
    index = {"metadata": {"total_size": sum((out / f).stat().st_size for f in set(weight_map.values()))},
             "weight_map": weight_map}
    (out / "model.safetensors.index.json").write_text(json.dumps(index, indent=2))
