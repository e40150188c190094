"""MAIRL's imagined rollouts (policy updates through the learned model from replayed start states), the forward-
model ensemble and the termination rules they use."""

from __future__ import annotations

import math

import gymnasium as gym
import numpy as np
import pytest
import torch

from mbirl.algorithms.mairl import MAIRLConfig, build_mairl, imagined_rollout_loss
from mbirl.dynamics.ensemble import ModelEnsemble
from mbirl.dynamics.termination import TERMINATIONS, termination_fn
from mbirl.errors import InputError
from mbirl.experts.demos import demo_stats
from test_mairl import A, LinearModel, _policy, _reward


@pytest.mark.parametrize("env_id", ["CartPole-v1", "InvertedPendulum-v5", "Hopper-v5"])
def test_termination_rules_agree_with_the_environment(env_id):
    env, rule = gym.make(env_id), TERMINATIONS[env_id]
    env.action_space.seed(0)
    ends = steps = 0
    for episode in range(8):
        env.reset(seed=episode)
        for _ in range(200):
            obs, _, terminated, truncated, _ = env.step(env.action_space.sample())
            assert bool(rule(torch.as_tensor(np.asarray(obs, np.float32))[None])[0]) == terminated
            steps, ends = steps + 1, ends + terminated
            if terminated or truncated:
                break
    assert ends >= 6 and steps > ends  # random actions end most episodes: both outcomes were checked


def test_unknown_tasks_never_terminate_and_say_so():
    rule, known = termination_fn("Pendulum-v1")
    assert known and not rule(torch.full((3, 3), 1e6)).any()
    assert termination_fn("SomeUserEnv-v0")[1] is False


def _ensemble(size: int = 3) -> ModelEnsemble:
    torch.manual_seed(0)
    ens = ModelEnsemble("mlp", size, obs_dim=2, act_dim=1, hidden=16)
    rng = np.random.default_rng(0)
    obs = rng.normal(size=(64, 2))
    ens.set_normalizer(obs, obs + 0.1 * rng.normal(size=(64, 2)), np.ones(1))
    return ens


def test_ensemble_samples_members_and_measures_their_disagreement():
    ens = _ensemble()
    obs, act = torch.randn(200, 2), torch.randn(200, 1)
    preds = ens.predictions(obs, act)
    assert preds.shape == (3, 200, 2)
    torch.testing.assert_close(ens(obs, act), preds.mean(0))
    chosen, u = ens.sample(obs, act, torch.Generator().manual_seed(0))
    member = (chosen[None] == preds).all(-1).float().argmax(0)  # which member each row came from
    assert ((chosen[None] == preds).all(-1).any(0)).all() and len(set(member.tolist())) == 3
    torch.testing.assert_close(u, (preds.std(0) / ens.obs_std).mean(-1))
    assert (u > 0).all()
    for m in ens.members[1:]:  # identical members agree exactly
        m.load_state_dict(ens.members[0].state_dict())
    assert float(ens.sample(obs, act, torch.Generator().manual_seed(0))[1].abs().max()) == 0.0


def test_ensemble_loss_trains_every_member():
    ens = _ensemble()
    obs, act = torch.randn(32, 2), torch.randn(32, 1)
    loss = ens.loss(obs, act, obs + 0.1)
    torch.testing.assert_close(loss, sum(m.loss(obs, act, obs + 0.1) for m in ens.members))
    loss.backward()
    assert all(p.grad is not None and float(p.grad.abs().sum()) > 0 for p in ens.parameters())


def _imagined(policy, model, s0, **kw):
    kw = {"horizon": 5, "gamma": 0.9, "alpha": 0.5, "terminal_fn": lambda s: torch.zeros(len(s), dtype=torch.bool),
          **kw}
    return imagined_rollout_loss(policy, model, _reward, torch.as_tensor(s0), generator=torch.Generator()
                                 .manual_seed(1), **kw)


def test_imagined_loss_is_the_discounted_model_rollout_and_its_gradient_matches_finite_differences():
    policy, model = _policy(), LinearModel(A)
    s0 = np.array([[1.0, -0.5], [0.3, 0.8], [-1.2, 0.1]])
    res = _imagined(policy, model, s0)
    # recompute by hand with the same noise: the model is the only world
    gen, s, total = torch.Generator().manual_seed(1), torch.as_tensor(s0), 0.0
    for t in range(5):
        a, log_pi = policy.sample(s, gen)
        s_next = model(s, a)
        total = total - 0.9**t * float((_reward(s, a, s_next, None) - 0.5 * log_pi).sum().detach()) / 3
        s = s_next
    assert math.isclose(float(res.loss.detach()), total, rel_tol=1e-9) and res.mean_length == 5
    p = next(policy.parameters())
    g = torch.autograd.grad(res.loss, p)[0].view(-1)
    eps, i = 1e-6, 3
    flat = p.data.view(-1)
    old = float(flat[i])
    flat[i] = old + eps
    up = float(_imagined(policy, model, s0).loss.detach())
    flat[i] = old - eps
    down = float(_imagined(policy, model, s0).loss.detach())
    flat[i] = old
    assert math.isclose(float(g[i]), (up - down) / (2 * eps), rel_tol=1e-5, abs_tol=1e-8)


