"""Scale tuning: after GPTQ fixes every weight's integer codes, the scales train end to end.

GPTQ rounds one layer at a time, each against its own inputs; what a user sees is the whole model's
next-token distribution. With the codes fixed, a rounded weight is ``codes x scales`` and differentiable
in the scales, so a few steps of healing's loss (KL to the dense model against its top-k targets) on the
model's own self-text move every group's scale toward what the model as a whole needs. What is written
is still exactly what the writers store (the same codes, new scales), for compressed-tensors and
MatMulNBits alike. The caller picks the text: the plan's self-text where there is one, since the healed
weights already fit healing's training text and tuning on that measured no gain on the evaluation
texts. Scales train as log-multipliers (one learning rate whatever their magnitude), and the best
held-out step is kept, so tuning never leaves the model worse on text it did not train on. Only
weight-only schemes tune: the per-token rounding of activations passes no gradient.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from prunenet.compute import Compute
from prunenet.errors import PruneNetError
from prunenet.healing.weights import HealedWeights
from prunenet.planning.plan import PruningPlan
from prunenet.quantization.numerics import _expand, _store
from prunenet.quantization.tune_config import TuneConfig

__all__ = ["TuneConfig", "TuneOutcome", "tune_scales", "tuning_bytes", "ScaledCodes"]


@dataclass(frozen=True)
class TuneOutcome:
    held_out_before: float
    """KL(dense || quantized) on the held-out rows with GPTQ's scales."""
    held_out_after: float
    steps: int
    best_step: int
    tuned_tensors: int
    tokens: int
    seconds: float

    def to_dict(self) -> dict:
        return asdict(self)


