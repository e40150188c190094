"""Multi-seed sweeps of the imitation harness on Ray Tune: a grid of algorithms x environments x seeds.

Every cell of the grid is one ordinary imitation run (:func:`mbirl.experiments.imitation.run_imitation`) in its own
run directory ``OUT/<env>/<algo>/s<seed>``, trained as one Ray Tune trial (``cpus_per_trial`` CPUs, as many in
parallel as the cluster holds). ``OUT/sweep.json`` records the grid, the per-run settings, the command and the
package versions; Tune's own bookkeeping goes to ``OUT/_tune/`` and is never needed again.

Resume and retry rest on the run directories, not on Tune's experiment state:

* a trial always calls ``run_imitation(..., resume=True)``, so a trial that Tune restarts after a failure
  (``max_failures`` times) continues from its own last checkpoint;
* a trial whose run directory already holds ``metrics.json`` with exactly the requested configuration is finished:
  the driver does not launch it again (and a trial that finds it returns at once), so ``--resume`` after a killed
  sweep finishes the unfinished trials from their checkpoints and never re-runs a finished one. A larger
  ``env_steps`` continues finished runs to the new budget (the run directory's ``RESUMABLE`` rule).

Ray is imported only here and only when a sweep runs (``pip install mbirl[bench]``); the run directories need a
file system that every node sees at the same path when the sweep spans several machines.
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import logging
import os
import platform
import re
import shlex
import signal
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

from mbirl.data.shipped import shipped_demo_names, shipped_demos
from mbirl.errors import InputError
from mbirl.experiments.imitation import ALGORITHMS, ImitationRunConfig
from mbirl.fileio import write_json_atomic
from mbirl.interrupts import Interrupted, resumable
from mbirl.nets import resolve_device
from mbirl.validation import config_from_dict, config_to_dict, read_json

__all__ = ["GRID_FIELDS", "SWEEP_FILE", "SweepCell", "SweepConfig", "SweepPlan", "SweepResult", "bench_import",
           "cell_is_finished", "package_versions", "parse_seeds", "plan_sweep", "run_cell", "run_sweep",
           "sweep_command"]

SWEEP_FILE = "sweep.json"
"""The sweep's record in its output directory."""

TUNE_DIR = "_tune"
"""Ray Tune's own results, under the sweep's output directory."""

VARIANT_NAME = re.compile(r"[a-z0-9][a-z0-9_-]{0,39}")
"""What a variant's name may be (it is a directory name of the sweep)."""

GRID_FIELDS = ("algo", "env", "seed", "demos")
"""The run-level fields the grid sets for each cell (a sweep's ``--config`` file may not)."""

VERSIONED = ("mbirl", "torch", "numpy", "gymnasium", "mujoco", "stable-baselines3", "ray", "rliable", "scipy")
"""Packages whose versions the sweep and its report record."""

BENCH_HINT = "pip install 'mbirl[bench]'"


def bench_import(module: str) -> Any:
    """Import one of the ``bench`` extra's packages (``ray``, ``ray.tune``, ``rliable.library``, ...), or raise an
    :class:`InputError` that says how to install it."""
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError:
        raise InputError(f"{module.split('.')[0]} is not installed; it comes with the bench extra: {BENCH_HINT}"
                         ) from None


def package_versions() -> dict[str, str | None]:
    """Python's and the main packages' versions (None: not installed)."""
    out: dict[str, str | None] = {"python": platform.python_version()}
    for name in VERSIONED:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = None
    return out


def parse_seeds(text: str) -> tuple[int, ...]:
    """``"0-4"`` -> (0, 1, 2, 3, 4); ``"0,2,5-6"`` -> (0, 2, 5, 6); duplicates are refused."""
    seeds: list[int] = []
    for part in text.replace(" ", "").split(","):
        m = re.fullmatch(r"(\d+)(?:-(\d+))?", part)
        if m is None or (m.group(2) is not None and int(m.group(2)) < int(m.group(1))):
            raise InputError(f"expected seeds like 0-4 or 0,1,2, got '{text}'", field="seeds")
        lo, hi = int(m.group(1)), int(m.group(2) or m.group(1))
        seeds.extend(range(lo, hi + 1))
    if len(set(seeds)) != len(seeds):
        raise InputError(f"repeated seed in '{text}'", field="seeds")
    return tuple(seeds)


