"""Finished (or checkpointed) runs as Python objects: :func:`load_run` reads any run directory this package writes.

* an imitation run (``mbirl il train`` / ``mbirl mairl train``: ``mairl``, ``mgail``, ``gail``, ``airl``, ``dac``,
  ``bc``) becomes an :class:`ImitationRun`: its configuration, metrics, deterministic policy
  (``run.policy.act(obs)``), learned reward (``run.reward(obs, act, next_obs, done)``, a
  :class:`~mbirl.rewards.learned.LearnedReward`; None for ``bc``) and ``run.as_env_wrapper(env)``, an environment
  whose reward is the learned one, for any Stable-Baselines3 algorithm;
* an MBIRL run (``mbirl mbirl train``) becomes an :class:`MBIRLRun`: its configuration, metrics, the learned
  keypoint cost (``run.cost(z, goal)``) and the planner that acts with it (``run.policy.act(start_q, goal)``).

Which reward :attr:`ImitationRun.reward` is: AIRL discriminators (``mairl``, ``airl``) give the **unshaped**
``g(s)`` / ``g(s, a)`` (``run.reward.with_term("f")`` is the **shaped** ``f(s, a, s')`` the policy was trained on);
``mgail`` gives GAIL's ``log D``, ``gail`` ``-log(1 - D)`` and ``dac`` the logit ``log D - log(1 - D)`` (each the
reward its policy was trained on). :data:`mbirl.rewards.learned.TERMS` lists them all.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
import torch

from mbirl.errors import InputError
from mbirl.rewards.learned import LearnedReward, LearnedRewardWrapper

__all__ = ["ImitationRun", "MBIRLRun", "PlannerPolicy", "RunPolicy", "load_run"]


class RunPolicy:
    """A run's deterministic policy over raw environment observations.

    ``act(obs)`` takes one observation ``(obs_dim,)`` and returns one environment action, or a batch ``(B, obs_dim)``
    and returns ``B`` actions stacked.
    """

    def __init__(self, act_fn: Callable[[np.ndarray], Any], obs_dim: int) -> None:
        self._act, self.obs_dim = act_fn, obs_dim

    def act(self, obs: np.ndarray) -> Any:
        obs = np.asarray(obs, np.float32)
        if obs.ndim == 2:
            return np.stack([np.asarray(self._act(o)) for o in obs])
        if obs.shape != (self.obs_dim,):
            raise InputError(f"expected an observation of shape ({self.obs_dim},) or a batch, got {obs.shape}",
                             field="obs")
        return self._act(obs)

    def __call__(self, obs: np.ndarray) -> Any:
        return self.act(obs)


@dataclass
class ImitationRun:
    """An imitation run directory, loaded (:func:`load_run`)."""

    path: Path
    """the run directory"""
    algo: str
    """``mairl``, ``mgail``, ``gail``, ``airl``, ``dac`` or ``bc``"""
    env_id: str
    """the gymnasium environment it was trained on"""
    config: Any
    """its :class:`~mbirl.experiments.imitation.ImitationRunConfig`"""
    metrics: dict[str, Any] | None
    """``metrics.json`` (None while the run has not finished)"""
    info: dict[str, Any] | None
    """``run.json``: package version, git commit, command line, component class names (None for older runs)"""
    policy: RunPolicy
    """the evaluated policy of the last checkpoint, deterministic"""
    reward: LearnedReward | None
    """the learned reward (None for behaviour cloning); see the module docstring for which term it is"""
    learner: Any
    """the rebuilt learner with the checkpoint's networks (for anything not exposed above)"""
    env_steps: int
    """environment steps trained when the checkpoint was written"""

    def as_env_wrapper(self, env: gym.Env | str | None = None, *, term: str | None = None) -> LearnedRewardWrapper:
        """``env`` (an environment, an id, or None: the run's own) with the learned reward in place of its own; the
        true reward stays in ``info["true_reward"]``. ``term`` picks another reward term (e.g. ``"f"``)."""
        if self.reward is None:
            raise InputError(f"a '{self.algo}' run has no learned reward", source=str(self.path))
        from mbirl.experts.rollout import make_env

        base: gym.Env = make_env(env or self.env_id) if env is None or isinstance(env, str) else env
        reward = self.reward if term is None else self.reward.with_term(term)
        return LearnedRewardWrapper(base, reward)

    def evaluate(self, episodes: int = 10, *, seed: int = 2_000_000) -> np.ndarray:
        """Returns ``(episodes,)`` of the deterministic policy on the true reward, reset seeds ``seed + i``."""
        return np.asarray(self.learner.evaluate(episodes, seed=seed).returns)


