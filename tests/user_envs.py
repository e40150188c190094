"""A gymnasium environment defined outside the package, as a user would write one: its constructor takes no
``render_mode``. Importing this module registers it (``gymnasium.make("user_envs:PointMass-v0")``)."""

from __future__ import annotations

from typing import Any

import gymnasium as gym
import numpy as np


class PointMass(gym.Env):
    """A point on a line pushed towards the origin: observation ``(x, v)``, action a force in [-1, 1], reward
    ``-x^2 - 0.1 a^2``, 50 steps."""

    def __init__(self) -> None:
        self.observation_space = gym.spaces.Box(-10.0, 10.0, (2,), np.float32)
        self.action_space = gym.spaces.Box(-1.0, 1.0, (1,), np.float32)
        self.state = np.zeros(2, np.float32)

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None) -> tuple[np.ndarray, dict]:
        super().reset(seed=seed)
        self.state = np.array([self.np_random.uniform(-2, 2), 0.0], np.float32)
        return self.state.copy(), {}

    def step(self, action: np.ndarray) -> tuple[np.ndarray, float, bool, bool, dict]:
        a = float(np.clip(np.asarray(action).reshape(-1)[0], -1, 1))
        x, v = self.state
        v = 0.9 * v + 0.1 * a
        x = float(np.clip(x + v, -10, 10))
        self.state = np.array([x, v], np.float32)
        return self.state.copy(), -(x**2) - 0.1 * a**2, False, False, {}


if "PointMass-v0" not in gym.registry:
    gym.register("PointMass-v0", entry_point=PointMass, max_episode_steps=50)


class Walker(gym.Env):
    """A point mass like :class:`PointMass` that keeps its state under its own name (``position``): nothing a
    checkpoint of classic-control or MuJoCo environments knows how to capture."""

    def __init__(self) -> None:
        self.observation_space = gym.spaces.Box(-10.0, 10.0, (1,), np.float32)
        self.action_space = gym.spaces.Box(-1.0, 1.0, (1,), np.float32)
        self.position = 0.0

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None) -> tuple[np.ndarray, dict]:
        super().reset(seed=seed)
        self.position = float(self.np_random.uniform(-2, 2))
        return np.array([self.position], np.float32), {}

    def step(self, action: np.ndarray) -> tuple[np.ndarray, float, bool, bool, dict]:
        self.position = float(np.clip(self.position + 0.1 * float(np.asarray(action).reshape(-1)[0]), -10, 10))
        return np.array([self.position], np.float32), -self.position**2, False, False, {}


if "Walker-v0" not in gym.registry:
    gym.register("Walker-v0", entry_point=Walker, max_episode_steps=30)
