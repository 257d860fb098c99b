"""Which families onnxruntime-genai's model builder builds here, and the one-line refusals around it.

Kept apart from :mod:`exporters.onnx.builder` (which imports the precision options) so the
``--quant`` checks can use it before any work without an import cycle.
"""

from __future__ import annotations

from prunenet.arch import ARCH_SPECS
from prunenet.errors import UnsupportedArchitecture

__all__ = ["BUILDER_FAMILIES", "check_family"]

BUILDER_FAMILIES = ("llama", "mistral", "qwen2", "qwen3")
"""model_types built by the builder, each checked here with per-layer widths (fp32 greedy == torch).

The builder lists gemma3_text, phi3 and phi too, but with transformers 5 and per-layer widths:
gemma3_text fails on the nested ``rope_parameters`` (KeyError 'rope_type'); phi3 splits the fused
``gate_up_proj`` at ``config.intermediate_size``, the widest layer, so narrower layers are cut wrongly;
phi builds, but its greedy decoding leaves torch's after 17 tokens (logit error 3e-3, beyond the
1e-4 every other family meets). Those families, like opt and falcon, keep the traced graph."""


def check_family(model_type: str | None, *, quantized: bool = False) -> None:
    """Families outside the builder's list keep the traced graph, which has no 4/8-bit weights."""
    if model_type not in ARCH_SPECS:
        raise UnsupportedArchitecture(f"model_type {model_type!r} is not supported; supported: "
                                      f"{', '.join(sorted(ARCH_SPECS))}")
    if quantized and model_type not in BUILDER_FAMILIES:
        raise UnsupportedArchitecture(f"--quant for --target onnx needs onnxruntime-genai's model builder, which "
                                      f"does not build {model_type}; it builds {', '.join(BUILDER_FAMILIES)}")
