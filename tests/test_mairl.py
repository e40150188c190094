"""MAIRL pieces: the pathwise gradient through the model-based rollout (vs float64 finite differences on a tiny
linear system), real state values, the correct Gaussian log-density, straight-through Gumbel-softmax, the replay
buffer and exact resume."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from mbirl.algorithms.mairl import GaussianPolicy, GumbelPolicy, ReplayBuffer, model_based_rollout_loss
from mbirl.dynamics.models import ForwardModel

A = np.array([[1.0, 0.1], [-0.2, 0.9]])
B = np.array([[0.0], [0.3]])


class LinearModel(ForwardModel):
    """``s' = A_m s + B a`` (float64), a stand-in for a learned model."""

    kind = "mlp"

    def __init__(self, a_mat: np.ndarray) -> None:
        super().__init__(2, 1)
        self.a_mat = torch.as_tensor(a_mat)
        self.b_mat = torch.as_tensor(B)

    def _delta(self, obs_n, act_n):
        raise AssertionError

    def forward(self, obs, act):
        return obs @ self.a_mat.T + act @ self.b_mat.T


def _env_step_factory(states: list[np.ndarray]):
    """Real linear environment over B parallel copies (state kept in ``states[0]``)."""

    def step(actions: np.ndarray):
        s = states[0] @ A.T + np.asarray(actions, np.float64).reshape(len(states[0]), -1) @ B.T
        states[0] = s
        n = len(s)
        return s.copy(), np.zeros(n, bool), np.zeros(n, bool), np.zeros(n)

    return step


def _reward(obs, act, next_obs, done):
    return -(next_obs**2).sum(-1) - 0.1 * (act**2).sum(-1) + 0.5 * obs[:, 0]


def _policy() -> GaussianPolicy:
    torch.manual_seed(0)
    pol = GaussianPolicy(2, np.array([-50.0]), np.array([50.0]), np.array([0.3]), hidden=(8,)).double()
    with torch.no_grad():
        for p in pol.net.parameters():
            p.copy_(torch.randn_like(p) * 0.5)
    return pol


def _loss(policy: GaussianPolicy, model: ForwardModel, s0: np.ndarray, horizon: int = 5):
    states = [s0.copy()]
    gen = torch.Generator().manual_seed(123)
    return model_based_rollout_loss(policy, model, _reward, torch.as_tensor(s0), _env_step_factory(states),
                                    horizon=horizon, gamma=0.9, alpha=0.5, generator=gen)


def test_policy_gradient_matches_finite_differences_on_a_linear_system():
    policy, model = _policy(), LinearModel(A)
    s0 = np.array([[1.0, -0.5], [0.3, 0.8], [-1.2, 0.1]])
    res = _loss(policy, model, s0)
    params = list(policy.parameters())
    grads = torch.autograd.grad(res.loss, params)
    assert sum(float(g.abs().sum()) for g in grads) > 1e-3
    eps = 1e-6
    for p, g in zip(params, grads, strict=True):
        flat = p.data.view(-1)
        for i in range(flat.numel()):
            old = float(flat[i])
            flat[i] = old + eps
            up = float(_loss(policy, model, s0).loss.detach())
            flat[i] = old - eps
            down = float(_loss(policy, model, s0).loss.detach())
            flat[i] = old
            fd = (up - down) / (2 * eps)
            assert math.isclose(float(g.view(-1)[i]), fd, rel_tol=1e-5, abs_tol=1e-7), (i, float(g.view(-1)[i]), fd)


def test_state_values_are_the_environments_and_gradients_the_models():
    policy = _policy()
    s0 = np.array([[1.0, -0.5], [0.3, 0.8]])
    exact = _loss(policy, LinearModel(A), s0)
    wrong_model = LinearModel(A * 0.5)
    wrong = _loss(policy, wrong_model, s0)
    np.testing.assert_allclose(wrong.next_obs, exact.next_obs, rtol=1e-6)  # stored values are the real ones
    # so is the loss value ...
    assert math.isclose(float(wrong.loss.detach()), float(exact.loss.detach()), rel_tol=1e-6)
    g_exact = torch.autograd.grad(exact.loss, list(policy.parameters()))
    g_wrong = torch.autograd.grad(wrong.loss, list(policy.parameters()))
    assert any(not torch.allclose(a, b) for a, b in zip(g_exact, g_wrong, strict=True))  # ... not the gradient


