"""Interrupts (Ctrl-C, SIGTERM) as one exception the command line turns into a one-line message and exit code
``128 + signal``, delivered only outside checkpoint writes, so the last checkpoint is always complete when a run
stops.

The CLI calls :func:`install`; library code marks the writes that must not be cut short with :func:`deferred`.
Without :func:`install` (a library user's own program) signals keep Python's defaults.
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from types import FrameType

__all__ = ["Interrupted", "deferred", "install"]


class Interrupted(BaseException):
    """The process received SIGINT or SIGTERM (a BaseException, like KeyboardInterrupt: ``except Exception`` in
    library code does not swallow it; and not a KeyboardInterrupt, which Typer would turn into a silent exit)."""

    def __init__(self, signum: int) -> None:
        self.signum = signum
        super().__init__(signal.Signals(signum).name)

    @property
    def exit_code(self) -> int:
        """The shell's convention for a process stopped by a signal: 130 for SIGINT, 143 for SIGTERM."""
        return 128 + self.signum


_depth = 0
_pending: int | None = None


def _handler(signum: int, frame: FrameType | None) -> None:
    global _pending
    if _depth:
        _pending = signum  # raised when the write in progress is complete
        return
    raise Interrupted(signum)


def install() -> None:
    """Route SIGINT and SIGTERM to :class:`Interrupted` (from the main thread; elsewhere this does nothing)."""
    if threading.current_thread() is not threading.main_thread():
        return
    signal.signal(signal.SIGINT, _handler)
    signal.signal(signal.SIGTERM, _handler)


@contextmanager
def deferred() -> Iterator[None]:
    """Hold back interrupts while the block runs (a checkpoint write); one that arrived meanwhile is raised as
    soon as the block is done."""
    global _depth, _pending
    _depth += 1
    try:
        yield
    finally:
        _depth -= 1
        if _depth == 0 and _pending is not None:
            signum, _pending = _pending, None
            raise Interrupted(signum)
