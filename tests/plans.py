"""Hand-made pruning plans for tests that exercise exporters/serving independently of the engine."""

from __future__ import annotations

from pathlib import Path

import torch

from prunenet.arch import get_arch_spec
from prunenet.planning.plan import LayerPlan, PruningPlan
from prunenet.source.checkpoint import Checkpoint


def nonuniform_widths(width: int, n_layers: int, ratio: float, align: int) -> list[int]:
    """Widths that alternate around (1 - ratio) * width, aligned, every layer >= align."""
    base = (1 - ratio) * width
    out = []
    for i in range(n_layers):
        w = base * (1.15 if i % 2 else 0.85)
        out.append(int(max(align, min(width, round(w / align) * align))))
    return out


def outlier_plan(model_dir: Path, widths: list[int] | None = None, ratio: float = 0.3, align: int = 1) -> PruningPlan:
    """Keep, per layer, the neurons with the largest down/fc2 column abs-max (a sane data-free ranking)."""
    ckpt = Checkpoint(model_dir)
    spec = get_arch_spec(ckpt.config["model_type"])
    n = spec.num_layers(ckpt.config)
    width = spec.width(ckpt.config)
    widths = widths or nonuniform_widths(width, n, ratio, align)
    layers = []
    for i, w in enumerate(widths):
        scores = ckpt.get(spec.layer_name(i, spec.out_proj)).float().abs().amax(dim=0)
        kept = tuple(sorted(torch.topk(scores, w).indices.tolist()))
        layers.append(LayerPlan(kept=kept, original_width=width, scores=tuple(scores.tolist())))
    return PruningPlan(model_type=str(ckpt.config["model_type"]), layers=tuple(layers), method="test-absmax", ratio=ratio,
                       allocation="test", align=align, source=str(model_dir))

