"""The run-directory driver: every long-running command (MBIRL, MAIRL, expert training, each visual stage) opens
its output directory through :class:`RunDir`, so each gets the same guarantees.

A run directory holds ``config.json`` (the run's config dataclass as JSON), ``checkpoints/last`` (safetensors +
JSON, written crash-safely), ``metrics.jsonl`` + TensorBoard events in ``tb/``, ``figures/`` and, when the run
finishes, ``metrics.json`` (and optionally ``summary.md``), each written atomically. A directory that holds a run is
never silently overwritten. ``--resume`` follows one rule everywhere: the fields a config class lists in its
``RESUMABLE`` class variable (how long the run goes, how often it reports) may change; any other difference is
refused. Python/numpy/torch RNG states travel with checkpoints so a resumed run continues exactly.

One process writes a run directory at a time: :class:`RunDir` holds an exclusive ``flock`` on ``RUN_DIR/.lock``
while the run is open. The kernel releases it when the process ends, however it ends (a SIGKILL included), so the
lock of a dead process is never in the way, and the pid written in the file says who holds a live one. Fields a
config class lists in ``PATHS`` (input files) are recorded resolved (absolute), so a run's ``config.json`` means
the same from any directory, and either spelling resumes.
"""

from __future__ import annotations

import ast
import dataclasses
import fcntl
import os
import random
import warnings
import weakref
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import torch

from mbirl.errors import InputError
from mbirl.fileio import write_json_atomic, write_text_atomic
from mbirl.interrupts import deferred, note_resumable
from mbirl.reporting.checkpoint import load_checkpoint, save_checkpoint
from mbirl.reporting.logger import MetricsLogger
from mbirl.validation import check_overrides, config_to_dict, field_default, flatten_config, read_json, to_plain

__all__ = ["ALREADY_HOLDS_A_RUN", "LOCK_FILE", "RunDir", "checkpoint_stem", "forget_checkpoints", "last_checkpoint",
           "rng_state", "set_rng_state"]

ALREADY_HOLDS_A_RUN = "run directory already holds a run; pass --resume to continue it or choose another --run-dir"
LOCK_FILE = ".lock"
"""The run directory's lock file (its content: the pid of the process that last held it)."""

_locks: dict[str, list[int]] = {}
"""Resolved run directory -> [lock file descriptor, handles open in this process]. Handles of one process share
the lock (a trainer and the checks before it open the same directory); other processes are refused."""
_last_checkpoint: list[Path] = []


def forget_checkpoints() -> None:
    """Start a new command: :func:`last_checkpoint` is None until a run saves or resumes one."""
    _last_checkpoint.clear()


def last_checkpoint() -> Path | None:
    """The checkpoint this process wrote or resumed from most recently (its ``.json``), if any: what an
    interrupted or failed command can point the user to."""
    return _last_checkpoint[-1] if _last_checkpoint else None


def _acquire(path: Path) -> str:
    """Take (or share, within this process) the exclusive lock of run directory ``path``, which must exist."""
    key = str(path.resolve())
    held = _locks.get(key)
    if held is not None:
        held[1] += 1
        return key
    fd = os.open(path / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o666)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
        os.close(fd)
        raise InputError(f"run directory is in use by another process (pid {holder}); wait for it to end or choose "
                         "another --run-dir", source=str(path)) from None
    except OSError as exc:  # a file system without flock (some network mounts): run without the lock
        warnings.warn(f"{path}: cannot lock the run directory ({exc.strerror}); make sure no other process "
                      "writes to it", RuntimeWarning, stacklevel=3)
    else:
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    _locks[key] = [fd, 1]
    return key


def _release(key: str) -> None:
    held = _locks.get(key)
    if held is None:
        return
    held[1] -= 1
    if held[1] <= 0:
        del _locks[key]
        os.close(held[0])  # closing the descriptor releases the flock

def _holds_tensor(value: Any) -> bool:
    if isinstance(value, dict):
        return any(_holds_tensor(v) for v in value.values())
    if isinstance(value, list):
        return any(_holds_tensor(v) for v in value)
    return isinstance(value, torch.Tensor)


def checkpoint_stem(run_dir: str | Path) -> Path:
    """Where a run keeps its last checkpoint: ``run_dir/checkpoints/last``."""
    return Path(run_dir) / "checkpoints" / "last"


