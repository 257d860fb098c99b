"""Per-layer FFN widths for models pruned by prunenet-deploy.

Stock transformers builds every decoder layer with one ``intermediate_size``; a pruned model
keeps a different number of FFN neurons in each layer (``config.intermediate_sizes``). These
classes build the stock model, then rebuild each layer's FFN from a shallow copy of the config
with that layer's width, so weights load with their original names. Only torch and
transformers are imported; this file is identical in every output directory.
"""

import copy

import transformers
from torch import nn

# model_type -> (config attribute of the width, stock base model, stock causal LM)
_FAMILIES = {
    "llama": ("intermediate_size", "LlamaModel", "LlamaForCausalLM"),
    "mistral": ("intermediate_size", "MistralModel", "MistralForCausalLM"),
    "qwen2": ("intermediate_size", "Qwen2Model", "Qwen2ForCausalLM"),
    "qwen3": ("intermediate_size", "Qwen3Model", "Qwen3ForCausalLM"),
    "gemma3_text": ("intermediate_size", "Gemma3TextModel", "Gemma3ForCausalLM"),
    "phi3": ("intermediate_size", "Phi3Model", "Phi3ForCausalLM"),
    "phi": ("intermediate_size", "PhiModel", "PhiForCausalLM"),
    "opt": ("ffn_dim", "OPTModel", "OPTForCausalLM"),
    "falcon": ("ffn_hidden_size", "FalconModel", "FalconForCausalLM"),
}


def _decoder_layers(module):
    for path in ("model.layers", "model.decoder.layers", "transformer.h", "layers", "decoder.layers", "h"):
        node = module
        for part in path.split("."):
            node = getattr(node, part, None)
            if node is None:
                break
        if isinstance(node, nn.ModuleList):
            return node
    raise ValueError(f"{type(module).__name__}: cannot find the decoder layers")


def _rebuild_ffn(module, config):
    """Replace every layer's FFN with one of that layer's width (weights are loaded afterwards)."""
    width_attr = _FAMILIES[config.model_type][0]
    widths = getattr(config, "intermediate_sizes", None)
    layers = _decoder_layers(module)
    if widths is None:
        return
    if len(widths) != len(layers):
        raise ValueError(f"config.intermediate_sizes has {len(widths)} entries for {len(layers)} layers")
    for layer, width in zip(layers, widths):
        layer_config = copy.copy(config)
        setattr(layer_config, width_attr, int(width))
        if config.model_type == "opt":  # OPT keeps fc1/fc2 on the decoder layer itself
            bias = getattr(config, "enable_bias", True)
            layer.fc1 = nn.Linear(config.hidden_size, int(width), bias=bias)
            layer.fc2 = nn.Linear(int(width), config.hidden_size, bias=bias)
        else:
            layer.mlp = type(layer.mlp)(layer_config)


def _pruned(base_name):
    base = getattr(transformers, base_name)

    def __init__(self, config, *args, **kwargs):
        base.__init__(self, config, *args, **kwargs)
        _rebuild_ffn(self, config)

    cls = type(f"Pruned{base_name}", (base,), {"__init__": __init__, "__module__": __name__})
    cls.__qualname__ = cls.__name__
    return cls


PrunedLlamaModel = _pruned("LlamaModel")
PrunedLlamaForCausalLM = _pruned("LlamaForCausalLM")
PrunedMistralModel = _pruned("MistralModel")
PrunedMistralForCausalLM = _pruned("MistralForCausalLM")
PrunedQwen2Model = _pruned("Qwen2Model")
PrunedQwen2ForCausalLM = _pruned("Qwen2ForCausalLM")
PrunedQwen3Model = _pruned("Qwen3Model")
PrunedQwen3ForCausalLM = _pruned("Qwen3ForCausalLM")
PrunedGemma3TextModel = _pruned("Gemma3TextModel")
PrunedGemma3ForCausalLM = _pruned("Gemma3ForCausalLM")
PrunedPhi3Model = _pruned("Phi3Model")
PrunedPhi3ForCausalLM = _pruned("Phi3ForCausalLM")
PrunedPhiModel = _pruned("PhiModel")
PrunedPhiForCausalLM = _pruned("PhiForCausalLM")
PrunedOPTModel = _pruned("OPTModel")
PrunedOPTForCausalLM = _pruned("OPTForCausalLM")
PrunedFalconModel = _pruned("FalconModel")
PrunedFalconForCausalLM = _pruned("FalconForCausalLM")
