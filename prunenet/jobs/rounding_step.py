"""The export job's quantize step: GPTQ rounding on the self-text at hand, or why it falls back."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from prunenet.errors import PruneNetError
from prunenet.quantization.schemes import QuantSpec

__all__ = ["check_rounding", "gptq_step", "own_format_rounding"]


def own_format_rounding(scheme: str, group: int | None, requested: str, target: str,
                        schemes: tuple[str, ...] | None) -> QuantSpec | None:
    """The GPTQ spec for a target that quantizes in its own format (``group``: its block size), or None."""
    from prunenet.quantization.schemes import SCHEMES

    if scheme == "none":
        if requested != "auto":
            raise PruneNetError("--quant-rounding needs --quant")
        return None
    if schemes is not None and scheme not in schemes:
        if requested == "gptq":
            raise PruneNetError(f"--quant-rounding gptq for --target {target} applies to {', '.join(schemes)}")
        return None
    rounding = SCHEMES[scheme].rounding if requested == "auto" else requested
    return QuantSpec(scheme, group, "mse", rounding) if rounding == "gptq" else None


def check_rounding(quant: QuantSpec | None, requested: str, source: Path, notes: list[str]) -> QuantSpec | None:
    """Before any work: GPTQ writes self-text when none is at hand, which needs the source's tokenizer.
    Without one, an explicit ``--quant-rounding gptq`` is refused and the default rounds to nearest
    (with a note)."""
    from prunenet.source.loaders import has_tokenizer

    if quant is None or quant.rounding != "gptq" or has_tokenizer(source):
        return quant
    if requested == "gptq":
        raise PruneNetError("--quant-rounding gptq needs the source's tokenizer (GPTQ runs on the model's own "
                            "self-text); add the tokenizer files or pass --quant-rounding nearest")
    notes.append("rounded to nearest: GPTQ needs the source's tokenizer to write its self-text")
    return replace(quant, rounding="nearest")


def gptq_step(source, plan, quant: QuantSpec, dtype_name: str, compute, result, healing, workdir: Path,
              head: bool = False):
    """:func:`~prunenet.quantization.rounding.gptq_weights` on the plan's self-text, else healing's, else
    fresh self-text; ``dtype_name``: the written dtype; ``head``: the target quantizes the LM head too."""
    import torch

    from prunenet.quantization.rounding import calibration_rows, gptq_weights

    rows = calibration_rows(result.self_text, healing.text.rows if healing is not None else None, source.path,
                            plan.seed, compute.device, compute.generate)
    return gptq_weights(source.path, plan, quant, rows, workdir, dtype=getattr(torch, dtype_name),
                        healed=healing.weights if healing is not None else None, head=head, device=compute.device)
