"""Placeholder: the `evaluate` command (being written)."""

import click


@click.command("eval", hidden=True)
def command() -> None:
    """Not yet available."""
    raise click.ClickException("not yet available")
