"""MBIRL on the KUKA keypoint task with ground-truth keypoints and dynamics, as a run directory.

A run directory (:class:`~mbirl.reporting.runs.RunDir`) holds ``config.json``, ``metrics.jsonl`` and TensorBoard
events (``tb/``) per outer iteration, checkpoints (``checkpoints/last.{safetensors,json}``), figures (``figures/``)
and the final ``metrics.json``. Everything is validated before anything is written.
"""

from __future__ import annotations

import random
import time
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch

from mbirl.algorithms.feature_matching import FeatureMatchingIRL
from mbirl.algorithms.mbirl import MBIRL, CostLearner, DemoBatch, MBIRLConfig, irl_loss
from mbirl.costs import COSTS, make_cost
from mbirl.data.demos import KeypointDemoSet, load_keypoint_demos
from mbirl.dynamics.base import KeypointDynamics
from mbirl.dynamics.kinematic import KinematicKeypointDynamics
from mbirl.envs.kuka import DEFAULT_ROBOT, ROBOTS, robot_from_options
from mbirl.envs.robot import check_joint_limits
from mbirl.errors import InputError, check_finite
from mbirl.nets import DEFAULT_DEVICE, check_device, resolve_device
from mbirl.reporting.checkpoint import restoring
from mbirl.reporting.provenance import component_name
from mbirl.reporting.runs import RunDir, rng_state, set_rng_state

__all__ = ["METHODS", "MBIRLCompareConfig", "MBIRLRunConfig", "Prepared", "parse_split", "prepare_run",
           "run_compare", "run_mbirl"]

BASELINES = ("abbeel",)
METHODS = (*COSTS.names, *BASELINES)
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


@dataclass(frozen=True)
class MBIRLRunConfig:
    """One cost-learning run (``mbirl mbirl train``): demonstrations, robot, method, split, and the learner's
    hyper-parameters in ``trainer``."""

    RESUMABLE: ClassVar[tuple[str, ...]] = ("outer_iters", "checkpoint_every", "device")
    """Fields ``--resume`` may change: how long the run goes, how often it checkpoints and the device it runs
    on."""

    demos: str
    """demonstration file (``.npz`` of this project or an original MBIRL ``.pt``)"""
    method: str = "weighted"
    """a cost (``default|weighted|timedep|rbf|neural|path``) or the feature-matching baseline ``abbeel``"""
    robot: str = DEFAULT_ROBOT
    """built-in robot: ``kuka`` (PyBullet's KUKA iiwa, two keypoints on a held object) or ``original`` (the
    original experiment's iiwa7 with keypoint links)"""
    urdf: str | None = None
    """a robot URDF instead of the built-in robot (needs ``keypoint_links``)"""
    keypoint_links: str | None = None
    """comma-separated keypoint link names of ``urdf`` (or of the built-in robot, replacing its keypoints)"""
    train: tuple[int, int] = (0, 3)
    """training demonstrations, index range ``[start, stop)``"""
    test: tuple[int, int] = (3, 5)
    """test demonstrations, index range ``[start, stop)``"""
    outer_iters: int = 100
    """outer iterations (passes over the training demonstrations)"""
    rbf_original: bool = False
    """the ``rbf`` cost in the official code's formulation (sum over time, integer centres)"""
    seed: int = 0
    """seeds python, numpy and torch (the neural cost's initialisation)"""
    checkpoint_every: int = 10
    """outer iterations between checkpoints (the last one is always saved)"""
    device: str = DEFAULT_DEVICE
    """where the cost, the dynamics and the demonstrations live: ``auto`` (CUDA when there is a GPU), ``cpu`` or
    ``cuda`` (:func:`mbirl.nets.resolve_device`); these problems are small, the CPU is usually fastest"""
    trainer: MBIRLConfig = field(default_factory=MBIRLConfig)
    """the bi-level learner's hyper-parameters (also the inner loop of the ``abbeel`` baseline)"""


@dataclass(frozen=True)
class MBIRLCompareConfig:
    """Several methods on one demo set (``mbirl mbirl compare``): each runs ``run`` with its own ``method``."""

    RESUMABLE: ClassVar[tuple[str, ...]] = ("run.outer_iters", "run.checkpoint_every", "run.device")

    methods: tuple[str, ...]
    """the methods compared, in order (``run.method`` is the first)"""
    run: MBIRLRunConfig
    """the settings every method's run shares"""


