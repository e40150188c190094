"""A cost whose minimum is a path relative to the goal, not "be at the goal now".

With a converged inner solver the plan is the cost's minimiser, so a cost of distances to the goal alone plans a
straight dash to the goal whatever its weights. Here every time step has its own target relative to the goal::

    c = mean_{t,d} w_{t,d} (z_{t,d} - g_d - m_{t,d} - a_{t,d} (z_{0,d} - g_d))^2

with learned offsets ``m`` (cm), learned fractions ``a`` of the start's offset from the goal (``a = 1 - t/(T-1)``
is a straight line from the start; ``a`` makes one target fit goals at any distance) and positive weights
``w = softplus(rho)``. ``m``, ``a`` and ``rho`` live on knots spread over normalised time ``t / (T - 1)`` and are
interpolated linearly, so a cost learned at one horizon plans at any other. At initialisation (``m = a = 0``,
``w = 0.01``) it is the time-dependent cost.
"""

from __future__ import annotations

import math
from typing import Any

import torch

from mbirl.costs.base import COSTS, KeypointCost

__all__ = ["PathCost", "interpolation_matrix"]


def interpolation_matrix(horizon: int, n_knots: int, *, dtype: torch.dtype = torch.float32,
                         device: torch.device | None = None) -> torch.Tensor:
    """``(T, n_knots)`` weights of linear interpolation from knots evenly spread over ``[0, 1]`` to the
    normalised times ``t / (T - 1)``; the identity when ``T == n_knots``."""
    if n_knots == 1:
        return torch.ones(horizon, 1, dtype=dtype, device=device)
    tau = torch.linspace(0.0, 1.0, horizon, dtype=dtype, device=device) * (n_knots - 1)
    left = tau.floor().clamp(max=n_knots - 2)
    frac = tau - left
    out = torch.zeros(horizon, n_knots, dtype=dtype, device=device)
    rows = torch.arange(horizon, device=device)
    out[rows, left.long()] = 1.0 - frac
    out[rows, left.long() + 1] += frac
    return out


class PathCost(KeypointCost):
    """Time-indexed targets relative to the goal (see the module docstring); ``n_knots`` knots over time."""

    def __init__(self, horizon: int, dim: int, n_knots: int | None = None, init: float = 0.01) -> None:
        super().__init__(dim)
        self.n_knots = horizon if n_knots is None else n_knots
        self.offset = torch.nn.Parameter(torch.zeros(self.n_knots, dim))
        self.fraction = torch.nn.Parameter(torch.zeros(self.n_knots, dim))
        self.rho = torch.nn.Parameter(torch.full((self.n_knots, dim), math.log(math.expm1(init))))

    def errors_and_weights(self, z: torch.Tensor, goal: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``z - target`` ``(B, T, D)`` and ``w`` ``(T, D)`` at ``z``'s horizon (``z[:, 0]`` is the start)."""
        P = interpolation_matrix(z.shape[1], self.n_knots, dtype=z.dtype, device=z.device)
        g = goal.unsqueeze(1)
        target = g + P @ self.offset + (P @ self.fraction) * (z[:, :1].detach() - g)
        return z - target, torch.nn.functional.softplus(P @ self.rho)

    def forward(self, z: torch.Tensor, goal: torch.Tensor) -> torch.Tensor:
        err, w = self.errors_and_weights(z, goal)
        return (w * err.pow(2)).mean(dim=(-2, -1))

    def residuals(self, z: torch.Tensor, goal: torch.Tensor) -> torch.Tensor:
        err, w = self.errors_and_weights(z, goal)
        return ((w / (z.shape[1] * z.shape[2])).sqrt() * err).flatten(1)

    def weights_table(self) -> torch.Tensor:
        return torch.nn.functional.softplus(self.rho).detach()


@COSTS.register("path")
def _path(*, horizon: int, dim: int, **_: Any) -> KeypointCost:
    return PathCost(horizon, dim)
