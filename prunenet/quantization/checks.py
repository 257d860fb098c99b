"""Refuse a ``--quant`` request that cannot be served, before any work; resolve the group size otherwise.

The widths that matter are every decoder linear's K (input columns) and N (output rows) per
tensor-parallel rank: a fixed one (hidden size, attention projections) must already suit the scheme's
kernels, and the FFN widths the planner picks are made to suit them by :func:`width_multiple`.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from typing import Any

from prunenet.errors import PruneNetError
from prunenet.quantization.schemes import GROUP_CHOICES, ROUNDINGS, SCHEMES, QuantSpec

__all__ = ["QuantizationError", "resolve_quant", "width_multiple", "check_plan_widths", "linear_shapes"]


class QuantizationError(PruneNetError):
    """A ``--quant`` request this model, plan or device cannot honour."""


def linear_shapes(shapes: dict[str, tuple[int, ...]], layers_prefix: str) -> dict[str, tuple[int, int]]:
    """The decoder-layer linear weights (2-D ``.weight`` tensors under the layer list): what gets quantized."""
    prefix = layers_prefix + "."
    return {n: (s[0], s[1]) for n, s in shapes.items() if n.startswith(prefix) and n.endswith(".weight")
            and len(s) == 2}


def _per_rank(dims: Iterable[int], tp: Sequence[int]) -> set[int]:
    ranks = set(tp) or {1}
    return {d // t if d % t == 0 else -1 for d in dims for t in ranks}


def resolve_quant(name: str, group: int | None, config: dict[str, Any], linears: dict[str, tuple[int, int]],
                  tp: Sequence[int] = (), clipping: str = "mse", rounding: str = "auto") -> QuantSpec | None:
    """The :class:`QuantSpec` for ``--quant name`` on this model, or a one-line :class:`QuantizationError`."""
    if name == "none":
        if group is not None:
            raise QuantizationError("--quant-group needs --quant w4a16")
        if rounding != "auto":
            raise QuantizationError("--quant-rounding needs --quant")
        return None
    if name not in SCHEMES:
        raise QuantizationError(f"unknown --quant {name!r}; choose from none, {', '.join(SCHEMES)}")
    existing = config.get("quantization_config")
    if existing:
        method = existing.get("quant_method", "unknown") if isinstance(existing, dict) else "unknown"
        raise QuantizationError(f"the source is already quantized ({method}); --quant needs a floating-point "
                                "source (dequantize it first, or export without --quant)")
    scheme = SCHEMES[name]
    ks, ns = _per_rank((k for _, k in linears.values()), tp), _per_rank((n for n, _ in linears.values()), tp)
    if not scheme.grouped:
        if group is not None:
            raise QuantizationError(f"--quant-group applies to grouped schemes (w4a16), not {name}")
    else:
        group = _group(group, ks, tp)
    _check_multiples(name, ks, ns, scheme.k_multiple, scheme.n_multiple, tp)
    if rounding != "auto" and rounding not in ROUNDINGS:
        raise QuantizationError(f"unknown --quant-rounding {rounding!r}; choose from auto, {', '.join(ROUNDINGS)}")
    return QuantSpec(name, group, clipping, scheme.rounding if rounding == "auto" else rounding)


def _group(group: int | None, ks: set[int], tp: Sequence[int]) -> int:
    where = " per tensor-parallel rank" if any(t > 1 for t in tp) else ""
    if group is not None:
        bad = sorted(k for k in ks if k < 0 or k % group)
        if group < 2 or group % 2 or bad:
            raise QuantizationError(f"--quant-group {group} does not divide K={bad[0] if bad else group}{where}; "
                                    f"use an even size dividing every K ({_suggest(ks)})")
        return group
    for g in GROUP_CHOICES:
        if all(k > 0 and k % g == 0 for k in ks):
            return g
    raise QuantizationError(f"no group size of {', '.join(map(str, GROUP_CHOICES))} divides every K{where} "
                            f"(K: {sorted(ks)[:4]}); pass --quant-group")


def _suggest(ks: set[int]) -> str:
    fits = [g for g in GROUP_CHOICES if all(k > 0 and k % g == 0 for k in ks)]
    return f"e.g. {fits[0]}" if fits else "none of 128, 64, 32 does"


def _check_multiples(name: str, ks: set[int], ns: set[int], k_mult: int, n_mult: int, tp: Sequence[int]) -> None:
    for label, dims, mult in (("K", ks, k_mult), ("N", ns, n_mult)):
        bad = sorted(d for d in dims if d < 0 or d % mult)
        if bad:
            dim = "a dimension not divisible by --tp" if bad[0] < 0 else f"{label}={bad[0]}"
            raise QuantizationError(f"--quant {name} needs every linear's {label} per rank to be a multiple of "
                                    f"{mult}; this model has {dim}")


def width_multiple(spec: QuantSpec | None, tp: Sequence[int] = ()) -> int:
    """What every FFN width must be a multiple of for ``spec``'s kernels (1 without quantization)."""
    if spec is None:
        return 1
    return spec.info.width_multiple(spec.group) * math.lcm(*tp) if tp else spec.info.width_multiple(spec.group)


def check_plan_widths(widths: Sequence[int], full: int, spec: QuantSpec | None, tp: Sequence[int] = ()) -> None:
    """A saved plan's widths must suit the scheme too (a full-width layer was checked with the source)."""
    step = width_multiple(spec, tp)
    bad = [w for w in widths if w != full and w % step]
    if spec is not None and bad:
        raise QuantizationError(f"the plan's FFN width {bad[0]} is not a multiple of {step}, which --quant "
                                f"{spec.scheme} needs; re-plan with --quant {spec.scheme}")
