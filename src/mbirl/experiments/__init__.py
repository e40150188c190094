"""The papers' experiments as functions over config dataclasses (run directories, resume, figures)."""

from mbirl.experiments.kuka_irl import METHODS, MBIRLRunConfig, prepare_run, run_compare, run_mbirl

__all__ = ["METHODS", "MBIRLRunConfig", "prepare_run", "run_compare", "run_mbirl"]