class RunDir:
    """One run's output directory.

    Opening validates and reads, and writes nothing: it raises :class:`InputError` when ``path`` already holds a
    run and ``resume`` is false, or when the saved configuration differs from ``config`` outside the config
    class's ``RESUMABLE`` fields. :attr:`state` is then the last checkpoint to continue from (None for a fresh
    run). Call :meth:`start` once everything else is validated; it creates the directory and writes
    ``config.json``.

    Args:
        path: the run directory.
        config: the run's config dataclass (its ``RESUMABLE`` class variable names the fields that may change
            on resume, dotted for nested configs, e.g. ``"env_steps"``).
        resume: continue the run that ``path`` holds (a directory without one starts fresh).
        overwrite: start afresh in a directory that holds a run, discarding its configuration, checkpoint and final
            metrics (other files are replaced as the new run writes them).
    """

    def __init__(self, path: str | Path, config: Any, *, resume: bool = False, overwrite: bool = False) -> None:
        if not dataclasses.is_dataclass(config) or isinstance(config, type):
            raise TypeError("RunDir needs a config dataclass instance")
        self.path = Path(path)
        self.config = config
        self.config_json = _resolve_paths(config_to_dict(config), type(config))
        self.checkpoint = checkpoint_stem(self.path)
        self.state: dict[str, Any] | None = None
        self.resume = resume
        self._lock: weakref.finalize | None = None
        if self.path.is_dir():
            self._hold()
        if overwrite and not resume:  # discard the run the directory holds (under its lock)
            for name in ("config.json", "metrics.json"):
                (self.path / name).unlink(missing_ok=True)
            self.checkpoint.with_suffix(".json").unlink(missing_ok=True)
        try:
            self._held_run = self._open(resume)
        except BaseException:
            self.close()
            raise

    def _hold(self) -> None:
        self._lock = weakref.finalize(self, _release, _acquire(self.path))

    def close(self) -> None:
        """Release this handle's share of the directory's lock (also done when the handle is garbage-collected
        and, by the kernel, when the process ends)."""
        if self._lock is not None:
            self._lock()

    def _holds_run(self) -> bool:
        return (self.path / "config.json").exists() or self.checkpoint.with_suffix(".json").exists()

    def _open(self, resume: bool) -> bool:
        config_path = self.path / "config.json"
        if not self._holds_run():
            return False
        if not resume:
            raise InputError(ALREADY_HOLDS_A_RUN, source=str(self.path))
        if self.checkpoint.with_suffix(".json").exists():
            self.state = load_checkpoint(self.checkpoint)
            saved = self.state.get("config")
            where = self.checkpoint.with_suffix(".json")
            _last_checkpoint.append(where)
            self._note_checkpoint()
        else:
            saved = read_json(config_path)
            where = config_path
        if not isinstance(saved, dict):
            raise InputError("the saved run has no configuration", source=str(where), field="config")
        if _holds_tensor(saved):  # an edited checkpoint: a configuration is JSON values only
            raise InputError("the saved configuration holds a tensor", source=str(where), field="config")
        self._check_unchanged(saved, where)
        return True

    @property
    def resumed(self) -> bool:
        """Whether a checkpoint was found to continue from."""
        return self.state is not None

    @property
    def figures(self) -> Path:
        return self.path / "figures"

    def _check_unchanged(self, saved: dict[str, Any], where: Path) -> None:
        cls = type(self.config)
        allowed = set(getattr(cls, "RESUMABLE", ()))
        try:  # a run saved before its config was nested: move its flat keys where they belong now
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                saved = to_plain(check_overrides(saved, cls, source=str(where), ignore_unknown=True))
        except InputError:
            pass  # compared as saved; a mistyped value shows as a difference below
        old, new = flatten_config(_resolve_paths(saved, cls)), flatten_config(self.config_json)
        # a key the saved run predates (added to the config later) counts as its default
        mismatched = [k for k, v in new.items()
                      if k not in allowed and old.get(k, field_default(cls, k)) != v]
        if mismatched:
            raise InputError(f"--resume with a different configuration ({', '.join(mismatched)})", source=str(where))

    def start(self, components: dict[str, str] | None = None) -> None:
        """Create the directory and write ``config.json`` (after all validation, before the work) and ``run.json``
        (:func:`mbirl.reporting.provenance.record_provenance`: version, git commit, command line and
        ``components``, role -> class name of what the run was built from)."""
        from mbirl.reporting.provenance import record_provenance

        self.path.mkdir(parents=True, exist_ok=True)
        if self._lock is None:  # the directory did not exist when the run was opened
            self._hold()
            if self._holds_run() != self._held_run:  # another process started a run here meanwhile
                raise InputError(ALREADY_HOLDS_A_RUN, source=str(self.path))
        with deferred():  # an interrupt meanwhile is raised once what the directory holds now is noted
            write_json_atomic(self.path / "config.json", self.config_json)
            if self.state is None:  # the directory holds a run now: a plain rerun would be refused
                note_resumable(f"the run in {self.path} has no checkpoint yet",
                               "rerun the command with --resume to start it again")
        record_provenance(self.path, components)

    def save(self, state: dict[str, Any]) -> None:
        """Checkpoint ``state`` (tensors + JSON values; the config is added) crash-safely."""
        with deferred():  # an interrupt during the write is raised once the checkpoint is noted as safe
            save_checkpoint(self.checkpoint, {**state, "config": self.config_json})
            _last_checkpoint.append(self.checkpoint.with_suffix(".json"))
            del _last_checkpoint[:-1]
            self._note_checkpoint()

    def _note_checkpoint(self) -> None:
        note_resumable(f"the last checkpoint is safe in {self.path}")

    def logger(self, *, resume_from_step: int | None = None, tensorboard: bool = True) -> MetricsLogger:
        """The run's JSONL + TensorBoard log; on resume, rows at or after ``resume_from_step`` are dropped."""
        return MetricsLogger(self.path, tensorboard=tensorboard, resume_from_step=resume_from_step)

    @contextmanager
    def progress(self, label: str, total: int, completed: int = 0, *, enabled: bool = True, **fields: Any
                 ) -> Iterator[Any]:
        """A Rich progress bar for this run; yields ``update(completed=..., **fields)``. The bar's text shows
        ``info`` (a string field)."""
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

        fields.setdefault("info", "")
        bar = Progress(TextColumn(f"[bold]{label}[/]"), BarColumn(), MofNCompleteColumn(),
                       TextColumn("{task.fields[info]}"), TimeRemainingColumn(), disable=not enabled,
                       transient=False)
        task = bar.add_task(label, total=total, completed=completed, **fields)

        def update(**kw: Any) -> None:
            bar.update(task, **kw)

        with bar:
            yield update

    def finish(self, metrics: dict[str, Any], *, summary: str | None = None) -> None:
        """Write the final ``metrics.json`` (and ``summary.md``), atomically."""
        write_json_atomic(self.path / "metrics.json", metrics)
        if summary is not None:
            write_text_atomic(self.path / "summary.md", summary)


