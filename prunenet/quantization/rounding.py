"""The quantize step: round the pruned (and healed) model's linears with GPTQ on its own self-text.

Rounding that sees inputs beats rounding each weight alone, most at 4 bits; the inputs here are the
model's own self-text (the plan's, or healing's), so the export stays free of user data. The source
streams one decoder layer at a time (:class:`~prunenet.source.layerwise.LayerwiseModel`): the layer is
pruned by the plan, takes its healed tensors, is rounded as the writer will store it, collects each
linear's input second moment on the self-text, is quantized, and passes its *quantized* outputs on, so
every later layer compensates the error of the ones before it. The result is a
:class:`~prunenet.healing.weights.HealedWeights` directory the writer reads in place of the source:
each rounded weight (on its grid) with its ``weight_scale``, so the writer packs exactly these codes.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import torch

from prunenet.healing.weights import HealedWeights
from prunenet.planning.plan import PruningPlan
from prunenet.quantization.gptq import gptq_round
from prunenet.quantization.schemes import QuantSpec

__all__ = ["gptq_weights", "gptq_bytes", "given_scales", "calibration_rows", "SCALE_SUFFIX", "CALIBRATION_TOKENS"]

SCALE_SUFFIX = "_scale"
"""A rounded ``...weight``'s scales are stored as ``...weight_scale`` (compressed-tensors' name)."""
CALIBRATION_TOKENS = 2048
"""Self-text generated for the rounding when neither planning nor healing wrote any (``--self-data 0``)."""


def gptq_bytes(ckpt, tokens: int) -> int:
    """Peak bytes of :func:`gptq_weights`: the streamed source in fp32 (embeddings, head, one layer), every
    linear's X^T X of one layer, the largest weight's GPTQ working copies and its moment's inverse, and
    the self-text's hidden states (in and out of the layer)."""
    from prunenet.arch import get_arch_spec
    from prunenet.memory import model_sizes
    from prunenet.quantization.checks import linear_shapes

    spec = get_arch_spec(ckpt.config.get("model_type"))
    sizes = model_sizes(ckpt, spec, 4)
    layer0 = {n: s for n, s in linear_shapes(ckpt.shapes(), spec.layers_prefix).items()
              if n.startswith(f"{spec.layers_prefix}.0.")}
    moments = sum(k * k * 4 for _, k in layer0.values())
    d, vocab = int(ckpt.config.get("hidden_size") or 0), int(ckpt.config.get("vocab_size") or 0)
    shapes = [*layer0.values(), (vocab, d)]  # the head, when the target rounds it too
    work = max(4 * n * k * 4 + 3 * k * k * 4 for n, k in shapes)
    hidden = 2 * tokens * d * 4
    return sizes.rest + 2 * sizes.per_layer + moments + work + hidden


def calibration_rows(self_text: list[torch.Tensor] | None, heal_text: list[torch.Tensor] | None, source: Path,
                     seed: int, device: torch.device, dtype: torch.dtype) -> list[torch.Tensor]:
    """The id rows GPTQ sees: healing's self-text (three times the plan's, in longer documents: it measured
    better on both evaluation texts), else the plan's, else fresh self-text."""
    if heal_text:
        return heal_text
    if self_text:
        return self_text
    from prunenet.planning.selfdata import self_text_ids

    return self_text_ids(source, CALIBRATION_TOKENS, seed, device, dtype)


def given_scales(weights: HealedWeights | None) -> Callable[[str], torch.Tensor | None] | None:
    """``name -> scales`` of the weights GPTQ rounded in ``weights`` (None for any other weight)."""
    if weights is None:
        return None
    return lambda name: weights.get(name + SCALE_SUFFIX).float() if name + SCALE_SUFFIX in weights else None


