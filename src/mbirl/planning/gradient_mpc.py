"""Gradient-based MPC over an action sequence, differentiable with respect to the cost parameters.

Inner objective of demonstration ``b``:  ``F_b(u) = c_psi(rollout(q0_b, u_b), g_b) + R(u_b)`` with the optional
action term ``R(u) = a mean_t sum_j u_{t,j}^2 + s mean_t sum_j (u_{t,j} - u_{t-1,j})^2`` (magnitude and
smoothness, fixed weights ``a``, ``s``). The batch objective is ``sum_b F_b``: summing keeps each
demonstration's step independent of the batch size.

Solvers, from ``u = 0`` unless given: ``sgd`` (``u <- u - alpha grad_u F``), ``adam`` (functional Adam), and
``gauss-newton`` (Levenberg-Marquardt over the whole action sequence: ``F_b = ||r_b(u)||^2`` with the cost's
residuals, ``u <- u - (J^T J + mu I)^{-1} J^T r``, ``mu`` adapted per demonstration). All stop after ``n_steps``
or, with ``tol > 0``, once every demonstration's inner gradient norm ``||grad_u F_b||`` is below ``tol``.

How the outer gradient reaches ``psi`` is the :class:`GradientMode`: through every inner step (``unrolled``,
``create_graph=True``), through the last ``truncate`` steps only, or by the implicit function theorem at the
solution (``implicit``, :mod:`mbirl.planning.implicit`), whose memory and time do not depend on the steps taken.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

import torch

from mbirl.costs.base import KeypointCost
from mbirl.dynamics.base import KeypointDynamics
from mbirl.dynamics.kinematic import KinematicKeypointDynamics
from mbirl.errors import InputError
from mbirl.planning.implicit import implicit_solution

__all__ = ["INNER_SOLVERS", "ActionOptInfo", "GradientMode", "action_regularizer", "inner_gradient",
           "optimize_actions"]

INNER_SOLVERS = ("sgd", "adam", "gauss-newton")
"""The inner solvers :func:`optimize_actions` knows."""


class GradientMode(StrEnum):
    """How gradients pass from the optimised actions back to the cost parameters."""

    UNROLLED = "unrolled"  # through every inner step (exact bi-level gradient of the K-step solver)
    TRUNCATED = "truncated"  # through the last ``truncate`` inner steps only
    IMPLICIT = "implicit"  # implicit function theorem at the inner solution (exact at a stationary point)
    NONE = "none"  # no gradient to the cost (evaluation, planning with a frozen cost)


@dataclass
class ActionOptInfo:
    """What the inner loop did.

    ``cost_history``: the summed inner objective before each step and after the last one (with ``record``).
    ``steps``: inner steps taken. ``grad_norm``: the largest per-demonstration ``||grad_u F_b||`` at the last
    check (measured only with ``tol > 0``; NaN otherwise). ``converged``: the stopping rule fired.
    ``stats``: the implicit backward pass's ``cg_iters`` once it has run.
    """

    cost_history: list[float] = field(default_factory=list)
    steps: int = 0
    grad_norm: float = float("nan")
    converged: bool = False
    stats: dict[str, Any] = field(default_factory=dict)


def action_regularizer(u: torch.Tensor, action_weight: float, smooth_weight: float) -> torch.Tensor:
    """``R(u)`` per demonstration ``(B,)`` for actions ``(B, T - 1, n_joints)`` (see the module docstring)."""
    out = u.new_zeros(u.shape[0])
    if action_weight:
        out = out + action_weight * u.pow(2).sum(-1).mean(-1)
    if smooth_weight and u.shape[1] > 1:
        out = out + smooth_weight * (u[:, 1:] - u[:, :-1]).pow(2).sum(-1).mean(-1)
    return out


def _regularizer_residuals(u: torch.Tensor, action_weight: float, smooth_weight: float) -> list[torch.Tensor]:
    """Residuals whose squares sum to :func:`action_regularizer`."""
    out = []
    if action_weight:
        out.append((action_weight / u.shape[1]) ** 0.5 * u.flatten(1))
    if smooth_weight and u.shape[1] > 1:
        out.append((smooth_weight / (u.shape[1] - 1)) ** 0.5 * (u[:, 1:] - u[:, :-1]).flatten(1))
    return out


def inner_gradient(dynamics: KeypointDynamics, cost: KeypointCost, q0: torch.Tensor, goal: torch.Tensor,
                   u: torch.Tensor, *, create_graph: bool, analytic: bool = True, action_weight: float = 0.0,
                   smooth_weight: float = 0.0) -> torch.Tensor:
    """``grad_u sum_b F_b(u)``, through the dynamics' analytic fast path where it has one."""
    grad = None
    if analytic:
        grad = dynamics.action_gradient(q0, u, lambda z: cost(z, goal), create_graph=create_graph)
    if grad is None:
        if not u.requires_grad:
            u = u.requires_grad_(True)
        _, z = dynamics.rollout(q0, u)
        (grad,) = torch.autograd.grad(cost(z.flatten(-2), goal).sum(), u, create_graph=create_graph)
    if action_weight or smooth_weight:
        if not u.requires_grad:
            u = u.requires_grad_(True)
        (reg,) = torch.autograd.grad(action_regularizer(u, action_weight, smooth_weight).sum(), u,
                                     create_graph=create_graph)
        grad = grad + reg
    return grad