def _names(text: str | Sequence[str], what: str) -> tuple[str, ...]:
    items = [s.strip() for s in text.split(",")] if isinstance(text, str) else [s.strip() for s in text]
    items = [s for s in items if s]
    if not items:
        raise InputError(f"expected at least one {what[:-1]}", field=what)
    if len(set(items)) != len(items):
        raise InputError(f"repeated name in '{','.join(items)}'", field=what)
    return tuple(items)


@dataclass(frozen=True)
class SweepConfig:
    """A sweep: the grid (algorithms x environments x seeds), the settings every run shares, and how Ray runs the
    trials. Validated on construction (names, demonstration files, every cell's run configuration)."""

    algos: tuple[str, ...]
    """algorithms: :data:`mbirl.experiments.imitation.ALGORITHMS` names or names of ``variants``"""
    envs: tuple[str, ...]
    """environment ids; each needs demonstrations: ``demos[env]`` or the shipped ``data/demos/<env>.npz``"""
    seeds: tuple[int, ...] = (0, 1, 2, 3, 4)
    """the seeds of each (algorithm, environment) pair"""
    demos: dict[str, str] = field(default_factory=dict)
    """demonstration files by environment id, replacing the shipped ones (stored as absolute paths)"""
    run: dict[str, Any] = field(default_factory=dict)
    """the fields of :class:`ImitationRunConfig` every run shares, nested as it nests (``env_steps``,
    ``eval_every``, ``mairl: {horizon: 10}``, ``bc: {...}``); not the grid's own fields (algo, env, seed, demos)"""
    cpus_per_trial: float = 1.0
    """CPUs Ray reserves for each trial (torch uses that many threads, at least one)"""
    gpus_per_trial: float = 0.0
    """GPUs (a fraction shares one) Ray reserves for each trial; needed when the runs' ``device`` is ``cuda``, or
    ``auto`` on a machine with a GPU: Ray hides the GPUs from a trial that reserves none"""
    max_failures: int = 2
    """times Ray restarts a failed trial; each restart continues from the trial's last checkpoint"""
    variants: dict[str, dict[str, Any]] = field(default_factory=dict)
    """named configurations of an algorithm, usable in ``algos`` beside the plain names: each is the run settings'
    overrides, nested as :class:`ImitationRunConfig` nests, and names its ``algo`` (e.g. ``mairl-imagined``:
    ``{algo: mairl, mairl: {policy_utd: 0.1}}``); applied over ``run``"""

    def __post_init__(self) -> None:
        object.__setattr__(self, "algos", _names(self.algos, "algos"))
        object.__setattr__(self, "envs", _names(self.envs, "envs"))
        variants: dict[str, dict[str, Any]] = {}
        for name, overrides in self.variants.items():
            if not isinstance(name, str) or not VARIANT_NAME.fullmatch(name) or name in ALGORITHMS:
                raise InputError(f"variant names are lower-case letters, digits, '-' and '_', other than the "
                                 f"algorithms' own; got '{str(name)[:60]}'", field="variants")
            if not isinstance(overrides, dict) or not isinstance(overrides.get("algo"), str):
                raise InputError(f"variant '{name}' must name its algo", field=f"variants.{name}.algo")
            ALGORITHMS.check(overrides["algo"], field=f"variants.{name}.algo")
            fixed = sorted(set(overrides) & (set(GRID_FIELDS) - {"algo"}))
            if fixed:
                raise InputError(f"{fixed[0]} is set by the sweep's grid, not a variant", field=f"variants.{name}")
            variants[name] = config_to_dict(overrides)
        object.__setattr__(self, "variants", variants)
        for algo in self.algos:
            if algo not in variants:
                ALGORITHMS.check(algo, field="algos")
        if not self.seeds or any(s < 0 for s in self.seeds) or len(set(self.seeds)) != len(self.seeds):
            raise InputError(f"expected distinct seeds >= 0, got {list(self.seeds)}", field="seeds")
        if self.cpus_per_trial <= 0:
            raise InputError(f"must be > 0, got {self.cpus_per_trial}", field="cpus-per-trial")
        if not 0 <= self.gpus_per_trial <= 64:
            raise InputError(f"must be in [0, 64], got {self.gpus_per_trial}", field="gpus-per-trial")
        if self.max_failures < 0:
            raise InputError(f"must be >= 0, got {self.max_failures}", field="max-failures")
        grid = sorted(set(self.run) & set(GRID_FIELDS))
        if grid:
            raise InputError(f"{', '.join(grid)} is set by the sweep's grid, not its run settings", field=grid[0])
        extra = sorted(set(self.demos) - set(self.envs))
        if extra:
            raise InputError(f"demonstrations given for '{extra[0]}', which is not one of the sweep's environments "
                             f"({', '.join(self.envs)})", field="demos")
        demos: dict[str, str] = {}
        for env in self.envs:
            given = self.demos.get(env)
            path = Path(given).resolve() if given else shipped_demos(env)
            if path is None:
                raise InputError(f"unknown environment '{env}': no shipped demonstrations (shipped: "
                                 f"{', '.join(shipped_demo_names()) or 'none'}); pass --demos {env}=FILE", field="envs")
            if not path.is_file():
                raise InputError("demonstration file not found", source=str(given), field="demos")
            demos[env] = str(path)
        object.__setattr__(self, "demos", demos)
        object.__setattr__(self, "run", config_to_dict(self.run))
        for env in self.envs:  # the demo files name their environment
            from mbirl.experts.demos import demo_stats

            found = demo_stats(demos[env]).env_id
            if found != env:
                raise InputError(f"demonstrations are for '{found}', not '{env}'", source=demos[env], field="demos")
        for cell in self.cells():
            cell.config()  # every run's configuration is valid before anything runs

    @property
    def env_steps(self) -> int:
        """The budget every run gets."""
        return int(self.run.get("env_steps", ImitationRunConfig.env_steps))

    def cells(self) -> list[SweepCell]:
        """The grid, environment-major: every (env, algo, seed)."""
        return [SweepCell(env, algo, seed, self) for env in self.envs for algo in self.algos for seed in self.seeds]

    def to_json(self) -> dict[str, Any]:
        return config_to_dict(self)

    @classmethod
    def from_json(cls, data: Any, *, source: str) -> SweepConfig:
        if not isinstance(data, dict):
            raise InputError("expected a mapping", source=source, field="config")
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - names)
        if unknown:
            raise InputError("unknown key", source=source, field=f"config.{unknown[0]}")
        kw = dict(data)
        for key in ("algos", "envs", "seeds"):
            if key in kw:
                kw[key] = tuple(kw[key])
        try:
            return cls(**kw)
        except TypeError as exc:
            raise InputError(f"invalid sweep configuration ({exc})", source=source) from None


