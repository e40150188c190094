"""Reward quality without RL: the EPIC pseudometric (Gleave et al., *Quantifying Differences in Reward Functions*,
ICLR 2021) between a learned reward and the true one, and the true rewards of tasks where they are a known
function of the transition.

EPIC compares rewards up to what cannot change an optimal policy. Each reward is first *canonicalised*,

    C(R)(s, a, s') = R(s, a, s') + E[gamma R(s', A, S') - R(s, A, S') - gamma R(S, A, S')],

with ``S, S'`` drawn independently from a state distribution ``D_S`` and ``A`` from an action distribution
``D_A``; this removes potential shaping ``gamma phi(s') - phi(s)`` (the expectations are estimated with one set of
samples for every transition, so the shaping of any ``phi`` leaves only a constant, to which the next step is
blind). The distance is then the Pearson distance of the canonical rewards over a *coverage* distribution of
transitions,

    D_EPIC(R_A, R_B) = sqrt((1 - rho(C(R_A), C(R_B))) / 2)   in [0, 1],

0 for rewards equal up to shaping and positive scale, 1 for a negation.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from mbirl.errors import InputError

__all__ = ["TRUE_REWARDS", "EpicSamples", "RewardFn", "canonicalize", "epic_distance", "pearson_distance"]

RewardFn = Callable[[np.ndarray, np.ndarray, np.ndarray], np.ndarray]
"""A reward over batches: ``(obs (B, obs_dim), act (B, ...), next_obs (B, obs_dim)) -> (B,)``."""


@dataclass(frozen=True)
class EpicSamples:
    """The distributions EPIC is computed over.

    ``obs, act, next_obs``: the coverage transitions ``(B, ...)`` on which the canonical rewards are correlated;
    ``states`` ``(M, obs_dim)`` and ``actions`` ``(M, ...)``: samples of ``D_S`` and ``D_A`` for the
    canonicalisation's expectations (row ``j`` of each is one sample ``(S_j, A_j)``; ``S'_j`` is ``states`` rolled
    by one, so that ``S`` and ``S'`` are independent draws).
    """

    obs: np.ndarray
    act: np.ndarray
    next_obs: np.ndarray
    states: np.ndarray
    actions: np.ndarray

    def __post_init__(self) -> None:
        b, m = len(self.obs), len(self.states)
        if b < 2 or m < 2:
            raise InputError(f"EPIC needs >= 2 coverage transitions and >= 2 state samples, got {b} and {m}",
                             field="samples")
        if len(self.act) != b or len(self.next_obs) != b or len(self.actions) != m:
            raise InputError("EPIC samples of inconsistent lengths", field="samples")
        if self.states.shape[1:] != self.obs.shape[1:] or self.next_obs.shape[1:] != self.obs.shape[1:]:
            raise InputError("EPIC state samples and coverage observations differ in shape", field="samples")
        for name in ("obs", "act", "next_obs", "states", "actions"):
            if not np.isfinite(np.asarray(getattr(self, name), np.float64)).all():
                raise InputError("EPIC samples must be finite", field=name)


def _mean_over_samples(reward: RewardFn, first: np.ndarray, actions: np.ndarray, second: np.ndarray,
                       chunk: int = 65_536) -> np.ndarray:
    """``out[i] = mean_j reward(first[i], actions[j], second[j])`` for ``first`` ``(N, ...)``, ``(M, ...)`` samples."""
    n, m = len(first), len(actions)
    out = np.empty(n)
    rows = max(1, chunk // m)
    for start in range(0, n, rows):
        block = first[start:start + rows]
        k = len(block)
        r = reward(np.repeat(block, m, axis=0), np.tile(actions, (k,) + (1,) * (actions.ndim - 1)),
                   np.tile(second, (k, 1)))
        out[start:start + k] = np.asarray(r, np.float64).reshape(k, m).mean(1)
    return out


def canonicalize(reward: RewardFn, samples: EpicSamples, gamma: float) -> np.ndarray:
    """The canonically shaped reward ``C(R)`` on the coverage transitions, ``(B,)``."""
    if not 0.0 <= gamma <= 1.0:
        raise InputError(f"must be in [0, 1], got {gamma}", field="gamma")
    s, a, s2 = samples.states, samples.actions, np.roll(samples.states, 1, axis=0)
    r = np.asarray(reward(samples.obs, samples.act, samples.next_obs), np.float64)
    from_next = _mean_over_samples(reward, samples.next_obs, a, s2)
    from_here = _mean_over_samples(reward, samples.obs, a, s2)
    overall = np.asarray(reward(s, a, s2), np.float64)
    if not all(np.isfinite(x).all() for x in (r, from_next, from_here, overall)):
        raise InputError("a reward is not finite on the EPIC samples", field="reward")
    out: np.ndarray = r + gamma * from_next - from_here - gamma * float(overall.mean())
    return out


def pearson_distance(x: np.ndarray, y: np.ndarray) -> float:
    """``sqrt((1 - rho) / 2)`` of two samples; a constant sample has no correlation with anything (distance
    ``sqrt(1/2)``), by convention."""
    x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
    if not (np.isfinite(x).all() and np.isfinite(y).all()):
        raise InputError("a reward is not finite on the EPIC samples", field="reward")
    xc, yc = x - x.mean(), y - y.mean()
    denom = math.sqrt(float(xc @ xc) * float(yc @ yc))
    rho = float(xc @ yc) / denom if denom > 0 else 0.0
    return math.sqrt(max(0.0, min(1.0, (1.0 - rho) / 2.0)))


def epic_distance(reward_a: RewardFn, reward_b: RewardFn, samples: EpicSamples, gamma: float) -> float:
    """EPIC distance between two rewards over ``samples`` (discount ``gamma``)."""
    return pearson_distance(canonicalize(reward_a, samples, gamma), canonicalize(reward_b, samples, gamma))


def _angle_normalize(x: np.ndarray) -> np.ndarray:
    return ((x + np.pi) % (2 * np.pi)) - np.pi


def _pendulum(obs: np.ndarray, act: np.ndarray, next_obs: np.ndarray) -> np.ndarray:
    # Pendulum-v1: obs = [cos theta, sin theta, theta_dot]; r = -(theta^2 + 0.1 theta_dot^2 + 0.001 u^2) of the
    # state the action was taken in (torque clipped to [-2, 2], as the environment does)
    theta = np.arctan2(obs[:, 1], obs[:, 0])
    u = np.clip(np.asarray(act, np.float64).reshape(len(obs), -1)[:, 0], -2.0, 2.0)
    out: np.ndarray = -(_angle_normalize(theta) ** 2 + 0.1 * obs[:, 2] ** 2 + 0.001 * u**2)
    return out


def _maze(obs: np.ndarray, act: np.ndarray, next_obs: np.ndarray) -> np.ndarray:
    from mbirl.envs.transfer import maze_true_reward

    return maze_true_reward(obs, act, next_obs)


def _mud_grid(obs: np.ndarray, act: np.ndarray, next_obs: np.ndarray) -> np.ndarray:
    from mbirl.envs.gridworld import mud_grid_true_reward

    return mud_grid_true_reward(obs, act, next_obs)


TRUE_REWARDS: dict[str, RewardFn] = {"Pendulum-v1": _pendulum, "ShiftingMazeLeft-v0": _maze,
                                     "ShiftingMazeRight-v0": _maze, "MudGrid-v0": _mud_grid}
"""True rewards as functions of the transition, by environment id (checked against the environments in the
tests)."""
