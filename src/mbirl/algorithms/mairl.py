"""MAIRL: adversarial IRL whose policy is trained end to end through a learned forward model.

DESIGN.md, "MAIRL in equations". One policy update (:func:`model_based_rollout_loss`) runs the current policy for
``H`` steps in ``B`` real environments at once. At every step::

    a_t     = mu(s_t) + sigma * eps                    (or a straight-through Gumbel-softmax one-hot)
    s_hat   = f_phi(s_t, a_t)                          (learned model, differentiable)
    s_env   = env.step(a_t)                            (the real next state)
    s_{t+1} = s_hat + stopgrad(s_env - s_hat)          (value of the real state, gradient of the model)
    r_t     = f_omega(s_t, a_t, s_{t+1}) - alpha * stopgrad(log pi(a_t | s_t))
    loss    = mean_b sum_t gamma^t (-r_t)

so the pathwise policy gradient flows through the discriminator's reward and the model's Jacobians while every
state value, reward value and replay-buffer transition is the real environment's. The trainer
(:class:`MAIRL`) alternates blocks: policy updates (which are also the data collection), forward-model updates
on the replay buffer and discriminator updates (recent agent transitions against expert transitions). The MGAIL
variant is the same trainer with the GRU model and the GAIL discriminator.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from mbirl.dynamics.models import MODEL_TYPES, ForwardModel, make_model
from mbirl.errors import InputError, check_finite
from mbirl.experts.demos import DemoStats
from mbirl.experts.rollout import make_env, run_episodes
from mbirl.nets import mlp
from mbirl.rewards.discriminator import Discriminator, make_discriminator

__all__ = ["MAIRL", "VARIANTS", "EnvSlot", "GaussianPolicy", "GumbelPolicy", "IterationInfo", "ReplayBuffer",
           "RolloutResult", "model_based_rollout_loss"]

VARIANTS = ("mairl", "mgail")




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
                 hidden: Sequence[int] = (100, 50)) -> None:
        super().__init__(obs_dim, len(low), hidden)
        self.register_buffer("low", torch.as_tensor(low, dtype=torch.float32))
        self.register_buffer("high", torch.as_tensor(high, dtype=torch.float32))
        self.register_buffer("sigma", torch.as_tensor(sigma, dtype=torch.float32))

    def mean(self, obs: torch.Tensor) -> torch.Tensor:
        centre, half = (self.high + self.low) / 2, (self.high - self.low) / 2
        return centre + half * torch.tanh(self._out(obs))

    def saturation(self, obs: torch.Tensor) -> torch.Tensor:
        """Mean squared pre-squash output: penalised so that ``tanh`` cannot saturate and kill the gradient."""
        return (self._out(obs) ** 2).mean()

    def sample(self, obs: torch.Tensor, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        """Reparameterised sample: ``(action for model/discriminator (B, act_dim), log pi (B,))``."""
        mu = self.mean(obs)
        eps = torch.randn(mu.shape, generator=generator, dtype=mu.dtype)
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
        return act.detach().numpy()


class GumbelPolicy(_Policy):
    """Categorical policy sampled with the straight-through Gumbel-softmax: a hard one-hot action in the forward
    pass, the gradient of the tempered softmax in the backward pass."""

    discrete = True

    def __init__(self, obs_dim: int, n_actions: int, tau: float = 1.0, hidden: Sequence[int] = (100, 50)) -> None:
        super().__init__(obs_dim, n_actions, hidden)
        if tau <= 0:
            raise InputError(f"must be > 0, got {tau}", field="gumbel_tau")
        self.tau = tau

    def sample(self, obs: torch.Tensor, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        logits = self._out(obs)
        u = torch.rand(logits.shape, generator=generator, dtype=logits.dtype).clamp(1e-10, 1 - 1e-7)
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
        return act.detach().argmax(-1).numpy()


Policy = GaussianPolicy | GumbelPolicy
EnvStep = Callable[[np.ndarray], tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]]
"""Steps ``B`` environments with actions ``(B, ...)``; returns next observations ``(B, obs_dim)``, ``terminal``
``(B,)`` bool (a true terminal state), ``over`` ``(B,)`` bool (terminal or truncated: the episode ended) and the
environment's rewards ``(B,)`` (logged only)."""