def _objective(dynamics: KeypointDynamics, cost: KeypointCost, q0: torch.Tensor, goal: torch.Tensor,
               u: torch.Tensor, action_weight: float, smooth_weight: float) -> torch.Tensor:
    _, z = dynamics.rollout(q0, u)
    return cost(z.flatten(-2), goal) + action_regularizer(u, action_weight, smooth_weight)


def _residuals(dynamics: KeypointDynamics, cost: KeypointCost, q0: torch.Tensor, goal: torch.Tensor,
               u: torch.Tensor, action_weight: float, smooth_weight: float) -> torch.Tensor:
    _, z = dynamics.rollout(q0, u)
    r = cost.residuals(z.flatten(-2), goal)
    if r is None:
        raise InputError(f"the gauss-newton inner solver needs a least-squares cost; {type(cost).__name__} has no "
                         "residuals", field="inner_optimizer")
    return torch.cat([r, *_regularizer_residuals(u, action_weight, smooth_weight)], dim=-1)


def _residual_jacobian(fn: Callable[[torch.Tensor], torch.Tensor], u: torch.Tensor, *, create_graph: bool
                       ) -> tuple[torch.Tensor, torch.Tensor]:
    """Residuals ``(B, R)`` and their Jacobian ``(B, R, N)`` in the flattened actions (one batched backward)."""
    if not u.requires_grad:
        u = u.requires_grad_(True)
    r = fn(u)
    B, R = r.shape
    eye = torch.eye(R, dtype=r.dtype, device=r.device)[:, None, :].expand(R, B, R)
    (jac,) = torch.autograd.grad(r, u, eye, is_grads_batched=True, create_graph=create_graph)
    return r, jac.reshape(R, B, -1).transpose(0, 1)


def _kinematic_residual_jacobian(dynamics: KeypointDynamics, cost: KeypointCost, q0: torch.Tensor,
                                 goal: torch.Tensor, u: torch.Tensor, aw: float, sw: float, *, create_graph: bool
                                 ) -> tuple[torch.Tensor, torch.Tensor] | None:
    """The same as :func:`_residual_jacobian` for ground-truth kinematics, with the robot's analytic keypoint
    Jacobian: ``dz_t / du_s = J(q_t)`` for ``s < t`` while no joint limit is active (``q`` is then a cumulative sum
    of the actions), chained with the cost's residual Jacobian in the keypoints (a batched backward through the
    cost alone, not the kinematics). None where it does not apply."""
    if not isinstance(dynamics, KinematicKeypointDynamics):
        return None
    B, H, n = u.shape
    q = dynamics.joint_rollout(q0, u)
    with torch.no_grad():
        if not bool(((q > dynamics.robot.lower) & (q < dynamics.robot.upper)).all()):
            return None
    out = dynamics.robot.keypoints_and_jacobian(q)
    if out is None:
        return None
    kp, jq = out  # (B, T, k, 3), (B, T, k, 3, n)
    z = kp.flatten(-2)
    if not create_graph:
        z = z.detach()
    z_in = z if z.requires_grad else z.detach().requires_grad_(True)
    with torch.enable_grad():
        r = cost.residuals(z_in, goal)
        if r is None:
            return None
        R = r.shape[1]
        eye = torch.eye(R, dtype=r.dtype, device=r.device)[:, None, :].expand(R, B, R)
        (drdz,) = torch.autograd.grad(r, z_in, eye, is_grads_batched=True, create_graph=create_graph)  # (R,B,T,D)
    a = torch.einsum("rbtd,btdj->brtj", drdz, jq.flatten(2, 3))  # (B, R, T, n)
    # u_s moves every later state: reverse cumulative sum over t = s + 1 .. T - 1.
    jac = torch.flip(torch.cumsum(torch.flip(a[:, :, 1:], dims=(2,)), dim=2), dims=(2,)).flatten(2)
    reg = _regularizer_residuals(u, aw, sw)
    if reg:
        flat = u.reshape(B, -1)
        if not flat.requires_grad:
            flat = flat.detach().requires_grad_(True)
        with torch.enable_grad():
            rr = torch.cat(_regularizer_residuals(flat.reshape(B, H, n), aw, sw), dim=-1)
            m = rr.shape[1]
            eye = torch.eye(m, dtype=rr.dtype, device=rr.device)[:, None, :].expand(m, B, m)
            (jr,) = torch.autograd.grad(rr, flat, eye, is_grads_batched=True)  # constant: the terms are linear
        r = torch.cat([r, *reg], dim=-1)
        jac = torch.cat([jac, jr.transpose(0, 1)], dim=1)
    return r, jac


