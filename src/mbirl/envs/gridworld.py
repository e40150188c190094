"""A grid world with a known, spatially structured reward: the discrete task of the MAIRL paper's evaluation, where
a recovered reward can be drawn next to the true one.

``MudGrid-v0``: an 8 x 8 grid; the agent starts in a random free cell (seeded by ``reset``) and moves up, down,
left or right (a move into the border leaves it in place). Entering a cell gives that cell's reward: ``+1`` for the
goal (top-right corner, which ends the episode), ``-0.5`` for the "mud" block in the middle, ``-0.05`` elsewhere;
episodes last at most 50 steps. The observation is the one-hot cell index (64 floats): discrete states, as the
paper's grid world, for a model and discriminator that take vectors.

Why not Gymnasium's toy-text worlds: FrozenLake's reward is 1 at the goal and 0 everywhere else (nothing to recover
but the goal, and its slippery dynamics make the demonstrations noisy), and CliffWalking's is -1 per step with a
-100 cliff that sends the agent back to the start without ending the episode, which an expert never enters: the
demonstrations carry no information about it. Here the expert visibly walks around the mud, so a learned reward
that ranks mud below the rest is a recovered reward, not a memorised path.
"""

from __future__ import annotations

from typing import Any

import gymnasium as gym
import numpy as np

__all__ = ["GRID_ENVS", "GRID_SIZE", "MudGrid", "TabularModel", "mud_grid_model", "mud_grid_reward_map",
           "mud_grid_true_reward", "optimal_actions", "register_grid_envs", "value_iteration"]

GRID_SIZE = 8
GOAL = (GRID_SIZE - 1, GRID_SIZE - 1)
"""(column x, row y) of the goal; y grows upwards."""
MUD = (slice(2, 6), slice(2, 6))
"""(x, y) ranges of the mud block."""
REWARD_GOAL, REWARD_MUD, REWARD_STEP = 1.0, -0.5, -0.05
MAX_STEPS = 50
MOVES = np.array([[0, 1], [0, -1], [-1, 0], [1, 0]])
"""Action -> (dx, dy): up, down, left, right."""


def mud_grid_reward_map(size: int = GRID_SIZE) -> np.ndarray:
    """The reward of entering each cell, indexed ``[y, x]`` (row 0 at the bottom)."""
    r = np.full((size, size), REWARD_STEP)
    r[MUD[1], MUD[0]] = REWARD_MUD
    r[GOAL[1], GOAL[0]] = REWARD_GOAL
    return r


def mud_grid_true_reward(obs: np.ndarray, act: np.ndarray, next_obs: np.ndarray) -> np.ndarray:
    """The true reward of transitions of one-hot observations: the reward of the cell entered."""
    cell = np.asarray(next_obs).argmax(-1)
    out: np.ndarray = mud_grid_reward_map().ravel()[cell]
    return out


class TabularModel:
    """A deterministic tabular MDP's dynamics: ``next_state[s, a]`` and which states end an episode (terminal
    states are never left: they have no value). States are cell indices ``y * size + x``."""

    def __init__(self, next_state: np.ndarray, terminal: np.ndarray) -> None:
        self.next_state = np.asarray(next_state, np.int64)
        self.terminal = np.asarray(terminal, bool)
        self.n_states, self.n_actions = self.next_state.shape


def mud_grid_model(size: int = GRID_SIZE) -> TabularModel:
    """:class:`MudGrid`'s dynamics as a table (the same moves and border rule as :meth:`MudGrid.step`)."""
    nxt = np.zeros((size * size, len(MOVES)), np.int64)
    for y in range(size):
        for x in range(size):
            for a, move in enumerate(MOVES):
                nx, ny = np.clip(np.array([x, y]) + move, 0, size - 1)
                nxt[y * size + x, a] = ny * size + nx
    terminal = np.zeros(size * size, bool)
    terminal[GOAL[1] * size + GOAL[0]] = True
    return TabularModel(nxt, terminal)


