"""The export job: source -> plan -> staged output -> checks -> atomic commit.

This is the one place that joins the three packages (``prunenet`` makes the plan, ``exporters``
writes it, ``serving`` checks the result), so the algorithm never imports an exporter.
"""

from __future__ import annotations

import logging
import shutil
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

__all__ = ["ExportRequest", "run_export"]

log = logging.getLogger("prunenet")


@dataclass(frozen=True)
class ExportRequest:
    model: str | None
    out: Path
    target: str = "hf"
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
    quant: str = "none"
    """--quant: none, w8a8, w4a16, fp8 (onnx: MatMulNBits 8/4-bit weights; fp8 refused)."""
    quant_group: int | None = None


def run_export(req: ExportRequest, cfg) -> dict[str, Any]:
    """Prune ``req.model`` by ``cfg`` and write ``req.out`` for ``req.target``; returns a report."""
    from exporters import EXPORTERS, ExportConfig
    from exporters.model_card import load_hint, write_model_card
    from exporters.staging import check_output_dir, staged_output
    from prunenet.device import resolve_device
    from prunenet.phases import PhaseLog
    from prunenet.planning.planner import make_plan
    from prunenet.planning.selftext_cache import SELF_TEXT_FILE, save_self_text, self_text_key
    from prunenet.planning.stats import parameter_stats
    from prunenet.policy.network import POLICY_FILE, save_policy
    from prunenet.preflight import check_memory
    from prunenet.source.checkpoint import Checkpoint
    from prunenet.source.resolve import resolve_model

    _check_quant_flags(req)
    source = resolve_model(req.model)
    check_output_dir(req.out, force=req.force, source=source.path)  # fail before any training
    if req.target == "onnx":
        from exporters.onnx.quant import OnnxOptions, check_request

        check_request(Checkpoint(source.path).config, OnnxOptions(req.quant, req.quant_group), cfg.align,
                      str(resolve_device(cfg.device)))
    device = resolve_device(cfg.device)
    # before any long step: refuse what cannot fit, write nothing
    check_memory(Checkpoint(source.path), cfg, evaluate=req.evaluate, device=device,
                 planning=req.plan is None, heal=req.heal, validate=req.validate)
    phases = PhaseLog()
    result = (_saved_plan(req.plan, source.path) if req.plan
              else make_plan(source.path, cfg, source_name=source.name, phases=phases))
    plan = replace(result.plan, extra={k: v for k, v in result.plan.extra.items() if k != "healing"})
    stats = parameter_stats(source.path, plan)
    warnings: list[str] = [] if req.validate else ["the export was not validated (--no-validate)"]
    with staged_output(req.out, force=req.force, source=source.path) as stage:
        healed_dir = healing = None
        if req.heal is not None:
            healing = _heal(source.path, plan, req, device, stage / ".prunenet-healed", phases, cfg.policy)
            plan, healed_dir = replace(plan, extra={**plan.extra, "healing": healing.record()}), healing.weights.root
        export_cfg = ExportConfig(compat=req.compat, validate=req.validate, device=str(device),
                                  dtype=_output_dtype(req.dtype, source), healed=healed_dir, quant=req.quant,
                                  quant_group=req.quant_group)
        with phases.phase("write", device):
            report = EXPORTERS[req.target](source.path, plan, stage, export_cfg)
        if healed_dir is not None:
            shutil.rmtree(healed_dir)  # now inside the written weights; the output holds no adapter files
        if result.policy is not None and cfg.policy is None:
            save_policy(result.policy, stage / POLICY_FILE, result.policy_metadata)
            if result.self_text is not None:
                key = self_text_key(plan.source_fingerprint, plan.seed, int(plan.extra.get("self_data_tokens", 0)))
                save_self_text(stage / SELF_TEXT_FILE, result.self_text, key)
            if healing is not None:
                from prunenet.healing.data import HEAL_TEXT_FILE, healing_text_key, save_healing_text

                save_healing_text(stage / HEAL_TEXT_FILE, healing.text, healing_text_key(plan.source_fingerprint, req.heal))
        quality = None
        if req.evaluate:
            with phases.phase("eval", device):
                quality = _quality(stage, source.path, str(device), req.target)
        if req.target == "vllm":
            report["vllm"] = _check_vllm(stage, warnings)
        hint = load_hint(req.target, str(report.get("architecture", "")), req.out)
        write_model_card(stage, plan, stats, quality, req.target, hint)
        if req.target == "onnx":
            from exporters.onnx.manifest import refresh_manifest

            refresh_manifest(stage)  # the model card and the policy were added after the graph
    return {
        "source": source.name, "out": str(req.out), "target": req.target, "method": plan.method,
        "ratio": plan.ratio, "achieved_ratio": plan.removed_fraction, "allocation": plan.allocation,
        "widths": plan.widths, "stats": stats, "export": report, "quality": quality, "warnings": warnings,
        "policy_fingerprint": plan.policy_fingerprint, "source_fingerprint": plan.source_fingerprint,
        "phases": phases.to_list(), "healing": plan.extra.get("healing"),
    }


