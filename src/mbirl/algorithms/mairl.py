"""MAIRL: adversarial IRL whose policy is trained end to end through a learned forward model.

docs/design.md, "MAIRL". One policy update (:func:`model_based_rollout_loss`) runs the current policy for
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

Every hyper-parameter is a field of :class:`MAIRLConfig`; :func:`build_mairl` makes the policy, forward model and
discriminator it names for a demo file's environment and hands them to :class:`MAIRL`.
"""

from __future__ import annotations

import copy
import math
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from mbirl.algorithms.learner import EVAL_SEED, StepInfo, evaluate_policy, numpy_rng_state, set_numpy_rng_state
from mbirl.algorithms.policies import GaussianPolicy, GumbelPolicy, Policy
from mbirl.data.replay import ReplayBuffer
from mbirl.dynamics.ensemble import ModelEnsemble
from mbirl.dynamics.models import MODELS, ForwardModel
from mbirl.dynamics.termination import TerminationFn, termination_fn
from mbirl.dynamics.training import fit_forward_model
from mbirl.envs.pixels import MAX_FRAME_STACK
from mbirl.errors import InputError, check_finite
from mbirl.experts.demos import DemoStats, check_demo_spaces
from mbirl.experts.rollout import EpisodeResult, make_env
from mbirl.nets import DEFAULT_DEVICE, resolve_device
from mbirl.reporting.checkpoint import load_optimizer_state
from mbirl.rewards.discriminator import DISCRIMINATORS, Discriminator, mean_update_stats
from mbirl.types import TransitionBatch

__all__ = ["MAIRL", "OBS_MODES", "VARIANTS", "EnvSlot", "ImaginedResult", "MAIRLConfig", "RolloutResult",
           "build_mairl", "build_networks", "imagined_rollout_loss", "model_based_rollout_loss"]

VARIANTS = {"mairl": "airl", "mgail": "gail"}
"""The trainer's variants and the discriminator (:data:`mbirl.rewards.DISCRIMINATORS` name) each uses."""

OBS_MODES = ("state", "pixels")
"""What the trainer can observe (``MAIRLConfig.obs``): the state vector, or frames of it
(:mod:`mbirl.algorithms.mairl_pixels`)."""