def optimize_actions(
    dynamics: KeypointDynamics,
    cost: KeypointCost,
    q0: torch.Tensor,
    goal: torch.Tensor,
    horizon: int,
    *,
    n_steps: int,
    lr: float,
    optimizer: str,
    grad_mode: GradientMode = GradientMode.UNROLLED,
    truncate: int = 1,
    tol: float | None = None,
    action_weight: float | None = None,
    smooth_weight: float | None = None,
    damping: float | None = None,
    cg_max_iters: int | None = None,
    cg_rtol: float | None = None,
    betas: tuple[float, float] = (0.9, 0.999),
    eps: float = 1e-8,
    actions_init: torch.Tensor | None = None,
    record: bool = False,
    analytic: bool = True,
) -> tuple[torch.Tensor, ActionOptInfo]:
    """Optimise ``(B, horizon - 1, n_joints)`` actions for ``cost`` under ``dynamics``.

    Args:
        q0: ``(B, n_joints)`` start joints. goal: ``(B, D)`` flattened goal keypoints.
        n_steps, lr, optimizer: the inner loop's settings (see :class:`~mbirl.algorithms.MBIRLConfig`, whose
            ``inner_kwargs()`` gives them and the rest): at most K >= 1 steps of ``"sgd"``, ``"adam"`` (functional
            Adam, differentiable as well) with step size ``lr``, or ``"gauss-newton"`` (Levenberg-Marquardt; ``lr``
            is unused).
        grad_mode: see :class:`GradientMode`. truncate: the steps kept by ``TRUNCATED``.
        tol: stop once every demonstration's inner gradient norm is below it (None or 0: run all K steps).
        action_weight, smooth_weight: the action term's weights (None: 0).
        damping, cg_max_iters, cg_rtol: the implicit mode's damped conjugate-gradient solve, stopped at a residual
            ``cg_rtol`` relative to the right-hand side's (None: 1e-6, 100 and 1e-6).
        record: store the inner objective in the returned info (costs a ``.item()`` per step).
        analytic: use the dynamics' :meth:`~KeypointDynamics.action_gradient` fast path where it has one
            (same values and gradients as autograd, checked in the tests); False forces autograd.
    Returns:
        ``(actions, info)``; ``actions`` carries the graph back to the cost parameters unless ``grad_mode`` is NONE.
    """
    if n_steps < 1:
        raise InputError(f"inner steps must be >= 1, got {n_steps}", field="inner_steps")
    if optimizer not in INNER_SOLVERS:
        raise InputError(f"unknown inner optimizer '{optimizer}' (expected {', '.join(INNER_SOLVERS)})",
                         field="inner_optimizer")
    grad_mode = GradientMode(grad_mode)
    tol = tol or 0.0
    aw, sw = action_weight or 0.0, smooth_weight or 0.0
    B = q0.shape[0]
    if actions_init is None:
        u = torch.zeros(B, horizon - 1, dynamics.n_joints, dtype=q0.dtype, device=q0.device)
    else:
        u = actions_init
    info = ActionOptInfo()
    implicit = grad_mode == GradientMode.IMPLICIT
    if implicit or grad_mode == GradientMode.NONE:
        u = u.detach()

    def differentiable_at(k: int) -> bool:
        if grad_mode == GradientMode.UNROLLED:
            return True
        return grad_mode == GradientMode.TRUNCATED and k >= n_steps - truncate

    def converged(grad: torch.Tensor) -> bool:
        norm = float(grad.detach().flatten(1).norm(dim=-1).max())
        info.grad_norm = norm
        return norm < tol

    with torch.enable_grad():
        if optimizer == "gauss-newton":
            u = _gauss_newton(dynamics, cost, q0, goal, u, n_steps, tol, aw, sw, differentiable_at, info, record)
        else:
            m = torch.zeros_like(u)
            v = torch.zeros_like(u)
            k = 0
            check = bool(tol)
            while k < n_steps:
                differentiable = differentiable_at(k)
                if not differentiable:
                    u = u.detach()
                if record:
                    with torch.no_grad():
                        info.cost_history.append(float(_objective(dynamics, cost, q0, goal, u, aw, sw).sum()))
                grad = inner_gradient(dynamics, cost, q0, goal, u, create_graph=differentiable, analytic=analytic,
                                      action_weight=aw, smooth_weight=sw)
                if check and converged(grad):
                    info.converged = True
                    if grad_mode != GradientMode.TRUNCATED or k >= n_steps - truncate:
                        break
                    # Converged early: the last ``truncate`` steps are the next ones, taken differentiably.
                    n_steps, check = k + truncate, False
                    continue
                if optimizer == "sgd":
                    u = u - lr * grad
                else:
                    m = betas[0] * m + (1 - betas[0]) * grad
                    v = betas[1] * v + (1 - betas[1]) * grad * grad
                    m_hat = m / (1 - betas[0] ** (k + 1))
                    v_hat = v / (1 - betas[1] ** (k + 1))
                    # eps inside the root keeps the double-backward finite where a gradient entry is exactly 0.
                    u = u - lr * m_hat / (v_hat + eps * eps).sqrt()
                k += 1
            info.steps = k
    if grad_mode == GradientMode.NONE:
        u = u.detach()
    elif implicit:
        params = [p for p in cost.parameters() if p.requires_grad]
        if params:
            def grad_fn(x: torch.Tensor) -> torch.Tensor:
                return inner_gradient(dynamics, cost, q0, goal, x, create_graph=True, analytic=analytic,
                                      action_weight=aw, smooth_weight=sw)

            u = implicit_solution(u.detach(), grad_fn, params, damping=1e-6 if damping is None else damping,
                                  max_iters=100 if cg_max_iters is None else cg_max_iters,
                                  rtol=1e-6 if cg_rtol is None else cg_rtol, stats=info.stats)
    if record:
        with torch.no_grad():
            info.cost_history.append(float(_objective(dynamics, cost, q0, goal, u, aw, sw).sum()))
    return u, info


