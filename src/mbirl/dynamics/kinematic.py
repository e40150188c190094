"""Ground-truth keypoint dynamics: ``q_{t+1} = clip(q_t + u_t)``, keypoints ``z_t = FK(q_t)``."""

from __future__ import annotations

from collections.abc import Callable

import torch

from mbirl.dynamics.base import KeypointDynamics
from mbirl.envs.robot import KeypointRobot

__all__ = ["KinematicKeypointDynamics"]


class KinematicKeypointDynamics(KeypointDynamics):
    """Ground-truth dynamics of a :class:`KeypointRobot` (the simulator of the original experiments).

    The joint trajectory is a clipped cumulative sum of the actions (a cheap loop over time); forward
    kinematics for every time step and demonstration then runs as one batched call.
    """

    def __init__(self, robot: KeypointRobot) -> None:
        super().__init__()
        self.robot = robot
        self.n_joints = robot.n_joints
        self.n_keypoints = robot.n_keypoints

    def joint_rollout(self, q0: torch.Tensor, actions: torch.Tensor) -> torch.Tensor:
        """Joint states ``(B, T, n_joints)`` with the joint limits applied at every step."""
        q0 = self.robot.clip(q0)
        # Fast path: when no step reaches a limit the per-step clip is the identity and the trajectory is a
        # plain cumulative sum (same values and gradients, a fraction of the autograd nodes).
        qs = torch.cat([q0.unsqueeze(1), q0.unsqueeze(1) + torch.cumsum(actions, dim=1)], dim=1)
        with torch.no_grad():
            inside = bool(((qs > self.robot.lower) & (qs < self.robot.upper)).all())
        if inside:
            return qs
        q = q0
        qs_list = [q]
        for t in range(actions.shape[1]):
            q = self.robot.clip(q + actions[:, t])
            qs_list.append(q)
        return torch.stack(qs_list, dim=1)

    def rollout(self, q0: torch.Tensor, actions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        q = self.joint_rollout(q0, actions)
        return q, self.robot.keypoints(q)

    def action_gradient(self, q0: torch.Tensor, actions: torch.Tensor, cost_fn: Callable[[torch.Tensor], torch.Tensor],
                        *, create_graph: bool) -> torch.Tensor | None:
        """``d sum(cost_fn(z)) / d actions`` by the chain rule with the analytic keypoint Jacobian.

        ``dC/du_s = sum_{t > s} J(q_t)^T dC/dz_t`` (``J^T dz`` from the joint axes and origins, see
        :meth:`KeypointRobot.keypoints_and_vjp`) while no joint limit is active (then ``q`` is a cumulative
        sum of the actions). This replaces a backward pass through the forward kinematics, so the bi-level
        gradient needs first derivatives of the Jacobian only. Returns None where it does not apply (a limit
        is active, or the robot has no serial keypoint chain); callers then use autograd.
        """
        q = self.joint_rollout(q0, actions)
        if not create_graph:
            q = q.detach()
        out = self.robot.keypoints_and_vjp(q)
        if out is None or actions.shape[1] == 0:
            return None
        with torch.no_grad():
            if not bool(((q > self.robot.lower) & (q < self.robot.upper)).all()):
                return None
        z, vjp = out
        z_flat = z.flatten(-2)
        if not create_graph or not z_flat.requires_grad:  # e.g. the first step, from constant actions
            z_flat = z_flat.detach().requires_grad_(True)
        with torch.enable_grad():
            (dz,) = torch.autograd.grad(cost_fn(z_flat).sum(), z_flat, create_graph=create_graph)
        dq = vjp(dz)  # (B, T, n_joints)
        if not create_graph:
            dq = dq.detach()
        # u_s moves every later state: reverse cumulative sum over t = s + 1 .. T - 1.
        return torch.flip(torch.cumsum(torch.flip(dq[:, 1:], dims=(1,)), dim=1), dims=(1,))
