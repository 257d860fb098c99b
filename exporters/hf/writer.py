"""Hugging Face directory export: stream the source safetensors through the plan, tensor by tensor.

No second copy of the model is ever held, not even one shard: the output shards are laid out from the
tensors' shapes first, then each tensor is read, sliced (zero-padded in ``padded`` mode, cast to
``--dtype``) and written straight into its shard (:mod:`exporters.hf.shards`). Tokenizer, chat template and generation config are copied
(:mod:`exporters.hf.side_files`); the config is rewritten by :func:`exporters.hf.config.rewrite_config`.
"""

from __future__ import annotations

import functools
import json
import shutil
from pathlib import Path

import torch

from exporters.hf.config import needs_modeling_file, rewrite_config
from exporters.hf.quantized import StreamingQuantizer
from exporters.hf.shards import TensorSpec, plan_shards, write_shard
from exporters.hf.side_files import copy_side_files
from prunenet.arch import MODELING_FILE, get_arch_spec
from prunenet.errors import PlanMismatch, PruneNetError
from prunenet.healing.weights import HealedWeights
from prunenet.planning.plan import PruningPlan
from prunenet.planning.surgery import layer_tensor_roles, pad_tensor, slice_tensor
from prunenet.progress import track
from prunenet.quantization.checks import linear_shapes
from prunenet.quantization.rounding import given_scales
from prunenet.quantization.schemes import QuantSpec
from prunenet.source.checkpoint import Checkpoint

__all__ = ["write_hf_checkpoint", "OutputWriteError"]


class OutputWriteError(PruneNetError):
    """The output could not be written (disk full, file-size limit, I/O error)."""


_TEMPLATE = Path(__file__).parent / "templates" / MODELING_FILE


def write_hf_checkpoint(
    source: Path, plan: PruningPlan, out: Path, *, compat: str = "native", max_shard_bytes: int = 2 << 30,
    dtype: torch.dtype | None = None, healed: HealedWeights | None = None, quant: QuantSpec | None = None,
) -> dict:
    """Write the pruned checkpoint into the (staging) directory ``out``; returns the new config.

    ``dtype`` casts every floating tensor (None keeps the source's); config.json records it. ``healed``
    tensors are written instead of the sliced source tensors of the same names. ``quant``: decoder
    linears are written quantized (:mod:`exporters.hf.quantized`), config.json says how; a linear whose
    scales ``healed`` holds too (GPTQ, :mod:`prunenet.quantization.rounding`) is packed with them."""
    ckpt = Checkpoint(source)
    spec = get_arch_spec(ckpt.config.get("model_type"))
    out.mkdir(parents=True, exist_ok=True)
    n_layers = spec.num_layers(ckpt.config)
    if len(plan.layers) != n_layers:
        raise PlanMismatch(f"plan has {len(plan.layers)} layers, the model has {n_layers}")
    target = max(plan.widths)

    def transform(name: str, tensor: torch.Tensor) -> torch.Tensor:
        role = layer_tensor_roles(spec, name)
        # healed or GPTQ-rounded tensors are already at the pruned width (on meta, slicing gives that shape)
        replaced = healed is not None and name in healed and tensor.device.type != "meta"
        if replaced:
            tensor = healed.get(name).to(dtype or tensor.dtype)
        if role is not None:
            layer, suffix = role
            lp = plan.layers[layer]
            if not replaced and lp.width != lp.original_width:
                tensor = slice_tensor(spec, suffix, tensor, lp.kept)
            if compat == "padded":
                tensor = pad_tensor(spec, suffix, tensor, target)
        if dtype is not None and tensor.is_floating_point():
            tensor = tensor.to(dtype)
        return tensor

    infos = ckpt.tensor_infos()
    names = [n for shard in ckpt.shards for n, s in ckpt.weight_map.items() if s == shard]
    specs = [_output_spec(name, *infos[name], transform) for name in names]
    def produce(name: str) -> torch.Tensor:
        return transform(name, ckpt.get(name))

    if quant is not None:
        quantizer = StreamingQuantizer(quant, set(linear_shapes(ckpt.shapes(), spec.layers_prefix)),
                                       dtype or ckpt.dtype, given=given_scales(healed))
        specs = [o for s in specs for o in quantizer.expand(s)]
        produce = functools.partial(quantizer.produce, read=produce)
    shards = plan_shards(specs, max_shard_bytes)
    for i, shard in enumerate(track(shards, "Writing pruned weights", total=len(shards))):
        try:
            write_shard(out / f".shard-{i}.safetensors", shard, produce)
        except OSError as exc:  # ENOSPC, EFBIG (file-size limit), EIO
            raise OutputWriteError(f"cannot write weights to {out.parent} ({exc.strerror or exc}); "
                                   "free space and retry") from None
    _name_shards(out, [[t.name for t in s.tensors] for s in shards])
    config = rewrite_config(ckpt.config, spec, plan, compat)
    if quant is not None:
        config["quantization_config"] = quant.ct_config()
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


def _output_spec(name: str, shape: tuple[int, ...], src_dtype: torch.dtype, transform) -> TensorSpec:
    """Shape and dtype a tensor will have once written, from its header alone (the transform runs on meta)."""
    out = transform(name, torch.empty(shape, dtype=src_dtype, device="meta"))
    return TensorSpec(name, out.dtype, tuple(int(x) for x in out.shape))


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
