"""Differentiable gradient-based MPC: the MBIRL inner loop."""

from mbirl.planning.gradient_mpc import ActionOptInfo, GradientMode, optimize_actions

__all__ = ["ActionOptInfo", "GradientMode", "optimize_actions"]