class PlannerPolicy:
    """MBIRL's policy: gradient-based MPC through the robot's dynamics with the learned cost.

    ``act(start_q, goal)`` takes the start joints ``(n_joints,)`` and goal keypoints ``(k, 3)`` (or ``(3k,)``) and
    returns the planned joint displacements ``(horizon - 1, n_joints)``.
    """

    def __init__(self, learner: Any, horizon: int) -> None:
        self.learner, self.horizon = learner, horizon

    def act(self, start_q: np.ndarray, goal: np.ndarray) -> np.ndarray:
        from mbirl.planning import GradientMode, optimize_actions

        q0 = torch.as_tensor(np.asarray(start_q, np.float32)).reshape(1, -1)
        g = torch.as_tensor(np.asarray(goal, np.float32)).reshape(1, -1)
        u, _ = optimize_actions(self.learner.dynamics, self.learner.cost, q0, g, self.horizon,
                                grad_mode=GradientMode.NONE, **self.learner.inner)
        return u[0].detach().numpy()


@dataclass
class MBIRLRun:
    """An MBIRL run directory, loaded (:func:`load_run`). MBIRL learns a cost over whole keypoint trajectories,
    not a per-step reward of a gymnasium environment, so it has no :meth:`ImitationRun.as_env_wrapper`."""

    path: Path
    config: Any
    """its :class:`~mbirl.experiments.kuka_irl.MBIRLRunConfig`"""
    metrics: dict[str, Any] | None
    info: dict[str, Any] | None
    cost: Any
    """the learned :class:`~mbirl.costs.KeypointCost`: ``cost(z (B, T, 3k), goal (B, 3k)) -> (B,)``"""
    policy: PlannerPolicy
    learner: Any
    """the rebuilt learner (its ``evaluate(batch)`` plans and scores against demonstrations)"""
    algo: str = "mbirl"

    def reward(self, z: torch.Tensor, goal: torch.Tensor) -> torch.Tensor:
        """The learned reward of keypoint trajectories: the negated cost, ``(B,)``."""
        return -self.cost(z, goal)

    def as_env_wrapper(self, env: gym.Env | str | None = None, *, term: str | None = None) -> LearnedRewardWrapper:
        raise InputError("an MBIRL run learns a trajectory cost over keypoints, not a per-step environment reward; "
                         "use run.cost and run.policy", source=str(self.path))


def _read_optional_json(path: Path) -> dict[str, Any] | None:
    from mbirl.validation import read_json

    if not path.is_file():
        return None
    data = read_json(path)
    return data if isinstance(data, dict) else None


def load_run(run_dir: str | Path, *, demos: str | Path | None = None, cost: Any = None
             ) -> ImitationRun | MBIRLRun:
    """Load a run directory written by ``mbirl il train``, ``mbirl mairl train`` or ``mbirl mbirl train``.

    Args:
        run_dir: the run directory (it needs ``config.json`` and ``checkpoints/last``).
        demos: the demonstration file when it is no longer where the run's configuration says (the networks'
            shapes and normalisers depend on it).
        cost: for an MBIRL run of a user's own cost (recorded as ``custom:module.Class``), an instance of that cost
            to load the learned parameters into.
    """
    path = Path(run_dir)
    config_path = path / "config.json"
    if not config_path.is_file():
        raise InputError("not a run directory (no config.json)", source=str(path))
    try:
        raw = json.loads(config_path.read_text())
    except (OSError, ValueError) as exc:
        raise InputError(f"unreadable config.json ({type(exc).__name__})", source=str(config_path)) from None
    if isinstance(raw, dict) and "method" in raw and "trainer" in raw and "robot" in raw:
        return _load_mbirl(path, demos=demos, cost=cost)
    if isinstance(raw, dict) and "methods" in raw:
        raise InputError("a comparison directory holds one run per method: load one of its subdirectories",
                         source=str(path))
    return _load_imitation(path, demos=demos)