@dataclass(frozen=True)
class SweepCell:
    """One run of a sweep: its environment, algorithm and seed."""

    env: str
    algo: str
    seed: int
    sweep: SweepConfig

    @property
    def name(self) -> str:
        """``<env>/<algo>/s<seed>``, also the run directory relative to the sweep's."""
        return f"{self.env}/{self.algo}/s{self.seed}"

    def run_dir(self, out: str | Path) -> Path:
        return Path(out) / self.env / self.algo / f"s{self.seed}"

    def config_dict(self) -> dict[str, Any]:
        """The run's settings: the sweep's, a variant's overrides over them, then the grid's fields."""
        settings = _merge(self.sweep.run, self.sweep.variants.get(self.algo, {}))
        algo = self.sweep.variants[self.algo]["algo"] if self.algo in self.sweep.variants else self.algo
        return {**settings, "demos": self.sweep.demos[self.env], "env": self.env, "algo": algo, "seed": self.seed}

    def config(self) -> ImitationRunConfig:
        """The run's configuration (an InputError names the cell)."""
        source = f"sweep cell {self.name}"
        try:
            return config_from_dict(ImitationRunConfig, self.config_dict(), source=source, legacy=False)
        except InputError as exc:
            if exc.source:
                raise
            raise InputError(str(exc), source=source) from None


def _merge(base: dict[str, Any], overrides: dict[str, Any]) -> dict[str, Any]:
    """``base`` with ``overrides`` applied, nested mappings merged key by key."""
    out = dict(base)
    for key, value in overrides.items():
        out[key] = _merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def cell_is_finished(config: ImitationRunConfig, run_dir: str | Path) -> bool:
    """Whether ``run_dir`` holds a finished run of exactly ``config`` (its ``metrics.json`` written with this
    configuration and budget)."""
    run_dir = Path(run_dir)
    if not (run_dir / "metrics.json").is_file() or not (run_dir / "config.json").is_file():
        return False
    try:
        saved = read_json(run_dir / "config.json")
    except InputError:
        return False
    if not isinstance(saved, dict):
        return False
    # the device a run trained on is not part of what it is (runs written before it was recorded have none)
    want = config_to_dict(config)
    return bool({k: v for k, v in saved.items() if k != "device"} == {k: v for k, v in want.items() if k != "device"})


