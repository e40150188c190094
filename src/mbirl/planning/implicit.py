"""Implicit differentiation of a converged inner solution (implicit function theorem).

At an inner optimum ``u*(psi)`` the optimality condition ``grad_u F(u*, psi) = 0`` holds, so for an outer loss
``L(u*)``::

    dL/dpsi = -(d^2 F / dpsi du)^T v,   (grad^2_uu F + damping I) v = grad_u L

The linear system is solved by conjugate gradient on Hessian-vector products (double backward through the
inner gradient), batched over demonstrations (their objectives are summed, so the Hessian is block diagonal
and each demonstration's system is solved independently). Nothing of the inner iterations is kept: memory
and time of the backward pass do not depend on how many steps found ``u*``. Exact only at a stationary point;
``damping`` regularises singular or indefinite Hessians (a redundant arm has a null space of joint motions).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch

__all__ = ["conjugate_gradient", "implicit_solution"]


def _dot(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return (a * b).flatten(1).sum(-1)


def _per_demo(x: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    return x.reshape(-1, *([1] * (like.dim() - 1)))


def conjugate_gradient(matvec: Callable[[torch.Tensor], torch.Tensor], b: torch.Tensor, *, max_iters: int,
                       rtol: float) -> tuple[torch.Tensor, int]:
    """Solve ``A x = b`` for a batch of independent symmetric systems (batch dimension 0).

    ``matvec`` applies the block-diagonal ``A`` to a batch of vectors. Each system stops when its residual
    norm falls below ``rtol * ||b||`` or at negative curvature (``p^T A p <= 0``: the iterate so far is kept, as
    in truncated CG). Returns ``(x, iterations)``.
    """
    x = torch.zeros_like(b)
    r = b.clone()
    p = r.clone()
    rs = _dot(r, r)
    limit = (rtol * rtol) * rs
    active = rs > limit
    it = 0
    while it < max_iters and bool(active.any()):
        Ap = matvec(p)
        pAp = _dot(p, Ap)
        active = active & (pAp > 0)
        alpha = torch.where(active, rs / torch.where(active, pAp, torch.ones_like(pAp)), torch.zeros_like(rs))
        x = x + _per_demo(alpha, x) * p
        r = r - _per_demo(alpha, r) * Ap
        rs_new = _dot(r, r)
        beta = torch.where(active, rs_new / torch.where(active, rs, torch.ones_like(rs)), torch.zeros_like(rs))
        p = r + _per_demo(beta, p) * p
        rs = torch.where(active, rs_new, rs)
        active = active & (rs > limit)
        it += 1
    return x, it


class _ImplicitSolution(torch.autograd.Function):
    """Identity on ``u*`` forward; the implicit-function-theorem gradient to the cost parameters backward."""

    @staticmethod
    def forward(ctx: Any, u_star: torch.Tensor, grad_fn: Callable[[torch.Tensor], torch.Tensor],
                settings: dict[str, Any], *params: torch.Tensor) -> torch.Tensor:
        ctx.grad_fn = grad_fn
        ctx.settings = settings
        ctx.save_for_backward(u_star, *params)
        return u_star.clone()

    @staticmethod
    def backward(ctx: Any, grad_out: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        u_star, *params = ctx.saved_tensors
        damping = float(ctx.settings["damping"])
        with torch.enable_grad():
            u = u_star.detach().requires_grad_(True)
            g = ctx.grad_fn(u)  # grad_u F(u, psi), with its graph to u and psi

            def hvp(v: torch.Tensor) -> torch.Tensor:
                (hv,) = torch.autograd.grad(g, u, v, retain_graph=True)
                return hv + damping * v

            v, iters = conjugate_gradient(hvp, grad_out.detach(), max_iters=int(ctx.settings["max_iters"]),
                                          rtol=float(ctx.settings["rtol"]))
            ctx.settings["stats"]["cg_iters"] = iters
            grads = torch.autograd.grad(g, params, v, allow_unused=True)
        return (None, None, None, *[None if gp is None else -gp for gp in grads])


def implicit_solution(u_star: torch.Tensor, grad_fn: Callable[[torch.Tensor], torch.Tensor],
                      params: Sequence[torch.Tensor], *, damping: float, max_iters: int, rtol: float,
                      stats: dict[str, Any] | None = None) -> torch.Tensor:
    """``u*`` (same values) whose gradient to ``params`` is the implicit one.

    Args:
        u_star: the converged inner solution (detached).
        grad_fn: ``u -> grad_u F(u, psi)`` computed with ``create_graph=True`` (differentiable in ``u`` and
            ``params``).
        params: the parameters ``psi`` that receive gradients.
        damping, max_iters, rtol: the conjugate-gradient solve of ``(H + damping I) v = dL/du``.
        stats: filled with ``cg_iters`` when the backward pass runs.
    """
    settings = {"damping": damping, "max_iters": max_iters, "rtol": rtol, "stats": stats if stats is not None else {}}
    out: torch.Tensor = _ImplicitSolution.apply(u_star.detach(), grad_fn, settings, *params)
    return out
