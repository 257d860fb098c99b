"""Progress display for long steps (rich), silenced by ``--quiet`` or when not on a terminal-like stream.

Library code reports progress only through these helpers, so the CLI decides once whether
anything is drawn and a Python caller gets nothing unless it asks.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterable, Iterator
from typing import TypeVar

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

__all__ = ["track", "status", "set_enabled", "console"]

T = TypeVar("T")
_state = {"enabled": os.environ.get("PRUNENET_PROGRESS", "0") == "1"}
console = Console(stderr=True)
log = logging.getLogger("prunenet")


def set_enabled(enabled: bool) -> None:
    """Turn progress bars on (the CLI does this unless ``--quiet``/``--json``)."""
    _state["enabled"] = enabled


def track(items: Iterable[T], description: str, total: int | None = None) -> Iterator[T]:
    """Iterate ``items`` with a progress bar when progress is enabled."""
    if not _state["enabled"]:
        yield from items
        return
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    with Progress(*columns, console=console, transient=True) as bar:
        yield from bar.track(items, total=total, description=description)


@contextlib.contextmanager
def status(message: str) -> Iterator[None]:
    """A spinner for a step of unknown length; always logged at INFO."""
    log.info(message)
    if not _state["enabled"]:
        yield
        return
    with console.status(message):
        yield
