"""Per-architecture facts, as data: where the FFN lives and how it is sliced.

One :class:`ArchSpec` per family, keyed by ``config.model_type``. Tensor names are the
checkpoint names relative to one decoder layer, so the algorithm can read exactly the
matrices it needs from safetensors without building the model.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from prunenet.errors import UnsupportedArchitecture

__all__ = ["ArchSpec", "ARCH_SPECS", "MODELING_FILE", "PRUNED_PREFIX", "get_arch_spec", "supported_model_types",
           "is_pruned_architecture"]

MODELING_FILE = "modeling_pruned.py"
"""The remote-code module a non-uniform export ships (transformers loads it with ``trust_remote_code``)."""
PRUNED_PREFIX = "Pruned"
"""Non-uniform exports name ``Pruned<Base>`` classes: ``PrunedLlamaForCausalLM``, ``PrunedLlamaModel``."""


@dataclass(frozen=True)
class ArchSpec:
    """Where a family keeps its FFN, and how a set of kept neurons slices it."""

    layers_prefix: str
    """Checkpoint prefix of the decoder layers; layer ``i`` is ``f"{layers_prefix}.{i}."``."""
    state: str
    """The first FFN matrix (rows = neurons): the policy's state and the paper's reward."""
    row_sliced: tuple[str, ...]
    """Tensors whose dim 0 indexes neurons (gate/up/fc1 weights and biases)."""
    col_sliced: tuple[str, ...]
    """Tensors whose dim 1 indexes neurons (down/fc2 weights)."""
    out_proj: str
    """The matrix that writes the FFN output back to the residual stream (columns = neurons)."""
    width_attr: str
    """Config attribute holding the FFN width."""
    hf_architecture: str
    """The stock transformers causal-LM class name for this family."""
    hf_base_model: str
    """The stock transformers base-model class name (what ``AutoModel`` builds)."""
    fused_gate_up: bool = False
    """``state`` is a fused [gate; up] matrix (Phi-3): neuron ``j`` owns rows ``j`` and ``I + j``."""
    up: str | None = None
    """The second row-sliced matrix of a gated FFN (for weight statistics), if separate."""
    gated: bool = True
    ffn_norm: str = "post_attention_layernorm.weight"
    """The norm whose gain scales the FFN input; data-free rewards draw inputs with this scale."""
    norm_offset: float = 0.0
    """Gemma's RMSNorm multiplies by ``1 + weight``."""
    act_attr: str = "hidden_act"
    """Config attribute naming the FFN activation."""
    default_act: str = "silu"
    layer_returns_tuple: bool = False
    """The decoder layer returns ``(hidden, ...)`` rather than the hidden states (Falcon in transformers 5)."""
    atol: float = 1e-4
    """Logit tolerance for export validation in fp32."""

    def layer_name(self, layer: int, suffix: str) -> str:
        return f"{self.layers_prefix}.{layer}.{suffix}"

    def num_layers(self, config: Any) -> int:
        return int(_get(config, "num_hidden_layers"))

    def width(self, config: Any) -> int:
        """The source FFN width (a config object or a config.json dict)."""
        value = _get(config, self.width_attr)
        if value is None and self.width_attr == "ffn_hidden_size":  # Falcon defaults to 4 * hidden
            value = 4 * int(_get(config, "hidden_size"))
        return int(value)

    @property
    def pruned_architecture(self) -> str:
        """The causal-LM class a non-uniform export names in config.json (vLLM plugin, remote code)."""
        return PRUNED_PREFIX + self.hf_architecture

    @property
    def pruned_base_model(self) -> str:
        return PRUNED_PREFIX + self.hf_base_model

    def activation(self, config: Any) -> str:
        return str((_get(config, self.act_attr) if self.act_attr else None) or self.default_act)


def _get(config: Any, key: str) -> Any:
    return config.get(key) if isinstance(config, dict) else getattr(config, key, None)


