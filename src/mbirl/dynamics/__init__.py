"""Dynamics models: one interface (roll out an action sequence), ground-truth and learned variants; MAIRL's learned
forward models ``s' = f(s, a)`` (:data:`MODELS`) and the loop that fits them."""

from mbirl.dynamics.base import KeypointDynamics
from mbirl.dynamics.ensemble import ModelEnsemble
from mbirl.dynamics.keypoint_mlp import KeypointMLPDynamics
from mbirl.dynamics.kinematic import KinematicKeypointDynamics
from mbirl.dynamics.models import MODELS, ForwardModel
from mbirl.dynamics.termination import TERMINATIONS, termination_fn
from mbirl.dynamics.training import fit_forward_model

__all__ = ["MODELS", "TERMINATIONS", "ForwardModel", "KeypointDynamics", "KeypointMLPDynamics",
           "KinematicKeypointDynamics", "ModelEnsemble", "fit_forward_model", "termination_fn"]