def run_cell(config: ImitationRunConfig | dict[str, Any], run_dir: str | Path) -> dict[str, Any]:
    """Train one cell of a sweep into ``run_dir``, continuing from its checkpoint when it has one; a finished run
    of the same configuration is returned as it is (its files untouched)."""
    from mbirl.experiments.imitation import run_imitation

    if isinstance(config, dict):
        config = config_from_dict(ImitationRunConfig, config, source=str(run_dir), legacy=False)
    if cell_is_finished(config, run_dir):
        metrics: dict[str, Any] = read_json(Path(run_dir) / "metrics.json")
        return metrics
    return run_imitation(config, run_dir, resume=True, progress=False)


def _trial(trial_config: dict[str, Any]) -> None:
    """The Ray Tune trainable: one cell (runs in a Ray worker)."""
    import ray
    import torch
    from ray import tune

    params = trial_config["cell"]
    torch.set_num_threads(max(1, int(params["threads"])))
    m = run_cell(params["config"], params["run_dir"])
    tune.report({"final_normalized_return": m["final_normalized_return"], "env_steps": m["env_steps"],
                 "train_seconds": m["train_seconds"], "node_id": ray.get_runtime_context().get_node_id()})


@dataclass
class SweepPlan:
    """What a sweep will do: every cell and which of them are still to run."""

    sweep: SweepConfig
    out: Path
    cells: list[SweepCell]
    todo: list[SweepCell]


def plan_sweep(sweep: SweepConfig, out: str | Path, *, resume: bool = False) -> SweepPlan:
    """Check ``out`` against the sweep before anything runs: a directory holding a sweep needs ``resume`` and the
    same grid; every existing run directory must be resumable with its cell's configuration. Writes nothing."""
    from mbirl.reporting.runs import RunDir

    out = Path(out).resolve()
    record = out / SWEEP_FILE
    if record.exists():
        if not resume:
            raise InputError("directory already holds a sweep; pass --resume to continue it or choose another --out",
                             source=str(out))
        saved = read_json(record, what="sweep record")
        old = SweepConfig.from_json(saved.get("config") if isinstance(saved, dict) else None, source=str(record))
        changed = [k for k in ("algos", "envs", "seeds", "demos", "variants") if getattr(old, k) != getattr(sweep, k)]
        old_run = {k: v for k, v in old.run.items() if k not in ImitationRunConfig.RESUMABLE}
        new_run = {k: v for k, v in sweep.run.items() if k not in ImitationRunConfig.RESUMABLE}
        if old_run != new_run:
            changed.append("run settings")
        if changed:
            raise InputError(f"--resume with a different sweep ({', '.join(changed)})", source=str(record))
    cells = sweep.cells()
    todo = []
    for cell in cells:
        cfg, path = cell.config(), cell.run_dir(out)
        if cell_is_finished(cfg, path):
            continue
        if (path / "config.json").exists() and not resume:
            raise InputError("run directory already holds a run; pass --resume", source=str(path))
        # a run that cannot continue with this configuration fails here, not in Ray; the check's lock is released
        # at once (the trial takes its own)
        RunDir(path, cfg, resume=True).close()
        todo.append(cell)
    return SweepPlan(sweep, out, cells, todo)


def _check_devices(sweep: SweepConfig, cells: Sequence[SweepCell]) -> None:
    """Refuse, before Ray starts, cells whose ``device`` this machine lacks (``cuda`` without a GPU) or that would
    train on a GPU without reserving one (``gpus_per_trial`` 0: Ray hides the GPUs from such a trial)."""
    for cell in cells:
        device = resolve_device(cell.config().device)
        if device.type == "cuda" and sweep.gpus_per_trial <= 0:
            raise InputError(f"{cell.name} trains on {device.type}: reserve GPUs for its trial with "
                             "--gpus-per-trial (e.g. 0.25 to share one GPU between four trials), or pass "
                             "--device cpu", field="gpus-per-trial")