@dataclass
class RolloutResult:
    """One batched model-based rollout: the loss to minimise and the real transitions it produced.

    ``obs, act, next_obs`` are ``(N, dim)`` arrays, ``done`` ``(N,)`` floats (1 for terminal transitions), ``env``
    ``(N,)`` the index of the environment each came from, ``over`` ``(N,)`` bools (the step ended its episode).
    """

    loss: torch.Tensor
    mean_reward: float
    obs: np.ndarray
    act: np.ndarray
    next_obs: np.ndarray
    done: np.ndarray
    rew_env: np.ndarray
    env: np.ndarray
    over: np.ndarray


def model_based_rollout_loss(policy: Policy, model: ForwardModel, reward_fn: Callable[..., torch.Tensor],
                             s0: torch.Tensor, env_step: EnvStep, *, horizon: int, gamma: float, alpha: float,
                             generator: torch.Generator) -> RolloutResult:
    """Run ``horizon`` steps from the real states ``s0`` ``(B, obs_dim)`` and return the pathwise policy loss.

    ``reward_fn(obs, act, next_obs, done)`` is the discriminator's reward. Environments whose episode ends stop
    contributing (their later steps are masked out and not taken).
    """
    s = s0
    alive = torch.ones(s0.shape[0], dtype=s0.dtype)
    loss = torch.zeros((), dtype=s0.dtype)
    rewards = []
    rec: dict[str, list[Any]] = {k: [] for k in ("obs", "act", "next_obs", "done", "rew", "env", "over")}
    for t in range(horizon):
        idx = torch.nonzero(alive > 0)[:, 0].numpy()
        if len(idx) == 0:
            break
        a, log_pi = policy.sample(s, generator)
        s_hat = model(s, a)
        a_env = policy.env_action(a)
        next_env, terminal, over, rew_env = _step_subset(env_step, a_env, idx, s_hat)
        s_next = s_hat + (torch.as_tensor(next_env, dtype=s0.dtype) - s_hat).detach()
        done = torch.as_tensor(terminal, dtype=s0.dtype)
        r = reward_fn(s, a, s_next, done) - alpha * log_pi.detach()
        loss = loss - (gamma**t) * (alive * r).sum() / s0.shape[0]
        rewards.append(r.detach()[idx])
        rec["obs"].append(s.detach().numpy()[idx])
        rec["act"].append(a.detach().numpy()[idx])
        rec["next_obs"].append(next_env[idx])
        rec["done"].append(terminal[idx].astype(np.float32))
        rec["rew"].append(rew_env[idx])
        rec["env"].append(idx)
        rec["over"].append(over[idx])
        alive = alive * torch.as_tensor(~over, dtype=s0.dtype)
        s = s_next
    cat = {k: np.concatenate(v) for k, v in rec.items()}
    return RolloutResult(loss, float(torch.cat(rewards).mean()), cat["obs"].astype(np.float32),
                         cat["act"].astype(np.float32), cat["next_obs"].astype(np.float32),
                         cat["done"], cat["rew"].astype(np.float32), cat["env"], cat["over"])


