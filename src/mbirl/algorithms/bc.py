"""Behaviour cloning (BC): the policy that maximises the likelihood of the demonstrated actions.

The baseline every imitation method is compared with. A Gaussian MLP policy with a state-independent learned
log-std for Box actions (its deterministic action is the mean, clipped into the box), a categorical MLP for Discrete
ones (deterministic action: the arg-max). Observations are standardised with the statistics of the training
demonstrations, Box actions are fitted in units of the action box's half-range (centred on its middle).

Training is minibatch maximum likelihood on the transitions of the training episodes, with the ``imitation``
library's loss ``-log pi(a|s) - ent_weight * entropy + l2_weight * |theta|^2 / 2``. A fraction of the demonstration
*episodes* (at least one) is held out: after every epoch the held-out negative log-likelihood is measured, the
weights with the lowest one are kept, and training stops after ``patience`` epochs without improvement (or after
``max_epochs``). The kept weights are the policy that is evaluated and exported.

In the imitation harness (:mod:`mbirl.experiments.imitation`) BC is an *offline* learner: one iteration is one
epoch, it takes no environment steps (``env_steps`` stays 0; the run's environment-step budget does not apply) and
it is evaluated before training and once it stops.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from mbirl.algorithms.learner import EVAL_SEED, StepInfo, evaluate_policy, numpy_rng_state, set_numpy_rng_state
from mbirl.errors import InputError, check_finite
from mbirl.experts.demos import DemoStats, check_demo_spaces
from mbirl.experts.rollout import EpisodeResult
from mbirl.nets import DEFAULT_DEVICE, resolve_device
from mbirl.reporting.checkpoint import load_optimizer_state

__all__ = ["BC", "BCConfig", "BCPolicy", "build_bc"]


@dataclass(frozen=True)
class BCConfig:
    """Behaviour cloning's hyper-parameters (validated on construction).

    The optimisation defaults are those of the ``imitation`` library's ``BC`` (``imitation.algorithms.bc``): Adam
    with learning rate 1e-3 (torch's default; ``imitation`` passes no learning rate), minibatches of 32 with the
    last incomplete one of an epoch dropped, entropy weight 1e-3, no L2 penalty, and its default policy
    ``FeedForward32Policy``: Stable-Baselines3's ``ActorCriticPolicy`` with two hidden layers of 32 tanh units, a
    state-independent log-std initialised at 0 and an output layer initialised with gain 0.01. ``imitation`` trains
    for a fixed number of epochs on all the data; the held-out early stopping (``holdout``, ``patience``,
    ``max_epochs``) is this package's, so that no choice of epochs needs the true reward.
    """

    hidden: tuple[int, ...] = (32, 32)
    """hidden widths of the policy MLP (tanh between layers)"""
    lr: float = 1e-3
    """Adam learning rate"""
    batch_size: int = 32
    """transitions per minibatch (an epoch's last incomplete minibatch is dropped)"""
    ent_weight: float = 1e-3
    """weight of the entropy bonus in the loss"""
    l2_weight: float = 0.0
    """weight of the L2 penalty ``|theta|^2 / 2`` on all policy parameters"""
    log_std_init: float = 0.0
    """initial log-std of the Gaussian policy, in units of the action half-range (Box actions)"""
    holdout: float = 0.2
    """fraction of the demonstration episodes held out for early stopping (rounded, at least one; at least one
    episode is kept for training)"""
    patience: int = 20
    """epochs without a lower held-out negative log-likelihood before training stops"""
    max_epochs: int = 500
    """epochs at most"""

    def __post_init__(self) -> None:
        for name in ("batch_size", "patience", "max_epochs"):
            if getattr(self, name) < 1:
                raise InputError(f"must be >= 1, got {getattr(self, name)}", field=name)
        if not (math.isfinite(self.lr) and self.lr > 0):
            raise InputError(f"must be a positive finite number, got {self.lr}", field="lr")
        for name in ("ent_weight", "l2_weight"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value >= 0):
                raise InputError(f"must be a finite number >= 0, got {value}", field=name)
        if not math.isfinite(self.log_std_init):
            raise InputError(f"must be finite, got {self.log_std_init}", field="log_std_init")
        if not 0.0 < self.holdout < 1.0:
            raise InputError(f"must be in (0, 1), got {self.holdout}", field="holdout")
        if any(width < 1 for width in self.hidden):
            raise InputError(f"widths must be >= 1, got {list(self.hidden)}", field="hidden")


class BCPolicy(nn.Module):
    """A stochastic MLP policy: diagonal Gaussian (Box actions, in units of the half-range around the box's
    centre) or categorical (Discrete actions), on standardised observations.

    Args:
        obs_mean, obs_std: observation standardisation ``(obs_dim,)``.
        n_actions: the number of discrete actions, or None for Box actions.
        low, high: the action box (Box actions).
        hidden: hidden widths.
        log_std_init: initial log-std (Box actions).
    """

    obs_mean: torch.Tensor
    obs_std: torch.Tensor
    act_center: torch.Tensor
    act_scale: torch.Tensor
    low: torch.Tensor
    high: torch.Tensor

    def __init__(self, obs_mean: np.ndarray, obs_std: np.ndarray, *, n_actions: int | None,
                 low: np.ndarray | None, high: np.ndarray | None, hidden: Sequence[int], log_std_init: float
                 ) -> None:
        super().__init__()
        self.discrete = n_actions is not None
        obs_dim = len(obs_mean)
        if n_actions is not None:
            act_dim = n_actions
            low = high = np.zeros(0, np.float32)
        else:
            assert low is not None and high is not None
            act_dim = len(low)
        self.register_buffer("obs_mean", torch.as_tensor(obs_mean, dtype=torch.float32))
        self.register_buffer("obs_std", torch.as_tensor(obs_std, dtype=torch.float32))
        self.register_buffer("low", torch.as_tensor(low, dtype=torch.float32))
        self.register_buffer("high", torch.as_tensor(high, dtype=torch.float32))
        self.register_buffer("act_center", (self.high + self.low) / 2)
        self.register_buffer("act_scale", (self.high - self.low) / 2)
        sizes = [obs_dim, *hidden, act_dim]
        layers: list[nn.Module] = []
        for i in range(len(sizes) - 1):
            layers.append(nn.Linear(sizes[i], sizes[i + 1]))
            if i < len(sizes) - 2:
                layers.append(nn.Tanh())
        self.net = nn.Sequential(*layers)
        last = layers[-1]
        assert isinstance(last, nn.Linear)
        with torch.no_grad():  # start near the centre of the box / a uniform distribution
            last.weight.mul_(0.01)
            last.bias.zero_()
        self.log_std = None if self.discrete else nn.Parameter(torch.full((act_dim,), float(log_std_init)))

    def encode_actions(self, acts: np.ndarray) -> torch.Tensor:
        """Demonstrated environment actions as the policy fits them: indices (Discrete) or ``(N, act_dim)``
        offsets from the box's centre in half-ranges, clipped to the box (Box)."""
        if self.discrete:
            return torch.as_tensor(np.asarray(acts), dtype=torch.long, device=self.obs_mean.device)
        a = torch.as_tensor(np.asarray(acts, np.float32).reshape(len(acts), -1), device=self.low.device)
        return (torch.minimum(torch.maximum(a, self.low), self.high) - self.act_center) / self.act_scale

    def distribution(self, obs: torch.Tensor) -> torch.distributions.Distribution:
        out = self.net((obs - self.obs_mean) / self.obs_std)
        if self.discrete:
            return torch.distributions.Categorical(logits=out)
        assert self.log_std is not None
        return torch.distributions.Normal(out, self.log_std.exp().expand_as(out))

    def log_prob_entropy(self, obs: torch.Tensor, act: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``log pi(act | obs)`` and the entropy of ``pi(. | obs)``, each ``(N,)`` (encoded actions)."""
        dist = self.distribution(obs)
        if self.discrete:
            return dist.log_prob(act), dist.entropy()
        return dist.log_prob(act).sum(-1), dist.entropy().sum(-1)

    def act(self, obs: torch.Tensor) -> torch.Tensor:
        """Deterministic environment actions: the arg-max (Discrete) or the mean clipped into the box (Box)."""
        dist = self.distribution(obs)
        if self.discrete:
            assert isinstance(dist, torch.distributions.Categorical)
            return dist.logits.argmax(-1)
        assert isinstance(dist, torch.distributions.Normal)
        a = self.act_center + self.act_scale * dist.mean
        return torch.minimum(torch.maximum(a, self.low), self.high)


def _split_episodes(n: int, fraction: float, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Indices of the (training, held-out) episodes: ``round(fraction * n)`` held out, at least one each."""
    if n < 2:
        raise InputError(f"behaviour cloning holds out at least one of the demonstration episodes for early "
                         f"stopping and trains on the others: needs at least 2, got {n}", field="demos")
    n_held = min(max(1, round(fraction * n)), n - 1)
    order = rng.permutation(n)
    return np.sort(order[n_held:]), np.sort(order[:n_held])


class BC:
    """Behaviour cloning on the demonstrations of one gymnasium environment (:func:`build_bc` builds one); an
    offline :class:`mbirl.algorithms.learner.ImitationLearner`: one iteration is one epoch.

    Args:
        config: the hyper-parameters.
        demos: the demonstrations (their environment is evaluated on).
        seed: seeds the episode split, the network's initialisation and the minibatch order.
        device: where the policy and the demonstrations train (:func:`mbirl.nets.resolve_device`; the network is
            initialised on the CPU first, so a seed gives the same initial weights on every device).
    """

    def __init__(self, config: BCConfig, demos: DemoStats, *, seed: int,
                 device: torch.device | str = DEFAULT_DEVICE) -> None:
        import gymnasium as gym

        obs_space, space = check_demo_spaces(demos)
        self.config, self.demos, self.env_id, self.seed = config, demos, demos.env_id, seed
        self.device = resolve_device(device)
        self.discrete = isinstance(space, gym.spaces.Discrete)
        if not self.discrete and not (np.isfinite(space.low).all() and np.isfinite(space.high).all()):
            raise InputError(f"needs a bounded action box, got {space}", field="env", source=self.env_id)
        self.rng = np.random.default_rng(seed)
        self.train_episodes, self.heldout_episodes = _split_episodes(len(demos.trajectories), config.holdout,
                                                                     self.rng)
        trajs = demos.trajectories
        obs = np.concatenate([trajs[i].obs[:-1] for i in self.train_episodes]).astype(np.float32)
        torch.manual_seed(seed)
        self.policy = BCPolicy(obs.mean(0), np.maximum(obs.std(0), 1e-3),
                               n_actions=int(space.n) if self.discrete else None,
                               low=None if self.discrete else space.low.astype(np.float32),
                               high=None if self.discrete else space.high.astype(np.float32),
                               hidden=config.hidden, log_std_init=config.log_std_init).to(self.device)
        self.obs = torch.as_tensor(obs, device=self.device)
        self.acts = self.policy.encode_actions(np.concatenate([trajs[i].acts for i in self.train_episodes]))
        self.heldout_obs = torch.as_tensor(np.concatenate([trajs[i].obs[:-1] for i in self.heldout_episodes]
                                                          ).astype(np.float32), device=self.device)
        self.heldout_acts = self.policy.encode_actions(np.concatenate([trajs[i].acts
                                                                       for i in self.heldout_episodes]))
        self.optimizer = torch.optim.Adam(self.policy.parameters(), lr=config.lr)
        self.best_policy = copy.deepcopy(self.policy)
        self.best_nll = self.heldout_nll(self.policy)
        self.best_epoch = 0
        self.epochs_since_best = 0
        self.env_steps = 0
        self.iteration = 0

    def heldout_nll(self, policy: BCPolicy | None = None) -> float:
        """Mean negative log-likelihood of the held-out transitions under ``policy`` (default: the kept one)."""
        with torch.no_grad():
            log_p, _ = (policy or self.best_policy).log_prob_entropy(self.heldout_obs, self.heldout_acts)
        return float(-log_p.mean())

    def iteration_step(self) -> StepInfo:
        """One epoch over the training transitions in a fresh random order, then the held-out check."""
        c = self.config
        n = len(self.obs)
        order = self.rng.permutation(n)
        batch = min(c.batch_size, n)
        stats = []
        for b in range(n // batch):
            idx = torch.as_tensor(order[b * batch:(b + 1) * batch], device=self.device)
            log_p, entropy = self.policy.log_prob_entropy(self.obs[idx], self.acts[idx])
            neglogp, ent = -log_p.mean(), entropy.mean()
            loss = neglogp - c.ent_weight * ent
            if c.l2_weight > 0:
                loss = loss + c.l2_weight * sum(p.square().sum() for p in self.policy.parameters()) / 2
            check_finite(loss, "BC loss", self.iteration + 1)
            self.optimizer.zero_grad()
            loss.backward()
            self.optimizer.step()
            stats.append((float(loss.detach()), float(neglogp.detach()), float(ent.detach())))
        self.iteration += 1
        nll = self.heldout_nll(self.policy)
        check_finite(nll, "BC held-out negative log-likelihood", self.iteration)
        if nll < self.best_nll:
            self.best_policy.load_state_dict(self.policy.state_dict())
            self.best_nll, self.best_epoch, self.epochs_since_best = nll, self.iteration, 0
        else:
            self.epochs_since_best += 1
        mean = np.asarray(stats).mean(0)
        return StepInfo({"losses/bc": float(mean[0]), "losses/neglogp": float(mean[1]),
                         "losses/heldout_nll": nll, "charts/entropy": float(mean[2]),
                         "charts/best_heldout_nll": self.best_nll, "charts/best_epoch": self.best_epoch})

    @property
    def stopped_early(self) -> bool:
        return self.epochs_since_best >= self.config.patience

    def finished(self, env_steps: int) -> bool:
        """Stopped early, or ``max_epochs`` done (BC takes no environment steps: the budget does not apply)."""
        return self.stopped_early or self.iteration >= self.config.max_epochs

    def progress(self, env_steps: int) -> tuple[int, int]:
        return self.iteration, self.config.max_epochs

    def describe(self) -> dict[str, Any]:
        return {"epochs": self.iteration, "best_epoch": self.best_epoch, "heldout_nll": self.best_nll,
                "stopped_early": self.stopped_early, "train_episodes": len(self.train_episodes),
                "heldout_episodes": len(self.heldout_episodes), "train_transitions": len(self.obs)}

    # ----- evaluation ---------------------------------------------------------------------------------
    def act_deterministic(self, obs: np.ndarray) -> Any:
        """The kept policy's deterministic action (the weights with the lowest held-out negative log-likelihood)."""
        with torch.no_grad():
            a = self.best_policy.act(torch.as_tensor(np.asarray(obs, np.float32), device=self.device)[None])[0]
        return int(a) if self.discrete else a.cpu().numpy().astype(np.float32)

    def evaluate(self, episodes: int = 10, *, seed: int = EVAL_SEED) -> EpisodeResult:
        """Deterministic episodes of the kept policy on the true reward (fixed reset seeds)."""
        return evaluate_policy(self.act_deterministic, self.env_id, episodes, seed=seed)

    # ----- state --------------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        return {"policy": dict(self.policy.state_dict()), "best_policy": dict(self.best_policy.state_dict()),
                "optimizer": self.optimizer.state_dict(), "rng": numpy_rng_state(self.rng),
                "best_nll": self.best_nll, "best_epoch": self.best_epoch,
                "epochs_since_best": self.epochs_since_best, "env_steps": self.env_steps, "iteration": self.iteration,
                "heldout_episodes": [int(i) for i in self.heldout_episodes]}

    def load_policy(self, state: dict[str, Any]) -> None:
        """Load the kept policy of a :meth:`state_dict` (what :meth:`evaluate` runs)."""
        if [int(i) for i in state["heldout_episodes"]] != [int(i) for i in self.heldout_episodes]:
            raise InputError("checkpoint held out other demonstration episodes (another demo file?)",
                             field="heldout_episodes")
        self.best_policy.load_state_dict(state["best_policy"])

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.load_policy(state)
        self.policy.load_state_dict(state["policy"])
        load_optimizer_state(self.optimizer, state["optimizer"], scheduled=(), name="optimizer")
        set_numpy_rng_state(self.rng, state["rng"])
        self.best_nll, self.best_epoch = float(state["best_nll"]), int(state["best_epoch"])
        self.epochs_since_best = int(state["epochs_since_best"])
        self.env_steps, self.iteration = int(state["env_steps"]), int(state["iteration"])


def build_bc(config: BCConfig, demos: DemoStats, *, seed: int, device: torch.device | str = DEFAULT_DEVICE) -> BC:
    """Behaviour cloning of ``demos`` with ``config`` on ``device`` (checks that the demonstrations fit their
    environment)."""
    return BC(config, demos, seed=seed, device=device)
