"""The transfer tasks of AIRL (Fu et al., ICLR 2018, section 7.1) as gymnasium environments this package registers:
a reward learned from demonstrations in a *source* environment must produce the demonstrated behaviour in a
*target* environment whose dynamics differ.

* **Shifting maze**: Gymnasium-Robotics' ``PointMaze`` (a force-controlled point mass) on this package's maze maps:
  a wall between the start (bottom) and the goal (top) with its gap on the left (``ShiftingMazeLeft-v0``, the
  demonstrations) or on the right (``ShiftingMazeRight-v0``, test time). As in AIRL's maze, start and goal are fixed
  (the start with a small uniform jitter), episodes last a fixed :data:`MAZE_EPISODE_STEPS` steps and never
  terminate, and the reward is dense: the library's ``exp(-|xy - goal|)`` of the state reached.
* **Disabled ant**: ``TransferAnt-v5`` is MuJoCo's Ant-v5 (the demonstrations); ``DisabledAnt-v5`` is the same Ant
  whose two front legs (``front_left_leg``, ``front_right_leg``) are shrunk to :data:`ANT_LEG_SCALE` of their
  length below the hip, a modified model written to a temporary file and passed through ``xml_file``. Both observe
  the 27 joint positions and velocities (no contact forces) and keep Ant-v5's reward.

What the library cannot be configured to do, and this module therefore does itself: the maze's observation is a
dict (flattened here to the point's ``(x, y, vx, vy)``; the goal is fixed, so it carries no information); the
library jitters the goal and the start by the same ``position_noise_range``, which its ``PointMaze`` constructor
cannot even take (it forwards the keyword to MuJoCo's environment, which rejects it), so the jitter is set to 0
after construction and the start's own jitter applied here; and the point mass moves 0.05 per MuJoCo step at most
(frame skip 1), too little for a 100-step episode to go around the wall, so each action is repeated
:data:`MAZE_FRAME_SKIP` times.

``gymnasium-robotics`` is an optional dependency (``pip install 'mbirl[transfer]'``), imported only when a maze is
built.
"""

from __future__ import annotations

import contextlib
import io
import tempfile
import warnings
import xml.etree.ElementTree as ET  # noqa: N817
from collections.abc import Callable
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np

from mbirl.errors import InputError

__all__ = ["ANT_FRONT_LEGS", "ANT_LEG_SCALE", "MAZE_EPISODE_STEPS", "MAZE_FRAME_SKIP", "MAZE_GOAL", "MAZE_MAPS",
           "MAZE_START", "MAZE_START_NOISE", "TRANSFER_ENVS", "ShiftingMaze", "disabled_ant_xml",
           "make_disabled_ant", "maze_true_reward", "maze_waypoint_policy", "register_transfer_envs"]

_G, _R = "g", "r"
MAZE_MAPS: dict[str, list[list[int | str]]] = {
    # row 0 is the top (largest y); 1 = wall, 0 = free, g = goal cell, r = start cell; cells are 1 x 1
    "left": [[1, 1, 1, 1, 1],
             [1, 0, _G, 0, 1],
             [1, 0, 1, 1, 1],
             [1, 0, _R, 0, 1],
             [1, 1, 1, 1, 1]],
    "right": [[1, 1, 1, 1, 1],
              [1, 0, _G, 0, 1],
              [1, 1, 1, 0, 1],
              [1, 0, _R, 0, 1],
              [1, 1, 1, 1, 1]],
}
"""The shifting maze's maps by the side of the wall's gap: ``left`` (source, demonstrations), ``right`` (target)."""

MAZE_GOAL = (0.0, 1.0)
"""The goal's (x, y): the centre of the ``g`` cell."""
MAZE_START = (0.0, -1.0)
"""The start's (x, y) before its jitter: the centre of the ``r`` cell."""
MAZE_START_NOISE = 0.1
"""Half-width of the uniform jitter of the start's x and y."""
MAZE_EPISODE_STEPS = 100
"""Steps per episode (AIRL's maze: 100); episodes never terminate."""
MAZE_FRAME_SKIP = 3
"""MuJoCo steps per action (dt 0.01 each; the point's speed is clipped at 5)."""

ANT_FRONT_LEGS = ("front_left_leg", "front_right_leg")
"""The Ant's bodies shrunk in ``DisabledAnt-v5``."""
ANT_LEG_SCALE = 0.25
"""Length of the disabled legs below the hip (thigh and ankle), relative to Ant-v5's."""


def _import_point_maze() -> Any:
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore")
            from gymnasium_robotics.envs.maze.point_maze import PointMazeEnv
    except ImportError:
        raise InputError("the shifting maze needs gymnasium-robotics: pip install 'mbirl[transfer]'",
                         field="env") from None
    return PointMazeEnv


