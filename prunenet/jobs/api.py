"""The Python API: :func:`export`, one call that does what ``prunenet-export`` does.

The CLI maps its options onto this function's keywords, so the two cannot drift: pre-flight memory
check, planning, healing, writing, the export's self-check, the quality report and the target's
consumer check all run, in that order, and the same report comes back.
"""

from __future__ import annotations

from dataclasses import fields
from pathlib import Path
from typing import Any

from exporters.targets import DEFAULT_TARGET
from prunenet.errors import PruneNetError

__all__ = ["export"]

HEAL_PREFIX = "heal_"


def export(model: str | None = None, *, ratio: float, target: str = DEFAULT_TARGET, out: str | Path = "out",
           heal: bool | None = None, evaluate: bool = True, validate: bool = True, force: bool = False,
           compat: str = "native", dtype: str = "auto", plan: str | Path | None = None,
           quant: str = "none", quant_group: int | None = None, quant_rounding: str = "auto",
           quant_tune_steps: int | None = None, **options: Any) -> dict[str, Any]:
    """Prune ``model`` (None: the default model) and write ``out`` for ``target``; returns the report.

    ``options`` are the planner's settings (the fields of
    :class:`~prunenet.planning.config.PruneConfig`: ``method``, ``allocation``, ``align``, ``tp``,
    ``episodes``, ``lr``, ``seed``, ``device``, ``policy``, ``self_data``) and healing's as
    ``heal_<field>`` (:class:`~prunenet.healing.config.HealConfig`: ``heal_steps``, ``heal_tokens``,
    ``heal_lr``, ``heal_batch``, ``heal_mode``, ...). ``heal``: True heals, False does not, None (the
    default) heals sources up to :data:`~prunenet.healing.config.AUTO_MAX_PARAMS`. ``quant`` /
    ``quant_group`` / ``quant_rounding`` / ``quant_tune_steps``: weight quantization after pruning
    (``--quant``, ``--quant-group``, ``--quant-rounding``, ``--quant-tune-steps``). The report holds the widths,
    parameter counts, the quality report (``"quality"``), healing's record, per-phase times and peaks,
    and warnings; ``prunenet-export --json`` prints the same object.

    Example::

        import prunenet
        report = prunenet.export(ratio=0.3, target="vllm", out="out", force=True)
        print(report["widths"], report["quality"]["kl"])
    """
    from prunenet.healing.config import HealConfig
    from prunenet.jobs.export_job import ExportRequest, run_export
    from prunenet.planning.config import PruneConfig

    prune_keys = {f.name for f in fields(PruneConfig)} - {"ratio"}
    heal_keys = {HEAL_PREFIX + f.name for f in fields(HealConfig)} - {HEAL_PREFIX + "seed"}
    unknown = sorted(set(options) - prune_keys - heal_keys)
    if unknown:
        raise PruneNetError(f"export() got unknown option(s) {', '.join(unknown)}; "
                            f"known: {', '.join(sorted(prune_keys | heal_keys))}")
    prune_opts = {k: v for k, v in options.items() if k in prune_keys}
    if "tp" in prune_opts:
        prune_opts["tp"] = tuple(prune_opts["tp"])
    cfg = PruneConfig(ratio=ratio, **prune_opts)
    heal_cfg = None
    if heal is not False:
        heal_opts = {k.removeprefix(HEAL_PREFIX): v for k, v in options.items() if k in heal_keys}
        heal_cfg = HealConfig(seed=cfg.seed, **heal_opts)
    request = ExportRequest(model=model, out=Path(out), target=target, compat=compat, evaluate=evaluate, force=force,
                            validate=validate, plan=Path(plan) if plan is not None else None, dtype=dtype, heal=heal_cfg,
                            heal_auto=heal is None, quant=quant, quant_group=quant_group,
                            quant_rounding=quant_rounding, quant_tune_steps=quant_tune_steps)
    return run_export(request, cfg)
