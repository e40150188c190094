"""MAIRL / MGAIL on a gymnasium task as a run directory (:class:`mbirl.reporting.runs.RunDir`), trained by the
imitation harness (:mod:`mbirl.experiments.imitation`).

A run directory of ``mbirl mairl train`` holds ``config.json`` (a :class:`MAIRLRunConfig`, the trainer's
hyper-parameters nested under ``trainer``); ``metrics.jsonl`` + TensorBoard events (``tb/``), one row per iteration
with the environment-step count as the step; ``checkpoints/last.json`` + its tensor file (networks, optimisers,
replay buffer, RNG states and the environments' reset seeds and actions, so ``--resume`` continues exactly); and the
final ``metrics.json`` (``eval`` = list of ``{env_steps, mean_return, normalized_return}``,
``final_normalized_return``). Everything is validated before anything is written. Runs written before the
configuration was nested (flat ``config.json``) still resume and evaluate.
"""

from __future__ import annotations

import math
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from mbirl.algorithms.mairl import MAIRL, MAIRLConfig
from mbirl.data.replay import ReplayBuffer
from mbirl.dynamics.ensemble import ModelEnsemble
from mbirl.dynamics.models import MODELS, ForwardModel
from mbirl.dynamics.training import fit_forward_model
from mbirl.errors import InputError
from mbirl.experiments.imitation import (
    BaseRunConfig,
    ImitationRunConfig,
    build_learner,
    evaluate_imitation_run,
    load_imitation_config,
    train_learner,
)
from mbirl.experts.demos import DemoStats, check_demo_spaces, demo_stats
from mbirl.fileio import write_json_atomic
from mbirl.nets import DEFAULT_DEVICE, check_device, resolve_device
from mbirl.reporting.checkpoint import load_checkpoint, restoring
from mbirl.reporting.runs import RunDir, checkpoint_stem
from mbirl.reporting.stats import spearman
from mbirl.validation import check_output_path, config_from_dict, read_json

__all__ = ["MAIRLRunConfig", "ModelComparisonConfig", "build_trainer", "compare_models", "evaluate_run",
           "load_run_config", "plot_return_curves", "run_mairl"]


@dataclass(frozen=True)
class MAIRLRunConfig(BaseRunConfig):
    """One MAIRL run: the run-level fields (:class:`~mbirl.experiments.imitation.BaseRunConfig`) and the trainer's
    hyper-parameters (validated on construction). The layout of ``mbirl mairl train``'s run directories; the same
    run as an :class:`~mbirl.experiments.imitation.ImitationRunConfig` is :meth:`to_imitation`."""

    trainer: MAIRLConfig = field(default_factory=MAIRLConfig)
    """the trainer's hyper-parameters"""

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.trainer.warmup_steps >= self.env_steps:
            raise InputError(f"must be in [1, env_steps), got {self.trainer.warmup_steps}",
                             field="trainer.warmup_steps")

    def to_imitation(self) -> ImitationRunConfig:
        """The same run for the imitation harness (``algo`` is the trainer's variant)."""
        return ImitationRunConfig(**self.base_fields(), algo=self.trainer.variant, mairl=self.trainer)


def load_run_config(run_dir: str | Path) -> MAIRLRunConfig:
    """The configuration of a MAIRL run directory (its ``config.json``; flat ones of older runs are accepted)."""
    path = Path(run_dir) / "config.json"
    if not path.is_file():
        raise InputError("not a MAIRL run directory (no config.json)", source=str(run_dir))
    with warnings.catch_warnings():  # a saved run's layout is not the user's to fix: no deprecation warning
        warnings.simplefilter("ignore", FutureWarning)
        return config_from_dict(MAIRLRunConfig, read_json(path, what="run configuration"), source=str(path))


def build_trainer(cfg: MAIRLRunConfig, demos: DemoStats | None = None) -> tuple[MAIRL, DemoStats]:
    """The trainer of ``cfg`` (reads the demo file unless ``demos`` is given; writes nothing)."""
    trainer, demos = build_learner(cfg.to_imitation(), demos)
    assert isinstance(trainer, MAIRL)
    return trainer, demos


def run_mairl(cfg: MAIRLRunConfig, run_dir: str | Path, *, resume: bool = False, progress: bool = True
              ) -> dict[str, Any]:
    """Train (or resume) one run; writes everything into ``run_dir`` (``config.json`` in the
    :class:`MAIRLRunConfig` layout) and returns the final metrics. The loop is the imitation harness's
    (:func:`mbirl.experiments.imitation.train_learner`)."""
    return train_learner(RunDir(run_dir, cfg, resume=resume), cfg.to_imitation(), progress=progress)


