"""Run a policy in a gymnasium environment: returns, trajectories, frames."""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from mbirl.envs.gridworld import register_grid_envs
from mbirl.envs.transfer import register_transfer_envs
from mbirl.errors import InputError
from mbirl.types import Trajectory

# the package's own environments (mbirl.envs.transfer, mbirl.envs.gridworld) for make_env and check_env_id
register_transfer_envs()
register_grid_envs()

__all__ = ["ENV_ID", "EpisodeResult", "check_env_id", "make_env", "random_policy", "record_video", "run_episodes"]

Policy = Callable[[np.ndarray], Any]


def make_env(env_id: str, render_mode: str | None = None, **kwargs: Any) -> Any:
    """``gymnasium.make`` (extra keyword arguments go to the environment) with an InputError, not a traceback, for
    an unknown id or an environment that cannot be built as asked.

    ``render_mode`` is passed only when one is asked for, so an environment whose constructor takes no
    ``render_mode`` (a user's own, registered as ``module:Env``) works for everything but rendering. ``env_id``
    may be ``module:Env`` (gymnasium imports ``module``): only ever pass an id the user typed; ids read from files
    go through :func:`check_env_id` first.
    """
    import gymnasium as gym

    if render_mode is not None:
        kwargs["render_mode"] = render_mode
    try:
        return gym.make(env_id, **kwargs)
    except (gym.error.Error, ModuleNotFoundError, ImportError) as exc:
        raise InputError(f"cannot make environment ({type(exc).__name__}: {exc})", field="env",
                         source=env_id) from None
    except TypeError as exc:  # the constructor does not take an argument (render_mode, a preset's keyword)
        what = f"cannot render ({render_mode})" if render_mode is not None else "cannot be built"
        raise InputError(f"environment {what}: {exc}", field="env", source=env_id) from None


ENV_ID = re.compile(r"^(?:[\w.-]+/)?[\w.-]+(?:-v\d+)?$")
"""A plain gymnasium id (``[namespace/]Name[-vN]``): no ``module:`` prefix."""


def check_env_id(env_id: Any, *, source: str | None = None, field: str = "env_id", trusted: str | None = None
                 ) -> str:
    """``env_id`` read from a file (demo metadata, a run's ``config.json``), after checking that it is a plain id
    registered with gymnasium. Gymnasium imports ``module`` for an id ``module:Env`` (and a registered entry point
    can name any code), so a file must not be able to choose one: ``module:Env`` is accepted only when it equals
    ``trusted``, the id the user typed on the command line."""
    import gymnasium as gym

    if not isinstance(env_id, str) or not env_id:
        raise InputError(f"expected an environment id, got {type(env_id).__name__}", source=source, field=field)
    if trusted is not None and env_id == trusted:
        return env_id
    if not ENV_ID.match(env_id) or len(env_id) > 200:
        raise InputError(f"'{env_id[:80]}' is not a plain registered environment id (an environment from your own "
                         "module is named on the command line, --env module:Env)", source=source, field=field)
    if env_id not in gym.registry:
        raise InputError(f"'{env_id}' is not a registered gymnasium environment", source=source, field=field)
    return env_id


@dataclass(frozen=True)
class EpisodeResult:
    """Episodes of one policy: per-episode returns, the trajectories and (optionally) rendered frames."""

    returns: np.ndarray
    trajectories: list[Trajectory]
    frames: list[np.ndarray]

    @property
    def mean_return(self) -> float:
        return float(np.mean(self.returns))


def random_policy(env: Any, seed: int) -> Policy:
    """Uniformly random actions from the environment's action space (seeded)."""
    space = env.action_space
    space.seed(seed)
    return lambda obs: space.sample()


def run_episodes(env: Any, policy: Policy, episodes: int, *, seed: int, render: bool = False,
                 max_frames: int = 2000) -> EpisodeResult:
    """Run ``episodes`` full episodes (reset seeds ``seed, seed+1, ...``) and record everything."""
    if episodes < 1:
        raise InputError(f"must be >= 1, got {episodes}", field="episodes")
    returns: list[float] = []
    trajs: list[Trajectory] = []
    frames: list[np.ndarray] = []
    for ep in range(episodes):
        obs, _ = env.reset(seed=seed + ep)
        obs_list, acts, rews = [np.asarray(obs, dtype=np.float32)], [], []
        terminated = truncated = False
        while not (terminated or truncated):
            if render and len(frames) < max_frames:
                frames.append(np.asarray(env.render()))
            action = policy(obs)
            obs, reward, terminated, truncated, _ = env.step(action)
            obs_list.append(np.asarray(obs, dtype=np.float32))
            acts.append(np.asarray(action))
            rews.append(float(reward))
        dones = np.zeros(len(acts), dtype=bool)
        dones[-1] = bool(terminated)
        act_arr = np.stack(acts)
        act_arr = act_arr.astype(np.int64) if act_arr.dtype.kind in "iu" else act_arr.astype(np.float32)
        trajs.append(Trajectory(obs=np.stack(obs_list), acts=act_arr, dones=dones,
                                rews=np.asarray(rews, dtype=np.float32)))
        returns.append(float(np.sum(rews)))
    return EpisodeResult(np.asarray(returns), trajs, frames)


