"""Command-line faces: ``prunenet`` (a group) and ``prunenet-export`` (the one-shot main job).

Each command lives in its own module, parses options, calls one library function and reports.
Heavy imports happen inside command bodies so ``--help`` is instant.
"""

from __future__ import annotations

import click

from prunenet.version import __version__

from .common import OneLineErrorsGroup, run_cli

__all__ = ["main", "export_main"]


@click.group(cls=OneLineErrorsGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, "--version", prog_name="prunenet")
def main() -> None:
    """PruneNet deploy toolchain: calibration-free FFN pruning, exported to HF, vLLM and ONNX.

    \b
    Example:
      prunenet export --ratio 0.3 --target vllm --out out && prunenet serve out
    """


def _register() -> None:
    from . import bench, evaluate, export, serve

    for module in (export, evaluate, bench, serve):
        main.add_command(module.command)


_register()


def export_main() -> None:
    """Entry point of ``prunenet-export`` (the ``export`` command on its own)."""
    from .export import command

    run_cli(command)
