"""Dynamics models: one interface (roll out an action sequence), ground-truth and learned variants."""

from mbirl.dynamics.base import KeypointDynamics
from mbirl.dynamics.keypoint_mlp import KeypointMLPDynamics
from mbirl.dynamics.kinematic import KinematicKeypointDynamics

__all__ = ["KeypointDynamics", "KeypointMLPDynamics", "KinematicKeypointDynamics"]
