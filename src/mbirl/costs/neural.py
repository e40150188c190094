"""A neural cost (beyond the paper): a small MLP over ``(z_t - g, t / (T - 1))``, kept non-negative."""

from __future__ import annotations

from typing import Any

import torch

from mbirl.costs.base import COSTS, KeypointCost

__all__ = ["NeuralCost"]


class NeuralCost(KeypointCost):
    """``c = mean_t softplus(MLP((z_t - g) / scale, t / (T - 1)))``; non-negative by construction.

    ``scale`` (cm) brings keypoint errors to order one for the network.
    """

    def __init__(self, horizon: int, dim: int, hidden: int = 32, scale: float = 10.0,
                 generator: torch.Generator | None = None) -> None:
        super().__init__(dim)
        self.horizon = horizon
        self.scale = scale
        self.net = torch.nn.Sequential(
            torch.nn.Linear(dim + 1, hidden), torch.nn.Tanh(), torch.nn.Linear(hidden, hidden), torch.nn.Tanh(),
            torch.nn.Linear(hidden, 1),
        )
        with torch.no_grad():
            for layer in self.net:
                if isinstance(layer, torch.nn.Linear):
                    bound = 1.0 / layer.in_features**0.5
                    layer.weight.uniform_(-bound, bound, generator=generator)
                    layer.bias.zero_()
        # A learnable quadratic skip term, softplus(-4.6) = 0.01 as the linear costs' initial weights.
        self.quad_weight = torch.nn.Parameter(torch.tensor(-4.6))

    def _terms(self, z: torch.Tensor, goal: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The network's term ``(B, T)``, the error ``(B, T, D)`` and the quadratic weight."""
        err = z - goal.unsqueeze(1)
        T = z.shape[1]
        t = torch.linspace(0.0, 1.0, T, dtype=z.dtype, device=z.device).expand(z.shape[0], T).unsqueeze(-1)
        out = torch.nn.functional.softplus(self.net(torch.cat([err / self.scale, t], dim=-1))).squeeze(-1)
        return out, err, torch.nn.functional.softplus(self.quad_weight)

    def forward(self, z: torch.Tensor, goal: torch.Tensor) -> torch.Tensor:
        out, err, quad = self._terms(z, goal)
        return (out + quad * err.pow(2).sum(-1)).mean(-1)

    def residuals(self, z: torch.Tensor, goal: torch.Tensor) -> torch.Tensor:
        """``sqrt(softplus(.))`` per step (smooth: softplus > 0) and the quadratic term's weighted errors."""
        out, err, quad = self._terms(z, goal)
        T = z.shape[1]
        return torch.cat([(out / T).sqrt(), ((quad / T).sqrt() * err).flatten(1)], dim=-1)


@COSTS.register("neural")
def _neural(*, horizon: int, dim: int, seed: int = 0, **_: Any) -> KeypointCost:
    return NeuralCost(horizon, dim, generator=torch.Generator().manual_seed(seed))
