"""MBIRL on the KUKA keypoint task with ground-truth keypoints and dynamics, as a run directory.

A run directory holds ``config.json``, ``metrics.jsonl`` and TensorBoard events (``tb/``) per outer
iteration, checkpoints (``checkpoints/last.{safetensors,json}``), figures (``figures/``) and the final
``metrics.json``. Everything is validated before anything is written.
"""

from __future__ import annotations

import random
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from mbirl.algorithms.feature_matching import FeatureMatchingIRL
from mbirl.algorithms.mbirl import MBIRL, DemoBatch, irl_loss
from mbirl.costs.base import COST_NAMES, make_cost
from mbirl.data.demos import KeypointDemoSet, load_keypoint_demos
from mbirl.dynamics.base import KeypointDynamics
from mbirl.dynamics.kinematic import KinematicKeypointDynamics
from mbirl.envs.kuka import robot_from_options
from mbirl.errors import InputError, check_finite
from mbirl.fileio import write_json_atomic
from mbirl.planning.gradient_mpc import GradientMode
from mbirl.reporting.checkpoint import save_checkpoint
from mbirl.reporting.logger import MetricsLogger
from mbirl.reporting.runs import checkpoint_stem, open_for_resume, rng_state, set_rng_state

__all__ = ["METHODS", "MBIRLRunConfig", "Prepared", "parse_split", "prepare_run", "run_compare", "run_mbirl"]

BASELINES = ("abbeel",)
METHODS = (*COST_NAMES, *BASELINES)
"""Every cost (``default`` is the no-learning baseline) plus the feature-matching baseline ``abbeel``."""


def parse_split(text: str, name: str) -> tuple[int, int]:
    """Parse ``"a:b"`` into ``(a, b)``."""
    parts = text.split(":")
    try:
        if len(parts) != 2:
            raise ValueError
        start, stop = int(parts[0]), int(parts[1])
    except ValueError:
        raise InputError(f"expected START:STOP, got '{text}'", field=name) from None
    if start < 0 or stop <= start:
        raise InputError(f"empty or negative range '{text}'", field=name)
    return start, stop


@dataclass
class MBIRLRunConfig:
    """One cost-learning run.

    Attributes:
        demos: demonstration file (``.npz`` of this project or an original MBIRL ``.pt``).
        method: a cost (``default|weighted|timedep|rbf|neural``) or the baseline ``abbeel``.
        urdf, keypoint_links: robot; default is PyBullet's KUKA iiwa with two keypoints on a held object.
        train, test: demonstration index ranges ``[start, stop)``.
        outer_iters: passes over the training demonstrations.
        inner_steps, inner_lr, inner_optimizer: the gradient-MPC inner loop (also used at test time).
        outer_lr: Adam learning rate on the cost parameters.
        update: ``per_demo`` (one cost update per training demo, as the original) or ``batched``.
        grad_mode: ``unrolled`` or ``truncated`` (last inner step only).
        grad_clip: optional gradient-norm clip on the cost update.
        rbf_original: the ``rbf`` cost in the official code's formulation (sum over time, integer centres).
        seed: seeds python, numpy and torch (the neural cost's initialisation).
        checkpoint_every: outer iterations between checkpoints (the last one is always saved).
    """

    demos: str
    method: str = "weighted"
    urdf: str | None = None
    keypoint_links: str | None = None
    train: tuple[int, int] = (0, 3)
    test: tuple[int, int] = (3, 5)
    outer_iters: int = 100
    inner_steps: int = 1
    inner_lr: float = 1e-3
    inner_optimizer: str = "sgd"
    outer_lr: float = 1e-2
    update: str = "per_demo"
    grad_mode: str = "unrolled"
    grad_clip: float | None = None
    rbf_original: bool = False
    seed: int = 0
    checkpoint_every: int = 10
    extra: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        out = asdict(self)
        out["train"], out["test"] = list(self.train), list(self.test)
        return out


@dataclass
class Prepared:
    """Everything a run needs, validated: demos, robot dynamics, batches and the learner."""

    config: MBIRLRunConfig
    demo_set: KeypointDemoSet
    dynamics: KeypointDynamics
    train: DemoBatch
    test: DemoBatch
    learner: MBIRL | FeatureMatchingIRL


def _seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)  # noqa: NPY002 (seed the global RNG any third-party code may use)
    torch.manual_seed(seed)


