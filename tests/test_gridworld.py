"""The mud grid world: a valid gymnasium environment whose true-reward function is the one it pays."""

from __future__ import annotations

import json

import gymnasium as gym
import numpy as np
import pytest
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


def test_tabular_model_is_the_environment_and_value_iteration_is_optimal():
    """The table reproduces every (cell, move) of MudGrid.step; value iteration's Q is the discounted return of
    following its own greedy policy, which reaches the goal from every start and goes round the mud."""
    from mbirl.envs.gridworld import GOAL, mud_grid_model, optimal_actions, value_iteration

    model = mud_grid_model()
    env = MudGrid()
    for cell in range(GRID_SIZE**2):
        for a in range(4):
            env.state = np.array([cell % GRID_SIZE, cell // GRID_SIZE])
            nxt, *_ = env.step(a)
            assert nxt.argmax() == model.next_state[cell, a]
    assert model.terminal.sum() == 1 and model.terminal[GOAL[1] * GRID_SIZE + GOAL[0]]
    eye = np.eye(GRID_SIZE**2, dtype=np.float32)
    s, a = np.repeat(np.arange(64), 4), np.tile(np.arange(4), 64)
    reward = mud_grid_true_reward(eye[s], a, eye[model.next_state[s, a]]).reshape(64, 4)
    gamma = 0.99
    q = value_iteration(model, reward, gamma)
    best = q.argmax(1)
    for start in range(64):
        if model.terminal[start]:
            continue
        cell, ret, discount, path = start, 0.0, 1.0, []
        while not model.terminal[cell]:
            path.append(cell)
            ret += discount * reward[cell, best[cell]]
            discount *= gamma
            cell = model.next_state[cell, best[cell]]
            assert len(path) < 20
        assert ret == pytest.approx(q[start].max(), abs=1e-9)
        if mud_grid_reward_map().ravel()[start] != -0.5:  # from outside the mud, never into it
            assert all(mud_grid_reward_map().ravel()[c] != -0.5 for c in path)
    mask = optimal_actions(q)
    assert mask[np.arange(64), best].all() and mask.sum() > 64  # ties exist (e.g. up or right in the open)
    with pytest.raises(ValueError):
        value_iteration(model, reward, 1.0)


def test_greedy_policy_of_a_learned_reward_against_the_experts(tmp_path, monkeypatch):
    """``mbirl reward greedy``: a reward equal to the truth (up to scale) makes the expert's policy greedy (100%
    agreement), its negation does not; the report covers every reward term of a real (tiny) MAIRL run."""
    from mbirl.algorithms.mairl import MAIRLConfig
    from mbirl.cli import main
    from mbirl.experiments.mairl_run import MAIRLRunConfig, run_mairl
    from mbirl.experiments.reward_quality import greedy_agreement
    from mbirl.rewards.learned import LearnedReward

    register_grid_envs()
    run_dir = tmp_path / "run"
    run_mairl(MAIRLRunConfig(demos="data/demos/MudGrid-v0.npz", env_steps=100, eval_every=100, eval_episodes=1,
                             trainer=MAIRLConfig(warmup_steps=50, n_rollouts=2, horizon=5, batch_size=32,
                                                 model_steps=2, model_pretrain_steps=5, state_only=True)),
              run_dir, progress=False)
    with pytest.raises(SystemExit) as exc:
        main(["reward", "greedy", str(run_dir)])
    assert exc.value.code in (0, None)
    real = json.loads((run_dir / "greedy.json").read_text())
    assert set(real["terms"]) == {"g", "f", "logit"} and real["default_term"] == "g" and real["states"] == 63
    assert all(0.0 <= t["agreement"] <= 1.0 and len(t["greedy"]) == 64 for t in real["terms"].values())
    assert real["demonstrator_optimal"] > 0.9  # the shipped PPO expert is near-optimal
    assert real["references"] == {"goal only (the mud unknown)": pytest.approx(49 / 63)}  # it walks through mud

    for scale, check in ((3.0, lambda x: x == 1.0), (-1.0, lambda x: x < 0.5)):
        monkeypatch.setattr(LearnedReward, "with_term", lambda self, term, scale=scale: (
            lambda o, a, o2, d=None: scale * mud_grid_true_reward(o, a, o2)))
        result = greedy_agreement(run_dir)
        assert all(check(t["agreement"]) for t in result["terms"].values()), (scale, result["terms"]["g"])
    with pytest.raises(SystemExit) as exc:
        main(["reward", "greedy", str(tmp_path)])
    assert exc.value.code == 2
