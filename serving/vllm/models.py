"""vLLM model classes for pruned checkpoints whose decoder layers have different FFN widths.

vLLM builds every decoder layer from one ``intermediate_size``. A non-uniform export names a
``Pruned<Base>ForCausalLM`` architecture and lists each layer's width in ``intermediate_sizes``;
the classes here subclass vLLM's own model for that family and give each layer's FFN its own
width, so weight loading, forward, kernels and tensor parallelism stay vLLM's. The hook is picked
per family in :data:`VLLM_FAMILIES` after reading vLLM 0.32's model code (three hooks):

* ``layer_type`` (llama, mistral, phi3): the causal LM accepts a decoder-layer class and the layer a
  ``config``; our layer passes a shallow config copy holding its own width (as vLLM's
  ``nemotron_nas``/DeciLM does with ``block_configs[layer_idx]``). Nothing is built twice.
* ``rebuild`` (qwen2, qwen3, gemma3, opt, falcon): the model hard-codes its layer class, so it is
  built with the narrowest width, then each layer's FFN is rebuilt at its own width before any
  weight is loaded.
* ``transformers`` (phi, which vLLM 0.32 serves through its Transformers backend): the HF model is
  built on the meta device; each layer's HF MLP is rebuilt at its width before vLLM swaps in its
  own linear layers.

Importing this module is cheap (no torch, no vLLM); classes are created on first attribute
access, which is how vLLM's lazy ``"module:Class"`` registration reaches them.
"""

from __future__ import annotations

import contextlib
import copy
import importlib
import inspect
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from prunenet.arch import ARCH_SPECS, ArchSpec, is_pruned_architecture

__all__ = ["MODELS_MODULE", "VllmFamily", "VLLM_FAMILIES", "pruned_architectures", "layer_widths"]

MODELS_MODULE = __name__
_VLLM_MODELS = "vllm.model_executor.models"


@dataclass(frozen=True)
class VllmFamily:
    """How vLLM 0.32 builds one family, and where a per-layer FFN width can be injected."""

    base: str
    """``module:Class`` of the vLLM model we subclass (module relative to vllm.model_executor.models)."""
    hook: str
    """``layer_type``, ``rebuild`` or ``transformers``: how widths get in (see the module docstring)."""
    decoder_layer: str = ""
    """``layer_type`` hook: ``module:Class`` of the stock decoder layer our layer subclasses."""
    ffn: str = ""
    """``rebuild``/``transformers`` hooks: the FFN builder in :data:`_FFN_BUILDERS`."""
    act: str = "hidden_act"
    """``gated`` builder: the activation's name, both as MLP keyword and as config attribute."""
    stock_ffn_ratio: int = 0
    """Non-zero when vLLM's *stock* model ignores the width attribute and builds ``ratio * hidden_size``."""


VLLM_FAMILIES: dict[str, VllmFamily] = {
    "llama": VllmFamily("llama:LlamaForCausalLM", "layer_type", decoder_layer="llama:LlamaDecoderLayer"),
    "mistral": VllmFamily("mistral:MistralForCausalLM", "layer_type", decoder_layer="mistral:MistralDecoderLayer"),
    # vLLM's Phi3ForCausalLM is llama with a fused gate_up_proj checkpoint; the llama layer loads it.
    "phi3": VllmFamily("phi3:Phi3ForCausalLM", "layer_type", decoder_layer="llama:LlamaDecoderLayer"),
    "qwen2": VllmFamily("qwen2:Qwen2ForCausalLM", "rebuild", ffn="gated"),
    "qwen3": VllmFamily("qwen3:Qwen3ForCausalLM", "rebuild", ffn="gated"),
    "gemma3_text": VllmFamily("gemma3:Gemma3ForCausalLM", "rebuild", ffn="gated", act="hidden_activation"),
    "opt": VllmFamily("opt:OPTForCausalLM", "rebuild", ffn="opt_fc"),
    # vLLM's FalconMLP ignores ffn_hidden_size (always 4 * hidden); the rebuild sets real widths.
    "falcon": VllmFamily("falcon:FalconForCausalLM", "rebuild", ffn="falcon_mlp", stock_ffn_ratio=4),
    # vLLM 0.32 has no native Phi(-2) model; it serves Phi through its Transformers backend.
    "phi": VllmFamily("transformers:TransformersForCausalLM", "transformers", ffn="hf_module"),
}