@dataclass
class Prepared:
    """Everything a run needs, validated: demos, robot dynamics, batches and the learner."""

    config: MBIRLRunConfig
    demo_set: KeypointDemoSet
    dynamics: KeypointDynamics
    train: DemoBatch
    test: DemoBatch
    learner: CostLearner


def _seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)  # noqa: NPY002 (seed the global RNG any third-party code may use)
    torch.manual_seed(seed)


def _check_run_options(cfg: MBIRLRunConfig) -> None:
    """The checks of a run's own options (the trainer's are :class:`MBIRLConfig`'s)."""
    if cfg.method not in METHODS:
        raise InputError(f"unknown cost '{cfg.method}' (expected one of {', '.join(METHODS)})", field="cost")
    ROBOTS.check(cfg.robot)
    for name, value, low in (("outer_iters", cfg.outer_iters, 0), ("checkpoint_every", cfg.checkpoint_every, 1)):
        if value < low:
            raise InputError(f"must be >= {low}, got {value}", field=name)
    if cfg.rbf_original and cfg.method != "rbf":
        raise InputError(f"--rbf-original applies to --cost rbf only, not '{cfg.method}'", field="rbf_original")
    check_device(cfg.device)


def make_learner(method: str, dynamics: KeypointDynamics, train: DemoBatch, test: DemoBatch | None,
                 config: MBIRLConfig, *, seed: int = 0, rbf_original: bool = False) -> CostLearner:
    """The learner of ``method``: bi-level MBIRL on the named cost, or the feature-matching baseline ``abbeel``; the
    cost is initialised on the CPU and moved to the device of the demonstrations ``train``."""
    if method == "abbeel":
        return FeatureMatchingIRL(dynamics, train, test, config)
    cost = make_cost(method, horizon=train.horizon, dim=int(train.z.shape[-1]), seed=seed, rbf_original=rbf_original)
    return MBIRL(cost.to(train.z.device), dynamics, train, test, config)


def prepare_run(cfg: MBIRLRunConfig, demo_set: KeypointDemoSet | None = None,
                dynamics: KeypointDynamics | None = None) -> Prepared:
    """Validate the configuration and build the learner on ``cfg.device`` (the dynamics are moved there, in place);
    raises InputError, writes nothing."""
    _check_run_options(cfg)
    device = resolve_device(cfg.device)
    demo_set = demo_set if demo_set is not None else load_keypoint_demos(cfg.demos)
    if dynamics is None:
        dynamics = KinematicKeypointDynamics(robot_from_options(cfg.robot, cfg.urdf, cfg.keypoint_links))
    first = demo_set[0]
    if first.n_keypoints != dynamics.n_keypoints:
        raise InputError(f"demonstrations have {first.n_keypoints} keypoints, the robot has {dynamics.n_keypoints}",
                         source=cfg.demos, field="keypoints")
    if first.n_joints != dynamics.n_joints:
        raise InputError(f"demonstrations have {first.n_joints} joints, the robot has {dynamics.n_joints}",
                         source=cfg.demos, field="start_q")
    robot = getattr(dynamics, "robot", None)
    if robot is not None:  # a start the robot cannot be in would train silently on clipped joints
        check_joint_limits(np.stack([d.start_q for d in demo_set.demos]), robot, source=cfg.demos)
    dynamics.to(device)
    train = DemoBatch.from_demos(demo_set.subset(*cfg.train)).to(device)
    test = DemoBatch.from_demos(demo_set.subset(*cfg.test)).to(device)
    _seed_everything(cfg.seed)
    learner = make_learner(cfg.method, dynamics, train, test, cfg.trainer, seed=cfg.seed,
                           rbf_original=cfg.rbf_original)
    return Prepared(cfg, demo_set, dynamics, train, test, learner)


def _weights_of(learner: CostLearner) -> np.ndarray | None:
    table = learner.cost.weights_table()
    return None if table is None else table.cpu().numpy()