def maze_true_reward(obs: np.ndarray, act: np.ndarray, next_obs: np.ndarray) -> np.ndarray:
    """The shifting maze's reward as a function of the transition: ``exp(-|xy(s') - goal|)`` over batches of
    flattened observations ``(B, 4)`` (``(x, y, vx, vy)``); ``(B,)``."""
    xy = np.asarray(next_obs, np.float64).reshape(len(next_obs), -1)[:, :2]
    out: np.ndarray = np.exp(-np.linalg.norm(xy - np.asarray(MAZE_GOAL), axis=-1))
    return out


class ShiftingMaze(gym.Env):
    """AIRL's shifting maze on Gymnasium-Robotics' ``PointMaze``: observation ``(x, y, vx, vy)``, action the point's
    force in ``[-1, 1]^2`` (repeated ``frame_skip`` times), reward ``exp(-|xy - goal|)`` of the state reached.

    Args:
        gap: ``left`` (the source maze) or ``right`` (the target maze): where the wall's gap is (:data:`MAZE_MAPS`).
        render_mode: passed to ``PointMaze`` (``rgb_array`` for videos).
        frame_skip: MuJoCo steps per action.
        start_noise: half-width of the start's uniform jitter.
    """

    metadata = {"render_modes": ["human", "rgb_array", "depth_array"], "render_fps": 33}

    def __init__(self, gap: str = "left", render_mode: str | None = None, frame_skip: int = MAZE_FRAME_SKIP,
                 start_noise: float = MAZE_START_NOISE) -> None:
        if gap not in MAZE_MAPS:
            raise InputError(f"unknown gap side '{gap}' (expected one of {', '.join(MAZE_MAPS)})", field="gap")
        if frame_skip < 1 or not 0.0 <= start_noise < 0.5:
            raise InputError(f"needs frame_skip >= 1 and start_noise in [0, 0.5), got {frame_skip}, {start_noise}",
                             field="frame_skip")
        point_maze = _import_point_maze()
        self.gap, self.frame_skip, self.start_noise = gap, frame_skip, start_noise
        self.maze_map = [list(row) for row in MAZE_MAPS[gap]]
        self.inner = point_maze(maze_map=self.maze_map, render_mode=render_mode, reward_type="dense",
                                continuing_task=True, reset_target=False)
        self.inner.position_noise_range = 0.0  # fixed goal; the start's jitter is applied in reset()
        self.goal = np.asarray(MAZE_GOAL, np.float64)
        self.render_mode = render_mode
        self.action_space = self.inner.action_space
        self.observation_space = gym.spaces.Box(-np.inf, np.inf, shape=(4,), dtype=np.float64)

    def _obs(self) -> np.ndarray:
        data = self.inner.point_env.data
        return np.concatenate([data.qpos[:2], data.qvel[:2]]).astype(np.float64)

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None
              ) -> tuple[np.ndarray, dict[str, Any]]:
        super().reset(seed=seed)
        self.inner.reset(seed=seed)
        point = self.inner.point_env
        qpos, qvel = point.data.qpos.copy(), point.data.qvel.copy()
        qpos[:2] = np.asarray(MAZE_START) + self.np_random.uniform(-self.start_noise, self.start_noise, 2)
        point.set_state(qpos, qvel)
        return self._obs(), {"success": False}

    def step(self, action: np.ndarray) -> tuple[np.ndarray, float, bool, bool, dict[str, Any]]:
        info: dict[str, Any] = {}
        for _ in range(self.frame_skip):
            _, _, _, _, info = self.inner.step(np.asarray(action, np.float64))
        obs = self._obs()
        reward = float(maze_true_reward(obs[None], np.asarray(action)[None], obs[None])[0])
        return obs, reward, False, False, {"success": bool(info.get("success", False))}

    @property
    def data(self) -> Any:
        """The point's MuJoCo data (``qpos``/``qvel``: its x, y and their velocities), as MuJoCo environments have."""
        return self.inner.point_env.data

    def set_state(self, qpos: np.ndarray, qvel: np.ndarray) -> None:
        """Set the point's position and velocity, as MuJoCo environments do (checkpoints restore it so)."""
        if not hasattr(self.inner, "goal"):  # never reset (restored into a fresh environment): PointMaze sets its
            self.inner.reset()  # goal there; its random state is not used by a step (fixed goal, no target resets)
        self.inner.point_env.set_state(qpos, qvel)

    def is_free(self, xy: np.ndarray) -> bool:
        """Whether the cell holding the point ``xy`` is free (not a wall)."""
        row, col = self.inner.maze.cell_xy_to_rowcol(np.asarray(xy, np.float64))
        return bool(self.maze_map[int(row)][int(col)] != 1)

    def render(self) -> Any:
        return self.inner.render()

    def close(self) -> None:
        self.inner.close()