def pruned_architectures() -> list[str]:
    """Every ``Pruned<Base>ForCausalLM`` this module can build, in ARCH_SPECS order."""
    return [spec.pruned_architecture for mt, spec in ARCH_SPECS.items() if mt in VLLM_FAMILIES]


def layer_widths(config: Any, num_layers: int) -> list[int]:
    """The per-layer widths from an HF config; a clear error if they are missing or inconsistent."""
    widths = getattr(config, "intermediate_sizes", None)
    if not widths:
        raise ValueError("config.json names a Pruned* architecture but has no 'intermediate_sizes' list; "
                         "re-export the model with prunenet-export")
    if len(widths) != num_layers:
        raise ValueError(f"config.json 'intermediate_sizes' has {len(widths)} entries for {num_layers} layers")
    return [int(w) for w in widths]


def _import(ref: str) -> Any:
    module, name = ref.split(":")
    return getattr(importlib.import_module(f"{_VLLM_MODELS}.{module}"), name)


def _require_params(fn: Callable[..., Any], names: tuple[str, ...], where: str) -> None:
    """Fail at class creation, in words, if this vLLM lacks the hook we build on."""
    missing = [n for n in names if n not in inspect.signature(fn).parameters]
    if missing:
        raise TypeError(f"vLLM's {where} has no {', '.join(missing)} parameter in this vLLM version; "
                        "the prunenet plugin was written against vLLM 0.32")


def _layer_config(config: Any, width_attr: str, width: int) -> Any:
    """A shallow copy of the HF config with one layer's width (shared sub-objects stay shared)."""
    layer_config = copy.copy(config)
    setattr(layer_config, width_attr, width)
    return layer_config


@contextlib.contextmanager
def _narrowed(config: Any, width_attr: str, width: int) -> Iterator[None]:
    """Build the stock model with the narrowest width so the FFNs it makes (and we replace) are small."""
    original = getattr(config, width_attr, None)
    setattr(config, width_attr, width)
    try:
        yield
    finally:
        setattr(config, width_attr, original)


def _submodule(root: Any, path: str) -> Any:
    for part in path.split("."):
        root = getattr(root, part)
    return root


# --- FFN builders for the ``rebuild`` hook: (layer, config, width, quant_config, prefix, family) ---------


def _gated(layer, config, width, quant_config, prefix, family) -> None:
    mlp_cls = type(layer.mlp)
    layer.mlp = mlp_cls(hidden_size=config.hidden_size, intermediate_size=width,
                        quant_config=quant_config, prefix=f"{prefix}.mlp",
                        **{family.act: getattr(config, family.act)})


def _opt_fc(layer, config, width, quant_config, prefix, family) -> None:  # noqa: ARG001
    # OPT keeps fc1/fc2 on the decoder layer itself.
    bias = config.enable_bias
    layer.fc1 = type(layer.fc1)(config.hidden_size, width, bias=bias, quant_config=quant_config,
                                prefix=f"{prefix}.fc1")
    layer.fc2 = type(layer.fc2)(width, config.hidden_size, bias=bias, quant_config=quant_config,
                                prefix=f"{prefix}.fc2")


def _falcon_mlp(layer, config, width, quant_config, prefix, family) -> None:  # noqa: ARG001
    mlp = layer.mlp
    mlp.dense_h_to_4h = type(mlp.dense_h_to_4h)(
        config.hidden_size, width, bias=config.bias, skip_bias_add=True, quant_config=quant_config,
        prefix=f"{prefix}.mlp.dense_h_to_4h")
    mlp.dense_4h_to_h = type(mlp.dense_4h_to_h)(
        width, config.hidden_size, bias=config.bias, skip_bias_add=True,
        reduce_results=mlp.reduce_row_parallel_results, quant_config=quant_config,
        prefix=f"{prefix}.mlp.dense_4h_to_h")


def _hf_module(layer, config, width, quant_config, prefix, family) -> None:  # noqa: ARG001
    # Transformers backend: the HF model is still on the meta device and its nn.Linear layers are
    # swapped for vLLM's afterwards, so rebuild the HF MLP from a per-layer config.
    import torch

    with torch.device("meta"):
        layer.mlp = type(layer.mlp)(config)


_FFN_BUILDERS: dict[str, Callable[..., None]] = {
    "gated": _gated, "opt_fc": _opt_fc, "falcon_mlp": _falcon_mlp, "hf_module": _hf_module,
}


