"""The ``mbirl`` console script and ``python -m mbirl``: catch SIGINT and SIGTERM before the command line's imports.

Importing the command line (Typer, torch, Stable-Baselines3) takes seconds. A signal in that time would otherwise
meet Python's defaults: a ``KeyboardInterrupt`` traceback for SIGINT, a silent death for SIGTERM. Nothing has been
read or written yet, so the signal ends the process at once with one line and exit code ``128 + signal``; from
:func:`mbirl.cli.main` on, :mod:`mbirl.interrupts` takes over. A signal ignored at start (a job started in the
background by a shell script, ``nohup``, ``trap '' INT``) stays ignored throughout. This module imports nothing
heavy.
"""

from __future__ import annotations

import os
import signal
import sys
from types import FrameType

__all__ = ["main"]


def _before_start(signum: int, frame: FrameType | None) -> None:
    """Exit at once: no command has started, nothing is half-written (``os._exit``: an exception raised inside a
    half-done import of torch could meet its finalisers)."""
    name = signal.Signals(signum).name
    message = f"mbirl: error: interrupted by {name} before the command started (nothing to resume: run it again)\n"
    try:
        os.write(sys.stderr.fileno(), message.encode())
    finally:
        os._exit(128 + signum)


def main() -> None:
    """Entry point: install the start-up handler, then import and run the command line."""
    previous = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    for s, handler in previous.items():
        if handler is not signal.SIG_IGN:  # ignored (a background job, nohup, trap '' INT): it stays ignored
            signal.signal(s, _before_start)
    try:
        from mbirl.cli import main as cli_main

        cli_main()
    finally:
        for s, handler in previous.items():  # a signal while the interpreter shuts down: Python's own handling
            if handler is not None:
                signal.signal(s, handler)


if __name__ == "__main__":
    main()