def _record_custom_cost(cfg: MBIRLRunConfig, prep: Prepared) -> MBIRLRunConfig:
    """``cfg`` with ``method = "custom:<module.Class>"`` when the prepared learner's cost is not the one
    ``cfg.method`` names (a user's own cost), so that the run never records it under the default's name."""
    if cfg.method in BASELINES:
        return cfg
    cost = prep.learner.cost
    named = make_cost(cfg.method, horizon=prep.train.horizon, dim=int(prep.train.z.shape[-1]), seed=cfg.seed,
                      rbf_original=cfg.rbf_original)
    return cfg if type(cost) is type(named) else replace(cfg, method=f"custom:{component_name(cost)}")


_HISTORY = ("irl_loss_train", "irl_loss_test", "test_relative_goal_distance", "seconds", "grad_clipped")
"""The learning curves a run's checkpoint keeps (``grad_clipped`` only with gradient clipping)."""


def _checked_history(saved: Any, iteration: int) -> dict[str, list[float]]:
    """A checkpoint's learning curves, after checking that they are curves up to ``iteration`` (ValueError or
    KeyError otherwise: an edited checkpoint)."""
    history = {k: [float(x) for x in v] for k, v in saved.items()}
    unknown, missing = set(history) - set(_HISTORY), set(_HISTORY[:4]) - set(history)
    if unknown or missing:
        raise KeyError(f"learning curves {sorted(missing)} missing, {sorted(unknown)[:3]} unknown")
    evaluated = [len(history[k]) for k in _HISTORY[:3]]  # one more than the iterations: before training
    if iteration < 0 or evaluated != [iteration + 1] * 3 or len(history["seconds"]) > iteration \
            or len(history.get("grad_clipped", [])) > iteration:
        raise ValueError(f"learning curves of lengths {evaluated} do not end at iteration {iteration}")
    return history


def run_mbirl(cfg: MBIRLRunConfig, run_dir: str | Path, *, resume: bool = False, progress: bool = True,
              prepared: Prepared | None = None, figures: bool = True) -> dict[str, Any]:
    """Train (or resume) one run and write its outputs into ``run_dir``; returns the final metrics."""
    from mbirl.reporting.plots import plot_learning_curves, plot_predictions, plot_weights

    prep = prepared if prepared is not None else prepare_run(cfg)
    cfg = _record_custom_cost(cfg, prep)
    run = RunDir(run_dir, cfg, resume=resume)
    history: dict[str, list[float]] = {"irl_loss_train": [], "irl_loss_test": [], "test_relative_goal_distance": [],
                                       "seconds": []}
    start = 0
    learner = prep.learner
    if run.state is not None:
        state = run.state
        with restoring(run.checkpoint.with_suffix(".json")):
            learner.load_state_dict(state["learner"])
            start = int(state["iteration"])
            history = _checked_history(state["history"], start)
            set_rng_state(state["rng"])
    run.start(components={"learner": component_name(learner), "cost": component_name(learner.cost),
                           "dynamics": component_name(prep.dynamics)})
    clip = cfg.trainer.grad_clip

    def save() -> None:
        run.save({"learner": learner.state_dict(), "history": history, "rng": rng_state(),
                  "iteration": len(history["irl_loss_train"]) - 1})

    def evaluate_test() -> tuple[float, float]:
        ev = learner.evaluate(prep.test)
        return float(ev.irl_loss.mean()), float(ev.relative_goal_distance.mean())

    def info(train_loss: float, test_loss: float) -> str:
        return f"train {train_loss:.1f}  test {test_loss:.1f}"

    with run.logger(resume_from_step=start + 1 if run.resumed else None) as log:
        if not history["irl_loss_train"]:
            test_loss, rel = evaluate_test()
            history["irl_loss_train"].append(float(learner.evaluate(prep.train).irl_loss.mean()))
            history["irl_loss_test"].append(test_loss)
            history["test_relative_goal_distance"].append(rel)
            log.log(0, **{"losses/irl_train": history["irl_loss_train"][0], "losses/irl_test": test_loss,
                          "charts/test_relative_goal_distance": rel})
            save()
        with run.progress(cfg.method, cfg.outer_iters, start, enabled=progress,
                          info=info(history["irl_loss_train"][-1], history["irl_loss_test"][-1])) as update:
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
                    if clip is not None:
                        scalars["charts/grad_clipped"] = float(learner.clipped)
                        history.setdefault("grad_clipped", []).append(float(learner.clipped))
                log.log(it, **scalars)
                if it % cfg.checkpoint_every == 0 or it == cfg.outer_iters:
                    save()
                update(advance=1, info=info(train_loss, test_loss))
    final = learner.evaluate(prep.test)
    with torch.no_grad():  # the original code's "before training" train loss: zero actions, no inner step
        u0 = torch.zeros(len(prep.train), prep.train.horizon - 1, prep.dynamics.n_joints, device=prep.train.z.device)
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
        "grad_clip": clip,
        "grad_clipped_iterations": int(sum(history.get("grad_clipped", []))),
        "outer_iters": cfg.outer_iters,
        "device": str(prep.train.z.device),
    }
    weights = _weights_of(learner)
    if weights is not None:
        metrics["learned_weights"] = weights.tolist()
    if figures:
        plot_learning_curves({cfg.method: metrics}, run.figures / "learning_curve.png",
                             title=f"IRL loss ({cfg.method})")
        plot_predictions(prep.test.z.cpu().numpy(), {cfg.method: final.z_pred.cpu().numpy()},
                         run.figures / "predictions.png")
        if weights is not None:
            plot_weights({cfg.method: weights}, run.figures / "weights.png", prep.dynamics.n_keypoints)
    run.finish(metrics)
    metrics["_z_pred"] = final.z_pred.cpu().numpy()
    return metrics


