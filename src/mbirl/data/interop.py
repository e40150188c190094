"""Demonstrations from other libraries in, and out to Minari (``mbirl data import|export``).

Every importer returns :class:`~mbirl.types.Trajectory` episodes plus what it found of the environment id and the
returns; :func:`import_demos` turns them into this project's demo file (``mbirl.trajectories/v1`` ``.npz``) with the
normalisation returns MAIRL and the harness need: the expert's mean return (of the imported episodes when they
carry rewards, else given), and the random policy's (given, or measured on demand: :data:`RANDOM_EPISODES`
uniformly random episodes in the named environment). Nothing is unpickled: ``.npz`` files are read with
``allow_pickle=False``, imitation's ``infos`` (jsonpickle strings) are never decoded, HDF5 through ``h5py``.

Formats (``fmt``):

* ``sb3``: the expert ``.npz`` of Stable-Baselines' ``generate_expert_traj`` / ``ExpertDataset`` (``obs``,
  ``actions``, ``episode_starts``, optional ``rewards``, ``episode_returns``, ``next_obs``, ``terminals``). Without
  ``next_obs`` an episode's last action has no next observation and is dropped.
* ``imitation``: a directory saved by ``imitation.data.serialize.save`` (a HuggingFace ``datasets`` directory of
  ``obs``, ``acts``, ``infos``, ``terminal`` and, for ``TrajectoryWithRew``, ``rews``), or its older flat
  ``.npz`` (``obs``, ``acts``, ``indices``, ``terminal``, ``rews``). Needs ``pip install 'mbirl[data]'``.
* ``minari``: a local Minari dataset directory (the one holding ``data/``), read with the ``minari`` package.
* ``d4rl``: a D4RL-style HDF5 file (``observations``, ``actions``, ``rewards``, ``terminals``, ``timeouts``,
  optional ``next_observations``), read with ``h5py``.
"""

from __future__ import annotations

import contextlib
import math
import os
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from mbirl.data.demos import load_trajectories, save_trajectories
from mbirl.errors import InputError
from mbirl.types import Trajectory

__all__ = ["FORMATS", "RANDOM_EPISODES", "Imported", "export_minari", "from_trajectory_objects", "import_demos",
           "random_return", "read_d4rl", "read_imitation", "read_minari", "read_sb3", "require"]

FORMATS = ("sb3", "imitation", "minari", "d4rl")
"""The formats :func:`import_demos` reads."""

RANDOM_EPISODES = 50
"""Episodes of the uniformly random policy when its mean return is measured on demand."""


@dataclass
class Imported:
    """What an importer read: the episodes and what the file says about their environment and returns."""

    trajectories: list[Trajectory]
    env_id: str | None = None
    """the environment id the file names (None: the file does not say)"""
    expert_return: float | None = None
    random_return: float | None = None
    extra: dict[str, Any] = field(default_factory=dict)


def require(module: str) -> Any:
    """Import an optional dependency, or an InputError that says how to install it (one line)."""
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError:
        raise InputError(f"needs the optional package '{module}': pip install 'mbirl[data]'", field="format"
                         ) from None


def _array(data: Any, key: str, source: str) -> np.ndarray:
    try:
        arr = np.asarray(data[key])
    except KeyError:
        raise InputError("missing array", source=source, field=key) from None
    except ValueError as exc:  # an object array (pickled) in an npz opened without pickle
        raise InputError(f"unreadable array ({exc})".splitlines()[0], source=source, field=key) from None
    if arr.dtype == object:
        raise InputError("object arrays are not accepted", source=source, field=key)
    return arr


def _trajectory(obs: np.ndarray, acts: np.ndarray, terminal: bool, rews: np.ndarray | None, source: str,
                index: int) -> Trajectory:
    acts = np.asarray(acts)
    if acts.dtype.kind == "f":
        acts = acts.astype(np.float32)
    elif acts.dtype.kind in "iub":
        acts = acts.astype(np.int64)
        if acts.ndim == 2 and acts.shape[1] == 1:  # SB3 stores discrete actions as (N, 1)
            acts = acts[:, 0]
    dones = np.zeros(len(acts), bool)
    if len(dones):
        dones[-1] = bool(terminal)
    try:
        return Trajectory(np.asarray(obs, np.float32), acts, dones,
                          None if rews is None else np.asarray(rews, np.float64), source=f"{source}[{index}]")
    except InputError:
        raise
    except (ValueError, TypeError) as exc:
        raise InputError(f"episode {index}: {exc}".splitlines()[0], source=source) from None


