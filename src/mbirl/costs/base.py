"""The cost interface and the registry of cost parameterisations.

Concrete costs register themselves in :data:`COSTS` where they are defined (:mod:`mbirl.costs.linear`,
:mod:`mbirl.costs.neural`); importing :mod:`mbirl.costs` registers them all.
"""

from __future__ import annotations

from abc import ABC, abstractmethod

import torch

from mbirl.registry import Registry

__all__ = ["COSTS", "KeypointCost", "make_cost"]


class KeypointCost(torch.nn.Module, ABC):
    """A cost over a predicted keypoint trajectory and a goal.

    ``forward(z, goal)`` takes ``z`` of shape ``(B, T, D)`` (``D = 3k`` flattened keypoints) and ``goal``
    of shape ``(B, D)`` and returns one cost per demonstration, shape ``(B,)``. Each demonstration's cost is
    reduced over its own time steps and dimensions only (a mean over both, except the original-formulation
    RBF cost), so batching never rescales a demonstration's inner step.
    """

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.dim = dim

    @abstractmethod
    def forward(self, z: torch.Tensor, goal: torch.Tensor) -> torch.Tensor: ...

    def residuals(self, z: torch.Tensor, goal: torch.Tensor) -> torch.Tensor | None:
        """Residuals ``(B, R)`` with ``forward(z, goal) == residuals(z, goal).pow(2).sum(-1)``, for the
        Gauss-Newton inner solver; None for a cost that is not a sum of squares."""
        return None

    def weights_table(self) -> torch.Tensor | None:
        """The effective weights (``(D,)`` or ``(T, D)``) for figures, or None when not a weighted cost."""
        return None


COSTS = Registry[KeypointCost]("cost")
"""Cost factories by name. Each is called with keywords ``horizon``, ``dim``, ``seed`` (initialisation of
random parameters) and ``rbf_original`` (the official code's RBF formulation) and ignores what it does not use."""


def make_cost(name: str, *, horizon: int, dim: int, seed: int = 0, rbf_original: bool = False) -> KeypointCost:
    """Build the cost registered as ``name`` (one of ``COSTS.names``); InputError for an unknown name."""
    return COSTS.make(name, horizon=horizon, dim=dim, seed=seed, rbf_original=rbf_original)