def _heal(source: Path, plan, req: ExportRequest, device, workdir: Path, phases, policy: str | Path | None):
    """Heal in the staging directory; before/after quality on the evaluation text when there is a report."""
    from prunenet.healing.heal import heal_plan

    reference = None
    if req.evaluate:
        from prunenet.evaluation.directories import default_seq_len
        from prunenet.evaluation.windows import token_windows
        from prunenet.source.loaders import load_tokenizer
        from prunenet.texts import reference_text

        windows = token_windows(load_tokenizer(source), reference_text("default"), default_seq_len(source), 8192)
        reference = [w.reshape(1, -1) for w in windows]
    text = None
    if policy is not None:  # healing again with a saved policy: its healing text may be beside it
        from prunenet.healing.data import HEAL_TEXT_FILE, healing_text_key, load_healing_text

        key = healing_text_key(plan.source_fingerprint, req.heal)
        text = load_healing_text(Path(policy).with_name(HEAL_TEXT_FILE), key, req.heal)
        if text is not None:
            log.info("healing self-text reused from beside the policy (%d tokens)", text.tokens)
    return heal_plan(source, plan, req.heal, device=device, workdir=workdir, reference=reference, phases=phases,
                     text=text)


def _output_dtype(requested: str, source) -> str:
    """``--dtype auto``: keep the source's dtype, except that a GGUF-dequantized fp32 source is written in
    bfloat16 (its fp32 weights carry no more information than the quantized file; half the bytes)."""
    if requested != "auto":
        return requested
    from prunenet.source.checkpoint import Checkpoint

    return "bfloat16" if source.dequantized else str(Checkpoint(source.path).dtype).removeprefix("torch.")


def _saved_plan(path: Path, source: Path):
    from prunenet.errors import PlanMismatch
    from prunenet.planning.plan import PruningPlan
    from prunenet.planning.planner import PlanResult
    from prunenet.source.checkpoint import Checkpoint

    plan = PruningPlan.load(path)
    if plan.source_fingerprint != Checkpoint(source).fingerprint():
        raise PlanMismatch(f"--plan {path} was made for another model (fingerprint mismatch); re-plan this model")
    return PlanResult(plan)


def _quality(out: Path, source: Path, device: str, target: str) -> dict[str, Any]:
    if target == "onnx":  # the graph's own logits (int4's cost shows), not the weights it was built from
        from exporters.onnx.quality import evaluate_onnx_dir

        return evaluate_onnx_dir(out, source, device=device).to_dict()
    from prunenet.evaluation.directories import evaluate_dirs

    return evaluate_dirs(out, source, device=device).to_dict()


def _check_quant_flags(req: ExportRequest) -> None:
    """Flag combinations refused before anything is resolved or written."""
    from prunenet.errors import PruneNetError

    if req.target == "onnx" and req.quant == "fp8":
        raise PruneNetError("--quant fp8 is not available for --target onnx (no ONNX Runtime fp8 matmul kernel); "
                            "use w4a16 or w8a8")
    if req.target != "onnx" and (req.quant != "none" or req.quant_group is not None):
        raise PruneNetError(f"--quant for --target {req.target} is not on this branch yet (issue 20); "
                            "use --target onnx")


def _check_vllm(out: Path, warnings: list[str]) -> str | None:
    """The architecture vLLM resolves; vLLM missing is a warning, a directory it cannot serve an error."""
    from serving.vllm.check import check_vllm_resolves
    from serving.vllm.errors import VllmUnavailable

    try:
        return check_vllm_resolves(out)
    except VllmUnavailable as exc:  # the directory is still valid for transformers
        warnings.append(f"vLLM could not be checked: {exc}")
        return None
