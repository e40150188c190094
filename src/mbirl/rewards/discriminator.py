"""Discriminators for adversarial IRL: the AIRL form (reward + potential shaping) and GAIL's.

AIRL (Fu et al. 2018; docs/design.md, "MAIRL")::

    f(s, a, s') = g(s, a) + gamma * (1 - done) * h(s') - h(s)       (h(s') = 0 after a terminal transition)
    D logit     = f(s, a, s') - log pi(a | s)

trained with binary cross-entropy, expert = 1, agent = 0. ``g`` alone is the transferable reward; with
``state_only=True`` it is ``g(s)``. The policy's reward is ``f - alpha * log pi`` (the trainer adds the entropy term).

GAIL: an unconstrained logit ``D(s, a)``; the policy's reward is ``log sigmoid(D)`` (= log of the probability of
"expert"), whose gradient does not vanish when the agent is easily told apart.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from mbirl.errors import InputError, check_finite
from mbirl.nets import mlp
from mbirl.registry import Registry
from mbirl.types import TransitionBatch

__all__ = ["DISCRIMINATORS", "AIRLDiscriminator", "Discriminator", "GAILDiscriminator", "mean_update_stats"]


class Discriminator(nn.Module, ABC):
    """Discriminator interface. Inputs are raw observations ``(B, obs_dim)`` (standardised inside with buffers
    set by :meth:`set_normalizer`), actions ``(B, act_dim)`` (one-hot for discrete spaces), next observations,
    ``done`` ``(B,)`` (1.0 for terminal transitions) and ``log_pi`` ``(B,)`` (the policy's log-density of ``a``)."""

    obs_mean: torch.Tensor
    obs_std: torch.Tensor
    act_scale: torch.Tensor

    def __init__(self, obs_dim: int, act_dim: int) -> None:
        super().__init__()
        self.obs_dim, self.act_dim = obs_dim, act_dim
        self.register_buffer("obs_mean", torch.zeros(obs_dim))
        self.register_buffer("obs_std", torch.ones(obs_dim))
        self.register_buffer("act_scale", torch.ones(act_dim))

    def set_normalizer(self, obs: torch.Tensor, act_scale: torch.Tensor | None = None) -> None:
        self.obs_mean.copy_(obs.mean(0))
        self.obs_std.copy_(obs.std(0).clamp_min(1e-3))
        if act_scale is not None:
            self.act_scale.copy_(act_scale.clamp_min(1e-6))

    def _n(self, obs: torch.Tensor) -> torch.Tensor:
        return (obs - self.obs_mean) / self.obs_std

    @abstractmethod
    def logits(self, obs: torch.Tensor, act: torch.Tensor, next_obs: torch.Tensor, done: torch.Tensor,
               log_pi: torch.Tensor) -> torch.Tensor:
        """Logit of "this transition is the expert's", shape ``(B,)``."""

    @abstractmethod
    def reward(self, obs: torch.Tensor, act: torch.Tensor, next_obs: torch.Tensor, done: torch.Tensor
               ) -> torch.Tensor:
        """The reward the policy maximises (differentiable in all inputs), shape ``(B,)``."""

    uses_log_pi: bool = True

    def loss(self, expert: TransitionBatch, agent: TransitionBatch, expert_weight: float,
             grad_penalty: float = 0.0) -> tuple[torch.Tensor, dict[str, float]]:
        """Binary cross-entropy (expert = 1, agent = 0) on two batches of transitions; returns the loss and
        statistics. Both batches need ``log_pi`` when the logit uses it (:attr:`uses_log_pi`).

        ``grad_penalty`` > 0 adds ``grad_penalty * E ||d reward / d(s, a, s')||^2`` over both batches (a
        zero-centred gradient penalty): the policy follows the reward's input gradient, so a smooth reward is
        what makes the pathwise update informative rather than erratic.
        """
        track = grad_penalty > 0
        obs = torch.cat([expert.obs, agent.obs]).requires_grad_(track)
        act = torch.cat([expert.act, agent.act]).requires_grad_(track)
        next_obs = torch.cat([expert.next_obs, agent.next_obs]).requires_grad_(track)
        done = torch.cat([expert.done, agent.done])
        log_pi = torch.cat([self._log_pi(expert), self._log_pi(agent)])
        logits = self.logits(obs, act, next_obs, done, log_pi)
        n = len(expert)
        le, la = logits[:n], logits[n:]
        loss = expert_weight * F.binary_cross_entropy_with_logits(le, torch.ones_like(le)) + \
            F.binary_cross_entropy_with_logits(la, torch.zeros_like(la))
        stats = {"expert_acc": float((le > 0).float().mean()), "agent_acc": float((la < 0).float().mean()),
                 "grad_penalty": 0.0}
        if track:
            reward = (logits + log_pi) if self.uses_log_pi else logits
            grads = torch.autograd.grad(reward.sum(), [obs, act, next_obs], create_graph=True, allow_unused=True)
            sq = sum((g**2).sum(-1) for g in grads if g is not None)
            gp = torch.as_tensor(sq).mean()
            loss = loss + grad_penalty * gp
            stats["grad_penalty"] = float(gp.detach())
        return loss, stats


    def update(self, optimizer: torch.optim.Optimizer, expert: TransitionBatch, agent: TransitionBatch,
               expert_weight: float, grad_penalty: float = 0.0, *, iteration: int) -> tuple[float, float, float]:
        """One optimiser step on :meth:`loss`; returns (loss, expert accuracy, agent accuracy). A non-finite loss
        stops the run (:class:`~mbirl.errors.NonFiniteError`) before the step."""
        loss, stats = self.loss(expert, agent, expert_weight, grad_penalty)
        check_finite(loss, "discriminator loss", iteration)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        return float(loss.detach()), stats["expert_acc"], stats["agent_acc"]
    def _log_pi(self, batch: TransitionBatch) -> torch.Tensor:
        if batch.log_pi is not None:
            return batch.log_pi
        if self.uses_log_pi:
            raise InputError("the transitions need log_pi (the policy's log-density of their actions)",
                             field="log_pi")
        return torch.zeros_like(batch.done)


class AIRLDiscriminator(Discriminator):
    """AIRL: ``f = g(s, a) + gamma (1 - done) h(s') - h(s)``, logit ``f - log pi``.

    Args:
        gamma: discount of the shaping term.
        hidden: hidden widths of ``h`` and, unless ``reward_hidden`` is given, of ``g`` (the original uses
            [200, 100]).
        state_only: ``g(s)`` instead of ``g(s, a)`` (the reward that transfers to changed dynamics).
        reward_hidden: hidden widths of ``g`` when they differ from ``h``'s (None: ``hidden``).
    """

    def __init__(self, obs_dim: int, act_dim: int, *, gamma: float, hidden: Sequence[int],
                 state_only: bool = False, reward_hidden: Sequence[int] | None = None) -> None:
        super().__init__(obs_dim, act_dim)
        if not 0.0 < gamma <= 1.0:
            raise InputError(f"gamma must be in (0, 1], got {gamma}", field="gamma")
        self.gamma, self.state_only = gamma, state_only
        g_hidden = hidden if reward_hidden is None else reward_hidden
        self.g_net = mlp([obs_dim + (0 if state_only else act_dim), *g_hidden, 1])
        self.h_net = mlp([obs_dim, *hidden, 1])

    def g(self, obs: torch.Tensor, act: torch.Tensor) -> torch.Tensor:
        """The reward term (transferable when ``state_only``), shape ``(B,)``."""
        x = self._n(obs) if self.state_only else torch.cat([self._n(obs), act / self.act_scale], -1)
        return self.g_net(x)[..., 0]

    def h(self, obs: torch.Tensor) -> torch.Tensor:
        """The shaping potential, shape ``(B,)``."""
        return self.h_net(self._n(obs))[..., 0]

    def f(self, obs: torch.Tensor, act: torch.Tensor, next_obs: torch.Tensor, done: torch.Tensor) -> torch.Tensor:
        return self.g(obs, act) + self.gamma * (1.0 - done) * self.h(next_obs) - self.h(obs)

    def logits(self, obs: torch.Tensor, act: torch.Tensor, next_obs: torch.Tensor, done: torch.Tensor,
               log_pi: torch.Tensor) -> torch.Tensor:
        return self.f(obs, act, next_obs, done) - log_pi

    def reward(self, obs: torch.Tensor, act: torch.Tensor, next_obs: torch.Tensor, done: torch.Tensor
               ) -> torch.Tensor:
        return self.f(obs, act, next_obs, done)


class GAILDiscriminator(Discriminator):
    """GAIL: a free logit ``D(s, a)``; reward ``log sigmoid(D)``. ``log_pi`` is ignored."""

    uses_log_pi = False

    def __init__(self, obs_dim: int, act_dim: int, *, hidden: Sequence[int]) -> None:
        super().__init__(obs_dim, act_dim)
        self.net = mlp([obs_dim + act_dim, *hidden, 1])

    def logits(self, obs: torch.Tensor, act: torch.Tensor, next_obs: torch.Tensor, done: torch.Tensor,
               log_pi: torch.Tensor) -> torch.Tensor:
        return self.net(torch.cat([self._n(obs), act / self.act_scale], -1))[..., 0]

    def reward(self, obs: torch.Tensor, act: torch.Tensor, next_obs: torch.Tensor, done: torch.Tensor
               ) -> torch.Tensor:
        return F.logsigmoid(self.logits(obs, act, next_obs, done, torch.zeros_like(done)))


DISCRIMINATORS = Registry[Discriminator]("discriminator")
"""The discriminators by name, each built with ``DISCRIMINATORS.make(name, obs_dim=..., act_dim=..., gamma=...,
hidden=..., state_only=...)``: ``airl`` (:class:`AIRLDiscriminator`) and ``gail`` (:class:`GAILDiscriminator`)."""


@DISCRIMINATORS.register("airl")
def _airl(**kwargs: Any) -> Discriminator:
    return AIRLDiscriminator(**kwargs)


@DISCRIMINATORS.register("gail")
def _gail(*, gamma: float | None = None, state_only: bool = False, **kwargs: Any) -> Discriminator:
    """GAIL has no shaping term (``gamma`` is accepted and unused) and no state-only form."""
    if state_only:
        raise InputError("the GAIL discriminator (variant mgail) has no state-only form", field="state_only")
    return GAILDiscriminator(**kwargs)


def mean_update_stats(rows: Sequence[tuple[float, float, float]]) -> tuple[float, float, float]:
    """Mean (loss, expert accuracy, agent accuracy) of a block of :meth:`Discriminator.update` results (NaNs for an
    empty block)."""
    if not rows:
        return float("nan"), float("nan"), float("nan")
    loss, expert_acc, agent_acc = np.asarray(rows, dtype=np.float64).mean(0)
    return float(loss), float(expert_acc), float(agent_acc)