def gptq_weights(source: Path, plan: PruningPlan, quant: QuantSpec, rows: list[torch.Tensor], out: Path, *,
                 dtype: torch.dtype, healed: HealedWeights | None = None, head: bool = False,
                 device: torch.device | str = "cpu") -> HealedWeights:
    """Round every decoder linear of ``plan``'s model with GPTQ on the id ``rows``; write them to ``out``.

    ``dtype``: the dtype the export is written in (weights are rounded to it first, and the scales are
    stored in it, as the writer does). ``healed`` tensors replace the sliced source's and are carried
    over (the ones that are not quantized, such as biases, unchanged). ``head``: round the LM head too,
    on the final hidden states (stored under its checkpoint name: the embedding's, when they are tied)."""
    from prunenet.arch import get_arch_spec
    from prunenet.planning.surgery import apply_layer_plan_
    from prunenet.progress import status, track
    from prunenet.quantization.checks import linear_shapes
    from prunenet.source.layerwise import LayerwiseModel

    arch = get_arch_spec(plan.model_type)
    lm = LayerwiseModel(source, device=device, dtype=torch.float32, round_to=dtype)
    linears = set(linear_shapes(lm.ckpt.shapes(), arch.layers_prefix))
    result = HealedWeights(out)
    hidden, kwargs = lm.prepare(rows)
    for i in track(range(lm.num_layers), "Rounding weights (GPTQ on self-text)", total=lm.num_layers):
        prefix = f"{arch.layers_prefix}.{i}."
        with lm.layer(i) as module:
            module = apply_layer_plan_(module, arch, plan.layers[i])
            if healed is not None:
                healed.assign_(module, prefix, round_to=dtype)
            targets = {prefix + name: sub for name, sub in module.named_modules()
                       if f"{prefix}{name}.weight" in linears}
            moments = _input_moments(lm, module, i, hidden, kwargs, targets)
            tensors: dict[str, torch.Tensor] = {}
            for name, sub in targets.items():
                weight, scales = gptq_round(sub.weight, moments[name], quant.info, quant.group, quant.clipping,
                                            scale_dtype=dtype)
                sub.weight.data = weight.to(sub.weight.dtype)
                tensors[f"{name}.weight"], tensors[f"{name}.weight{SCALE_SUFFIX}"] = weight, scales
            if healed is not None:
                tensors |= {n: healed.get(n) for n in healed.names() if n.startswith(prefix) and n not in tensors}
            result.save_layer(i, tensors)
            hidden = lm.forward_layer(module, i, hidden, kwargs)
    if head:
        name, weight = _head_weight(lm)
        with status("Rounding the LM head (GPTQ on self-text)"):
            moment = _head_moment(lm, rows, hidden)
            rounded, scales = gptq_round(weight, moment, quant.info, quant.group, quant.clipping, scale_dtype=dtype)
        result.save_layer(lm.num_layers, {name: rounded, name + SCALE_SUFFIX: scales})
    return result


def _head_weight(lm) -> tuple[str, torch.Tensor]:
    """The LM head's weight and the name the checkpoint stores it under."""
    weight = lm.model.get_output_embeddings().weight
    names = [n for n, p in lm.model.named_parameters(remove_duplicate=False) if p is weight and n in lm.ckpt.weight_map]
    if not names:
        raise ValueError("the LM head's weight is not in the checkpoint")
    return names[0], weight


def _head_moment(lm, rows: list[torch.Tensor], final: list[torch.Tensor]) -> torch.Tensor:
    """``X^T X`` of the head's inputs (the final norm's outputs) over all rows."""
    total: list[torch.Tensor] = []

    def accumulate(_module, args):
        x = args[0].detach().reshape(-1, args[0].shape[-1]).float()
        total.append(x.T @ x if not total else total.pop() + x.T @ x)

    handle = lm.model.get_output_embeddings().register_forward_pre_hook(accumulate)
    try:
        for ids, h in zip(rows, final, strict=True):
            lm.logits(ids.reshape(1, -1), h)
    finally:
        handle.remove()
    return total[0]


def _input_moments(lm, module: torch.nn.Module, index: int, hidden, kwargs,
                   targets: dict[str, torch.nn.Module]) -> dict[str, torch.Tensor]:
    """``X^T X`` of every target linear's inputs over all rows (one forward of the layer)."""
    sums: dict[str, torch.Tensor] = {}

    def hook(name: str):
        def accumulate(_module, args):
            x = args[0].detach().reshape(-1, args[0].shape[-1]).float()
            sums[name] = sums[name] + x.T @ x if name in sums else x.T @ x
        return accumulate

    handles = [sub.register_forward_pre_hook(hook(name)) for name, sub in targets.items()]
    try:
        lm.forward_layer(module, index, hidden, kwargs)
    finally:
        for h in handles:
            h.remove()
    return sums
