"""The export job: source -> plan -> (heal) -> staged output -> checks -> atomic commit.

This is the one place that joins the three packages (``prunenet`` makes the plan, ``exporters``
writes it, ``serving`` checks the result), so the algorithm never imports an exporter. What a
target needs (a quality report, a consumer check, a finaliser) is read from its
:class:`~exporters.targets.Target` entry; the job never compares target names.
"""

from __future__ import annotations

import logging
import shutil
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from exporters.targets import DEFAULT_TARGET

__all__ = ["ExportRequest", "run_export", "POST_CHECKS"]

log = logging.getLogger("prunenet")


@dataclass(frozen=True)
class ExportRequest:
    model: str | None
    out: Path
    target: str = DEFAULT_TARGET
    compat: str = "native"
    evaluate: bool = True
    force: bool = False
    validate: bool = True
    plan: Path | None = None
    """A saved plan to rebuild instead of making one."""
    dtype: str = "auto"
    """dtype of the written weights: auto (the source's; bfloat16 for a GGUF-dequantized source) or a name."""
    heal: Any = None
    """A :class:`~prunenet.healing.config.HealConfig` to heal the pruned model with; None: no healing."""
    heal_auto: bool = False
    """``heal`` is the default's, not asked for: a source above the default's size, or a plan that prunes
    nothing, is then exported unhealed (with a note) instead of refused."""
    quant: str = "none"
    """Weight quantization scheme applied after pruning and healing (:data:`prunenet.quantization.schemes.SCHEMES`)."""
    quant_group: int | None = None
    """Group size of a grouped scheme; None: the largest of 128/64/32 dividing every K per rank."""
    quant_rounding: str = "auto"
    """``gptq`` / ``nearest`` (:data:`prunenet.quantization.schemes.ROUNDINGS`); auto: the scheme's own."""
    quant_tune_steps: int | None = None
    """Steps tuning GPTQ's scales (:mod:`prunenet.quantization.tuning`); 0: none; None: the default's rule."""


