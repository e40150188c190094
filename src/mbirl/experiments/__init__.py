"""The papers' experiments as functions over config dataclasses (run directories, resume, figures): MBIRL on the
keypoint task (:mod:`~mbirl.experiments.kuka_irl`), every imitation algorithm in one harness
(:mod:`~mbirl.experiments.imitation`), MAIRL's own run layout (:mod:`~mbirl.experiments.mairl_run`) and the
quality of a learned reward (:mod:`~mbirl.experiments.reward_quality`)."""

from mbirl.experiments.imitation import ALGORITHMS, ImitationRunConfig, run_imitation
from mbirl.experiments.kuka_irl import METHODS, MBIRLRunConfig, prepare_run, run_compare, run_mbirl
from mbirl.experiments.mairl_run import MAIRLRunConfig, run_mairl
from mbirl.experiments.reward_quality import EpicConfig, epic_of_run

__all__ = ["ALGORITHMS", "METHODS", "EpicConfig", "ImitationRunConfig", "MAIRLRunConfig", "MBIRLRunConfig",
           "epic_of_run", "prepare_run", "run_compare", "run_imitation", "run_mairl", "run_mbirl"]