def _load_imitation(path: Path, *, demos: str | Path | None) -> ImitationRun:
    import dataclasses

    from mbirl.experiments.imitation import build_learner, load_imitation_config
    from mbirl.reporting.checkpoint import load_checkpoint
    from mbirl.reporting.runs import checkpoint_stem

    cfg = load_imitation_config(path)
    if cfg.algo in ("mairl", "mgail") and cfg.mairl.obs == "pixels":
        raise InputError("the run observes pixels: its policy acts on frame stacks and its reward on the encoder's "
                         "latent states, neither on the environment's observations (evaluate it with `mbirl mairl "
                         "eval`)", source=str(path), field="obs")
    if demos is not None:
        cfg = dataclasses.replace(cfg, demos=str(demos))
    if not Path(cfg.demos).is_file():
        raise InputError(f"the run's demonstration file '{cfg.demos}' is not there; pass demos=...",
                         source=str(path), field="demos")
    state = load_checkpoint(checkpoint_stem(path))
    learner, stats = build_learner(cfg, device="cpu")  # acts one observation at a time: the CPU, whatever trained it
    learner.load_policy(state["trainer"])
    obs_dim = int(stats.obs.shape[1])
    return ImitationRun(path=path, algo=cfg.algo, env_id=stats.env_id, config=cfg,
                        metrics=_read_optional_json(path / "metrics.json"),
                        info=_read_optional_json(path / "run.json"),
                        policy=RunPolicy(learner.act_deterministic, obs_dim), reward=reward_of(learner, cfg.algo),
                        learner=learner, env_steps=int(state["trainer"].get("env_steps", 0)))


def reward_of(learner: Any, algo: str) -> LearnedReward | None:
    """The frozen learned reward of a trained imitation learner (None when it has no discriminator)."""
    from mbirl.algorithms.adversarial_ppo import AdversarialPPO
    from mbirl.algorithms.dac import DAC
    from mbirl.algorithms.mairl import MAIRL
    from mbirl.rewards.discriminator import AIRLDiscriminator

    disc = getattr(learner, "disc", None)
    if disc is None:
        return None
    airl = isinstance(disc, AIRLDiscriminator)
    source = {"algo": algo, "learner": type(learner).__name__}
    if isinstance(learner, MAIRL):
        policy = learner.policy
        if policy.discrete:
            return LearnedReward.from_discriminator(disc, action="onehot", env_id=learner.env_id, source=source,
                                                    default_term="g" if airl else "log_d")
        low, high = getattr(policy, "low"), getattr(policy, "high")  # noqa: B009 (a GaussianPolicy's box)
        return LearnedReward.from_discriminator(disc, action="clip", low=low.numpy(), high=high.numpy(),
                                                env_id=learner.env_id, source=source,
                                                default_term="g" if airl else "log_d")
    if isinstance(learner, AdversarialPPO):
        return LearnedReward.from_discriminator(disc, action="onehot" if learner.discrete else "raw",
                                                env_id=learner.env_id, source=source,
                                                default_term="g" if airl else "neg_log_1md")
    if isinstance(learner, DAC):
        return LearnedReward.from_discriminator(disc, action="unit", low=learner.low, high=learner.high,
                                                env_id=learner.env_id, obs_mean=learner.obs_mean,
                                                obs_std=learner.obs_std, absorbing=learner.config.absorbing,
                                                source=source, default_term="g" if airl else "logit")
    raise InputError(f"no learned-reward export for {type(learner).__name__}", field="algo")


def _load_mbirl(path: Path, *, demos: str | Path | None, cost: Any) -> MBIRLRun:
    import dataclasses

    from mbirl.experiments.kuka_irl import MBIRLRunConfig, prepare_run
    from mbirl.reporting.checkpoint import load_checkpoint
    from mbirl.reporting.runs import checkpoint_stem
    from mbirl.validation import config_from_dict, read_json

    cfg = config_from_dict(MBIRLRunConfig, read_json(path / "config.json"), source=str(path / "config.json"))
    if demos is not None:
        cfg = dataclasses.replace(cfg, demos=str(demos))
    custom = cfg.method.startswith("custom:")
    if custom and cost is None:
        raise InputError(f"the run learnt a user's own cost ({cfg.method[7:]}); pass cost=<an instance of it>",
                         source=str(path), field="cost")
    # loaded to plan and evaluate, on the CPU, whichever device trained the run
    prep = prepare_run(dataclasses.replace(cfg, method="weighted" if custom else cfg.method, device="cpu"))
    learner: Any = prep.learner
    if custom:
        from mbirl.algorithms.mbirl import MBIRL

        learner = MBIRL(cost, prep.dynamics, prep.train, prep.test, cfg.trainer)
    state = load_checkpoint(checkpoint_stem(path))
    try:
        learner.load_state_dict(state["learner"])
    except (KeyError, TypeError, ValueError, RuntimeError) as exc:
        raise InputError(f"checkpoint does not match the run's cost ({type(exc).__name__})", source=str(path)
                         ) from None
    return MBIRLRun(path=path, config=cfg, metrics=_read_optional_json(path / "metrics.json"),
                    info=_read_optional_json(path / "run.json"), cost=learner.cost,
                    policy=PlannerPolicy(learner, prep.train.horizon), learner=learner)