def run_export(req: ExportRequest, cfg) -> dict[str, Any]:
    """Prune ``req.model`` by ``cfg`` (a :class:`~prunenet.planning.config.PruneConfig`) and write
    ``req.out`` for ``req.target``; returns the report :func:`prunenet.export` documents."""
    from exporters.staging import check_output_dir, staged_output
    from exporters.targets import get_target
    from prunenet.compute import Compute
    from prunenet.jobs.rounding_step import choose_tuning, gptq_step, tune_step
    from prunenet.phases import PhaseLog
    from prunenet.planning.stats import parameter_stats
    from prunenet.preflight import check_memory
    from prunenet.quantization.request import plan_with_quant
    from prunenet.source.checkpoint import Checkpoint
    from prunenet.source.resolve import resolve_model

    target = get_target(req.target)
    source = resolve_model(req.model)
    check_output_dir(req.out, force=req.force, source=source.path)  # fail before any training
    ckpt = Checkpoint(source.path)
    compute = Compute.resolve(cfg.device, ckpt.dtype)
    _check_dtype(target, req.dtype, compute)
    notes: list[str] = []
    cfg, quant, rounding = _prepare_quant(target, req, cfg, source.path, ckpt.config, notes)
    tuning = choose_tuning(rounding, req.quant_tune_steps, ckpt.num_parameters(), notes)
    if req.heal is not None and req.heal_auto:
        from prunenet.healing.config import auto_heal_skip
        from prunenet.source.loaders import has_tokenizer

        skip = auto_heal_skip(ckpt.num_parameters(), has_tokenizer(source.path))
        req = replace(req, heal=None) if skip else req
        notes += [skip] if skip else []
    scored = req.evaluate and target.quality_report
    # before any long step: refuse what cannot fit, write nothing
    check_memory(ckpt, cfg, evaluate=scored, compute=compute, planning=req.plan is None,
                 heal=req.heal, validate=req.validate, rounding=rounding, tuning=tuning)
    phases = PhaseLog()
    result = _make_plan(req, cfg, source, compute, phases)
    plan = replace(result.plan, extra={k: v for k, v in result.plan.extra.items()
                                       if k not in ("healing", "quantization", "scale_tuning")})
    plan = plan_with_quant(plan, quant, cfg.tp)
    if req.heal is not None and req.heal_auto and plan.is_identity:
        req = replace(req, heal=None)
        notes.append("not healed: the plan prunes nothing")
    stats = parameter_stats(source.path, plan)
    warnings = [] if req.validate else ["the export was not validated (--no-validate)"]
    with staged_output(req.out, force=req.force, source=source.path) as stage:
        healing = None
        if req.heal is not None:
            healing = _heal(source.path, plan, req, compute, stage / ".prunenet-healed", phases, cfg.policy, scored)
            plan = replace(plan, extra={**plan.extra, "healing": healing.record()})
        rounded = None
        if rounding is not None:
            written = _output_dtype(req.dtype, source, compute.stored)
            with phases.phase("quantize", compute.device):
                rounded, rows = gptq_step(source, plan, rounding, written, compute, result, healing,
                                          stage / ".prunenet-rounded", head=target.gptq_head)
            if tuning is not None:
                with phases.phase("tune", compute.device):
                    tuned = tune_step(source, plan, rounded, tuning, written, compute, result, rows)
                plan = replace(plan, extra={**plan.extra, "scale_tuning": tuned})
        with phases.phase("write", compute.device):
            report = _write(target, source, plan, stage, req, compute, healing, quant, rounded)
        if result.policy is not None and cfg.policy is None:
            _save_reusables(stage, result, plan, req, healing)
        quality = None
        if scored:
            with phases.phase("eval", compute.device):
                quality = (target.score()(stage, source.path, str(compute.device)) if target.scorer else
                           _quality(stage, source.path, compute, plan if quant and healing is None else None,
                                    healing.outcome.reference_after if quant and healing is not None else None))
        if target.post_check is not None:
            report[target.post_check], warning = POST_CHECKS[target.post_check](stage)
            warnings += [warning] if warning else []
        _finish(stage, target, plan, stats, quality, report, req.out)
    return {
        "source": source.name, "out": str(req.out), "target": target.name, "method": plan.method,
        "ratio": plan.ratio, "achieved_ratio": plan.removed_fraction, "allocation": plan.allocation,
        "widths": plan.widths, "stats": stats, "export": report, "quality": quality, "warnings": warnings,
        "notes": notes,
        "policy_fingerprint": plan.policy_fingerprint, "source_fingerprint": plan.source_fingerprint,
        "phases": phases.to_list(), "healing": plan.extra.get("healing"), "compute": compute.to_dict(),
        "quantization": plan.extra.get("quantization"), "scale_tuning": plan.extra.get("scale_tuning"),
    }


def _check_dtype(target, dtype: str, compute) -> None:
    """A ``--dtype`` the target cannot compute in on this device is refused before any work."""
    if dtype != "auto" and compute.device.type == "cpu" and target.cpu_dtypes and dtype not in target.cpu_dtypes:
        from prunenet.errors import PruneNetError

        raise PruneNetError(f"--target {target.name} computes in {', '.join(target.cpu_dtypes)} on the CPU, not "
                            f"{dtype}; drop --dtype, use --quant for smaller weights, or --device cuda")


