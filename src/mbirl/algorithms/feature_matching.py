"""Feature-matching IRL after Abbeel & Ng (2004), the MBIRL paper's "Weighted Abbeel" baseline.

Features of a trajectory are the per-dimension squared distances to the goal averaged over time,
``phi_d = mean_t (z_{t,d} - g_d)^2``, so a weight vector ``w`` defines exactly the weighted cost
``c = w . phi`` of :class:`~mbirl.costs.WeightedCost`. The projection algorithm (Abbeel & Ng, Sec. 3.1)
alternates: plan with the current cost (the same inner loop as MBIRL), measure the plan's feature
expectations, project, and set the cost weights to ``mu_bar - mu_E`` (cost = minus the reward
``(mu_E - mu_bar) . phi``), clipped at zero (a cost that rewards moving away from the goal is not a
keypoint cost) and normalised. Feature matching fixes the weights' direction only; because the inner
planner is a few gradient steps, not an exact optimiser, the scale matters, so it is chosen on a log
grid to minimise the feature-expectation distance ``||mu(plan) - mu_E||`` on the training demonstrations
(the feature-matching objective itself; the IRL loss is never used). The inner loop's settings are
:class:`~mbirl.algorithms.MBIRLConfig`'s (the outer-loop ones do not apply).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from mbirl.algorithms.mbirl import DemoBatch, EvalResult, MBIRLConfig, irl_loss, relative_goal_distance
from mbirl.costs.linear import WeightedCost
from mbirl.dynamics.base import KeypointDynamics
from mbirl.planning.gradient_mpc import GradientMode, optimize_actions

__all__ = ["FeatureMatchingIRL", "feature_expectations"]


def feature_expectations(z: torch.Tensor, goal: torch.Tensor) -> torch.Tensor:
    """Mean over demonstrations and time of the squared distance to the goal, ``(D,)``."""
    return (z - goal.unsqueeze(1)).pow(2).mean(dim=(0, 1))


class FeatureMatchingIRL:
    """Apprenticeship learning by feature matching (projection method) producing a weighted cost.

    Args:
        dynamics: the keypoint dynamics the plans are made with.
        train, test: demonstration batches.
        config: the inner loop's settings are taken from it (default: :class:`MBIRLConfig`'s defaults).
    """

    def __init__(self, dynamics: KeypointDynamics, train: DemoBatch, test: DemoBatch | None = None,
                 config: MBIRLConfig | None = None) -> None:
        self.config = config if config is not None else MBIRLConfig()
        self.dynamics = dynamics
        self.train = train
        self.test = test
        self.inner = self.config.inner_kwargs()
        self.mu_expert = feature_expectations(train.z, train.goal)
        # pi_0 is the zero-action plan; its features start the projection.
        z0 = self._plan(torch.zeros_like(self.mu_expert), train)
        self.mu_bar = feature_expectations(z0, train.goal)
        self.scales = torch.logspace(-3, 1, 17, device=train.z.device)
        self.cost = WeightedCost(train.z.shape[-1], weights=self._weights())
        self.iteration = 0
        self.margin = float((self.mu_expert - self.mu_bar).norm())

    def _weights(self) -> torch.Tensor:
        w = (self.mu_bar - self.mu_expert).clamp_min(0.0)
        w = w / w.norm().clamp_min(1e-12)
        # Pick the scale whose plan best matches the expert's feature expectations.
        errors = [float((feature_expectations(self._plan(s * w, self.train), self.train.goal) - self.mu_expert).norm())
                  for s in self.scales]
        return self.scales[int(np.argmin(errors))] * w

    def _plan(self, weights: torch.Tensor, batch: DemoBatch) -> torch.Tensor:
        cost = WeightedCost(batch.z.shape[-1], weights=weights)
        u, _ = optimize_actions(self.dynamics, cost, batch.q0, batch.goal, batch.horizon,
                                grad_mode=GradientMode.NONE, **self.inner)
        with torch.no_grad():
            _, z = self.dynamics.rollout(batch.q0, u)
        return z.flatten(-2)

    def evaluate(self, batch: DemoBatch) -> EvalResult:
        z = self._plan(self.cost.weights, batch)
        return EvalResult(irl_loss(z, batch.z), relative_goal_distance(z, batch.z), z)

    def outer_iteration(self) -> float:
        """One projection step; returns the mean IRL loss of the plan on the training demonstrations."""
        z = self._plan(self.cost.weights, self.train)
        mu = feature_expectations(z, self.train.goal)
        d = mu - self.mu_bar
        denom = float(d @ d)
        if denom > 1e-12:
            self.mu_bar = self.mu_bar + (d @ (self.mu_expert - self.mu_bar)) / denom * d
        self.margin = float((self.mu_expert - self.mu_bar).norm())
        self.cost = WeightedCost(self.train.z.shape[-1], weights=self._weights())
        self.iteration += 1
        return float(irl_loss(z, self.train.z).mean())

    def state_dict(self) -> dict[str, Any]:
        return {"mu_bar": self.mu_bar.clone(), "iteration": self.iteration}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.mu_bar = state["mu_bar"].to(self.mu_expert.device, copy=True)
        self.iteration = int(state["iteration"])
        self.margin = float((self.mu_expert - self.mu_bar).norm())
        self.cost = WeightedCost(self.train.z.shape[-1], weights=self._weights())
