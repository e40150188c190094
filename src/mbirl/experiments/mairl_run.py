"""MAIRL / MGAIL on a gymnasium task as a run directory.

A run directory holds ``config.json``; ``metrics.jsonl`` + TensorBoard events (``tb/``), one row per iteration with
the environment-step count as the step; ``checkpoints/last.json`` + its tensor file (networks, optimisers, replay
buffer, RNG states and the environments' reset seeds and actions, so ``--resume`` continues exactly); and the final
``metrics.json`` (``eval`` = list of ``{env_steps, mean_return, normalized_return}``, ``final_normalized_return``).
Everything is validated before anything is written.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

import numpy as np
import torch

from mbirl.algorithms.mairl import MAIRL, VARIANTS
from mbirl.dynamics.models import MODEL_TYPES
from mbirl.errors import InputError
from mbirl.experts.demos import DemoStats, demo_stats, normalized_return
from mbirl.fileio import write_json_atomic
from mbirl.reporting.checkpoint import load_checkpoint, save_checkpoint
from mbirl.reporting.logger import MetricsLogger
from mbirl.reporting.runs import checkpoint_stem, open_for_resume

__all__ = ["MAIRLRunConfig", "build_trainer", "compare_models", "evaluate_run", "plot_learning_curves", "run_mairl"]

# Settings that may change when a run is resumed (how long it runs, how often it reports).
_RESUMABLE = ("env_steps", "eval_every", "eval_episodes", "checkpoint_every")


@dataclass
class MAIRLRunConfig:
    """One MAIRL run.

    Attributes:
        demos: demonstration file written by ``mbirl expert demos`` (its metadata holds the env id and the expert's
            and random policy's mean returns used for normalisation).
        env: environment id; must match the demo file's (empty: take it from the file).
        dynamics: forward model, ``attention`` (faithful), ``attention-multi``, ``gru`` or ``mlp``.
        variant: ``mairl`` (AIRL discriminator) or ``mgail`` (GAIL discriminator; use with ``--dynamics gru``).
        env_steps: training budget in environment steps (warm-up included, evaluation excluded).
        seed: seeds the networks, the sampling generator, the replay sampling and the environment resets.
        eval_every: environment steps between deterministic evaluations on the true reward.
        eval_episodes: episodes per evaluation (fixed reset seeds).
        checkpoint_every: iterations between checkpoints (one is also written at every evaluation and at the end).
        horizon: H, steps per differentiable real rollout.
        n_rollouts: rollouts (parallel environments) whose gradients are accumulated per policy update.
        gamma: discount of the rollout loss and the AIRL shaping term.
        alpha: weight of the entropy term ``-alpha * stopgrad(log pi)`` in the policy's reward.
        sigma_scale: policy noise ``sigma = sigma_scale * std(expert actions)`` (original: 1/6).
        sigma_floor: lower bound on sigma as a fraction of the action half-range.
        gumbel_tau: temperature of the straight-through Gumbel-softmax (discrete actions).
        lr_policy, lr_disc, lr_model: Adam learning rates.
        grad_clip: policy gradient-norm clip.
        policy_reg: weight of the penalty on the policy's pre-squash outputs (keeps ``tanh`` out of saturation).
        batch_size: minibatch of the model and discriminator updates.
        replay_size: replay buffer capacity.
        model_steps: model updates per iteration.
        disc_steps, disc_every: discriminator updates per block and iterations between blocks.
        disc_window: the discriminator's agent samples come from this many most recent transitions.
        expert_weight: weight of the expert term of the discriminator loss (original: 0.8).
        disc_grad_penalty: weight of the zero-centred gradient penalty on the reward's input gradient.
        warmup_steps: uniformly random environment steps before training (model data, normalisers).
        model_pretrain_steps: model updates after the warm-up.
        state_only: learn the state-only reward ``g(s)`` (for transfer).
        ema_rate: < 1 evaluates an exponential moving average of the policy weights (rate per update).
    """

    demos: str
    env: str = ""
    dynamics: str = "attention"
    variant: str = "mairl"
    env_steps: int = 50_000
    seed: int = 0
    eval_every: int = 5_000
    eval_episodes: int = 10
    checkpoint_every: int = 50
    horizon: int = 20
    n_rollouts: int = 4
    gamma: float = 0.99
    alpha: float = 1.0
    sigma_scale: float = 1 / 6
    sigma_floor: float = 0.35
    gumbel_tau: float = 1.0
    lr_policy: float = 1e-3
    lr_disc: float = 1e-3
    lr_model: float = 1e-3
    grad_clip: float = 10.0
    policy_reg: float = 0.1
    batch_size: int = 512
    replay_size: int = 50_000
    model_steps: int = 5
    disc_steps: int = 1
    disc_every: int = 1
    disc_window: int = 700
    expert_weight: float = 1.0
    disc_grad_penalty: float = 0.0
    warmup_steps: int = 1_000
    model_pretrain_steps: int = 500
    state_only: bool = False
    ema_rate: float = 1.0

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> MAIRLRunConfig:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise InputError(f"unknown keys {unknown}", field="config")
        return cls(**data)


_TRAINER_KEYS = ("dynamics", "variant", "horizon", "n_rollouts", "gamma", "alpha", "sigma_scale", "sigma_floor",
                 "gumbel_tau", "lr_policy", "lr_disc", "lr_model", "grad_clip", "policy_reg", "batch_size",
                 "replay_size", "model_steps", "disc_steps", "disc_every", "disc_window", "expert_weight",
                 "disc_grad_penalty", "ema_rate",
                 "warmup_steps", "model_pretrain_steps", "state_only", "seed")


def _validate(cfg: MAIRLRunConfig) -> None:
    if cfg.dynamics not in MODEL_TYPES:
        raise InputError(f"unknown dynamics model '{cfg.dynamics}' (expected one of {', '.join(MODEL_TYPES)})",
                         field="dynamics")
    if cfg.variant not in VARIANTS:
        raise InputError(f"unknown variant '{cfg.variant}' (expected one of {', '.join(VARIANTS)})", field="variant")
    for name in ("env_steps", "eval_every", "eval_episodes", "checkpoint_every"):
        if getattr(cfg, name) < 1:
            raise InputError(f"must be >= 1, got {getattr(cfg, name)}", field=name.replace("_", "-"))
    if cfg.warmup_steps < 1 or cfg.warmup_steps >= cfg.env_steps:
        raise InputError(f"must be in [1, env_steps), got {cfg.warmup_steps}", field="warmup-steps")


def build_trainer(cfg: MAIRLRunConfig, demos: DemoStats | None = None) -> tuple[MAIRL, DemoStats]:
    """Validate ``cfg`` and build the trainer (reads the demo file; writes nothing)."""
    _validate(cfg)
    demos = demos if demos is not None else demo_stats(cfg.demos)
    if cfg.env and cfg.env != demos.env_id:
        raise InputError(f"demos are for '{demos.env_id}', not '{cfg.env}'", source=cfg.demos, field="env")
    trainer = MAIRL(demos, **{k: getattr(cfg, k) for k in _TRAINER_KEYS})
    return trainer, demos


def run_mairl(cfg: MAIRLRunConfig, run_dir: str | Path, *, resume: bool = False, progress: bool = True
              ) -> dict[str, Any]:
    """Train (or resume) one run; writes everything into ``run_dir`` and returns the final metrics."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    torch.set_num_threads(1)
    run_dir = Path(run_dir)
    trainer, demos = build_trainer(cfg)
    ckpt = checkpoint_stem(run_dir)
    evals: list[dict[str, float]] = []
    seconds = 0.0
    state = open_for_resume(run_dir, cfg.to_json(), resume=resume, may_change=_RESUMABLE,
                            defaults=MAIRLRunConfig(demos=cfg.demos).to_json())
    resumed = state is not None
    if state is not None:
        trainer.load_state_dict(state["trainer"])
        evals = [{k: float(v) for k, v in e.items()} for e in state["evals"]]
        seconds = float(state["seconds"])
    run_dir.mkdir(parents=True, exist_ok=True)
    write_json_atomic(run_dir / "config.json", cfg.to_json())

    def save() -> None:
        save_checkpoint(ckpt, {"trainer": trainer.state_dict(), "evals": evals, "seconds": seconds,
                               "config": cfg.to_json()})

    def evaluate() -> dict[str, float]:
        ret = trainer.evaluate(cfg.eval_episodes).mean_return
        row = {"env_steps": float(trainer.env_steps), "mean_return": ret,
               "normalized_return": normalized_return(ret, demos.expert_return, demos.random_return)}
        evals.append(row)
        return row

    with MetricsLogger(run_dir, resume_from_step=trainer.env_steps + 1 if resumed else None) as log:
        if not evals:
            row = evaluate()
            log.log(0, **{"charts/eval_return": row["mean_return"],
                          "charts/eval_normalized_return": row["normalized_return"]})
            save()
        columns = (TextColumn(f"[bold]{cfg.variant}/{cfg.dynamics}[/] {demos.env_id} seed {cfg.seed}"), BarColumn(),
                   MofNCompleteColumn(), TextColumn("env steps  norm. return {task.fields[norm]:.2f}"),
                   TimeRemainingColumn())
        with Progress(*columns, disable=not progress, transient=False) as bar:
            task = bar.add_task("steps", total=cfg.env_steps, completed=trainer.env_steps,
                                norm=evals[-1]["normalized_return"])
            next_eval = (int(evals[-1]["env_steps"]) // cfg.eval_every + 1) * cfg.eval_every
            while trainer.env_steps < cfg.env_steps:
                t0 = time.perf_counter()
                info = trainer.iteration_step()
                seconds += time.perf_counter() - t0
                scalars = {"losses/policy": info.policy_loss, "losses/model": info.model_loss,
                           "losses/discriminator": info.disc_loss, "charts/policy_grad_norm": info.policy_grad_norm,
                           "charts/mean_reward": info.mean_reward, "charts/disc_expert_acc": info.expert_acc,
                           "charts/disc_agent_acc": info.agent_acc, "charts/iteration": trainer.iteration,
                           "charts/seconds": seconds}
                if info.episode_returns:
                    scalars["charts/episode_return"] = float(np.mean(info.episode_returns))
                evaluated = trainer.env_steps >= next_eval or trainer.env_steps >= cfg.env_steps
                if evaluated:
                    row = evaluate()
                    next_eval = (trainer.env_steps // cfg.eval_every + 1) * cfg.eval_every
                    scalars["charts/eval_return"] = row["mean_return"]
                    scalars["charts/eval_normalized_return"] = row["normalized_return"]
                log.log(trainer.env_steps, **scalars)
                if evaluated or trainer.iteration % cfg.checkpoint_every == 0:
                    save()
                bar.update(task, completed=min(trainer.env_steps, cfg.env_steps),
                           norm=evals[-1]["normalized_return"])
    if evals[-1]["env_steps"] < trainer.env_steps:  # resumed with a budget already reached
        evaluate()
        save()
    metrics = {
        "env_id": demos.env_id, "variant": cfg.variant, "dynamics": cfg.dynamics, "seed": cfg.seed,
        "eval": [{"env_steps": int(e["env_steps"]), "mean_return": e["mean_return"],
                  "normalized_return": e["normalized_return"]} for e in evals],
        "final_mean_return": evals[-1]["mean_return"],
        "final_normalized_return": evals[-1]["normalized_return"],
        "best_normalized_return": max(e["normalized_return"] for e in evals),
        "expert_return": demos.expert_return, "random_return": demos.random_return,
        "env_steps": trainer.env_steps, "iterations": trainer.iteration, "train_seconds": seconds,
        "seconds_per_1k_env_steps": 1000 * seconds / max(trainer.env_steps, 1),
    }
    write_json_atomic(run_dir / "metrics.json", metrics)
    return metrics


def evaluate_run(run_dir: str | Path, episodes: int = 10, *, video: str | Path | None = None, seed: int = 2_000_000
                 ) -> dict[str, Any]:
    """Deterministic episodes of a run's last checkpointed policy; optionally an ``.mp4`` of the first episodes.

    Episode ``i`` resets with seed ``seed + i``; the default keeps clear of training's evaluations (1,000,000+).
    """
    import json

    if episodes < 1:
        raise InputError(f"must be >= 1, got {episodes}", field="episodes")
    if seed < 0:
        raise InputError(f"must be >= 0, got {seed}", field="seed")
    if video is not None and Path(video).suffix != ".mp4":
        raise InputError(f"video must end in .mp4, got '{video}'", field="video")
    run_dir = Path(run_dir)
    cfg_path = run_dir / "config.json"
    if not cfg_path.is_file():
        raise InputError("not a MAIRL run directory (no config.json)", source=str(run_dir))
    try:
        cfg = MAIRLRunConfig.from_json(json.loads(cfg_path.read_text()))
    except (json.JSONDecodeError, TypeError) as exc:
        raise InputError(f"invalid config ({exc})", source=str(cfg_path)) from None
    trainer, demos = build_trainer(cfg)
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


def plot_learning_curves(run_dirs: list[Path], out: str | Path, *, title: str = "MAIRL learning curves") -> Path:
    """Normalised return vs environment steps, one panel per environment, one line per run."""
    import json

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    runs: dict[str, list[tuple[str, dict[str, Any]]]] = {}
    for d in run_dirs:
        path = Path(d) / "metrics.json"
        if not path.is_file():
            raise InputError("no metrics.json (has the run finished?)", source=str(d))
        try:
            m = json.loads(path.read_text())
            runs.setdefault(m["env_id"], []).append((f"{m['variant']}/{m['dynamics']} s{m['seed']}", m))
        except (json.JSONDecodeError, KeyError) as exc:
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
    fig.tight_layout()
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=120)
    plt.close(fig)
    return out


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


def compare_models(demos_path: str | Path, out: str | Path, *, kinds: list[str], steps: int = 20_000,
                   train_steps: int = 3_000, seed: int = 0, run_dir: str | Path | None = None,
                   batch_size: int = 512, lr: float = 1e-3, horizon: int = 10) -> dict[str, Any]:
    """Train each forward model on the same transitions and measure 1-step and open-loop ``horizon``-step errors on
    the same held-out episodes (errors are mean squared, in units of each observation feature's std).

    Data: half uniformly random episodes, half episodes of a MAIRL run's policy with its training noise (the agent's
    distribution) when ``run_dir`` is given, else of the demonstrations; split 80/20 by episode.
    """
    from mbirl.dynamics.models import make_model, open_loop_errors
    from mbirl.experts.rollout import make_env, random_policy

    torch.set_num_threads(1)
    bad = [k for k in kinds if k not in MODEL_TYPES]
    if bad or not kinds:
        raise InputError(f"unknown model type(s) {bad} (expected some of {', '.join(MODEL_TYPES)})", field="models")
    if steps < 100 or train_steps < 1:
        raise InputError("steps must be >= 100 and train_steps >= 1", field="steps")
    demos = demo_stats(demos_path)
    env_id = demos.env_id
    env = make_env(env_id)
    trajs = _collect_episodes(env_id, random_policy(env, seed), steps // 2, seed)
    if run_dir is not None:
        cfg = MAIRLRunConfig.from_json(__import__("json").loads((Path(run_dir) / "config.json").read_text()))
        trainer, _ = build_trainer(cfg, demos)
        trainer.load_policy(load_checkpoint(checkpoint_stem(run_dir))["trainer"])
        gen = torch.Generator().manual_seed(seed)

        def noisy(obs: np.ndarray) -> Any:
            with torch.no_grad():
                a, _ = trainer.policy.sample(torch.as_tensor(np.asarray(obs, np.float32))[None], gen)
            return trainer.policy.env_action(a)[0]

        trajs += _collect_episodes(env_id, noisy, steps // 2, seed + 10_000)
    else:
        trajs += list(demos.trajectories)
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(trajs))
    n_test = max(1, len(trajs) // 5)
    test = [trajs[i] for i in order[:n_test]]
    train = [trajs[i] for i in order[n_test:]]
    discrete = demos.acts.dtype.kind in "iu"
    act_dim = int(env.action_space.n) if discrete else int(np.prod(env.action_space.shape))

    def acts_of(t: Any) -> np.ndarray:
        a = np.asarray(t.acts)
        return np.eye(act_dim, dtype=np.float32)[a] if discrete else a.reshape(len(a), -1).astype(np.float32)

    o = torch.as_tensor(np.concatenate([t.obs[:-1] for t in train]))
    a = torch.as_tensor(np.concatenate([acts_of(t) for t in train]))
    o2 = torch.as_tensor(np.concatenate([t.obs[1:] for t in train]))
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
    act_scale = np.ones(act_dim, np.float32) if discrete else (env.action_space.high - env.action_space.low) / 2
    results: dict[str, Any] = {}
    for kind in kinds:
        torch.manual_seed(seed)
        model = make_model(kind, o.shape[1], act_dim)
        model.set_normalizer(o.numpy(), o2.numpy(), act_scale)
        opt = torch.optim.Adam(model.parameters(), lr=lr)
        g = np.random.default_rng(seed)
        t0 = time.perf_counter()
        for _ in range(train_steps):
            idx = torch.as_tensor(g.integers(0, len(o), size=batch_size))
            loss = model.loss(o[idx], a[idx], o2[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
        train_seconds = time.perf_counter() - t0
        model.eval()
        results[kind] = {
            "one_step": float(model.eval_score(to, ta, to2).mean()),
            "open_loop": open_loop_errors(model, so, sa).tolist(),
            "params": int(sum(p.numel() for p in model.parameters())),
            "train_seconds": train_seconds,
        }
    summary = {"env_id": env_id, "train_transitions": len(o), "test_transitions": len(to),
               "test_segments": len(so), "horizon": horizon, "train_steps": train_steps, "seed": seed,
               "data": "random + " + ("MAIRL policy" if run_dir is not None else "demonstrations"),
               "models": results}
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    write_json_atomic(out / "model_errors.json", summary)
    _plot_model_errors(summary, out / "model_errors.png")
    return summary


def _plot_model_errors(summary: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

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
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