def _prepare_quant(target, req: ExportRequest, cfg, source: Path, config: dict, notes: list[str]):
    """``(cfg, quant, rounding)``: the scheme checked before any work and the width step its kernels need
    (a target that quantizes in its own format checks the request by its own rules instead: ``quant`` is
    then None), and the spec GPTQ rounds with (None: the writer rounds to nearest)."""
    from prunenet.jobs.rounding_step import check_rounding, own_format_rounding

    if target.quant_check is not None:
        group = target.check_quant()(config, req.quant, req.quant_group, cfg.align, cfg.device)
        rounding = own_format_rounding(req.quant, group, req.quant_rounding, target.name, target.gptq_schemes)
        rounding = check_rounding(rounding, req.quant_rounding, source, notes)
        return cfg, None, rounding if rounding is not None and rounding.rounding == "gptq" else None
    from prunenet.quantization.request import prepare_quant

    quant, align = prepare_quant(source, req.quant, req.quant_group, cfg.tp, cfg.align, req.quant_rounding)
    quant = check_rounding(quant, req.quant_rounding, source, notes)
    return replace(cfg, align=align), quant, quant if quant is not None and quant.rounding == "gptq" else None


def _make_plan(req: ExportRequest, cfg, source, compute, phases):
    from prunenet.planning.planner import make_plan

    if req.plan is not None:
        return _saved_plan(req.plan, source.path)
    return make_plan(source.path, cfg, source_name=source.name, phases=phases, compute=compute)


def _write(target, source, plan, stage: Path, req: ExportRequest, compute, healing, quant=None,
           rounded=None) -> dict[str, Any]:
    """The target's writer on the staged directory; healed (or GPTQ-rounded, which include the healed)
    tensors are consumed and removed."""
    from exporters import ExportConfig

    healed_dir = rounded.root if rounded is not None else healing.weights.root if healing is not None else None
    export_cfg = ExportConfig(compat=req.compat, validate=req.validate, device=str(compute.device),
                              dtype=_output_dtype(req.dtype, source, compute.stored), healed=healed_dir, quant=quant,
                              scheme=req.quant, group=req.quant_group)
    report = target.write()(source.path, plan, stage, export_cfg)
    for done in {healed_dir, healing.weights.root if healing is not None else None} - {None}:
        shutil.rmtree(done, ignore_errors=True)  # now inside the written weights; the output holds no adapter files
    return report


def _save_reusables(stage: Path, result, plan, req: ExportRequest, healing) -> None:
    """The trained policy and the self-texts it and healing learnt from: ``--policy`` reuses all three."""
    from prunenet.policy.network import POLICY_FILE, save_policy

    save_policy(result.policy, stage / POLICY_FILE, result.policy_metadata)
    if result.self_text is not None:
        from prunenet.planning.selftext_cache import SELF_TEXT_FILE, save_self_text, self_text_key

        key = self_text_key(plan.source_fingerprint, plan.seed, int(plan.extra.get("self_data_tokens", 0)))
        save_self_text(stage / SELF_TEXT_FILE, result.self_text, key)
    if healing is not None:
        from prunenet.healing.data import HEAL_TEXT_FILE, healing_text_key, save_healing_text

        save_healing_text(stage / HEAL_TEXT_FILE, healing.text, healing_text_key(plan.source_fingerprint, req.heal))


def _finish(stage: Path, target, plan, stats, quality, report: dict[str, Any], out: Path) -> None:
    """The model card, then the target's finaliser (which may index every file, the card included)."""
    from exporters.model_card import load_hint, write_model_card

    hint = load_hint(target.card, str(report.get("architecture", "")), out)
    write_model_card(stage, plan, stats, quality, target.name, hint)
    finalize = target.finalizer()
    if finalize is not None:
        finalize(stage)


def _heal(source: Path, plan, req: ExportRequest, compute, workdir: Path, phases, policy, scored: bool):
    """Heal in the staging directory; before/after quality on the evaluation text when there is a report."""
    from prunenet.healing.heal import heal_plan

    reference = _reference_rows(source) if scored else None
    text = None
    if policy is not None:  # healing again with a saved policy: its healing text may be beside it
        from prunenet.healing.data import HEAL_TEXT_FILE, healing_text_key, load_healing_text

        key = healing_text_key(plan.source_fingerprint, req.heal)
        text = load_healing_text(Path(policy).with_name(HEAL_TEXT_FILE), key, req.heal)
        if text is not None:
            log.info("healing self-text reused from beside the policy (%d tokens)", text.tokens)
    return heal_plan(source, plan, req.heal, compute=compute, workdir=workdir, reference=reference, phases=phases,
                     text=text)


