"""Discriminator-Actor-Critic (DAC; Kostrikov et al., ICLR 2019): off-policy adversarial imitation.

A Soft Actor-Critic generator (Stable-Baselines3's SAC networks: actor, twin critic and its target, learned
entropy coefficient, trained by this module's own update loop) learns from a replay buffer of its own
transitions, and the reward of every sampled minibatch is computed by the *current* discriminator, which is trained
on replay-buffer agent transitions against the expert's. Per environment step (after ``learning_starts``
uniformly random ones)::

    discriminator:  BCE(expert = 1, agent = 0) + 10 * E[(|grad_x D(x_hat)| - 1)^2],
                    x_hat = u * x_agent + (1 - u) * x_expert, u ~ U(0, 1)      (WGAN-GP, as in DAC)
    reward:         r(s, a, s') = log D - log(1 - D) = the discriminator's logit   (``gail``, DAC's default)
                    or AIRL's f(s, a, s') = g(s, a) + gamma h(s') - h(s)          (``airl``)
    SAC:            Q(s, a) <- r + gamma (1 - done) (min Q'(s', a') - alpha log pi(a' | s')),  a' ~ pi(. | s')

**Absorbing states.** At a true terminal state (not a time-limit truncation) an episode of a fixed-horizon MDP
would continue in an absorbing state; DAC makes it explicit so that the learned reward cannot bias the episode
length (a positive reward everywhere would make the agent avoid termination, a negative one seek it). Observations
get an indicator feature (0 for every real state); a terminal transition ``s -> s_T`` is stored as
``s -> absorbing`` and followed by ``absorbing -> absorbing`` (zero action), where ``absorbing`` is all zeros with
indicator 1. Nothing is ``done``: the critic bootstraps through the absorbing state, whose value is
``r(absorbing, 0) / (1 - gamma)`` with its *learned* reward, so the discriminator decides whether ending an episode
is good. Actions in the absorbing state are not the agent's: the target uses the zero action there without an
entropy term, and the actor's and the entropy coefficient's losses skip absorbing states (as DAC's TD3 masks
them). The expert's demonstrations get the same transitions at their terminal ends (``Trajectory.dones``).

Observations are standardised with the expert's statistics before the indicator is appended (as ValueDICE's DAC
baseline does), actions are SAC's ``[-1, 1]`` box; the actor, the critics and the discriminator all see these.

:class:`DAC` is an online :class:`mbirl.algorithms.learner.ImitationLearner` (one iteration: ``iteration_steps``
environment steps, each followed by its updates); :func:`build_dac` builds it for a demo file's environment.
"""

from __future__ import annotations

import math
from collections import defaultdict
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from mbirl.algorithms.learner import EVAL_SEED, StepInfo, evaluate_policy, numpy_rng_state, set_numpy_rng_state
from mbirl.algorithms.mairl import EnvSlot
from mbirl.data.replay import ReplayBuffer
from mbirl.errors import InputError, check_finite
from mbirl.experts.demos import DemoStats, check_demo_spaces
from mbirl.experts.rollout import EpisodeResult, make_env
from mbirl.nets import DEFAULT_DEVICE, resolve_device
from mbirl.reporting.checkpoint import load_optimizer_state
from mbirl.rewards.discriminator import DISCRIMINATORS, Discriminator
from mbirl.types import TransitionBatch

__all__ = ["DAC", "SAC_FIELDS", "DACConfig", "SACSettings", "absorbing_transitions", "build_dac",
           "interpolated_gradient_penalty", "resolve_sac"]

SAC_FIELDS = ("learning_rate", "buffer_size", "learning_starts", "batch_size", "tau", "gamma", "train_freq",
              "gradient_steps")
"""The SAC hyper-parameters that default to the environment's SAC expert preset, else to SB3's ``SAC`` defaults."""

_LOG_EPS = 1e-6
"""SB3's ``SquashedDiagGaussianDistribution`` epsilon in ``log(1 - tanh(u)^2 + eps)``."""


