"""Discriminators for adversarial IRL: the AIRL form (reward + potential shaping) and GAIL's.

AIRL (Fu et al. 2018; DESIGN.md "MAIRL in equations")::

    f(s, a, s') = g(s, a) + gamma * (1 - done) * h(s') - h(s)       (h(s') = 0 after a terminal transition)
    D logit     = f(s, a, s') - log pi(a | s)

trained with binary cross-entropy, expert = 1, agent = 0. ``g`` alone is the transferable reward; with
``state_only=True`` it is ``g(s)``. The policy's reward is ``f - alpha * log pi`` (the trainer adds the entropy term).

GAIL: an unconstrained logit ``D(s, a)``; the policy's reward is ``log sigmoid(D)`` (= log of the probability of
"expert"), whose gradient does not vanish when the agent is easily told apart.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from mbirl.errors import InputError
from mbirl.nets import mlp

__all__ = ["AIRLDiscriminator", "Discriminator", "GAILDiscriminator", "make_discriminator"]




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

    def loss(self, expert: dict[str, torch.Tensor], agent: dict[str, torch.Tensor], expert_weight: float = 1.0,
             grad_penalty: float = 0.0) -> tuple[torch.Tensor, dict[str, float]]:
        """Binary cross-entropy (expert = 1, agent = 0) on two batches of ``obs, act, next_obs, done, log_pi``;
        returns the loss and statistics.

        ``grad_penalty`` > 0 adds ``grad_penalty * E ||d reward / d(s, a, s')||^2`` over both batches (a
        zero-centred gradient penalty): the policy follows the reward's input gradient, so a smooth reward is
        what makes the pathwise update informative rather than erratic.
        """
        inputs = {k: (torch.cat([expert[k], agent[k]]).requires_grad_(grad_penalty > 0)
                      if k in ("obs", "act", "next_obs") else torch.cat([expert[k], agent[k]]))
                  for k in ("obs", "act", "next_obs", "done", "log_pi")}
        logits = self.logits(inputs["obs"], inputs["act"], inputs["next_obs"], inputs["done"], inputs["log_pi"])
        n = len(expert["obs"])
        le, la = logits[:n], logits[n:]
        loss = expert_weight * F.binary_cross_entropy_with_logits(le, torch.ones_like(le)) + \
            F.binary_cross_entropy_with_logits(la, torch.zeros_like(la))
        stats = {"expert_acc": float((le > 0).float().mean()), "agent_acc": float((la < 0).float().mean()),
                 "grad_penalty": 0.0}
        if grad_penalty > 0:
            reward = (logits + inputs["log_pi"]) if self.uses_log_pi else logits
            grads = torch.autograd.grad(reward.sum(), [inputs["obs"], inputs["act"], inputs["next_obs"]],
                                        create_graph=True, allow_unused=True)
            sq = sum((g**2).sum(-1) for g in grads if g is not None)
            gp = torch.as_tensor(sq).mean()
            loss = loss + grad_penalty * gp
            stats["grad_penalty"] = float(gp.detach())
        return loss, stats


class AIRLDiscriminator(Discriminator):
    """AIRL: ``f = g(s, a) + gamma (1 - done) h(s') - h(s)``, logit ``f - log pi``.

    Args:
        gamma: discount of the shaping term.
        hidden: hidden widths of ``g`` and ``h`` (the original uses [200, 100]).
        state_only: ``g(s)`` instead of ``g(s, a)`` (the reward that transfers to changed dynamics).
    """

    def __init__(self, obs_dim: int, act_dim: int, gamma: float = 0.99, hidden: tuple[int, ...] = (200, 100),
                 state_only: bool = False) -> None:
        super().__init__(obs_dim, act_dim)
        if not 0.0 < gamma <= 1.0:
            raise InputError(f"gamma must be in (0, 1], got {gamma}", field="gamma")
        self.gamma, self.state_only = gamma, state_only
        self.g_net = mlp([obs_dim + (0 if state_only else act_dim), *hidden, 1])
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

    def __init__(self, obs_dim: int, act_dim: int, hidden: tuple[int, ...] = (200, 100)) -> None:
        super().__init__(obs_dim, act_dim)
        self.net = mlp([obs_dim + act_dim, *hidden, 1])

    def logits(self, obs: torch.Tensor, act: torch.Tensor, next_obs: torch.Tensor, done: torch.Tensor,
               log_pi: torch.Tensor) -> torch.Tensor:
        return self.net(torch.cat([self._n(obs), act / self.act_scale], -1))[..., 0]

    def reward(self, obs: torch.Tensor, act: torch.Tensor, next_obs: torch.Tensor, done: torch.Tensor
               ) -> torch.Tensor:
        return F.logsigmoid(self.logits(obs, act, next_obs, done, torch.zeros_like(done)))


def make_discriminator(kind: str, obs_dim: int, act_dim: int, **kwargs: Any) -> Discriminator:
    """``airl`` (optionally ``state_only=True``) or ``gail``."""
    if kind == "airl":
        return AIRLDiscriminator(obs_dim, act_dim, **kwargs)
    if kind == "gail":
        kwargs.pop("gamma", None)
        kwargs.pop("state_only", None)
        return GAILDiscriminator(obs_dim, act_dim, **kwargs)
    raise InputError(f"unknown discriminator '{kind}' (expected airl or gail)", field="discriminator")