def prepare_run(cfg: MBIRLRunConfig, demo_set: KeypointDemoSet | None = None,
                dynamics: KeypointDynamics | None = None) -> Prepared:
    """Validate the configuration and build the learner; raises InputError, writes nothing."""
    if cfg.method not in METHODS:
        raise InputError(f"unknown cost '{cfg.method}' (expected one of {', '.join(METHODS)})", field="cost")
    for name, value, low in (("outer_iters", cfg.outer_iters, 0), ("inner_steps", cfg.inner_steps, 1),
                             ("checkpoint_every", cfg.checkpoint_every, 1)):
        if value < low:
            raise InputError(f"must be >= {low}, got {value}", field=name)
    for lr_name, lr in (("inner_lr", cfg.inner_lr), ("outer_lr", cfg.outer_lr)):
        if not np.isfinite(lr) or lr <= 0:
            raise InputError(f"must be a positive finite number, got {lr}", field=lr_name)
    if cfg.rbf_original and cfg.method != "rbf":
        raise InputError(f"--rbf-original applies to --cost rbf only, not '{cfg.method}'", field="rbf_original")
    if cfg.grad_mode not in ("unrolled", "truncated"):
        raise InputError(f"unknown gradient mode '{cfg.grad_mode}' (expected unrolled or truncated)",
                         field="grad_mode")
    demo_set = demo_set if demo_set is not None else load_keypoint_demos(cfg.demos)
    if dynamics is None:
        dynamics = KinematicKeypointDynamics(robot_from_options(cfg.urdf, cfg.keypoint_links))
    first = demo_set[0]
    if first.n_keypoints != dynamics.n_keypoints:
        raise InputError(f"demonstrations have {first.n_keypoints} keypoints, the robot has {dynamics.n_keypoints}",
                         source=cfg.demos, field="keypoints")
    if first.n_joints != dynamics.n_joints:
        raise InputError(f"demonstrations have {first.n_joints} joints, the robot has {dynamics.n_joints}",
                         source=cfg.demos, field="start_q")
    train = DemoBatch.from_demos(demo_set.subset(*cfg.train))
    test = DemoBatch.from_demos(demo_set.subset(*cfg.test))
    _seed_everything(cfg.seed)
    inner = {"inner_steps": cfg.inner_steps, "inner_lr": cfg.inner_lr, "inner_optimizer": cfg.inner_optimizer}
    learner: MBIRL | FeatureMatchingIRL
    if cfg.method == "abbeel":
        learner = FeatureMatchingIRL(dynamics, train, test, **inner)  # type: ignore[arg-type]
    else:
        cost = make_cost(cfg.method, horizon=first.horizon, dim=3 * first.n_keypoints, seed=cfg.seed,
                         rbf_original=cfg.rbf_original)
        learner = MBIRL(cost, dynamics, train, test, outer_lr=cfg.outer_lr, update=cfg.update,
                        grad_mode=GradientMode(cfg.grad_mode), grad_clip=cfg.grad_clip, **inner)  # type: ignore[arg-type]
    return Prepared(cfg, demo_set, dynamics, train, test, learner)


def _weights_of(learner: MBIRL | FeatureMatchingIRL) -> np.ndarray | None:
    table = learner.cost.weights_table()
    return None if table is None else table.cpu().numpy()


