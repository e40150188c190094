"""IRL algorithms: bi-level MBIRL and its baselines."""

from mbirl.algorithms.feature_matching import FeatureMatchingIRL
from mbirl.algorithms.mbirl import (
    MBIRL,
    CostLearner,
    DemoBatch,
    EvalResult,
    MBIRLConfig,
    evaluate_on_robot,
    irl_loss,
    relative_goal_distance,
)

__all__ = ["MBIRL", "CostLearner", "DemoBatch", "EvalResult", "FeatureMatchingIRL", "MBIRLConfig",
           "evaluate_on_robot", "irl_loss", "relative_goal_distance"]