@dataclass(frozen=True)
class MAIRLConfig:
    """The MAIRL / MGAIL trainer's hyper-parameters (validated on construction)."""

    dynamics: str = "attention"
    """forward model (:data:`mbirl.dynamics.models.MODELS`): ``attention`` (faithful), ``attention-multi``, ``gru``
    or ``mlp``"""
    variant: str = "mairl"
    """``mairl`` (AIRL discriminator) or ``mgail`` (GAIL discriminator; use with ``dynamics="gru"``)"""
    horizon: int = 20
    """H: steps per differentiable real rollout (the original: 10)"""
    n_rollouts: int = 4
    """rollouts (parallel environments) whose gradients are accumulated per policy update (the original: 7)"""
    gamma: float = 0.99
    """discount of the rollout loss and of the AIRL shaping term"""
    alpha: float = 1.0
    """weight of the entropy term ``-alpha * stopgrad(log pi)`` in the policy's reward"""
    sigma_scale: float = 1 / 6
    """Gaussian policy noise ``sigma = sigma_scale * std(expert actions)`` (the original: 1/6)"""
    sigma_floor: float = 0.35
    """lower bound on sigma as a fraction of the action half-range"""
    gumbel_tau: float = 1.0
    """temperature of the straight-through Gumbel-softmax (discrete actions)"""
    policy_hidden: tuple[int, ...] = (100, 50)
    """hidden widths of the policy MLP"""
    disc_hidden: tuple[int, ...] = (200, 100)
    """hidden widths of the discriminator's MLPs (AIRL: ``g`` and ``h``)"""
    state_only: bool = False
    """learn the state-only reward ``g(s)`` (for transfer; AIRL only)"""
    lr_policy: float = 1e-3
    """Adam learning rate of the policy"""
    lr_disc: float = 1e-3
    """Adam learning rate of the discriminator"""
    lr_model: float = 1e-3
    """Adam learning rate of the forward model"""
    grad_clip: float = 10.0
    """policy gradient-norm clip"""
    policy_reg: float = 0.1
    """weight of the penalty on the policy's pre-squash outputs (keeps ``tanh`` out of saturation)"""
    batch_size: int = 512
    """minibatch of the model and discriminator updates"""
    replay_size: int = 50_000
    """replay buffer capacity (transitions)"""
    model_steps: int = 5
    """forward-model updates per iteration"""
    disc_steps: int = 1
    """discriminator updates per discriminator block"""
    disc_every: int = 1
    """iterations between discriminator blocks"""
    disc_window: int = 700
    """the discriminator's agent samples come from this many most recent transitions"""
    disc_half_life: int = 0
    """> 0: the agent samples come from all of the policy's transitions in the replay buffer instead, a transition
    ``k`` steps old drawn with weight ``0.5 ** (k / disc_half_life)`` (recent data dominates; old data still
    keeps the discriminator from overfitting the last few hundred transitions)"""
    expert_weight: float = 1.0
    """weight of the expert term of the discriminator loss (the original: 0.8)"""
    disc_grad_penalty: float = 0.0
    """weight of the zero-centred gradient penalty on the reward's input gradient"""
    warmup_steps: int = 1_000
    """uniformly random environment steps before training (model data, normalisers)"""
    model_pretrain_steps: int = 500
    """forward-model updates after the warm-up"""
    bc_steps: int = 0
    """behaviour-cloning updates of the policy on the demonstrations after the warm-up (maximum likelihood,
    minibatches of ``batch_size``; no environment steps): adversarial training then starts from a cloned policy
    (0: none, the paper's variant)"""
    bc_weight: float = 0.0
    """weight of the demonstrations' negative log-likelihood (a minibatch of ``batch_size``) added to every policy
    update, which keeps a cloned policy near the demonstrations while the discriminator is still uninformative
    (0: none)"""
    ema_rate: float = 1.0
    """< 1 evaluates (and exports) an exponential moving average of the policy weights (rate per update)"""
    policy_utd: float = 0.0
    """imagined policy updates per environment step (the update-to-data ratio of the imagined block; 0: none,
    the paper's variant). Each one rolls ``imagine_horizon`` steps through the learned model only, from
    ``imagine_batch`` start states drawn from the replay buffer"""
    real_update: bool = True
    """the real ``n_rollouts x horizon`` segment that collects data is also a policy update with the real-state
    correction (the paper's update); ``False``: plain data collection with the current stochastic policy"""
    imagine_horizon: int = 10
    """steps of each imagined rollout"""
    imagine_batch: int = 64
    """start states per imagined policy update"""
    start_window: int = 0
    """imagined start states come from this many most recent replay transitions (0: the whole buffer)"""
    demo_starts: float = 0.0
    """fraction of the imagined start states drawn from the demonstrations instead of the replay buffer"""
    ensemble_size: int = 1
    """forward models in the ensemble (1: one model, the paper's); imagined steps use a random member per sample"""
    model_penalty: float = 0.0
    """lambda of the MOPO-style reward penalty ``r - lambda * disagreement`` in imagined rollouts (needs an
    ensemble)"""
    max_disagreement: float = 0.0
    """an imagined rollout stops after a step whose ensemble disagreement exceeds this (in observation standard
    deviations; needs an ensemble; 0: no limit)"""
    obs: str = "state"
    """what the policy, model and discriminator observe (:data:`OBS_MODES`): ``state`` (the environment's state
    vector) or ``pixels`` (64x64 RGB frames of it, ``frame_stack`` stacked, through a convolutional encoder; for
    the environments :data:`mbirl.envs.pixels.PIXEL_RENDERERS` draws: Pendulum-v1, InvertedPendulum-v5). The
    fields below apply to ``pixels`` only"""
    frame_stack: int = 3
    """frames per pixel observation (3: velocities can be read from frame differences)"""
    latent_dim: int = 50
    """width of the encoder's latent state, the state of the policy, forward model and discriminator"""
    recon_weight: float = 1.0
    """weight of the encoder's reconstruction term next to the forward model's loss (0: none; the latent then
    collapses, see :mod:`mbirl.dynamics.latent`)"""
    pixel_batch_size: int = 128
    """minibatch of the model (encoder) and discriminator updates in pixel mode, in place of ``batch_size``
    (every sample is a stack of frames through the convolutions)"""

    def __post_init__(self) -> None:
        if self.obs not in OBS_MODES:
            raise InputError(f"unknown observation mode '{self.obs}' (expected one of {', '.join(OBS_MODES)})",
                             field="obs")
        if self.variant not in VARIANTS:
            raise InputError(f"unknown variant '{self.variant}' (expected one of {', '.join(VARIANTS)})",
                             field="variant")
        MODELS.check(self.dynamics, field="dynamics")
        if self.state_only and VARIANTS[self.variant] == "gail":
            raise InputError("state_only needs the AIRL discriminator (variant mairl); the GAIL discriminator of "
                             "mgail has no state-only form", field="state_only")
        for name in ("horizon", "n_rollouts", "batch_size", "replay_size", "disc_every", "disc_window",
                     "warmup_steps", "imagine_horizon", "imagine_batch", "ensemble_size", "latent_dim",
                     "pixel_batch_size"):
            if getattr(self, name) < 1:
                raise InputError(f"must be >= 1, got {getattr(self, name)}", field=name)
        for name in ("model_steps", "disc_steps", "model_pretrain_steps", "bc_steps"):
            if getattr(self, name) < 0:
                raise InputError(f"must be >= 0, got {getattr(self, name)}", field=name)
        for name in ("lr_policy", "lr_disc", "lr_model", "grad_clip", "sigma_scale", "gumbel_tau"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value > 0):
                raise InputError(f"must be a positive finite number, got {value}", field=name)
        if self.disc_half_life < 0:
            raise InputError(f"must be >= 0, got {self.disc_half_life}", field="disc_half_life")
        if self.start_window < 0:
            raise InputError(f"must be >= 0, got {self.start_window}", field="start_window")
        if not 1 <= self.frame_stack <= MAX_FRAME_STACK:
            raise InputError(f"must be in [1, {MAX_FRAME_STACK}], got {self.frame_stack}", field="frame_stack")
        for name in ("policy_utd", "model_penalty", "bc_weight", "recon_weight"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value >= 0):
                raise InputError(f"must be a finite number >= 0, got {value}", field=name)
        if not 0.0 <= self.demo_starts <= 1.0:
            raise InputError(f"must be in [0, 1], got {self.demo_starts}", field="demo_starts")
        if not (math.isfinite(self.max_disagreement) and self.max_disagreement >= 0):
            raise InputError(f"must be a finite number >= 0 (0: no limit), got {self.max_disagreement}",
                             field="max_disagreement")
        if self.ensemble_size == 1 and (self.model_penalty > 0 or self.max_disagreement > 0):
            raise InputError("model_penalty and max_disagreement measure an ensemble's disagreement: set "
                             "ensemble_size >= 2", field="ensemble_size")
        if not self.real_update and self.policy_utd == 0:
            raise InputError("real_update=False with policy_utd=0 would never update the policy",
                             field="policy_utd")
        if not 0.0 < self.gamma <= 1.0:
            raise InputError(f"must be in (0, 1], got {self.gamma}", field="gamma")
        if not 0.0 < self.ema_rate <= 1.0:
            raise InputError(f"must be in (0, 1], got {self.ema_rate}", field="ema_rate")
        for name in ("policy_hidden", "disc_hidden"):
            if any(width < 1 for width in getattr(self, name)):
                raise InputError(f"widths must be >= 1, got {list(getattr(self, name))}", field=name)


