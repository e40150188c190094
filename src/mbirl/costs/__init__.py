"""Learnable keypoint costs c_psi(z, g): one interface, siblings for each parameterisation."""

from mbirl.costs.base import COST_NAMES, KeypointCost, make_cost
from mbirl.costs.linear import DefaultCost, RBFWeightedCost, TimeDependentCost, WeightedCost
from mbirl.costs.neural import NeuralCost

__all__ = [
    "COST_NAMES",
    "DefaultCost",
    "KeypointCost",
    "NeuralCost",
    "RBFWeightedCost",
    "TimeDependentCost",
    "WeightedCost",
    "make_cost",
]