def maze_waypoint_policy(gap: str = "left") -> Callable[[np.ndarray], np.ndarray]:
    """A scripted controller for the shifting maze: a damped pull towards waypoints through the wall's gap (on
    ``gap``'s side), then to the goal. Not a learner's expert: a reference for tests and a sanity check of the
    maze (it reaches the goal in about 40 of the 100 steps)."""
    side = {"left": -1.0, "right": 1.0}[gap]
    waypoints = [np.array([side, -1.0]), np.array([side, 1.0]), np.asarray(MAZE_GOAL)]

    def act(obs: np.ndarray) -> np.ndarray:
        xy, vel = np.asarray(obs[:2], np.float64), np.asarray(obs[2:4], np.float64)
        # the first waypoint not yet passed (by height: below the wall's row, go to the gap's side first)
        k = 0 if xy[1] < -0.7 and abs(xy[0] - side) > 0.3 else (1 if xy[1] < 0.7 else 2)
        out: np.ndarray = np.clip(2.0 * (waypoints[k] - xy) - 0.3 * vel, -1.0, 1.0)
        return out

    return act


def _scale_fromto(geom: ET.Element, scale: float) -> None:
    values = [float(v) for v in geom.get("fromto", "").split()]
    if len(values) == 6:
        start, end = np.asarray(values[:3]), np.asarray(values[3:])
        geom.set("fromto", " ".join(f"{v:.6g}" for v in [*start, *(start + scale * (end - start))]))


def disabled_ant_xml(scale: float = ANT_LEG_SCALE, legs: tuple[str, ...] = ANT_FRONT_LEGS) -> str:
    """MuJoCo's Ant model (gymnasium's ``ant.xml``) with ``legs`` shrunk to ``scale`` of their length below the hip:
    every capsule and child body of the leg's thigh body (``aux_*``) is scaled towards the hip joint. Returns the
    XML text."""
    if not 0.0 < scale <= 1.0:
        raise InputError(f"must be in (0, 1], got {scale}", field="scale")
    import gymnasium.envs.mujoco as mj

    tree = ET.parse(Path(mj.__file__).parent / "assets" / "ant.xml")  # noqa: S314 (gymnasium's own file)
    bodies = {b.get("name"): b for b in tree.iter("body")}
    for leg in legs:
        if leg not in bodies:
            raise InputError(f"the Ant has no body '{leg}'", field="legs")
        thigh = bodies[leg].find("body")
        assert thigh is not None
        for geom in thigh.iter("geom"):
            _scale_fromto(geom, scale)
        for child in thigh.iter("body"):
            if child is not thigh:
                pos = np.asarray([float(v) for v in child.get("pos", "0 0 0").split()])
                child.set("pos", " ".join(f"{v:.6g}" for v in scale * pos))
    return ET.tostring(tree.getroot(), encoding="unicode")


def make_disabled_ant(scale: float = ANT_LEG_SCALE, **kwargs: Any) -> gym.Env:
    """Ant-v5 on :func:`disabled_ant_xml`'s model (written to a temporary file, read once by MuJoCo and removed);
    ``kwargs`` go to Ant-v5."""
    from gymnasium.envs.mujoco.ant_v5 import AntEnv

    with tempfile.TemporaryDirectory(prefix="mbirl-ant-") as tmp:
        path = Path(tmp) / "disabled_ant.xml"
        path.write_text(disabled_ant_xml(scale))
        env: gym.Env = AntEnv(xml_file=str(path), **kwargs)
    return env


TRANSFER_ENVS: dict[str, dict[str, Any]] = {
    "ShiftingMazeLeft-v0": {"entry_point": "mbirl.envs.transfer:ShiftingMaze", "kwargs": {"gap": "left"},
                            "max_episode_steps": MAZE_EPISODE_STEPS},
    "ShiftingMazeRight-v0": {"entry_point": "mbirl.envs.transfer:ShiftingMaze", "kwargs": {"gap": "right"},
                             "max_episode_steps": MAZE_EPISODE_STEPS},
    "TransferAnt-v5": {"entry_point": "gymnasium.envs.mujoco.ant_v5:AntEnv",
                       "kwargs": {"include_cfrc_ext_in_observation": False}, "max_episode_steps": 1000},
    "DisabledAnt-v5": {"entry_point": "mbirl.envs.transfer:make_disabled_ant",
                       "kwargs": {"include_cfrc_ext_in_observation": False}, "max_episode_steps": 1000},
}
"""The environments :func:`register_transfer_envs` registers: id -> ``gymnasium.register`` keyword arguments."""


def register_transfer_envs() -> None:
    """Register :data:`TRANSFER_ENVS` with gymnasium (idempotent; importing :mod:`mbirl.experts.rollout` does it)."""
    for env_id, spec in TRANSFER_ENVS.items():
        if env_id not in gym.registry:
            gym.register(id=env_id, **spec)
