"""The keypoint dynamics interface used by the MBIRL inner loop."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable

import torch

__all__ = ["KeypointDynamics"]


class KeypointDynamics(torch.nn.Module, ABC):
    """Maps a start joint state and an action sequence to joint and keypoint trajectories.

    State ``s_t = (q_t, z_t)``; actions ``u_t`` are joint-space deltas. Implementations must be
    differentiable in the actions (the inner loop differentiates through them) and batched.
    """

    n_joints: int
    n_keypoints: int

    @abstractmethod
    def rollout(self, q0: torch.Tensor, actions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Roll out ``actions`` from ``q0``.

        Args:
            q0: ``(B, n_joints)`` start joint states.
            actions: ``(B, T - 1, n_joints)`` joint deltas.
        Returns:
            ``(q, z)``: joint states ``(B, T, n_joints)`` and keypoints ``(B, T, k, 3)``, index 0 the start.
        """

    def action_gradient(self, q0: torch.Tensor, actions: torch.Tensor, cost_fn: Callable[[torch.Tensor], torch.Tensor],
                        *, create_graph: bool) -> torch.Tensor | None:
        """Optional fast path: ``d sum(cost_fn(z)) / d actions`` without a backward pass through the model.

        ``cost_fn`` maps flattened keypoints ``(B, T, 3k)`` to per-demo costs ``(B,)``. Return None (the
        default) to let the planner use autograd through :meth:`rollout`.
        """
        return None