_GATED = dict(
    layers_prefix="model.layers",
    state="mlp.gate_proj.weight",
    up="mlp.up_proj.weight",
    row_sliced=("mlp.gate_proj.weight", "mlp.up_proj.weight"),
    col_sliced=("mlp.down_proj.weight",),
    out_proj="mlp.down_proj.weight",
    width_attr="intermediate_size",
)

ARCH_SPECS: dict[str, ArchSpec] = {
    "llama": ArchSpec(hf_architecture="LlamaForCausalLM", hf_base_model="LlamaModel", **_GATED),
    "mistral": ArchSpec(hf_architecture="MistralForCausalLM", hf_base_model="MistralModel", **_GATED),
    "qwen2": ArchSpec(hf_architecture="Qwen2ForCausalLM", hf_base_model="Qwen2Model", **_GATED),
    "qwen3": ArchSpec(hf_architecture="Qwen3ForCausalLM", hf_base_model="Qwen3Model", **_GATED),
    "gemma3_text": ArchSpec(
        hf_architecture="Gemma3ForCausalLM",
        hf_base_model="Gemma3TextModel",
        ffn_norm="pre_feedforward_layernorm.weight",
        norm_offset=1.0,
        act_attr="hidden_activation",
        default_act="gelu_pytorch_tanh",
        **_GATED,
    ),
    "phi3": ArchSpec(
        hf_architecture="Phi3ForCausalLM",
        hf_base_model="Phi3Model",
        layers_prefix="model.layers",
        state="mlp.gate_up_proj.weight",
        row_sliced=("mlp.gate_up_proj.weight",),
        col_sliced=("mlp.down_proj.weight",),
        out_proj="mlp.down_proj.weight",
        width_attr="intermediate_size",
        fused_gate_up=True,
    ),
    "opt": ArchSpec(
        hf_architecture="OPTForCausalLM",
        hf_base_model="OPTModel",
        layers_prefix="model.decoder.layers",
        state="fc1.weight",
        row_sliced=("fc1.weight", "fc1.bias"),
        col_sliced=("fc2.weight",),
        out_proj="fc2.weight",
        width_attr="ffn_dim",
        gated=False,
        ffn_norm="final_layer_norm.weight",
        act_attr="activation_function",
        default_act="relu",
    ),
    "phi": ArchSpec(
        hf_architecture="PhiForCausalLM",
        hf_base_model="PhiModel",
        layers_prefix="model.layers",
        state="mlp.fc1.weight",
        row_sliced=("mlp.fc1.weight", "mlp.fc1.bias"),
        col_sliced=("mlp.fc2.weight",),
        out_proj="mlp.fc2.weight",
        width_attr="intermediate_size",
        gated=False,
        ffn_norm="input_layernorm.weight",  # Phi runs attention and FFN in parallel on one norm
        default_act="gelu_new",
    ),
    "falcon": ArchSpec(
        hf_architecture="FalconForCausalLM",
        hf_base_model="FalconModel",
        layers_prefix="transformer.h",
        state="mlp.dense_h_to_4h.weight",
        row_sliced=("mlp.dense_h_to_4h.weight", "mlp.dense_h_to_4h.bias"),
        col_sliced=("mlp.dense_4h_to_h.weight",),
        out_proj="mlp.dense_4h_to_h.weight",
        width_attr="ffn_hidden_size",
        gated=False,
        ffn_norm="input_layernorm.weight",
        act_attr="",  # FalconMLP hard-codes GELU
        default_act="gelu",
        layer_returns_tuple=True,
    ),
}


def is_pruned_architecture(name: str) -> bool:
    return str(name).startswith(PRUNED_PREFIX)


def supported_model_types() -> list[str]:
    return sorted(ARCH_SPECS)


def get_arch_spec(model_type: str | None) -> ArchSpec:
    """The spec for ``model_type``; an unknown type is an error listing what is supported."""
    try:
        return ARCH_SPECS[str(model_type)]
    except KeyError:
        raise UnsupportedArchitecture(
            f"model_type {model_type!r} is not supported; supported: {', '.join(supported_model_types())}"
        ) from None