def _reference_rows(source: Path) -> list:
    """The quality report's text as id rows, so healing reports its before/after on the same text."""
    from prunenet.evaluation.directories import default_seq_len
    from prunenet.evaluation.windows import token_windows
    from prunenet.source.loaders import load_tokenizer
    from prunenet.texts import reference_text

    windows = token_windows(load_tokenizer(source), reference_text("default"), default_seq_len(source), 8192)
    return [w.reshape(1, -1) for w in windows]


def _output_dtype(requested: str, source, stored) -> str:
    """``--dtype auto``: keep the source's dtype (``stored``), except that a GGUF-dequantized fp32 source is
    written in bfloat16 (its fp32 weights carry no more information than the quantized file; half the bytes)."""
    if requested != "auto":
        return requested
    return "bfloat16" if source.dequantized else str(stored).removeprefix("torch.")


def _saved_plan(path: Path, source: Path):
    from prunenet.errors import PlanMismatch
    from prunenet.planning.plan import PruningPlan
    from prunenet.planning.planner import PlanResult
    from prunenet.source.checkpoint import Checkpoint

    plan = PruningPlan.load(path)
    if plan.source_fingerprint != Checkpoint(source).fingerprint():
        raise PlanMismatch(f"--plan {path} was made for another model (fingerprint mismatch); re-plan this model")
    return PlanResult(plan)


GENRE_KEYS = ("n_tokens", "dense_ppl", "pruned_ppl", "ppl_ratio", "kl", "top1_agreement")
"""What the report keeps of each genre's score (``quality["genres"]``)."""


def _quality(out: Path, source: Path, compute, unquantized=None, healed: dict | None = None) -> dict[str, Any]:
    """The report on every bundled genre (the first genre's in full at the top level); for a quantized export,
    the same plan unquantized beside it (quantization's own share): scored here, or for a healed export
    healing's own score of its floating-point weights on the same text (``healed``)."""
    from prunenet.evaluation.directories import evaluate_genres

    reports = {genre: r.to_dict() for genre, r in evaluate_genres(out, source, device=str(compute.device)).items()}
    quality = dict(next(iter(reports.values())))  # the first genre's report is the headline
    quality["genres"] = {genre: {k: r[k] for k in GENRE_KEYS} for genre, r in reports.items()}
    if unquantized is not None:
        from prunenet.evaluation.unquantized import evaluate_plan

        plain = evaluate_plan(source, unquantized, device=str(compute.device)).to_dict()
        quality["unquantized"] = {k: plain[k] for k in ("pruned_ppl", "ppl_ratio", "kl", "top1_agreement")}
        quality["quantization_kl"] = quality["kl"] - plain["kl"]
    elif healed is not None:
        quality["unquantized"] = {k: healed[k] for k in ("ppl_ratio", "kl")}
        quality["quantization_kl"] = quality["kl"] - healed["kl"]
    return quality


def _check_vllm(out: Path) -> tuple[str | None, str | None]:
    """The architecture vLLM resolves and a warning; vLLM missing is a warning, a directory it cannot serve
    an error."""
    from serving.vllm.check import check_vllm_resolves
    from serving.vllm.errors import VllmUnavailable

    try:
        return check_vllm_resolves(out), None
    except VllmUnavailable as exc:  # the directory is still valid for transformers
        return None, f"vLLM could not be checked: {exc}"


POST_CHECKS = {"vllm": _check_vllm}
"""Consumer checks a :class:`~exporters.targets.Target` names in ``post_check``: ``(out) -> (report, warning)``."""
