"""Placeholder: the `bench` command (being written)."""

import click


@click.command("bench", hidden=True)
def command() -> None:
    """Not yet available."""
    raise click.ClickException("not yet available")
