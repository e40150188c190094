"""The ``mbirl`` command line (Typer): the only place options and config files are parsed.

Sub-apps live beside this module, one per family of commands (``kuka``, ``mbirl``, ``mairl``, ``il``, ``bench``,
...); errors in user input become a one-line message on stderr and exit code 2, never a traceback.
"""

from __future__ import annotations

import signal
import sys
from collections.abc import Sequence
from typing import Annotated

import typer

from mbirl.cli.bench_cmds import bench_app
from mbirl.cli.data_cmds import data_app
from mbirl.cli.il_cmds import il_app
from mbirl.cli.kuka import kuka_app
from mbirl.cli.mairl_cmds import expert_app, mairl_app
from mbirl.cli.mbirl_cmds import mbirl_app, quickstart
from mbirl.cli.reward_cmds import reward_app
from mbirl.cli.transfer_cmds import transfer_app
from mbirl.cli.visual_cmds import visual_app
from mbirl.errors import InputError, NonFiniteError, one_line

__all__ = ["app", "main"]

MAX_THREADS = 256
"""Most torch threads accepted (far more than these small networks can use; 100000 crashed OpenMP)."""

app = typer.Typer(name="mbirl", help="Model-based inverse reinforcement learning from (visual) demonstrations.",
                  no_args_is_help=True, pretty_exceptions_enable=False, add_completion=False)


def _print_version(value: bool) -> None:
    if value:
        from mbirl import __version__

        print(f"mbirl {__version__}")
        raise typer.Exit()


@app.callback()
def _global(
    threads: Annotated[int, typer.Option(help="torch CPU threads for every command (mbirl --threads 2 ...). The "
                                              "networks and batches are small: on a busy 2-core machine a second "
                                              "OpenMP thread made runs up to 20x slower")] = 1,
    version: Annotated[bool, typer.Option("--version", help="print the package version and exit",
                                          callback=_print_version, is_eager=True)] = False,
) -> None:
    """Model-based inverse reinforcement learning from (visual) demonstrations."""
    import torch

    if not 1 <= threads <= MAX_THREADS:
        raise InputError(f"must be >= 1 and <= {MAX_THREADS}, got {threads}", field="threads")
    torch.set_num_threads(threads)


app.add_typer(kuka_app, name="kuka")
app.add_typer(mbirl_app, name="mbirl")
app.add_typer(expert_app, name="expert")
app.add_typer(mairl_app, name="mairl")
app.add_typer(il_app, name="il")
app.add_typer(visual_app, name="visual")
app.add_typer(bench_app, name="bench")
app.add_typer(data_app, name="data")
app.add_typer(reward_app, name="reward")
app.add_typer(transfer_app, name="transfer")
app.command("quickstart")(quickstart)


def _fail(message: str, code: int) -> None:
    print(f"mbirl: error: {one_line(message)}", file=sys.stderr)
    sys.exit(code)


def _stopped(why: str) -> str:
    """``why`` a command stopped, what it leaves behind and what to do next: what it noted last (a run directory's
    checkpoint, a sweep's finished runs: :func:`mbirl.interrupts.note_resumable`), or, for a command that noted
    nothing (one stopped before its run started, one without run directories), to run it again."""
    from mbirl.interrupts import resume_note

    note = resume_note()
    return f"{why}; {note.kept}: {note.action}" if note is not None else \
        f"{why} before the command saved anything to resume from: run it again"


def _kept(why: str) -> str:
    """``why`` a command failed and what it leaves behind, if it noted anything."""
    from mbirl.interrupts import resume_note

    note = resume_note()
    return f"{why}; {note.kept}" if note is not None else why


def main(argv: Sequence[str] | None = None) -> None:
    """Entry point: run the Typer app and turn expected failures into one-line errors.

    SIGINT and SIGTERM end the command with one line naming ``--resume`` and exit code 130 / 143, delivered only
    between checkpoint writes (:mod:`mbirl.interrupts`)."""
    from mbirl.interrupts import Interrupted, forget_resume_note, install
    from mbirl.reporting.runs import forget_checkpoints

    forget_checkpoints()
    forget_resume_note()
    previous = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    install()
    try:
        # Standalone mode: usage errors print themselves and exit 2; our exceptions propagate to here.
        app(args=list(argv) if argv is not None else None, prog_name="mbirl")
    except InputError as exc:
        _fail(str(exc), 2)
    except Interrupted as exc:
        _fail(_stopped(f"interrupted by {exc}"), exc.exit_code)
    except KeyboardInterrupt:
        _fail(_stopped("interrupted"), 130)
    except NonFiniteError as exc:
        _fail(_kept(str(exc)), 3)
    except OSError as exc:
        _fail(f"{exc.strerror or exc} ({exc.filename})" if exc.filename else str(exc), 1)
    finally:
        for s, handler in previous.items():
            if handler is not None:
                signal.signal(s, handler)
