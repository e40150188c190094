"""MAIRL's stochastic policies: a squashed Gaussian for continuous actions and a straight-through Gumbel-softmax
categorical for discrete ones. Both sample with an explicit generator (reparameterised, so the pathwise gradient of
:func:`mbirl.algorithms.mairl.model_based_rollout_loss` flows through the sample) and standardise observations with
buffers set by :meth:`set_normalizer`."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch
from torch import nn

from mbirl.errors import InputError
from mbirl.nets import mlp

__all__ = ["GaussianPolicy", "GumbelPolicy", "Policy"]


class _Policy(nn.Module):
    """Shared parts: observation standardisation (buffers) and an MLP body."""

    discrete: bool = False
    obs_mean: torch.Tensor
    obs_std: torch.Tensor

    def __init__(self, obs_dim: int, out_dim: int, hidden: Sequence[int]) -> None:
        super().__init__()
        self.obs_dim, self.act_dim = obs_dim, out_dim
        self.register_buffer("obs_mean", torch.zeros(obs_dim))
        self.register_buffer("obs_std", torch.ones(obs_dim))
        self.net = mlp([obs_dim, *hidden, out_dim])
        last = self.net[-1]
        assert isinstance(last, nn.Linear)
        with torch.no_grad():  # start near the centre of the action space / a uniform distribution
            last.weight.mul_(0.01)
            last.bias.zero_()

    def set_normalizer(self, obs: torch.Tensor) -> None:
        self.obs_mean.copy_(obs.mean(0))
        self.obs_std.copy_(obs.std(0).clamp_min(1e-3))

    def _out(self, obs: torch.Tensor) -> torch.Tensor:
        return self.net((obs - self.obs_mean) / self.obs_std)


class GaussianPolicy(_Policy):
    """``a = mu(s) + sigma * eps`` with ``mu`` squashed into the action box and a fixed per-dimension ``sigma``.

    The action the environment receives is clipped to the box; the action the model and discriminator see has
    the clipped value and the unclipped gradient (straight-through clipping).
    """

    low: torch.Tensor
    high: torch.Tensor
    sigma: torch.Tensor

    def __init__(self, obs_dim: int, low: np.ndarray, high: np.ndarray, sigma: np.ndarray,
                 hidden: Sequence[int]) -> None:
        super().__init__(obs_dim, len(low), hidden)
        self.register_buffer("low", torch.as_tensor(low, dtype=torch.float32))
        self.register_buffer("high", torch.as_tensor(high, dtype=torch.float32))
        self.register_buffer("sigma", torch.as_tensor(sigma, dtype=torch.float32))

    @classmethod
    def for_demos(cls, obs_dim: int, low: np.ndarray, high: np.ndarray, demo_acts: np.ndarray, *, sigma_scale: float,
                  sigma_floor: float, hidden: Sequence[int]) -> GaussianPolicy:
        """The policy whose noise is ``sigma = std(expert actions) * sigma_scale`` (the original: 1/6), floored at
        ``sigma_floor`` of the action half-range so that exploration never vanishes."""
        acts = _clip(demo_acts, low, high)
        sigma = np.maximum(acts.std(0) * sigma_scale, sigma_floor * (high - low) / 2)
        return cls(obs_dim, low, high, sigma, hidden)

    def encode_actions(self, acts: np.ndarray) -> np.ndarray:
        """Environment actions ``(N, ...)`` as the ``(N, act_dim)`` float32 actions the networks see (clipped)."""
        return _clip(acts, self.low.cpu().numpy(), self.high.cpu().numpy())

    def action_scale(self) -> torch.Tensor:
        """Half-range of the action box, ``(act_dim,)`` (the model's and discriminator's action scale)."""
        return (self.high - self.low) / 2

    def mean(self, obs: torch.Tensor) -> torch.Tensor:
        centre, half = (self.high + self.low) / 2, (self.high - self.low) / 2
        return centre + half * torch.tanh(self._out(obs))

    def saturation(self, obs: torch.Tensor) -> torch.Tensor:
        """Mean squared pre-squash output: penalised so that ``tanh`` cannot saturate and kill the gradient."""
        return (self._out(obs) ** 2).mean()

    def sample(self, obs: torch.Tensor, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        """Reparameterised sample: ``(action for model/discriminator (B, act_dim), log pi (B,))``."""
        mu = self.mean(obs)
        eps = torch.randn(mu.shape, generator=generator, dtype=mu.dtype, device=generator.device).to(mu.device)
        a = mu + self.sigma * eps
        a = a + (torch.maximum(torch.minimum(a, self.high), self.low) - a).detach()
        return a, self.log_prob(obs, a, mu=mu)

    def log_prob(self, obs: torch.Tensor, act: torch.Tensor, mu: torch.Tensor | None = None) -> torch.Tensor:
        """Gaussian log-density ``-sum_d [(a - mu)^2 / (2 sigma^2) + log sigma + log(2 pi) / 2]`` (note sigma^2:
        the original code divided by 2 sigma)."""
        mu = self.mean(obs) if mu is None else mu
        z = (act - mu) / self.sigma
        return -(0.5 * z**2 + torch.log(self.sigma) + 0.5 * math.log(2 * math.pi)).sum(-1)

    def act(self, obs: torch.Tensor) -> torch.Tensor:
        """Deterministic action (the mean), for evaluation."""
        return self.mean(obs)

    def env_action(self, act: torch.Tensor) -> np.ndarray:
        return act.detach().cpu().numpy()


class GumbelPolicy(_Policy):
    """Categorical policy sampled with the straight-through Gumbel-softmax: a hard one-hot action in the forward
    pass, the gradient of the tempered softmax in the backward pass."""

    discrete = True

    def __init__(self, obs_dim: int, n_actions: int, tau: float, hidden: Sequence[int]) -> None:
        super().__init__(obs_dim, n_actions, hidden)
        if tau <= 0:
            raise InputError(f"must be > 0, got {tau}", field="gumbel_tau")
        self.tau = tau

    def encode_actions(self, acts: np.ndarray) -> np.ndarray:
        """Integer actions ``(N,)`` as ``(N, n_actions)`` float32 one-hot rows."""
        return np.eye(self.act_dim, dtype=np.float32)[acts]

    def action_scale(self) -> torch.Tensor:
        return torch.ones(self.act_dim, device=self.obs_mean.device)

    def sample(self, obs: torch.Tensor, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        logits = self._out(obs)
        u = torch.rand(logits.shape, generator=generator, dtype=logits.dtype, device=generator.device
                       ).to(logits.device).clamp(1e-10, 1 - 1e-7)
        y = torch.softmax((logits - torch.log(-torch.log(u))) / self.tau, -1)
        hard = nn.functional.one_hot(y.argmax(-1), self.act_dim).to(y.dtype)
        a = hard + y - y.detach()
        return a, self.log_prob(obs, hard.detach(), logits=logits)

    def log_prob(self, obs: torch.Tensor, act: torch.Tensor, logits: torch.Tensor | None = None) -> torch.Tensor:
        """``log softmax(logits)`` of the one-hot ``act``."""
        logits = self._out(obs) if logits is None else logits
        return (torch.log_softmax(logits, -1) * act).sum(-1)

    def saturation(self, obs: torch.Tensor) -> torch.Tensor:
        """Mean squared centred logit (keeps the softmax away from a frozen, saturated choice)."""
        logits = self._out(obs)
        return ((logits - logits.mean(-1, keepdim=True)) ** 2).mean()

    def act(self, obs: torch.Tensor) -> torch.Tensor:
        return nn.functional.one_hot(self._out(obs).argmax(-1), self.act_dim).float()

    def env_action(self, act: torch.Tensor) -> np.ndarray:
        return act.detach().argmax(-1).cpu().numpy()


Policy = GaussianPolicy | GumbelPolicy


def _clip(acts: np.ndarray, low: np.ndarray, high: np.ndarray) -> np.ndarray:
    return np.clip(acts.reshape(len(acts), -1).astype(np.float32), low, high)
