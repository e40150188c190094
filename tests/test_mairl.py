"""MAIRL pieces: the pathwise gradient through the model-based rollout (vs float64 finite differences on a tiny
linear system), real state values, the correct Gaussian log-density, straight-through Gumbel-softmax, the replay
buffer and its transition batches, the trainer's configuration and the shared forward-model fitting loop."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest
import torch

from mbirl.algorithms.mairl import MAIRLConfig, build_mairl, model_based_rollout_loss
from mbirl.algorithms.policies import GaussianPolicy, GumbelPolicy
from mbirl.data.replay import ReplayBuffer
from mbirl.dynamics.models import MODELS, ForwardModel
from mbirl.dynamics.training import fit_forward_model
from mbirl.errors import InputError, NonFiniteError
from mbirl.types import TransitionBatch

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
    pol = GaussianPolicy(3, np.full(2, -5.0), np.full(2, 5.0), np.array([0.3, 0.7]), (16,))
    obs = torch.randn(10, 3)
    act = torch.randn(10, 2)
    mu = pol.mean(obs)
    ref = torch.distributions.Normal(mu, pol.sigma).log_prob(act).sum(-1)
    torch.testing.assert_close(pol.log_prob(obs, act), ref)


def test_gaussian_sample_is_clipped_with_a_straight_through_gradient():
    pol = GaussianPolicy(2, np.array([-1.0]), np.array([1.0]), np.array([5.0]), (16,))
    obs = torch.randn(64, 2)
    a, _ = pol.sample(obs, torch.Generator().manual_seed(0))
    assert float(a.detach().abs().max()) <= 1.0 + 1e-6
    (g,) = torch.autograd.grad(a.sum(), [pol.net[-1].bias])
    assert float(g.abs().sum()) > 0


def test_gumbel_softmax_straight_through():
    pol = GumbelPolicy(4, 3, 1.0, (16,))
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
    assert buf.size == len(buf) == 5
    assert sorted(buf.obs[:, 0].tolist()) == [2, 3, 4, 5, 6]
    assert buf.obs[buf.recent_indices(1)[0], 0] == 6
    other = ReplayBuffer(5, 2, 1)
    other.load_state_dict(buf.state_dict())
    np.testing.assert_array_equal(other.obs[other.recent_indices(5)], buf.obs[buf.recent_indices(5)])


@pytest.mark.parametrize("chunks", [[13], [3, 4, 6], [1] * 13, [6, 7]])
def test_replay_buffer_adds_many_rows_as_one_at_a_time(chunks):
    rows = np.arange(13, dtype=np.float32)
    one, many = ReplayBuffer(5, 1, 1), ReplayBuffer(5, 1, 1)
    for r in rows:
        one.add(r[None, None], r[None, None], r[None, None] + 1, r[None] % 2)
    start = 0
    for n in chunks:
        part = rows[start:start + n]
        many.add(part[:, None], part[:, None], part[:, None] + 1, part % 2)
        start += n
    assert (many.ptr, many.size) == (one.ptr, one.size) == (13 % 5, 5)
    for name in ("obs", "act", "next_obs", "done"):
        np.testing.assert_array_equal(getattr(many, name), getattr(one, name))


def test_replay_batches_are_validated_transition_batches():
    buf = ReplayBuffer.from_arrays(np.ones((4, 3), np.float32), np.zeros((4, 2), np.float32),
                                   np.full((4, 3), 2.0, np.float32), np.array([0, 0, 0, 1], np.float32))
    b = buf.batch(np.array([3, 0]))
    assert isinstance(b, TransitionBatch) and len(b) == 2 and b.log_pi is None
    assert b.obs.shape == (2, 3) and b.act.shape == (2, 2) and b.done.tolist() == [1.0, 0.0]
    with_pi = b.with_log_pi(torch.zeros(2))
    assert with_pi.log_pi is not None and b.log_pi is None  # frozen: a new batch
    with pytest.raises(InputError, match="log_pi"):
        b.with_log_pi(torch.zeros(3))
    with pytest.raises(InputError, match="next_obs"):
        TransitionBatch(b.obs, b.act, b.next_obs[:, :2], b.done)
    with pytest.raises(InputError, match="done"):
        TransitionBatch(b.obs, b.act, b.next_obs, b.done[:, None])
    with pytest.raises(dataclasses.FrozenInstanceError):
        b.obs = b.next_obs  # type: ignore[misc]


def test_fit_forward_model_is_the_seeded_minibatch_loop():
    """The shared fitting loop draws ``batch_size`` indices per step from the given generator, exactly as the
    loops it replaced, so a seed gives the same model; a non-finite loss stops it."""
    rng = np.random.default_rng(0)
    obs = rng.normal(size=(200, 3)).astype(np.float32)
    act = rng.normal(size=(200, 1)).astype(np.float32)
    nxt = obs + 0.1 * act
    data = ReplayBuffer.from_arrays(obs, act, nxt, np.zeros(200, np.float32))

    def fitted(loop):
        torch.manual_seed(0)
        model = MODELS.make("mlp", obs_dim=3, act_dim=1)
        model.set_normalizer(obs, nxt)
        opt = torch.optim.Adam(model.parameters(), lr=1e-3)
        loop(model, opt)
        return model

    def by_hand(model, opt):
        g = np.random.default_rng(5)
        o, a, o2 = torch.as_tensor(obs), torch.as_tensor(act), torch.as_tensor(nxt)
        for _ in range(20):
            idx = torch.as_tensor(g.integers(0, len(o), size=16))
            loss = model.loss(o[idx], a[idx], o2[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()

    a = fitted(lambda m, o: fit_forward_model(m, o, data, 20, batch_size=16, rng=np.random.default_rng(5)))
    b = fitted(by_hand)
    for (name, p), q in zip(a.state_dict().items(), b.state_dict().values(), strict=True):
        torch.testing.assert_close(p, q, rtol=0, atol=0, msg=name)
    assert np.isnan(fit_forward_model(a, torch.optim.Adam(a.parameters()), data, 0, batch_size=4,
                                      rng=np.random.default_rng(0)))
    bad = ReplayBuffer.from_arrays(obs, act, np.full_like(nxt, np.inf), np.zeros(200, np.float32))
    with pytest.raises(NonFiniteError, match="forward-model loss is not finite at iteration 7"):
        fit_forward_model(a, torch.optim.Adam(a.parameters()), bad, 1, batch_size=4, rng=np.random.default_rng(0),
                          iteration=7)


@pytest.mark.parametrize(("kw", "field"), [({"dynamics": "lstm"}, "dynamics"), ({"variant": "gail"}, "variant"),
                                           ({"horizon": 0}, "horizon"), ({"lr_model": float("nan")}, "lr_model"),
                                           ({"ema_rate": 0.0}, "ema_rate"), ({"gamma": 1.5}, "gamma"),
                                           ({"policy_hidden": (8, 0)}, "policy_hidden"),
                                           ({"variant": "mgail", "state_only": True}, "state_only"),
                                           ({"bc_steps": -1}, "bc_steps"), ({"bc_weight": float("nan")}, "bc_weight")])
def test_trainer_config_is_validated_on_construction(kw, field):
    with pytest.raises(InputError, match=f"field '{field}'"):
        MAIRLConfig(**kw)


def test_build_mairl_gives_the_configured_components():
    from mbirl.experts.demos import demo_stats
    from mbirl.rewards import AIRLDiscriminator, GAILDiscriminator

    demos = demo_stats("data/demos/CartPole-v1.npz")
    t = build_mairl(MAIRLConfig(variant="mgail", dynamics="gru", n_rollouts=2, policy_hidden=(7,)), demos, seed=0)
    assert isinstance(t.policy, GumbelPolicy) and t.policy.net[0].out_features == 7
    assert t.model.kind == "gru" and isinstance(t.disc, GAILDiscriminator) and len(t.envs) == 2
    assert t.expert_act.shape == (len(demos.obs), 2) and set(np.unique(t.expert_act)) == {0.0, 1.0}
    pend = demo_stats("data/demos/Pendulum-v1.npz")
    t = build_mairl(MAIRLConfig(state_only=True, disc_hidden=(9,)), pend, seed=0)
    assert isinstance(t.policy, GaussianPolicy) and isinstance(t.disc, AIRLDiscriminator) and t.disc.state_only
    assert t.disc.g_net[0].in_features == 3 and t.disc.g_net[0].out_features == 9
    # the same seed gives the same initial networks
    again = build_mairl(MAIRLConfig(state_only=True, disc_hidden=(9,)), pend, seed=0)
    for a, b in ((t.policy, again.policy), (t.model, again.model), (t.disc, again.disc)):
        for p, q in zip(a.state_dict().values(), b.state_dict().values(), strict=True):
            torch.testing.assert_close(p, q, rtol=0, atol=0)


def test_behaviour_cloning_start_and_demonstration_term():
    """``bc_steps``: the warm-up ends with a policy cloned from the demonstrations (its deterministic actions on the
    demo states ~5x closer to the expert's than an uncloned policy's), without an environment step more; ``bc_weight``
    adds the demonstrations' likelihood to a policy update (a zero rollout loss then still moves the policy toward
    them)."""
    from mbirl.experts.demos import demo_stats

    pend = demo_stats("data/demos/Pendulum-v1.npz")
    obs = torch.as_tensor(pend.obs)

    def trained(**kw):
        t = build_mairl(MAIRLConfig(warmup_steps=100, model_pretrain_steps=0, batch_size=256, **kw), pend, seed=0)
        t.warmup()
        with torch.no_grad():
            error = (t.policy.act(obs) - torch.as_tensor(t.expert_act)).abs().mean().item()
        return t, error

    plain, before = trained()
    cloned, after = trained(bc_steps=300)
    assert after < 0.3 * before and cloned.env_steps == plain.env_steps == 100
    assert np.isnan(plain.bc_pretrain_nll) and cloned.bc_pretrain_nll < 1.0
    act = torch.as_tensor(plain.expert_act)
    change = {}
    for weight in (0.0, 1.0):
        t, _ = trained(bc_weight=weight)
        with torch.no_grad():
            nll = -t.policy.log_prob(obs, act).mean().item()
        for _ in range(20):
            t._policy_step(torch.zeros((), requires_grad=True), obs[:8])
        with torch.no_grad():
            change[weight] = -t.policy.log_prob(obs, act).mean().item() - nll
    assert change[1.0] < -0.1 and abs(change[0.0]) < 0.5 * abs(change[1.0]), change


def test_bad_trainer_options(tmp_path):
    from mbirl.experiments.mairl_run import MAIRLRunConfig, build_trainer

    demos = "data/demos/Pendulum-v1.npz"
    with pytest.raises(InputError, match="dynamics"):
        build_trainer(MAIRLRunConfig(demos=demos, trainer=MAIRLConfig(dynamics="lstm")))
    with pytest.raises(InputError, match="variant"):
        build_trainer(MAIRLRunConfig(demos=demos, trainer=MAIRLConfig(variant="gail")))
    with pytest.raises(InputError, match="env"):
        build_trainer(MAIRLRunConfig(demos=demos, env="CartPole-v1"))
    with pytest.raises(InputError, match="not found"):
        build_trainer(MAIRLRunConfig(demos=str(tmp_path / "missing.npz")))
    with pytest.raises(InputError, match="warmup_steps"):
        MAIRLRunConfig(demos=demos, env_steps=1000)
