"""Typed demonstrations and transition batches. Every field is validated (shape, dtype, finiteness) on construction."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING

import numpy as np

from mbirl.errors import InputError
from mbirl.validation import check_array

if TYPE_CHECKING:
    import torch

__all__ = ["KeypointTrajectory", "Trajectory", "TransitionBatch", "check_array"]


@dataclass(frozen=True)
class KeypointTrajectory:
    """One demonstration of the keypoint task.

    Attributes:
        start_q: start joint configuration, shape ``(n_joints,)`` float32 (radians).
        keypoints: keypoint positions, shape ``(T, k, 3)`` float32 (centimetres); ``keypoints[-1]`` is the goal.
        q: optional joint states along the demonstration, shape ``(T, n_joints)`` float32.
        images: optional RGB frames, shape ``(T, H, W, 3)`` uint8.
        source: where the demonstration came from (a file name), used in error messages.
    """

    start_q: np.ndarray
    keypoints: np.ndarray
    q: np.ndarray | None = None
    images: np.ndarray | None = None
    source: str | None = field(default=None, compare=False)

    def __post_init__(self) -> None:
        src = self.source
        start_q = check_array(self.start_q, "start_q", ndim=1, source=src)
        keypoints = check_array(self.keypoints, "keypoints", ndim=3, source=src, min_len=2)
        if keypoints.shape[2] != 3:
            raise InputError(f"expected (T, k, 3), got {keypoints.shape}", source=src, field="keypoints")
        object.__setattr__(self, "start_q", start_q)
        object.__setattr__(self, "keypoints", keypoints)
        T = keypoints.shape[0]
        if self.q is not None:
            q = check_array(self.q, "q", ndim=2, source=src, shape=(T, start_q.shape[0]))
            object.__setattr__(self, "q", q)
        if self.images is not None:
            images = check_array(self.images, "images", ndim=4, dtype_kind="u", source=src, shape=(T, None, None, 3))
            if images.dtype != np.uint8:
                raise InputError(f"expected uint8, got {images.dtype}", source=src, field="images")
            object.__setattr__(self, "images", images)

    @property
    def horizon(self) -> int:
        """Number of time steps T (states, including the start)."""
        return int(self.keypoints.shape[0])

    @property
    def n_keypoints(self) -> int:
        return int(self.keypoints.shape[1])

    @property
    def n_joints(self) -> int:
        return int(self.start_q.shape[0])

    @property
    def goal(self) -> np.ndarray:
        """Goal keypoints: the demonstration's last frame, shape ``(k, 3)``."""
        return self.keypoints[-1]


@dataclass(frozen=True)
class Trajectory:
    """A general state-action trajectory (gymnasium-style).

    Attributes:
        obs: observations, shape ``(N + 1, *obs_shape)``; ``obs[i + 1]`` is the observation after ``acts[i]``.
        acts: actions, shape ``(N, *act_shape)`` (float for continuous, integer for discrete actions).
        dones: shape ``(N,)`` bool; ``dones[i]`` is true where step ``i`` ended in a terminal state
            (not a time-limit truncation).
        rews: optional environment rewards, shape ``(N,)``.
    """

    obs: np.ndarray
    acts: np.ndarray
    dones: np.ndarray
    rews: np.ndarray | None = None
    source: str | None = field(default=None, compare=False)

    def __post_init__(self) -> None:
        src = self.source
        obs = np.asarray(self.obs)
        acts = np.asarray(self.acts)
        obs = check_array(obs, "obs", ndim=max(obs.ndim, 1), source=src, min_len=2)
        acts = check_array(acts, "acts", ndim=max(acts.ndim, 1), dtype_kind="f" if acts.dtype.kind == "f" else "i",
                           source=src)
        if len(obs) != len(acts) + 1:
            raise InputError(f"len(obs) must equal len(acts) + 1, got {len(obs)} and {len(acts)}", source=src,
                             field="obs")
        dones = np.asarray(self.dones)
        if dones.shape != (len(acts),):
            raise InputError(f"expected shape ({len(acts)},), got {dones.shape}", source=src, field="dones")
        if dones.dtype != np.bool_:
            if dones.dtype.kind not in "iub" or not np.isin(dones, (0, 1)).all():
                raise InputError(f"expected booleans, got {dones.dtype}", source=src, field="dones")
            dones = dones.astype(bool)
        if dones[:-1].any():
            raise InputError("only the last step of a trajectory may be terminal", source=src, field="dones")
        object.__setattr__(self, "obs", obs)
        object.__setattr__(self, "acts", acts)
        object.__setattr__(self, "dones", dones)
        if self.rews is not None:
            rews = check_array(self.rews, "rews", ndim=1, source=src, shape=(len(acts),))
            object.__setattr__(self, "rews", rews)

    def __len__(self) -> int:
        return int(len(self.acts))

    @property
    def next_obs(self) -> np.ndarray:
        """Observations after each action, shape ``(N, *obs_shape)``."""
        return self.obs[1:]

    @property
    def terminal(self) -> bool:
        return bool(self.dones[-1])


@dataclass(frozen=True)
class TransitionBatch:
    """A minibatch of ``B`` transitions ``(s, a, s', done)`` as float tensors (what a replay buffer hands out and a
    discriminator or forward model trains on). Shapes are checked on construction.

    Attributes:
        obs: observations ``s``, shape ``(B, obs_dim)``.
        act: actions ``a``, shape ``(B, act_dim)`` (one-hot rows for discrete action spaces).
        next_obs: observations ``s'`` after ``a``, shape ``(B, obs_dim)``.
        done: shape ``(B,)``, 1.0 where ``s'`` is a terminal state (not a time-limit truncation), else 0.0.
        log_pi: optional shape ``(B,)``, the current policy's log-density of ``a`` in ``s`` (the AIRL
            discriminator's logit subtracts it); None until computed (:meth:`with_log_pi`).
    """

    obs: torch.Tensor
    act: torch.Tensor
    next_obs: torch.Tensor
    done: torch.Tensor
    log_pi: torch.Tensor | None = None

    def __post_init__(self) -> None:
        n = self.obs.shape[0] if self.obs.ndim == 2 else -1
        for name, value, ndim in (("obs", self.obs, 2), ("act", self.act, 2), ("next_obs", self.next_obs, 2),
                                  ("done", self.done, 1), ("log_pi", self.log_pi, 1)):
            if value is None:
                continue
            if value.ndim != ndim or value.shape[0] != n:
                want = "(B, dim)" if ndim == 2 else "(B,)"
                raise InputError(f"expected shape {want} with B = {n} (from obs), got {tuple(value.shape)}",
                                 field=f"transitions.{name}")
        if self.next_obs.shape != self.obs.shape:
            raise InputError(f"expected the shape of obs {tuple(self.obs.shape)}, got {tuple(self.next_obs.shape)}",
                             field="transitions.next_obs")

    def __len__(self) -> int:
        return int(self.obs.shape[0])

    def with_log_pi(self, log_pi: torch.Tensor) -> TransitionBatch:
        """The same transitions with ``log_pi`` set."""
        return replace(self, log_pi=log_pi)

    def to(self, device: torch.device | str) -> TransitionBatch:
        """The same transitions on ``device`` (this batch itself when they are there already)."""
        import torch

        if self.obs.device == torch.device(device):
            return self
        return TransitionBatch(self.obs.to(device), self.act.to(device), self.next_obs.to(device),
                               self.done.to(device), None if self.log_pi is None else self.log_pi.to(device))