evaluate_run = evaluate_imitation_run
"""Deterministic episodes of a run's last checkpointed policy (the harness's
:func:`~mbirl.experiments.imitation.evaluate_imitation_run`: any imitation run directory)."""


def plot_return_curves(run_dirs: list[Path], out: str | Path, *, title: str = "MAIRL learning curves") -> Path:
    """Normalised return vs environment steps of imitation runs (their ``metrics.json``), one panel per
    environment, one line per run (learners that take no environment steps, e.g. BC, as a horizontal line)."""
    import matplotlib.pyplot as plt

    from mbirl.reporting.plots import check_figure_path, save_figure

    check_figure_path(out)
    runs: dict[str, list[tuple[str, dict[str, Any]]]] = {}
    for d in run_dirs:
        path = Path(d) / "metrics.json"
        if not path.is_file():
            raise InputError("no metrics.json (has the run finished?)", source=str(d))
        m = read_json(path, what="metrics file")
        try:
            name = f"{m['variant']}/{m['dynamics']}" if "variant" in m else m["algo"]
            m = {**m, "env_steps": int(m["env_steps"]), "final_normalized_return": float(m["final_normalized_return"]),
                 "eval": [{"env_steps": float(e["env_steps"]), "normalized_return": float(e["normalized_return"])}
                          for e in m["eval"]]}
            runs.setdefault(str(m["env_id"]), []).append((f"{name} s{m['seed']}", m))
        except (KeyError, TypeError, ValueError, OverflowError) as exc:
            raise InputError(f"not an imitation metrics file ({type(exc).__name__}: {exc})", source=str(path)
                             ) from None
    if not runs:
        raise InputError("no run directories given", field="run_dirs")
    fig, axes = plt.subplots(1, len(runs), figsize=(5 * len(runs), 3.8), squeeze=False)
    for ax, (env_id, items) in zip(axes[0], sorted(runs.items()), strict=True):
        for k, (label, m) in enumerate(items):
            if m["env_steps"] == 0:  # took no environment steps (BC): its final return as a level
                ax.axhline(m["final_normalized_return"], color=f"C{k % 10}", lw=1.2, ls="-.", label=label)
                continue
            xs = [e["env_steps"] for e in m["eval"]]
            ys = [e["normalized_return"] for e in m["eval"]]
            ax.plot(xs, ys, marker=".", color=f"C{k % 10}", label=label)
        ax.axhline(1.0, color="k", lw=0.8, ls="--")
        ax.axhline(0.9, color="g", lw=0.8, ls=":")
        ax.set_title(env_id)
        ax.set_xlabel("environment steps")
        ax.set_ylabel("normalised return (0 random, 1 expert)")
        ax.legend(fontsize=7)
    fig.suptitle(title)
    return save_figure(fig, out)


@dataclass(frozen=True)
class ModelComparisonConfig:
    """``mbirl mairl models``: every forward model trained on the same transitions (validated on construction)."""

    demos: str
    """demonstrations of the environment (define the environment, half of the data unless ``run_dir`` is given)"""
    models: tuple[str, ...] = MODELS.names
    """forward models to compare (:data:`mbirl.dynamics.models.MODELS` names)"""
    steps: int = 20_000
    """environment steps of data: half uniformly random episodes, half policy (or demonstration) episodes"""
    train_steps: int = 3_000
    """minibatch updates per model"""
    seed: int = 0
    """seeds the data collection, the split, each model's initialisation and its minibatches"""
    run_dir: str | None = None
    """MAIRL run whose noisy policy supplies half of the data (None: the demonstrations)"""
    batch_size: int = 512
    """minibatch size"""
    lr: float = 1e-3
    """Adam learning rate"""
    horizon: int = 10
    """length of the held-out open-loop prediction segments"""
    ensemble_size: int = 1
    """> 1: each model type is also measured as an ensemble of this many (the mean prediction's errors, and how
    well the members' disagreement predicts the one-step error)"""
    device: str = DEFAULT_DEVICE
    """where the models train: ``auto``, ``cpu`` or ``cuda`` (:func:`mbirl.nets.resolve_device`); the MAIRL run
    of ``run_dir`` collects its data on the CPU"""

    def __post_init__(self) -> None:
        if not 1 <= self.ensemble_size <= 32:
            raise InputError(f"must be in [1, 32], got {self.ensemble_size}", field="ensemble_size")
        if not self.models:
            raise InputError("no forward models given", field="models")
        for kind in self.models:
            MODELS.check(kind, field="models")
        if self.steps < 100 or self.train_steps < 1:
            raise InputError("steps must be >= 100 and train_steps >= 1", field="steps")
        for name in ("batch_size", "horizon"):
            if getattr(self, name) < 1:
                raise InputError(f"must be >= 1, got {getattr(self, name)}", field=name)
        if not (math.isfinite(self.lr) and self.lr > 0):
            raise InputError(f"must be a positive finite number, got {self.lr}", field="lr")
        check_device(self.device)


