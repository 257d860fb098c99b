"""``prunenet export`` / ``prunenet-export``: prune a model and write it for a serving target."""

from __future__ import annotations

from pathlib import Path

import click

from exporters.targets import DEFAULT_TARGET, TARGETS
from prunenet.healing.config import AUTO_MAX_PARAMS, HEAL_MODES, MODES, HealConfig
from prunenet.planning.allocation import ALLOCATIONS
from prunenet.planning.methods import METHODS
from prunenet.quantization.schemes import QUANT_CHOICES, ROUNDINGS
from prunenet.quantization.tune_config import TuneConfig

from .common import emit_json, handle_errors, setup_output, verbosity_options

HEAL = HealConfig()
"""Healing's defaults, shown by ``--help`` (the options map onto :class:`HealConfig` fields)."""


@click.command("export", context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--model", "model", default=None, metavar="SRC",
              help="HF directory, .gguf file or cached hub id [default: SmolLM2-135M-Instruct].")
@click.option("--ratio", type=click.FloatRange(0, 1, max_open=True), required=True,
              help="Fraction of all FFN neurons to remove, in [0, 1).")
@click.option("--target", type=click.Choice(list(TARGETS)), default=DEFAULT_TARGET, show_default=True,
              help="; ".join(f"{t.name}: {t.summary}" for t in TARGETS.values()) + ".")
@click.option("--out", type=click.Path(path_type=Path), default=Path("out"), show_default=True)
@click.option("--method", type=click.Choice(list(METHODS)), default="prunenet", show_default=True)
@click.option("--allocation", type=click.Choice(ALLOCATIONS), default="sensitivity", show_default=True,
              help="How the neuron budget is spread over layers.")
@click.option("--align", type=click.IntRange(min=1), default=64, show_default=True,
              help="Every layer width is a multiple of this.")
@click.option("--tp", type=click.IntRange(min=1), multiple=True,
              help="Tensor-parallel size(s) every width must divide by (repeatable).")
@click.option("--episodes", type=click.IntRange(min=1), default=20, show_default=True)
@click.option("--lr", type=click.FloatRange(min=0, min_open=True), default=1e-3, show_default=True)
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default="auto", show_default=True)
@click.option("--policy", type=click.Path(path_type=Path), default=None,
              help="Reuse a trained prunenet-policy.safetensors (no training).")
@click.option("--plan", "plan_file", type=click.Path(path_type=Path), default=None,
              help="Rebuild from a saved prunenet-plan.json (no training); it must belong to --model.")
@click.option("--self-data", type=click.IntRange(min=0), default=2048, show_default=True,
              help="Tokens of text the model generates itself, for activation statistics (0 = weights only).")
@click.option("--dtype", type=click.Choice(["auto", "bfloat16", "float16", "float32"]), default="auto",
              show_default=True,
              help="dtype of the written weights (auto: the source's; bfloat16 for a source dequantized from GGUF).")
@click.option("--compat", type=click.Choice(["native", "padded"]), default="native", show_default=True,
              help="padded: zero-pad every layer to the widest (stock architecture).")
@click.option("--heal/--no-heal", default=None,
              help="Distil the pruned FFNs toward the dense model on text the model writes itself (no user data) "
                   f"[default: on for sources up to {AUTO_MAX_PARAMS / 1e6:.0f}M parameters].")
@click.option("--heal-tokens", type=click.IntRange(min=1), default=HEAL.tokens, show_default=True,
              help="Self-text tokens generated for healing (1/8 held out for early stopping).")
@click.option("--heal-steps", type=click.IntRange(min=0), default=HEAL.steps, show_default=True,
              help="Most optimizer steps (per block with --heal-mode block); early stopping may end sooner; "
                   "0: the least-squares refit alone.")
@click.option("--heal-lr", type=click.FloatRange(min=0, min_open=True), default=HEAL.lr, show_default=True)
@click.option("--heal-batch", type=click.IntRange(min=1), default=HEAL.batch, show_default=True,
              help="Self-text sequences per healing step.")
@click.option("--heal-refit/--no-heal-refit", default=HEAL.refit, show_default=True,
              help="Start healing from the least-squares refit of each pruned layer's output projection.")
@click.option("--heal-mode", type=click.Choice(MODES), default=HEAL.mode, show_default=True,
              help="; ".join(f"{m.name} {m.summary}" for m in HEAL_MODES.values())
                   + f"; auto picks the first that fits ({', '.join(HEAL_MODES)}).")
@click.option("--quant", type=click.Choice(QUANT_CHOICES), default="none", show_default=True,
              help="Quantize every decoder linear after pruning (data-free; compressed-tensors format; "
                   "onnx: 8/4-bit MatMulNBits, fp8 refused).")
@click.option("--quant-group", type=click.IntRange(min=2), default=None,
              help="Group size of w4a16 scales [default: the largest of 128/64/32 dividing every K per rank; "
                   "onnx: the MatMulNBits block, 32].")
@click.option("--quant-rounding", type=click.Choice(("auto", *ROUNDINGS)), default="auto", show_default=True,
              help="gptq: round with GPTQ on the model's own self-text (no user data); nearest: each weight alone; "
                   "auto: gptq for w4a16, nearest for the 8-bit schemes.")
