"""Demonstrations from an exported expert, with the expert's and a random policy's mean returns as metadata."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np

from mbirl.data.demos import load_trajectories, save_trajectories
from mbirl.errors import InputError
from mbirl.experts.policy import ExpertPolicy
from mbirl.experts.rollout import check_env_id, make_env, random_policy, run_episodes
from mbirl.types import Trajectory
from mbirl.validation import check_output_path

__all__ = ["DemoStats", "check_demo_spaces", "demo_stats", "generate_expert_demos", "normalized_return"]

RANDOM_EPISODES = 50


def generate_expert_demos(env_id: str, expert: ExpertPolicy, n: int, out: str | Path, *, seed: int = 0,
                          command: str | None = None, expert_info: dict[str, Any] | None = None
                          ) -> dict[str, Any]:
    """Roll out ``n`` deterministic expert episodes and save them; returns the metadata written.

    The expert's mean return is that of the saved episodes; the random policy's is measured on
    :data:`RANDOM_EPISODES` episodes with uniformly random actions. Both are what MAIRL normalises by.
    """
    if n < 1:
        raise InputError(f"must be >= 1, got {n}", field="n")
    out = check_output_path(out, ".npz")
    env = make_env(env_id)
    obs_shape = getattr(env.observation_space, "shape", None)
    if not obs_shape or int(np.prod(obs_shape)) != expert.sizes[0]:
        raise InputError(f"the expert takes observations of size {expert.sizes[0]}, {env_id} has {obs_shape}",
                         field="expert")
    demos = run_episodes(env, expert.act, n, seed=seed)
    rand = run_episodes(env, random_policy(env, seed + 1), RANDOM_EPISODES, seed=seed + 100_000)
    meta: dict[str, Any] = {
        "env_id": env_id,
        "n": n,
        "seed": seed,
        "expert_mean_return": demos.mean_return,
        "expert_std_return": float(np.std(demos.returns)),
        "random_mean_return": rand.mean_return,
        "random_std_return": float(np.std(rand.returns)),
        "random_episodes": RANDOM_EPISODES,
        "discrete": expert.mode == "argmax",
        "command": command or f"mbirl expert demos --env {env_id} --n {n} --seed {seed} --out {out}",
        "expert": dict(expert_info or {}),
    }
    save_trajectories(out, demos.trajectories, meta)
    return meta


class DemoStats:
    """What a learner needs from a demo file: transitions, normalisation returns and observation statistics.

    The metadata is checked: ``env_id`` a plain registered id (:func:`~mbirl.experts.rollout.check_env_id`; a
    ``module:Env`` id only when it equals ``env``, the one typed on the command line), the expert's and the random
    policy's mean returns finite numbers with the expert above random (every normalised return divides by their
    difference).
    """

    def __init__(self, trajectories: list[Trajectory], meta: dict[str, Any], source: str, *, env: str | None = None
                 ) -> None:
        for key in ("env_id", "expert_mean_return", "random_mean_return"):
            if key not in meta:
                raise InputError("missing metadata (regenerate with `mbirl expert demos`)", source=source,
                                 field=f"meta_json.{key}")
        self.trajectories = trajectories
        self.meta = meta
        self.env_id = check_env_id(meta["env_id"], source=source, field="meta_json.env_id", trusted=env or None)
        self.expert_return = _finite(meta["expert_mean_return"], source, "meta_json.expert_mean_return")
        self.random_return = _finite(meta["random_mean_return"], source, "meta_json.random_mean_return")
        if not self.expert_return > self.random_return:
            raise InputError(f"expert return {self.expert_return} is not above random {self.random_return}",
                             source=source, field="meta_json.expert_mean_return")
        self.obs = np.concatenate([t.obs[:-1] for t in trajectories]).astype(np.float32)
        self.next_obs = np.concatenate([t.obs[1:] for t in trajectories]).astype(np.float32)
        self.acts = np.concatenate([t.acts for t in trajectories])
        self.dones = np.concatenate([t.dones for t in trajectories]).astype(np.float32)


def _finite(value: Any, source: str, field: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise InputError(f"expected a finite number, got {_short(value)}", source=source, field=field)
    return float(value)


def _short(value: Any) -> str:
    import reprlib

    return reprlib.repr(value)


def demo_stats(path: str | Path, *, env: str | None = None) -> DemoStats:
    """Load a demo file written by :func:`generate_expert_demos` (InputError when it lacks the metadata).

    ``env``: the environment id typed on the command line; the file's ``env_id`` may be ``module:Env`` only when it
    is this one (:func:`~mbirl.experts.rollout.check_env_id`)."""
    trajs, meta = load_trajectories(path)
    return DemoStats(trajs, meta, str(path), env=env)


def normalized_return(ret: float, expert: float, random: float) -> float:
    """``(ret - random) / (expert - random)``: 0 is the random policy, 1 the expert."""
    return (ret - random) / (expert - random)


def check_demo_spaces(demos: DemoStats) -> tuple[Any, Any]:
    """The observation and action spaces of the demonstrations' environment, after checking that the
    demonstrations fit them: a flat Box observation space, and a Discrete action space (integer demo actions in
    range) or a flat Box one (demo actions of its size)."""
    import gymnasium as gym

    env_id = demos.env_id
    env = make_env(env_id)
    space, obs_space = env.action_space, env.observation_space
    env.close()
    if not isinstance(obs_space, gym.spaces.Box) or len(obs_space.shape) != 1:
        raise InputError(f"needs a flat Box observation space, got {obs_space}", field="env", source=env_id)
    obs_dim = int(obs_space.shape[0])
    if demos.obs.shape[1] != obs_dim:
        raise InputError(f"demos have observations of size {demos.obs.shape[1]}, {env_id} has {obs_dim}",
                         field="obs")
    if isinstance(space, gym.spaces.Discrete):
        act_dim = int(space.n)
        if demos.acts.dtype.kind not in "iu" or demos.acts.ndim != 1:
            raise InputError("discrete environment needs integer demo actions", field="acts")
        if demos.acts.min() < 0 or demos.acts.max() >= act_dim:
            raise InputError(f"demo actions outside 0..{act_dim - 1}", field="acts")
    elif isinstance(space, gym.spaces.Box) and len(space.shape) == 1:
        act_dim = int(space.shape[0])
        if demos.acts.dtype.kind != "f":
            raise InputError(f"{env_id} has continuous actions, the demonstrations' are {demos.acts.dtype}",
                             field="acts")
        flat = demos.acts.reshape(len(demos.acts), -1)
        if flat.shape[1] != act_dim:
            raise InputError(f"demo actions have size {flat.shape[1]}, {env_id} has {act_dim}", field="acts")
        # a little slack for float32 rounding of actions stored at the bounds
        low, high = space.low.astype(np.float64), space.high.astype(np.float64)
        slack = 1e-4 * np.maximum(1.0, np.abs(np.where(np.isfinite(low), low, 0)) + np.abs(
            np.where(np.isfinite(high), high, 0)))
        outside = (flat < low - slack) | (flat > high + slack)
        if outside.any():
            i, j = map(int, np.argwhere(outside)[0])
            raise InputError(f"{int(outside.any(axis=1).sum())} demo actions lie outside {env_id}'s action space "
                             f"[{low[j]:g}, {high[j]:g}] (e.g. {float(flat[i, j]):g} at transition {i})",
                             field="acts")
    else:
        raise InputError(f"unsupported action space {space}", field="env", source=env_id)
    return obs_space, space
