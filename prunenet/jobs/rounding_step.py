"""The export job's quantize steps: GPTQ rounding on the self-text at hand (or why it falls back), then
tuning the scales it chose."""

from __future__ import annotations

import logging
from dataclasses import replace
from pathlib import Path

from prunenet.errors import PruneNetError
from prunenet.quantization.schemes import QuantSpec

__all__ = ["check_rounding", "choose_tuning", "gptq_step", "own_format_rounding", "tune_step"]

log = logging.getLogger("prunenet")


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
                        healed=healing.weights if healing is not None else None, head=head,
                        device=compute.device), rows


def choose_tuning(rounding: QuantSpec | None, steps: int | None, params: int, notes: list[str]):
    """Before any work: the :class:`~prunenet.quantization.tune_config.TuneConfig` GPTQ's scales are tuned with,
    or None. By default the scales of weight-only schemes are tuned on sources up to healing's default size
    (it holds the whole pruned model in fp32, as end-to-end healing does); an explicit step count where
    there is nothing to tune is refused."""
    from prunenet.healing.config import AUTO_MAX_PARAMS
    from prunenet.quantization.tune_config import TuneConfig

    if steps == 0:
        return None
    if rounding is None or rounding.info.activations:
        if steps is not None:
            raise PruneNetError("--quant-tune-steps tunes the scales GPTQ rounded a weight-only scheme with: "
                                "use it with --quant w4a16 (GPTQ rounding)")
        return None
    if steps is None and params > AUTO_MAX_PARAMS:
        notes.append(f"quantization scales not tuned: the source has more than {AUTO_MAX_PARAMS / 1e6:.0f}M "
                     "parameters (--quant-tune-steps N tunes them)")
        return None
    return TuneConfig() if steps is None else TuneConfig(steps=steps)


def tune_step(source, plan, rounded, cfg, dtype_name: str, compute, result, calibration) -> dict:
    """:func:`~prunenet.quantization.tuning.tune_scales` on the plan's self-text (healing never trained on
    it), else on the rows GPTQ rounded on; the record the plan and the report keep."""
    import torch

    from prunenet.quantization.tuning import tune_scales

    rows = result.self_text or calibration
    outcome = tune_scales(source.path, plan, rounded, rows, cfg, compute=compute, scale_dtype=getattr(torch, dtype_name))
    log.info("scale tuning: held-out KL %.4f -> %.4f (%d steps)", outcome.held_out_before, outcome.held_out_after,
             outcome.steps)
    return {"settings": cfg.to_dict(), **outcome.to_dict()}