def _step_subset(env_step: EnvStep, a_env: np.ndarray, idx: np.ndarray, s_hat: torch.Tensor
                 ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Step only the environments in ``idx``; the others keep the model's prediction (masked out anyway)."""
    b = s_hat.shape[0]
    next_obs = s_hat.detach().numpy().astype(np.float64).copy()
    terminal = np.zeros(b, dtype=bool)
    over = np.ones(b, dtype=bool)
    rew = np.zeros(b, dtype=np.float64)
    out = env_step(a_env[idx])
    next_obs[idx], terminal[idx], over[idx], rew[idx] = out
    return next_obs, terminal, over, rew


class ReplayBuffer:
    """A ring buffer of transitions ``(obs, act, next_obs, done)`` as float32 arrays."""

    def __init__(self, capacity: int, obs_dim: int, act_dim: int) -> None:
        if capacity < 1:
            raise InputError(f"must be >= 1, got {capacity}", field="replay_size")
        self.capacity = capacity
        self.obs = np.zeros((capacity, obs_dim), np.float32)
        self.act = np.zeros((capacity, act_dim), np.float32)
        self.next_obs = np.zeros((capacity, obs_dim), np.float32)
        self.done = np.zeros(capacity, np.float32)
        self.ptr = 0
        self.size = 0

    def add(self, obs: np.ndarray, act: np.ndarray, next_obs: np.ndarray, done: np.ndarray) -> None:
        for i in range(len(obs)):
            self.obs[self.ptr], self.act[self.ptr] = obs[i], act[i]
            self.next_obs[self.ptr], self.done[self.ptr] = next_obs[i], done[i]
            self.ptr = (self.ptr + 1) % self.capacity
            self.size = min(self.size + 1, self.capacity)

    def recent_indices(self, n: int) -> np.ndarray:
        n = min(n, self.size)
        return (self.ptr - 1 - np.arange(n)) % self.capacity

    def batch(self, idx: np.ndarray) -> dict[str, torch.Tensor]:
        return {"obs": torch.from_numpy(self.obs[idx]), "act": torch.from_numpy(self.act[idx]),
                "next_obs": torch.from_numpy(self.next_obs[idx]), "done": torch.from_numpy(self.done[idx])}

    def state_dict(self) -> dict[str, Any]:
        n = self.size
        order = self.recent_indices(n)[::-1].copy()  # oldest first
        return {"obs": torch.from_numpy(self.obs[order]), "act": torch.from_numpy(self.act[order]),
                "next_obs": torch.from_numpy(self.next_obs[order]), "done": torch.from_numpy(self.done[order])}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.ptr = self.size = 0
        self.add(state["obs"].numpy(), state["act"].numpy(), state["next_obs"].numpy(), state["done"].numpy())


@dataclass
class EnvSlot:
    """One training environment and what is needed to rebuild its exact state on resume: the seed of the current
    episode's reset and the actions taken since."""

    env: Any
    episode_seed: int
    actions: list[np.ndarray]
    obs: np.ndarray
    episode_return: float = 0.0


@dataclass
class IterationInfo:
    """Statistics of one training iteration (logged as scalars)."""

    env_steps: int
    policy_loss: float
    policy_grad_norm: float
    mean_reward: float
    model_loss: float
    disc_loss: float
    expert_acc: float
    agent_acc: float
    episode_returns: list[float]


class MAIRL:
    """The MAIRL / MGAIL trainer on one gymnasium environment (keyword arguments as in the original where
    sensible; see :class:`mbirl.experiments.mairl_run.MAIRLRunConfig` for what each one means)."""

    def __init__(self, demos: DemoStats, *, dynamics: str = "attention", variant: str = "mairl",
                 gamma: float = 0.99, horizon: int = 20, n_rollouts: int = 4, alpha: float = 1.0,
                 sigma_scale: float = 1 / 6, sigma_floor: float = 0.35, gumbel_tau: float = 1.0,
                 policy_hidden: Sequence[int] = (100, 50), disc_hidden: Sequence[int] = (200, 100),
                 state_only: bool = False, lr_policy: float = 1e-3, lr_disc: float = 1e-3, lr_model: float = 1e-3,
                 grad_clip: float = 10.0, policy_reg: float = 0.1, batch_size: int = 512, replay_size: int = 50_000,
                 model_steps: int = 5, disc_steps: int = 1, disc_every: int = 1, disc_window: int = 700,
                 expert_weight: float = 1.0, disc_grad_penalty: float = 0.0, warmup_steps: int = 1_000,
                 model_pretrain_steps: int = 500, ema_rate: float = 1.0, seed: int = 0) -> None:
        if variant not in VARIANTS:
            raise InputError(f"unknown variant '{variant}' (expected mairl or mgail)", field="variant")
        if dynamics not in MODEL_TYPES:
            raise InputError(f"unknown dynamics model '{dynamics}' (expected one of {', '.join(MODEL_TYPES)})",
                             field="dynamics")
        for name, value in (("horizon", horizon), ("n_rollouts", n_rollouts), ("batch_size", batch_size),
                            ("disc_every", disc_every), ("disc_window", disc_window)):
            if value < 1:
                raise InputError(f"must be >= 1, got {value}", field=name)
        for name, fvalue in (("lr_policy", lr_policy), ("lr_disc", lr_disc), ("lr_model", lr_model),
                             ("grad_clip", grad_clip), ("sigma_scale", sigma_scale)):
            if not (math.isfinite(fvalue) and fvalue > 0):
                raise InputError(f"must be a positive finite number, got {fvalue}", field=name)
        import gymnasium as gym

        self.demos = demos
        self.env_id = demos.env_id
        self.variant, self.dynamics_kind = variant, dynamics
        self.gamma, self.horizon, self.n_rollouts, self.alpha = gamma, horizon, n_rollouts, alpha
        self.grad_clip, self.batch_size, self.policy_reg = grad_clip, batch_size, policy_reg
        self.model_steps, self.disc_steps, self.disc_every = model_steps, disc_steps, disc_every
        self.disc_window, self.expert_weight = disc_window, expert_weight
        self.disc_grad_penalty = disc_grad_penalty
        self.warmup_steps, self.model_pretrain_steps = warmup_steps, model_pretrain_steps
        self.seed = seed
        torch.manual_seed(seed)
        self.generator = torch.Generator().manual_seed(seed)
        self.rng = np.random.default_rng(seed)

        self.envs = [EnvSlot(make_env(self.env_id), 0, [], np.zeros(0)) for _ in range(n_rollouts)]
        space, obs_space = self.envs[0].env.action_space, self.envs[0].env.observation_space
        if not isinstance(obs_space, gym.spaces.Box) or len(obs_space.shape) != 1:
            raise InputError(f"needs a flat Box observation space, got {obs_space}", field="env", source=self.env_id)
        obs_dim = int(obs_space.shape[0])
        if demos.obs.shape[1] != obs_dim:
            raise InputError(f"demos have observations of size {demos.obs.shape[1]}, {self.env_id} has {obs_dim}",
                             field="obs")
        self.discrete = isinstance(space, gym.spaces.Discrete)
        if self.discrete:
            act_dim = int(space.n)
            if demos.acts.dtype.kind not in "iu" or demos.acts.ndim != 1:
                raise InputError("discrete environment needs integer demo actions", field="acts")
            if demos.acts.min() < 0 or demos.acts.max() >= act_dim:
                raise InputError(f"demo actions outside 0..{act_dim - 1}", field="acts")
            self.expert_act = np.eye(act_dim, dtype=np.float32)[demos.acts]
            self.policy: Policy = GumbelPolicy(obs_dim, act_dim, gumbel_tau, policy_hidden)
            act_scale = torch.ones(act_dim)
        elif isinstance(space, gym.spaces.Box) and len(space.shape) == 1:
            act_dim = int(space.shape[0])
            acts = demos.acts.reshape(len(demos.acts), -1).astype(np.float32)
            if acts.shape[1] != act_dim:
                raise InputError(f"demo actions have size {acts.shape[1]}, {self.env_id} has {act_dim}",
                                 field="acts")
            low, high = space.low.astype(np.float32), space.high.astype(np.float32)
            self.expert_act = np.clip(acts, low, high)
            # sigma = expert action std / 6 as the original, floored so that exploration never vanishes
            sigma = np.maximum(self.expert_act.std(0) * sigma_scale, sigma_floor * (high - low) / 2)
            self.policy = GaussianPolicy(obs_dim, low, high, sigma, policy_hidden)
            act_scale = torch.as_tensor((high - low) / 2)
        else:
            raise InputError(f"unsupported action space {space}", field="env", source=self.env_id)
        self.obs_dim, self.act_dim, self.act_scale = obs_dim, act_dim, act_scale
        self.model = make_model(dynamics, obs_dim, act_dim)
        disc_kind = "airl" if variant == "mairl" else "gail"
        self.disc: Discriminator = make_discriminator(disc_kind, obs_dim, act_dim, gamma=gamma,
                                                      hidden=tuple(disc_hidden), state_only=state_only)
        if not 0.0 < ema_rate <= 1.0:
            raise InputError(f"must be in (0, 1], got {ema_rate}", field="ema_rate")
        self.ema_rate = ema_rate
        self.policy_ema: Policy | None = copy.deepcopy(self.policy) if ema_rate < 1.0 else None
        self.opt_policy = torch.optim.Adam(self.policy.parameters(), lr=lr_policy)
        self.opt_model = torch.optim.Adam(self.model.parameters(), lr=lr_model)
        self.opt_disc = torch.optim.Adam(self.disc.parameters(), lr=lr_disc)
        self.buffer = ReplayBuffer(replay_size, obs_dim, act_dim)
        self.env_steps = 0
        self.iteration = 0
        self.episodes_started = 0
        self.last_policy_grad_norm = 0.0
        self.warmup_done = 0
        for slot in self.envs:
            self._reset(slot)

    # ----- environments -------------------------------------------------------------------------------
    def _reset(self, slot: EnvSlot) -> None:
        slot.episode_seed = self.seed * 1_000_003 + self.episodes_started
        self.episodes_started += 1
        obs, _ = slot.env.reset(seed=slot.episode_seed)
        slot.obs, slot.actions, slot.episode_return = np.asarray(obs, np.float32), [], 0.0

    def _step_envs(self, slots: list[EnvSlot]) -> EnvStep:
        def step(actions: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
            outs = []
            for slot, a in zip(slots, actions, strict=True):
                env_a = int(a) if self.discrete else np.asarray(a, np.float32)
                obs, rew, terminated, truncated, _ = slot.env.step(env_a)
                slot.actions.append(np.asarray(a))
                slot.obs = np.asarray(obs, np.float32)
                slot.episode_return += float(rew)
                outs.append((slot.obs, bool(terminated), bool(terminated or truncated), float(rew)))
            return (np.stack([o[0] for o in outs]), np.asarray([o[1] for o in outs]),
                    np.asarray([o[2] for o in outs]), np.asarray([o[3] for o in outs]))
        return step

    # ----- data ---------------------------------------------------------------------------------------
    def warmup(self) -> None:
        """Fill the replay buffer with ``warmup_steps`` uniformly random transitions, fix the normalisers from
        them and the expert data, and pre-train the forward model."""
        if self.env_steps > 0:
            return
        space = self.envs[0].env.action_space
        space.seed(self.seed)
        while self.env_steps < self.warmup_steps:
            for slot in self.envs:
                a = space.sample()
                obs = slot.obs
                out = self._step_envs([slot])(np.asarray([a]))
                act = np.eye(self.act_dim, dtype=np.float32)[int(a)] if self.discrete else np.asarray(a, np.float32)
                self.buffer.add(obs[None], act[None], out[0], out[1].astype(np.float32))
                self.env_steps += 1
                if out[2][0]:
                    self._reset(slot)
        idx = self.buffer.recent_indices(self.buffer.size)
        all_obs = np.concatenate([self.demos.obs, self.buffer.obs[idx]])
        obs_t = torch.as_tensor(all_obs)
        self.policy.set_normalizer(obs_t)
        if self.policy_ema is not None:
            self.policy_ema.set_normalizer(obs_t)
        self.disc.set_normalizer(obs_t, self.act_scale)
        self.model.set_normalizer(np.concatenate([self.demos.obs, self.buffer.obs[idx]]),
                                  np.concatenate([self.demos.next_obs, self.buffer.next_obs[idx]]),
                                  self.act_scale.numpy())
        self.model.obs_std.copy_(obs_t.std(0).clamp_min(1e-3))
        self.train_model(self.model_pretrain_steps)
        self.warmup_done = self.env_steps

    def _policy_log_pi(self, obs: torch.Tensor, act: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return self.policy.log_prob(obs, act)

    def expert_batch(self, n: int) -> dict[str, torch.Tensor]:
        idx = self.rng.integers(0, len(self.demos.obs), size=n)
        obs = torch.from_numpy(self.demos.obs[idx])
        act = torch.from_numpy(self.expert_act[idx])
        return {"obs": obs, "act": act, "next_obs": torch.from_numpy(self.demos.next_obs[idx]),
                "done": torch.from_numpy(self.demos.dones[idx]), "log_pi": self._policy_log_pi(obs, act)}

    # ----- blocks -------------------------------------------------------------------------------------
    def train_model(self, steps: int) -> float:
        """``steps`` minibatch updates of the forward model on the whole replay buffer; mean loss."""
        losses = []
        for _ in range(steps):
            b = self.buffer.batch(self.rng.integers(0, self.buffer.size, size=self.batch_size))
            loss = self.model.loss(b["obs"], b["act"], b["next_obs"])
            check_finite(loss, "forward-model loss", self.iteration + 1)
            self.opt_model.zero_grad()
            loss.backward()
            self.opt_model.step()
            losses.append(float(loss.detach()))
        return float(np.mean(losses)) if losses else float("nan")

    def train_discriminator(self, steps: int) -> tuple[float, float, float]:
        """``steps`` updates on recent agent transitions vs expert transitions; mean (loss, expert acc, agent acc)."""
        out = []
        for _ in range(steps):
            # only the policy's own recent transitions: log pi of the warm-up's random actions is meaningless
            recent = self.buffer.recent_indices(max(1, min(self.disc_window, self.env_steps - self.warmup_done)))
            agent = self.buffer.batch(recent[self.rng.integers(0, len(recent), size=self.batch_size)])
            agent["log_pi"] = self._policy_log_pi(agent["obs"], agent["act"])
            loss, stats = self.disc.loss(self.expert_batch(self.batch_size), agent, self.expert_weight,
                                          self.disc_grad_penalty)
            check_finite(loss, "discriminator loss", self.iteration + 1)
            self.opt_disc.zero_grad()
            loss.backward()
            self.opt_disc.step()
            out.append((float(loss.detach()), stats["expert_acc"], stats["agent_acc"]))
        if not out:
            return float("nan"), float("nan"), float("nan")
        arr = np.asarray(out)
        return float(arr[:, 0].mean()), float(arr[:, 1].mean()), float(arr[:, 2].mean())

    def reward_fn(self, obs: torch.Tensor, act: torch.Tensor, next_obs: torch.Tensor, done: torch.Tensor
                  ) -> torch.Tensor:
        return self.disc.reward(obs, act, next_obs, done)

    def policy_update(self) -> tuple[float, float, float, list[float]]:
        """One end-to-end policy update over ``n_rollouts`` real ``horizon``-step segments (the data collection).
        Returns (loss, gradient norm before clipping, mean reward, returns of episodes that ended)."""
        s0 = torch.as_tensor(np.stack([s.obs for s in self.envs]))
        alive = np.arange(len(self.envs))

        def tracked(actions: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
            # the rollout passes the actions of the environments still running, in index order
            nonlocal alive
            out = self._step_envs([self.envs[i] for i in alive])(actions)
            alive = alive[~out[2]]
            return out

        res = model_based_rollout_loss(self.policy, self.model, self.reward_fn, s0, tracked, horizon=self.horizon,
                                       gamma=self.gamma, alpha=self.alpha, generator=self.generator)
        self.opt_policy.zero_grad()
        loss = res.loss + self.policy_reg * self.policy.saturation(s0) if self.policy_reg > 0 else res.loss
        check_finite(loss, "policy loss", self.iteration + 1)
        loss.backward()
        norm = float(torch.nn.utils.clip_grad_norm_(self.policy.parameters(), self.grad_clip))
        # A NaN reward or model would poison the policy: stop (the last good checkpoint stays on disk).
        check_finite(norm, "policy gradient norm", self.iteration + 1)
        self.opt_policy.step()
        self._update_ema()
        self.buffer.add(res.obs, res.act, res.next_obs, res.done)
        self.env_steps += len(res.obs)
        finished = []
        for i, slot in enumerate(self.envs):
            if res.over[res.env == i].any():
                finished.append(slot.episode_return)
                self._reset(slot)
        self.last_policy_grad_norm = norm
        return float(res.loss.detach()), norm, res.mean_reward, finished

    def iteration_step(self) -> IterationInfo:
        """One iteration: a policy block (one update, ``n_rollouts * horizon`` env steps), a model block and,
        every ``disc_every`` iterations, a discriminator block."""
        self.warmup()
        loss, norm, mean_r, finished = self.policy_update()
        model_loss = self.train_model(self.model_steps)
        d = (float("nan"),) * 3
        if self.iteration % self.disc_every == 0:
            d = self.train_discriminator(self.disc_steps)
        self.iteration += 1
        for part, module in (("policy", self.policy), ("model", self.model), ("discriminator", self.disc)):
            for name, p in module.named_parameters():
                check_finite(p, f"{part} parameter '{name}'", self.iteration)
        return IterationInfo(self.env_steps, loss, norm, mean_r, model_loss, d[0], d[1], d[2], finished)

    # ----- evaluation ---------------------------------------------------------------------------------
    def _update_ema(self) -> None:
        if self.policy_ema is None:
            return
        with torch.no_grad():
            for avg, p in zip(self.policy_ema.parameters(), self.policy.parameters(), strict=True):
                avg.lerp_(p, self.ema_rate)

    @property
    def eval_policy(self) -> Policy:
        """The policy evaluated and exported: the exponential moving average of the weights when
        ``ema_rate < 1`` (adversarial training oscillates; the average is much steadier), else the online one."""
        return self.policy_ema if self.policy_ema is not None else self.policy

    def act_deterministic(self, obs: np.ndarray) -> Any:
        with torch.no_grad():
            a = self.eval_policy.act(torch.as_tensor(np.asarray(obs, np.float32))[None])[0]
        return int(a.argmax()) if self.discrete else a.numpy().astype(np.float32)

    def evaluate(self, episodes: int = 10, *, seed: int = 1_000_000, render: bool = False) -> Any:
        """Deterministic episodes on the true reward (fixed reset seeds, so evaluations are comparable)."""
        env = make_env(self.env_id, render_mode="rgb_array" if render else None)
        try:
            return run_episodes(env, self.act_deterministic, episodes, seed=seed, render=render)
        finally:
            env.close()

    # ----- state --------------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        return {
            "policy": dict(self.policy.state_dict()), "model": dict(self.model.state_dict()),
            "policy_ema": None if self.policy_ema is None else dict(self.policy_ema.state_dict()),
            "disc": dict(self.disc.state_dict()), "opt_policy": self.opt_policy.state_dict(),
            "opt_model": self.opt_model.state_dict(), "opt_disc": self.opt_disc.state_dict(),
            "buffer": self.buffer.state_dict(), "generator": self.generator.get_state(),
            "rng": _json_rng(dict(self.rng.bit_generator.state)), "env_steps": self.env_steps,
            "iteration": self.iteration, "episodes_started": self.episodes_started, "warmup_done": self.warmup_done,
            "envs": [{"seed": s.episode_seed, "return": s.episode_return, "obs": torch.as_tensor(s.obs),
                      "actions": torch.as_tensor(np.asarray(s.actions)) if s.actions else None}
                     for s in self.envs],
        }

    def load_policy(self, state: dict[str, Any]) -> None:
        """Load only the networks (policy, model, discriminator) of a :meth:`state_dict`, e.g. for evaluation."""
        self.policy.load_state_dict(state["policy"])
        if self.policy_ema is not None:
            self.policy_ema.load_state_dict(state["policy_ema"])
        self.model.load_state_dict(state["model"])
        self.disc.load_state_dict(state["disc"])

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.load_policy(state)
        self.opt_policy.load_state_dict(state["opt_policy"])
        self.opt_model.load_state_dict(state["opt_model"])
        self.opt_disc.load_state_dict(state["opt_disc"])
        self.buffer.load_state_dict(state["buffer"])
        self.generator.set_state(state["generator"])
        self.rng.bit_generator.state = _from_json_rng(state["rng"])
        self.env_steps, self.iteration = int(state["env_steps"]), int(state["iteration"])
        self.episodes_started = int(state["episodes_started"])
        self.warmup_done = int(state["warmup_done"])
        if len(state["envs"]) != len(self.envs):
            raise InputError("checkpoint has a different number of environments", field="n_rollouts")
        for slot, saved in zip(self.envs, state["envs"], strict=True):
            # rebuild the exact mid-episode state: same reset seed, same actions
            slot.episode_seed = int(saved["seed"])
            obs, _ = slot.env.reset(seed=slot.episode_seed)
            actions = [] if saved["actions"] is None else list(saved["actions"].numpy())
            for a in actions:
                obs = slot.env.step(int(a) if self.discrete else np.asarray(a, np.float32))[0]
            slot.obs, slot.actions = np.asarray(obs, np.float32), [np.asarray(a) for a in actions]
            slot.episode_return = float(saved["return"])
            if not np.allclose(slot.obs, saved["obs"].numpy(), atol=1e-4):
                raise InputError("environment replay does not reproduce the checkpointed state", field="envs")


def _json_rng(state: dict[str, Any]) -> dict[str, Any]:
    """numpy bit-generator state with its 128-bit integers as strings (JSON readers may not keep big ints)."""
    inner = state["state"]
    return {**state, "state": {k: str(v) for k, v in inner.items()}}


def _from_json_rng(state: dict[str, Any]) -> dict[str, Any]:
    return {**state, "state": {k: int(v) for k, v in state["state"].items()}}