def _rebuild_ffns(model, spec: ArchSpec, family: VllmFamily, config, widths, quant_config, prefix: str) -> None:
    from vllm.model_executor.models.utils import PPMissingLayer

    build = _FFN_BUILDERS[family.ffn]
    layers = _submodule(model, spec.layers_prefix)
    for idx, (layer, width) in enumerate(zip(layers, widths, strict=True)):
        if isinstance(layer, PPMissingLayer):  # another pipeline stage owns it
            continue
        layer_prefix = f"{prefix}.{spec.layers_prefix}.{idx}" if prefix else f"{spec.layers_prefix}.{idx}"
        build(layer, _layer_config(config, spec.width_attr, width), width, quant_config, layer_prefix, family)


# --- class factories ------------------------------------------------------------------------------------


def _layer_type_class(name: str, model_type: str, spec: ArchSpec, family: VllmFamily) -> type:
    from vllm.model_executor.models.utils import extract_layer_index

    base, decoder = _import(family.base), _import(family.decoder_layer)
    _require_params(base.__init__, ("layer_type",), family.base)
    _require_params(decoder.__init__, ("config", "prefix"), family.decoder_layer)

    def layer_init(self, vllm_config, prefix: str = "", config=None, **kwargs) -> None:
        config = config or vllm_config.model_config.hf_config
        width = layer_widths(config, spec.num_layers(config))[extract_layer_index(prefix)]
        decoder.__init__(self, vllm_config=vllm_config, prefix=prefix,
                         config=_layer_config(config, spec.width_attr, width), **kwargs)

    layer_cls = _make(f"{name}DecoderLayer", decoder, {"__init__": layer_init})

    def model_init(self, *, vllm_config, prefix: str = "") -> None:
        config = vllm_config.model_config.hf_config
        layer_widths(config, spec.num_layers(config))  # fail before building anything
        base.__init__(self, vllm_config=vllm_config, prefix=prefix, layer_type=layer_cls)

    return _make(name, base, {"__init__": model_init, "prunenet_model_type": model_type})


def _rebuild_class(name: str, model_type: str, spec: ArchSpec, family: VllmFamily) -> type:
    base = _import(family.base)

    def model_init(self, *, vllm_config, prefix: str = "") -> None:
        config = vllm_config.model_config.hf_config
        widths = layer_widths(config, spec.num_layers(config))
        with _narrowed(config, spec.width_attr, min(widths)):
            base.__init__(self, vllm_config=vllm_config, prefix=prefix)
        _rebuild_ffns(self, spec, family, config, widths, vllm_config.quant_config, prefix)

    return _make(name, base, {"__init__": model_init, "prunenet_model_type": model_type})


def _transformers_class(name: str, model_type: str, spec: ArchSpec, family: VllmFamily) -> type:
    """vLLM's Transformers backend builds the HF model on the meta device, then swaps in vLLM layers
    (``recursive_replace``); the per-layer FFNs are rebuilt just before that swap, so nothing is
    ever allocated at the wrong width."""
    base = _import(family.base)
    if not callable(getattr(base, "recursive_replace", None)):
        raise TypeError(f"vLLM's {family.base} has no recursive_replace() in this vLLM version; "
                        "the prunenet plugin was written against vLLM 0.32")

    def recursive_replace(self) -> None:
        widths = layer_widths(self.config, spec.num_layers(self.config))
        _rebuild_ffns(self, spec, family, self.config, widths, None, "")
        base.recursive_replace(self)

    return _make(name, base, {"recursive_replace": recursive_replace, "prunenet_model_type": model_type})


def _make(name: str, base: type, attrs: dict[str, Any]) -> type:
    return type(name, (base,), {"__module__": __name__, "__qualname__": name, **attrs})


_FACTORIES = {"layer_type": _layer_type_class, "rebuild": _rebuild_class, "transformers": _transformers_class}


def _build(name: str) -> type:
    for model_type, spec in ARCH_SPECS.items():
        family = VLLM_FAMILIES.get(model_type)
        if family is not None and spec.pruned_architecture == name:
            return _FACTORIES[family.hook](name, model_type, spec, family)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __getattr__(name: str) -> type:
    """Create ``Pruned<Base>ForCausalLM`` on first access (vLLM imports it lazily by name)."""
    if not is_pruned_architecture(name):
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    cls = _build(name)
    globals()[name] = cls
    return cls
