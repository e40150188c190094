"""Signals: a SIGINT / SIGTERM ignored when mbirl starts (a background job of a shell script, ``nohup``,
``trap '' INT``) stays ignored; an interrupt's one-line message says what the stopped command leaves behind and
what to do next (a checkpoint to ``--resume`` from, a run directory without one yet, a sweep's finished runs, or
nothing: run it again)."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from mbirl.interrupts import Interrupted
from test_reliability2 import run_cli

ROOT = Path(__file__).resolve().parents[1]


@contextlib.contextmanager
def _disposition(signum: int, handler):
    previous = signal.signal(signum, handler)
    try:
        yield
    finally:
        signal.signal(signum, previous)




def _mbirl_train(tmp_path: Path, placing_demos, iters: int = 1) -> list:
    from mbirl.data import save_keypoint_demos

    save_keypoint_demos(tmp_path / "d.npz", placing_demos)
    return ["mbirl", "train", "--demos", tmp_path / "d.npz", "--cost", "weighted", "--outer-iters", str(iters),
            "--checkpoint-every", "1", "--no-progress", "--run-dir", tmp_path / "run"]


# ------------------------------------------------------------------------------ ignored signals stay ignored


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_install_keeps_an_ignored_signal_ignored(signum):
    from mbirl.interrupts import _handler, install

    with _disposition(signum, signal.SIG_IGN):
        install()
        assert signal.getsignal(signum) is signal.SIG_IGN
    with _disposition(signum, signal.SIG_DFL):
        install()
        assert signal.getsignal(signum) is _handler


def test_the_entry_point_keeps_an_ignored_sigint_ignored(monkeypatch):
    import mbirl.__main__ as entry
    import mbirl.cli

    seen = {}
    monkeypatch.setattr(mbirl.cli, "main", lambda: seen.update(
        {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}))
    with _disposition(signal.SIGINT, signal.SIG_IGN), _disposition(signal.SIGTERM, signal.SIG_DFL):
        entry.main()
        assert seen == {signal.SIGINT: signal.SIG_IGN, signal.SIGTERM: entry._before_start}
        assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN


@pytest.mark.slow
@pytest.mark.parametrize("how", ["preexec", "trap"])
def test_a_background_job_ignores_sigint(tmp_path, placing_demos, how):
    """``python -m mbirl`` started with SIGINT ignored (as a shell starts a background job; here by the spawning
    process or by ``trap '' INT``): SIGINTs during start-up and mid-run are ignored, the run finishes normally."""
    from mbirl.data import save_keypoint_demos

    save_keypoint_demos(tmp_path / "d.npz", placing_demos)
    command = [sys.executable, "-m", "mbirl", "mbirl", "train", "--demos", "d.npz", "--cost", "weighted",
               "--outer-iters", "40", "--checkpoint-every", "1", "--no-progress", "--run-dir", "run"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MPLBACKEND": "Agg"}
    if how == "preexec":
        proc = subprocess.Popen(command, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                text=True, preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_IGN))
    else:
        script = "trap '' INT; exec " + " ".join(f"'{a}'" for a in command)
        proc = subprocess.Popen(["bash", "-c", script], cwd=tmp_path, env=env, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True)
    time.sleep(0.5)
    proc.send_signal(signal.SIGINT)  # during the start-up imports
    checkpoint = tmp_path / "run" / "checkpoints" / "last.json"
    deadline = time.monotonic() + 300
    while not checkpoint.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    for _ in range(3):  # mid-run
        proc.send_signal(signal.SIGINT)
        time.sleep(0.05)
    out, err = proc.communicate(timeout=600)
    assert proc.returncode == 0, err
    assert "interrupted" not in err
    assert json.loads((tmp_path / "run" / "metrics.json").read_text())["method"] == "weighted"


# ------------------------------------------------------------------------------ what an interrupt's message says


def _interrupt_at(monkeypatch, target, name: str) -> None:
    def stop(*args, **kwargs):
        raise Interrupted(signal.SIGINT)

    monkeypatch.setattr(target, name, stop)


def test_an_interrupt_before_the_run_started_says_run_it_again(tmp_path, placing_demos, monkeypatch):
    from mbirl.reporting import runs

    args = _mbirl_train(tmp_path, placing_demos)
    _interrupt_at(monkeypatch, runs.RunDir, "_open")  # while the run directory is being checked
    code, err = run_cli(*args)
    assert code == 130 and err.count("\n") == 1, err
    assert "before the command saved anything to resume from: run it again" in err and "--resume" not in err
    assert not (tmp_path / "run").exists()


def test_an_interrupt_before_the_first_checkpoint_names_resume_to_start_again(tmp_path, placing_demos,
                                                                               monkeypatch):
    from mbirl.reporting import runs

    args = _mbirl_train(tmp_path, placing_demos)
    _interrupt_at(monkeypatch, runs.RunDir, "save")
    code, err = run_cli(*args)
    assert code == 130 and err.count("\n") == 1, err
    assert f"the run in {tmp_path / 'run'} has no checkpoint yet: rerun the command with --resume to start it " \
           "again" in err
    monkeypatch.undo()
    assert "already holds a run" in run_cli(*args)[1]  # what the message says: a plain rerun is refused


def test_an_interrupted_sweep_says_its_finished_runs_are_kept(tmp_path, monkeypatch):
    """``bench run``'s driver: whatever the run directories it opens note, the sweep's --resume runs the rest."""
    from mbirl.experiments import sweep
    from mbirl.interrupts import note_resumable

    def plan(*args, **kwargs):
        note_resumable("the last checkpoint is safe in a/cell")  # as a cell's run directory opened here does
        raise Interrupted(signal.SIGTERM)

    monkeypatch.setattr(sweep, "plan_sweep", plan)
    code, err = run_cli("bench", "run", "--algos", "bc", "--envs", "Pendulum-v1", "--seeds", "0", "--out",
                        tmp_path / "sweep", "--quiet")
    assert code == 143 and err.count("\n") == 1, err
    assert f"interrupted by SIGTERM; the sweep in {tmp_path / 'sweep'} keeps its finished runs: rerun the command " \
           "with --resume to run the rest" in err and "a/cell" not in err


def test_notes_inside_a_resumable_block_do_not_replace_its_own():
    from mbirl.interrupts import ResumeNote, forget_resume_note, note_resumable, resumable, resume_note

    forget_resume_note()
    assert resume_note() is None
    with resumable("the sweep keeps its runs", "rerun with --resume"):
        note_resumable("the last checkpoint is safe in a")
        assert resume_note() == ResumeNote("the sweep keeps its runs", "rerun with --resume")
    note_resumable("the last checkpoint is safe in b")
    assert resume_note() == ResumeNote("the last checkpoint is safe in b")
    forget_resume_note()
