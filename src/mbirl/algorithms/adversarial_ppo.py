"""GAIL and AIRL with an on-policy PPO generator (Stable-Baselines3): the model-free baselines of the harness.

One iteration is one *round* of the ``imitation`` library's ``AdversarialTrainer``:

1. collect one PPO rollout (``n_envs * n_steps`` environment steps) whose rewards are the current
   discriminator's, computed as each step is taken (:class:`LearnedRewardVecEnv` replaces the environment's
   reward and keeps it in ``info["true_reward"]``);
2. one PPO update on that rollout (SB3's ``PPO.train``; advantages from the learned rewards, time-limit
   truncations bootstrapped with the value of the final observation as SB3 does);
3. ``disc_updates`` discriminator updates, each on ``demo_batch_size`` expert transitions against as many
   transitions of that rollout (binary cross-entropy, expert = 1; Adam).

The rewards the generator maximises:

* **AIRL** (Fu et al. 2018): ``log D - log(1 - D) = f(s, a, s') - log pi(a | s)``, the discriminator's logit, with
  ``f = g(s, a) + gamma (1 - done) h(s') - h(s)`` and ``log pi`` the generator's log-density of the action the
  environment received. This is the paper's entropy-regularised reward (its optimum is the expert's policy); the
  ``imitation`` library's earlier ``DiscrimNetAIRL`` used it with ``entropy_weight = 1``, its current ``AIRL`` drops
  the ``- log pi`` term (``airl_entropy_weight = 0`` reproduces that). The shaping discount is PPO's ``gamma``
  (the shaping term keeps the optimal policy only with the RL discount; ``imitation`` fixes it at 0.99).
* **GAIL** (Ho & Ermon 2016): ``-log(1 - D(s, a))`` (= ``softplus`` of the logit), the paper's cost ``log D_pi``
  with ``D_pi = 1 - D`` the probability of "agent", and the ``imitation`` library's ``GAIL`` reward. It is positive
  (MGAIL's ``log D`` is negative, which in an environment that terminates -- CartPole, InvertedPendulum, Hopper --
  pays the agent to end its episodes early) at the price of flattening out for transitions the discriminator
  tells apart with ease.

What PPO receives is the learned reward divided by its running standard deviation (``reward_norm="scale"``), which
keeps the value targets on one scale while the discriminator's logits drift. The ``imitation`` library also
subtracts the running mean (``NormalizedRewardNet`` with ``RunningNorm``: ``reward_norm="standardize"``), which
changes nothing where every episode has the same length (Pendulum; ``imitation`` refuses variable-horizon
environments unless told otherwise) but makes the typical agent step's reward negative and so rewards ending
episodes early: GAIL on CartPole stayed at the random policy's return through 40k steps with it (seed 0) and
reached the expert's at 24k steps without it. The discriminator's inputs are standardised with the statistics of
the demonstrations and the first rollout (fixed afterwards), actions in units of the action box's half-range
(discrete actions: one-hot).

Exact resume: the learner checkpoints only at rollout boundaries (between iterations), where PPO's rollout buffer
is empty. Its state is the PPO policy/value network and Adam state, the discriminator and its Adam state, the
reward normaliser, the observation normaliser (``normalize_obs``), SB3's step counters and last observations,
the torch and numpy global generators (PPO samples actions, gSDE noise and minibatch orders from them; the learner
swaps its own states in and out around every iteration, so nothing else in the process disturbs them), the
discriminator's sampling generator and every training environment's exact state: each episode resets with a
seed of a fixed sequence, and loading replays the episode's reset seed and actions (as MAIRL does), so a resumed
run is bit-identical to an uninterrupted one. SB3's pickling ``save``/``load`` is never used.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import gymnasium as gym
import numpy as np
import torch
import torch.nn.functional as F
from stable_baselines3.common.callbacks import BaseCallback
from stable_baselines3.common.vec_env import DummyVecEnv, VecEnv, VecEnvWrapper, VecNormalize
from stable_baselines3.common.vec_env.base_vec_env import VecEnvStepReturn

from mbirl.algorithms.learner import EVAL_SEED, StepInfo, evaluate_policy, numpy_rng_state, set_numpy_rng_state
from mbirl.errors import InputError, check_finite
from mbirl.experts.demos import DemoStats, check_demo_spaces
from mbirl.experts.rollout import EpisodeResult, make_env
from mbirl.experts.train import EXPERT_PRESETS, HOPPER_PPO, ExpertPreset
from mbirl.nets import DEFAULT_DEVICE, resolve_device
from mbirl.reporting.checkpoint import load_optimizer_state
from mbirl.rewards.discriminator import DISCRIMINATORS, AIRLDiscriminator, Discriminator, mean_update_stats
from mbirl.types import TransitionBatch

__all__ = ["DEFAULT_PPO", "DISCRIMINATOR_NAMES", "PPO_PRESETS", "AdversarialPPO", "AdversarialPPOConfig",
           "LearnedRewardVecEnv", "RunningNorm", "SeededEpisodes", "build_adversarial_ppo", "ppo_preset"]

REWARD_NORMS = ("scale", "standardize", "none")
"""The choices of :attr:`AdversarialPPOConfig.reward_norm`."""

DISCRIMINATOR_NAMES = ("gail", "airl")
"""The algorithms of this trainer, each named after its discriminator (:data:`mbirl.rewards.DISCRIMINATORS`)."""

PPO_PRESETS: dict[str, ExpertPreset] = {
    # rl-baselines3-zoo hyperparams/ppo.yml, "Tuned" Pendulum-v1 (batch_size: SB3's default 64)
    "Pendulum-v1": ExpertPreset("ppo", 100_000, {"n_steps": 1024, "gae_lambda": 0.95, "gamma": 0.9, "n_epochs": 10,
                                                 "ent_coef": 0.0, "learning_rate": 1e-3, "clip_range": 0.2,
                                                 "use_sde": True, "sde_sample_freq": 4}, n_envs=4),
    # the zoo's tuned CartPole-v1, as the CartPole expert is trained (the zoo decays learning_rate and clip_range
    # linearly to 0 over its 1e5 steps; held constant here, as for the expert, since a run's budget may grow on
    # --resume)
    "CartPole-v1": EXPERT_PRESETS["CartPole-v1"],
    # the zoo's tuned InvertedPendulum-v3 (same dynamics as v5), with its normalize: true (observations only here:
    # the learned reward has its own normaliser)
    "InvertedPendulum-v5": ExpertPreset("ppo", 1_000_000, {"n_steps": 32, "batch_size": 64, "gamma": 0.999,
                                                           "learning_rate": 0.000222425, "ent_coef": 1.37976e-07,
                                                           "clip_range": 0.4, "n_epochs": 5, "gae_lambda": 0.9,
                                                           "max_grad_norm": 0.3, "vf_coef": 0.19816},
                                        n_envs=1, normalize=True),
    # the zoo's tuned Hopper-v3 (normalize: true), as the alternative Hopper expert preset
    "Hopper-v5": HOPPER_PPO,
}
"""PPO generator hyper-parameters by environment (``kwargs`` of SB3's ``PPO``, ``n_envs``, and ``normalize``:
standardise observations with a running ``VecNormalize``); any field of :class:`AdversarialPPOConfig` that is set
overrides its preset value."""

DEFAULT_PPO = ExpertPreset("ppo", 1_000_000, {"n_steps": 256, "batch_size": 64, "learning_rate": 3e-4,
                                              "n_epochs": 10, "ent_coef": 0.0}, n_envs=8)
"""The generator of environments without a preset: the ``imitation`` library's default PPO for adversarial
training (rollouts of 2048 steps over 8 environments, minibatches of 64, learning rate 3e-4, 10 epochs, no entropy
bonus; everything else SB3's defaults)."""

_PPO_FIELDS = ("n_steps", "batch_size", "n_epochs", "learning_rate", "gamma", "gae_lambda", "clip_range", "ent_coef",
               "vf_coef", "max_grad_norm", "use_sde", "sde_sample_freq")
"""The fields of :class:`AdversarialPPOConfig` that are keyword arguments of SB3's ``PPO``."""


def ppo_preset(env_id: str) -> ExpertPreset:
    """The PPO generator preset of ``env_id`` (:data:`PPO_PRESETS`), or :data:`DEFAULT_PPO`."""
    return PPO_PRESETS.get(env_id, DEFAULT_PPO)


@dataclass(frozen=True)
class AdversarialPPOConfig:
    """GAIL / AIRL with a PPO generator: the discriminator and the PPO hyper-parameters (validated on construction).

    Discriminator: the ``imitation`` library's defaults (``imitation.scripts.config.train_adversarial`` and
    ``imitation.rewards.reward_nets``): 4 updates per round of 2048 steps (here at least as many per step: the
    AIRL discriminator starts out calling every transition the expert's, its logit being offset by ``-log pi``;
    on Pendulum, seed 0, with 4 updates per 4096-step rollout it still did at 80k steps and the policy stayed at
    the random one's return through 100k, with 8 it reached 0.64 at 100k, with 16 0.57 at 61k), Adam with
    torch's default learning rate 1e-3, MLPs with ReLU (GAIL: ``D(s, a)`` with hidden layers (32, 32); AIRL:
    ``g(s, a)`` with (32,) and the potential ``h(s)`` with (32, 32)). ``imitation`` draws each update's agent
    transitions from the last rollout only (its ``gen_replay_buffer_capacity`` = the rollout size); its
    ``demo_batch_size`` is 1024 against rollouts of 2048, here the rollout size unless set.

    PPO (every field None takes the environment's preset, :data:`PPO_PRESETS`; other environments
    :data:`DEFAULT_PPO`): rl-baselines3-zoo's tuned settings (``hyperparams/ppo.yml``) --
    Pendulum-v1: 4 envs x 1024 steps, minibatch 64, 10 epochs, lr 1e-3, gamma 0.9, GAE 0.95, clip 0.2, no entropy
    bonus, gSDE resampled every 4 steps; CartPole-v1: 8 envs x 32 steps, minibatch 256, 20 epochs, lr 1e-3,
    gamma 0.98, GAE 0.8, clip 0.2 (the zoo decays lr and clip linearly; constant here); InvertedPendulum-v5 (the
    zoo's v3): 1 env x 32 steps, minibatch 64, 5 epochs, lr 2.22e-4, gamma 0.999, GAE 0.9, clip 0.4, max grad norm
    0.3, vf 0.198, normalised observations; Hopper-v5 (the zoo's v3): 1 env x 512 steps, minibatch 32, 5 epochs,
    lr 9.8e-5, gamma 0.999, GAE 0.99, ReLU (256, 256) networks with log-std -2, normalised observations.
    """

    demo_batch_size: int | None = None
    """expert transitions per discriminator update, and as many of the last rollout's (None: the rollout size,
    ``n_envs * n_steps``; drawn without replacement when there are enough)"""
    disc_updates: int | None = None
    """discriminator updates after each rollout (None: ``imitation``'s ``n_disc_updates_per_round`` 4, or its rate
    of one per 512 environment steps where rollouts are longer than its 2048 steps: 8 for Pendulum's 4096)"""
    disc_lr: float = 1e-3
    """Adam learning rate of the discriminator"""
    disc_hidden: tuple[int, ...] = (32, 32)
    """hidden widths of GAIL's discriminator and of AIRL's shaping potential ``h``"""
    airl_reward_hidden: tuple[int, ...] = (32,)
    """hidden widths of AIRL's reward term ``g``"""
    state_only: bool = False
    """AIRL: learn the state-only reward ``g(s)`` (the one that transfers to changed dynamics)"""
    airl_entropy_weight: float = 1.0
    """AIRL: the reward is ``f - airl_entropy_weight * log pi`` (1: the paper's ``log D - log(1 - D)``; 0: the
    current ``imitation`` library's ``f``)"""
    reward_norm: str = "scale"
    """what PPO receives: ``scale`` (the learned reward divided by its running standard deviation: its sign, and
    so what ending an episode is worth, is kept), ``standardize`` (also minus its running mean: the ``imitation``
    library's ``RunningNorm``; only for fixed-horizon environments, where it changes no incentive) or ``none``"""
    n_envs: int | None = None
    """parallel training environments (None: the preset's)"""
    n_steps: int | None = None
    """steps per environment per rollout (None: the preset's)"""
    batch_size: int | None = None
    """PPO minibatch size (None: the preset's)"""
    n_epochs: int | None = None
    """PPO epochs over each rollout (None: the preset's)"""
    learning_rate: float | None = None
    """PPO Adam learning rate (None: the preset's)"""
    gamma: float | None = None
    """discount of PPO and of AIRL's shaping term (None: the preset's)"""
    gae_lambda: float | None = None
    """GAE lambda (None: the preset's)"""
    clip_range: float | None = None
    """PPO clipping range (None: the preset's)"""
    ent_coef: float | None = None
    """PPO entropy-bonus coefficient (None: the preset's)"""
    vf_coef: float | None = None
    """PPO value-loss coefficient (None: the preset's)"""
    max_grad_norm: float | None = None
    """PPO gradient-norm clip (None: the preset's)"""
    use_sde: bool | None = None
    """generalised state-dependent exploration (Box actions; None: the preset's)"""
    sde_sample_freq: int | None = None
    """steps between gSDE noise resamplings (-1: once per rollout; None: the preset's)"""
    normalize_obs: bool | None = None
    """standardise the policy's observations with running statistics (``VecNormalize``; None: the preset's)"""

    def __post_init__(self) -> None:
        for name in ("demo_batch_size", "n_envs", "n_steps", "batch_size", "n_epochs"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise InputError(f"must be >= 1, got {value}", field=name)
        if self.disc_updates is not None and self.disc_updates < 0:
            raise InputError(f"must be >= 0, got {self.disc_updates}", field="disc_updates")
        for name in ("disc_lr", "learning_rate", "clip_range", "max_grad_norm"):
            value = getattr(self, name)
            if value is not None and not (math.isfinite(value) and value > 0):
                raise InputError(f"must be a positive finite number, got {value}", field=name)
        for name in ("airl_entropy_weight", "ent_coef", "vf_coef"):
            value = getattr(self, name)
            if value is not None and not (math.isfinite(value) and value >= 0):
                raise InputError(f"must be a finite number >= 0, got {value}", field=name)
        for name in ("gamma", "gae_lambda"):
            value = getattr(self, name)
            if value is not None and not 0.0 < value <= 1.0:
                raise InputError(f"must be in (0, 1], got {value}", field=name)
        if self.reward_norm not in REWARD_NORMS:
            raise InputError(f"unknown reward normalisation '{self.reward_norm}' (expected one of "
                             f"{', '.join(REWARD_NORMS)})", field="reward_norm")
        if self.sde_sample_freq is not None and (self.sde_sample_freq == 0 or self.sde_sample_freq < -1):
            raise InputError(f"must be -1 or >= 1, got {self.sde_sample_freq}", field="sde_sample_freq")
        for name in ("disc_hidden", "airl_reward_hidden"):
            if any(width < 1 for width in getattr(self, name)):
                raise InputError(f"widths must be >= 1, got {list(getattr(self, name))}", field=name)

    def resolve(self, env_id: str) -> tuple[dict[str, Any], int, bool]:
        """SB3 ``PPO`` keyword arguments, ``n_envs`` and ``normalize_obs`` for ``env_id``: its preset with this
        configuration's set fields on top."""
        preset = ppo_preset(env_id)
        kwargs = dict(preset.kwargs)
        for name in _PPO_FIELDS:
            if getattr(self, name) is not None:
                kwargs[name] = getattr(self, name)
        n_envs = preset.n_envs if self.n_envs is None else self.n_envs
        normalize = preset.normalize if self.normalize_obs is None else self.normalize_obs
        return kwargs, n_envs, normalize


class RunningNorm:
    """Running mean and variance of a stream of scalars, merged batch by batch exactly (Chan et al.), standardising
    as the ``imitation`` library's ``RunningNorm``: ``(x - mean) / sqrt(var + eps)`` (starts at mean 0,
    variance 1)."""

    eps = 1e-5

    def __init__(self) -> None:
        self.count, self.mean, self.var = 0.0, 0.0, 1.0

    def update(self, x: np.ndarray) -> None:
        x = np.asarray(x, np.float64)
        n = float(len(x))
        if n == 0:
            return
        batch_mean, batch_var = float(x.mean()), float(x.var())
        delta = batch_mean - self.mean
        total = self.count + n
        m2 = self.var * self.count + batch_var * n + delta**2 * self.count * n / total
        self.mean += delta * n / total
        self.var, self.count = m2 / total, total

    def __call__(self, x: np.ndarray, *, center: bool = True) -> np.ndarray:
        """``x`` standardised, or only divided by the standard deviation (``center=False``)."""
        return (np.asarray(x, np.float64) - (self.mean if center else 0.0)) / math.sqrt(self.var + self.eps)

    def state_dict(self) -> dict[str, float]:
        return {"count": self.count, "mean": self.mean, "var": self.var}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.count, self.mean, self.var = float(state["count"]), float(state["mean"]), float(state["var"])


class SeededEpisodes(gym.Wrapper):
    """A training environment whose episodes start from the seeds of a fixed sequence (``next_seed``, whatever
    seed a reset is given) and which records the current episode's actions and return, so that its exact state can
    be rebuilt (:meth:`replay`). An ending step reports the episode's return in ``info["episode_return"]``."""

    def __init__(self, env: gym.Env, next_seed: Callable[[], int]) -> None:
        super().__init__(env)
        self.next_seed = next_seed
        self.episode_seed = -1
        self.actions: list[np.ndarray] = []
        self.episode_return = 0.0

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None) -> tuple[Any, dict[str, Any]]:
        self.episode_seed = self.next_seed()
        self.actions, self.episode_return = [], 0.0
        return self.env.reset(seed=self.episode_seed, options=options)

    def step(self, action: Any) -> tuple[Any, Any, bool, bool, dict[str, Any]]:
        self.actions.append(np.array(action, copy=True))
        obs, reward, terminated, truncated, info = self.env.step(action)
        self.episode_return += float(reward)
        if terminated or truncated:
            info = {**info, "episode_return": self.episode_return}
        return obs, reward, terminated, truncated, info

    def replay(self, seed: int, actions: list[np.ndarray], episode_return: float) -> np.ndarray:
        """Rebuild the state after ``actions`` of the episode that reset with ``seed``; returns the observation."""
        obs, _ = self.env.reset(seed=seed)
        for a in actions:
            obs = self.env.step(a)[0]
        self.episode_seed, self.actions, self.episode_return = seed, [np.array(a, copy=True) for a in actions], \
            episode_return
        return np.asarray(obs)


@dataclass
class Rollout:
    """The transitions of one rollout in environment terms (raw observations, the actions the environments
    received, ``done`` = terminal, not a time-limit truncation) with their rewards."""

    obs: np.ndarray
    act: np.ndarray
    next_obs: np.ndarray
    done: np.ndarray
    true_reward: np.ndarray
    learned_reward: np.ndarray
    reward: np.ndarray
    episode_returns: list[float]


class LearnedRewardVecEnv(VecEnvWrapper):
    """Replaces each step's environment reward with ``reward_fn(obs, actions, next_obs, done)`` -> ``(raw,
    given)`` (the learned reward and what PPO receives), keeps the true one in ``info["true_reward"]`` and records
    the rollout's transitions (:meth:`pop_rollout`). Observations are the wrapped environments' raw ones."""

    def __init__(self, venv: VecEnv, reward_fn: Callable[..., tuple[np.ndarray, np.ndarray]]) -> None:
        super().__init__(venv)
        self.reward_fn = reward_fn
        self.last_obs = np.zeros(0, np.float32)
        self._actions = np.zeros(0)
        self._steps: list[tuple[np.ndarray, ...]] = []
        self._returns: list[float] = []

    def reset(self) -> Any:
        obs = self.venv.reset()
        self.last_obs = np.array(obs, copy=True)
        return obs

    def step_async(self, actions: np.ndarray) -> None:
        self._actions = np.array(actions, copy=True)
        self.venv.step_async(actions)

    def step_wait(self) -> VecEnvStepReturn:
        obs, true_reward, dones, infos = self.venv.step_wait()
        next_obs = np.array(obs, copy=True)
        terminal = np.zeros(len(dones), bool)
        for i, done in enumerate(dones):
            infos[i]["true_reward"] = float(true_reward[i])
            if done:
                next_obs[i] = infos[i]["terminal_observation"]
                terminal[i] = not infos[i].get("TimeLimit.truncated", False)
                self._returns.append(float(infos[i]["episode_return"]))
        raw, given = self.reward_fn(self.last_obs, self._actions, next_obs, terminal)
        self._steps.append((self.last_obs, self._actions, next_obs, terminal, np.asarray(true_reward, np.float64),
                            raw, given))
        self.last_obs = np.array(obs, copy=True)
        return obs, np.asarray(given, np.float32), dones, infos

    def pop_rollout(self) -> Rollout:
        """The transitions recorded since the last call (time-major, then environment order)."""
        obs, act, next_obs, done, true_reward, learned, given = (np.concatenate([s[k] for s in self._steps])
                                                                 for k in range(7))
        out = Rollout(obs, act, next_obs, done, true_reward, learned, given, self._returns)
        self._steps, self._returns = [], []
        return out


def _sb3_ppo_default(name: str) -> Any:
    """The default of a keyword argument of SB3's ``PPO``."""
    import inspect

    from stable_baselines3 import PPO

    return inspect.signature(PPO.__init__).parameters[name].default


def _returns(env: gym.Env) -> Callable[[], gym.Env]:
    """An environment factory for ``DummyVecEnv`` that hands over an environment already made."""
    return lambda: env


class _NoCallback(BaseCallback):
    """The callback SB3's ``collect_rollouts`` calls (it needs one); does nothing."""

    def _on_step(self) -> bool:
        return True


class AdversarialPPO:
    """GAIL or AIRL with a PPO generator on the demonstrations of one gymnasium environment (build one with
    :func:`build_adversarial_ppo`); an online :class:`mbirl.algorithms.learner.ImitationLearner` whose iteration is
    one rollout, one PPO update and the discriminator updates.

    Args:
        config: the hyper-parameters.
        demos: the demonstrations (their environment is trained and evaluated on).
        discriminator: ``gail`` or ``airl``.
        seed: seeds SB3 (networks, action sampling, minibatch orders), the discriminator, its sampling and the
            training environments' reset seeds.
        device: where PPO's networks and the discriminator train (:func:`mbirl.nets.resolve_device`). A resumed
            run continues bit-identically on the CPU; on a GPU, PPO samples from CUDA's generator, which the
            checkpoint does not hold.
    """

    def __init__(self, config: AdversarialPPOConfig, demos: DemoStats, *, discriminator: str, seed: int,
                 device: torch.device | str = DEFAULT_DEVICE) -> None:
        from stable_baselines3 import PPO
        from stable_baselines3.common.logger import Logger

        if discriminator not in DISCRIMINATOR_NAMES:
            raise InputError(f"unknown discriminator '{discriminator}' (expected one of "
                             f"{', '.join(DISCRIMINATOR_NAMES)})", field="algo")
        obs_space, space = check_demo_spaces(demos)
        self.config, self.demos, self.env_id, self.seed = config, demos, demos.env_id, seed
        self.device = resolve_device(device)
        self.algo = discriminator
        self.discrete = isinstance(space, gym.spaces.Discrete)
        if not self.discrete and not (np.isfinite(space.low).all() and np.isfinite(space.high).all()):
            raise InputError(f"needs a bounded action box, got {space}", field="env", source=self.env_id)
        if discriminator == "gail" and config.state_only:
            raise InputError("GAIL's discriminator D(s, a) has no state-only form (state_only is AIRL's)",
                             field="ppo.state_only")
        kwargs, n_envs, normalize = config.resolve(self.env_id)
        if self.discrete and kwargs.get("use_sde"):
            raise InputError("gSDE needs Box actions", field="ppo.use_sde", source=self.env_id)
        self.rollout_size = n_envs * int(kwargs.get("n_steps", _sb3_ppo_default("n_steps")))
        if self.rollout_size < 2:
            raise InputError(f"a rollout needs at least 2 steps (n_envs * n_steps), got {self.rollout_size}",
                             field="ppo.n_steps")
        self.obs_dim = int(obs_space.shape[0])
        self.act_dim = int(space.n) if self.discrete else int(space.shape[0])
        self.act_scale = torch.ones(self.act_dim, device=self.device) if self.discrete else \
            torch.as_tensor((space.high - space.low) / 2, dtype=torch.float32, device=self.device)
        self.demo_batch_size = config.demo_batch_size or self.rollout_size
        self.disc_updates = config.disc_updates if config.disc_updates is not None else \
            max(4, self.rollout_size // 512)

        # environments: seeded episodes -> learned reward (raw observations) -> optional observation normaliser
        self.episodes_started = 0
        self.slots = [SeededEpisodes(make_env(self.env_id), self._next_seed) for _ in range(n_envs)]
        self.reward_env = LearnedRewardVecEnv(DummyVecEnv([_returns(s) for s in self.slots]), self.rewards)
        self.obs_norm = VecNormalize(self.reward_env, norm_obs=True, norm_reward=False) if normalize else None
        venv: VecEnv = self.obs_norm if self.obs_norm is not None else self.reward_env

        # PPO seeds the global generators (torch, numpy, random) with ``seed``; the discriminator is built after it
        self.model = PPO("MlpPolicy", venv, seed=seed, device=self.device, verbose=0, **kwargs)
        self.model.set_logger(Logger(folder=None, output_formats=[]))
        self.disc: Discriminator = DISCRIMINATORS.make(
            discriminator, obs_dim=self.obs_dim, act_dim=self.act_dim, hidden=config.disc_hidden,
            **({"gamma": self.model.gamma, "state_only": config.state_only,
                "reward_hidden": config.airl_reward_hidden} if discriminator == "airl" else {})).to(self.device)
        self.opt_disc = torch.optim.Adam(self.disc.parameters(), lr=config.disc_lr)
        m = self.model
        clip = m.clip_range(1.0) if callable(m.clip_range) else m.clip_range
        self.hparams: dict[str, Any] = {
            "preset": self.env_id if self.env_id in PPO_PRESETS else "default", "n_envs": n_envs,
            "normalize_obs": normalize, "n_steps": m.n_steps, "batch_size": m.batch_size, "n_epochs": m.n_epochs,
            "learning_rate": float(m.lr_schedule(1.0)), "gamma": m.gamma, "gae_lambda": m.gae_lambda,
            "clip_range": float(clip), "ent_coef": float(m.ent_coef), "vf_coef": m.vf_coef,
            "max_grad_norm": m.max_grad_norm, "use_sde": m.use_sde, "sde_sample_freq": m.sde_sample_freq,
            "policy_kwargs": repr(kwargs.get("policy_kwargs", {}))}
        self.reward_stats = RunningNorm()
        self.rng = np.random.default_rng(seed)
        self.callback = _NoCallback()
        self.callback.init_callback(self.model)
        obs = venv.reset()
        assert isinstance(obs, np.ndarray)
        self.model._last_obs = obs
        self.model._last_episode_starts = np.ones(n_envs, bool)
        self.model.ep_info_buffer, self.model.ep_success_buffer = deque(maxlen=100), deque(maxlen=100)
        self._torch_rng: torch.Tensor = torch.get_rng_state()
        self._numpy_rng: Any = np.random.get_state()  # noqa: NPY002
        self.env_steps = 0
        self.iteration = 0

    # ----- environments and rewards ---------------------------------------------------------------------
    def _next_seed(self) -> int:
        seed = self.seed * 1_000_003 + self.episodes_started
        self.episodes_started += 1
        return seed

    def encode_actions(self, acts: np.ndarray) -> torch.Tensor:
        """Environment actions as the discriminator sees them: ``(N, act_dim)`` one-hot rows (Discrete) or
        float32 vectors (Box)."""
        acts = np.asarray(acts)
        if self.discrete:
            return F.one_hot(torch.as_tensor(acts.reshape(-1).astype(np.int64), device=self.device),
                             self.act_dim).float()
        return torch.as_tensor(acts.reshape(len(acts), -1).astype(np.float32), device=self.device)

    def policy_obs(self, obs: np.ndarray) -> np.ndarray:
        """Raw observations as the policy sees them (standardised by the current statistics with
        ``normalize_obs``)."""
        obs = np.asarray(obs, np.float32)
        return np.asarray(self.obs_norm.normalize_obs(obs), np.float32) if self.obs_norm is not None else obs

    def log_pi(self, obs: np.ndarray, acts: np.ndarray) -> torch.Tensor:
        """The generator's log-density (Box) or log-probability (Discrete) of environment actions ``acts`` in raw
        observations ``obs``, ``(N,)``."""
        policy = self.model.policy
        with torch.no_grad():
            dist = policy.get_distribution(torch.as_tensor(self.policy_obs(obs), device=self.device))
            a = np.asarray(acts).reshape(len(acts)).astype(np.int64) if self.discrete else \
                np.asarray(acts, np.float32).reshape(len(acts), -1)
            return dist.log_prob(torch.as_tensor(a, device=self.device))
            return dist.log_prob(a)

    def transitions(self, obs: np.ndarray, acts: np.ndarray, next_obs: np.ndarray, done: np.ndarray
                    ) -> TransitionBatch:
        """Environment transitions as a batch for the discriminator, with ``log_pi`` (AIRL)."""
        batch = TransitionBatch(torch.as_tensor(np.asarray(obs, np.float32), device=self.device),
                                self.encode_actions(acts),
                                torch.as_tensor(np.asarray(next_obs, np.float32), device=self.device),
                                torch.as_tensor(np.asarray(done, np.float32), device=self.device))
        return batch.with_log_pi(self.log_pi(obs, acts)) if self.disc.uses_log_pi else batch

    def learned_reward(self, obs: np.ndarray, acts: np.ndarray, next_obs: np.ndarray, done: np.ndarray
                       ) -> np.ndarray:
        """The generator's reward before normalisation: AIRL ``f(s, a, s') - w log pi(a | s)`` (``w``:
        ``airl_entropy_weight``; with ``w = 1`` the discriminator's logit ``log D - log(1 - D)``), GAIL
        ``-log(1 - D(s, a))``."""
        batch = self.transitions(obs, acts, next_obs, done)
        with torch.no_grad():
            if isinstance(self.disc, AIRLDiscriminator):
                assert batch.log_pi is not None
                f = self.disc.f(batch.obs, batch.act, batch.next_obs, batch.done)
                r = f - self.config.airl_entropy_weight * batch.log_pi
            else:
                r = F.softplus(self.disc.logits(batch.obs, batch.act, batch.next_obs, batch.done,
                                                torch.zeros_like(batch.done)))
        return r.double().cpu().numpy()

    def rewards(self, obs: np.ndarray, acts: np.ndarray, next_obs: np.ndarray, done: np.ndarray
                ) -> tuple[np.ndarray, np.ndarray]:
        """One step's ``(learned, given)`` rewards: the learned one, and what PPO receives (normalised by the
        running statistics of all learned rewards so far, this step's included, as ``reward_norm`` says)."""
        raw = self.learned_reward(obs, acts, next_obs, done)
        if self.config.reward_norm == "none":
            return raw, raw
        self.reward_stats.update(raw)
        return raw, self.reward_stats(raw, center=self.config.reward_norm == "standardize")

    # ----- training -------------------------------------------------------------------------------------
    @contextmanager
    def _own_generators(self) -> Iterator[None]:
        """Run with the learner's torch and numpy global generator states (SB3 draws from the global ones), and
        give the caller's back afterwards."""
        outer_torch, outer_numpy = torch.get_rng_state(), np.random.get_state()  # noqa: NPY002
        torch.set_rng_state(self._torch_rng)
        np.random.set_state(self._numpy_rng)  # noqa: NPY002
        try:
            yield
        finally:
            self._torch_rng, self._numpy_rng = torch.get_rng_state(), np.random.get_state()  # noqa: NPY002
            torch.set_rng_state(outer_torch)
            np.random.set_state(outer_numpy)  # noqa: NPY002

    def train_discriminator(self, rollout: Rollout) -> tuple[float, float, float]:
        """:attr:`disc_updates` updates on expert transitions against the rollout's; mean (loss, expert accuracy, agent
        accuracy)."""
        if self.iteration == 0:  # input statistics: the demonstrations and the first rollout
            self.disc.set_normalizer(torch.as_tensor(np.concatenate([self.demos.obs, rollout.obs])), self.act_scale)
        n_expert, n_agent = len(self.demos.obs), len(rollout.obs)
        out = []
        for _ in range(self.disc_updates):
            e = self.rng.choice(n_expert, self.demo_batch_size, replace=self.demo_batch_size > n_expert)
            a = self.rng.choice(n_agent, self.demo_batch_size, replace=self.demo_batch_size > n_agent)
            expert = self.transitions(self.demos.obs[e], self.demos.acts[e], self.demos.next_obs[e],
                                      self.demos.dones[e])
            agent = self.transitions(rollout.obs[a], rollout.act[a], rollout.next_obs[a], rollout.done[a])
            out.append(self.disc.update(self.opt_disc, expert, agent, 1.0, iteration=self.iteration + 1))
        return mean_update_stats(out)

    def iteration_step(self) -> StepInfo:
        """One round: a rollout on the current discriminator's reward, a PPO update, the discriminator updates."""
        model = self.model
        with self._own_generators():
            assert model.env is not None
            model.collect_rollouts(model.env, self.callback, model.rollout_buffer, n_rollout_steps=model.n_steps)
            rollout = self.reward_env.pop_rollout()
            self.env_steps = int(model.num_timesteps)
            model.train()
            ppo = dict(model.logger.name_to_value)
            model.logger.dump(self.env_steps)
            d_loss, d_expert, d_agent = self.train_discriminator(rollout)
        self.iteration += 1
        for part, module in (("policy", model.policy), ("discriminator", self.disc)):
            for name, p in module.named_parameters():
                check_finite(p, f"{part} parameter '{name}'", self.iteration)
        scalars = {"losses/discriminator": d_loss, "charts/disc_expert_acc": d_expert, "charts/disc_agent_acc": d_agent,
                   "charts/learned_reward": float(rollout.learned_reward.mean()),
                   "charts/given_reward": float(rollout.reward.mean()),
                   "charts/true_reward": float(rollout.true_reward.mean())}
        for key, name in (("train/policy_gradient_loss", "losses/ppo_policy"), ("train/value_loss", "losses/ppo_value"),
                          ("train/entropy_loss", "losses/ppo_entropy"), ("train/approx_kl", "charts/ppo_approx_kl"),
                          ("train/clip_fraction", "charts/ppo_clip_fraction"),
                          ("train/explained_variance", "charts/ppo_explained_variance"),
                          ("train/std", "charts/ppo_std")):
            if key in ppo and math.isfinite(float(ppo[key])):
                scalars[name] = float(ppo[key])
        return StepInfo(scalars, list(rollout.episode_returns))

    def finished(self, env_steps: int) -> bool:
        """Training ends with the run's environment-step budget (the last rollout may pass it)."""
        return self.env_steps >= env_steps

    def progress(self, env_steps: int) -> tuple[int, int]:
        return self.env_steps, env_steps

    def describe(self) -> dict[str, Any]:
        return {"discriminator": self.algo, "generator": "ppo", "rollout_steps": self.rollout_size,
                "demo_batch_size": self.demo_batch_size, "disc_updates": self.disc_updates, "ppo": dict(self.hparams)}

    # ----- evaluation -----------------------------------------------------------------------------------
    def act_deterministic(self, obs: np.ndarray) -> Any:
        """The policy's mean action clipped into the box (Box) or its most probable action (Discrete)."""
        action, _ = self.model.policy.predict(self.policy_obs(obs), deterministic=True)
        return int(action) if self.discrete else np.asarray(action, np.float32)

    def evaluate(self, episodes: int = 10, *, seed: int = EVAL_SEED) -> EpisodeResult:
        """Deterministic episodes on the true reward (fixed reset seeds, so evaluations are comparable)."""
        return evaluate_policy(self.act_deterministic, self.env_id, episodes, seed=seed)

    # ----- state ----------------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        model = self.model
        np_state = self._numpy_rng
        assert model._last_episode_starts is not None
        rms = self._obs_rms()
        return {
            "policy": dict(model.policy.state_dict()), "opt_policy": model.policy.optimizer.state_dict(),
            "disc": dict(self.disc.state_dict()), "opt_disc": self.opt_disc.state_dict(),
            "reward_stats": self.reward_stats.state_dict(),
            "obs_norm": None if rms is None else {"mean": torch.as_tensor(rms.mean), "var": torch.as_tensor(rms.var),
                                                  "count": float(rms.count)},
            "last_obs": torch.as_tensor(np.asarray(model._last_obs)),
            "last_episode_starts": [bool(b) for b in model._last_episode_starts],
            "n_updates": int(model._n_updates), "torch_rng": self._torch_rng.clone(),
            "numpy_global_rng": {"keys": torch.as_tensor(np_state[1].astype(np.int64)), "pos": int(np_state[2]),
                                 "has_gauss": int(np_state[3]), "cached_gaussian": float(np_state[4])},
            "rng": numpy_rng_state(self.rng), "env_steps": self.env_steps, "iteration": self.iteration,
            "episodes_started": self.episodes_started,
            "envs": [{"seed": s.episode_seed, "return": s.episode_return,
                      "obs": torch.as_tensor(np.asarray(self.reward_env.last_obs[i])),
                      "actions": torch.as_tensor(np.stack(s.actions)) if s.actions else None}
                     for i, s in enumerate(self.slots)],
        }

    def _obs_rms(self) -> Any:
        """The observation normaliser's running statistics (None without ``normalize_obs``)."""
        if self.obs_norm is None:
            return None
        from stable_baselines3.common.running_mean_std import RunningMeanStd

        assert isinstance(self.obs_norm.obs_rms, RunningMeanStd)
        return self.obs_norm.obs_rms

    def load_policy(self, state: dict[str, Any]) -> None:
        """Load what acting needs (the policy and the observation statistics) and the discriminator."""
        self.model.policy.load_state_dict(state["policy"])
        self.disc.load_state_dict(state["disc"])
        if (state["obs_norm"] is None) != (self.obs_norm is None):
            raise InputError("checkpoint and configuration disagree on normalize_obs", field="ppo.normalize_obs")
        rms = self._obs_rms()
        if rms is not None:
            rms.mean = state["obs_norm"]["mean"].numpy().astype(np.float64)
            rms.var = state["obs_norm"]["var"].numpy().astype(np.float64)
            rms.count = float(state["obs_norm"]["count"])

    def load_state_dict(self, state: dict[str, Any]) -> None:
        model = self.model
        self.load_policy(state)
        # SB3 sets the policy optimiser's lr at every update: only the discriminator's must match the configuration
        load_optimizer_state(model.policy.optimizer, state["opt_policy"], name="opt_policy")
        load_optimizer_state(self.opt_disc, state["opt_disc"], scheduled=(), name="opt_disc")
        self.reward_stats.load_state_dict(state["reward_stats"])
        model._last_obs = state["last_obs"].numpy().copy()
        model._last_episode_starts = np.asarray(state["last_episode_starts"], bool)
        model._n_updates = int(state["n_updates"])
        self._torch_rng = state["torch_rng"].clone()
        g = state["numpy_global_rng"]
        self._numpy_rng = ("MT19937", g["keys"].numpy().astype(np.uint32), int(g["pos"]), int(g["has_gauss"]),
                           float(g["cached_gaussian"]))
        set_numpy_rng_state(self.rng, state["rng"])
        self.env_steps, self.iteration = int(state["env_steps"]), int(state["iteration"])
        model.num_timesteps = self.env_steps
        self.episodes_started = int(state["episodes_started"])
        if len(state["envs"]) != len(self.slots):
            raise InputError("checkpoint has a different number of environments", field="ppo.n_envs")
        for i, (slot, saved) in enumerate(zip(self.slots, state["envs"], strict=True)):
            actions = [] if saved["actions"] is None else list(saved["actions"].numpy())
            obs = slot.replay(int(saved["seed"]), actions, float(saved["return"]))
            if not np.array_equal(obs, saved["obs"].numpy()):
                raise InputError("environment replay does not reproduce the checkpointed state", field="envs")
            self.reward_env.last_obs[i] = obs


def build_adversarial_ppo(config: AdversarialPPOConfig, demos: DemoStats, *, discriminator: str, seed: int,
                          device: torch.device | str = DEFAULT_DEVICE) -> AdversarialPPO:
    """The GAIL (``discriminator="gail"``) or AIRL (``"airl"``) trainer of ``config`` for the environment of
    ``demos``, on ``device``."""
    return AdversarialPPO(config, demos, discriminator=discriminator, seed=seed, device=device)