def sweep_command(sweep: SweepConfig, out: Path, *, config_file: str | None = None, address: str | None = None,
                  variant_files: dict[str, str] | None = None) -> str:
    """The ``mbirl bench run`` command line that runs ``sweep`` (the grid options; the run settings are in
    ``config_file`` or the sweep record)."""
    args = ["mbirl", "bench", "run", "--algos", ",".join(sweep.algos), "--envs", ",".join(sweep.envs),
            "--seeds", ",".join(map(str, sweep.seeds)), "--env-steps", str(sweep.env_steps)]
    for env, path in sweep.demos.items():
        if path != str(shipped_demos(env)):
            args += ["--demos", f"{env}={path}"]
    if config_file:
        args += ["--config", config_file]
    for name, path in (variant_files or {}).items():
        args += ["--variant", f"{name}={path}"]
    if "device" in sweep.run:
        args += ["--device", str(sweep.run["device"])]
    args += ["--cpus-per-trial", f"{sweep.cpus_per_trial:g}", "--max-failures", str(sweep.max_failures)]
    if sweep.gpus_per_trial > 0:
        args += ["--gpus-per-trial", f"{sweep.gpus_per_trial:g}"]
    if address:
        args += ["--address", address]
    args += ["--out", str(out)]
    return shlex.join(args)


def _write_record(plan: SweepPlan, command: str) -> None:
    path = plan.out / SWEEP_FILE
    previous = read_json(path) if path.exists() else {}
    commands = [*previous.get("commands", []), {"command": command, "started": time.strftime("%Y-%m-%dT%H:%M:%S%z")}]
    record = {
        "config": plan.sweep.to_json(),
        "command": previous.get("command", command),
        "commands": commands,
        "trials": [{"env": c.env, "algo": c.algo, "seed": c.seed, "run_dir": c.name} for c in plan.cells],
        "versions": package_versions(),
    }
    plan.out.mkdir(parents=True, exist_ok=True)
    write_json_atomic(path, record)


@dataclass
class SweepResult:
    """How a sweep went: the cells that were already finished, those that ran (and the Ray node each ran on), and
    those that failed (with their last error)."""

    out: Path
    skipped: list[str]
    finished: list[str]
    failed: dict[str, str]
    nodes: dict[str, str] = field(default_factory=dict)


@contextlib.contextmanager
def _environ(**values: str) -> Iterator[None]:
    """Environment variables set (where not already set) for the block, as they were after it."""
    saved = {k: os.environ.get(k) for k in values}
    for k, v in values.items():
        os.environ.setdefault(k, v)
    try:
        yield
    finally:
        for k, old in saved.items():
            if old is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = old