def test_imagined_rollouts_stop_at_termination_and_at_high_disagreement():
    policy, s0 = _policy(), np.array([[1.0, -0.5], [0.3, 0.8]])
    first_ends = _imagined(policy, LinearModel(A), s0, terminal_fn=lambda s: torch.ones(len(s), dtype=torch.bool))
    assert first_ends.mean_length == 1
    full = _imagined(policy, LinearModel(A), s0, horizon=1)
    assert math.isclose(float(first_ends.loss.detach()), float(full.loss.detach()), rel_tol=1e-9)
    ens = _ensemble().double()
    s0f = np.random.default_rng(0).normal(size=(50, 2))
    free = _imagined(policy, ens, s0f, horizon=4)
    cut = _imagined(policy, ens, s0f, horizon=4, max_disagreement=free.mean_disagreement)
    assert free.mean_length == 4 and 1 <= cut.mean_length < 4
    penalised = _imagined(policy, ens, s0f, horizon=4, penalty=10.0)
    assert math.isclose(penalised.mean_reward, free.mean_reward - 10.0 * free.mean_disagreement, rel_tol=1e-6)


@pytest.mark.parametrize(("kw", "field"), [({"model_penalty": 1.0}, "ensemble_size"),
                                           ({"max_disagreement": 2.0}, "ensemble_size"),
                                           ({"real_update": False}, "policy_utd"),
                                           ({"policy_utd": -1.0}, "policy_utd"),
                                           ({"policy_utd": math.inf}, "policy_utd"),
                                           ({"demo_starts": 1.5}, "demo_starts"),
                                           ({"ensemble_size": 0}, "ensemble_size"),
                                           ({"imagine_horizon": 0}, "imagine_horizon"),
                                           ({"start_window": -1}, "start_window"),
                                           ({"disc_half_life": -5}, "disc_half_life"),
                                           ({"max_disagreement": math.inf}, "max_disagreement")])
def test_imagined_options_are_validated(kw, field):
    with pytest.raises(InputError) as err:
        MAIRLConfig(**kw)
    assert err.value.field == field


def test_trainer_takes_policy_utd_imagined_updates_per_env_step():
    demos = demo_stats("data/demos/Pendulum-v1.npz")
    cfg = MAIRLConfig(warmup_steps=50, n_rollouts=2, horizon=3, batch_size=16, model_steps=1, model_pretrain_steps=1,
                      policy_utd=0.25, imagine_horizon=2, imagine_batch=8, ensemble_size=2, demo_starts=0.5)
    trainer = build_mairl(cfg, demos, seed=0)
    assert isinstance(trainer.model, ModelEnsemble) and trainer.model.size == 2
    counts = [trainer.iteration_step().scalars["charts/imagined_updates"] for _ in range(6)]
    # 6 env steps per iteration at 0.25 updates per step: 1.5 per iteration, the fraction carried over
    assert counts == [1, 2, 1, 2, 1, 2]
    assert trainer.describe()["policy_updates_per_env_step"] == pytest.approx(1 / 6 + 0.25)
    starts = trainer.start_states(8)
    demo_rows = {tuple(r) for r in demos.obs.tolist()}
    assert sum(tuple(r) in demo_rows for r in starts.tolist()) == 4


def test_discriminator_agent_batches_weight_recent_transitions_by_half_life():
    demos = demo_stats("data/demos/Pendulum-v1.npz")
    cfg = MAIRLConfig(warmup_steps=50, n_rollouts=2, horizon=3, batch_size=4000, model_steps=0,
                      model_pretrain_steps=0, disc_steps=0, disc_half_life=20)
    trainer = build_mairl(cfg, demos, seed=0)
    for _ in range(40):
        trainer.iteration_step()  # 240 policy transitions after 50 warm-up ones
    seen = []
    original = trainer.disc.update

    def spy(opt, expert, agent, *args, **kw):
        seen.append(agent.obs.numpy())
        return original(opt, expert, agent, *args, **kw)

    trainer.disc.update = spy
    trainer.train_discriminator(1)
    newest_first = trainer.buffer.obs[trainer.buffer.recent_indices(len(trainer.buffer))]
    age = {tuple(row): k for k, row in reversed(list(enumerate(newest_first.tolist())))}
    ages = np.array([age[tuple(row)] for row in seen[0].tolist()])
    assert ages.max() < 240  # never the warm-up's random transitions
    # ages follow the geometric half-life law: median ~ half_life, a quarter of the mass beyond 2 half-lives
    assert 15 <= np.median(ages) <= 25 and 0.2 <= (ages >= 40).mean() <= 0.3