EnvStep = Callable[[np.ndarray], tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]]
"""Steps ``B`` environments with actions ``(B, ...)``; returns next observations ``(B, obs_dim)``, ``terminal``
``(B,)`` bool (a true terminal state), ``over`` ``(B,)`` bool (terminal or truncated: the episode ended) and the
environment's rewards ``(B,)`` (logged only)."""


@dataclass
class RolloutResult:
    """One batched model-based rollout: the loss to minimise and the real transitions it produced.

    ``obs, act, next_obs`` are ``(N, dim)`` arrays (``obs``, ``next_obs``: the environment's observations, e.g.
    uint8 frame stacks, when the rollout ran in a latent space), ``done`` ``(N,)`` floats (1 for terminal
    transitions), ``env`` ``(N,)`` the index of the environment each came from, ``over`` ``(N,)`` bools (the step
    ended its episode).
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


def model_based_rollout_loss(policy: Policy, model: ForwardModel | ModelEnsemble,
                             reward_fn: Callable[..., torch.Tensor], s0: torch.Tensor, env_step: EnvStep, *,
                             horizon: int, gamma: float, alpha: float, generator: torch.Generator,
                             encode: Callable[[np.ndarray], torch.Tensor] | None = None,
                             obs0: np.ndarray | None = None) -> RolloutResult:
    """Run ``horizon`` steps from the real states ``s0`` ``(B, obs_dim)`` and return the pathwise policy loss.

    ``reward_fn(obs, act, next_obs, done)`` is the discriminator's reward. Environments whose episode ends stop
    contributing (their later steps are masked out and not taken).

    In latent space (pixel observations) ``encode`` maps the environment's observations to states, ``s0`` is the
    encoding of ``obs0``, and the correction is ``s_{t+1} = s_hat + stopgrad(encode(o_{t+1}) - s_hat)``; the
    result's ``obs`` and ``next_obs`` are then the environment's observations, not the states.
    """
    if (encode is None) != (obs0 is None):
        raise ValueError("encode and obs0 go together")
    s = s0
    o = obs0
    dev = s0.device
    alive = torch.ones(s0.shape[0], dtype=s0.dtype, device=dev)
    loss = torch.zeros((), dtype=s0.dtype, device=dev)
    rewards = []
    rec: dict[str, list[Any]] = {k: [] for k in ("obs", "act", "next_obs", "done", "rew", "env", "over")}
    for t in range(horizon):
        idx = torch.nonzero(alive > 0)[:, 0].cpu().numpy()
        if len(idx) == 0:
            break
        a, log_pi = policy.sample(s, generator)
        s_hat = model(s, a)
        a_env = policy.env_action(a)
        if encode is None:
            next_env, terminal, over, rew_env = _step_subset(env_step, a_env, idx,
                                                             s_hat.detach().cpu().numpy().astype(np.float64))
            target = torch.as_tensor(next_env, dtype=s0.dtype, device=dev)
        else:
            assert o is not None
            next_env, terminal, over, rew_env = _step_subset(env_step, a_env, idx, o)
            target = s_hat.detach().clone()  # environments that ended keep the prediction (masked out)
            target[torch.as_tensor(idx, device=dev)] = encode(next_env[idx]).to(s0.dtype)
        s_next = s_hat + (target - s_hat).detach()
        done = torch.as_tensor(terminal, dtype=s0.dtype, device=dev)
        r = reward_fn(s, a, s_next, done) - alpha * log_pi.detach()
        loss = loss - (gamma**t) * (alive * r).sum() / s0.shape[0]
        rewards.append(r.detach().cpu()[idx])
        rec["obs"].append((s.detach().cpu().numpy() if o is None else o)[idx])
        rec["act"].append(a.detach().cpu().numpy()[idx])
        rec["next_obs"].append(next_env[idx])
        rec["done"].append(terminal[idx].astype(np.float32))
        rec["rew"].append(rew_env[idx])
        rec["env"].append(idx)
        rec["over"].append(over[idx])
        alive = alive * torch.as_tensor(~over, dtype=s0.dtype, device=dev)
        s = s_next
        o = None if o is None else next_env
    cat = {k: np.concatenate(v) for k, v in rec.items()}
    obs_dtype = np.float32 if encode is None else cat["obs"].dtype
    return RolloutResult(loss, float(torch.cat(rewards).mean()), cat["obs"].astype(obs_dtype),
                         cat["act"].astype(np.float32), cat["next_obs"].astype(obs_dtype),
                         cat["done"], cat["rew"].astype(np.float32), cat["env"], cat["over"])


@dataclass
class ImaginedResult:
    """One batched imagined rollout: the loss to minimise and what it saw (for logging)."""

    loss: torch.Tensor
    mean_reward: float
    mean_disagreement: float
    mean_length: float


def imagined_rollout_loss(policy: Policy, model: ForwardModel | ModelEnsemble, reward_fn: Callable[..., torch.Tensor],
                          s0: torch.Tensor, *, horizon: int, gamma: float, alpha: float, generator: torch.Generator,
                          terminal_fn: TerminationFn, penalty: float = 0.0, max_disagreement: float = math.inf
                          ) -> ImaginedResult:
    """Roll the policy ``horizon`` steps from ``s0`` ``(B, obs_dim)`` through the learned model only and return the
    pathwise policy loss (SVG(H)-style: the gradient flows through the rewards and the model's Jacobians).

    Per step: ``a ~ pi(s)``; ``s' = f(s, a)`` (an ensemble's random member per sample, with its disagreement
    ``u``); ``r = f_omega(s, a, s', done) - alpha * stopgrad(log pi) - penalty * u``. A rollout stops contributing
    after a step that ``terminal_fn`` says ends the episode or whose disagreement exceeds ``max_disagreement``.
    """
    s = s0
    dev = s0.device
    alive = torch.ones(s0.shape[0], dtype=s0.dtype, device=dev)
    loss = torch.zeros((), dtype=s0.dtype, device=dev)
    rewards, disagreements, length = [], [], torch.zeros((), dtype=s0.dtype, device=dev)
    for t in range(horizon):
        a, log_pi = policy.sample(s, generator)
        if isinstance(model, ModelEnsemble):
            s_next, u = model.sample(s, a, generator)
        else:
            s_next, u = model(s, a), torch.zeros(s0.shape[0], dtype=s0.dtype, device=dev)
        ended = terminal_fn(s_next.detach())
        r = reward_fn(s, a, s_next, ended.to(s0.dtype)) - alpha * log_pi.detach() - penalty * u
        loss = loss - (gamma**t) * (alive * r).sum() / s0.shape[0]
        live = alive > 0
        rewards.append(r.detach()[live])
        disagreements.append(u[live])
        length = length + alive.sum()
        alive = alive * (~ended & (u <= max_disagreement)).to(s0.dtype)
        if not bool((alive > 0).any()):
            break
        s = s_next
    return ImaginedResult(loss, float(torch.cat(rewards).mean()), float(torch.cat(disagreements).mean()),
                          float(length) / s0.shape[0])


def _step_subset(env_step: EnvStep, a_env: np.ndarray, idx: np.ndarray, fill: np.ndarray
                 ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Step only the environments in ``idx``; the others' next observations are ``fill`` (the model's prediction
    or the last observation: masked out anyway)."""
    b = fill.shape[0]
    next_obs = fill.copy()
    terminal = np.zeros(b, dtype=bool)
    over = np.ones(b, dtype=bool)
    rew = np.zeros(b, dtype=np.float64)
    out = env_step(a_env[idx])
    next_obs[idx], terminal[idx], over[idx], rew[idx] = out
    return next_obs, terminal, over, rew


@dataclass
class EnvSlot:
    """One training environment and what is needed to rebuild its exact state on resume: the seed of the current
    episode's reset and the actions taken since."""

    env: Any
    episode_seed: int
    actions: list[np.ndarray]
    obs: np.ndarray
    episode_return: float = 0.0


class MAIRL:
    """The MAIRL / MGAIL trainer on one gymnasium environment (:func:`build_mairl` builds one from a config); an
    online :class:`mbirl.algorithms.learner.ImitationLearner`.

    Args:
        config: the hyper-parameters.
        demos: the expert's transitions (their environment is trained on).
        policy, model, disc: the networks, already initialised (the trainer owns them from here on and moves them
            to ``device``).
        seed: seeds the sampling generator, the replay sampling and the environment resets.
        device: where the networks train (:func:`mbirl.nets.resolve_device`); the sampling generator stays on
            the CPU, so a seed draws the same noise on every device.
    """

    def __init__(self, config: MAIRLConfig, demos: DemoStats, policy: Policy, model: ForwardModel | ModelEnsemble,
                 disc: Discriminator, *, seed: int, device: torch.device | str = DEFAULT_DEVICE) -> None:
        obs_dim = self._state_dim(demos)
        for part, module in (("policy", policy), ("model", model), ("discriminator", disc)):
            if (module.obs_dim, module.act_dim) != (obs_dim, policy.act_dim):
                raise InputError(f"{part} is for observations/actions of size {module.obs_dim}/{module.act_dim}, "
                                 f"not {obs_dim}/{policy.act_dim}", field=part)
        self.config, self.demos, self.env_id, self.seed = config, demos, demos.env_id, seed
        self.device = resolve_device(device)
        self.expert_act = policy.encode_actions(demos.acts)
        self.policy, self.model, self.disc = policy.to(self.device), model.to(self.device), disc.to(self.device)
        self.discrete = policy.discrete
        self.obs_dim, self.act_dim = obs_dim, policy.act_dim
        self.act_scale = policy.action_scale()
        self.policy_ema: Policy | None = copy.deepcopy(policy) if config.ema_rate < 1.0 else None
        self.opt_policy = torch.optim.Adam(policy.parameters(), lr=config.lr_policy)
        self.opt_model = torch.optim.Adam(self._model_parameters(), lr=config.lr_model)
        self.opt_disc = torch.optim.Adam(disc.parameters(), lr=config.lr_disc)
        self.buffer: Any = self._make_buffer()
        self.generator = torch.Generator().manual_seed(seed)
        self.rng = np.random.default_rng(seed)
        self.envs = [EnvSlot(self._make_env(), 0, [], np.zeros(0)) for _ in range(config.n_rollouts)]
        self.terminal_fn, known = self._termination()
        if config.policy_utd > 0 and not known:
            warnings.warn(f"no termination rule is known for {self.env_id}: imagined rollouts assume its episodes "
                          "end only by the time limit", stacklevel=2)
        self.env_steps = 0
        self.iteration = 0
        self.update_credit = 0.0
        self.episodes_started = 0
        self.warmup_done = 0
        self.bc_pretrain_nll = math.nan
        for slot in self.envs:
            self._reset(slot)

    # ----- what the trainer observes (overridden for pixel observations: mbirl.algorithms.mairl_pixels) ------
    def _state_dim(self, demos: DemoStats) -> int:
        """Width of the states the policy, model and discriminator take."""
        return int(demos.obs.shape[1])

    def _model_parameters(self) -> list[torch.nn.Parameter]:
        """What the forward-model optimiser trains."""
        return list(self.model.parameters())

    def _make_buffer(self) -> Any:
        return ReplayBuffer(self.config.replay_size, self.obs_dim, self.act_dim, device=self.device)

    def _make_env(self) -> Any:
        return make_env(self.env_id)

    def _termination(self) -> tuple[TerminationFn, bool]:
        """The termination rule of imagined rollouts and whether it is the task's own."""
        return termination_fn(self.env_id)

    def _observation(self, obs: Any) -> np.ndarray:
        """An environment's observation as the trainer holds it."""
        return np.asarray(obs, np.float32)

    def encode(self, obs: np.ndarray) -> torch.Tensor:
        """States ``(B, obs_dim)`` of environment observations ``(B, ...)`` on the trainer's device (no
        gradient)."""
        return torch.as_tensor(obs, device=self.device)

    # ----- environments -------------------------------------------------------------------------------
    def _reset(self, slot: EnvSlot) -> None:
        slot.episode_seed = self.seed * 1_000_003 + self.episodes_started
        self.episodes_started += 1
        obs, _ = slot.env.reset(seed=slot.episode_seed)
        slot.obs, slot.actions, slot.episode_return = self._observation(obs), [], 0.0

    def _step_envs(self, slots: list[EnvSlot]) -> EnvStep:
        def step(actions: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
            outs = []
            for slot, a in zip(slots, actions, strict=True):
                env_a = int(a) if self.discrete else np.asarray(a, np.float32)
                obs, rew, terminated, truncated, _ = slot.env.step(env_a)
                slot.actions.append(np.asarray(a))
                slot.obs = self._observation(obs)
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
        while self.env_steps < self.config.warmup_steps:
            for slot in self.envs:
                a = space.sample()
                obs = slot.obs
                out = self._step_envs([slot])(np.asarray([a]))
                act = np.eye(self.act_dim, dtype=np.float32)[int(a)] if self.discrete else np.asarray(a, np.float32)
                self.buffer.add(obs[None], act[None], out[0], out[1].astype(np.float32))
                self.env_steps += 1
                if out[2][0]:
                    self._reset(slot)
        self._set_normalizers()
        self.train_model(self.config.model_pretrain_steps)
        self.bc_pretrain_nll = self.behaviour_clone(self.config.bc_steps)
        self.warmup_done = self.env_steps

    def _set_normalizers(self) -> None:
        """Fix the networks' input statistics from the warm-up's transitions and the demonstrations."""
        idx = self.buffer.recent_indices(self.buffer.size)
        all_obs = np.concatenate([self.demos.obs, self.buffer.obs[idx]])
        obs_t = torch.as_tensor(all_obs, device=self.device)
        self.policy.set_normalizer(obs_t)
        if self.policy_ema is not None:
            self.policy_ema.set_normalizer(obs_t)
        self.disc.set_normalizer(obs_t, self.act_scale)
        self.model.set_normalizer(all_obs, np.concatenate([self.demos.next_obs, self.buffer.next_obs[idx]]),
                                  self.act_scale.cpu().numpy())

    def demo_nll(self) -> torch.Tensor:
        """The policy's mean negative log-likelihood of ``batch_size`` demonstration transitions (drawn uniformly)."""
        idx = self.rng.integers(0, len(self.demos.obs), size=self.config.batch_size)
        obs = torch.as_tensor(self.demos.obs[idx], device=self.device)
        act = torch.as_tensor(self.expert_act[idx], device=self.device)
        return -self.policy.log_prob(obs, act).mean()

    def behaviour_clone(self, steps: int) -> float:
        """``steps`` maximum-likelihood updates of the policy on the demonstrations; the last loss (NaN for 0)."""
        loss = math.nan
        for k in range(steps):
            self.opt_policy.zero_grad()
            nll = self.demo_nll()
            check_finite(nll, "behaviour-cloning loss", k + 1)
            nll.backward()
            torch.nn.utils.clip_grad_norm_(self.policy.parameters(), self.config.grad_clip)
            self.opt_policy.step()
            self._update_ema()
            loss = float(nll.detach())
        return loss

    def _policy_log_pi(self, batch: TransitionBatch) -> TransitionBatch:
        with torch.no_grad():
            return batch.with_log_pi(self.policy.log_prob(batch.obs, batch.act))

    def expert_batch(self, n: int) -> TransitionBatch:
        """``n`` expert transitions drawn uniformly (with replacement), with the current policy's ``log_pi``."""
        idx = self.rng.integers(0, len(self.demos.obs), size=n)
        batch = TransitionBatch(torch.from_numpy(self.demos.obs[idx]), torch.from_numpy(self.expert_act[idx]),
                                torch.from_numpy(self.demos.next_obs[idx]), torch.from_numpy(self.demos.dones[idx]))
        return self._policy_log_pi(batch.to(self.device))

    # ----- blocks -------------------------------------------------------------------------------------
    def train_model(self, steps: int) -> float:
        """``steps`` minibatch updates of the forward model on the whole replay buffer; mean loss."""
        return fit_forward_model(self.model, self.opt_model, self.buffer, steps, batch_size=self.config.batch_size,
                                 rng=self.rng, iteration=self.iteration + 1)

    def train_discriminator(self, steps: int) -> tuple[float, float, float]:
        """``steps`` updates on recent agent transitions vs expert transitions; mean (loss, expert acc, agent acc)."""
        c = self.config
        out = []
        for _ in range(steps):
            # only the policy's own transitions: log pi of the warm-up's random actions is meaningless
            own = max(1, self.env_steps - self.warmup_done)
            if c.disc_half_life > 0:
                recent = self.buffer.recent_indices(own)  # newest first
                weights = 0.5 ** (np.arange(len(recent)) / c.disc_half_life)
                pick = self.rng.choice(len(recent), size=self._minibatch(), p=weights / weights.sum())
            else:
                recent = self.buffer.recent_indices(min(c.disc_window, own))
                pick = self.rng.integers(0, len(recent), size=self._minibatch())
            agent = self._policy_log_pi(self._agent_batch(recent[pick]))
            out.append(self.disc.update(self.opt_disc, self.expert_batch(self._minibatch()), agent, c.expert_weight,
                                        c.disc_grad_penalty, iteration=self.iteration + 1))
        return mean_update_stats(out)

    def _minibatch(self) -> int:
        """Transitions per minibatch of the model and discriminator updates."""
        return self.config.batch_size

    def _agent_batch(self, idx: np.ndarray) -> TransitionBatch:
        """The replay transitions at ``idx`` as states (``log_pi`` unset)."""
        return self.buffer.batch(idx)

    def reward_fn(self, obs: torch.Tensor, act: torch.Tensor, next_obs: torch.Tensor, done: torch.Tensor
                  ) -> torch.Tensor:
        return self.disc.reward(obs, act, next_obs, done)

    def policy_update(self) -> tuple[float, float, float, list[float]]:
        """One end-to-end policy update over ``n_rollouts`` real ``horizon``-step segments (the data collection).
        Returns (loss, gradient norm before clipping, mean reward, returns of episodes that ended)."""
        c = self.config
        obs0 = np.stack([s.obs for s in self.envs])
        s0 = self.encode(obs0)
        alive = np.arange(len(self.envs))

        def tracked(actions: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
            # the rollout passes the actions of the environments still running, in index order
            nonlocal alive
            out = self._step_envs([self.envs[i] for i in alive])(actions)
            alive = alive[~out[2]]
            return out

        with torch.set_grad_enabled(c.real_update):
            res = model_based_rollout_loss(self.policy, self.model, self.reward_fn, s0, tracked, horizon=c.horizon,
                                           gamma=c.gamma, alpha=c.alpha, generator=self.generator,
                                           **self._rollout_encoding(obs0))
        norm = math.nan
        if c.real_update:
            norm = self._policy_step(res.loss, s0)
        self.buffer.add(res.obs, res.act, res.next_obs, res.done)
        self.env_steps += len(res.obs)
        finished = []
        for i, slot in enumerate(self.envs):
            if res.over[res.env == i].any():
                finished.append(slot.episode_return)
                self._reset(slot)
        return float(res.loss.detach()), norm, res.mean_reward, finished

    def _rollout_encoding(self, obs0: np.ndarray) -> dict[str, Any]:
        """Keyword arguments of :func:`model_based_rollout_loss` for a rollout in latent space (none for states)."""
        return {}

    def _policy_step(self, rollout_loss: torch.Tensor, s0: torch.Tensor) -> float:
        """One optimiser step of the policy on a rollout loss (plus the saturation penalty at the start states);
        returns the gradient norm before clipping."""
        c = self.config
        self.opt_policy.zero_grad()
        loss = rollout_loss + c.policy_reg * self.policy.saturation(s0) if c.policy_reg > 0 else rollout_loss
        if c.bc_weight > 0:
            loss = loss + c.bc_weight * self.demo_nll()
        check_finite(loss, "policy loss", self.iteration + 1)
        loss.backward()
        norm = float(torch.nn.utils.clip_grad_norm_(self.policy.parameters(), c.grad_clip))
        # A NaN reward or model would poison the policy: stop (the last good checkpoint stays on disk).
        check_finite(norm, "policy gradient norm", self.iteration + 1)
        self.opt_policy.step()
        self._update_ema()
        return norm

    def start_states(self, n: int) -> torch.Tensor:
        """``n`` start states for imagined rollouts: a ``demo_starts`` fraction from the demonstrations, the rest
        from the replay buffer (its ``start_window`` most recent transitions; all when 0)."""
        c = self.config
        n_demo = int(round(c.demo_starts * n))
        window = self.buffer.recent_indices(c.start_window if c.start_window > 0 else self.buffer.size)
        replay = self.buffer.obs[window[self.rng.integers(0, len(window), size=n - n_demo)]]
        demo = self.demos.obs[self.rng.integers(0, len(self.demos.obs), size=n_demo)]
        return torch.as_tensor(np.concatenate([replay, demo]).astype(np.float32), device=self.device)

    def imagined_updates(self, n: int) -> tuple[float, float, float, float]:
        """``n`` policy updates on imagined rollouts; mean (loss, gradient norm, reward, disagreement) (NaN for 0)."""
        c = self.config
        out = []
        for _ in range(n):
            s0 = self.start_states(c.imagine_batch)
            res = imagined_rollout_loss(self.policy, self.model, self.reward_fn, s0, horizon=c.imagine_horizon,
                                        gamma=c.gamma, alpha=c.alpha, generator=self.generator,
                                        terminal_fn=self.terminal_fn, penalty=c.model_penalty,
                                        max_disagreement=c.max_disagreement or math.inf)
            norm = self._policy_step(res.loss, s0)
            out.append((float(res.loss.detach()), norm, res.mean_reward, res.mean_disagreement))
        if not out:
            return math.nan, math.nan, math.nan, math.nan
        loss, norm, reward, disagreement = (float(np.mean(col)) for col in zip(*out, strict=True))
        return loss, norm, reward, disagreement

    def iteration_step(self) -> StepInfo:
        """One iteration: a policy block (the real segment of ``n_rollouts * horizon`` env steps, with or without
        its update, then ``policy_utd`` imagined updates per env step taken), a model block and, every
        ``disc_every`` iterations, a discriminator block."""
        self.warmup()
        steps_before = self.env_steps
        loss, norm, mean_r, finished = self.policy_update()
        model_loss = self.train_model(self.config.model_steps)
        self.update_credit += self.config.policy_utd * (self.env_steps - steps_before)
        n_imagined = int(self.update_credit)
        self.update_credit -= n_imagined
        im_loss, im_norm, im_r, im_u = self.imagined_updates(n_imagined)
        d = (float("nan"),) * 3
        if self.iteration % self.config.disc_every == 0:
            d = self.train_discriminator(self.config.disc_steps)
        self.iteration += 1
        for part, module in (("policy", self.policy), ("model", self.model), ("discriminator", self.disc)):
            for name, p in module.named_parameters():
                check_finite(p, f"{part} parameter '{name}'", self.iteration)
        scalars = {"losses/policy": loss, "losses/model": model_loss, "losses/discriminator": d[0],
                   "charts/policy_grad_norm": norm, "charts/mean_reward": mean_r, "charts/disc_expert_acc": d[1],
                   "charts/disc_agent_acc": d[2]}
        if self.config.policy_utd > 0:
            scalars |= {"losses/imagined_policy": im_loss, "charts/imagined_grad_norm": im_norm,
                        "charts/imagined_reward": im_r, "charts/model_disagreement": im_u,
                        "charts/imagined_updates": float(n_imagined)}
        if self.config.bc_steps > 0 and self.iteration == 1:
            scalars["losses/bc_pretrain"] = self.bc_pretrain_nll
        return StepInfo(scalars, finished)

    def finished(self, env_steps: int) -> bool:
        """Training ends with the run's environment-step budget."""
        return self.env_steps >= env_steps

    def progress(self, env_steps: int) -> tuple[int, int]:
        return self.env_steps, env_steps

    def describe(self) -> dict[str, Any]:
        c = self.config
        real = 1 if c.real_update else 0
        return {"variant": c.variant, "dynamics": c.dynamics, "ensemble_size": c.ensemble_size,
                "policy_updates_per_env_step": real / (c.n_rollouts * c.horizon) + c.policy_utd}

    # ----- evaluation ---------------------------------------------------------------------------------
    def _update_ema(self) -> None:
        if self.policy_ema is None:
            return
        with torch.no_grad():
            for avg, p in zip(self.policy_ema.parameters(), self.policy.parameters(), strict=True):
                avg.lerp_(p, self.config.ema_rate)

    @property
    def eval_policy(self) -> Policy:
        """The policy evaluated and exported: the exponential moving average of the weights when
        ``ema_rate < 1`` (adversarial training oscillates; the average is much steadier), else the online one."""
        return self.policy_ema if self.policy_ema is not None else self.policy

    def act_deterministic(self, obs: np.ndarray) -> Any:
        with torch.no_grad():
            a = self.eval_policy.act(self.encode(self._observation(obs)[None]))[0]
        return int(a.argmax()) if self.discrete else a.cpu().numpy().astype(np.float32)

    def evaluate(self, episodes: int = 10, *, seed: int = EVAL_SEED, render: bool = False) -> EpisodeResult:
        """Deterministic episodes on the true reward (fixed reset seeds, so evaluations are comparable)."""
        return evaluate_policy(self.act_deterministic, self.env_id, episodes, seed=seed, render=render)

    # ----- state --------------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        return {
            "policy": dict(self.policy.state_dict()), "model": dict(self.model.state_dict()),
            "policy_ema": None if self.policy_ema is None else dict(self.policy_ema.state_dict()),
            "disc": dict(self.disc.state_dict()), "opt_policy": self.opt_policy.state_dict(),
            "opt_model": self.opt_model.state_dict(), "opt_disc": self.opt_disc.state_dict(),
            "buffer": self.buffer.state_dict(), "generator": self.generator.get_state(),
            "rng": numpy_rng_state(self.rng), "env_steps": self.env_steps,
            "iteration": self.iteration, "episodes_started": self.episodes_started, "warmup_done": self.warmup_done,
            "update_credit": self.update_credit,
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
        for optimizer, key in ((self.opt_policy, "opt_policy"), (self.opt_model, "opt_model"),
                               (self.opt_disc, "opt_disc")):
            load_optimizer_state(optimizer, state[key], scheduled=(), name=key)
        self.buffer.load_state_dict(state["buffer"])
        self.generator.set_state(state["generator"])
        set_numpy_rng_state(self.rng, state["rng"])
        self.env_steps, self.iteration = int(state["env_steps"]), int(state["iteration"])
        self.episodes_started = int(state["episodes_started"])
        self.warmup_done = int(state["warmup_done"])
        self.update_credit = float(state.get("update_credit", 0.0))
        if len(state["envs"]) != len(self.envs):
            raise InputError("checkpoint has a different number of environments", field="n_rollouts")
        for slot, saved in zip(self.envs, state["envs"], strict=True):
            # rebuild the exact mid-episode state: same reset seed, same actions
            slot.episode_seed = int(saved["seed"])
            obs, _ = slot.env.reset(seed=slot.episode_seed)
            actions = [] if saved["actions"] is None else list(saved["actions"].numpy())
            for a in actions:
                obs = slot.env.step(int(a) if self.discrete else np.asarray(a, np.float32))[0]
            slot.obs, slot.actions = self._observation(obs), [np.asarray(a) for a in actions]
            slot.episode_return = float(saved["return"])
            if not np.allclose(slot.obs, saved["obs"].numpy(), atol=1e-4):
                raise InputError("environment replay does not reproduce the checkpointed state", field="envs")


def build_mairl(config: MAIRLConfig, demos: DemoStats, *, seed: int, device: torch.device | str = DEFAULT_DEVICE
                ) -> MAIRL:
    """The trainer of ``config`` for the environment of ``demos``: checks that the demonstrations fit the
    environment's spaces, then seeds torch with ``seed`` and builds the policy, the forward model and the
    discriminator (in that order, on the CPU, so a seed always gives the same initial networks) and moves them
    to ``device``. With ``config.obs == "pixels"``: :func:`mbirl.algorithms.mairl_pixels.build_pixel_mairl`."""
    if config.obs == "pixels":
        from mbirl.algorithms.mairl_pixels import build_pixel_mairl

        return build_pixel_mairl(config, demos, seed=seed, device=device)
    obs_space, space = check_demo_spaces(demos)
    torch.manual_seed(seed)
    policy, model, disc = build_networks(config, demos, space, obs_dim=int(obs_space.shape[0]))
    return MAIRL(config, demos, policy, model, disc, seed=seed, device=device)


def build_networks(config: MAIRLConfig, demos: DemoStats, space: Any, *, obs_dim: int
                   ) -> tuple[Policy, ForwardModel | ModelEnsemble, Discriminator]:
    """The policy, forward model and discriminator of ``config`` on states of width ``obs_dim`` for the action
    space ``space`` (initialised on the CPU from torch's global generator, in that order)."""
    import gymnasium as gym

    act_dim = int(space.n) if isinstance(space, gym.spaces.Discrete) else int(space.shape[0])
    policy: Policy
    if isinstance(space, gym.spaces.Discrete):
        policy = GumbelPolicy(obs_dim, act_dim, config.gumbel_tau, config.policy_hidden)
    else:
        policy = GaussianPolicy.for_demos(obs_dim, space.low.astype(np.float32), space.high.astype(np.float32),
                                          demos.acts, sigma_scale=config.sigma_scale,
                                          sigma_floor=config.sigma_floor, hidden=config.policy_hidden)
    model: ForwardModel | ModelEnsemble
    if config.ensemble_size > 1:
        model = ModelEnsemble(config.dynamics, config.ensemble_size, obs_dim=obs_dim, act_dim=act_dim)
    else:
        model = MODELS.make(config.dynamics, obs_dim=obs_dim, act_dim=act_dim)
    disc = DISCRIMINATORS.make(VARIANTS[config.variant], obs_dim=obs_dim, act_dim=act_dim, gamma=config.gamma,
                               hidden=config.disc_hidden, state_only=config.state_only)
    return policy, model, disc

