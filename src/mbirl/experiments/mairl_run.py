"""MAIRL / MGAIL on a gymnasium task as a run directory (:class:`mbirl.reporting.runs.RunDir`).

A run directory holds ``config.json`` (a :class:`MAIRLRunConfig`, the trainer's hyper-parameters nested under
``trainer``); ``metrics.jsonl`` + TensorBoard events (``tb/``), one row per iteration with the environment-step count
as the step; ``checkpoints/last.json`` + its tensor file (networks, optimisers, replay buffer, RNG states and the
environments' reset seeds and actions, so ``--resume`` continues exactly); and the final ``metrics.json`` (``eval`` =
list of ``{env_steps, mean_return, normalized_return}``, ``final_normalized_return``). Everything is validated
before anything is written. Runs written before the configuration was nested (flat ``config.json``) still resume
and evaluate.
"""

from __future__ import annotations

import math
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch

from mbirl.algorithms.mairl import MAIRL, MAIRLConfig, build_mairl
from mbirl.data.replay import ReplayBuffer
from mbirl.dynamics.models import MODELS
from mbirl.dynamics.training import fit_forward_model
from mbirl.errors import InputError
from mbirl.experts.demos import DemoStats, demo_stats, normalized_return
from mbirl.fileio import write_json_atomic
from mbirl.reporting.checkpoint import load_checkpoint
from mbirl.reporting.runs import RunDir, checkpoint_stem
from mbirl.validation import config_from_dict, read_json

__all__ = ["MAIRLRunConfig", "ModelComparisonConfig", "build_trainer", "compare_models", "evaluate_run",
           "load_run_config", "plot_return_curves", "run_mairl"]


@dataclass(frozen=True)
class MAIRLRunConfig:
    """One MAIRL run: the trainer's hyper-parameters, the seed and the budget (validated on construction)."""

    demos: str
    """demonstration file written by ``mbirl expert demos`` (its metadata holds the env id and the expert's and
    random policy's mean returns used for normalisation)"""
    env: str = ""
    """environment id; must match the demo file's (empty: take it from the file)"""
    env_steps: int = 50_000
    """training budget in environment steps (warm-up included, evaluation excluded)"""
    seed: int = 0
    """seeds the networks, the sampling generator, the replay sampling and the environment resets"""
    eval_every: int = 5_000
    """environment steps between deterministic evaluations on the true reward"""
    eval_episodes: int = 10
    """episodes per evaluation (fixed reset seeds)"""
    checkpoint_every: int = 50
    """iterations between checkpoints (one is also written at every evaluation and at the end)"""
    trainer: MAIRLConfig = field(default_factory=MAIRLConfig)
    """the trainer's hyper-parameters"""

    RESUMABLE: ClassVar[tuple[str, ...]] = ("env_steps", "eval_every", "eval_episodes", "checkpoint_every")
    """What ``--resume`` may change: how long the run goes and how often it reports."""

    def __post_init__(self) -> None:
        for name in ("env_steps", "eval_every", "eval_episodes", "checkpoint_every"):
            if getattr(self, name) < 1:
                raise InputError(f"must be >= 1, got {getattr(self, name)}", field=name.replace("_", "-"))
        if self.seed < 0:
            raise InputError(f"must be >= 0, got {self.seed}", field="seed")
        if self.trainer.warmup_steps >= self.env_steps:
            raise InputError(f"must be in [1, env_steps), got {self.trainer.warmup_steps}",
                             field="trainer.warmup_steps")


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
    demos = demos if demos is not None else demo_stats(cfg.demos)
    if cfg.env and cfg.env != demos.env_id:
        raise InputError(f"demos are for '{demos.env_id}', not '{cfg.env}'", source=cfg.demos, field="env")
    return build_mairl(cfg.trainer, demos, seed=cfg.seed), demos


