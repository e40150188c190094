"""Learnable keypoint costs c_psi(z, g): one interface, siblings for each parameterisation, one registry."""

from mbirl.costs.base import COSTS, KeypointCost, make_cost
from mbirl.costs.linear import DefaultCost, RBFWeightedCost, TimeDependentCost, WeightedCost
from mbirl.costs.neural import NeuralCost
from mbirl.costs.path import PathCost

__all__ = [
    "COSTS",
    "DefaultCost",
    "KeypointCost",
    "NeuralCost",
    "PathCost",
    "RBFWeightedCost",
    "TimeDependentCost",
    "WeightedCost",
    "make_cost",
]