@click.option("--quant-tune-steps", type=click.IntRange(min=0), default=None,
              help="Steps tuning the per-group scales GPTQ chose, end to end against the dense model on the plan's "
                   f"self-text (the 4-bit codes stay); 0: none [default: {TuneConfig.steps} for w4a16 on sources up "
                   f"to {AUTO_MAX_PARAMS // 10**6}M parameters, else 0].")
@click.option("--no-eval", is_flag=True, help="Skip the quality report.")
@click.option("--no-validate", is_flag=True,
              help="Skip the export's self-check: reloading it and comparing logits with the pruned source "
                   "(hf, vllm), ORT vs torch greedy decoding (onnx). The reload holds both models' embeddings and "
                   "heads in fp32 (~17 GB at Llama-3-70B shapes).")
@click.option("--force", is_flag=True, help="Replace a non-empty --out.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON result on stdout.")
@verbosity_options
@handle_errors
def command(model, ratio, target, out, method, allocation, align, tp, episodes, lr, seed, device, policy,
            plan_file, self_data, dtype, compat, heal, heal_tokens, heal_steps, heal_lr, heal_batch, heal_refit,
            heal_mode, quant, quant_group, quant_rounding, quant_tune_steps, no_eval, no_validate, force, as_json, quiet,
            verbose) -> None:
    """Prune FFN neurons with PruneNet (no calibration data) and export the model.

    \b
    Example:
      prunenet-export --ratio 0.3 --target vllm --out out && prunenet serve out   # or: vllm serve ./out (CUDA vLLM)
      prunenet-export --model ./my-llama --ratio 0.2 --policy out/prunenet-policy.safetensors --out out-0.2
      prunenet-export --ratio 0.3 --no-heal --no-eval --out out-quick          # no healing, no report: quickest
      prunenet-export --ratio 0.3 --heal-tokens 12288 --heal-steps 100 --out out-healed   # longer healing
      prunenet-export --ratio 0.3 --quant w4a16 --target vllm --out out-w4   # healed, then 4-bit GPTQ on self-text
    """
    setup_output(quiet, verbose, as_json)
    from prunenet.jobs.api import export

    result = export(model, ratio=ratio, target=target, out=out, heal=heal, evaluate=not no_eval,
                    validate=not no_validate, force=force, compat=compat, dtype=dtype, plan=plan_file,
                    method=method, allocation=allocation, align=align, tp=tp, episodes=episodes, lr=lr, seed=seed,
                    device=device, policy=policy, self_data=self_data, heal_tokens=heal_tokens,
                    heal_steps=heal_steps, heal_lr=heal_lr, heal_batch=heal_batch, heal_refit=heal_refit,
                    heal_mode=heal_mode, quant=quant, quant_group=quant_group, quant_rounding=quant_rounding, quant_tune_steps=quant_tune_steps)
    if as_json:
        emit_json(result)
    elif not quiet:
        _report(result)


def _report(result: dict) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console()
    stats = result["stats"]
    widths = result["widths"]
    console.print(f"[bold]Pruned[/bold] {result['source']} with {result['method']} -> {result['out']} ({result['target']})")
    console.print(f"widths per layer: {widths}")
    table = Table(show_header=True)
    for col in ("", "before", "after", "reduction"):
        table.add_column(col)
    table.add_row("FFN neurons", f"{stats['ffn_neurons_before']:,}", f"{stats['ffn_neurons_after']:,}",
                  f"{1 - stats['ffn_neurons_after'] / stats['ffn_neurons_before']:.2%}")
    table.add_row("FFN params", f"{stats['ffn_params_before']:,}", f"{stats['ffn_params_after']:,}",
                  f"{1 - stats['ffn_params_after'] / max(1, stats['ffn_params_before']):.2%}")
    table.add_row("total params", f"{stats['params_before']:,}", f"{stats['params_after']:,}",
                  f"{stats['param_reduction']:.2%}")
    console.print(table)
    q = result.get("quality")
    if q:
        for genre, g in q["genres"].items():
            console.print(f"quality ({genre}): perplexity {g['dense_ppl']:.2f} -> {g['pruned_ppl']:.2f} "
                          f"(x{g['ppl_ratio']:.2f}), KL {g['kl']:.4f}, top-1 agreement {g['top1_agreement']:.3f}")
    h = result.get("healing")
    if h:
        ref = (f", reference text KL {h['reference_before']['kl']:.4f} -> {h['reference_after']['kl']:.4f}"
               if h.get("reference_after") else "")
        console.print(f"healed ({h['mode']}, {h['steps']} steps, {h['seconds']:.0f} s): held-out self-text KL "
                      f"{h['held_out_before']['kl']:.4f} -> {h['held_out_after']['kl']:.4f}{ref}")
    target = TARGETS[result["target"]]
    if target.post_check and result["export"].get(target.post_check):
        console.print(f"{target.post_check} resolves the directory to {result['export'][target.post_check]}")
    if target.next_step:
        console.print(target.next_step.format(out=result["out"]))
    if result.get("phases"):
        console.print("phases: " + ", ".join(f"{p['name']} {p['seconds']:.1f} s / {p['peak_rss_mb'] / 1024:.1f} GB"
                                             for p in result["phases"]), style="dim")
    for note in result.get("notes", []):
        console.print(note, style="dim")
    for warning in result.get("warnings", []):
        console.print(f"[yellow]warning:[/yellow] {warning}")


if __name__ == "__main__":
    from .common import run_cli

    run_cli(command)
