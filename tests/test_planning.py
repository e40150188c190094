"""The inner loop: batched gradient MPC, and gradients through it checked against finite differences."""

from __future__ import annotations

import pytest
import torch

from mbirl.algorithms.mbirl import DemoBatch, irl_loss
from mbirl.costs import make_cost
from mbirl.dynamics import KinematicKeypointDynamics
from mbirl.envs import default_kuka
from mbirl.planning import GradientMode, optimize_actions


@pytest.fixture(scope="module")
def dyn64() -> KinematicKeypointDynamics:
    return KinematicKeypointDynamics(default_kuka().to(torch.float64))


@pytest.fixture(scope="module")
def batch64(placing_demos) -> DemoBatch:
    return DemoBatch.from_demos(placing_demos[:2], dtype=torch.float64)


def _outer_loss(dyn, cost, batch, **inner) -> torch.Tensor:
    u, _ = optimize_actions(dyn, cost, batch.q0, batch.goal, batch.horizon, **inner)
    _, z = dyn.rollout(batch.q0, u)
    return irl_loss(z.flatten(-2), batch.z).sum()


CASES = [("weighted", "sgd", 3), ("rbf", "sgd", 2), ("timedep", "adam", 2), ("neural", "sgd", 2)]


@pytest.mark.parametrize("analytic", [True, False], ids=["jacobian", "autograd"])
@pytest.mark.parametrize("name,optimizer,steps", CASES)
def test_unrolled_gradient_matches_finite_differences(dyn64, batch64, name, optimizer, steps, analytic):
    torch.manual_seed(0)
    cost = make_cost(name, horizon=batch64.horizon, dim=batch64.z.shape[-1]).double()
    # Small steps keep the joints away from their limits, where the clipped rollout has kinks.
    inner = {"n_steps": steps, "lr": 1e-4 if optimizer == "sgd" else 1e-3, "optimizer": optimizer,
             "analytic": analytic}
    params = [p for p in cost.parameters() if p.requires_grad]
    grads = torch.autograd.grad(_outer_loss(dyn64, cost, batch64, **inner), params)
    flat = torch.cat([g.reshape(-1) for g in grads])
    assert flat.abs().max() > 0
    gen = torch.Generator().manual_seed(1)
    checked = 0
    for p, g in zip(params, grads, strict=True):
        for idx in torch.randperm(p.numel(), generator=gen)[:4].tolist():
            eps = 1e-6
            with torch.no_grad():
                orig = p.view(-1)[idx].item()
                p.view(-1)[idx] = orig + eps
                up = _outer_loss(dyn64, cost, batch64, grad_mode=GradientMode.NONE, **inner).item()
                p.view(-1)[idx] = orig - eps
                down = _outer_loss(dyn64, cost, batch64, grad_mode=GradientMode.NONE, **inner).item()
                p.view(-1)[idx] = orig
            fd = (up - down) / (2 * eps)
            assert g.view(-1)[idx].item() == pytest.approx(fd, rel=1e-4, abs=1e-5 * max(1.0, abs(fd)))
            checked += 1
    assert checked >= 4


def test_inner_step_does_not_depend_on_batch_size(placing_demos):
    dyn = KinematicKeypointDynamics(default_kuka())
    batch = DemoBatch.from_demos(placing_demos)
    cost = make_cost("timedep", horizon=batch.horizon, dim=batch.z.shape[-1])
    u_all, _ = optimize_actions(dyn, cost, batch.q0, batch.goal, batch.horizon, n_steps=3, lr=1e-3,
                                optimizer="sgd", grad_mode=GradientMode.NONE)
    for i in (0, 4):
        one = batch.select(i)
        u_one, _ = optimize_actions(dyn, cost, one.q0, one.goal, one.horizon, n_steps=3, lr=1e-3,
                                    optimizer="sgd", grad_mode=GradientMode.NONE)
        torch.testing.assert_close(u_all[i : i + 1], u_one, rtol=1e-5, atol=1e-7)


def test_more_inner_steps_lower_the_inner_cost(placing_demos):
    dyn = KinematicKeypointDynamics(default_kuka())
    batch = DemoBatch.from_demos(placing_demos[:3])
    cost = make_cost("default", horizon=batch.horizon, dim=batch.z.shape[-1])
    _, info = optimize_actions(dyn, cost, batch.q0, batch.goal, batch.horizon, n_steps=20, lr=1e-5,
                               optimizer="sgd", grad_mode=GradientMode.NONE, record=True)
    assert len(info.cost_history) == 21
    assert info.cost_history[-1] < 0.2 * info.cost_history[0]
    _, info = optimize_actions(dyn, cost, batch.q0, batch.goal, batch.horizon, n_steps=30, lr=0.02,
                               optimizer="adam", grad_mode=GradientMode.NONE, record=True)
    assert info.cost_history[-1] < 0.2 * info.cost_history[0]