def run_mbirl(cfg: MBIRLRunConfig, run_dir: str | Path, *, resume: bool = False, progress: bool = True,
              prepared: Prepared | None = None, figures: bool = True) -> dict[str, Any]:
    """Train (or resume) one run and write its outputs into ``run_dir``; returns the final metrics."""
    from mbirl.reporting.plots import plot_learning_curves, plot_predictions, plot_weights

    run_dir = Path(run_dir)
    prep = prepared if prepared is not None else prepare_run(cfg)
    ckpt = checkpoint_stem(run_dir)
    history: dict[str, list[float]] = {"irl_loss_train": [], "irl_loss_test": [], "test_relative_goal_distance": [],
                                       "seconds": []}
    start = 0
    state = open_for_resume(run_dir, cfg.to_json(), resume=resume, may_change=("outer_iters", "checkpoint_every"),
                            defaults=MBIRLRunConfig(demos=cfg.demos).to_json())
    resumed = state is not None
    if state is not None:
        try:
            prep.learner.load_state_dict(state["learner"])
            history = {k: [float(x) for x in v] for k, v in state["history"].items()}
            start = int(state["iteration"])
        except (KeyError, TypeError, ValueError, RuntimeError) as exc:
            raise InputError(f"checkpoint does not match this run ({type(exc).__name__}: {exc})",
                             source=str(ckpt.with_suffix(".json"))) from None
        set_rng_state(state["rng"])
    run_dir.mkdir(parents=True, exist_ok=True)
    write_json_atomic(run_dir / "config.json", cfg.to_json())
    learner = prep.learner

    def save() -> None:
        save_checkpoint(ckpt, {"learner": learner.state_dict(), "history": history, "rng": rng_state(),
                               "iteration": len(history["irl_loss_train"]) - 1, "config": cfg.to_json()})

    def evaluate_test() -> tuple[float, float]:
        ev = learner.evaluate(prep.test)
        return float(ev.irl_loss.mean()), float(ev.relative_goal_distance.mean())

    with MetricsLogger(run_dir, resume_from_step=start + 1 if resumed else None) as log:
        if not history["irl_loss_train"]:
            test_loss, rel = evaluate_test()
            history["irl_loss_train"].append(float(learner.evaluate(prep.train).irl_loss.mean()))
            history["irl_loss_test"].append(test_loss)
            history["test_relative_goal_distance"].append(rel)
            log.log(0, **{"losses/irl_train": history["irl_loss_train"][0], "losses/irl_test": test_loss,
                          "charts/test_relative_goal_distance": rel})
            save()
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

        columns = (TextColumn(f"[bold]{cfg.method}[/]"), BarColumn(), MofNCompleteColumn(),
                   TextColumn("train {task.fields[train]:.1f}  test {task.fields[test]:.1f}"), TimeRemainingColumn())
        with Progress(*columns, disable=not progress, transient=False) as bar:
            task = bar.add_task("outer", total=cfg.outer_iters, completed=start, train=history["irl_loss_train"][-1],
                                test=history["irl_loss_test"][-1])
            for it in range(start + 1, cfg.outer_iters + 1):
                t0 = time.perf_counter()
                train_loss = learner.outer_iteration()
                test_loss, rel = evaluate_test()
                check_finite(train_loss, "train IRL loss", it)
                check_finite(test_loss, "test IRL loss", it)
                seconds = time.perf_counter() - t0
                history["irl_loss_train"].append(train_loss)
                history["irl_loss_test"].append(test_loss)
                history["test_relative_goal_distance"].append(rel)
                history["seconds"].append(seconds)
                scalars = {"losses/irl_train": train_loss, "losses/irl_test": test_loss,
                           "charts/test_relative_goal_distance": rel, "charts/seconds_per_outer_iter": seconds}
                if isinstance(learner, MBIRL) and learner.optimizer is not None:
                    scalars["charts/cost_grad_norm"] = learner.last_grad_norm
                    if cfg.grad_clip is not None:
                        scalars["charts/grad_clipped"] = float(learner.clipped)
                        history.setdefault("grad_clipped", []).append(float(learner.clipped))
                log.log(it, **scalars)
                if it % cfg.checkpoint_every == 0 or it == cfg.outer_iters:
                    save()
                bar.update(task, advance=1, train=train_loss, test=test_loss)
    final = learner.evaluate(prep.test)
    with torch.no_grad():  # the original code's "before training" train loss: zero actions, no inner step
        u0 = torch.zeros(len(prep.train), prep.train.horizon - 1, prep.dynamics.n_joints)
        zero_action = float(irl_loss(prep.dynamics.rollout(prep.train.q0, u0)[1].flatten(-2), prep.train.z).mean())
    metrics: dict[str, Any] = {
        "method": cfg.method,
        "irl_loss_train": history["irl_loss_train"],
        "irl_loss_test": history["irl_loss_test"],
        "test_relative_goal_distance_curve": history["test_relative_goal_distance"],
        "zero_action_irl_loss_train": zero_action,
        "final_train_irl_loss": history["irl_loss_train"][-1],
        "final_test_irl_loss": float(final.irl_loss.mean()),
        "final_test_irl_loss_per_demo": final.irl_loss.tolist(),
        "test_relative_goal_distance": float(final.relative_goal_distance.mean()),
        "seconds_per_outer_iter": float(np.mean(history["seconds"])) if history["seconds"] else 0.0,
        "grad_clip": cfg.grad_clip,
        "grad_clipped_iterations": int(sum(history.get("grad_clipped", []))),
        "outer_iters": cfg.outer_iters,
    }
    weights = _weights_of(learner)
    if weights is not None:
        metrics["learned_weights"] = weights.tolist()
    if figures:
        fig_dir = run_dir / "figures"
        plot_learning_curves({cfg.method: metrics}, fig_dir / "learning_curve.png", title=f"IRL loss ({cfg.method})")
        plot_predictions(prep.test.z.numpy(), {cfg.method: final.z_pred.numpy()}, fig_dir / "predictions.png")
        if weights is not None:
            plot_weights({cfg.method: weights}, fig_dir / "weights.png", prep.dynamics.n_keypoints)
    write_json_atomic(run_dir / "metrics.json", metrics)
    metrics["_z_pred"] = final.z_pred.numpy()
    return metrics