def _npz(path: Path) -> Any:
    from mbirl.validation import check_file

    check_file(path, what="demonstration file")
    try:
        return np.load(path, allow_pickle=False)
    except (OSError, ValueError) as exc:
        raise InputError(f"not a readable .npz file ({type(exc).__name__})", source=str(path)) from None


def read_sb3(path: str | Path) -> Imported:
    """Stable-Baselines' expert ``.npz`` (see the module docstring)."""
    path = Path(path)
    src = str(path)
    with _npz(path) as data:
        obs, acts = _array(data, "obs", src), _array(data, "actions", src)
        starts = _array(data, "episode_starts", src).astype(bool).reshape(-1)
        keys = set(data.files)
        rews = _array(data, "rewards", src).reshape(-1) if "rewards" in keys else None
        next_obs = _array(data, "next_obs", src) if "next_obs" in keys else None
        terminals = _array(data, "terminals", src).astype(bool).reshape(-1) if "terminals" in keys else None
        returns = _array(data, "episode_returns", src).reshape(-1) if "episode_returns" in keys else None
    n = len(obs)
    if n == 0 or len(acts) != n or len(starts) != n:
        raise InputError(f"obs, actions and episode_starts need one row per step, got {len(obs)}, {len(acts)}, "
                         f"{len(starts)}", source=src, field="actions")
    for name, arr in (("rewards", rews), ("next_obs", next_obs), ("terminals", terminals)):
        if arr is not None and len(arr) != n:
            raise InputError(f"needs {n} rows, got {len(arr)}", source=src, field=name)
    if not starts[0]:
        raise InputError("the first step must start an episode", source=src, field="episode_starts")
    bounds = [*np.flatnonzero(starts).tolist(), n]
    trajs = []
    for i, (a, b) in enumerate(zip(bounds[:-1], bounds[1:], strict=True)):
        if next_obs is not None:
            o = np.concatenate([obs[a:b], next_obs[b - 1:b]])
            trajs.append(_trajectory(o, acts[a:b], bool(terminals[b - 1]) if terminals is not None else False,
                                     None if rews is None else rews[a:b], src, i))
        elif b - a >= 2:  # the last action's next observation is not in the file
            trajs.append(_trajectory(obs[a:b], acts[a:b - 1], False, None if rews is None else rews[a:b - 1], src, i))
    if not trajs:
        raise InputError("no episode with at least one complete transition", source=src, field="episode_starts")
    expert = float(np.mean(returns)) if returns is not None and len(returns) else \
        (float(np.mean([rews[a:b].sum() for a, b in zip(bounds[:-1], bounds[1:], strict=True)]))
         if rews is not None else None)
    return Imported(trajs, None, expert, None, {"source_format": "sb3"})


def _split_flat(obs: np.ndarray, acts: np.ndarray, indices: np.ndarray, terminal: np.ndarray,
                rews: np.ndarray | None, src: str) -> list[Trajectory]:
    """imitation's old flat ``.npz``: ``indices`` split ``acts``; each episode has one extra observation."""
    k = len(indices)
    if len(terminal) != k + 1:
        raise InputError(f"needs {k + 1} terminal flags for {k} split indices, got {len(terminal)}", source=src,
                         field="terminal")
    if len(obs) != len(acts) + k + 1:
        raise InputError("obs must hold one more row per episode than acts", source=src, field="obs")
    obs_parts = np.split(obs, indices + np.arange(k) + 1)
    act_parts = np.split(acts, indices)
    rew_parts = np.split(rews, indices) if rews is not None else [None] * (k + 1)
    return [_trajectory(o, a, bool(t), r, src, i)
            for i, (o, a, t, r) in enumerate(zip(obs_parts, act_parts, terminal, rew_parts, strict=True))]


