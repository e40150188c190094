"""Costs that are weighted squared distances to the goal (the MBIRL paper's parameterisations).

With ``e_{t,d} = (z_{t,d} - g_d)^2``:
- default:        mean_t sum_d e_{t,d}                    (no parameters)
- weighted:       mean_t sum_d w_d e_{t,d}
- time-dependent: mean_{t,d} w_{t,d} e_{t,d}
- RBF-weighted:   mean_{t,d} w_{t,d} e_{t,d},  w_{t,d} = sum_j exp(-(t - c_j)^2 / width) theta_{j,d}
Initial weights follow the original code (0.1 weighted, 0.01 time-dependent and RBF). The weighted and
time-dependent costs are the original's; its RBF cost differs in two details, available with
``RBFWeightedCost(original=True)``: it sums over time instead of averaging (at T=10 a 10x larger inner step)
and truncates the centres to integers.
"""

from __future__ import annotations

from typing import Any

import torch

from mbirl.costs.base import COSTS, KeypointCost

__all__ = ["DefaultCost", "RBFWeightedCost", "TimeDependentCost", "WeightedCost", "rbf_basis"]


def _sq_err(z: torch.Tensor, goal: torch.Tensor) -> torch.Tensor:
    return (z - goal.unsqueeze(1)).pow(2)


def _weighted_residuals(err: torch.Tensor, weights: torch.Tensor, scale: float) -> torch.Tensor:
    """``sqrt(scale * w) * err`` flattened per demonstration: its squares sum to ``scale * sum w err^2``.

    Negative weights (a cost no longer bounded below) count as zero; the floor keeps the square root's
    derivative finite.
    """
    return (weights.clamp_min(1e-12) * scale).sqrt() * err


class DefaultCost(KeypointCost):
    """Squared distance to the goal, summed over dimensions and averaged over time."""

    def forward(self, z: torch.Tensor, goal: torch.Tensor) -> torch.Tensor:
        return _sq_err(z, goal).sum(-1).mean(-1)

    def residuals(self, z: torch.Tensor, goal: torch.Tensor) -> torch.Tensor:
        return ((z - goal.unsqueeze(1)) / z.shape[1] ** 0.5).flatten(1)


class WeightedCost(KeypointCost):
    """One weight per keypoint dimension. ``weights`` fixes them (e.g. from a baseline) and freezes them."""

    def __init__(self, dim: int, init: float = 0.1, weights: torch.Tensor | None = None) -> None:
        super().__init__(dim)
        if weights is None:
            self.weights = torch.nn.Parameter(torch.full((dim,), float(init)))
        else:
            self.register_buffer("weights", torch.as_tensor(weights, dtype=torch.float32).reshape(dim))

    def forward(self, z: torch.Tensor, goal: torch.Tensor) -> torch.Tensor:
        return (_sq_err(z, goal) * self.weights).sum(-1).mean(-1)

    def residuals(self, z: torch.Tensor, goal: torch.Tensor) -> torch.Tensor:
        return _weighted_residuals(z - goal.unsqueeze(1), self.weights, 1.0 / z.shape[1]).flatten(1)

    def weights_table(self) -> torch.Tensor:
        return self.weights.detach()


class TimeDependentCost(KeypointCost):
    """One weight per time step and dimension, ``(T, D)``."""

    def __init__(self, horizon: int, dim: int, init: float = 0.01) -> None:
        super().__init__(dim)
        self.horizon = horizon
        self.weights = torch.nn.Parameter(torch.full((horizon, dim), float(init)))

    def forward(self, z: torch.Tensor, goal: torch.Tensor) -> torch.Tensor:
        return (_sq_err(z, goal) * self.weights).mean(dim=(-2, -1))

    def residuals(self, z: torch.Tensor, goal: torch.Tensor) -> torch.Tensor:
        return _weighted_residuals(z - goal.unsqueeze(1), self.weights, 1.0 / (z.shape[1] * z.shape[2])).flatten(1)

    def weights_table(self) -> torch.Tensor:
        return self.weights.detach()


def rbf_basis(horizon: int, n_centres: int = 5, width: float = 2.0, *, integer_centres: bool = False
              ) -> torch.Tensor:
    """``(T, J)`` matrix of Gaussian bumps with ``J`` centres spread evenly over ``0 .. T-1``.

    ``integer_centres`` truncates the centres to integers, as the original code does (``int(c)``).
    """
    t = torch.arange(horizon, dtype=torch.float32)[:, None]
    centres = torch.linspace(0.0, horizon - 1, n_centres)
    if integer_centres:
        centres = centres.trunc()
    return torch.exp(-((t - centres[None, :]) ** 2) / width)


class RBFWeightedCost(KeypointCost):
    """Time-dependent weights from ``J`` radial basis functions (fewer parameters, any horizon).

    ``original=True`` is the official code's formulation: a sum over time (not a mean) and centres truncated
    to integers. With it, the original placing demos give the original's published RBF figure (144.7 test
    IRL loss, in the tests); the default formulation ends lower on the same demos (128.5).
    """

    basis: torch.Tensor

    def __init__(self, horizon: int, dim: int, n_centres: int = 5, width: float = 2.0, init: float = 0.01,
                 original: bool = False) -> None:
        super().__init__(dim)
        self.horizon = horizon
        self.original = original
        self.register_buffer("basis", rbf_basis(horizon, n_centres, width, integer_centres=original))
        self.theta = torch.nn.Parameter(torch.full((n_centres, dim), float(init)))

    def time_weights(self) -> torch.Tensor:
        return self.basis @ self.theta

    def forward(self, z: torch.Tensor, goal: torch.Tensor) -> torch.Tensor:
        weighted = _sq_err(z, goal) * self.time_weights()
        if self.original:
            return weighted.sum(-2).mean(-1)
        return weighted.mean(dim=(-2, -1))

    def residuals(self, z: torch.Tensor, goal: torch.Tensor) -> torch.Tensor:
        scale = 1.0 / (z.shape[2] if self.original else z.shape[1] * z.shape[2])
        return _weighted_residuals(z - goal.unsqueeze(1), self.time_weights(), scale).flatten(1)

    def weights_table(self) -> torch.Tensor:
        return self.time_weights().detach()


@COSTS.register("default")
def _default(*, dim: int, **_: Any) -> KeypointCost:
    return DefaultCost(dim)


@COSTS.register("weighted")
def _weighted(*, dim: int, **_: Any) -> KeypointCost:
    return WeightedCost(dim)


@COSTS.register("timedep")
def _timedep(*, horizon: int, dim: int, **_: Any) -> KeypointCost:
    return TimeDependentCost(horizon, dim)


@COSTS.register("rbf")
def _rbf(*, horizon: int, dim: int, rbf_original: bool = False, **_: Any) -> KeypointCost:
    return RBFWeightedCost(horizon, dim, original=rbf_original)
