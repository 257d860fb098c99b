"""Every export proves itself: reload the written directory and compare logits with the pruned source.

The reference is the source with the plan applied layer by layer (``apply_layer_plan_``) and its
weights rounded to the written dtype; the export is read back through its own config.json (and
``modeling_pruned.py``, the remote code users load). Both are run one decoder layer at a time
(:class:`~prunenet.source.layerwise.LayerwiseModel`), so a 7B is validated without ever being held
in memory, and every written tensor must land in the rebuilt model (a missing or foreign tensor is an
error). A mistake anywhere in streaming, slicing, padding, casting or the config rewrite shows up as
a mismatch.
"""

from __future__ import annotations

from pathlib import Path

import torch

from prunenet.arch import get_arch_spec
from prunenet.errors import ExportValidationError
from prunenet.healing.weights import HealedWeights
from prunenet.planning.plan import PruningPlan
from prunenet.planning.surgery import apply_layer_plan_
from prunenet.quantization.apply import fake_quantize_layer_
from prunenet.quantization.checks import linear_shapes
from prunenet.quantization.rounding import SCALE_SUFFIX, given_scales
from prunenet.quantization.schemes import QuantSpec
from prunenet.source.layerwise import LayerwiseModel

__all__ = ["validate_hf_export"]


def validate_hf_export(source: Path, out: Path, plan: PruningPlan, *, dtype: torch.dtype | None = None,
                       device: str | torch.device = "cpu", seq_len: int = 16,
                       healed: HealedWeights | None = None, quant: QuantSpec | None = None) -> float:
    """Max |logit difference| between the export and the pruned source; raises if too large.

    ``dtype``: the dtype the export was written in (the reference is rounded to it); both sides then
    compute in fp32, so the comparison is as tight as the family's ``ArchSpec.atol``. ``healed``: the
    healed tensors the export was written with (the reference takes them in place of the sliced ones).
    ``quant``: the export's scheme; the reference's decoder linears are fake-quantized the same way and
    the export is read through its own ``quantization_config`` by compressed-tensors' decompressor.
    """
    spec = get_arch_spec(plan.model_type)
    reference = LayerwiseModel(source, device=device, dtype=torch.float32, round_to=dtype)
    _outside_layers(reference, healed, spec.layers_prefix + ".", dtype)
    exported = LayerwiseModel(out, device=device, dtype=torch.float32)
    linears = set(linear_shapes(reference.ckpt.shapes(), spec.layers_prefix))
    vocab = int(reference.config.vocab_size)
    ids = torch.randint(0, vocab, (2, seq_len), generator=torch.Generator().manual_seed(0))

    def pruned(i: int, module: torch.nn.Module) -> torch.nn.Module:
        module = apply_layer_plan_(module, spec, plan.layers[i])
        if healed is not None:
            healed.assign_(module, f"{spec.layers_prefix}.{i}.", round_to=dtype)
        if quant is not None:
            fake_quantize_layer_(module, f"{spec.layers_prefix}.{i}.", linears, quant,
                                 dtype or reference.ckpt.dtype, scales=given_scales(healed))
        return module

    h_ref = reference.final_hidden([ids], edit=pruned)
    h_exp = exported.final_hidden([ids])
    expected = reference.logits(ids, h_ref[0])
    diff = (expected - exported.logits(ids, h_exp[0])).abs().max().item()
    if not diff <= spec.atol * max(1.0, expected.abs().max().item()):
        raise ExportValidationError(f"exported model differs from the pruned model (max |logit diff| {diff:.3g})")
    return diff


def _outside_layers(reference: LayerwiseModel, healed: HealedWeights | None, layers: str,
                    dtype: torch.dtype | None) -> None:
    """Tensors outside the decoder layers that the export replaced (a GPTQ-rounded LM head, which may be
    the tied embedding): copied in place, so a tie stays a tie."""
    if healed is None:
        return
    for name in healed.names():
        if not name.startswith(layers) and not name.endswith(SCALE_SUFFIX):
            param = reference.model.get_parameter(name)
            param.data.copy_(healed.get(name).to(dtype or param.dtype).to(param.dtype))
