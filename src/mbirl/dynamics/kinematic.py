"""Ground-truth keypoint dynamics: ``q_{t+1} = clip(q_t + u_t)``, keypoints ``z_t = FK(q_t)``."""

from __future__ import annotations

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
        q = self.robot.clip(q0)
        qs = [q]
        for t in range(actions.shape[1]):
            q = self.robot.clip(q + actions[:, t])
            qs.append(q)
        return torch.stack(qs, dim=1)

    def rollout(self, q0: torch.Tensor, actions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        q = self.joint_rollout(q0, actions)
        return q, self.robot.keypoints(q)