def run_compare(base: MBIRLRunConfig, methods: Sequence[str], run_dir: str | Path, *, resume: bool = False,
                progress: bool = True) -> dict[str, Any]:
    """Run every method on one demo set (``run_dir/<method>``); write one figure per kind, ``metrics.json`` (per
    method: initial and final IRL losses, relative goal distance, seconds per outer iteration) and ``summary.md``."""
    from mbirl.reporting.plots import plot_learning_curves, plot_predictions, plot_weights

    run_dir = Path(run_dir)
    unknown = [m for m in methods if m not in METHODS]
    if unknown or not methods:
        raise InputError(f"unknown method(s) {unknown} (expected some of {', '.join(METHODS)})", field="costs")
    if base.rbf_original and "rbf" not in methods:
        raise InputError("--rbf-original applies to the rbf cost, which is not among the methods",
                         field="rbf_original")
    base = replace(base, method=methods[0])
    demo_set = load_keypoint_demos(base.demos)
    dynamics = KinematicKeypointDynamics(robot_from_options(base.robot, base.urdf, base.keypoint_links))
    configs = {m: replace(base, method=m, rbf_original=base.rbf_original and m == "rbf") for m in methods}
    prepared = {m: prepare_run(c, demo_set, dynamics) for m, c in configs.items()}  # validate all first
    run = RunDir(run_dir, MBIRLCompareConfig(methods=tuple(methods), run=base), resume=resume)
    for m, c in configs.items():  # refuses (or checks the resumed configuration of) every method's run first
        RunDir(run_dir / m, c, resume=resume)
    run.start()
    results = {}
    for m in methods:
        results[m] = run_mbirl(configs[m], run_dir / m, resume=resume, progress=progress, prepared=prepared[m])
    first = next(iter(prepared.values()))
    plot_learning_curves(results, run_dir / "learning_curves.png",
                         title=f"IRL loss, {len(first.train)} train / {len(first.test)} test demos")
    plot_predictions(first.test.z.cpu().numpy(), {m: r["_z_pred"] for m, r in results.items()},
                     run_dir / "predictions.png")
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
    t = base.trainer
    run.finish(summary, summary=(
        f"# MBIRL comparison\n\nDemos: `{base.demos}`; train {base.train[0]}:{base.train[1]}, test "
        f"{base.test[0]}:{base.test[1]}; {base.outer_iters} outer iterations, inner {t.inner_optimizer} K="
        f"{t.inner_steps} (tol {t.inner_tol}), inner lr {t.inner_lr}, {t.grad_mode} gradient, outer lr "
        f"{t.outer_lr}, update {t.update}.\n\n{table}"))
    return {"summary": summary, "table": table}
