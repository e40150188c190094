"""mbirl: model-based inverse reinforcement learning (MBIRL and MAIRL) in PyTorch.

What a user needs is importable from here (loaded on first use, so ``import mbirl`` stays light)::

    import mbirl

    run = mbirl.load_run("runs/mairl")              # any run directory: config, metrics, policy, reward
    env = run.as_env_wrapper()                      # the learned reward in a gymnasium environment
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"
"""The package version (``mbirl --version``; the wheel's version is read from here)."""

_EXPORTS = {
    # runs as objects, learned rewards
    "load_run": "mbirl.api", "ImitationRun": "mbirl.api", "MBIRLRun": "mbirl.api",
    "LearnedReward": "mbirl.rewards.learned", "LearnedRewardWrapper": "mbirl.rewards.learned",
    # data
    "Trajectory": "mbirl.types", "KeypointTrajectory": "mbirl.types", "TransitionBatch": "mbirl.types",
    "load_trajectories": "mbirl.data.demos", "save_trajectories": "mbirl.data.demos",
    "load_keypoint_demos": "mbirl.data.demos", "save_keypoint_demos": "mbirl.data.demos",
    "import_demos": "mbirl.data.interop", "export_minari": "mbirl.data.interop",
    "demo_stats": "mbirl.experts.demos", "DemoStats": "mbirl.experts.demos", "shipped_demos": "mbirl.data.shipped",
    # MBIRL
    "MBIRL": "mbirl.algorithms.mbirl", "MBIRLConfig": "mbirl.algorithms.mbirl", "DemoBatch": "mbirl.algorithms.mbirl",
    "KeypointCost": "mbirl.costs", "make_cost": "mbirl.costs", "KeypointRobot": "mbirl.envs.robot",
    "KinematicKeypointDynamics": "mbirl.dynamics.kinematic",
    "MBIRLRunConfig": "mbirl.experiments.kuka_irl", "run_mbirl": "mbirl.experiments.kuka_irl",
    # MAIRL and the imitation harness
    "MAIRL": "mbirl.algorithms.mairl", "MAIRLConfig": "mbirl.algorithms.mairl", "build_mairl": "mbirl.algorithms.mairl",
    "MAIRLRunConfig": "mbirl.experiments.mairl_run", "run_mairl": "mbirl.experiments.mairl_run",
    "ImitationRunConfig": "mbirl.experiments.imitation", "run_imitation": "mbirl.experiments.imitation",
    "ALGORITHMS": "mbirl.experiments.imitation",
    # errors
    "InputError": "mbirl.errors", "NonFiniteError": "mbirl.errors",
}

__all__ = [
    "ALGORITHMS",
    "DemoBatch",
    "DemoStats",
    "ImitationRun",
    "ImitationRunConfig",
    "InputError",
    "KeypointCost",
    "KeypointRobot",
    "KeypointTrajectory",
    "KinematicKeypointDynamics",
    "LearnedReward",
    "LearnedRewardWrapper",
    "MAIRL",
    "MAIRLConfig",
    "MAIRLRunConfig",
    "MBIRL",
    "MBIRLConfig",
    "MBIRLRun",
    "MBIRLRunConfig",
    "NonFiniteError",
    "Trajectory",
    "TransitionBatch",
    "__version__",
    "build_mairl",
    "demo_stats",
    "export_minari",
    "import_demos",
    "load_keypoint_demos",
    "load_run",
    "load_trajectories",
    "make_cost",
    "run_imitation",
    "run_mairl",
    "run_mbirl",
    "save_keypoint_demos",
    "save_trajectories",
    "shipped_demos",
]

assert set(__all__) == {*_EXPORTS, "__version__"}

if TYPE_CHECKING:
    from mbirl.algorithms.mairl import MAIRL, MAIRLConfig, build_mairl
    from mbirl.algorithms.mbirl import MBIRL, DemoBatch, MBIRLConfig
    from mbirl.api import ImitationRun, MBIRLRun, load_run
    from mbirl.costs import KeypointCost, make_cost
    from mbirl.data.demos import load_keypoint_demos, load_trajectories, save_keypoint_demos, save_trajectories
    from mbirl.data.interop import export_minari, import_demos
    from mbirl.data.shipped import shipped_demos
    from mbirl.dynamics.kinematic import KinematicKeypointDynamics
    from mbirl.envs.robot import KeypointRobot
    from mbirl.errors import InputError, NonFiniteError
    from mbirl.experiments.imitation import ALGORITHMS, ImitationRunConfig, run_imitation
    from mbirl.experiments.kuka_irl import MBIRLRunConfig, run_mbirl
    from mbirl.experiments.mairl_run import MAIRLRunConfig, run_mairl
    from mbirl.experts.demos import DemoStats, demo_stats
    from mbirl.rewards.learned import LearnedReward, LearnedRewardWrapper
    from mbirl.types import KeypointTrajectory, Trajectory, TransitionBatch


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'mbirl' has no attribute '{name}'")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return __all__
