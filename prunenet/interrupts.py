"""Signals that survive libraries which swallow them.

Some third-party code (e.g. torch.export's fake-tensor propagation) catches ``KeyboardInterrupt``
and carries on. The handlers here remember the signal, so ``check()`` re-raises it at the points
where it matters most: before a staged output directory is committed. A signal that lands inside a
finalizer (``__del__``, a weakref callback) cannot propagate; Python would print it as an "Exception
ignored" traceback. While a command runs those are silenced instead: the signal is remembered, and
``check()`` raises it where it can be handled.
"""

from __future__ import annotations

import contextlib
import signal
import sys
from collections.abc import Iterator

__all__ = ["Terminated", "catching_signals", "check"]


class Terminated(BaseException):
    """Raised for SIGTERM so staged outputs are cleaned up like on Ctrl-C."""


_received: int | None = None


def _handler(signum, frame):  # noqa: ARG001
    global _received
    _received = signum
    raise KeyboardInterrupt() if signum == signal.SIGINT else Terminated()


def check() -> None:
    """Re-raise a SIGINT/SIGTERM received earlier, even if something swallowed the first raise."""
    if _received == signal.SIGINT:
        raise KeyboardInterrupt()
    if _received == signal.SIGTERM:
        raise Terminated()


def _quiet_unraisable(previous):
    def hook(unraisable) -> None:
        if not issubclass(unraisable.exc_type, (KeyboardInterrupt, Terminated)):
            previous(unraisable)

    return hook


@contextlib.contextmanager
def catching_signals() -> Iterator[None]:
    """Route SIGINT/SIGTERM through the remembering handler for the duration of a command."""
    global _received
    _received = None
    previous = {sig: signal.signal(sig, _handler) for sig in (signal.SIGINT, signal.SIGTERM)}
    unraisable = sys.unraisablehook
    sys.unraisablehook = _quiet_unraisable(unraisable)
    try:
        yield
    finally:
        _received = None  # a later command in this process starts clean
        sys.unraisablehook = unraisable
        for sig, handler in previous.items():
            signal.signal(sig, handler)