def test_truncated_mode_differs_from_unrolled(dyn64, batch64):
    cost = make_cost("weighted", horizon=batch64.horizon, dim=batch64.z.shape[-1]).double()
    inner = {"n_steps": 3, "lr": 1e-3, "optimizer": "sgd"}
    full = torch.autograd.grad(_outer_loss(dyn64, cost, batch64, **inner), cost.weights)[0]
    trunc = torch.autograd.grad(_outer_loss(dyn64, cost, batch64, grad_mode=GradientMode.TRUNCATED, truncate=1,
                                            **inner), cost.weights)[0]
    assert not torch.allclose(full, trunc)
    assert torch.nn.functional.cosine_similarity(full, trunc, dim=0) > 0  # still a descent-ish direction


def test_rollout_respects_joint_limits():
    robot = default_kuka()
    dyn = KinematicKeypointDynamics(robot)
    q0 = torch.zeros(1, 7)
    q, z = dyn.rollout(q0, torch.full((1, 5, 7), 1.0))
    assert torch.all(q <= robot.upper + 1e-6) and torch.all(q >= robot.lower - 1e-6)
    torch.testing.assert_close(q[0, -1], robot.upper)
    assert z.shape == (1, 6, 2, 3)


@pytest.mark.parametrize("lr", [1e-4, 3e-2], ids=["inside-limits", "limits-active"])
def test_jacobian_fast_path_equals_autograd(dyn64, batch64, lr):
    """The analytic-Jacobian inner gradient gives the same actions and outer gradient as plain autograd
    (at a large step some joints hit their limits and the fast path must hand over to autograd)."""
    cost = make_cost("timedep", horizon=batch64.horizon, dim=batch64.z.shape[-1]).double()
    out = {}
    for analytic in (True, False):
        u, _ = optimize_actions(dyn64, cost, batch64.q0, batch64.goal, batch64.horizon, n_steps=3, lr=lr,
                                optimizer="sgd", analytic=analytic)
        _, z = dyn64.rollout(batch64.q0, u)
        (g,) = torch.autograd.grad(irl_loss(z.flatten(-2), batch64.z).sum(), cost.weights)
        out[analytic] = (u.detach(), g)
    torch.testing.assert_close(out[True][0], out[False][0], rtol=1e-9, atol=1e-10)
    torch.testing.assert_close(out[True][1], out[False][1], rtol=1e-7, atol=1e-8)
    q = dyn64.joint_rollout(batch64.q0, out[True][0])
    at_limit = bool(((q <= dyn64.robot.lower) | (q >= dyn64.robot.upper)).any())
    assert at_limit == (lr > 1e-3)


# --- converged inner solvers and the implicit gradient -------------------------------------------------------------

CONVERGED = {"n_steps": 50, "lr": 0.0, "optimizer": "gauss-newton", "tol": 1e-11, "action_weight": 0.05,
             "damping": 0.0, "cg_max_iters": 500, "cg_rtol": 1e-12}
"""Gauss-Newton to a tight tolerance in float64, with a small action term so that the solution is unique (a
7-joint arm placing two keypoints has a null space of joint motions)."""


def _trained_cost(name: str, batch: DemoBatch) -> torch.nn.Module:
    """A cost away from its initialisation (random parameters), so the gradients are not special."""
    cost = make_cost(name, horizon=batch.horizon, dim=batch.z.shape[-1]).double()
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for pname, p in cost.named_parameters():
            # Fractions of the start's offset from the goal move targets by tens of cm: keep them reachable.
            noise = (0.05 if pname == "fraction" else 0.5) * torch.randn(p.shape, generator=gen, dtype=p.dtype)
            p.mul_(noise.exp()) if bool((p > 0).all()) else p.add_(noise)  # weights stay positive
    return cost


@pytest.mark.parametrize("name", ["timedep", "path"])
def test_implicit_gradient_matches_finite_differences(dyn64, batch64, name):
    cost = _trained_cost(name, batch64)
    params = [p for p in cost.parameters() if p.requires_grad]
    loss = _outer_loss(dyn64, cost, batch64, grad_mode=GradientMode.IMPLICIT, **CONVERGED)
    grads = torch.autograd.grad(loss, params)
    scale = float(torch.cat([g.flatten() for g in grads]).abs().max())
    assert scale > 1e-3
    gen = torch.Generator().manual_seed(1)
    for p, g in zip(params, grads, strict=True):
        for idx in torch.randperm(p.numel(), generator=gen)[:1 if name == "path" else 2].tolist():
            eps = 1e-3 * max(abs(p.view(-1)[idx].item()), 1e-2)
            with torch.no_grad():
                orig = p.view(-1)[idx].item()
                p.view(-1)[idx] = orig + eps
                up = _outer_loss(dyn64, cost, batch64, grad_mode=GradientMode.NONE, **CONVERGED).item()
                p.view(-1)[idx] = orig - eps
                down = _outer_loss(dyn64, cost, batch64, grad_mode=GradientMode.NONE, **CONVERGED).item()
                p.view(-1)[idx] = orig
            fd = (up - down) / (2 * eps)
            assert g.view(-1)[idx].item() == pytest.approx(fd, rel=1e-3, abs=1e-5 * scale)


