"""Interrupts (Ctrl-C, SIGTERM) as one exception the command line turns into a one-line message and exit code
``128 + signal``, delivered only outside checkpoint writes, so the last checkpoint is always complete when a run
stops.

The CLI calls :func:`install`; library code marks the writes that must not be cut short with :func:`deferred`.
Without :func:`install` (a library user's own program) signals keep Python's defaults.

What the message says a stopped command leaves behind, and how to go on, is what the command registered last
(:func:`note_resumable`; the run-directory driver and the sweep driver do): a checkpoint to ``--resume`` from, a run
directory without one yet, a sweep's finished runs. A command that registered nothing is simply run again.
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from types import FrameType

__all__ = ["RESUME", "Interrupted", "ResumeNote", "deferred", "forget_resume_note", "install", "note_resumable",
           "resumable", "resume_note"]


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
    """Route SIGINT and SIGTERM to :class:`Interrupted` (from the main thread; elsewhere this does nothing).

    A signal ignored when this is called stays ignored: a job started in the background by a shell script, under
    ``nohup`` or after ``trap '' INT`` was meant not to stop on a Ctrl-C aimed at the foreground job."""
    if threading.current_thread() is not threading.main_thread():
        return
    for signum in (signal.SIGINT, signal.SIGTERM):
        if signal.getsignal(signum) is not signal.SIG_IGN:
            signal.signal(signum, _handler)


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


RESUME = "rerun the command with --resume to continue"


@dataclass(frozen=True)
class ResumeNote:
    """What a command leaves behind if it stops now, and what to do next; the CLI's message is
    ``"<why it stopped>; <kept>: <action>"``."""

    kept: str
    """what is safe, e.g. ``"the last checkpoint is safe in runs/x"``"""
    action: str = RESUME
    """how to go on from it"""


_note: list[ResumeNote] = []
_pinned = 0


def note_resumable(kept: str, action: str = RESUME) -> None:
    """Say what the running command leaves behind if it stops from now on (the latest note counts, except inside
    :func:`resumable`)."""
    if not _pinned:
        _note[:] = [ResumeNote(kept, action)]


@contextmanager
def resumable(kept: str, action: str = RESUME) -> Iterator[None]:
    """Note ``kept`` / ``action`` for the block and keep it whatever the work inside notes: a driver of several
    runs (a sweep) speaks for them, its ``--resume`` continues them all."""
    global _pinned
    note_resumable(kept, action)
    _pinned += 1
    try:
        yield
    finally:
        _pinned -= 1


def resume_note() -> ResumeNote | None:
    """The note the running command registered last, if any."""
    return _note[0] if _note else None


def forget_resume_note() -> None:
    """Start a new command: nothing noted yet."""
    _note.clear()