def _collect_episodes(env_id: str, policy: Any, steps: int, seed: int) -> list[Any]:
    from mbirl.experts.rollout import make_env, run_episodes

    env = make_env(env_id)
    trajs: list[Any] = []
    n, ep = 0, 0
    while n < steps:
        t = run_episodes(env, policy, 1, seed=seed + ep).trajectories[0]
        trajs.append(t)
        n += len(t)
        ep += 1
    env.close()
    return trajs


def compare_models(cfg: ModelComparisonConfig, out: str | Path) -> dict[str, Any]:
    """Train each forward model on the same transitions and measure 1-step and open-loop ``horizon``-step errors on
    the same held-out episodes (errors are mean squared, in units of each observation feature's std).

    Data: half uniformly random episodes, half episodes of a MAIRL run's policy with its training noise (the agent's
    distribution) when ``cfg.run_dir`` is given, else of the demonstrations; split 80/20 by episode. Writes
    ``out/model_errors.{json,png}``.
    """
    from mbirl.dynamics.models import open_loop_errors
    from mbirl.experts.rollout import make_env, random_policy

    seed, horizon = cfg.seed, cfg.horizon
    device = resolve_device(cfg.device)
    out = check_output_path(out, directory=True)
    if cfg.run_dir is not None:
        recorded = load_imitation_config(cfg.run_dir)  # refused before any data is collected
        if recorded.algo in ("mairl", "mgail") and recorded.mairl.obs == "pixels":
            raise InputError("the run observes pixels: its policy cannot collect state data for state models",
                             source=str(cfg.run_dir), field="run_dir")
    demos = demo_stats(cfg.demos)
    check_demo_spaces(demos)
    env_id = demos.env_id
    env = make_env(env_id)
    trajs = _collect_episodes(env_id, random_policy(env, seed), cfg.steps // 2, seed)
    if cfg.run_dir is not None:
        run_cfg = load_imitation_config(cfg.run_dir)
        run_env = run_cfg.env or demo_stats(run_cfg.demos).env_id
        if run_env != env_id:
            raise InputError(f"the run is of '{run_env}', the demonstrations of '{env_id}'", source=str(cfg.run_dir),
                             field="run_dir")
        learner, _ = build_learner(run_cfg, demos, device="cpu")  # acts in the environment, step by step
        if not isinstance(learner, MAIRL):
            raise InputError(f"needs a MAIRL or MGAIL run, got algo '{run_cfg.algo}'", source=str(cfg.run_dir),
                             field="run_dir")
        trainer = learner
        stem = checkpoint_stem(cfg.run_dir)
        state = load_checkpoint(stem)
        with restoring(stem.with_suffix(".json")):
            trainer.load_policy(state["trainer"])
        gen = torch.Generator().manual_seed(seed)

        def noisy(obs: np.ndarray) -> Any:
            with torch.no_grad():
                a, _ = trainer.policy.sample(torch.as_tensor(np.asarray(obs, np.float32))[None], gen)
            return trainer.policy.env_action(a)[0]

        trajs += _collect_episodes(env_id, noisy, cfg.steps // 2, seed + 10_000)
    else:
        trajs += list(demos.trajectories)
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(trajs))
    n_test = max(1, len(trajs) // 5)
    test = [trajs[i] for i in order[:n_test]]
    train = [trajs[i] for i in order[n_test:]]
    discrete = demos.acts.dtype.kind in "iu"
    act_dim = int(env.action_space.n) if discrete else int(np.prod(env.action_space.shape))
    act_scale = np.ones(act_dim, np.float32) if discrete else (env.action_space.high - env.action_space.low) / 2
    env.close()

    def acts_of(t: Any) -> np.ndarray:
        a = np.asarray(t.acts)
        return np.eye(act_dim, dtype=np.float32)[a] if discrete else a.reshape(len(a), -1).astype(np.float32)

    data = ReplayBuffer.from_arrays(np.concatenate([t.obs[:-1] for t in train]),
                                    np.concatenate([acts_of(t) for t in train]),
                                    np.concatenate([t.obs[1:] for t in train]),
                                    np.concatenate([t.dones for t in train]).astype(np.float32), device=device)
    to = torch.as_tensor(np.concatenate([t.obs[:-1] for t in test]), device=device)
    ta = torch.as_tensor(np.concatenate([acts_of(t) for t in test]), device=device)
    to2 = torch.as_tensor(np.concatenate([t.obs[1:] for t in test]), device=device)
    seg_o, seg_a = [], []
    for t in test:
        ta_t = acts_of(t)
        for s in range(0, len(t) - horizon + 1):
            seg_o.append(t.obs[s:s + horizon + 1])
            seg_a.append(ta_t[s:s + horizon])
    if not seg_o:
        raise InputError(f"held-out episodes are shorter than {horizon} steps", field="steps")
    so, sa = torch.as_tensor(np.stack(seg_o), device=device), torch.as_tensor(np.stack(seg_a), device=device)
    results: dict[str, Any] = {}
    sizes = (1,) if cfg.ensemble_size == 1 else (1, cfg.ensemble_size)
    for kind in cfg.models:
        for size in sizes:
            torch.manual_seed(seed)
            model: ForwardModel | ModelEnsemble = (
                MODELS.make(kind, obs_dim=data.obs.shape[1], act_dim=act_dim) if size == 1 else
                ModelEnsemble(kind, size, obs_dim=data.obs.shape[1], act_dim=act_dim))
            model.to(device)  # initialised on the CPU: the same weights on every device
            model.set_normalizer(data.obs, data.next_obs, act_scale)
            opt = torch.optim.Adam(model.parameters(), lr=cfg.lr)
            t0 = time.perf_counter()
            fit_forward_model(model, opt, data, cfg.train_steps, batch_size=cfg.batch_size,
                              rng=np.random.default_rng(seed))
            train_seconds = time.perf_counter() - t0
            model.eval()
            errors = model.eval_score(to, ta, to2)
            entry = {
                "one_step": float(errors.mean()),
                "open_loop": open_loop_errors(model, so, sa).tolist(),  # type: ignore[arg-type]
                "params": int(sum(p.numel() for p in model.parameters())),
                "train_seconds": train_seconds,
            }
            if isinstance(model, ModelEnsemble):
                with torch.no_grad():
                    _, disagreement = model.sample(to, ta, torch.Generator().manual_seed(seed))
                entry["mean_disagreement"] = float(disagreement.mean())
                entry["disagreement_error_spearman"] = spearman(disagreement.cpu().numpy(), errors.cpu().numpy())
            results[kind if size == 1 else f"{kind}-x{size}"] = entry
    summary = {"env_id": env_id, "train_transitions": len(data), "test_transitions": len(to),
               "test_segments": len(so), "horizon": horizon, "train_steps": cfg.train_steps, "seed": seed,
               "data": "random + " + ("MAIRL policy" if cfg.run_dir is not None else "demonstrations"),
               "models": results}
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    write_json_atomic(out / "model_errors.json", summary)
    _plot_model_errors(summary, out / "model_errors.png")
    return summary


def _plot_model_errors(summary: dict[str, Any], path: Path) -> None:
    import matplotlib.pyplot as plt

    from mbirl.reporting.plots import save_figure

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 3.8))
    kinds = list(summary["models"])
    one = [summary["models"][k]["one_step"] for k in kinds]
    ten = [summary["models"][k]["open_loop"][-1] for k in kinds]
    x = np.arange(len(kinds))
    ax1.bar(x - 0.2, one, 0.4, label="1-step")
    ax1.bar(x + 0.2, ten, 0.4, label=f"open-loop {summary['horizon']}-step")
    ax1.set_xticks(x, kinds)
    ax1.set_yscale("log")
    ax1.set_ylabel("MSE (units of feature std, squared)")
    ax1.legend()
    for k in kinds:
        errs = summary["models"][k]["open_loop"]
        ax2.plot(range(1, len(errs) + 1), errs, marker=".", label=k)
    ax2.set_yscale("log")
    ax2.set_xlabel("open-loop prediction step")
    ax2.legend()
    fig.suptitle(f"Forward-model error on held-out data, {summary['env_id']}")
    save_figure(fig, path)