def _resolve_paths(data: dict[str, Any], cls: type) -> dict[str, Any]:
    """``data`` (a config as a mapping) with the top-level fields ``cls.PATHS`` names made absolute; empty or
    non-string values stay as they are."""
    out = dict(data)
    for name in getattr(cls, "PATHS", ()):
        value = out.get(name)
        if isinstance(value, str) and value:
            out[name] = str(Path(value).expanduser().resolve())
    return out


def rng_state() -> dict[str, Any]:
    """Python, numpy (global) and torch RNG states, in checkpointable form (tensors + JSON values)."""
    np_state: Any = np.random.get_state()  # noqa: NPY002 (the global RNG any library code may use)
    return {
        "python": repr(random.getstate()),
        "numpy": {"keys": torch.as_tensor(np_state[1].astype(np.int64)), "pos": int(np_state[2]),
                  "has_gauss": int(np_state[3]), "cached": float(np_state[4])},
        "torch": torch.get_rng_state(),
    }


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore what :func:`rng_state` captured."""
    try:
        py = ast.literal_eval(state["python"])  # a literal tuple of ints; never evaluated as code
        random.setstate((py[0], tuple(py[1]), py[2]))
        n = state["numpy"]
        np.random.set_state(("MT19937", n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"],  # noqa: NPY002
                             n["cached"]))
        torch.set_rng_state(state["torch"].to(torch.uint8))
    except (KeyError, TypeError, ValueError, SyntaxError, IndexError, RuntimeError) as exc:
        raise InputError(f"checkpoint RNG state is invalid ({type(exc).__name__})", field="rng") from None