def read_imitation(path: str | Path) -> Imported:
    """``imitation``'s saved trajectories: a HuggingFace ``datasets`` directory, or the older flat ``.npz``."""
    path = Path(path)
    src = str(path)
    if path.is_file():
        with _npz(path) as data:
            keys = set(data.files)
            trajs = _split_flat(_array(data, "obs", src), _array(data, "acts", src),
                                _array(data, "indices", src).astype(np.int64).reshape(-1),
                                _array(data, "terminal", src).astype(bool).reshape(-1),
                                _array(data, "rews", src) if "rews" in keys else None, src)
        return _with_returns(Imported(trajs, extra={"source_format": "imitation-npz"}))
    if not path.is_dir():
        raise InputError("no such file or directory", source=src)
    datasets = require("datasets")
    try:
        ds = datasets.load_from_disk(src)
    except Exception as exc:  # datasets raises FileNotFoundError / ValueError / its own errors
        raise InputError(f"not a saved HuggingFace dataset ({type(exc).__name__})", source=src) from None
    if not isinstance(ds, datasets.Dataset):
        raise InputError("expected one Dataset, got a DatasetDict", source=src)
    missing = [k for k in ("obs", "acts", "terminal") if k not in ds.column_names]
    if missing:
        raise InputError(f"missing column(s) {', '.join(missing)} (not imitation's trajectory format)", source=src,
                         field=missing[0])
    columns = ["obs", "acts", "terminal", *(["rews"] if "rews" in ds.column_names else [])]
    trajs = []
    for i, row in enumerate(ds.select_columns(columns)):
        try:
            obs, acts = np.asarray(row["obs"]), np.asarray(row["acts"])
        except ValueError:
            raise InputError(f"episode {i}: ragged observations or actions", source=src) from None
        rews = np.asarray(row["rews"], np.float64) if "rews" in row else None
        trajs.append(_trajectory(obs, acts, bool(row["terminal"]), rews, src, i))
    if not trajs:
        raise InputError("the dataset holds no trajectories", source=src)
    return _with_returns(Imported(trajs, extra={"source_format": "imitation"}))


def from_trajectory_objects(trajectories: Any, *, source: str = "trajectories") -> list[Trajectory]:
    """In-memory trajectories of another library as this project's: any sequence of objects with ``obs``
    ``(T + 1, ...)``, ``acts`` ``(T, ...)``, ``terminal`` (bool) and optionally ``rews`` ``(T,)``, e.g.
    ``imitation``'s ``Trajectory`` / ``TrajectoryWithRew`` (duck-typed: ``imitation`` need not be installed)."""
    out = []
    for i, t in enumerate(trajectories):
        try:
            obs, acts, terminal = np.asarray(t.obs), np.asarray(t.acts), bool(t.terminal)
        except AttributeError as exc:
            raise InputError(f"trajectory {i} lacks {exc.name or 'obs/acts/terminal'}", source=source) from None
        rews = getattr(t, "rews", None)
        out.append(_trajectory(obs, acts, terminal, None if rews is None else np.asarray(rews), source, i))
    if not out:
        raise InputError("no trajectories", source=source)
    return out


def _with_returns(imp: Imported) -> Imported:
    if imp.expert_return is None and all(t.rews is not None for t in imp.trajectories):
        imp.expert_return = float(np.mean([float(np.sum(t.rews)) for t in imp.trajectories if t.rews is not None]))
    return imp


@contextlib.contextmanager
def _minari_root(root: Path) -> Iterator[None]:
    old = os.environ.get("MINARI_DATASETS_PATH")
    os.environ["MINARI_DATASETS_PATH"] = str(root)
    try:
        yield
    finally:
        if old is None:
            os.environ.pop("MINARI_DATASETS_PATH", None)
        else:
            os.environ["MINARI_DATASETS_PATH"] = old


def read_minari(path: str | Path) -> Imported:
    """A local Minari dataset: its directory (the one that holds ``data/``), read with ``minari``."""
    path = Path(path)
    src = str(path)
    data_dir = path / "data" if (path / "data").is_dir() else path
    if not (data_dir / "metadata.json").is_file():
        raise InputError("not a Minari dataset directory (no data/metadata.json)", source=src)
    minari = require("minari")
    try:
        dataset = minari.MinariDataset(str(data_dir))
        episodes = list(dataset.iterate_episodes())
    except Exception as exc:  # minari and h5py raise many kinds for a damaged dataset
        raise InputError(f"unreadable Minari dataset ({type(exc).__name__}: {exc})".splitlines()[0],
                         source=src) from None
    trajs = []
    for i, ep in enumerate(episodes):
        obs = np.asarray(ep.observations)
        if obs.dtype == object or obs.ndim != 2:
            raise InputError(f"episode {i}: needs flat Box observations, got shape {obs.shape}", source=src,
                             field="observations")
        trajs.append(_trajectory(obs, np.asarray(ep.actions), bool(np.asarray(ep.terminations)[-1]),
                                 np.asarray(ep.rewards, np.float64), src, i))
    if not trajs:
        raise InputError("the dataset holds no episodes", source=src)
    spec = getattr(dataset.spec, "env_spec", None)
    env_id = getattr(spec, "id", None)
    meta = _minari_metadata(data_dir)
    imp = Imported(trajs, env_id, extra={"source_format": "minari", "dataset_id": meta.get("dataset_id")})
    ref_min, ref_max = meta.get("ref_min_score"), meta.get("ref_max_score")
    if isinstance(ref_min, (int, float)):
        imp.random_return = float(ref_min)
    if isinstance(ref_max, (int, float)):
        imp.expert_return = float(ref_max)
    return _with_returns(imp)


