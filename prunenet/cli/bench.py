"""The ``bench`` command: latency and memory of dense vs pruned models, side by side, on one or more engines."""

from __future__ import annotations

import re
from pathlib import Path

import click

from .common import emit_json, handle_errors, setup_output, verbosity_options

ENGINE_NAMES = ("torch", "onnxruntime", "onnxruntime-genai", "vllm")
_NUMBERS = re.compile(r"^\d+(,\d+)*$")
_MULTI_VALUE = {
    "--batch-sizes": lambda tok: bool(_NUMBERS.match(tok)),
    "--prompt-lengths": lambda tok: bool(_NUMBERS.match(tok)),
    "--engine": lambda tok: all(part in ENGINE_NAMES for part in tok.split(",")),
}


def join_multi_values(args: list[str]) -> list[str]:
    """``--prompt-lengths 32 128`` -> ``--prompt-lengths 32,128`` (click options take one token each).

    Tokens after a list option are taken as its values while they look like values (numbers, or
    engine names), so ``bench A B --prompt-lengths 32 128`` keeps A and B as directories. A
    directory literally named like a number must then be written as ``./32``.
    """
    out: list[str] = []
    i = 0
    while i < len(args):
        name, eq, value = args[i].partition("=")
        if args[i] == "--":
            return out + args[i:]
        if name not in _MULTI_VALUE:
            out.append(args[i])
            i += 1
            continue
        values, i = ([value], i + 1) if eq else (args[i + 1:i + 2], i + 2)
        while i < len(args) and _MULTI_VALUE[name](args[i]):
            values.append(args[i])
            i += 1
        out += [name, ",".join(values)] if values else [name]
    return out


class _BenchDir(click.ParamType):
    """An existing directory, or the default model's name (resolved to its cache entry on first use)."""

    name = "dir"

    def convert(self, value, param, ctx) -> Path:
        from prunenet.source.resolve import DEFAULT_MODEL

        if str(value) == DEFAULT_MODEL:
            return Path(value)  # resolved (and built if needed) inside the command, where errors are handled
        path = Path(value).expanduser()
        if not path.is_dir():
            self.fail(f"{value!r} is not a directory (nor {DEFAULT_MODEL!r}, the default model)", param, ctx)
        return path


class _MultiValueCommand(click.Command):
    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        return super().parse_args(ctx, join_multi_values(list(args)))


def _ints(values: tuple[str, ...], option: str) -> tuple[int, ...]:
    parts = [p for v in values for p in v.replace(" ", ",").split(",") if p]
    if not parts or not all(p.isdigit() and int(p) > 0 for p in parts):
        raise click.BadParameter(f"expected positive integers, got {' '.join(values)!r}", param_hint=option)
    return tuple(dict.fromkeys(int(p) for p in parts))


def _engines(values: tuple[str, ...]) -> tuple[str, ...]:
    parts = [p for v in values for p in v.split(",") if p] or ["onnxruntime"]
    bad = [p for p in parts if p not in ENGINE_NAMES]
    if bad:
        raise click.BadParameter(f"{', '.join(bad)} (choose from {', '.join(ENGINE_NAMES)})", param_hint="--engine")
    return tuple(dict.fromkeys(parts))


@click.command("bench", cls=_MultiValueCommand)
@click.argument("dirs", metavar="DIR [DIR ...]", nargs=-1, required=True, type=_BenchDir())
@click.option("--engine", "engines", multiple=True, metavar="NAME [NAME ...]",
              help="torch, onnxruntime, onnxruntime-genai and/or vllm (repeat or list them).  [default: onnxruntime]")
@click.option("--batch-sizes", multiple=True, default=("1",), show_default=True, metavar="N [N ...]",
              help="Batch sizes to measure.")
@click.option("--prompt-lengths", multiple=True, default=("32", "128"), show_default=True, metavar="N [N ...]",
              help="Prompt lengths in tokens.")
@click.option("--generation-length", type=click.IntRange(min=2), default=32, show_default=True,
              help="New tokens per run (greedy; end-of-text does not stop it).")
@click.option("--warmup", type=click.IntRange(min=0), default=2, show_default=True, help="Untimed runs first.")
@click.option("--runs", type=click.IntRange(min=1), default=5, show_default=True,
              help="Timed runs per model and shape (models alternate run by run).")
@click.option("--threads", type=click.IntRange(min=1), default=None,
              help="Intra-op threads for ONNX Runtime and torch.  [default: physical cores]")
@click.option("--device", type=click.Choice(["cpu", "cuda"]), default="cpu", show_default=True)
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Write results.json, results.csv, results.md and results.png here.")
@click.option("--json", "as_json", is_flag=True, help="Print the full report as one JSON object.")
@verbosity_options
@handle_errors
def command(dirs: tuple[Path, ...], engines: tuple[str, ...], batch_sizes: tuple[str, ...],
            prompt_lengths: tuple[str, ...], generation_length: int, warmup: int, runs: int, threads: int | None,
            device: str, out: Path | None, as_json: bool, quiet: bool, verbose: int) -> None:
    """Benchmark model directories side by side: prompt latency, per-token decode latency, memory.

    Each DIR is a Hugging Face directory (the dense source or a pruned export) or an ONNX export;
    the name SmolLM2-135M-Instruct stands for the default model.
    For onnxruntime, a DIR without model.onnx is exported once into the cache ($PRUNENET_CACHE/onnx).
    All DIRs are loaded together and measured alternately; ratios are relative to the first DIR.
    Metrics follow ONNX Runtime's LLaMA benchmark_e2e.py (greedy, fixed generation length).

    \b
    Example:
      prunenet bench SmolLM2-135M-Instruct out --engine onnxruntime
      prunenet bench dense pruned --engine torch onnxruntime --prompt-lengths 32 128 --out results
    """
    setup_output(quiet, verbose, as_json)
    from prunenet.source.resolve import DEFAULT_MODEL, resolve_model
    from serving.bench.config import BenchConfig
    from serving.bench.outputs import markdown_table
    from serving.bench.run import benchmark

    dirs = tuple(resolve_model(None).path if str(d) == DEFAULT_MODEL else d for d in dirs)

    cfg = BenchConfig(engines=_engines(engines), batch_sizes=_ints(batch_sizes, "--batch-sizes"),
                      prompt_lengths=_ints(prompt_lengths, "--prompt-lengths"), generation_length=generation_length,
                      warmup=warmup, runs=runs, threads=threads, device=device, out=out)
    report = benchmark(list(dirs), cfg)
    if as_json:
        emit_json(report)
    elif not quiet:
        click.echo(markdown_table(report["results"]), nl=False)
        if out is not None:
            click.echo(f"results written to {out}/ ({', '.join(report['files'])})")