def run_compare(base: MBIRLRunConfig, methods: Sequence[str], run_dir: str | Path, *, resume: bool = False,
                progress: bool = True) -> dict[str, Any]:
    """Run every method on one demo set; write one figure per kind and a Markdown summary table."""
    from mbirl.reporting.plots import plot_learning_curves, plot_predictions, plot_weights

    run_dir = Path(run_dir)
    unknown = [m for m in methods if m not in METHODS]
    if unknown or not methods:
        raise InputError(f"unknown method(s) {unknown} (expected some of {', '.join(METHODS)})", field="costs")
    if base.rbf_original and "rbf" not in methods:
        raise InputError("--rbf-original applies to the rbf cost, which is not among the methods",
                         field="rbf_original")
    demo_set = load_keypoint_demos(base.demos)
    dynamics = KinematicKeypointDynamics(robot_from_options(base.urdf, base.keypoint_links))
    configs = {m: MBIRLRunConfig(**{**base.to_json(), "method": m, "train": base.train, "test": base.test,
                                    "rbf_original": base.rbf_original and m == "rbf"})
               for m in methods}
    prepared = {m: prepare_run(c, demo_set, dynamics) for m, c in configs.items()}  # validate all first
    results = {}
    for m in methods:
        results[m] = run_mbirl(configs[m], run_dir / m, resume=resume, progress=progress, prepared=prepared[m])
    first = next(iter(prepared.values()))
    plot_learning_curves(results, run_dir / "learning_curves.png",
                         title=f"IRL loss, {len(first.train)} train / {len(first.test)} test demos")
    plot_predictions(first.test.z.numpy(), {m: r["_z_pred"] for m, r in results.items()}, run_dir / "predictions.png")
    weights = {m: np.asarray(r["learned_weights"]) for m, r in results.items() if "learned_weights" in r}
    if weights:
        plot_weights(weights, run_dir / "weights.png", dynamics.n_keypoints)
    rows = ["| method | train IRL loss (start → end) | test IRL loss (start → end) | test rel. goal distance | "
            "s / outer iter |", "|---|---|---|---|---|"]
    summary = {}
    for m, r in results.items():
        rows.append(f"| {m} | {r['irl_loss_train'][0]:.1f} → {r['final_train_irl_loss']:.1f} | "
                    f"{r['irl_loss_test'][0]:.1f} → {r['final_test_irl_loss']:.1f} | "
                    f"{r['test_relative_goal_distance']:.3f} | {r['seconds_per_outer_iter']:.4f} |")
        summary[m] = {k: r[k] for k in ("final_train_irl_loss", "final_test_irl_loss", "test_relative_goal_distance",
                                        "seconds_per_outer_iter")}
        summary[m]["initial_train_irl_loss"] = r["irl_loss_train"][0]
        summary[m]["initial_test_irl_loss"] = r["irl_loss_test"][0]
    table = "\n".join(rows) + "\n"
    (run_dir / "summary.md").write_text(
        f"# MBIRL comparison\n\nDemos: `{base.demos}`; train {base.train[0]}:{base.train[1]}, test "
        f"{base.test[0]}:{base.test[1]}; {base.outer_iters} outer iterations, K={base.inner_steps}, "
        f"inner lr {base.inner_lr}, outer lr {base.outer_lr}, update {base.update}.\n\n{table}")
    write_json_atomic(run_dir / "summary.json", summary)
    return {"summary": summary, "table": table}
