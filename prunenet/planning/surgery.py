"""Slice FFN neurons out of tensors or modules according to a :class:`PruningPlan`.

Pure tensor functions (used by the streaming exporter) plus :func:`apply_plan_`, which
rewrites an in-memory model (used for evaluation). The same neuron set is removed from
every FFN matrix of a layer: rows of gate/up/fc1 (and biases), columns of down/fc2.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from prunenet.arch import ArchSpec, get_arch_spec
from prunenet.planning.plan import LayerPlan, PruningPlan

__all__ = ["neuron_axis", "slice_tensor", "pad_tensor", "apply_plan_", "layer_tensor_roles"]


def neuron_axis(spec: ArchSpec, suffix: str) -> int | None:
    """0 for row-sliced tensors, 1 for column-sliced ones, None for tensors pruning leaves alone."""
    if suffix in spec.row_sliced:
        return 0
    if suffix in spec.col_sliced:
        return 1
    return None


def layer_tensor_roles(spec: ArchSpec, name: str) -> tuple[int, str] | None:
    """``(layer, suffix)`` for a checkpoint tensor that pruning touches, else None."""
    prefix = spec.layers_prefix + "."
    if not name.startswith(prefix):
        return None
    layer, _, suffix = name[len(prefix) :].partition(".")
    if not layer.isdigit() or neuron_axis(spec, suffix) is None:
        return None
    return int(layer), suffix


def _index(spec: ArchSpec, axis: int, kept: torch.Tensor, width: int) -> torch.Tensor:
    if spec.fused_gate_up and axis == 0:  # Phi-3 gate_up_proj: neuron j owns rows j and width + j
        return torch.cat([kept, kept + width])
    return kept


def slice_tensor(spec: ArchSpec, suffix: str, tensor: torch.Tensor, kept: list[int] | tuple[int, ...]) -> torch.Tensor:
    """Keep only the neurons in ``kept`` along the tensor's neuron axis."""
    axis = neuron_axis(spec, suffix)
    if axis is None:
        return tensor
    width = tensor.shape[axis] // (2 if spec.fused_gate_up and axis == 0 else 1)
    index = _index(spec, axis, torch.as_tensor(kept, dtype=torch.long), width)
    return tensor.index_select(axis, index).contiguous()


def pad_tensor(spec: ArchSpec, suffix: str, tensor: torch.Tensor, target: int) -> torch.Tensor:
    """Zero-pad a sliced tensor to ``target`` neurons: exact, since act(0) * 0 contributes nothing."""
    axis = neuron_axis(spec, suffix)
    if axis is None:
        return tensor
    parts = 2 if spec.fused_gate_up and axis == 0 else 1
    width = tensor.shape[axis] // parts
    if width == target:
        return tensor
    chunks = tensor.chunk(parts, dim=axis)
    padded = []
    for chunk in chunks:
        shape = list(chunk.shape)
        shape[axis] = target - width
        padded += [chunk, chunk.new_zeros(shape)]
    return torch.cat(padded, dim=axis).contiguous()


def _set_linear_(module: nn.Module, param: str, value: torch.Tensor) -> None:
    setattr(module, param, nn.Parameter(value, requires_grad=False))
    if isinstance(module, nn.Linear) and param == "weight":
        module.out_features, module.in_features = value.shape


def apply_layer_plan_(layer: nn.Module, spec: ArchSpec, lp: LayerPlan) -> nn.Module:
    """Slice one decoder layer's FFN in place to the kept neurons of ``lp``."""
    if lp.width == lp.original_width:
        return layer
    for suffix in spec.row_sliced + spec.col_sliced:
        module_path, _, param = suffix.rpartition(".")
        try:
            module = layer.get_submodule(module_path)
        except AttributeError:
            continue
        current = getattr(module, param, None)
        if current is None:
            continue
        _set_linear_(module, param, slice_tensor(spec, suffix, current.data, lp.kept))
    return layer


def apply_plan_(model: nn.Module, plan: PruningPlan) -> nn.Module:
    """Slice ``model`` in place to the plan's widths and record them on its config."""
    spec = get_arch_spec(model.config.model_type)
    layers = model.get_submodule(spec.layers_prefix)
    for i, lp in enumerate(plan.layers):
        apply_layer_plan_(layers[i], spec, lp)
    record_widths_(model.config, spec, plan.widths)
    return model


def record_widths_(config: Any, spec: ArchSpec, widths: list[int]) -> None:
    """Store per-layer widths on a config: the scalar attribute becomes the widest layer."""
    setattr(config, spec.width_attr, max(widths))
    if len(set(widths)) > 1:
        config.intermediate_sizes = list(widths)
    elif hasattr(config, "intermediate_sizes"):
        delattr(config, "intermediate_sizes")
