"""Placeholder: the `export` command (being written)."""

import click


@click.command("export")
def command() -> None:
    """Not yet available."""
    raise click.ClickException("not yet available")
