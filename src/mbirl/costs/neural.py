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

    def forward(self, z: torch.Tensor, goal: torch.Tensor) -> torch.Tensor:
        err = z - goal.unsqueeze(1)
        T = z.shape[1]
        t = torch.linspace(0.0, 1.0, T, dtype=z.dtype, device=z.device).expand(z.shape[0], T).unsqueeze(-1)
        out = torch.nn.functional.softplus(self.net(torch.cat([err / self.scale, t], dim=-1))).squeeze(-1)
        quad = torch.nn.functional.softplus(self.quad_weight) * err.pow(2).sum(-1)
        return (out + quad).mean(-1)


@COSTS.register("neural")
def _neural(*, horizon: int, dim: int, seed: int = 0, **_: Any) -> KeypointCost:
    return NeuralCost(horizon, dim, generator=torch.Generator().manual_seed(seed))
