"""The export targets as data: one :class:`Target` per ``--target`` name, and nothing else decides.

A target says which function writes it, whether the torch quality report can score the directory it
writes, which post-check its consumer gets (by name: the job owns the checks, since an exporter
never imports ``serving``), how its model card tells a reader to load it, and what finalises the
directory once every file is in. The job reads these fields and never compares target names, so a
new target (GGUF is a likely next one) is one entry here plus its sub-package.

Writers are ``"module:function"`` strings, imported when used, so the CLI's ``--help`` (which lists
the names) does not import torch.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from prunenet.errors import PruneNetError
from prunenet.refs import load_ref

__all__ = ["Target", "TARGETS", "DEFAULT_TARGET", "get_target"]


@dataclass(frozen=True)
class Target:
    name: str
    summary: str
    """One line for ``--help`` and the docs."""
    writer: str
    """``"module:function"`` of ``(source, plan, out, cfg) -> report`` (see :mod:`exporters`)."""
    quality_report: bool
    """Whether the torch quality report (dense source vs written directory) can score the output."""
    card: str
    """Which load instructions the model card gives: a key of :data:`exporters.model_card.LOAD_HINTS`
    (``"hf"`` resolves to stock or remote-code instructions by the written architecture)."""
    post_check: str | None = None
    """Name of the consumer check the job runs on the finished directory (``"vllm"``), or None."""
    finalize: str | None = None
    """``"module:function"`` run on the staged directory after the model card and policy are in."""
    next_step: str = ""
    """What the CLI tells a user to run on the finished directory (``{out}`` is replaced)."""
    scorer: str | None = None
    """``"module:function"`` ``(out, source, device) -> report dict`` scoring the output in place of the
    torch quality report (an ONNX graph is scored by running it), or None."""
    quant_check: str | None = None
    """``"module:function"`` ``(config, scheme, group, align, device) -> group | None`` for a target that
    quantizes in its own format: it refuses what it cannot build and returns the group (block) size it will
    use; compressed-tensors quantization is skipped."""
    gptq_schemes: tuple[str, ...] | None = None
    """For a target with ``quant_check``: the schemes whose weights GPTQ may round before the target
    quantizes them itself (it must then store exactly the codes of the scales it is given)."""
    gptq_head: bool = False
    """GPTQ rounds the LM head too: the target stores it quantized (compressed-tensors targets keep it float)."""
    cpu_dtypes: tuple[str, ...] | None = None
    """The ``--dtype`` values the target can compute in on a CPU (None: any); others are refused up front
    rather than silently written in another dtype."""

    def write(self) -> Callable[..., dict[str, Any]]:
        return load_ref(self.writer)

    def finalizer(self) -> Callable[..., Any] | None:
        return load_ref(self.finalize) if self.finalize else None

    def score(self) -> Callable[..., Any] | None:
        return load_ref(self.scorer) if self.scorer else None

    def check_quant(self) -> Callable[..., Any] | None:
        return load_ref(self.quant_check) if self.quant_check else None


TARGETS: dict[str, Target] = {t.name: t for t in (
    Target("hf", "Hugging Face directory (transformers; per-layer widths through shipped remote code)",
           writer="exporters:export_hf", quality_report=True, card="hf",
           next_step="load: AutoModelForCausalLM.from_pretrained({out!r}, trust_remote_code=True)"),
    Target("vllm", "the Hugging Face directory, checked to resolve in vLLM (served by the bundled plugin)",
           writer="exporters:export_hf", quality_report=True, card="hf", post_check="vllm",
           next_step="serve: prunenet serve {out} (or vllm serve {out})"),
    Target("onnx", "ONNX decoder directory that onnxruntime-genai runs as it is (its model builder's graph)",
           writer="exporters:export_onnx_target", quality_report=True, card="onnx",
           finalize="exporters.onnx.manifest:refresh_manifest",
           next_step="benchmark: prunenet bench {out} --engine onnxruntime onnxruntime-genai",
           scorer="exporters.onnx.quality:quality_report", quant_check="exporters.onnx.quant:check_target_quant",
           gptq_schemes=("w4a16",), gptq_head=True, cpu_dtypes=("float32",)),
)}


DEFAULT_TARGET = "hf"


def get_target(name: str) -> Target:
    try:
        return TARGETS[name]
    except KeyError:
        raise PruneNetError(f"unknown target {name!r}; choose from {', '.join(TARGETS)}") from None
