"""mbirl: model-based inverse reinforcement learning (MBIRL and MAIRL) in PyTorch."""

from mbirl.errors import InputError
from mbirl.types import KeypointTrajectory, Trajectory

__all__ = ["InputError", "KeypointTrajectory", "Trajectory", "__version__"]
__version__ = "0.1.0"
