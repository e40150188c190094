"""Learned keypoint dynamics: interface, learning a known system, ensembles, and the MBIRL learner on top of it."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from mbirl.algorithms import MBIRL, DemoBatch
from mbirl.algorithms.mbirl import MBIRLConfig
from mbirl.costs import KeypointCost, make_cost
from mbirl.dynamics import KeypointDynamics, KeypointMLPDynamics
from mbirl.dynamics.keypoint_mlp import DynamicsTrainConfig, KeypointMLPConfig, dynamics_errors, fit_keypoint_dynamics
from mbirl.errors import InputError
from mbirl.planning.gradient_mpc import GradientMode, optimize_actions

J, K = 3, 2


def _toy_system(n: int, T: int, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """q_{t+1} = q_t + u_t; keypoints z = 10 * [sin(q0 + q1), q1, cos(q2) ...]: smooth, nonlinear, known."""
    rng = np.random.default_rng(seed)
    q = np.empty((n, T + 1, J))
    q[:, 0] = rng.normal(0, 0.3, (n, J))
    u = rng.normal(0, 0.05, (n, T, J)) + rng.normal(0, 0.03, (n, 1, J))
    for t in range(T):
        q[:, t + 1] = q[:, t] + u[:, t]
    z = 10.0 * np.stack([np.sin(q[..., 0] + q[..., 1]), q[..., 1], np.cos(q[..., 2]),
                         q[..., 0] * q[..., 2], np.sin(q[..., 2]), q[..., 0]], axis=-1).reshape(n, T + 1, K, 3)
    return q.astype(np.float32), z.astype(np.float32), u.astype(np.float32)


@pytest.fixture(scope="module")
def trained():
    torch.manual_seed(0)
    q, z, u = _toy_system(300, 6, seed=0)
    model = KeypointMLPDynamics(J, K, KeypointMLPConfig(hidden=64, layers=2), seed=0)
    fit_keypoint_dynamics(model, q, z, u, DynamicsTrainConfig(steps=400, batch_size=32, lr=3e-3),
                          generator=torch.Generator().manual_seed(0))
    return model


def test_interface_shapes_and_start_keypoints():
    model = KeypointMLPDynamics(J, K, KeypointMLPConfig(hidden=16, layers=1))
    assert isinstance(model, KeypointDynamics)
    q0, u = torch.zeros(4, J), torch.zeros(4, 5, J)
    q, z = model.rollout(q0, u)
    assert q.shape == (4, 6, J) and z.shape == (4, 6, K, 3)
    z0 = torch.arange(4 * K * 3, dtype=torch.float32).reshape(4, K, 3)
    _, z = model.rollout(q0, u, z0)
    torch.testing.assert_close(z[:, 0], z0)
    with pytest.raises(InputError, match="invalid model sizes"):
        KeypointMLPConfig(ensemble=0)
    with pytest.raises(InputError, match="invalid model sizes"):
        KeypointMLPDynamics(0, K)


def test_learns_a_known_system_open_loop(trained):
    q, z, u = _toy_system(60, 6, seed=1)  # held out
    err = dynamics_errors(trained, q, z, u, horizon=6)
    scale = float(np.linalg.norm(z[:, -1] - z[:, 0], axis=-1).mean())  # how far the keypoints move
    assert err["one_step"] < 0.05 * scale, err
    assert err["open_loop"] < 0.25 * scale, (err, scale)
    assert err["readout"] < 0.5, err


def test_rollout_is_twice_differentiable_in_the_actions(trained):
    q0 = torch.zeros(1, J)
    u = torch.full((1, 3, J), 0.02, requires_grad=True)
    _, z = trained.rollout(q0, u)
    (g,) = torch.autograd.grad(z.pow(2).sum(), u, create_graph=True)
    (h,) = torch.autograd.grad(g.pow(2).sum(), u)
    assert g.abs().sum() > 0 and h.abs().sum() > 0  # SiLU: second derivatives are not zero


def test_ensemble_members_differ_and_state_round_trips():
    model = KeypointMLPDynamics(J, K, KeypointMLPConfig(hidden=16, layers=1, ensemble=3), seed=2)
    q, z, u = torch.zeros(2, J), torch.ones(2, K * 3), torch.full((2, J), 0.1)
    # untrained members differ in their last layer only through initialisation; make them differ visibly
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    qm, zm = model.step_members(q, z, u)
    assert qm.shape == (3, 2, J) and zm.shape == (3, 2, K * 3)
    assert not torch.allclose(zm[0], zm[1])
    torch.testing.assert_close(model.step(q, z, u)[1], zm.mean(0))
    clone = KeypointMLPDynamics.from_description(model.describe())
    clone.load_state_dict(model.state_dict())
    torch.testing.assert_close(clone.step(q, z, u)[1], model.step(q, z, u)[1])
    with pytest.raises(InputError):
        KeypointMLPDynamics.from_description({"kind": "other"})


def test_saved_model_loads_back_and_bad_model_files_are_input_errors(tmp_path):
    from mbirl.reporting.checkpoint import save_checkpoint

    model = KeypointMLPDynamics(J, K, KeypointMLPConfig(hidden=8, layers=1, ensemble=2), seed=3)
    model.save(tmp_path / "run")
    loaded = KeypointMLPDynamics.load(tmp_path / "run")
    assert not loaded.training and loaded.config == model.config
    q, z, u = torch.zeros(2, J), torch.ones(2, K * 3), torch.full((2, J), 0.1)
    torch.testing.assert_close(loaded.step(q, z, u), model.step(q, z, u), rtol=0, atol=0)
    with pytest.raises(InputError, match="no trained dynamics model"):
        KeypointMLPDynamics.load(tmp_path / "empty")
    save_checkpoint(tmp_path / "other" / "model", {"model": model.state_dict(), "description": {"kind": "other"}})
    with pytest.raises(InputError, match="not a keypoint MLP"):
        KeypointMLPDynamics.load(tmp_path / "other")
    save_checkpoint(tmp_path / "sizes" / "model", {"model": model.state_dict(),
                                                   "description": {**model.describe(), "hidden": 0}})
    with pytest.raises(InputError, match="invalid description"):
        KeypointMLPDynamics.load(tmp_path / "sizes")
    save_checkpoint(tmp_path / "weights" / "model", {"model": model.state_dict(),
                                                     "description": {**model.describe(), "hidden": 16}})
    with pytest.raises(InputError, match="inconsistent dynamics file"):
        KeypointMLPDynamics.load(tmp_path / "weights")
    save_checkpoint(tmp_path / "nodesc" / "model", {"model": model.state_dict()})
    with pytest.raises(InputError, match="inconsistent dynamics file"):
        KeypointMLPDynamics.load(tmp_path / "nodesc")


def test_joint_limits_are_applied():
    model = KeypointMLPDynamics(J, K, KeypointMLPConfig(hidden=8, layers=1), lower=torch.full((J,), -0.1),
                                upper=torch.full((J,), 0.1))
    q, _ = model.rollout(torch.zeros(1, J), torch.full((1, 4, J), 0.5))
    assert q.max() <= 0.1 + 1e-6


def test_mbirl_learner_and_planner_run_unchanged_on_the_learned_model(trained):
    q, z, _ = _toy_system(5, 6, seed=3)
    demos = DemoBatch(q0=torch.as_tensor(q[:, 0]), z=torch.as_tensor(z).flatten(-2))
    cost = make_cost("weighted", horizon=7, dim=K * 3)
    learner = MBIRL(cost, trained, demos.select(slice(0, 3)), demos.select(slice(3, 5)),
                    MBIRLConfig(inner_lr=1e-2))
    before = learner.evaluate(learner.test).irl_loss.mean()
    weights0 = cost.weights.detach().clone()
    for _ in range(5):
        loss = learner.outer_iteration()
    assert np.isfinite(loss) and not torch.allclose(cost.weights, weights0)
    assert np.isfinite(float(before))
    u, _ = optimize_actions(trained, cost, demos.q0, demos.goal, 7, grad_mode=GradientMode.NONE,
                            **MBIRLConfig().inner_kwargs())
    assert u.shape == (5, 6, J) and torch.isfinite(u).all()


def test_bilevel_gradient_through_the_learned_model_matches_finite_differences():
    torch.manual_seed(0)
    model = KeypointMLPDynamics(J, K, KeypointMLPConfig(hidden=8, layers=2), seed=1).double()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.3)
    q0 = torch.randn(2, J, dtype=torch.float64) * 0.2
    z_demo = torch.randn(2, 4, K * 3, dtype=torch.float64)
    w = torch.full((K * 3,), 0.3, dtype=torch.float64, requires_grad=True)

    class Weighted(KeypointCost):  # a weighted cost whose weights are a plain (differentiable) tensor
        def __init__(self, weights: torch.Tensor) -> None:
            super().__init__(K * 3)
            self.w = weights

        def forward(self, z: torch.Tensor, goal: torch.Tensor) -> torch.Tensor:
            return ((z - goal.unsqueeze(1)).pow(2) * self.w).sum(-1).mean(-1)

    def outer(weights: torch.Tensor) -> torch.Tensor:
        cost = Weighted(weights)
        u, _ = optimize_actions(model, cost, q0, z_demo[:, -1], 4, n_steps=2, lr=0.05, optimizer="sgd")
        _, z = model.rollout(q0, u)
        return (z.flatten(-2) - z_demo).pow(2).sum(1).mean()

    (grad,) = torch.autograd.grad(outer(w), w)
    eps = 1e-6
    fd = torch.stack([(outer(w.detach() + eps * e) - outer(w.detach() - eps * e)) / (2 * eps)
                      for e in torch.eye(K * 3, dtype=torch.float64)])
    torch.testing.assert_close(grad, fd, atol=1e-6, rtol=1e-5)