class ScaledCodes(torch.nn.Module):
    """A linear whose weight is fixed integer codes times trainable per-group (or per-row) scales.

    The codes are kept as int8 and the scales broadcast over each group, so the product's backward keeps
    nothing beside them: only the weight the linear itself needs for its input gradient."""

    def __init__(self, linear: torch.nn.Linear, scales: torch.Tensor):
        super().__init__()
        weight = linear.weight.detach().float()
        base = scales.detach().float().to(weight.device)
        codes = torch.round(weight / _expand(base, weight.shape[1]))
        self.register_buffer("codes", codes.to(torch.int8), persistent=False)
        self.register_buffer("base", base.clone(), persistent=False)
        self.log_scale = torch.nn.Parameter(torch.zeros_like(base))
        self.bias = linear.bias

    def scales(self) -> torch.Tensor:
        return self.base * self.log_scale.exp()

    def weight(self) -> torch.Tensor:
        n, k = self.codes.shape
        groups = self.base.shape[1]
        return (self.codes.view(n, groups, k // groups) * self.scales().unsqueeze(-1)).view(n, k)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.weight().to(x.dtype), None if self.bias is None else self.bias.to(x.dtype))


def tuning_bytes(ckpt, compute: Compute, kept: float, rows: int, row_len: int, batch: int) -> int:
    """Peak bytes of :func:`tune_scales`: the pruned model in fp32 with its int8 codes beside it, the
    dense teacher streamed one layer at a time (embeddings and head resident), the training
    rows' top-k targets and one batch's activations and vocabulary-wide logits."""
    from prunenet.arch import get_arch_spec
    from prunenet.healing.measure import TOP_K
    from prunenet.memory import model_sizes

    spec = get_arch_spec(ckpt.config.get("model_type"))
    c = ckpt.config
    d, vocab, n_layers, m = (int(c.get("hidden_size") or 0), int(c.get("vocab_size") or 0), spec.num_layers(c),
                             spec.width(c))
    sizes = model_sizes(ckpt, spec, 4)
    ffn_removed = int(n_layers * 3 * m * d * 4 * (1 - kept))
    model = sizes.rest + n_layers * sizes.per_layer - ffn_removed
    codes = (n_layers * sizes.per_layer - ffn_removed) // 4
    tokens = batch * row_len
    activations = tokens * n_layers * (12 * d + 4 * m) * 4 + tokens * vocab * 4 * 5
    return model + codes + sizes.rest + 2 * sizes.per_layer + rows * row_len * (d * 4 + TOP_K * 12) + activations


def _equal_rows(rows: list[torch.Tensor]) -> list[torch.Tensor]:
    """Every row cut to the shortest one's length, so that a batch is one tensor (self-text rows differ
    by a few prompt tokens)."""
    shortest = min(r.numel() for r in rows)
    return [r.reshape(1, -1)[:, :shortest] for r in rows]


def _quantized_student(source: Path, plan: PruningPlan, rounded: HealedWeights, compute: Compute, layers_prefix: str,
                       ) -> tuple[torch.nn.Module, dict[str, ScaledCodes]]:
    """The pruned model in fp32 with every rounded tensor in place; the decoder's rounded linears become
    :class:`ScaledCodes`, whose log-scales are the only trainable parameters."""
    from prunenet.planning.surgery import apply_plan_
    from prunenet.progress import status
    from prunenet.quantization.rounding import SCALE_SUFFIX
    from prunenet.source.loaders import load_causal_lm

    with status("Loading the quantized model for scale tuning"):
        student = apply_plan_(load_causal_lm(source, dtype=torch.float32, device=compute.device), plan).eval()
        rounded.assign_(student, "")
    for p in student.parameters():
        p.requires_grad_(False)
    tuned: dict[str, ScaledCodes] = {}
    for name in rounded.names():
        if not (name.endswith(SCALE_SUFFIX) and name.startswith(layers_prefix + ".")):
            continue
        path = name.removesuffix(SCALE_SUFFIX).removesuffix(".weight")
        parent, _, leaf = path.rpartition(".")
        owner = student.get_submodule(parent)
        module = ScaledCodes(getattr(owner, leaf), rounded.get(name))
        setattr(owner, leaf, module)
        tuned[path + ".weight"] = module
    return student, tuned


def tune_scales(source: Path, plan: PruningPlan, rounded: HealedWeights, rows: list[torch.Tensor], cfg: TuneConfig,
                *, compute: Compute, scale_dtype: torch.dtype) -> TuneOutcome:
    """Tune the scales of the decoder weights GPTQ rounded into ``rounded`` on the id ``rows``; the tuned
    weights and scales replace GPTQ's there (``scale_dtype``: the dtype scales are stored in)."""
    from prunenet.arch import get_arch_spec
    from prunenet.healing.loop import autocast, fit
    from prunenet.healing.measure import TeacherTargets, row_quality, sparse_kl_loss
    from prunenet.progress import status
    from prunenet.source.layerwise import LayerwiseModel

    start = time.perf_counter()
    rows = _equal_rows(rows)
    if len(rows) < 2:
        raise PruneNetError("scale tuning needs at least 2 self-text rows (one is held out)")
    n_held = min(len(rows) - 1, max(1, round(len(rows) * cfg.holdout)))
    train, held = rows[:-n_held], rows[-n_held:]
    teacher = LayerwiseModel(source, device=compute.device, dtype=compute.heal_layer)
    finals = teacher.final_hidden(train + held, label="Dense pass over the scale-tuning text")
    with status("Recording the dense model's next-token distributions"):
        targets = [TeacherTargets.from_logits(teacher.logits(r, h)) for r, h in zip(train, finals, strict=False)]
    held_hidden = finals[len(train):]
    spec = get_arch_spec(plan.model_type)
    student, tuned = _quantized_student(source, plan, rounded, compute, spec.layers_prefix)
    device = compute.device

    def batch_loss(idx: list[int]) -> torch.Tensor:
        ids = torch.cat([train[i] for i in idx]).to(device)
        return sparse_kl_loss(TeacherTargets.cat([targets[i] for i in idx]),
                              student(input_ids=ids, use_cache=False).logits)

    def held_kl() -> float:
        return row_quality(held, lambda i: teacher.logits(held[i], held_hidden[i]).float(),
                           lambda i: student(input_ids=held[i].to(device), use_cache=False).logits)["kl"]

    params = [m.log_scale for m in tuned.values()]
    for p in params:
        p.requires_grad_(True)
    with autocast(device, teacher.dtype):
        result = fit(params, batch_loss, held_kl, len(train), cfg, "Tuning the quantization scales",
                     torch.Generator().manual_seed(cfg.seed), warmup=cfg.warmup)
    _store_tuned(rounded, tuned, spec.layers_prefix, scale_dtype)
    return TuneOutcome(result.initial, result.best, result.steps, result.best_step, len(tuned),
                       sum(r.numel() for r in rows), time.perf_counter() - start)


@torch.no_grad()
def _store_tuned(rounded: HealedWeights, tuned: dict[str, ScaledCodes], layers_prefix: str,
                 scale_dtype: torch.dtype) -> None:
    """Rewrite each layer's file with the tuned scales (rounded to ``scale_dtype``, as stored) and the
    weights they make with the unchanged codes."""
    from prunenet.quantization.rounding import SCALE_SUFFIX

    by_layer: dict[int, dict[str, torch.Tensor]] = {}
    for name, module in tuned.items():
        layer = int(name.removeprefix(layers_prefix + ".").split(".", 1)[0])
        scales = _store(module.scales().detach().float(), scale_dtype)
        by_layer.setdefault(layer, {})[name] = module.codes.float() * _expand(scales, module.codes.shape[1])
        by_layer[layer][name + SCALE_SUFFIX] = scales
    for layer, new in by_layer.items():
        prefix = f"{layers_prefix}.{layer}."
        tensors = {n: rounded.get(n) for n in rounded.names() if n.startswith(prefix)}
        rounded.save_layer(layer, tensors | {n: t.cpu() for n, t in new.items()})
