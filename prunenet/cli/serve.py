"""Placeholder: the `serve` command (being written)."""

import click


@click.command("serve", hidden=True)
def command() -> None:
    """Not yet available."""
    raise click.ClickException("not yet available")