def run_mairl(cfg: MAIRLRunConfig, run_dir: str | Path, *, resume: bool = False, progress: bool = True
              ) -> dict[str, Any]:
    """Train (or resume) one run; writes everything into ``run_dir`` and returns the final metrics."""
    run = RunDir(run_dir, cfg, resume=resume)
    trainer, demos = build_trainer(cfg)
    evals: list[dict[str, float]] = []
    seconds = 0.0
    if run.state is not None:
        trainer.load_state_dict(run.state["trainer"])
        evals = [{k: float(v) for k, v in e.items()} for e in run.state["evals"]]
        seconds = float(run.state["seconds"])
    run.start()

    def save() -> None:
        run.save({"trainer": trainer.state_dict(), "evals": evals, "seconds": seconds})

    def evaluate() -> dict[str, float]:
        ret = trainer.evaluate(cfg.eval_episodes).mean_return
        row = {"env_steps": float(trainer.env_steps), "mean_return": ret,
               "normalized_return": normalized_return(ret, demos.expert_return, demos.random_return)}
        evals.append(row)
        return row

    def info() -> str:
        return f"env steps  norm. return {evals[-1]['normalized_return']:.2f}"

    threads = torch.get_num_threads()
    label = f"{cfg.trainer.variant}/{cfg.trainer.dynamics} {demos.env_id} seed {cfg.seed}"
    with run.logger(resume_from_step=trainer.env_steps + 1 if run.resumed else None) as log:
        if not evals:
            row = evaluate()
            log.log(0, **{"charts/eval_return": row["mean_return"],
                          "charts/eval_normalized_return": row["normalized_return"]})
            save()
        with run.progress(label, cfg.env_steps, trainer.env_steps, enabled=progress, info=info()) as update:
            next_eval = (int(evals[-1]["env_steps"]) // cfg.eval_every + 1) * cfg.eval_every
            while trainer.env_steps < cfg.env_steps:
                t0 = time.perf_counter()
                it = trainer.iteration_step()
                seconds += time.perf_counter() - t0
                scalars = {"losses/policy": it.policy_loss, "losses/model": it.model_loss,
                           "losses/discriminator": it.disc_loss, "charts/policy_grad_norm": it.policy_grad_norm,
                           "charts/mean_reward": it.mean_reward, "charts/disc_expert_acc": it.expert_acc,
                           "charts/disc_agent_acc": it.agent_acc, "charts/iteration": trainer.iteration,
                           "charts/seconds": seconds}
                if it.episode_returns:
                    scalars["charts/episode_return"] = float(np.mean(it.episode_returns))
                evaluated = trainer.env_steps >= next_eval or trainer.env_steps >= cfg.env_steps
                if evaluated:
                    row = evaluate()
                    next_eval = (trainer.env_steps // cfg.eval_every + 1) * cfg.eval_every
                    scalars["charts/eval_return"] = row["mean_return"]
                    scalars["charts/eval_normalized_return"] = row["normalized_return"]
                log.log(trainer.env_steps, **scalars)
                if evaluated or trainer.iteration % cfg.checkpoint_every == 0:
                    save()
                update(completed=min(trainer.env_steps, cfg.env_steps), info=info())
    if evals[-1]["env_steps"] < trainer.env_steps:  # resumed with a budget already reached
        evaluate()
        save()
    metrics = {
        "env_id": demos.env_id, "variant": cfg.trainer.variant, "dynamics": cfg.trainer.dynamics, "seed": cfg.seed,
        "eval": [{"env_steps": int(e["env_steps"]), "mean_return": e["mean_return"],
                  "normalized_return": e["normalized_return"]} for e in evals],
        "final_mean_return": evals[-1]["mean_return"],
        "final_normalized_return": evals[-1]["normalized_return"],
        "best_normalized_return": max(e["normalized_return"] for e in evals),
        "expert_return": demos.expert_return, "random_return": demos.random_return,
        "env_steps": trainer.env_steps, "iterations": trainer.iteration, "train_seconds": seconds,
        "seconds_per_1k_env_steps": 1000 * seconds / max(trainer.env_steps, 1), "torch_threads": threads,
    }
    run.finish(metrics)
    return metrics


def evaluate_run(run_dir: str | Path, episodes: int = 10, *, video: str | Path | None = None, seed: int = 2_000_000
                 ) -> dict[str, Any]:
    """Deterministic episodes of a run's last checkpointed policy; optionally an ``.mp4`` of the first episodes.

    Episode ``i`` resets with seed ``seed + i``; the default keeps clear of training's evaluations (1,000,000+).
    """
    if episodes < 1:
        raise InputError(f"must be >= 1, got {episodes}", field="episodes")
    if seed < 0:
        raise InputError(f"must be >= 0, got {seed}", field="seed")
    if video is not None and Path(video).suffix != ".mp4":
        raise InputError(f"video must end in .mp4, got '{video}'", field="video")
    trainer, demos = build_trainer(load_run_config(run_dir))
    state = load_checkpoint(checkpoint_stem(run_dir))
    trainer.load_policy(state["trainer"])
    result = trainer.evaluate(episodes, seed=seed)
    out: dict[str, Any] = {
        "env_id": demos.env_id, "episodes": episodes, "seed": seed, "returns": result.returns.tolist(),
        "mean_return": result.mean_return,
        "normalized_return": normalized_return(result.mean_return, demos.expert_return, demos.random_return),
        "env_steps_trained": int(state["trainer"]["env_steps"]),
    }
    if video is not None:
        from mbirl.experts.rollout import record_video

        out["video"] = str(record_video(trainer.act_deterministic, demos.env_id, video, seed=seed))
    if not math.isfinite(out["mean_return"]):
        raise InputError("evaluation produced a non-finite return", source=str(run_dir))
    return out


def plot_return_curves(run_dirs: list[Path], out: str | Path, *, title: str = "MAIRL learning curves") -> Path:
    """Normalised return vs environment steps of MAIRL runs (their ``metrics.json``), one panel per environment,
    one line per run."""
    import matplotlib.pyplot as plt

    from mbirl.reporting.plots import save_figure

    runs: dict[str, list[tuple[str, dict[str, Any]]]] = {}
    for d in run_dirs:
        path = Path(d) / "metrics.json"
        if not path.is_file():
            raise InputError("no metrics.json (has the run finished?)", source=str(d))
        m = read_json(path, what="metrics file")
        try:
            runs.setdefault(m["env_id"], []).append((f"{m['variant']}/{m['dynamics']} s{m['seed']}", m))
        except (KeyError, TypeError) as exc:
            raise InputError(f"not a MAIRL metrics file ({exc})", source=str(path)) from None
    if not runs:
        raise InputError("no run directories given", field="run_dirs")
    fig, axes = plt.subplots(1, len(runs), figsize=(5 * len(runs), 3.8), squeeze=False)
    for ax, (env_id, items) in zip(axes[0], sorted(runs.items()), strict=True):
        for label, m in items:
            xs = [e["env_steps"] for e in m["eval"]]
            ys = [e["normalized_return"] for e in m["eval"]]
            ax.plot(xs, ys, marker=".", label=label)
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

    def __post_init__(self) -> None:
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
    demos = demo_stats(cfg.demos)
    env_id = demos.env_id
    env = make_env(env_id)
    trajs = _collect_episodes(env_id, random_policy(env, seed), cfg.steps // 2, seed)
    if cfg.run_dir is not None:
        trainer, _ = build_trainer(load_run_config(cfg.run_dir), demos)
        trainer.load_policy(load_checkpoint(checkpoint_stem(cfg.run_dir))["trainer"])
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
                                    np.concatenate([t.dones for t in train]).astype(np.float32))
    to = torch.as_tensor(np.concatenate([t.obs[:-1] for t in test]))
    ta = torch.as_tensor(np.concatenate([acts_of(t) for t in test]))
    to2 = torch.as_tensor(np.concatenate([t.obs[1:] for t in test]))
    seg_o, seg_a = [], []
    for t in test:
        ta_t = acts_of(t)
        for s in range(0, len(t) - horizon + 1):
            seg_o.append(t.obs[s:s + horizon + 1])
            seg_a.append(ta_t[s:s + horizon])
    if not seg_o:
        raise InputError(f"held-out episodes are shorter than {horizon} steps", field="steps")
    so, sa = torch.as_tensor(np.stack(seg_o)), torch.as_tensor(np.stack(seg_a))
    results: dict[str, Any] = {}
    for kind in cfg.models:
        torch.manual_seed(seed)
        model = MODELS.make(kind, obs_dim=data.obs.shape[1], act_dim=act_dim)
        model.set_normalizer(data.obs, data.next_obs, act_scale)
        opt = torch.optim.Adam(model.parameters(), lr=cfg.lr)
        t0 = time.perf_counter()
        fit_forward_model(model, opt, data, cfg.train_steps, batch_size=cfg.batch_size,
                          rng=np.random.default_rng(seed))
        train_seconds = time.perf_counter() - t0
        model.eval()
        results[kind] = {
            "one_step": float(model.eval_score(to, ta, to2).mean()),
            "open_loop": open_loop_errors(model, so, sa).tolist(),
            "params": int(sum(p.numel() for p in model.parameters())),
            "train_seconds": train_seconds,
        }
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