def _gauss_newton(dynamics: KeypointDynamics, cost: KeypointCost, q0: torch.Tensor, goal: torch.Tensor,
                  u: torch.Tensor, n_steps: int, tol: float, aw: float, sw: float,
                  differentiable_at: Callable[[int], bool], info: ActionOptInfo, record: bool) -> torch.Tensor:
    """Levenberg-Marquardt on ``sum_b ||r_b(u_b)||^2``; a step that does not lower ``F_b`` is rejected and that
    demonstration's ``mu`` grows tenfold (it shrinks threefold after an accepted step)."""
    B = u.shape[0]
    shape = u.shape
    mu = u.new_full((B,), 1e-3)

    def residuals(x: torch.Tensor) -> torch.Tensor:
        return _residuals(dynamics, cost, q0, goal, x.reshape(shape), aw, sw)

    k = 0
    for k in range(n_steps):  # noqa: B007 (k counts the steps taken)
        differentiable = differentiable_at(k)
        if not differentiable:
            u = u.detach()
        flat = u.reshape(B, -1)
        if not flat.requires_grad:
            flat = flat.requires_grad_(True)
        fast = _kinematic_residual_jacobian(dynamics, cost, q0, goal, flat.reshape(shape), aw, sw,
                                            create_graph=differentiable)
        r, J = fast if fast is not None else _residual_jacobian(residuals, flat, create_graph=differentiable)
        if not differentiable:
            r, J = r.detach(), J.detach()
        f = r.pow(2).sum(-1)
        if record:
            info.cost_history.append(float(f.detach().sum()))
        g = J.transpose(1, 2) @ r.unsqueeze(-1)  # (B, N, 1): half the gradient of ||r||^2
        if tol:
            info.grad_norm = float((2 * g.detach()).flatten(1).norm(dim=-1).max())
            if info.grad_norm < tol:
                info.converged = True
                info.steps = k
                return flat.reshape(shape)
        JtJ = J.transpose(1, 2) @ J
        scale = JtJ.diagonal(dim1=1, dim2=2).mean(-1).clamp_min(1e-12)
        eye = torch.eye(JtJ.shape[-1], dtype=u.dtype, device=u.device)
        step = torch.linalg.solve(JtJ + (mu * scale)[:, None, None] * eye, -g).squeeze(-1)
        trial = flat + step
        with torch.no_grad():
            f_new = residuals(trial.detach()).pow(2).sum(-1)
            accept = f_new <= f.detach()
            mu = torch.where(accept, (mu / 3).clamp_min(1e-9), mu * 10)
        u = torch.where(accept[:, None], trial, flat).reshape(shape)
    info.steps = k + 1
    return u