def value_iteration(model: TabularModel, reward: np.ndarray, gamma: float, *, tol: float = 1e-10,
                    max_iters: int = 100_000) -> np.ndarray:
    """Optimal action values ``Q[s, a]`` for ``reward[s, a]`` (the reward of taking ``a`` in ``s``, the cell
    entered included) under ``model``, discount ``gamma`` < 1; terminal states are worth 0 after they are
    entered."""
    if not 0 <= gamma < 1:
        raise ValueError(f"gamma must be in [0, 1), got {gamma}")
    reward = np.asarray(reward, np.float64)
    v = np.zeros(model.n_states)
    for _ in range(max_iters):
        q = reward + gamma * np.where(model.terminal[model.next_state], 0.0, v[model.next_state])
        new = q.max(1)
        new[model.terminal] = 0.0
        if np.abs(new - v).max() < tol:
            return q
        v = new
    return q


def optimal_actions(q: np.ndarray, *, atol: float = 1e-6) -> np.ndarray:
    """``(S, A)`` mask of the actions within ``atol`` (relative to the state's value range) of each state's best:
    ties (moves into the border that stay in place, symmetric detours) are all optimal."""
    scale = np.maximum(np.abs(q).max(1, keepdims=True), 1.0)
    mask: np.ndarray = q >= q.max(1, keepdims=True) - atol * scale
    return mask


class MudGrid(gym.Env[np.ndarray, np.int64]):
    """The 8 x 8 mud grid (see the module docstring). ``state`` is the agent's cell ``(x, y)`` (named as classic
    control names its state, so expert training checkpoints and resumes it)."""

    metadata = {"render_modes": ["rgb_array"], "render_fps": 4}

    def __init__(self, render_mode: str | None = None) -> None:
        self.size = GRID_SIZE
        self.observation_space = gym.spaces.Box(0.0, 1.0, (self.size * self.size,), np.float32)
        self.action_space = gym.spaces.Discrete(4)
        self.render_mode = render_mode
        self.rewards = mud_grid_reward_map(self.size)
        self.state = np.zeros(2, np.int64)
        free = [(x, y) for y in range(self.size) for x in range(self.size)
                if self.rewards[y, x] == REWARD_STEP]
        self._starts = np.array(free)

    def _obs(self) -> np.ndarray:
        obs = np.zeros(self.size * self.size, np.float32)
        obs[self.state[1] * self.size + self.state[0]] = 1.0
        return obs

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None
              ) -> tuple[np.ndarray, dict[str, Any]]:
        super().reset(seed=seed)
        self.state = self._starts[self.np_random.integers(len(self._starts))].copy()
        return self._obs(), {}

    def step(self, action: Any) -> tuple[np.ndarray, float, bool, bool, dict[str, Any]]:
        if not self.action_space.contains(int(action)):
            raise ValueError(f"invalid action {action!r}")
        self.state = np.clip(self.state + MOVES[int(action)], 0, self.size - 1)
        reward = float(self.rewards[self.state[1], self.state[0]])
        terminated = bool(tuple(self.state) == GOAL)
        return self._obs(), reward, terminated, False, {}

    def render(self) -> np.ndarray | None:
        if self.render_mode != "rgb_array":
            return None
        cell = 16
        colors = {REWARD_STEP: (230, 230, 230), REWARD_MUD: (140, 100, 60), REWARD_GOAL: (60, 180, 75)}
        img = np.zeros((self.size * cell, self.size * cell, 3), np.uint8)
        for y in range(self.size):
            for x in range(self.size):
                row = self.size - 1 - y  # image row 0 is the top
                img[row * cell:(row + 1) * cell, x * cell:(x + 1) * cell] = colors[float(self.rewards[y, x])]
        row = self.size - 1 - int(self.state[1])
        img[row * cell + 4:(row + 1) * cell - 4, int(self.state[0]) * cell + 4:(int(self.state[0]) + 1) * cell - 4] = \
            (40, 40, 200)
        return img


GRID_ENVS: dict[str, dict[str, Any]] = {
    "MudGrid-v0": {"entry_point": "mbirl.envs.gridworld:MudGrid", "max_episode_steps": MAX_STEPS},
}
"""The grid worlds :func:`register_grid_envs` registers: id -> ``gymnasium.register`` keyword arguments."""


def register_grid_envs() -> None:
    """Register :data:`GRID_ENVS` with gymnasium (idempotent)."""
    for env_id, spec in GRID_ENVS.items():
        if env_id not in gym.registry:
            gym.register(id=env_id, **spec)
