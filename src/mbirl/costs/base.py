"""The cost interface and factory."""

from __future__ import annotations

from abc import ABC, abstractmethod

import torch

from mbirl.errors import InputError

__all__ = ["COST_NAMES", "KeypointCost", "make_cost"]

COST_NAMES = ("default", "weighted", "timedep", "rbf", "neural")


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

    @property
    def learnable(self) -> bool:
        return any(p.requires_grad for p in self.parameters())

    def weights_table(self) -> torch.Tensor | None:
        """The effective weights (``(D,)`` or ``(T, D)``) for figures, or None when not a weighted cost."""
        return None


def make_cost(name: str, *, horizon: int, dim: int, seed: int = 0, rbf_original: bool = False) -> KeypointCost:
    """Build a cost by name: one of ``default``, ``weighted``, ``timedep``, ``rbf``, ``neural``.

    ``rbf_original`` selects the official code's RBF formulation (see :class:`RBFWeightedCost`).
    """
    from mbirl.costs.linear import DefaultCost, RBFWeightedCost, TimeDependentCost, WeightedCost
    from mbirl.costs.neural import NeuralCost

    if name == "default":
        return DefaultCost(dim)
    if name == "weighted":
        return WeightedCost(dim)
    if name == "timedep":
        return TimeDependentCost(horizon, dim)
    if name == "rbf":
        return RBFWeightedCost(horizon, dim, original=rbf_original)
    if name == "neural":
        return NeuralCost(horizon, dim, generator=torch.Generator().manual_seed(seed))
    raise InputError(f"unknown cost '{name}' (expected one of {', '.join(COST_NAMES)})", field="cost")
