"""Train experts with Stable-Baselines3 and export them as safetensors policies.

Each environment has one preset (:data:`EXPERT_PRESETS`): the algorithm, its hyper-parameters (close to the
rl-baselines3-zoo tuned ones) and a step budget. Training evaluates the exported deterministic policy
periodically and keeps the best export, so a run stopped by its time budget still leaves a usable expert.

The output directory is a run directory (:class:`mbirl.reporting.runs.RunDir`): ``config.json`` (an
:class:`ExpertRunConfig`), ``metrics.jsonl``, ``checkpoints/last`` (the complete SB3 training state as safetensors +
JSON, :mod:`mbirl.experts.sb3_state`, written after each evaluation) and, at the end, ``metrics.json``. A directory
that already holds an expert run is refused; ``resume`` continues it exactly (same evaluations, same exports, same
best expert as an uninterrupted run), ``overwrite`` trains a new one in its place.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch

from mbirl.errors import InputError
from mbirl.experts.policy import ExpertPolicy, export_sb3_policy
from mbirl.experts.rollout import make_env, run_episodes
from mbirl.experts.sb3_state import SB3StateCapture, eval_checkpoint_callback, load_sb3_state
from mbirl.nets import DEFAULT_DEVICE, check_device, resolve_device
from mbirl.reporting.checkpoint import restoring
from mbirl.reporting.runs import ALREADY_HOLDS_A_RUN, RunDir, rng_state, set_rng_state

__all__ = ["EXPERT_PRESETS", "GENERIC_ALGOS", "GENERIC_STEPS", "HOPPER_PPO", "ExpertPreset", "ExpertResult",
           "ExpertRunConfig", "load_expert", "train_expert"]


@dataclass(frozen=True)
class ExpertPreset:
    """How to train the expert of one environment.

    Attributes:
        algo: ``sac``, ``td3``, ``ppo`` or ``tqc`` (sb3-contrib).
        steps: default environment-step budget.
        kwargs: keyword arguments of the SB3 constructor.
        n_envs: parallel environments (PPO).
        target: return the expert should reach (reported, not enforced).
        normalize: train on ``VecNormalize``-d observations and rewards (PPO); the exported policy carries
            the observation statistics, so it acts on raw observations.
        normalize_reward: with ``normalize``, whether rewards are normalised too (the RL zoo's Swimmer does not).
    """

    algo: str
    steps: int
    kwargs: dict[str, Any] = field(default_factory=dict)
    n_envs: int = 1
    target: float | None = None
    normalize: bool = False
    normalize_reward: bool = True


def _hopper_ppo_kwargs() -> dict[str, Any]:
    # rl-baselines3-zoo's tuned PPO for Hopper (normalised observations and rewards).
    from torch import nn

    return {"batch_size": 32, "n_steps": 512, "gamma": 0.999, "learning_rate": 9.80828e-05,
            "ent_coef": 0.00229519, "clip_range": 0.2, "n_epochs": 5, "gae_lambda": 0.99, "max_grad_norm": 0.7,
            "vf_coef": 0.835671, "policy_kwargs": {"log_std_init": -2, "ortho_init": False, "activation_fn": nn.ReLU,
                                                   "net_arch": {"pi": [256, 256], "vf": [256, 256]}}}


EXPERT_PRESETS: dict[str, ExpertPreset] = {
    "Pendulum-v1": ExpertPreset("sac", 20_000, {"learning_rate": 1e-3, "learning_starts": 1000}, target=-200.0),
    "CartPole-v1": ExpertPreset("ppo", 100_000, {"n_steps": 32, "batch_size": 256, "gae_lambda": 0.8,
                                                  "gamma": 0.98, "n_epochs": 20, "ent_coef": 0.0,
                                                  "learning_rate": 1e-3, "clip_range": 0.2}, n_envs=8, target=500.0),
    "InvertedPendulum-v5": ExpertPreset("sac", 30_000, {"learning_starts": 1000}, target=1000.0),
    "Hopper-v5": ExpertPreset("sac", 1_000_000, {"learning_starts": 10_000}, target=2500.0),
    # rl-baselines3-zoo's TD3 for the MuJoCo locomotion tasks (SB3's defaults otherwise: lr 1e-3, batch 256,
    # [400, 300] networks); TD3 converges in less wall-clock than SAC on 2 CPU cores (Hopper: 2680 in 22 min).
    "HalfCheetah-v5": ExpertPreset("td3", 1_000_000, {"learning_starts": 10_000, "noise_std": 0.1}, target=5000.0),
    "Walker2d-v5": ExpertPreset("td3", 1_000_000, {"learning_starts": 10_000, "noise_std": 0.1}, target=3000.0),
    "Ant-v5": ExpertPreset("td3", 1_000_000, {"learning_starts": 10_000, "noise_std": 0.1}, target=3000.0),
    # SAC/TD3 stall near 50 on Swimmer (γ = 0.99 cannot see the slow forward drift): the RL zoo's PPO with
    # γ = 0.9999 and normalised observations (not rewards) reaches ~280.
    "Swimmer-v5": ExpertPreset("ppo", 1_000_000, {"gamma": 0.9999}, target=150.0, normalize=True,
                               normalize_reward=False),
}

GENERIC_ALGOS = ("sac", "td3", "ppo")
"""Algorithms ``--algo`` trains with Stable-Baselines3's default hyper-parameters (any environment)."""

GENERIC_STEPS = {"sac": 100_000, "td3": 100_000, "ppo": 200_000}
"""Default environment-step budgets of :data:`GENERIC_ALGOS` (``--steps`` overrides)."""

HOPPER_PPO = ExpertPreset("ppo", 2_000_000, _hopper_ppo_kwargs(), target=2500.0, normalize=True)
"""Alternative Hopper preset (``train_expert(cfg, out, preset=HOPPER_PPO)``): ~13x more env steps/s than SAC on these
CPUs, but it stood still (return ~1000) through 0.4-1M steps in 2 of 2 seeds, so SAC stays the default."""


@dataclass(frozen=True)
class ExpertRunConfig:
    """One expert training run (validated on construction)."""

    env: str
    """gymnasium environment id (with a preset in :data:`EXPERT_PRESETS` unless one is passed)"""
    seed: int = 0
    """seeds SB3 (networks, exploration, environments)"""
    steps: int | None = None
    """environment-step budget (None: the preset's)"""
    max_minutes: float | None = None
    """stop after this many minutes of training (the best export so far is kept)"""
    eval_every: int = 10_000
    """environment steps between evaluations of the exported deterministic policy"""
    eval_episodes: int = 5
    """episodes per evaluation"""
    algo: str | None = None
    """``sac``, ``td3`` or ``ppo`` with Stable-Baselines3's default hyper-parameters, for an environment without a
    preset (or instead of its preset's algorithm); None: the preset"""
    device: str = DEFAULT_DEVICE
    """where SB3's networks train: ``auto`` (CUDA when there is a GPU), ``cpu`` or ``cuda``
    (:func:`mbirl.nets.resolve_device`); SB3's MLP policies are usually fastest on the CPU"""

    RESUMABLE: ClassVar[tuple[str, ...]] = ("steps", "max_minutes", "device")
    """What ``--resume`` may change: how long training goes and the device (checkpoints hold CPU tensors)."""

    def __post_init__(self) -> None:
        for name in ("steps", "eval_every", "eval_episodes"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise InputError(f"must be >= 1, got {value}", field=name.replace("_", "-"))
        if self.max_minutes is not None and not (math.isfinite(self.max_minutes) and self.max_minutes > 0):
            raise InputError(f"must be a positive number, got {self.max_minutes}", field="max-minutes")
        if self.algo is not None and self.algo not in GENERIC_ALGOS:
            raise InputError(f"unknown algorithm '{self.algo}' (expected one of {', '.join(GENERIC_ALGOS)})",
                             field="algo")
        check_device(self.device)

    def preset(self) -> ExpertPreset:
        """The preset this run trains with: :data:`EXPERT_PRESETS`' for the environment, or SB3's defaults for
        ``algo`` (:data:`GENERIC_STEPS` steps unless ``steps`` says otherwise)."""
        known = EXPERT_PRESETS.get(self.env)
        if self.algo is None:
            if known is None:
                raise InputError(f"no expert preset for '{self.env}' (known: {', '.join(EXPERT_PRESETS)}); pass "
                                 f"--algo {'|'.join(GENERIC_ALGOS)} to train with Stable-Baselines3's defaults",
                                 field="env")
            return known
        if known is not None and known.algo == self.algo:
            return known
        return ExpertPreset(self.algo, GENERIC_STEPS[self.algo])


@dataclass(frozen=True)
class ExpertResult:
    """Where the best export is and how good it was."""

    path: Path
    best_return: float
    env_steps: int
    seconds: float


def _make_model(env_id: str, preset: ExpertPreset, seed: int, device: torch.device | str = DEFAULT_DEVICE) -> Any:
    if preset.algo == "ppo":
        from stable_baselines3 import PPO
        from stable_baselines3.common.env_util import make_vec_env

        venv = make_vec_env(env_id, n_envs=preset.n_envs, seed=seed)
        if preset.normalize:
            from stable_baselines3.common.vec_env import VecNormalize

            venv = VecNormalize(venv, norm_reward=preset.normalize_reward, gamma=preset.kwargs.get("gamma", 0.99))
        return PPO("MlpPolicy", venv, seed=seed, verbose=0, device=device, **preset.kwargs)
    if preset.algo == "sac":
        from stable_baselines3 import SAC

        return SAC("MlpPolicy", make_env(env_id), seed=seed, verbose=0, device=device, **preset.kwargs)
    if preset.algo == "td3":
        from stable_baselines3 import TD3
        from stable_baselines3.common.noise import NormalActionNoise

        env = make_env(env_id)
        kwargs = dict(preset.kwargs)
        sigma = kwargs.pop("noise_std", 0.1)
        n = env.action_space.shape[0]
        noise = NormalActionNoise(np.zeros(n), sigma * np.ones(n))
        return TD3("MlpPolicy", env, seed=seed, verbose=0, device=device, action_noise=noise, **kwargs)
    if preset.algo == "tqc":
        from sb3_contrib import TQC

        return TQC("MlpPolicy", make_env(env_id), seed=seed, verbose=0, device=device, **preset.kwargs)
    raise InputError(f"unknown algorithm '{preset.algo}'", field="algo")


def train_expert(cfg: ExpertRunConfig, out_dir: str | Path, *, progress: bool = True,
                 preset: ExpertPreset | None = None, overwrite: bool = False, resume: bool = False) -> ExpertResult:
    """Train the preset expert of ``cfg.env`` (or ``preset``); writes ``out_dir/expert.{safetensors,json}``
    (best export), ``out_dir/last.{safetensors,json}``, ``config.json``, ``metrics.jsonl``, a checkpoint after each
    evaluation and ``metrics.json``.

    A directory that already holds an expert run is refused unless ``resume`` (continue it exactly from its last
    checkpoint) or ``overwrite`` (train a new expert in its place).
    """
    from stable_baselines3.common.logger import Logger

    env_id, seed = cfg.env, cfg.seed
    device = resolve_device(cfg.device)
    if preset is None:
        preset = cfg.preset()
    _check_action_space(env_id, preset.algo)
    if preset.normalize and preset.algo != "ppo":
        raise InputError(f"normalize is only supported with ppo, not {preset.algo}", field="normalize")
    total = preset.steps if cfg.steps is None else cfg.steps
    out = Path(out_dir)
    if resume and overwrite:
        raise InputError("--resume continues the expert in OUT, --overwrite replaces it: pass one", field="resume")
    run = _open_run(out, cfg, overwrite, resume)
    torch.manual_seed(seed)
    model = _make_model(env_id, preset, seed, device)
    model.set_logger(Logger(folder=None, output_formats=[]))  # SB3's default makes an empty temporary directory
    eval_env = make_env(env_id)
    best = {"ret": -np.inf, "steps": 0}
    spent = 0.0
    if run.state is not None:
        with restoring(run.checkpoint.with_suffix(".json")):
            load_sb3_state(model, run.state["sb3"])
            best = {"ret": float(run.state["best"]["ret"]), "steps": int(run.state["best"]["steps"])}
            spent = float(run.state["seconds"])
            set_rng_state(run.state["rng"])
    run.start()
    t0 = time.monotonic() - spent
    resumed_at = int(model.num_timesteps) if run.resumed else None

    capture = SB3StateCapture(model, env_id, "this expert run writes no checkpoints and cannot be resumed; it "
                              "trains to the end and keeps its best export")

    def save() -> None:
        state = capture()
        if state is not None:
            run.save({"sb3": state, "best": best, "seconds": time.monotonic() - t0, "rng": rng_state()})

    with run.logger(tensorboard=False, resume_from_step=None if resumed_at is None else resumed_at + 1) as log:

        def export() -> ExpertPolicy:
            if preset.normalize:
                venv = model.get_env()
                return export_sb3_policy(model, venv.obs_rms, venv.clip_obs, venv.epsilon)
            return export_sb3_policy(model)

        def evaluate(n_steps: int) -> None:
            policy = export()
            ret = run_episodes(eval_env, policy.act, cfg.eval_episodes, seed=10_000).mean_return
            extra = {"env_id": env_id, "algo": preset.algo, "env_steps": n_steps, "eval_return": ret, "seed": seed}
            policy.save(out / "last", extra)
            if ret >= best["ret"]:
                best.update(ret=ret, steps=n_steps)
                policy.save(out / "expert", extra)
            log.log(n_steps, **{"charts/eval_return": ret, "charts/seconds": time.monotonic() - t0})
            if progress:
                print(f"[{env_id}] {n_steps} steps: eval return {ret:.1f} (best {best['ret']:.1f}) "
                      f"{time.monotonic() - t0:.0f}s", flush=True)

        callback = eval_checkpoint_callback(
            model, cfg.eval_every, evaluate, save,
            keep_going=lambda: cfg.max_minutes is None or (time.monotonic() - t0) < 60 * cfg.max_minutes)
        model.learn(total_timesteps=max(total - int(model.num_timesteps), 0), callback=callback,
                    reset_num_timesteps=resumed_at is None)
        evaluate(int(model.num_timesteps))
        save()
    seconds = time.monotonic() - t0
    run.finish({"env_id": env_id, "algo": preset.algo, "seed": seed, "env_steps": int(model.num_timesteps),
                "best_eval_return": float(best["ret"]), "best_at_env_steps": int(best["steps"]),
                "seconds": seconds, "target": preset.target, "device": str(device),
                "command": f"mbirl expert train --env {env_id} --seed {seed} --out {out}"
                           + (f" --steps {cfg.steps}" if cfg.steps is not None else "")
                           + (f" --algo {cfg.algo}" if cfg.algo is not None else "")
                           + (f" --device {cfg.device}" if cfg.device != DEFAULT_DEVICE else "")})
    return ExpertResult(out / "expert", float(best["ret"]), int(model.num_timesteps), seconds)


def _check_action_space(env_id: str, algo: str) -> None:
    """SAC and TD3 need a bounded Box action space: an InputError, not SB3's assertion, for any other."""
    import gymnasium as gym

    if algo not in ("sac", "td3", "tqc"):
        return
    env = make_env(env_id)
    space = env.action_space
    env.close()
    if not isinstance(space, gym.spaces.Box):
        raise InputError(f"{algo} needs continuous (Box) actions, {env_id} has {space}; use --algo ppo", field="algo")


def _open_run(out: Path, cfg: ExpertRunConfig, overwrite: bool, resume: bool) -> RunDir:
    """The run directory. One that already holds an expert run (``config.json``, or ``expert.json`` of a run
    written before experts had a configuration) is refused unless ``resume`` (RunDir's rule: the same
    configuration but for its ``RESUMABLE`` fields) or ``overwrite``, which removes its configuration, checkpoint
    and final metrics (the exported policies are replaced as training goes)."""
    if resume:
        return RunDir(out, cfg, resume=True)
    held = [out / name for name in ("config.json", "metrics.json", "expert.json") if (out / name).exists()]
    if held and not overwrite:
        # RunDir's refusal, with the ways out this command has
        raise InputError(ALREADY_HOLDS_A_RUN.split(";")[0] + "; pass --resume to continue it, --overwrite to train a "
                         "new expert in its place, or choose another --out", source=str(out))
    return RunDir(out, cfg, overwrite=True)


def load_expert(path: str | Path) -> ExpertPolicy:
    """Load the exported best expert from a directory (``DIR/expert``) or a checkpoint stem."""
    p = Path(path)
    stem = p / "expert" if p.is_dir() else p.with_suffix("")
    return ExpertPolicy.load(stem)[0]