def _interruption(exc: BaseException) -> Interrupted | None:
    """The :class:`~mbirl.interrupts.Interrupted` that caused ``exc``, if one did."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        if isinstance(current, Interrupted):
            return current
        seen.add(id(current))
        current = current.__cause__ or current.__context__
    return None


def run_sweep(sweep: SweepConfig, out: str | Path, *, resume: bool = False, address: str | None = None,
              num_cpus: int | None = None, command: str | None = None, verbose: int = 1,
              on_plan: Callable[[SweepPlan], None] | None = None) -> SweepResult:
    """Run every unfinished cell of ``sweep`` as a Ray Tune trial; writes ``out/sweep.json`` first.

    Args:
        sweep: the grid and the shared run settings.
        out: the sweep's directory (run directories ``out/<env>/<algo>/s<seed>``).
        resume: continue a sweep that ``out`` holds (finished runs are kept as they are).
        address: join a running Ray cluster (``"auto"`` or ``HOST:PORT``); None starts a local Ray with
            ``num_cpus`` CPUs (default: all of this machine's).
        command: the command line recorded in ``sweep.json`` (default: the equivalent ``mbirl bench run``).
        verbose: Ray Tune's verbosity (0 silent, 1 status, 2 trial results).
        on_plan: called with the plan once it is validated, before Ray starts.
    """
    # stopped at any point (Ctrl-C, SIGTERM), the sweep keeps its finished runs and --resume runs the rest; what the
    # run directories opened here note (their checkpoints) is for their own commands
    with resumable(f"the sweep in {out} keeps its finished runs",
                   "rerun the command with --resume to run the rest (unfinished runs continue from their checkpoints)"):
        return _run_sweep(sweep, out, resume=resume, address=address, num_cpus=num_cpus, command=command,
                          verbose=verbose, on_plan=on_plan)


def _run_sweep(sweep: SweepConfig, out: str | Path, *, resume: bool, address: str | None, num_cpus: int | None,
               command: str | None, verbose: int, on_plan: Callable[[SweepPlan], None] | None) -> SweepResult:
    _check_devices(sweep, sweep.cells())
    plan = plan_sweep(sweep, out, resume=resume)
    if on_plan is not None:
        on_plan(plan)
    skipped = [c.name for c in plan.cells if c not in plan.todo]
    if not plan.todo:
        _write_record(plan, command or sweep_command(sweep, plan.out, address=address))
        return SweepResult(plan.out, skipped, [], {})
    # Ray's C++ failure-signal handler prints a stack dump on SIGTERM, and ray.init replaces the SIGTERM handler with
    # a silent exit: neither for this driver, whose Ctrl-C / SIGTERM end in the CLI's one line naming --resume
    with _environ(RAY_DISABLE_FAILURE_SIGNAL_HANDLER="1"):
        ray = bench_import("ray")
        tune = bench_import("ray.tune")
        _write_record(plan, command or sweep_command(sweep, plan.out, address=address))
        started = False
        if not ray.is_initialized():
            handlers = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
            quiet = {"logging_level": logging.ERROR, "log_to_driver": False} if verbose == 0 else {}
            if address:
                ray.init(address=address, include_dashboard=False, **quiet)
            else:
                ray.init(num_cpus=num_cpus or os.cpu_count() or 1, include_dashboard=False, **quiet)
            started = True
            for sig, handler in handlers.items():
                if handler is not None:
                    signal.signal(sig, handler)
    try:
        by_key = {c.name: c for c in plan.todo}
        params = [{"key": c.name, "config": c.config_dict(), "run_dir": str(c.run_dir(plan.out)),
                   "threads": sweep.cpus_per_trial} for c in plan.todo]

        def trial_name(trial: Any) -> str:
            return str(trial.config["cell"]["key"]).replace("/", "_")

        resources = {"cpu": sweep.cpus_per_trial}
        if sweep.gpus_per_trial > 0:
            resources["gpu"] = sweep.gpus_per_trial
        trainable = tune.with_resources(_trial, resources)
        tuner = tune.Tuner(
            trainable,
            param_space={"cell": tune.grid_search(params)},
            tune_config=tune.TuneConfig(num_samples=1, trial_name_creator=trial_name,
                                        trial_dirname_creator=trial_name),
            run_config=tune.RunConfig(name=time.strftime("%Y%m%d-%H%M%S"), storage_path=str(plan.out / TUNE_DIR),
                                      failure_config=tune.FailureConfig(max_failures=sweep.max_failures),
                                      verbose=verbose),
        )
        # Ray Tune prints its experiment box and paths whatever its verbosity; it would also take Ctrl-C over
        # (stopping the trials and returning them as failed) where the CLI's handler ends the sweep resumably
        with (contextlib.redirect_stdout(io.StringIO()) if verbose == 0 else contextlib.nullcontext(),
              _environ(TUNE_DISABLE_SIGINT_HANDLER="1")):
            try:
                grid = tuner.fit()
            except Exception as exc:  # a signal raised inside Ray's compiled code arrives wrapped (SystemError)
                interrupted = _interruption(exc)
                if interrupted is None:
                    raise
                raise interrupted from None
        failed: dict[str, str] = {}
        nodes: dict[str, str] = {}
        for result in grid:
            key = result.config["cell"]["key"] if result.config else None
            if key is not None and result.metrics and "node_id" in result.metrics:
                nodes[key] = str(result.metrics["node_id"])
            if result.error is not None and key is not None:
                lines = str(result.error).strip().splitlines()
                failed[key] = lines[-1] if lines else type(result.error).__name__
        # whatever Ray says, a cell is finished when its run directory says so
        for key, cell in by_key.items():
            if key not in failed and not cell_is_finished(cell.config(), cell.run_dir(plan.out)):
                failed[key] = ("its config.json differs from the sweep's (was the code changed while the sweep ran?)"
                               if (cell.run_dir(plan.out) / "metrics.json").is_file() else
                               "no metrics.json after the trial ended")
        finished = [k for k in by_key if k not in failed]
        return SweepResult(plan.out, skipped, finished, failed, nodes)
    finally:
        if started:
            ray.shutdown()