def test_ended_episodes_stop_contributing():
    policy, model = _policy(), LinearModel(A)
    s0 = np.array([[1.0, -0.5], [0.3, 0.8]])
    calls = []

    def step(actions):
        calls.append(len(actions))
        n = len(actions)
        over = np.array([True] + [False] * (n - 1))  # the first live environment's episode ends at once
        return np.zeros((n, 2)), over.copy(), over, np.zeros(n)

    res = model_based_rollout_loss(policy, model, _reward, torch.as_tensor(s0), step, horizon=3, gamma=0.9,
                                   alpha=0.0, generator=torch.Generator().manual_seed(0))
    assert calls == [2, 1]
    assert len(res.obs) == 3 and res.done.tolist() == [1.0, 0.0, 1.0]


def test_gaussian_log_density_is_correct():
    pol = GaussianPolicy(3, np.full(2, -5.0), np.full(2, 5.0), np.array([0.3, 0.7]))
    obs = torch.randn(10, 3)
    act = torch.randn(10, 2)
    mu = pol.mean(obs)
    ref = torch.distributions.Normal(mu, pol.sigma).log_prob(act).sum(-1)
    torch.testing.assert_close(pol.log_prob(obs, act), ref)


def test_gaussian_sample_is_clipped_with_a_straight_through_gradient():
    pol = GaussianPolicy(2, np.array([-1.0]), np.array([1.0]), np.array([5.0]))
    obs = torch.randn(64, 2)
    a, _ = pol.sample(obs, torch.Generator().manual_seed(0))
    assert float(a.detach().abs().max()) <= 1.0 + 1e-6
    (g,) = torch.autograd.grad(a.sum(), [pol.net[-1].bias])
    assert float(g.abs().sum()) > 0


def test_gumbel_softmax_straight_through():
    pol = GumbelPolicy(4, 3, tau=1.0)
    obs = torch.randn(32, 4)
    a, log_pi = pol.sample(obs, torch.Generator().manual_seed(0))
    vals = a.detach()
    assert bool(((vals - vals.round()).abs() < 1e-6).all())
    torch.testing.assert_close(a.detach().sum(-1), torch.ones(32))
    weights = torch.randn(3)
    (g,) = torch.autograd.grad((a * weights).sum(), [pol.net[-1].weight])
    assert float(g.abs().sum()) > 0
    torch.testing.assert_close(log_pi, pol.log_prob(obs, a.detach()))
    assert pol.env_action(a).shape == (32,)


def test_replay_buffer_ring_and_state_round_trip():
    buf = ReplayBuffer(5, 2, 1)
    for i in range(7):
        buf.add(np.full((1, 2), i, np.float32), np.full((1, 1), i, np.float32), np.full((1, 2), i + 1, np.float32),
                np.zeros(1, np.float32))
    assert buf.size == 5
    assert sorted(buf.obs[:, 0].tolist()) == [2, 3, 4, 5, 6]
    assert buf.obs[buf.recent_indices(1)[0], 0] == 6
    other = ReplayBuffer(5, 2, 1)
    other.load_state_dict(buf.state_dict())
    np.testing.assert_array_equal(other.obs[other.recent_indices(5)], buf.obs[buf.recent_indices(5)])


def test_bad_trainer_options(tmp_path):
    from mbirl.errors import InputError
    from mbirl.experiments.mairl_run import MAIRLRunConfig, build_trainer

    demos = "data/demos/Pendulum-v1.npz"
    with pytest.raises(InputError, match="dynamics"):
        build_trainer(MAIRLRunConfig(demos=demos, dynamics="lstm"))
    with pytest.raises(InputError, match="variant"):
        build_trainer(MAIRLRunConfig(demos=demos, variant="gail"))
    with pytest.raises(InputError, match="env"):
        build_trainer(MAIRLRunConfig(demos=demos, env="CartPole-v1"))
    with pytest.raises(InputError, match="not found"):
        build_trainer(MAIRLRunConfig(demos=str(tmp_path / "missing.npz")))