def _minari_metadata(data_dir: Path) -> dict[str, Any]:
    from mbirl.validation import read_json

    meta = read_json(data_dir / "metadata.json", what="Minari metadata")
    return meta if isinstance(meta, dict) else {}


def read_d4rl(path: str | Path) -> Imported:
    """A D4RL-style HDF5 file (see the module docstring); episodes end at ``terminals`` or ``timeouts``."""
    path = Path(path)
    src = str(path)
    from mbirl.validation import check_file

    check_file(path, what="HDF5 file")
    h5py = require("h5py")
    try:
        with h5py.File(path, "r") as f:
            def get(key: str, required: bool = True) -> np.ndarray | None:
                if key not in f:
                    if required:
                        raise InputError("missing dataset", source=src, field=key)
                    return None
                return np.asarray(f[key][()])

            obs, acts, rews = get("observations"), get("actions"), get("rewards")
            terminals, timeouts = get("terminals"), get("timeouts", False)
            next_obs = get("next_observations", False)
            env_attr = f.attrs.get("env_id", f.attrs.get("env_name"))
    except InputError:
        raise
    except (OSError, KeyError, TypeError, ValueError) as exc:
        raise InputError(f"not a readable HDF5 file ({type(exc).__name__})", source=src) from None
    assert obs is not None and acts is not None and rews is not None and terminals is not None
    n = len(obs)
    for name, arr in (("actions", acts), ("rewards", rews), ("terminals", terminals), ("timeouts", timeouts),
                      ("next_observations", next_obs)):
        if arr is not None and len(arr) != n:
            raise InputError(f"needs {n} rows, got {len(arr)}", source=src, field=name)
    ends = terminals.astype(bool).reshape(-1) | (timeouts.astype(bool).reshape(-1) if timeouts is not None else False)
    bounds = [0, *(np.flatnonzero(ends) + 1).tolist()]
    if bounds[-1] != n:
        bounds.append(n)  # a last, unfinished episode
    trajs = []
    for i, (a, b) in enumerate(zip(bounds[:-1], bounds[1:], strict=True)):
        term = bool(terminals[b - 1])
        if next_obs is not None:
            trajs.append(_trajectory(np.concatenate([obs[a:b], next_obs[b - 1:b]]), acts[a:b], term, rews[a:b], src,
                                     i))
        elif b - a >= 2:
            trajs.append(_trajectory(obs[a:b], acts[a:b - 1], False, rews[a:b - 1], src, i))
    if not trajs:
        raise InputError("no episode with at least one complete transition", source=src)
    env_id = env_attr.decode() if isinstance(env_attr, bytes) else (str(env_attr) if env_attr is not None else None)
    return _with_returns(Imported(trajs, env_id, extra={"source_format": "d4rl"}))


READERS = {"sb3": read_sb3, "imitation": read_imitation, "minari": read_minari, "d4rl": read_d4rl}


def random_return(env_id: str, *, episodes: int = RANDOM_EPISODES, seed: int = 0) -> float:
    """Mean return of uniformly random actions in ``env_id`` over ``episodes`` seeded episodes."""
    from mbirl.experts.rollout import make_env, random_policy, run_episodes

    env = make_env(env_id)
    try:
        return float(run_episodes(env, random_policy(env, seed + 1), episodes, seed=seed + 100_000).mean_return)
    finally:
        env.close()


