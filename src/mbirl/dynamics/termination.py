"""Known termination rules of gymnasium tasks, as functions of the next observation, for rollouts that run
through a learned model only (where no environment says when an episode ends).

Each rule restates the task's own ``terminated`` condition on its observation vector (the gymnasium 1.x sources
and their default constructor arguments; MBPO, Janner et al. 2019, used the same "static" rules). A task without a
rule never terminates in imagination, which is right for Pendulum, HalfCheetah and Swimmer, and an approximation
elsewhere: :func:`termination_fn` says which.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

__all__ = ["TERMINATIONS", "termination_fn"]

TerminationFn = Callable[[torch.Tensor], torch.Tensor]
"""Maps next observations ``(B, obs_dim)`` to ``(B,)`` bools: the transition ended the episode."""


def _cartpole(obs: torch.Tensor) -> torch.Tensor:
    # CartPole-v1: x = obs[0], theta = obs[2]; ends beyond 2.4 m or 12 degrees
    return (obs[:, 0].abs() > 2.4) | (obs[:, 2].abs() > 12 * 2 * math.pi / 360)


def _inverted_pendulum(obs: torch.Tensor) -> torch.Tensor:
    # InvertedPendulum-v5: obs = [x, theta, x_dot, theta_dot]; ends when |theta| > 0.2 or a value is not finite
    return ~torch.isfinite(obs).all(-1) | (obs[:, 1].abs() > 0.2)


def _healthy_range(z_low: float, z_high: float, angle_low: float, angle_high: float,
                   state_bound: float | None) -> TerminationFn:
    # Hopper / Walker2d (exclude_current_positions_from_observation): obs[0] = torso height z, obs[1] = torso angle
    def rule(obs: torch.Tensor) -> torch.Tensor:
        z, angle = obs[:, 0], obs[:, 1]
        healthy = (z > z_low) & (z < z_high) & (angle > angle_low) & (angle < angle_high)
        if state_bound is not None:
            healthy = healthy & (obs[:, 1:].abs() < state_bound).all(-1)
        return ~healthy
    return rule


def _ant(obs: torch.Tensor) -> torch.Tensor:
    # Ant-v5: healthy while the state is finite and the torso height obs[0] is in [0.2, 1.0]
    z = obs[:, 0]
    return ~(torch.isfinite(obs).all(-1) & (z >= 0.2) & (z <= 1.0))


def _mud_grid(obs: torch.Tensor) -> torch.Tensor:
    # MudGrid-v0 (mbirl.envs.gridworld): one-hot cells, the last one (top-right) is the goal, which ends the episode
    return obs.argmax(-1) == obs.shape[1] - 1


TERMINATIONS: dict[str, TerminationFn] = {
    "MudGrid-v0": _mud_grid,
    "CartPole-v1": _cartpole,
    "InvertedPendulum-v5": _inverted_pendulum,
    "Hopper-v5": _healthy_range(0.7, math.inf, -0.2, 0.2, 100.0),
    "Walker2d-v5": _healthy_range(0.8, 2.0, -1.0, 1.0, None),
    "Ant-v5": _ant,
}
"""Termination rules by environment id."""

NEVER_TERMINATE = ("Pendulum-v1", "MountainCarContinuous-v0", "HalfCheetah-v5", "Swimmer-v5", "Reacher-v5",
                   "Pusher-v5")
"""Tasks whose episodes only end by the time limit."""


def _never(obs: torch.Tensor) -> torch.Tensor:
    return torch.zeros(obs.shape[0], dtype=torch.bool, device=obs.device)


def termination_fn(env_id: str) -> tuple[TerminationFn, bool]:
    """The termination rule of ``env_id`` and whether it is known (``False``: an unknown task, assumed to end only
    by its time limit)."""
    if env_id in TERMINATIONS:
        return TERMINATIONS[env_id], True
    return _never, env_id in NEVER_TERMINATE