def test_implicit_gradient_equals_unrolled_gradient_at_convergence(dyn64, batch64):
    """Differentiating through every step of a converged solver and differentiating its optimality condition give
    the same gradient; a solver stopped early does not."""
    cost = _trained_cost("path", batch64)
    params = [p for p in cost.parameters() if p.requires_grad]

    def flat_grad(**inner) -> torch.Tensor:
        grads = torch.autograd.grad(_outer_loss(dyn64, cost, batch64, **inner), params)
        return torch.cat([g.flatten() for g in grads])

    implicit = flat_grad(grad_mode=GradientMode.IMPLICIT, **CONVERGED)
    unrolled = flat_grad(grad_mode=GradientMode.UNROLLED, **{**CONVERGED, "n_steps": 20, "tol": None})
    early = flat_grad(grad_mode=GradientMode.UNROLLED, **{**CONVERGED, "n_steps": 1, "tol": None})
    torch.testing.assert_close(implicit, unrolled, rtol=1e-3, atol=1e-5 * float(unrolled.abs().max()))
    assert torch.nn.functional.cosine_similarity(implicit, early, dim=0) < 0.99


def test_gauss_newton_converges_and_matches_first_order_solvers(dyn64, batch64):
    """Gauss-Newton reaches the tolerance in a few steps, at the point plain gradient descent creeps towards; its
    analytic-Jacobian path equals the generic autograd Jacobian."""
    cost = _trained_cost("path", batch64)
    u_gn, info = optimize_actions(dyn64, cost, batch64.q0, batch64.goal, batch64.horizon,
                                  grad_mode=GradientMode.NONE, record=True, **CONVERGED)
    _, fast = optimize_actions(dyn64, cost, batch64.q0, batch64.goal, batch64.horizon, grad_mode=GradientMode.NONE,
                               **{**CONVERGED, "tol": 1e-6})
    assert fast.converged and fast.steps <= 10 and fast.grad_norm < 1e-6
    assert info.grad_norm < 1e-8
    assert info.cost_history[-1] < 0.5 * info.cost_history[0]
    _, sgd = optimize_actions(dyn64, cost, batch64.q0, batch64.goal, batch64.horizon, grad_mode=GradientMode.NONE,
                              record=True, **{**CONVERGED, "optimizer": "adam", "lr": 3e-3, "n_steps": 200,
                                              "tol": None})
    assert info.cost_history[-1] <= sgd.cost_history[-1] + 1e-9
    from mbirl.planning.gradient_mpc import _kinematic_residual_jacobian, _residual_jacobian, _residuals

    u = u_gn + 0.01
    fast = _kinematic_residual_jacobian(dyn64, cost, batch64.q0, batch64.goal, u, 1e-3, 1e-2, create_graph=False)
    assert fast is not None
    generic = _residual_jacobian(lambda x: _residuals(dyn64, cost, batch64.q0, batch64.goal, x.reshape(u.shape),
                                                      1e-3, 1e-2), u.reshape(len(u), -1), create_graph=False)
    torch.testing.assert_close(fast[0], generic[0].detach())
    torch.testing.assert_close(fast[1], generic[1])


@pytest.mark.parametrize("name", ["default", "weighted", "timedep", "rbf", "neural", "path"])
def test_residuals_square_to_the_cost(name):
    torch.manual_seed(0)
    cost = make_cost(name, horizon=7, dim=6, rbf_original=name == "rbf").double()
    z, goal = 10 * torch.randn(3, 7, 6, dtype=torch.float64), torch.randn(3, 6, dtype=torch.float64)
    torch.testing.assert_close(cost.residuals(z, goal).pow(2).sum(-1), cost(z, goal))


def test_stopping_rule_and_truncation(dyn64, batch64):
    """The inner loop stops on the gradient norm; a truncated gradient after early convergence passes through the
    last steps taken, so it is not zero."""
    cost = make_cost("weighted", horizon=batch64.horizon, dim=batch64.z.shape[-1]).double()
    inner = {"n_steps": 500, "lr": 0.05, "optimizer": "adam", "tol": 1.0, "action_weight": 0.0}
    _, info = optimize_actions(dyn64, cost, batch64.q0, batch64.goal, batch64.horizon, grad_mode=GradientMode.NONE,
                               **inner)
    assert info.converged and 1 < info.steps < 500 and info.grad_norm < 1.0
    (g,) = torch.autograd.grad(_outer_loss(dyn64, cost, batch64, grad_mode=GradientMode.TRUNCATED, truncate=2,
                                           **inner), cost.weights)
    assert g.abs().max() > 0