@dataclass(frozen=True)
class DACConfig:
    """DAC's hyper-parameters (validated on construction).

    Sources. DAC (Kostrikov et al. 2019, and its code in google-research ``dac/``): a TD3 generator with actor and
    critic learning rate 1e-3, batch 100, 1000 random actions before training, a discriminator of two 256-unit
    hidden layers trained with Adam (learning rate 1e-3, TF's default) and a WGAN-GP gradient penalty of weight 10
    on interpolates of agent and expert inputs, one discriminator update and one policy update per environment
    step, reward ``log D - log(1 - D)`` and absorbing states. ValueDICE's DAC baseline (Kostrikov et al. 2020,
    google-research ``value_dice/``) replaces TD3 with SAC (batch 256, expert-normalised states), which is what
    this generator is. The SAC fields left at None (:data:`SAC_FIELDS`) take the environment's SAC expert
    preset (``mbirl.experts.train.EXPERT_PRESETS``: rl-baselines3-zoo's tuned values, e.g. Pendulum-v1
    ``learning_rate`` 1e-3 and ``learning_starts`` 1000, Hopper-v5 ``learning_starts`` 10000) and otherwise
    SB3 2.9 ``SAC``'s defaults: ``learning_rate`` 3e-4, ``buffer_size`` 1e6, ``learning_starts`` 100,
    ``batch_size`` 256, ``tau`` 0.005, ``gamma`` 0.99, ``train_freq`` 1, ``gradient_steps`` 1; ``metrics.json``
    records the values used.
    """

    discriminator: str = "gail"
    """``gail``: ``D(s, a)``, reward ``log D - log(1 - D)`` (its logit; DAC's choice, ``gail_loss='airl'`` in
    its code): unlike GAIL's ``-log(1 - D)`` (always positive: a survival bonus) or ``log D`` (always negative: a
    reason to end episodes early) it has no sign bias, and the absorbing state's learned reward settles
    termination. ``airl``: AIRL's ``f(s, a, s') = g(s, a) + gamma h(s') - h(s)`` (logit ``f - log pi``), reward
    ``f``, i.e. AIRL's ``log D - log(1 - D)`` without the entropy term SAC adds itself"""
    disc_hidden: tuple[int, ...] = (256, 256)
    """hidden widths of the discriminator's MLP (AIRL: of ``g`` and ``h``); DAC: 256, 256"""
    lr_disc: float = 1e-3
    """Adam learning rate of the discriminator (DAC: 1e-3)"""
    grad_penalty: float = 10.0
    """weight of the WGAN-GP penalty ``E[(|grad D(x_hat)| - 1)^2]`` on agent/expert interpolates (DAC: 10)"""
    disc_updates: int = 1
    """discriminator updates per training step (every ``train_freq`` environment steps, before the SAC updates;
    DAC: one per environment step)"""
    absorbing: bool = True
    """absorbing-state transitions at true terminal states (DAC); False: plain SAC ``done`` masks"""
    net_arch: tuple[int, ...] = (256, 256)
    """hidden widths of SB3's SAC actor and critics (SB3's default for SAC)"""
    ent_coef: float | None = None
    """fixed entropy coefficient; None: learned (SB3's ``'auto'``: initial 1.0, target entropy ``-act_dim``)"""
    learning_rate: float | None = None
    """Adam learning rate of the actor, the critics and the entropy coefficient (None: preset, else SB3)"""
    buffer_size: int | None = None
    """replay buffer capacity in transitions (None: preset, else SB3)"""
    learning_starts: int | None = None
    """uniformly random environment steps before training starts (None: preset, else SB3)"""
    batch_size: int | None = None
    """minibatch of the SAC and the discriminator updates (None: preset, else SB3)"""
    tau: float | None = None
    """Polyak rate of the target critics (None: preset, else SB3)"""
    gamma: float | None = None
    """discount (also AIRL's shaping discount; None: preset, else SB3)"""
    train_freq: int | None = None
    """environment steps between training steps (None: preset, else SB3)"""
    gradient_steps: int | None = None
    """SAC updates per training step (None: preset, else SB3)"""
    iteration_steps: int = 1_000
    """environment steps per harness iteration (one log row; the run's last iteration stops at its budget)"""

    def __post_init__(self) -> None:
        DISCRIMINATORS.check(self.discriminator, field="discriminator")
        for name in ("disc_updates", "iteration_steps", "buffer_size", "batch_size", "train_freq"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise InputError(f"must be >= 1, got {value}", field=name)
        for name in ("learning_starts", "gradient_steps"):
            value = getattr(self, name)
            if value is not None and value < 0:
                raise InputError(f"must be >= 0, got {value}", field=name)
        for name in ("lr_disc", "learning_rate", "ent_coef"):
            value = getattr(self, name)
            if value is not None and not (math.isfinite(value) and value > 0):
                raise InputError(f"must be a positive finite number, got {value}", field=name)
        if not (math.isfinite(self.grad_penalty) and self.grad_penalty >= 0):
            raise InputError(f"must be a finite number >= 0, got {self.grad_penalty}", field="grad_penalty")
        if self.tau is not None and not 0.0 < self.tau <= 1.0:
            raise InputError(f"must be in (0, 1], got {self.tau}", field="tau")
        if self.gamma is not None and not 0.0 < self.gamma < 1.0:
            raise InputError(f"must be in (0, 1), got {self.gamma}", field="gamma")
        for name in ("disc_hidden", "net_arch"):
            if any(width < 1 for width in getattr(self, name)):
                raise InputError(f"widths must be >= 1, got {list(getattr(self, name))}", field=name)


@dataclass(frozen=True)
class SACSettings:
    """The SAC hyper-parameters a run uses (:func:`resolve_sac`)."""

    learning_rate: float
    buffer_size: int
    learning_starts: int
    batch_size: int
    tau: float
    gamma: float
    train_freq: int
    gradient_steps: int


def resolve_sac(config: DACConfig, env_id: str) -> SACSettings:
    """The SAC hyper-parameters of ``config`` for ``env_id``: the config's, else the environment's SAC expert
    preset's (:data:`mbirl.experts.train.EXPERT_PRESETS`), else SB3 ``SAC``'s defaults."""
    import inspect

    from stable_baselines3 import SAC

    from mbirl.experts.train import EXPERT_PRESETS

    preset = EXPERT_PRESETS.get(env_id)
    preset_kwargs = dict(preset.kwargs) if preset is not None and preset.algo == "sac" else {}
    sb3 = inspect.signature(SAC.__init__).parameters
    values: dict[str, Any] = {}
    for name in SAC_FIELDS:
        value = getattr(config, name)
        if value is None:
            value = preset_kwargs.get(name, sb3[name].default)
        values[name] = value
    if not isinstance(values["train_freq"], int) or isinstance(values["train_freq"], bool):
        raise InputError(f"DAC takes train_freq in environment steps, got {values['train_freq']!r}",
                         field="train_freq", source=env_id)
    return SACSettings(**values)


def absorbing_state(obs_dim: int) -> np.ndarray:
    """The absorbing state of observations of size ``obs_dim``: zeros with the indicator (the extra last
    feature) set, shape ``(obs_dim + 1,)``."""
    state = np.zeros(obs_dim + 1, np.float32)
    state[-1] = 1.0
    return state


def absorbing_transitions(obs: np.ndarray, act: np.ndarray, next_obs: np.ndarray, terminal: np.ndarray
                          ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """DAC's transitions of ``N`` real ones (``(N, obs_dim)``, ``(N, act_dim)``, ``(N, obs_dim)`` and ``terminal``
    ``(N,)``: a true terminal state, not a truncation): observations get the indicator feature 0; a terminal
    transition ``s -> s'`` becomes ``s -> absorbing``, followed by ``absorbing -> absorbing`` with the zero action.
    Returns ``(obs, act, next_obs, done)`` with ``done`` all 0 (the value bootstraps through the absorbing state)."""
    obs_dim = obs.shape[1]
    absorbing = absorbing_state(obs_dim)
    zero_act = np.zeros(act.shape[1], np.float32)
    out: dict[str, list[np.ndarray]] = {"obs": [], "act": [], "next": []}
    for s, a, s_next, term in zip(obs, act, next_obs, terminal, strict=True):
        out["obs"].append(np.append(s, 0.0))
        out["act"].append(a)
        if term:
            out["next"].append(absorbing)
            out["obs"].append(absorbing)
            out["act"].append(zero_act)
            out["next"].append(absorbing)
        else:
            out["next"].append(np.append(s_next, 0.0))
    n = len(out["obs"])
    return (np.asarray(out["obs"], np.float32).reshape(n, obs_dim + 1),
            np.asarray(out["act"], np.float32).reshape(n, act.shape[1]),
            np.asarray(out["next"], np.float32).reshape(n, obs_dim + 1), np.zeros(n, np.float32))


def disc_value(disc: Discriminator, obs: torch.Tensor, act: torch.Tensor, next_obs: torch.Tensor,
               done: torch.Tensor) -> torch.Tensor:
    """The discriminator's logit without the policy term, ``(B,)``: GAIL's ``log D - log(1 - D)``, AIRL's
    ``f(s, a, s')``. DAC's reward and what its gradient penalty constrains."""
    return disc.logits(obs, act, next_obs, done, torch.zeros_like(done))


def interpolated_gradient_penalty(disc: Discriminator, expert: TransitionBatch, agent: TransitionBatch,
                                  u: torch.Tensor) -> torch.Tensor:
    """WGAN-GP's penalty as DAC applies it: ``E[(|grad_x disc_value(x_hat)| - 1)^2]`` at
    ``x_hat = u * x_agent + (1 - u) * x_expert`` (``u`` ``(B, 1)`` in [0, 1]; ``x = (s, a, s')``, the gradient
    over all three)."""

    def mix(e: torch.Tensor, a: torch.Tensor) -> torch.Tensor:
        return (u * a + (1 - u) * e).detach().requires_grad_(True)

    obs, act, next_obs = mix(expert.obs, agent.obs), mix(expert.act, agent.act), mix(expert.next_obs, agent.next_obs)
    done = (u[:, 0] * agent.done + (1 - u[:, 0]) * expert.done).detach()
    value = disc_value(disc, obs, act, next_obs, done)
    grads = torch.autograd.grad(value.sum(), [obs, act, next_obs], create_graph=True, allow_unused=True)
    sq = torch.stack([(g**2).sum(-1) for g in grads if g is not None]).sum(0)
    return ((sq + 1e-12).sqrt() - 1.0).pow(2).mean()


class DAC:
    """Discriminator-Actor-Critic on one gymnasium environment with a bounded Box action space (:func:`build_dac`
    builds one); an online :class:`mbirl.algorithms.learner.ImitationLearner`.

    One iteration takes ``iteration_steps`` environment steps (up to the next multiple of it, and never past the
    budget the harness last passed to :meth:`finished` / :meth:`progress`); each step is followed by its updates,
    so where iterations end does not change what is learnt.

    Args:
        config: the hyper-parameters.
        demos: the expert's demonstrations (their environment is trained on).
        sac: the resolved SAC hyper-parameters (:func:`resolve_sac`).
        seed: seeds the sampling generators, the replay sampling and the environment resets (the networks are
            initialised from torch's global generator, seeded by :func:`build_dac`).
        device: where the networks train (:func:`mbirl.nets.resolve_device`; they are initialised on the CPU and
            moved, and the sampling generator stays on the CPU, so a seed gives the same run on every device up
            to the device's arithmetic).
    """

    def __init__(self, config: DACConfig, demos: DemoStats, sac: SACSettings, *, seed: int,
                 device: torch.device | str = DEFAULT_DEVICE) -> None:
        import gymnasium as gym
        from stable_baselines3.sac.policies import SACPolicy

        obs_space, space = check_demo_spaces(demos)
        if not isinstance(space, gym.spaces.Box):
            raise InputError(f"DAC needs continuous actions (a Box action space; its generator is SAC), "
                             f"{demos.env_id} has {space}", field="algo", source=demos.env_id)
        if not (np.isfinite(space.low).all() and np.isfinite(space.high).all()):
            raise InputError(f"DAC needs a bounded action box, got {space}", field="env", source=demos.env_id)
        self.config, self.sac, self.demos, self.env_id, self.seed = config, sac, demos, demos.env_id, seed
        self.device = resolve_device(device)
        self.obs_dim, self.act_dim = int(obs_space.shape[0]), int(space.shape[0])
        self.low, self.high = space.low.astype(np.float32), space.high.astype(np.float32)
        self.obs_mean = demos.obs.mean(0).astype(np.float32)
        self.obs_std = np.maximum(demos.obs.std(0), 1e-3).astype(np.float32)
        self.dim = self.obs_dim + 1 if config.absorbing else self.obs_dim
        unit_box = gym.spaces.Box(-1.0, 1.0, (self.act_dim,), np.float32)
        self.policy = SACPolicy(gym.spaces.Box(-np.inf, np.inf, (self.dim,), np.float32), unit_box,
                                lambda _: sac.learning_rate, net_arch=list(config.net_arch)).to(self.device)
        self.actor, self.critic, self.critic_target = self.policy.actor, self.policy.critic, self.policy.critic_target
        self.target_entropy = -float(self.act_dim)
        self.log_ent_coef: torch.Tensor | None = None
        self.opt_ent: torch.optim.Adam | None = None
        if config.ent_coef is None:  # SB3's "auto": learned, initially 1.0
            self.log_ent_coef = torch.zeros(1, requires_grad=True, device=self.device)
            self.opt_ent = torch.optim.Adam([self.log_ent_coef], lr=sac.learning_rate)
        self.disc = DISCRIMINATORS.make(config.discriminator, obs_dim=self.dim, act_dim=self.act_dim,
                                        gamma=sac.gamma, hidden=config.disc_hidden).to(self.device)
        self.opt_disc = torch.optim.Adam(self.disc.parameters(), lr=config.lr_disc)
        self.expert = self._expert_transitions(demos)
        self.buffer = ReplayBuffer(sac.buffer_size, self.dim, self.act_dim, device=self.device)
        self.generator = torch.Generator().manual_seed(seed)
        self.rng = np.random.default_rng(seed)
        self.slot = EnvSlot(make_env(self.env_id), 0, [], np.zeros(0))
        self.env_steps = 0
        self.iteration = 0
        self.updates = 0
        self.episodes_started = 0
        self.terminal_episodes = 0
        self.budget: int | None = None
        self._reset()

    # ----- spaces -------------------------------------------------------------------------------------
    def standardize(self, obs: np.ndarray) -> np.ndarray:
        """Environment observations ``(..., obs_dim)`` standardised with the expert's statistics."""
        return ((np.asarray(obs, np.float32) - self.obs_mean) / self.obs_std).astype(np.float32)

    def observe(self, obs: np.ndarray) -> np.ndarray:
        """Environment observations ``(..., obs_dim)`` as the networks see them: standardised, with the absorbing
        indicator 0 appended (when ``absorbing``)."""
        z = self.standardize(obs)
        if self.config.absorbing:
            z = np.concatenate([z, np.zeros((*z.shape[:-1], 1), np.float32)], -1)
        return z

    def transitions(self, obs: np.ndarray, act: np.ndarray, next_obs: np.ndarray, terminal: np.ndarray
                    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """Real transitions (environment observations, ``[-1, 1]`` actions, ``terminal`` flags) as the replay
        buffers hold them: :func:`absorbing_transitions` of the standardised observations (when ``absorbing``),
        else the standardised observations with ``done = terminal``."""
        z, z_next = self.standardize(obs), self.standardize(next_obs)
        if self.config.absorbing:
            return absorbing_transitions(z, act, z_next, terminal)
        return z, np.asarray(act, np.float32), z_next, np.asarray(terminal, np.float32)

    def to_env_action(self, a: np.ndarray) -> np.ndarray:
        """A ``[-1, 1]`` action as the environment takes it (SB3's ``unscale_action``)."""
        return (self.low + 0.5 * (np.asarray(a, np.float32) + 1.0) * (self.high - self.low)).astype(np.float32)

    def from_env_action(self, a: np.ndarray) -> np.ndarray:
        """Environment actions in SAC's ``[-1, 1]`` box (clipped; SB3's ``scale_action``)."""
        scaled = 2.0 * (np.asarray(a, np.float32) - self.low) / (self.high - self.low) - 1.0
        return np.clip(scaled, -1.0, 1.0).astype(np.float32)

    def _expert_transitions(self, demos: DemoStats) -> ReplayBuffer:
        parts = [self.transitions(t.obs[:-1], self.from_env_action(np.asarray(t.acts).reshape(len(t), -1)),
                                  t.obs[1:], t.dones) for t in demos.trajectories]
        return ReplayBuffer.from_arrays(*(np.concatenate(p) for p in zip(*parts, strict=True)), device=self.device)

    def _live(self, obs: torch.Tensor) -> torch.Tensor:
        """1 for real states, 0 for the absorbing state, ``(B,)``."""
        return 1.0 - obs[:, -1] if self.config.absorbing else torch.ones(obs.shape[0], device=obs.device)

    # ----- policy -------------------------------------------------------------------------------------
    def sample_actions(self, obs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Squashed-Gaussian actions ``(B, act_dim)`` of the actor and their log-densities ``(B,)`` (SB3's
        ``action_log_prob``, drawn from this learner's generator so that a resumed run draws the same noise)."""
        mean, log_std, _ = self.actor.get_action_dist_params(obs)
        eps = torch.randn(mean.shape, generator=self.generator, device=self.generator.device).to(mean.device)
        a = torch.tanh(mean + log_std.exp() * eps)
        log_prob = (-0.5 * eps**2 - log_std - 0.5 * math.log(2 * math.pi)).sum(-1)
        return a, log_prob - torch.log(1 - a**2 + _LOG_EPS).sum(-1)

    def log_prob(self, obs: torch.Tensor, act: torch.Tensor) -> torch.Tensor:
        """The actor's log-density of ``[-1, 1]`` actions ``act``, ``(B,)``."""
        mean, log_std, _ = self.actor.get_action_dist_params(obs)
        a = act.clamp(-1 + _LOG_EPS, 1 - _LOG_EPS)
        u = torch.atanh(a)
        normal = -0.5 * ((u - mean) / log_std.exp()) ** 2 - log_std - 0.5 * math.log(2 * math.pi)
        return normal.sum(-1) - torch.log(1 - a**2 + _LOG_EPS).sum(-1)

    def act_deterministic(self, obs: np.ndarray) -> Any:
        with torch.no_grad():
            mean, _, _ = self.actor.get_action_dist_params(torch.as_tensor(self.observe(obs), device=self.device)[None])
        return self.to_env_action(torch.tanh(mean[0]).cpu().numpy())

    # ----- environment --------------------------------------------------------------------------------
    def _reset(self) -> None:
        slot = self.slot
        slot.episode_seed = self.seed * 1_000_003 + self.episodes_started
        self.episodes_started += 1
        obs, _ = slot.env.reset(seed=slot.episode_seed)
        slot.obs, slot.actions, slot.episode_return = np.asarray(obs, np.float32), [], 0.0

    def _env_step(self) -> float | None:
        """One environment step (uniformly random before ``learning_starts``, then the stochastic actor) stored
        in the replay buffer; returns the episode's return when it ended."""
        slot = self.slot
        if self.env_steps < self.sac.learning_starts:
            a = self.rng.uniform(-1.0, 1.0, self.act_dim).astype(np.float32)
        else:
            with torch.no_grad():
                obs = torch.as_tensor(self.observe(slot.obs), device=self.device)[None]
                a = self.sample_actions(obs)[0][0].cpu().numpy()
        env_a = self.to_env_action(a)
        next_obs, rew, terminated, truncated, _ = slot.env.step(env_a)
        next_obs = np.asarray(next_obs, np.float32)
        slot.actions.append(env_a)
        slot.episode_return += float(rew)
        self.buffer.add(*self.transitions(slot.obs[None], a[None], next_obs[None], np.asarray([bool(terminated)])))
        slot.obs = next_obs
        self.env_steps += 1
        if terminated or truncated:
            self.terminal_episodes += int(bool(terminated))
            ret = slot.episode_return
            self._reset()
            return ret
        return None

    # ----- updates ------------------------------------------------------------------------------------
    def agent_batch(self, n: int) -> TransitionBatch:
        """``n`` replay-buffer transitions drawn uniformly (with replacement). Indices count from the oldest
        transition, so a buffer restored from a checkpoint (stored oldest first) gives the same batches."""
        ages = self.rng.integers(0, len(self.buffer), size=n)
        return self.buffer.batch((self.buffer.ptr - len(self.buffer) + ages) % self.buffer.capacity)

    def expert_batch(self, n: int) -> TransitionBatch:
        """``n`` expert transitions (absorbing ones included) drawn uniformly (with replacement)."""
        return self.expert.batch(self.rng.integers(0, len(self.expert), size=n))

    def discriminator_loss(self, expert: TransitionBatch, agent: TransitionBatch, u: torch.Tensor
                           ) -> tuple[torch.Tensor, dict[str, float]]:
        """Binary cross-entropy (expert = 1, agent = 0) plus ``grad_penalty`` times
        :func:`interpolated_gradient_penalty` at mixing weights ``u`` ``(B, 1)``; the loss and statistics."""
        if self.disc.uses_log_pi:  # AIRL's logit subtracts log pi (0 in the absorbing state: no choice there)
            with torch.no_grad():
                expert = expert.with_log_pi(self.log_prob(expert.obs, expert.act) * self._live(expert.obs))
                agent = agent.with_log_pi(self.log_prob(agent.obs, agent.act) * self._live(agent.obs))
        bce, stats = self.disc.loss(expert, agent, 1.0)
        gp = interpolated_gradient_penalty(self.disc, expert, agent, u) if self.config.grad_penalty > 0 else \
            torch.zeros((), device=self.device)
        stats = {**stats, "bce": float(bce.detach()), "grad_penalty": float(gp.detach())}
        return bce + self.config.grad_penalty * gp, stats

    def train_discriminator(self) -> dict[str, float]:
        """One discriminator update on a replay-buffer batch against an expert batch."""
        n = self.sac.batch_size
        agent, expert = self.agent_batch(n), self.expert_batch(n)
        u = torch.rand((n, 1), generator=self.generator, device=self.generator.device).to(self.device)
        loss, stats = self.discriminator_loss(expert, agent, u)
        check_finite(loss, "discriminator loss", self.iteration + 1)
        self.opt_disc.zero_grad()
        loss.backward()
        self.opt_disc.step()
        return {"losses/discriminator": float(loss.detach()), "losses/disc_bce": stats["bce"],
                "charts/disc_grad_penalty": stats["grad_penalty"], "charts/disc_expert_acc": stats["expert_acc"],
                "charts/disc_agent_acc": stats["agent_acc"]}

    def reward(self, batch: TransitionBatch) -> torch.Tensor:
        """The current discriminator's reward of ``batch``, ``(B,)`` (no gradient)."""
        with torch.no_grad():
            return disc_value(self.disc, batch.obs, batch.act, batch.next_obs, batch.done)

    def ent_coef(self) -> torch.Tensor:
        if self.log_ent_coef is None:
            assert self.config.ent_coef is not None
            return torch.tensor(self.config.ent_coef, device=self.device)
        return self.log_ent_coef.detach().exp()[0]

    def td_target(self, batch: TransitionBatch, reward: torch.Tensor, ent_coef: torch.Tensor | None = None
                  ) -> torch.Tensor:
        """SAC's target ``r + gamma (1 - done) (min Q'(s', a') - alpha log pi(a' | s'))``, ``(B,)``, with
        ``alpha = ent_coef`` (default: the current one); in the absorbing state ``a'`` is the zero action and
        there is no entropy term."""
        alpha = self.ent_coef() if ent_coef is None else ent_coef
        with torch.no_grad():
            live = self._live(batch.next_obs)
            next_a, next_log_pi = self.sample_actions(batch.next_obs)
            q_next = torch.cat(self.critic_target(batch.next_obs, next_a * live[:, None]), 1).min(1).values
            v_next = q_next - alpha * next_log_pi * live
            return reward + (1.0 - batch.done) * self.sac.gamma * v_next

    def train_sac(self) -> dict[str, float]:
        """One SAC update (SB3's ``SAC.train`` step) on a replay-buffer batch rewarded by the discriminator."""
        batch = self.agent_batch(self.sac.batch_size)
        reward = self.reward(batch)
        live = self._live(batch.obs)
        n_live = live.sum().clamp_min(1.0)
        a_pi, log_pi = self.sample_actions(batch.obs)
        alpha = self.ent_coef()  # the value before its own update, as SB3 uses it
        out = {}
        if self.log_ent_coef is not None and self.opt_ent is not None:
            ent_loss = -(self.log_ent_coef * ((log_pi + self.target_entropy).detach() * live)).sum() / n_live
            self.opt_ent.zero_grad()
            ent_loss.backward()
            self.opt_ent.step()
            out["losses/ent_coef"] = float(ent_loss.detach())
        target = self.td_target(batch, reward, alpha)
        q = self.critic(batch.obs, batch.act)
        critic_loss = 0.5 * sum(F.mse_loss(qi[:, 0], target) for qi in q)
        assert isinstance(critic_loss, torch.Tensor)
        check_finite(critic_loss, "critic loss", self.iteration + 1)
        self.critic.optimizer.zero_grad()
        critic_loss.backward()
        self.critic.optimizer.step()
        q_pi = torch.cat(self.critic(batch.obs, a_pi), 1).min(1).values
        actor_loss = ((alpha * log_pi - q_pi) * live).sum() / n_live
        check_finite(actor_loss, "actor loss", self.iteration + 1)
        self.actor.optimizer.zero_grad()
        actor_loss.backward()
        self.actor.optimizer.step()
        with torch.no_grad():
            for p, p_target in zip(self.critic.parameters(), self.critic_target.parameters(), strict=True):
                p_target.mul_(1 - self.sac.tau).add_(p, alpha=self.sac.tau)
        self.updates += 1
        return {**out, "losses/critic": float(critic_loss.detach()), "losses/actor": float(actor_loss.detach()),
                "charts/ent_coef": float(alpha), "charts/reward": float(reward.mean()),
                "charts/q": float(q[0].detach().mean())}

    def iteration_step(self) -> StepInfo:
        """``iteration_steps`` environment steps (fewer to reach the budget), each followed, once more than
        ``learning_starts`` were taken and every ``train_freq`` steps, by ``disc_updates`` discriminator updates
        and ``gradient_steps`` SAC updates."""
        c, s = self.config, self.sac
        end = (self.env_steps // c.iteration_steps + 1) * c.iteration_steps
        if self.budget is not None and self.env_steps < self.budget:
            end = min(end, self.budget)
        stats: dict[str, list[float]] = defaultdict(list)
        finished = []
        while self.env_steps < end:
            ret = self._env_step()
            if ret is not None:
                finished.append(ret)
            if self.env_steps > s.learning_starts and self.env_steps % s.train_freq == 0:
                for _ in range(c.disc_updates):
                    for k, v in self.train_discriminator().items():
                        stats[k].append(v)
                for _ in range(s.gradient_steps):
                    for k, v in self.train_sac().items():
                        stats[k].append(v)
        self.iteration += 1
        for part, module in (("policy", self.policy), ("discriminator", self.disc)):
            for name, p in module.named_parameters():
                check_finite(p, f"{part} parameter '{name}'", self.iteration)
        scalars = {k: float(np.mean(v)) for k, v in stats.items()}
        scalars["charts/updates"] = float(self.updates)
        return StepInfo(scalars, finished)

    def finished(self, env_steps: int) -> bool:
        """Training ends with the run's environment-step budget (remembered: iterations stop there)."""
        self.budget = env_steps
        return self.env_steps >= env_steps

    def progress(self, env_steps: int) -> tuple[int, int]:
        self.budget = env_steps
        return self.env_steps, env_steps

    def describe(self) -> dict[str, Any]:
        return {"discriminator": self.config.discriminator, "absorbing": self.config.absorbing,
                "terminal_episodes": self.terminal_episodes, "updates": self.updates,
                **{f"sac_{name}": getattr(self.sac, name) for name in SAC_FIELDS}}

    def evaluate(self, episodes: int = 10, *, seed: int = EVAL_SEED) -> EpisodeResult:
        """Deterministic episodes (the actor's squashed mean) on the true reward, reset seeds ``seed + i``."""
        return evaluate_policy(self.act_deterministic, self.env_id, episodes, seed=seed)

    # ----- state --------------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        slot = self.slot
        return {
            "actor": dict(self.actor.state_dict()), "critic": dict(self.critic.state_dict()),
            "critic_target": dict(self.critic_target.state_dict()),
            "opt_actor": self.actor.optimizer.state_dict(), "opt_critic": self.critic.optimizer.state_dict(),
            "log_ent_coef": None if self.log_ent_coef is None else self.log_ent_coef.detach().clone(),
            "opt_ent": None if self.opt_ent is None else self.opt_ent.state_dict(),
            "disc": dict(self.disc.state_dict()), "opt_disc": self.opt_disc.state_dict(),
            "obs_mean": torch.as_tensor(self.obs_mean), "obs_std": torch.as_tensor(self.obs_std),
            "buffer": self.buffer.state_dict(), "generator": self.generator.get_state(),
            "rng": numpy_rng_state(self.rng), "env_steps": self.env_steps, "iteration": self.iteration,
            "updates": self.updates, "episodes_started": self.episodes_started,
            "terminal_episodes": self.terminal_episodes,
            "env": {"seed": slot.episode_seed, "return": slot.episode_return, "obs": torch.as_tensor(slot.obs),
                    "actions": torch.as_tensor(np.asarray(slot.actions)) if slot.actions else None},
        }

    def load_policy(self, state: dict[str, Any]) -> None:
        """Load the networks (actor, critics, discriminator) of a :meth:`state_dict`, e.g. for evaluation."""
        for name, value in (("obs_mean", self.obs_mean), ("obs_std", self.obs_std)):
            if not np.array_equal(state[name].numpy(), value):
                raise InputError("checkpoint standardised observations differently (another demo file?)",
                                 field=name)
        self.actor.load_state_dict(state["actor"])
        self.critic.load_state_dict(state["critic"])
        self.critic_target.load_state_dict(state["critic_target"])
        self.disc.load_state_dict(state["disc"])

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.load_policy(state)
        load_optimizer_state(self.actor.optimizer, state["opt_actor"], scheduled=(), name="opt_actor")
        load_optimizer_state(self.critic.optimizer, state["opt_critic"], scheduled=(), name="opt_critic")
        if (state["log_ent_coef"] is None) != (self.log_ent_coef is None):
            raise InputError("checkpoint has another entropy-coefficient setting", field="ent_coef")
        if self.log_ent_coef is not None and self.opt_ent is not None:
            with torch.no_grad():
                self.log_ent_coef.copy_(state["log_ent_coef"])
            load_optimizer_state(self.opt_ent, state["opt_ent"], scheduled=(), name="opt_ent")
        load_optimizer_state(self.opt_disc, state["opt_disc"], scheduled=(), name="opt_disc")
        self.buffer.load_state_dict(state["buffer"])
        self.generator.set_state(state["generator"])
        set_numpy_rng_state(self.rng, state["rng"])
        self.env_steps, self.iteration = int(state["env_steps"]), int(state["iteration"])
        self.updates, self.episodes_started = int(state["updates"]), int(state["episodes_started"])
        self.terminal_episodes = int(state["terminal_episodes"])
        # rebuild the exact mid-episode state: the same reset seed, the same actions
        saved, slot = state["env"], self.slot
        slot.episode_seed = int(saved["seed"])
        obs, _ = slot.env.reset(seed=slot.episode_seed)
        actions = [] if saved["actions"] is None else [a.astype(np.float32) for a in saved["actions"].numpy()]
        for a in actions:
            obs = slot.env.step(a)[0]
        slot.obs, slot.actions = np.asarray(obs, np.float32), actions
        slot.episode_return = float(saved["return"])
        if not np.array_equal(slot.obs, saved["obs"].numpy()):
            raise InputError("environment replay does not reproduce the checkpointed state", field="env")


def build_dac(config: DACConfig, demos: DemoStats, *, seed: int, device: torch.device | str = DEFAULT_DEVICE) -> DAC:
    """DAC of ``config`` for the environment of ``demos`` (InputError for a discrete or unbounded action space):
    resolves the SAC hyper-parameters, then seeds torch with ``seed`` and builds the SAC networks and the
    discriminator (in that order, so a seed always gives the same initial networks) on the CPU, then moves them to
    ``device``."""
    sac = resolve_sac(config, demos.env_id)
    torch.manual_seed(seed)
    return DAC(config, demos, sac, seed=seed, device=device)
