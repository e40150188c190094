"""The mud grid world: a valid gymnasium environment whose true-reward function is the one it pays."""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import torch
from gymnasium.utils.env_checker import check_env

from mbirl.dynamics.termination import TERMINATIONS
from mbirl.envs.gridworld import GRID_SIZE, MudGrid, mud_grid_reward_map, mud_grid_true_reward, register_grid_envs


def test_mud_grid_is_a_valid_environment_paying_its_reward_map():
    register_grid_envs()
    check_env(MudGrid(), skip_render_check=True)
    env = gym.make("MudGrid-v0")
    env.action_space.seed(0)
    obs, _ = env.reset(seed=3)
    rewards, seen, ended = [], set(), False
    for _ in range(400):
        nxt, r, terminated, truncated, _ = env.step(env.action_space.sample())
        assert nxt.sum() == 1.0 and nxt.shape == (GRID_SIZE**2,)
        assert r == mud_grid_true_reward(obs[None], np.zeros(1), nxt[None])[0]
        rewards.append(r)
        seen.add(int(nxt.argmax()))
        ended |= terminated
        obs = nxt
        if terminated or truncated:
            assert truncated or nxt.argmax() == GRID_SIZE**2 - 1  # only the goal ends an episode
            obs, _ = env.reset()
    assert {-0.5, -0.05} <= set(rewards) and len(seen) > 30 and ended
    rule = TERMINATIONS["MudGrid-v0"]
    eye = torch.eye(GRID_SIZE**2)
    assert rule(eye).tolist() == [False] * (GRID_SIZE**2 - 1) + [True]  # only the goal cell ends an episode
    reward_map = mud_grid_reward_map()
    assert reward_map[-1, -1] == 1.0 and (reward_map == -0.5).sum() == 16
    # starts are free cells only, and reset seeds them
    starts = {int(MudGrid().reset(seed=s)[0].argmax()) for s in range(50)}
    assert all(reward_map.ravel()[c] == -0.05 for c in starts) and len(starts) > 10
    assert MudGrid().reset(seed=7)[0].argmax() == MudGrid().reset(seed=7)[0].argmax()
    frame = MudGrid(render_mode="rgb_array")
    frame.reset(seed=0)
    assert frame.render().shape == (GRID_SIZE * 16, GRID_SIZE * 16, 3)


def test_mud_grid_true_reward_and_heatmap_grid_are_registered():
    from mbirl.experiments.reward_quality import HEATMAP_GRIDS
    from mbirl.rewards.epic import TRUE_REWARDS

    grid = HEATMAP_GRIDS["MudGrid-v0"]
    xs, ys = np.meshgrid(np.arange(GRID_SIZE), np.arange(GRID_SIZE))
    obs = grid.to_obs(xs.ravel().astype(float), ys.ravel().astype(float))
    assert (obs.argmax(-1) == np.arange(GRID_SIZE**2)).all()  # cell (x, y) is one-hot index y * 8 + x
    np.testing.assert_array_equal(TRUE_REWARDS["MudGrid-v0"](obs, np.zeros(len(obs)), obs),
                                  mud_grid_reward_map().ravel())
