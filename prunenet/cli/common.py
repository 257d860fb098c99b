"""Shared CLI plumbing: logging/progress levels, signal handling and the one-line error contract."""

from __future__ import annotations

import json
import logging
import os
import sys
from typing import Any

import click

from prunenet.errors import PruneNetError
from prunenet.interrupts import Terminated, catching_signals, check
from prunenet.progress import set_enabled

__all__ = ["verbosity_options", "setup_output", "run_cli", "OneLineErrorsGroup", "handle_errors", "emit_json"]

def verbosity_options(fn):
    fn = click.option("-q", "--quiet", is_flag=True, help="Only errors (no progress, no report).")(fn)
    fn = click.option("-v", "--verbose", count=True, help="More logging (-vv for debug).")(fn)
    return fn


def setup_output(quiet: bool, verbose: int, as_json: bool = False) -> None:
    level = logging.ERROR if quiet else (logging.DEBUG if verbose > 1 else logging.INFO if verbose else logging.WARNING)
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    logging.getLogger("prunenet").setLevel(level)
    for noisy in ("transformers", "torch", "onnxruntime", "vllm", "httpx"):
        logging.getLogger(noisy).setLevel(max(level, logging.WARNING if verbose else logging.ERROR))
    set_enabled(not quiet and not as_json)
    if verbose < 2:  # third-party tqdm bars (e.g. transformers' GGUF dequantization); ours are rich
        os.environ.setdefault("TQDM_DISABLE", "1")
    try:
        import transformers

        transformers.logging.set_verbosity_error() if not verbose else None
        transformers.utils.logging.disable_progress_bar() if verbose < 2 else None
    except Exception:  # transformers missing is reported by the command that needs it
        pass


def emit_json(result: Any) -> None:
    click.echo(json.dumps(result, indent=None, default=str))


def handle_errors(fn):
    """Turn library errors into one line + exit 1; Ctrl-C/SIGTERM into 130/143 (no traceback)."""
    import functools

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            with catching_signals():
                try:
                    return fn(*args, **kwargs)
                except Exception:
                    # A signal raised inside a C extension (safetensors, torch) can come out as that
                    # library's own error ("the file is corrupt"); the signal is the real cause.
                    check()
                    raise
        except PruneNetError as exc:
            click.echo(f"error: {exc}", err=True)
            sys.exit(exc.exit_code)
        except KeyboardInterrupt:
            click.echo("interrupted; nothing was written", err=True)
            sys.exit(130)
        except Terminated:
            click.echo("terminated; nothing was written", err=True)
            sys.exit(143)
        except OSError as exc:
            if exc.errno in (27, 28):  # EFBIG (file-size limit), ENOSPC
                click.echo(f"error: cannot write {exc.filename or 'the output'}: {exc.strerror}; free space and retry",
                           err=True)
                sys.exit(1)
            raise

    return wrapper


def main_one_line(main, args=None, prog_name: str | None = None, **extra: Any):
    """Run a click ``main`` so that usage errors are one line (``error: ... (try 'X --help')``), exit 2.

    Click's default prints the usage block, a hint and the error over three lines; every other
    failure of this tool is one line, so usage errors follow suit.
    """
    try:
        rv = main(args=args, prog_name=prog_name, standalone_mode=False, **extra)
    except click.exceptions.NoArgsIsHelpError as exc:  # bare ``prunenet``: the help, as click would show it
        click.echo(exc.ctx.get_help() if exc.ctx is not None else exc.format_message())
        sys.exit(exc.exit_code)
    except click.UsageError as exc:
        where = exc.ctx.command_path if exc.ctx is not None else prog_name or "prunenet"
        click.echo(f"error: {_one_line(exc.format_message())} (try '{where} --help')", err=True)
        sys.exit(exc.exit_code)
    except click.ClickException as exc:
        click.echo(f"error: {_one_line(exc.format_message())}", err=True)
        sys.exit(exc.exit_code)
    except click.Abort:
        click.echo("interrupted; nothing was written", err=True)
        sys.exit(130)
    sys.exit(rv if isinstance(rv, int) else 0)


def _one_line(message: str) -> str:
    return " ".join(line.strip() for line in message.splitlines() if line.strip())


class OneLineErrorsGroup(click.Group):
    """A click group whose usage errors (its own and its commands') are one line."""

    def main(self, args=None, prog_name=None, **extra: Any):
        extra.pop("standalone_mode", None)
        return main_one_line(super().main, args, prog_name, **extra)


def run_cli(command: click.Command) -> None:
    main_one_line(command.main, prog_name="prunenet-export")