def import_demos(path: str | Path, fmt: str, out: str | Path, *, env_id: str | None = None,
                 expert_return: float | None = None, random_return_value: float | None = None,
                 random_episodes: int = RANDOM_EPISODES, seed: int = 0, command: str | None = None
                 ) -> dict[str, Any]:
    """Read ``path`` in format ``fmt`` (:data:`FORMATS`) and write this project's demo file ``out``; returns its
    metadata.

    ``env_id`` (needed when the file does not name its environment) and the returns given here take precedence
    over the file's; a missing expert return is the imported episodes' mean (when they carry rewards) and a missing
    random return is measured: ``random_episodes`` uniformly random episodes in the environment. The environment
    must build (its spaces are checked against the demonstrations).
    """
    if fmt not in READERS:
        raise InputError(f"unknown format '{fmt}' (expected one of {', '.join(FORMATS)})", field="format")
    out = Path(out)
    if out.suffix != ".npz":
        raise InputError(f"output must end in .npz, got '{out}'", field="out")
    imp = READERS[fmt](path)
    trusted = env_id  # typed by the user: may be module:EnvId
    if env_id is None:
        env_id = imp.env_id
        if env_id is not None and ":" in env_id:  # never import a module a data file names
            raise InputError(f"the file names the environment '{env_id}' (a module to import); pass --env to "
                             "confirm it", source=str(path), field="env")
    if not env_id:
        raise InputError("the file does not name its environment; pass --env", source=str(path), field="env")
    expert = expert_return if expert_return is not None else imp.expert_return
    if expert is None:
        raise InputError("the demonstrations carry no rewards; pass --expert-return", source=str(path),
                         field="expert_return")
    measured = random_return_value is None and imp.random_return is None
    rand = random_return_value if random_return_value is not None else imp.random_return
    if rand is None:
        rand = random_return(env_id, episodes=random_episodes, seed=seed)
    for name, value in (("expert_return", expert), ("random_return", rand)):
        if not math.isfinite(value):
            raise InputError(f"must be finite, got {value}", field=name)
    meta: dict[str, Any] = {
        "env_id": env_id, "n": len(imp.trajectories), "expert_mean_return": float(expert),
        "random_mean_return": float(rand), "random_episodes": random_episodes if measured else None,
        "discrete": imp.trajectories[0].acts.dtype.kind in "iu",
        "imported_from": {"path": str(path), "format": fmt, **imp.extra},
        "command": command or f"mbirl data import {path} --format {fmt} --out {out}",
    }
    from mbirl.experts.demos import DemoStats, check_demo_spaces

    check_demo_spaces(DemoStats(imp.trajectories, meta, str(path), env=trusted))  # also: expert above random
    save_trajectories(out, imp.trajectories, meta)
    return meta


def export_minari(demos: str | Path, out_dir: str | Path, dataset_id: str, *, author: str | None = None,
                  description: str | None = None) -> Path:
    """Write a demo file as a local Minari dataset ``out_dir/<dataset_id>`` (its expert and random returns as
    ``ref_max_score`` / ``ref_min_score``); returns the dataset's directory. The environment must build."""
    from mbirl.experts.rollout import make_env

    minari = require("minari")
    trajs, meta = load_trajectories(demos)
    env_id = meta.get("env_id")
    if not isinstance(env_id, str) or not env_id or ":" in env_id:
        raise InputError("needs a plain registered env_id in the demo file's metadata", source=str(demos),
                         field="meta_json.env_id")
    root = Path(out_dir)
    target = root / dataset_id
    if target.exists():
        raise InputError("already exists; choose another --out or --dataset-id", source=str(target))
    from minari.data_collector import EpisodeBuffer

    buffers = []
    for i, t in enumerate(trajs):
        terminations = np.zeros(len(t), bool)
        terminations[-1] = bool(t.terminal)
        truncations = np.zeros(len(t), bool)
        truncations[-1] = not t.terminal
        rews = t.rews if t.rews is not None else np.zeros(len(t))
        buffers.append(EpisodeBuffer(id=i, observations=list(t.obs), actions=list(t.acts), rewards=list(rews),
                                     terminations=list(terminations), truncations=list(truncations)))
    env = make_env(env_id)
    kwargs: dict[str, Any] = {"author": author or "mbirl", "description": description or
                              f"exported by mbirl from {Path(demos).name}",
                              "algorithm_name": str(meta.get("expert", {}).get("algo", "expert"))
                              if isinstance(meta.get("expert"), dict) else "expert"}
    if "expert_mean_return" in meta and "random_mean_return" in meta:
        kwargs.update(ref_max_score=float(meta["expert_mean_return"]), ref_min_score=float(meta["random_mean_return"]))
    root.mkdir(parents=True, exist_ok=True)
    try:
        with _minari_root(root), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # minari's advice on author e-mails and evaluation environments
            minari.create_dataset_from_buffers(dataset_id, buffers, env=env, **kwargs)
    except (ValueError, TypeError, AssertionError) as exc:
        raise InputError(f"Minari refused the dataset ({type(exc).__name__}: {exc})".splitlines()[0],
                         field="dataset_id") from None
    finally:
        env.close()
    return target
