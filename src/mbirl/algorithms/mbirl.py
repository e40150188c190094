"""Bi-level MBIRL (Das et al., CoRL 2020): learn a cost by differentiating through gradient-based MPC.

Outer loss (the "IRL loss") of one demonstration: ``L = sum_t mean_d (z_t(u_K(psi)) - z^demo_t)^2``.
One outer iteration is one pass over the training demonstrations. ``update="per_demo"`` (default, as the
original code) makes one Adam step on the cost per demonstration; ``update="batched"`` makes one step on the
mean loss of all training demonstrations, with the inner loop batched over them.

:class:`MBIRLConfig` holds the learner's hyper-parameters (the one place their defaults are written);
:class:`CostLearner` is the interface that both :class:`MBIRL` and the feature-matching baseline satisfy.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

import numpy as np
import torch

from mbirl.costs.base import KeypointCost
from mbirl.dynamics.base import KeypointDynamics
from mbirl.errors import InputError, NonFiniteError, check_finite
from mbirl.planning.gradient_mpc import INNER_SOLVERS, ActionOptInfo, GradientMode, optimize_actions
from mbirl.reporting.checkpoint import load_optimizer_state
from mbirl.types import KeypointTrajectory

__all__ = ["MBIRL", "CostLearner", "DemoBatch", "EvalResult", "MBIRLConfig", "NonFiniteError", "evaluate_on_robot",
           "irl_loss", "relative_goal_distance"]


@dataclass(frozen=True)
class MBIRLConfig:
    """Hyper-parameters of the bi-level cost learner (the defaults are the original placing experiment's)."""

    inner_steps: int = 1
    """inner steps K of the action optimisation, at most (also used to evaluate a cost)"""
    inner_lr: float = 1e-3
    """inner (action) step size of ``sgd`` and ``adam``"""
    inner_optimizer: str = "sgd"
    """inner solver: ``sgd``, ``adam`` (functional, differentiable) or ``gauss-newton`` (Levenberg-Marquardt over
    the whole action sequence, for least-squares costs)"""
    grad_mode: str = "unrolled"
    """gradient through the inner loop: ``unrolled`` (every step), ``truncated`` (the last ``truncate_steps``) or
    ``implicit`` (implicit function theorem at the inner solution; needs a converged inner solver)"""
    inner_tol: float | None = None
    """stop the inner loop once every demo's inner gradient norm is below this (None: always K steps)"""
    truncate_steps: int = 1
    """inner steps the ``truncated`` gradient passes through"""
    action_reg: float = 0.0
    """weight of ``mean_t |u_t|^2`` in the inner objective (action magnitude; 0: none)"""
    smooth_reg: float = 0.0
    """weight of ``mean_t |u_t - u_{t-1}|^2`` in the inner objective (smoothness; 0: none)"""
    implicit_damping: float = 1e-6
    """``implicit``: damping added to the inner Hessian before the conjugate-gradient solve"""
    cg_iters: int = 100
    """``implicit``: conjugate-gradient iterations, at most"""
    outer_lr: float = 1e-2
    """Adam learning rate on the cost parameters"""
    update: str = "per_demo"
    """``per_demo`` (one cost update per training demonstration, as the original code) or ``batched``"""
    grad_clip: float | None = None
    """clip the cost gradient norm at this value (None: no clipping; the pre-clip norm is reported either way)"""

    def __post_init__(self) -> None:
        if self.inner_steps < 1:
            raise InputError(f"must be >= 1, got {self.inner_steps}", field="inner_steps")
        for name in ("inner_lr", "outer_lr"):
            lr = getattr(self, name)
            if not math.isfinite(lr) or lr <= 0:
                raise InputError(f"must be a positive finite number, got {lr}", field=name)
        if self.inner_optimizer not in INNER_SOLVERS:
            raise InputError(f"unknown inner optimizer '{self.inner_optimizer}' (expected "
                             f"{', '.join(INNER_SOLVERS)})", field="inner_optimizer")
        modes = (GradientMode.UNROLLED, GradientMode.TRUNCATED, GradientMode.IMPLICIT)
        if self.grad_mode not in modes:
            raise InputError(f"unknown gradient mode '{self.grad_mode}' (expected {', '.join(modes)})",
                             field="grad_mode")
        for name in ("truncate_steps", "cg_iters"):
            if getattr(self, name) < 1:
                raise InputError(f"must be >= 1, got {getattr(self, name)}", field=name)
        for name in ("inner_tol", "action_reg", "smooth_reg", "implicit_damping"):
            value = getattr(self, name)
            if value is not None and not (math.isfinite(value) and value >= 0):
                raise InputError(f"must be a non-negative finite number, got {value}", field=name)
        if self.update not in ("per_demo", "batched"):
            raise InputError(f"unknown update '{self.update}' (expected per_demo or batched)", field="update")
        if self.grad_clip is not None and not (math.isfinite(self.grad_clip) and self.grad_clip > 0):
            raise InputError(f"must be a positive finite number, got {self.grad_clip}", field="grad_clip")

    def inner_kwargs(self) -> dict[str, Any]:
        """The inner loop's settings as keyword arguments of :func:`~mbirl.planning.optimize_actions`."""
        return {"n_steps": self.inner_steps, "lr": self.inner_lr, "optimizer": self.inner_optimizer,
                "tol": self.inner_tol, "truncate": self.truncate_steps, "action_weight": self.action_reg,
                "smooth_weight": self.smooth_reg, "damping": self.implicit_damping, "cg_max_iters": self.cg_iters}


@dataclass(frozen=True)
class DemoBatch:
    """Demonstrations as tensors: ``q0 (B, n_joints)``, ``z (B, T, D)`` flattened keypoints, ``goal (B, D)``."""

    q0: torch.Tensor
    z: torch.Tensor

    @classmethod
    def from_demos(cls, demos: Sequence[KeypointTrajectory], dtype: torch.dtype = torch.float32) -> DemoBatch:
        if not demos:
            raise InputError("no demonstrations selected", field="split")
        q0 = torch.as_tensor(np.stack([d.start_q for d in demos]), dtype=dtype)
        z = torch.as_tensor(np.stack([d.keypoints for d in demos]), dtype=dtype).flatten(-2)
        return cls(q0=q0, z=z)

    @property
    def goal(self) -> torch.Tensor:
        return self.z[:, -1]

    @property
    def horizon(self) -> int:
        return int(self.z.shape[1])

    def __len__(self) -> int:
        return int(self.q0.shape[0])

    def select(self, index: int | slice) -> DemoBatch:
        idx = slice(index, index + 1) if isinstance(index, int) else index
        return DemoBatch(q0=self.q0[idx], z=self.z[idx])

    def to(self, device: torch.device | str) -> DemoBatch:
        """The same demonstrations on ``device``."""
        return DemoBatch(q0=self.q0.to(device), z=self.z.to(device))


def irl_loss(z_pred: torch.Tensor, z_demo: torch.Tensor) -> torch.Tensor:
    """Per-demonstration IRL loss ``sum_t mean_d (z_pred - z_demo)^2``; inputs ``(B, T, D)``, output ``(B,)``."""
    return (z_pred - z_demo).pow(2).sum(1).mean(-1)


def relative_goal_distance(z_pred: torch.Tensor, z_demo: torch.Tensor) -> torch.Tensor:
    """Distance of the final predicted keypoints to the goal, relative to the start's distance, ``(B,)``.

    Per keypoint Euclidean distances, averaged over keypoints: 0 reaches the goal, 1 did not move closer. Only
    keypoints that have somewhere to go count: those whose start is farther from the goal than a thousandth of the
    demonstration's largest start distance (a keypoint that starts at its goal would divide by ~0). A
    demonstration whose keypoints all start at the goal has no relative distance: NaN (``null`` in JSON outputs).
    """
    B, _, D = z_demo.shape
    goal = z_demo[:, -1].reshape(B, D // 3, 3)
    final = z_pred[:, -1].reshape(B, D // 3, 3)
    start = z_demo[:, 0].reshape(B, D // 3, 3)
    start_dist = (start - goal).norm(dim=-1)
    moving = start_dist > 1e-3 * start_dist.amax(-1, keepdim=True)
    ratio = (final - goal).norm(dim=-1) / torch.where(moving, start_dist, torch.ones_like(start_dist))
    count = moving.sum(-1)
    out = torch.where(moving, ratio, torch.zeros_like(ratio)).sum(-1) / count.clamp_min(1)
    return torch.where(count > 0, out, torch.full_like(out, float("nan")))


@dataclass(frozen=True)
class EvalResult:
    """Evaluation of a cost on demonstrations: per-demo IRL loss and relative goal distance, predictions."""

    irl_loss: torch.Tensor
    relative_goal_distance: torch.Tensor
    z_pred: torch.Tensor


@runtime_checkable
class CostLearner(Protocol):
    """What a run needs from a cost learner (:class:`MBIRL`, :class:`~mbirl.algorithms.FeatureMatchingIRL`).

    ``cost`` is the current cost; ``inner`` the inner-loop settings it is planned with (keyword arguments of
    :func:`~mbirl.planning.optimize_actions`); ``iteration`` counts outer iterations done.
    """

    @property
    def cost(self) -> KeypointCost: ...

    @property
    def inner(self) -> dict[str, Any]: ...

    @property
    def dynamics(self) -> KeypointDynamics: ...

    @property
    def train(self) -> DemoBatch: ...

    @property
    def test(self) -> DemoBatch | None: ...

    @property
    def iteration(self) -> int: ...

    def evaluate(self, batch: DemoBatch) -> EvalResult:
        """Plan with the frozen cost through ``dynamics`` and score the plan against ``batch``."""
        ...

    def outer_iteration(self) -> float:
        """One outer iteration; returns the mean training IRL loss measured during it."""
        ...

    def state_dict(self) -> dict[str, Any]:
        """Everything needed to continue learning (a checkpoint's tensors and JSON values)."""
        ...

    def load_state_dict(self, state: dict[str, Any]) -> None: ...


def evaluate_on_robot(learner: CostLearner, model: KeypointDynamics, robot_dynamics: KeypointDynamics,
                      planned: DemoBatch, truth: DemoBatch) -> dict[str, Any]:
    """Plan through ``model`` with the learner's frozen cost (its inner-loop settings, goals from ``planned``),
    execute the actions on the true kinematics ``robot_dynamics`` and score against the ground truth ``truth``.

    Returns per-demonstration ``irl_loss`` and ``relative_goal_distance``, the executed keypoints ``z``
    ``(B, T, D)`` and the ``actions``.
    """
    u, _ = optimize_actions(model, learner.cost, planned.q0, planned.goal, planned.horizon,
                            grad_mode=GradientMode.NONE, **learner.inner)
    with torch.no_grad():
        _, z = robot_dynamics.rollout(truth.q0, u)
    z = z.flatten(-2)
    return {"irl_loss": irl_loss(z, truth.z), "relative_goal_distance": relative_goal_distance(z, truth.z),
            "z": z, "actions": u}


class MBIRL:
    """The bi-level cost learner.

    Args:
        cost: the learnable cost (a cost without parameters is evaluated only).
        dynamics: the differentiable keypoint dynamics used by the inner loop.
        train, test: demonstration batches.
        config: the hyper-parameters (default: :class:`MBIRLConfig`'s defaults).
    """

    def __init__(self, cost: KeypointCost, dynamics: KeypointDynamics, train: DemoBatch,
                 test: DemoBatch | None = None, config: MBIRLConfig | None = None) -> None:
        config = config if config is not None else MBIRLConfig()
        D = dynamics.n_keypoints * 3
        for name, batch in (("train", train), ("test", test)):
            if batch is not None and batch.z.shape[-1] != D:
                raise InputError(f"{name} demonstrations have {batch.z.shape[-1] // 3} keypoints, the robot has "
                                 f"{dynamics.n_keypoints}", field="keypoints")
            if batch is not None and batch.q0.shape[-1] != dynamics.n_joints:
                raise InputError(f"{name} demonstrations have {batch.q0.shape[-1]} joints, the robot has "
                                 f"{dynamics.n_joints}", field="start_q")
        self.config = config
        self.cost = cost
        self.dynamics = dynamics
        self.train = train
        self.test = test
        self.inner = config.inner_kwargs()
        self.grad_mode = GradientMode(config.grad_mode)
        self.params = [p for p in cost.parameters() if p.requires_grad]
        self.optimizer = torch.optim.Adam(self.params, lr=config.outer_lr) if self.params else None
        self.iteration = 0
        self.last_grad_norm = 0.0
        self.clipped = False
        self.last_inner: ActionOptInfo | None = None
        """what the last inner loop did (steps taken, final inner gradient norm)"""

    def predict(self, batch: DemoBatch, *, differentiable: bool) -> torch.Tensor:
        """Keypoints ``(B, T, D)`` after the inner loop with the current cost."""
        mode = self.grad_mode if differentiable else GradientMode.NONE
        u, self.last_inner = optimize_actions(self.dynamics, self.cost, batch.q0, batch.goal, batch.horizon,
                                              grad_mode=mode, **self.inner)
        if differentiable:
            _, z = self.dynamics.rollout(batch.q0, u)
        else:
            with torch.no_grad():
                _, z = self.dynamics.rollout(batch.q0, u)
        return z.flatten(-2)

    def evaluate(self, batch: DemoBatch) -> EvalResult:
        """Optimise actions with the frozen cost and score them against the demonstrations."""
        z = self.predict(batch, differentiable=False)
        return EvalResult(irl_loss(z, batch.z), relative_goal_distance(z, batch.z), z)

    def _step(self, batch: DemoBatch) -> torch.Tensor:
        z = self.predict(batch, differentiable=True)
        losses = irl_loss(z, batch.z)
        loss = losses.mean()
        it = self.iteration + 1
        check_finite(loss, "IRL loss (outer loss)", it)
        assert self.optimizer is not None
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        # Pre-clip total norm (clip_grad_norm_ with max_norm=inf only measures it).
        clip = self.config.grad_clip
        norm = torch.nn.utils.clip_grad_norm_(self.params, clip if clip is not None else float("inf"))
        check_finite(norm, "cost gradient norm", it)
        self.last_grad_norm = float(norm)
        self.clipped = clip is not None and self.last_grad_norm > clip
        self.optimizer.step()
        for name, p in self.cost.named_parameters():
            check_finite(p, f"cost parameter '{name}'", it)
        return losses.detach()

    def outer_iteration(self) -> float:
        """One pass over the training demonstrations; returns their mean IRL loss during the pass."""
        if self.optimizer is None:
            losses = self.evaluate(self.train).irl_loss
        elif self.config.update == "batched":
            losses = self._step(self.train)
        else:
            losses = torch.cat([self._step(self.train.select(i)) for i in range(len(self.train))])
        self.iteration += 1
        return float(losses.mean())

    def state_dict(self) -> dict[str, Any]:
        """Cost parameters, optimiser state and the iteration counter."""
        return {
            "cost": self.cost.state_dict(),
            "optimizer": None if self.optimizer is None else self.optimizer.state_dict(),
            "iteration": self.iteration,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.cost.load_state_dict(state["cost"])
        if (self.optimizer is None) != (state["optimizer"] is None):
            raise ValueError("the checkpoint's cost optimiser does not match this cost's parameters")
        if self.optimizer is not None:
            load_optimizer_state(self.optimizer, state["optimizer"], scheduled=(), name="optimizer")
        self.iteration = int(state["iteration"])
