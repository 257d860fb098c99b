"""The ``eval`` command: how far a pruned model drifted from its dense source, on the same tokens."""

from __future__ import annotations

from pathlib import Path

import click

from prunenet.texts import TEXTS

from .common import emit_json, handle_errors, setup_output, verbosity_options

BUILTIN_TEXTS = (*TEXTS, "self")


def _read_text(value: str) -> tuple[str | None, str, bool]:
    """``(text, name, self_generated)`` for a ``--text`` value: a file, or a built-in text name."""
    from prunenet.evaluation.report import EvalInputError
    from prunenet.texts import reference_text

    path = Path(value).expanduser()
    if path.is_file():
        try:
            return path.read_text(encoding="utf-8"), path.name, False
        except (OSError, UnicodeDecodeError) as exc:
            reason = exc.strerror if isinstance(exc, OSError) else "not UTF-8 text"
            raise EvalInputError(f"--text {value}: cannot read ({reason})") from None
    if value == "self":
        return None, "self-generated", True
    if value in BUILTIN_TEXTS:
        return reference_text(value), f"reference ({value})", False
    if path.exists():
        raise EvalInputError(f"--text {value}: not a regular file")
    raise EvalInputError(f"--text {value}: no such file (or use one of: {', '.join(BUILTIN_TEXTS)})")


@click.command("eval")
@click.argument("out", metavar="OUT")
@click.option("--reference", metavar="SRC", default=None,
              help="Dense model to compare with (directory, .gguf or cached hub id). "
                   "Default: the source recorded in OUT.")
@click.option("--text", "text", metavar="FILE|NAME|self", default="default", show_default=True,
              help="Evaluation text: a UTF-8 file; a bundled public-domain text: 'default' (fiction, ~1.5k "
                   "tokens), 'full' (~5.3k), 'technical' (SQLite's API reference, ~1.9k), 'technical-full' "
                   "(~5.3k); or 'self' (8 samples the dense model writes itself).")
@click.option("--max-tokens", type=click.IntRange(min=2), default=8192, show_default=True,
              help="Use at most this many tokens of the text.")
@click.option("--seq-len", type=click.IntRange(min=2), default=None,
              help="Tokens per evaluation window.  [default: 512, or the model's context if shorter]")
@click.option("--device", default="auto", show_default=True,
              help="Where both models run, one decoder layer at a time: auto (CUDA when present), cpu, cuda[:N].")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object instead of the table.")
@verbosity_options
@handle_errors
def command(out: str, reference: str | None, text: str, max_tokens: int, seq_len: int | None, device: str,
            as_json: bool, quiet: bool, verbose: int) -> None:
    """Compare the pruned model in OUT with its dense source: perplexity, KL and top-1 agreement.

    Both models score exactly the same tokens, streamed one decoder layer at a time (so a model that
    does not fit in memory twice is still scored), in the dense checkpoint's dtype: perplexity of each, the mean
    per-token KL(dense || pruned) of their next-token distributions, and how often their most
    likely next tokens agree. OUT is a directory written by `prunenet export`.

    \b
    Example:
      prunenet eval out
      prunenet eval out --text full --json
      prunenet eval out --reference ./SmolLM2-135M-Instruct --text notes.txt
    """
    setup_output(quiet, verbose, as_json)
    content, name, self_generated = _read_text(text)

    from prunenet.evaluation.directories import evaluate_dirs

    report = evaluate_dirs(out, reference, content, text_name=name, self_generated=self_generated,
                           seq_len=seq_len, max_tokens=max_tokens, device=device)
    if as_json:
        emit_json(report.to_dict())
    elif not quiet:
        from rich.console import Console

        Console().print(report.to_rich())
