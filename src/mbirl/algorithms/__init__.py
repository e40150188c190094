"""IRL algorithms: bi-level MBIRL and its baselines."""

from mbirl.algorithms.feature_matching import FeatureMatchingIRL
from mbirl.algorithms.mbirl import MBIRL, DemoBatch, EvalResult, irl_loss, relative_goal_distance

__all__ = ["MBIRL", "DemoBatch", "EvalResult", "FeatureMatchingIRL", "irl_loss", "relative_goal_distance"]
