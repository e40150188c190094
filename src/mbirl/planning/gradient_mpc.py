"""Gradient-based MPC over an action sequence, differentiable with respect to the cost parameters.

Inner loop (K steps, from ``u = 0`` unless given):  ``u <- u - alpha * grad_u sum_b c_psi(rollout(q0_b, u_b), g_b)``.
Summing per-demonstration costs over the batch keeps each demonstration's step independent of the batch
size. Updates are functional (out of place); with ``GradientMode.UNROLLED`` the graph of every step is kept
(``create_graph=True``) so an outer loss can be differentiated through all K steps.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum

import torch

from mbirl.costs.base import KeypointCost
from mbirl.dynamics.base import KeypointDynamics
from mbirl.errors import InputError

__all__ = ["ActionOptInfo", "GradientMode", "optimize_actions"]


class GradientMode(StrEnum):
    """How gradients pass from the optimised actions back to the cost parameters."""

    UNROLLED = "unrolled"  # through every inner step (exact bi-level gradient)
    TRUNCATED = "truncated"  # through the last ``truncate`` inner steps only
    NONE = "none"  # no gradient to the cost (evaluation, planning with a frozen cost)


@dataclass
class ActionOptInfo:
    """What the inner loop did: the summed inner cost before each step and after the last one."""

    cost_history: list[float] = field(default_factory=list)


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
            ``inner_kwargs()`` gives them): K >= 1 steps of ``"sgd"`` or ``"adam"`` (functional Adam,
            differentiable as well) with step size ``lr``.
        grad_mode: see :class:`GradientMode`.
        record: store the inner cost values in the returned info (costs a ``.item()`` per step).
        analytic: use the dynamics' :meth:`~KeypointDynamics.action_gradient` fast path where it has one
            (same values and gradients as autograd, checked in the tests); False forces autograd.
    Returns:
        ``(actions, info)``; ``actions`` carries the graph back to the cost parameters unless ``grad_mode`` is NONE.
    """
    if n_steps < 1:
        raise InputError(f"inner steps must be >= 1, got {n_steps}", field="inner_steps")
    if optimizer not in ("sgd", "adam"):
        raise InputError(f"unknown inner optimizer '{optimizer}' (expected sgd or adam)", field="inner_optimizer")
    B = q0.shape[0]
    if actions_init is None:
        u = torch.zeros(B, horizon - 1, dynamics.n_joints, dtype=q0.dtype, device=q0.device)
    else:
        u = actions_init
    info = ActionOptInfo()
    m = torch.zeros_like(u)
    v = torch.zeros_like(u)
    with torch.enable_grad():
        for k in range(n_steps):
            differentiable = grad_mode == GradientMode.UNROLLED or (
                grad_mode == GradientMode.TRUNCATED and k >= n_steps - truncate
            )
            if not differentiable:
                u = u.detach()
            grad = None
            if analytic and not record:
                grad = dynamics.action_gradient(q0, u, lambda z: cost(z, goal), create_graph=differentiable)
            if grad is None:
                if not u.requires_grad:
                    u = u.requires_grad_(True)
                _, z = dynamics.rollout(q0, u)
                total = cost(z.flatten(-2), goal).sum()
                if record:
                    info.cost_history.append(float(total.detach()))
                (grad,) = torch.autograd.grad(total, u, create_graph=differentiable)
            if optimizer == "sgd":
                u = u - lr * grad
            else:
                m = betas[0] * m + (1 - betas[0]) * grad
                v = betas[1] * v + (1 - betas[1]) * grad * grad
                m_hat = m / (1 - betas[0] ** (k + 1))
                v_hat = v / (1 - betas[1] ** (k + 1))
                # eps inside the root keeps the double-backward finite where a gradient entry is exactly 0.
                u = u - lr * m_hat / (v_hat + eps * eps).sqrt()
    if grad_mode == GradientMode.NONE:
        u = u.detach()
    if record:
        with torch.no_grad():
            _, z = dynamics.rollout(q0, u)
            info.cost_history.append(float(cost(z.flatten(-2), goal).sum()))
    return u, info
