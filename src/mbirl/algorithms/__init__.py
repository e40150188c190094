"""IRL and imitation algorithms: bi-level MBIRL and its feature-matching baseline; MAIRL / MGAIL and the imitation
harness's learners (GAIL / AIRL with a PPO generator, DAC, behaviour cloning), each following
:class:`~mbirl.algorithms.learner.ImitationLearner`."""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from mbirl.algorithms.bc import BC, BCConfig, build_bc
from mbirl.algorithms.feature_matching import FeatureMatchingIRL
from mbirl.algorithms.learner import EVAL_SEED, ImitationLearner, StepInfo, evaluate_policy
from mbirl.algorithms.mairl import MAIRL, MAIRLConfig, build_mairl
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
from mbirl.algorithms.policies import GaussianPolicy, GumbelPolicy

if TYPE_CHECKING:
    from mbirl.algorithms.adversarial_ppo import AdversarialPPO, AdversarialPPOConfig, build_adversarial_ppo
    from mbirl.algorithms.dac import DAC, DACConfig, build_dac

_LAZY = {"AdversarialPPO": "adversarial_ppo", "AdversarialPPOConfig": "adversarial_ppo",
         "build_adversarial_ppo": "adversarial_ppo", "DAC": "dac", "DACConfig": "dac", "build_dac": "dac"}
"""Learners built on Stable-Baselines3, imported on first use (MBIRL alone does not need SB3)."""

__all__ = ["BC", "DAC", "EVAL_SEED", "MAIRL", "MBIRL", "AdversarialPPO", "AdversarialPPOConfig", "BCConfig",
           "CostLearner", "DACConfig", "DemoBatch", "EvalResult", "FeatureMatchingIRL", "GaussianPolicy",
           "GumbelPolicy", "ImitationLearner", "MAIRLConfig", "MBIRLConfig", "StepInfo", "build_adversarial_ppo",
           "build_bc", "build_dac", "build_mairl", "evaluate_on_robot", "evaluate_policy", "irl_loss",
           "relative_goal_distance"]


def __getattr__(name: str) -> Any:
    if name not in _LAZY:
        raise AttributeError(f"module 'mbirl.algorithms' has no attribute '{name}'")
    value = getattr(importlib.import_module(f"mbirl.algorithms.{_LAZY[name]}"), name)
    globals()[name] = value
    return value