def _draw_classic(env_id: str, obs: np.ndarray, size: int = 240) -> np.ndarray:
    """A simple frame of Pendulum / CartPole from the observation (their own renderer needs pygame)."""
    img = np.full((size, size, 3), 255, np.uint8)
    yy, xx = np.mgrid[0:size, 0:size]

    def segment(x0: float, y0: float, x1: float, y1: float, width: float, color: tuple[int, int, int]) -> None:
        px, py = xx - x0, yy - y0
        dx, dy = x1 - x0, y1 - y0
        t = np.clip((px * dx + py * dy) / max(dx * dx + dy * dy, 1e-9), 0, 1)
        mask = (px - t * dx) ** 2 + (py - t * dy) ** 2 <= width**2
        img[mask] = color

    c = size / 2
    if env_id.startswith("Pendulum"):
        cos, sin = float(obs[0]), float(obs[1])  # theta = 0 is upright
        length = 0.4 * size
        segment(c, c, c + length * sin, c - length * cos, size / 40, (204, 77, 77))
        segment(c, c, c, c, size / 60, (0, 0, 0))
    elif env_id.startswith("CartPole"):
        x, theta = float(obs[0]), float(obs[2])
        cx, cy = c + x / 2.4 * 0.4 * size, 0.65 * size
        segment(0, cy + size / 20, size, cy + size / 20, 1, (0, 0, 0))
        img[int(cy - size / 25):int(cy + size / 25), int(max(cx - size / 12, 0)):int(max(min(cx + size / 12, size), 0))
            ] = (60, 60, 60)
        length = 0.35 * size
        segment(cx, cy, cx + length * np.sin(theta), cy - length * np.cos(theta), size / 60, (204, 153, 102))
    else:
        raise InputError(f"no renderer for '{env_id}'", field="video")
    return img


_LOCOMOTION = ("Hopper", "HalfCheetah", "Walker2d", "Ant", "Swimmer", "Humanoid", "TransferAnt", "DisabledAnt")


def record_video(policy: Policy, env_id: str, path: str | Path, *, seed: int = 0, episodes: int = 1,
                 fps: int = 30, max_frames: int = 1000) -> Path:
    """Write an ``.mp4`` of ``episodes`` deterministic episodes (MuJoCo offscreen via EGL unless ``MUJOCO_GL`` is
    set; Pendulum / CartPole drawn from their observations)."""
    import os

    import imageio.v2 as imageio

    os.environ.setdefault("MUJOCO_GL", "egl")
    path = Path(path)
    if path.suffix != ".mp4":
        raise InputError(f"video must end in .mp4, got '{path}'", field="video")
    classic = env_id.startswith(("Pendulum", "CartPole"))
    extra: dict[str, Any] = {}
    if env_id.startswith(_LOCOMOTION):
        # the model's own "track" camera follows the robot; gymnasium's default free camera stays put (it resets
        # the camera type on every frame, so default_camera_config's trackbodyid has no effect) and the robot
        # walks out of view
        extra["camera_name"] = "track"
    env = make_env(env_id, render_mode=None if classic else "rgb_array", **extra)
    frames: list[np.ndarray] = []
    try:
        for ep in range(episodes):
            obs, _ = env.reset(seed=seed + ep)
            done = False
            while not done and len(frames) < max_frames:
                frames.append(_draw_classic(env_id, obs) if classic else np.asarray(env.render()))
                obs, _, terminated, truncated, _ = env.step(policy(obs))
                done = terminated or truncated
    finally:
        env.close()
    path.parent.mkdir(parents=True, exist_ok=True)
    imageio.mimsave(path, frames, fps=fps, macro_block_size=8)  # type: ignore[arg-type]
    return path
