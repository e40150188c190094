"""MBIRL from visual demonstrations, stage by stage, as run directories.

Stages (each a function over a config dataclass; the training stages resume from their checkpoints):

1. demos: placing/reaching demonstrations rendered from a fixed camera (:mod:`mbirl.data.visual`);
2. explore: random joint motions with images, joint states and actions;
3. detector: the spatial-softmax keypoint autoencoder trained on the exploration images; evaluated by matching
   its keypoints to the projected ground-truth object keypoints on held-out frames (pixel error);
4. dynamics: an MLP ``(q, z, u) -> (q', z')`` trained on the exploration data with the detector's (lifted)
   keypoints; 1-step and open-loop (``eval_horizon`` steps) errors on held-out trajectories;
5. irl: the bi-level MBIRL learner with the detector's keypoints as demonstrations and the learned model in the
   inner loop, for every cost and baseline; each learned cost is evaluated by optimising actions through the
   learned model and executing them on the true robot kinematics, scored against the ground-truth keypoints.
   The ground-truth pipeline (true keypoints and kinematics) runs on the same demonstrations for comparison.

Each stage's settings are one dataclass (:class:`VisualDemosConfig`, :class:`ExplorationConfig`,
:class:`DetectorSettings`, :class:`DynamicsSettings`, :class:`IRLSettings`) which nests the components' own
configs (:class:`~mbirl.perception.detector.DetectorConfig`, :class:`~mbirl.perception.train.DetectorTrainConfig`,
...); a stage run adds its inputs and seed (:class:`DetectorStageConfig`, :class:`DynamicsStageConfig`,
:class:`VisualIRLConfig`) and :class:`PipelineConfig` nests the settings of all five. Every run directory is a
:class:`~mbirl.reporting.runs.RunDir`.

:func:`run_pipeline` chains the stages in one run directory (``data/``, ``detector/``, ``dynamics/``, ``irl/``,
``figures/`` with one figure per stage, ``metrics.json``); finished stages are skipped on ``--resume``. The
method is described in docs/design.md.
"""

from __future__ import annotations

import dataclasses
import shutil
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, TypeVar

import numpy as np
import torch

from mbirl.algorithms.mbirl import DemoBatch, MBIRLConfig, evaluate_on_robot
from mbirl.data.demos import KeypointDemoSet, save_keypoint_demos
from mbirl.data.visual import (
    ExplorationData,
    check_rendered_size,
    generate_exploration,
    load_exploration,
    load_visual_demos,
    render_demos,
    save_exploration,
    save_visual_demos,
)
from mbirl.dynamics.keypoint_mlp import (
    DynamicsTrainConfig,
    KeypointMLPConfig,
    KeypointMLPDynamics,
    dynamics_errors,
    fit_keypoint_dynamics,
    keypoint_dynamics_optimizer,
)
from mbirl.dynamics.kinematic import KinematicKeypointDynamics
from mbirl.envs.kuka import DEMO_COUNT, DEMO_HORIZON, DEMO_NOISE_CM, DEMO_TASK, generate_demos
from mbirl.envs.render import DEFAULT_RESOLUTION, Camera, default_camera
from mbirl.envs.robot import KeypointRobot
from mbirl.errors import InputError
from mbirl.experiments.kuka_irl import METHODS, MBIRLRunConfig, prepare_run, run_mbirl
from mbirl.fileio import write_json_atomic
from mbirl.nets import DEFAULT_DEVICE, resolve_device
from mbirl.perception.detector import DetectorConfig, KeypointAutoencoder, check_image_size, images_to_tensor
from mbirl.perception.evaluate import lift_keypoints_checked, match_keypoints
from mbirl.perception.train import DetectorTrainConfig, detector_optimizer, fit_detector, init_background
from mbirl.perception.trained import DETECTOR_FILE, TrainedDetector
from mbirl.reporting.checkpoint import load_optimizer_state, restoring
from mbirl.reporting.runs import RunDir
from mbirl.types import KeypointTrajectory
from mbirl.validation import read_json

__all__ = [
    "HOLDOUT_FRACTION",
    "DetectorSettings",
    "DetectorStageConfig",
    "DynamicsSettings",
    "DynamicsStageConfig",
    "ExplorationConfig",
    "IRLSettings",
    "PipelineConfig",
    "VisualDemosConfig",
    "VisualIRLConfig",
    "make_exploration",
    "make_visual_demos",
    "run_detector_stage",
    "run_dynamics_stage",
    "run_pipeline",
    "run_visual_irl",
]

S = TypeVar("S")

HOLDOUT_FRACTION = 0.2
"""Default fraction of exploration trajectories (the last ones) held out to evaluate the detector and dynamics."""


# --------------------------------------------------------------------------------------------- configs


@dataclass
class VisualDemosConfig:
    """Rendered demonstrations (``mbirl visual demos``); the image size is the caller's (``resolution``)."""

    task: str = DEMO_TASK
    """``placing`` or ``reaching``"""
    n: int = DEMO_COUNT
    """number of demonstrations"""
    seed: int = 0
    """seed of the demonstrations' paths and noise"""
    horizon: int = DEMO_HORIZON
    """time steps per demonstration (states, including the start)"""
    noise: float = DEMO_NOISE_CM
    """per-step noise on the desired path (cm)"""


@dataclass
class ExplorationConfig:
    """Random joint motions with their renderings (``mbirl visual explore``)."""

    n: int = 800
    """number of random-motion trajectories"""
    horizon: int = 10
    """actions per trajectory (each has ``horizon + 1`` frames)"""
    seed: int = 1
    """seed of the motions"""


@dataclass
class DetectorSettings:
    """Training and evaluation of the keypoint detector (without its data: see :class:`DetectorStageConfig`)."""

    model: DetectorConfig = field(default_factory=DetectorConfig)
    """the detector's architecture"""
    train: DetectorTrainConfig = field(default_factory=DetectorTrainConfig)
    """its optimisation"""
    holdout_fraction: float = HOLDOUT_FRACTION
    """the last trajectories held out for evaluation (never trained on)"""
    calibration_frames: int = 500
    """training frames used to match learned to ground-truth keypoints"""
    checkpoint_every: int = 250
    """gradient steps between checkpoints (the last step is always saved)"""


@dataclass(kw_only=True)
class DetectorStageConfig(DetectorSettings):
    """Train and evaluate the keypoint detector on an exploration data set (``mbirl visual train-detector``)."""

    RESUMABLE: ClassVar[tuple[str, ...]] = ("train.steps", "checkpoint_every", "device")
    """Fields ``--resume`` may change: how long training goes, how often it checkpoints and the device."""

    data: str
    """exploration ``.npz`` (``mbirl visual explore``)"""
    seed: int = 0
    """initialisation and minibatch order"""
    device: str = DEFAULT_DEVICE
    """where the detector trains (the pipeline's GPU stage): ``auto`` (CUDA when there is a GPU), ``cpu``
    or ``cuda`` (:func:`mbirl.nets.resolve_device`)"""


@dataclass
class DynamicsSettings:
    """Training and evaluation of the learned keypoint dynamics (without its inputs: see
    :class:`DynamicsStageConfig`)."""

    model: KeypointMLPConfig = field(default_factory=KeypointMLPConfig)
    """the model's size"""
    train: DynamicsTrainConfig = field(default_factory=DynamicsTrainConfig)
    """its optimisation"""
    holdout_fraction: float = HOLDOUT_FRACTION
    """the last trajectories held out for evaluation (as the detector's)"""
    eval_horizon: int = 10
    """open-loop horizon of the reported multi-step error (capped by the trajectories' length)"""
    checkpoint_every: int = 250
    """gradient steps between checkpoints (the last step is always saved)"""


@dataclass(kw_only=True)
class DynamicsStageConfig(DynamicsSettings):
    """Train and evaluate the keypoint dynamics on detector keypoints (``mbirl visual train-dynamics``)."""

    RESUMABLE: ClassVar[tuple[str, ...]] = ("train.steps", "checkpoint_every", "device")
    """Fields ``--resume`` may change: how long training goes, how often it checkpoints and the device."""

    data: str
    """exploration ``.npz`` (``mbirl visual explore``)"""
    detector: str
    """directory of a trained detector (``mbirl visual train-detector``)"""
    seed: int = 0
    """initialisation and minibatch order"""
    device: str = DEFAULT_DEVICE
    """where the dynamics model trains and the detector detects: ``auto`` (CUDA when there is a GPU), ``cpu``
    or ``cuda`` (:func:`mbirl.nets.resolve_device`)"""


@dataclass
class IRLSettings:
    """Visual MBIRL and the ground-truth pipeline on the same demonstrations (without the inputs: see
    :class:`VisualIRLConfig`). Each method runs as an MBIRL run (:class:`~mbirl.experiments.kuka_irl.MBIRLRunConfig`)
    with these settings."""

    methods: tuple[str, ...] = METHODS
    """costs and baselines (see :data:`mbirl.experiments.kuka_irl.METHODS`)"""
    headline: str = "rbf"
    """the method whose figures are reported as ``final_test_irl_loss`` etc. in ``metrics.json``"""
    train: tuple[int, int] = MBIRLRunConfig.train
    """training demonstrations, index range ``[start, stop)``"""
    test: tuple[int, int] = MBIRLRunConfig.test
    """test demonstrations, index range ``[start, stop)``"""
    outer_iters: int = MBIRLRunConfig.outer_iters
    """outer iterations (passes over the training demonstrations)"""
    checkpoint_every: int = MBIRLRunConfig.checkpoint_every
    """outer iterations between checkpoints of each method's runs"""
    trainer: MBIRLConfig = field(default_factory=MBIRLConfig)
    """the bi-level learner's hyper-parameters (also the inner loop that evaluates a cost on the robot)"""


@dataclass(kw_only=True)
class VisualIRLConfig(IRLSettings):
    """Visual MBIRL from trained stages (``mbirl visual irl``)."""

    RESUMABLE: ClassVar[tuple[str, ...]] = ("outer_iters", "checkpoint_every", "device")
    """Fields ``--resume`` may change (as an MBIRL run's): how long learning goes, how often it checkpoints and the
    device."""

    demos: str
    """visual demonstrations (``mbirl visual demos``)"""
    detector: str
    """directory of a trained detector (``mbirl visual train-detector``)"""
    dynamics: str
    """directory of a trained dynamics model (``mbirl visual train-dynamics``)"""
    seed: int = 0
    """seeds every method's run (the neural cost's initialisation)"""
    device: str = DEFAULT_DEVICE
    """where every method's run learns and the detector detects: ``auto`` (CUDA when there is a GPU), ``cpu``
    or ``cuda`` (:func:`mbirl.nets.resolve_device`)"""


@dataclass
class PipelineConfig:
    """Every stage of visual MBIRL in one run directory (``mbirl visual pipeline``; :meth:`quick` for a tiny
    smoke run)."""

    RESUMABLE: ClassVar[tuple[str, ...]] = ("detector.checkpoint_every", "dynamics.checkpoint_every",
                                            "irl.outer_iters", "irl.checkpoint_every", "device")
    """Fields ``--resume`` may change. Finished stages are skipped on resume, so only what a stage cut short or the
    IRL stage (always continued) can still honour: checkpoint intervals and the outer iterations."""

    demos: VisualDemosConfig = field(default_factory=VisualDemosConfig)
    """the rendered demonstrations"""
    explore: ExplorationConfig = field(default_factory=ExplorationConfig)
    """the exploration data set (detector and dynamics training data)"""
    resolution: int = DEFAULT_RESOLUTION
    """square image size of demonstrations and exploration (pixels)"""
    detector: DetectorSettings = field(default_factory=DetectorSettings)
    """the keypoint detector"""
    dynamics: DynamicsSettings = field(default_factory=DynamicsSettings)
    """the learned keypoint dynamics"""
    irl: IRLSettings = field(default_factory=IRLSettings)
    """visual and ground-truth MBIRL"""
    seed: int = 0
    """detector, dynamics and cost initialisation (the data sets have their own seeds)"""
    device: str = DEFAULT_DEVICE
    """where every stage's networks train (rendering is on the CPU): ``auto`` (CUDA when there is a GPU), ``cpu``
    or ``cuda`` (:func:`mbirl.nets.resolve_device`)"""

    @classmethod
    def quick(cls) -> PipelineConfig:
        """A tiny setting for smoke tests (well under two minutes on two CPU cores)."""
        return cls(explore=ExplorationConfig(n=40),
                   detector=DetectorSettings(model=DetectorConfig(n_keypoints=6, width=16),
                                             train=DetectorTrainConfig(steps=150, batch_size=16)),
                   dynamics=DynamicsSettings(model=KeypointMLPConfig(hidden=64, layers=2),
                                             train=DynamicsTrainConfig(steps=150)),
                   irl=IRLSettings(methods=("default", "weighted", "rbf", "abbeel"), outer_iters=5))


def _stage(cls: type[S], settings: Any, **inputs: Any) -> S:
    """The stage config ``cls`` (a subclass of ``type(settings)``) with ``settings``' values and ``inputs``."""
    values = {f.name: getattr(settings, f.name) for f in dataclasses.fields(settings)}
    return cls(**values, **inputs)


# --------------------------------------------------------------------------------------------- helpers


def _split(n: int, holdout_fraction: float) -> int:
    """Number of training trajectories when the last ``holdout_fraction`` are held out (at least one each)."""
    if not 0.0 < holdout_fraction < 1.0:
        raise InputError(f"must be in (0, 1), got {holdout_fraction}", field="holdout_fraction")
    if n < 2:
        raise InputError(f"need at least 2 trajectories to hold some out, got {n}", field="n")
    return int(min(max(round(n * (1.0 - holdout_fraction)), 1), n - 1))


def _check_methods(methods: Sequence[str], headline: str) -> None:
    unknown = [m for m in methods if m not in METHODS]
    if unknown or not methods:
        raise InputError(f"unknown method(s) {unknown} (expected some of {', '.join(METHODS)})", field="costs")
    if headline not in methods:
        raise InputError(f"headline method '{headline}' is not among {list(methods)}", field="headline")


def _train_resumable(run: RunDir, label: str, total: int, model: torch.nn.Module, generator: torch.Generator,
                     fit: Callable[..., dict[str, Any]], *, optimizer: torch.optim.Optimizer, progress: bool,
                     checkpoint_every: int, log_every: int = 10) -> float:
    """Run ``fit`` with the run's logging and checkpoints, continuing from its last checkpoint if it has one
    (checked whole before anything is written: ``optimizer`` is one like ``fit``'s, for its state).

    Returns the seconds spent training in this call.
    """
    start, opt_state = 0, None
    if run.state is not None:
        with restoring(run.checkpoint.with_suffix(".json")):
            model.load_state_dict(run.state["model"])
            opt_state = run.state["optimizer"]
            load_optimizer_state(optimizer, opt_state)
            generator.set_state(run.state["generator"])
            start = int(run.state["step"])
            if start < 0:
                raise ValueError(f"step must be >= 0, got {start}")
    run.start()
    t0 = time.perf_counter()
    with run.logger(resume_from_step=start + 1 if start else None) as log, \
            run.progress(label, total, start, enabled=progress) as update:

        def on_step(step: int, scalars: dict[str, float], state: dict[str, Any]) -> None:
            if step % log_every == 0 or step == total:
                log.log(step, **scalars)
            if step % checkpoint_every == 0 or step == total:
                run.save({"model": model.state_dict(), "optimizer": state["optimizer"],
                          "generator": generator.get_state(), "step": step})
            update(advance=1, info=" ".join(f"{k.split('/')[-1]} {v:.3g}" for k, v in scalars.items()
                                            if k.startswith("losses/")))

        fit(start_step=start, optimizer_state=opt_state, on_step=on_step)
    return time.perf_counter() - t0


def _read_metrics(path: Path) -> dict[str, Any]:
    data = read_json(path)
    if not isinstance(data, dict):
        raise InputError("expected a JSON object", source=str(path))
    return data


def _frames(x: np.ndarray) -> np.ndarray:
    """Merge the leading (trajectory, time) axes of images or depth maps."""
    return x.reshape(-1, *x.shape[2:])


def _robot_of(meta: dict[str, Any], source: str) -> KeypointRobot:
    return KeypointRobot.from_description(meta.get("robot"), source=source)


# --------------------------------------------------------------------------------------------- data stages


def make_visual_demos(out: str | Path, cfg: VisualDemosConfig | None = None, *, camera: Camera | None = None,
                      robot: KeypointRobot | None = None) -> KeypointDemoSet:
    """Generate reachable demonstrations (:func:`mbirl.envs.kuka.generate_demos`), render them with ``camera``
    (default: :func:`~mbirl.envs.render.default_camera`), save ``out`` and its figures beside it."""
    from mbirl.envs.kuka import default_kuka
    from mbirl.reporting.plots import plot_demos

    cfg = cfg if cfg is not None else VisualDemosConfig()
    out = Path(out)
    if out.suffix != ".npz":
        raise InputError(f"output must end in .npz, got '{out}'", field="out")
    if cfg.n < 1:
        raise InputError(f"must be >= 1, got {cfg.n}", field="n")
    if not (np.isfinite(cfg.noise) and cfg.noise >= 0):
        raise InputError(f"must be >= 0, got {cfg.noise}", field="noise")
    camera = camera if camera is not None else default_camera()
    check_rendered_size(cfg.n * cfg.horizon, camera)
    robot = robot if robot is not None else default_kuka()
    demos = generate_demos(cfg.task, cfg.n, seed=cfg.seed, horizon=cfg.horizon, robot=robot,  # type: ignore[arg-type]
                           noise=cfg.noise)
    rendered, depth = render_demos(demos, robot, camera)
    meta = {"task": cfg.task, "seed": cfg.seed, "noise_cm": cfg.noise, "robot": robot.describe(),
            "command": f"mbirl visual demos --task {cfg.task} --n {cfg.n} --seed {cfg.seed} --horizon {cfg.horizon} "
                       f"--noise {cfg.noise} --resolution {camera.width}"}
    save_visual_demos(out, rendered, depth, camera, meta)
    plot_demos(rendered, out.with_suffix(".png"), title=f"{cfg.task}: {cfg.n} visual demonstrations (seed {cfg.seed})")
    _plot_frames(rendered, camera, out.with_name(out.stem + "_frames.png"),
                 title=f"{cfg.task}: rendered demonstrations")
    return KeypointDemoSet(tuple(rendered), meta)


def _plot_frames(demos: Sequence[KeypointTrajectory], camera: Camera, path: Path, title: str) -> None:
    """A grid of frames (rows: demonstrations, columns: time) with the projected ground-truth keypoints."""
    from mbirl.perception.plots import plot_keypoint_overlay

    demos = list(demos)[:3]
    T = demos[0].horizon
    times = sorted({0, T // 3, (2 * T) // 3, T - 1})
    images = np.stack([d.images[t] for d in demos for t in times if d.images is not None])
    uv = np.stack([camera.project(d.keypoints[t])[0] for d in demos for t in times])
    plot_keypoint_overlay(images, uv, path, title=title + " (rows: demos; dots: projected ground-truth keypoints)",
                          ncols=len(times))


@contextmanager
def _render_progress(total: int, enabled: bool) -> Iterator[Callable[[int], None]]:
    """A progress bar over rendered frames; yields ``advance(k)``."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    bar = Progress(TextColumn("[bold]render[/]"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                   disable=not enabled)
    task = bar.add_task("render", total=total)
    with bar:
        yield lambda k: bar.update(task, advance=k)


def make_exploration(out: str | Path, cfg: ExplorationConfig | None = None, *, camera: Camera | None = None,
                     robot: KeypointRobot | None = None, progress: bool = False) -> ExplorationData:
    """Render random joint motions (:func:`~mbirl.data.visual.generate_exploration`) with ``camera`` (default:
    :func:`~mbirl.envs.render.default_camera`), save ``out`` and a figure beside it."""
    from mbirl.envs.kuka import default_kuka
    from mbirl.perception.plots import plot_keypoint_overlay

    cfg = cfg if cfg is not None else ExplorationConfig()
    out = Path(out)
    if out.suffix != ".npz":
        raise InputError(f"output must end in .npz, got '{out}'", field="out")
    camera = camera if camera is not None else default_camera()
    check_rendered_size(cfg.n * (cfg.horizon + 1), camera)
    robot = robot if robot is not None else default_kuka()
    with _render_progress(cfg.n * (cfg.horizon + 1), progress) as advance:
        data = generate_exploration(robot, camera, cfg.n, cfg.horizon, seed=cfg.seed, progress=advance)
    data.meta["command"] = (f"mbirl visual explore --n {cfg.n} --horizon {cfg.horizon} --seed {cfg.seed} "
                            f"--resolution {camera.width}")
    save_exploration(out, data)
    pick = np.linspace(0, len(data) - 1, min(len(data), 6)).astype(int)
    uv, _ = camera.project(data.keypoints[pick, -1])
    plot_keypoint_overlay(data.images[pick, -1], uv, out.with_suffix(".png"), ncols=3,
                          title="exploration: last frames of random joint motions\n"
                                "(dots: projected ground-truth keypoints)")
    return data


# --------------------------------------------------------------------------------------------- detector


def run_detector_stage(cfg: DetectorStageConfig, run_dir: str | Path, *, resume: bool = False, progress: bool = True,
                       data: ExplorationData | None = None) -> dict[str, Any]:
    """Train (or resume) the detector on the exploration images, evaluate it, write figures and metrics.

    The trained detector is saved as ``RUN_DIR/detector.*`` (:meth:`TrainedDetector.load` reads it back).
    """
    from mbirl.perception.plots import plot_keypoint_overlay

    data = data if data is not None else load_exploration(cfg.data)
    H, W = data.images.shape[2:4]
    if H != W:
        raise InputError(f"the detector needs square images, got {W}x{H}", source=cfg.data, field="images")
    check_image_size(H)
    k = data.keypoints.shape[2]
    if cfg.model.n_keypoints < k:
        raise InputError(f"need at least as many learned keypoints as object keypoints ({k}), got "
                         f"{cfg.model.n_keypoints}", field="n_keypoints")
    if cfg.train.steps < 1:
        raise InputError(f"need at least one training step, got {cfg.train.steps}", field="steps")
    if cfg.checkpoint_every < 1 or cfg.calibration_frames < 1:
        raise InputError("checkpoint_every and calibration_frames must be >= 1", field="detector")
    n_train = _split(len(data), cfg.holdout_fraction)
    device = resolve_device(cfg.device)
    run = RunDir(run_dir, cfg, resume=resume)
    camera = data.camera
    train_images = _frames(data.images[:n_train])
    torch.manual_seed(cfg.seed)
    model = KeypointAutoencoder(cfg.model, image_size=H)
    init_background(model, train_images)
    model.to(device)  # initialised on the CPU: the same weights on every device
    generator = torch.Generator().manual_seed(cfg.seed)

    def fit(**kw: Any) -> dict[str, Any]:
        return fit_detector(model, train_images, cfg.train, generator=generator, **kw)

    seconds = _train_resumable(run, "detector", cfg.train.steps, model, generator, fit, progress=progress,
                               optimizer=detector_optimizer(model, cfg.train),
                               checkpoint_every=cfg.checkpoint_every)
    model.eval()
    # Evaluation: match on calibration (training) frames, measure on held-out frames.
    uv_true, _ = camera.project(data.keypoints)  # (N, T+1, k, 2)
    cal_idx = np.linspace(0, len(train_images) - 1, min(cfg.calibration_frames, len(train_images))).astype(int)
    learned_cal = model.detect(train_images[cal_idx]).numpy()
    match = match_keypoints(learned_cal, _frames(uv_true[:n_train])[cal_idx])
    held_images = _frames(data.images[n_train:])
    learned_held = model.detect(held_images).numpy()
    truth_held = _frames(uv_true[n_train:])
    err = np.linalg.norm(learned_held[:, list(match.indices)] - truth_held, axis=-1)  # (F, k)
    background_depth = np.median(_frames(data.depth[:n_train]), axis=0)
    lifted, found = lift_keypoints_checked(learned_held[:, list(match.indices)], _frames(data.depth[n_train:]),
                                           camera, background=background_depth)
    lift_err = lifted - _frames(data.keypoints[n_train:])
    TrainedDetector(model, tuple(match.indices), camera, background_depth).save(run.path)
    pick = np.linspace(0, len(held_images) - 1, 6).astype(int)
    with torch.no_grad():
        recon = model(images_to_tensor(held_images[pick]).to(device))[1].cpu()
    recon_u8 = ((recon.movedim(1, -1) + 0.5).clamp(0, 1) * 255).round().to(torch.uint8).numpy()
    plot_keypoint_overlay(held_images[pick], learned_held[pick], run.figures / "keypoints.png",
                          truth=truth_held[pick], matched=match.indices, reconstructions=recon_u8,
                          title=f"held-out frames: {cfg.model.n_keypoints} learned keypoints (matched: circled; "
                                f"ground truth: x); row 2: reconstructions")
    metrics = {
        "detector_pixel_error": float(err.mean()),
        "detector_pixel_error_per_keypoint": err.mean(0).tolist(),
        "detector_pixel_error_median": float(np.median(err)),
        "detector_pixel_error_p90": float(np.quantile(err, 0.9)),
        "matched_indices": list(match.indices),
        "calibration_pixel_error": list(match.calibration_error),
        "lift_error_cm": float(np.linalg.norm(lift_err, axis=-1).mean()),
        "lift_error_cm_after_median_offset": float(np.linalg.norm(lift_err - np.median(lift_err, 0), axis=-1).mean()),
        "lift_error_cm_p99": float(np.quantile(np.linalg.norm(lift_err, axis=-1), 0.99)),
        "lost_fraction": float(1.0 - found.mean()),
        "pixel_error_over_5px_fraction": float((err > 5.0).mean()),
        "n_train_frames": int(len(train_images)),
        "n_heldout_frames": int(len(held_images)),
        "image_size": int(H),
        "seconds_training": seconds,
        "steps": cfg.train.steps,
        "device": str(device),
    }
    run.finish(metrics)
    return metrics


# --------------------------------------------------------------------------------------------- dynamics


def _detect_exploration(detector: TrainedDetector, data: ExplorationData) -> tuple[np.ndarray, np.ndarray]:
    """Lifted detector keypoints ``(N, T+1, k, 3)`` and per-trajectory validity ``(N,)`` (no keypoint lost)."""
    N, T1 = data.q.shape[:2]
    z, found = detector.keypoints_3d_checked(_frames(data.images), _frames(data.depth))
    return z.reshape(N, T1, *z.shape[1:]), np.asarray(found.reshape(N, -1).all(axis=1))


def run_dynamics_stage(cfg: DynamicsStageConfig, run_dir: str | Path, *, resume: bool = False, progress: bool = True,
                       data: ExplorationData | None = None) -> dict[str, Any]:
    """Train (or resume) the keypoint dynamics on detector keypoints of the exploration data; evaluate it.

    The trained model is saved as ``RUN_DIR/model.*`` (:meth:`KeypointMLPDynamics.load` reads it back). The
    open-loop errors (``*_error_open_loop``) are measured ``eval_horizon`` steps from the true start.
    """
    from mbirl.perception.plots import plot_dynamics_rollouts

    data = data if data is not None else load_exploration(cfg.data)
    robot = _robot_of(data.meta, cfg.data)
    if data.q.shape[-1] != robot.n_joints:
        raise InputError(f"joint states have {data.q.shape[-1]} joints, the data's robot has {robot.n_joints}",
                         source=cfg.data, field="q")
    detector = TrainedDetector.load(cfg.detector)
    if detector.camera != data.camera:
        raise InputError("the detector was trained with a different camera than this data set's",
                         source=cfg.data, field="camera")
    if cfg.eval_horizon < 1 or cfg.checkpoint_every < 1:
        raise InputError("eval_horizon and checkpoint_every must be >= 1", field="dynamics")
    if cfg.train.steps < 1:
        raise InputError(f"need at least one training step, got {cfg.train.steps}", field="steps")
    n_train = _split(len(data), cfg.holdout_fraction)
    device = resolve_device(cfg.device)
    run = RunDir(run_dir, cfg, resume=resume)
    detector.model.to(device)
    z, valid = _detect_exploration(detector, data)
    # Trajectories where the detector lost the object in some frame are left out (training and evaluation).
    tr = np.flatnonzero(valid[:n_train])
    ho = n_train + np.flatnonzero(valid[n_train:])
    if len(tr) == 0 or len(ho) == 0:
        raise InputError("the detector lost the object in every training or held-out trajectory", source=cfg.detector)
    torch.manual_seed(cfg.seed)
    model = KeypointMLPDynamics(data.q.shape[-1], z.shape[2], cfg.model, lower=robot.lower, upper=robot.upper,
                                seed=cfg.seed).to(device)
    generator = torch.Generator().manual_seed(cfg.seed)
    q, u = data.q, data.actions

    def fit(**kw: Any) -> dict[str, Any]:
        return fit_keypoint_dynamics(model, q[tr], z[tr], u[tr], cfg.train, generator=generator, **kw)

    seconds = _train_resumable(run, "dynamics", cfg.train.steps, model, generator, fit, progress=progress,
                               optimizer=keypoint_dynamics_optimizer(model, cfg.train),
                               checkpoint_every=cfg.checkpoint_every)
    model.eval()
    held = dynamics_errors(model, q[ho], z[ho], u[ho], cfg.eval_horizon)
    train = dynamics_errors(model, q[tr], z[tr], u[tr], cfg.eval_horizon)
    # Evaluation only: the same rollouts against the ground-truth keypoints, moved by the lifting's constant
    # offset (the marker's front surface vs its centre; the median over training frames).
    offset = np.median((z[tr] - data.keypoints[tr]).reshape(-1, *z.shape[2:]), axis=0)
    truth = dynamics_errors(model, q[ho], data.keypoints[ho] + offset, u[ho], cfg.eval_horizon)
    model.save(run.path)
    with torch.no_grad():
        qh = torch.as_tensor(q[ho][:6], device=device)
        _, zp = model.rollout(qh[:, 0], torch.as_tensor(u[ho][:6], device=device),
                              torch.as_tensor(z[ho][:6, 0], device=device))
    plot_dynamics_rollouts(z[ho][:6], zp.cpu().numpy(), run.figures / "rollouts.png",
                           title=f"held-out exploration: detector keypoints (black) and {u.shape[1]}-step open-loop "
                                 f"predictions")
    metrics = {
        "dynamics_error_1step": held["one_step"],
        "dynamics_error_open_loop": held["open_loop"],
        "dynamics_error_open_loop_mean": held["open_loop_mean"],
        "dynamics_readout_error": held["readout"],
        "eval_horizon": int(held["horizon"]),
        "train_error_1step": train["one_step"],
        "train_error_open_loop": train["open_loop"],
        "ground_truth_error_1step": truth["one_step"],
        "ground_truth_error_open_loop": truth["open_loop"],
        "lift_offset_cm": offset.tolist(),
        "units": "cm, mean Euclidean distance per keypoint, against the detector's lifted keypoints; open loop: "
                 "at step eval_horizon from the true start (open_loop_mean: averaged over steps 1..eval_horizon)",
        "n_train_trajectories": int(len(tr)),
        "n_heldout_trajectories": int(len(ho)),
        "n_trajectories_with_lost_keypoints": int((~valid).sum()),
        "seconds_training": seconds,
        "steps": cfg.train.steps,
        "device": str(device),
    }
    run.finish(metrics)
    return metrics


# --------------------------------------------------------------------------------------------- visual IRL


def run_visual_irl(cfg: VisualIRLConfig, run_dir: str | Path, *, resume: bool = False, progress: bool = True
                   ) -> dict[str, Any]:
    """Learn every cost from detector keypoints through the learned model, and from ground truth; compare."""
    from mbirl.perception.plots import plot_visual_vs_gt
    from mbirl.reporting.plots import plot_learning_curves, plot_predictions, plot_weights

    run_dir = Path(run_dir)
    _check_methods(cfg.methods, cfg.headline)
    device = resolve_device(cfg.device)
    visual = load_visual_demos(cfg.demos)
    detector = TrainedDetector.load(cfg.detector)
    detector.model.to(device)
    model = KeypointMLPDynamics.load(cfg.dynamics)
    if detector.camera != visual.camera:
        raise InputError("the demonstrations were rendered with a different camera than the detector's",
                         source=cfg.demos, field="camera")
    robot = _robot_of(visual.demo_set.meta, cfg.demos)
    true_dyn = KinematicKeypointDynamics(robot)
    demos = visual.demo_set.demos
    if model.n_keypoints != demos[0].n_keypoints or model.n_joints != demos[0].n_joints:
        raise InputError(f"the dynamics model has {model.n_keypoints} keypoints and {model.n_joints} joints, the "
                         f"demonstrations {demos[0].n_keypoints} and {demos[0].n_joints}", source=cfg.demos)
    # The demonstrations as the detector sees them: matched keypoints lifted with the depth maps.
    T = demos[0].horizon
    images = np.stack([d.images for d in demos if d.images is not None])
    z_det, found = detector.keypoints_3d_checked(_frames(images), _frames(visual.depth))
    z_det = z_det.reshape(len(demos), T, -1, 3)
    detected = [KeypointTrajectory(start_q=d.start_q, keypoints=z_det[i], q=d.q, source=cfg.demos)
                for i, d in enumerate(demos)]
    detected_set = KeypointDemoSet(tuple(detected), {"detected_from": cfg.demos, "detector": cfg.detector,
                                                     "dynamics": cfg.dynamics})
    base: dict[str, Any] = {"train": cfg.train, "test": cfg.test, "outer_iters": cfg.outer_iters,
                            "checkpoint_every": cfg.checkpoint_every, "seed": cfg.seed, "trainer": cfg.trainer,
                            "device": cfg.device}
    detected_path = run_dir / "demos_detected.npz"
    visual_cfgs = {m: MBIRLRunConfig(demos=str(detected_path), method=m, **base) for m in cfg.methods}
    gt_cfgs = {m: MBIRLRunConfig(demos=cfg.demos, method=m, **base) for m in cfg.methods}
    # Validate everything before writing anything.
    prepared = {m: prepare_run(visual_cfgs[m], detected_set, model) for m in cfg.methods}
    gt_prepared = {m: prepare_run(gt_cfgs[m], visual.demo_set, true_dyn) for m in cfg.methods}
    run = RunDir(run_dir, cfg, resume=resume)
    run.start()
    if not detected_path.exists():
        save_keypoint_demos(detected_path, detected, detected_set.meta)
    gt_train = DemoBatch.from_demos(visual.demo_set.subset(*cfg.train)).to(device)
    gt_test = DemoBatch.from_demos(visual.demo_set.subset(*cfg.test)).to(device)
    results: dict[str, dict[str, Any]] = {}
    robot_z: dict[str, np.ndarray] = {}
    curves: dict[str, dict[str, list[float]]] = {}
    weights: dict[str, np.ndarray] = {}
    for m in cfg.methods:
        prep = prepared[m]
        vm = run_mbirl(visual_cfgs[m], run_dir / "visual" / m, resume=resume, progress=progress, prepared=prep)
        test_eval = evaluate_on_robot(prep.learner, model, true_dyn, prep.test, gt_test)
        train_eval = evaluate_on_robot(prep.learner, model, true_dyn, prep.train, gt_train)
        gm = run_mbirl(gt_cfgs[m], run_dir / "gt" / m, resume=resume, progress=progress, prepared=gt_prepared[m])
        robot_z[m] = test_eval["z"].cpu().numpy()
        curves[m] = {"irl_loss_train": vm["irl_loss_train"], "irl_loss_test": vm["irl_loss_test"]}
        if "learned_weights" in vm:
            weights[m] = np.asarray(vm["learned_weights"])
        results[m] = {
            "final_test_irl_loss": float(test_eval["irl_loss"].mean()),
            "test_relative_goal_distance": float(test_eval["relative_goal_distance"].mean()),
            "final_train_irl_loss": float(train_eval["irl_loss"].mean()),
            "final_test_irl_loss_per_demo": test_eval["irl_loss"].tolist(),
            "model_space_final_test_irl_loss": vm["final_test_irl_loss"],
            "gt_final_test_irl_loss": gm["final_test_irl_loss"],
            "gt_test_relative_goal_distance": gm["test_relative_goal_distance"],
            "gt_final_train_irl_loss": gm["final_train_irl_loss"],
            "seconds_per_outer_iter": vm["seconds_per_outer_iter"],
            "gt_seconds_per_outer_iter": gm["seconds_per_outer_iter"],
        }
        results[m]["ratio_visual_to_gt"] = results[m]["final_test_irl_loss"] / max(gm["final_test_irl_loss"], 1e-12)
    plot_visual_vs_gt({m: {"visual": r["final_test_irl_loss"], "gt": r["gt_final_test_irl_loss"]}
                       for m, r in results.items()}, run.figures / "visual_vs_gt.png")
    plot_learning_curves(curves, run.figures / "learning_curves_visual.png",
                         title="visual MBIRL: IRL loss in the detector's keypoint space (learned model)")
    plot_predictions(gt_test.z.cpu().numpy(), robot_z, run.figures / "predictions_on_robot.png",
                     title="test demos (ground truth) vs visual costs' plans executed on the robot")
    if weights:
        plot_weights(weights, run.figures / "weights_visual.png", model.n_keypoints)
    rows = ["| method | visual: test IRL loss (robot) | visual: rel. goal distance | GT pipeline: test IRL loss | "
            "GT: rel. goal distance | visual / GT |", "|---|---|---|---|---|---|"]
    for m, r in results.items():
        rows.append(f"| {m} | {r['final_test_irl_loss']:.1f} | {r['test_relative_goal_distance']:.3f} | "
                    f"{r['gt_final_test_irl_loss']:.1f} | {r['gt_test_relative_goal_distance']:.3f} | "
                    f"{r['ratio_visual_to_gt']:.2f} |")
    table = "\n".join(rows) + "\n"
    head = results[cfg.headline]
    metrics = {
        "headline": cfg.headline,
        "final_test_irl_loss": head["final_test_irl_loss"],
        "test_relative_goal_distance": head["test_relative_goal_distance"],
        "gt_final_test_irl_loss": head["gt_final_test_irl_loss"],
        "gt_test_relative_goal_distance": head["gt_test_relative_goal_distance"],
        "per_method": results,
        "demo_detection_error_cm": float(np.linalg.norm(
            z_det - np.stack([d.keypoints for d in demos]), axis=-1).mean()),
        "demo_keypoints_lost": int((~found).sum()),
        "table": table,
    }
    t = cfg.trainer
    run.finish(metrics, summary=(
        f"# Visual MBIRL vs ground truth\n\nDemos: `{cfg.demos}`; train {cfg.train[0]}:{cfg.train[1]}, test "
        f"{cfg.test[0]}:{cfg.test[1]}; {cfg.outer_iters} outer iterations, K={t.inner_steps}, inner lr "
        f"{t.inner_lr}, outer lr {t.outer_lr}. Visual costs are learned from detector keypoints through the "
        f"learned dynamics; every test figure is measured on the true robot with ground-truth keypoints.\n\n{table}"))
    return metrics


# --------------------------------------------------------------------------------------------- pipeline


def _check_pipeline(cfg: PipelineConfig) -> None:
    """Every check that needs no data, before anything is written."""
    check_image_size(cfg.resolution)
    _check_methods(cfg.irl.methods, cfg.irl.headline)
    for name, value in (("demos.n", cfg.demos.n), ("explore.n", cfg.explore.n),
                        ("detector.train.steps", cfg.detector.train.steps),
                        ("dynamics.train.steps", cfg.dynamics.train.steps)):
        if value < 1:
            raise InputError(f"must be >= 1, got {value}", field=name)
    n, train, test = cfg.demos.n, cfg.irl.train, cfg.irl.test
    if not (0 <= train[0] < train[1] <= n and 0 <= test[0] < test[1] <= n):
        raise InputError(f"train {train} / test {test} out of range for {n} demonstrations", field="split")


def run_pipeline(cfg: PipelineConfig, run_dir: str | Path, *, resume: bool = False, progress: bool = True
                 ) -> dict[str, Any]:
    """Run every stage into ``run_dir``; with ``resume``, finished stages are skipped and a stage cut short
    continues from its checkpoint. Returns (and writes) ``metrics.json``."""
    _check_pipeline(cfg)
    resolve_device(cfg.device)  # a missing GPU is refused before anything is rendered
    run = RunDir(run_dir, cfg, resume=resume)
    run.start()
    root = run.path
    camera = default_camera(cfg.resolution)
    timings = _StageTimer(root / "timings.json")
    data_dir = root / "data"
    demos_path, explore_path = data_dir / "demos.npz", data_dir / "explore.npz"

    timings.start(ran=not demos_path.exists())
    if not demos_path.exists():
        make_visual_demos(demos_path, cfg.demos, camera=camera)
    _copy_figure(data_dir / "demos_frames.png", run.figures / "stage1_demos.png")
    timings.stop("demos")

    timings.start(ran=not explore_path.exists())
    if not explore_path.exists():
        make_exploration(explore_path, cfg.explore, camera=camera, progress=progress)
    _copy_figure(data_dir / "explore.png", run.figures / "stage2_exploration.png")
    timings.stop("explore")
    exploration = load_exploration(explore_path)

    det_dir = root / "detector"
    timings.start(ran=not (det_dir / "metrics.json").exists())
    if (det_dir / "metrics.json").exists() and (det_dir / f"{DETECTOR_FILE}.json").exists():
        det_metrics = _read_metrics(det_dir / "metrics.json")
    else:
        det_metrics = run_detector_stage(_stage(DetectorStageConfig, cfg.detector, data=str(explore_path),
                                                seed=cfg.seed, device=cfg.device),
                                         det_dir, resume=True, progress=progress, data=exploration)
    _copy_figure(det_dir / "figures" / "keypoints.png", run.figures / "stage3_detector_keypoints.png")
    timings.stop("detector")

    dyn_dir = root / "dynamics"
    timings.start(ran=not (dyn_dir / "metrics.json").exists())
    if (dyn_dir / "metrics.json").exists() and (dyn_dir / "model.json").exists():
        dyn_metrics = _read_metrics(dyn_dir / "metrics.json")
    else:
        dyn_metrics = run_dynamics_stage(_stage(DynamicsStageConfig, cfg.dynamics, data=str(explore_path),
                                                detector=str(det_dir), seed=cfg.seed, device=cfg.device),
                                         dyn_dir, resume=True, progress=progress, data=exploration)
    _copy_figure(dyn_dir / "figures" / "rollouts.png", run.figures / "stage4_dynamics_rollouts.png")
    timings.stop("dynamics")

    irl_dir = root / "irl"
    timings.start(ran=not (irl_dir / "metrics.json").exists())
    irl_metrics = run_visual_irl(_stage(VisualIRLConfig, cfg.irl, demos=str(demos_path), detector=str(det_dir),
                                        dynamics=str(dyn_dir), seed=cfg.seed, device=cfg.device),
                                 irl_dir, resume=True, progress=progress)
    _copy_figure(irl_dir / "figures" / "visual_vs_gt.png", run.figures / "stage5_irl_visual_vs_gt.png")
    timings.stop("irl")

    metrics = {
        "detector_pixel_error": det_metrics["detector_pixel_error"],
        "dynamics_error_1step": dyn_metrics["dynamics_error_1step"],
        "dynamics_error_open_loop": dyn_metrics["dynamics_error_open_loop"],
        "dynamics_eval_horizon": dyn_metrics["eval_horizon"],
        "final_test_irl_loss": irl_metrics["final_test_irl_loss"],
        "test_relative_goal_distance": irl_metrics["test_relative_goal_distance"],
        "gt_final_test_irl_loss": irl_metrics["gt_final_test_irl_loss"],
        "gt_test_relative_goal_distance": irl_metrics["gt_test_relative_goal_distance"],
        "headline": irl_metrics["headline"],
        "per_method": irl_metrics["per_method"],
        "detector": det_metrics,
        "dynamics": dyn_metrics,
        "seconds_per_stage": timings.wall,
        "cpu_seconds_per_stage": timings.cpu,
        "seconds_total": float(sum(timings.wall.values())),
        "cpu_seconds_total": float(sum(timings.cpu.values())),
    }
    run.finish(metrics, summary=(
        "# Visual MBIRL pipeline\n\n"
        f"* detector: mean pixel error of matched keypoints on held-out frames "
        f"{metrics['detector_pixel_error']:.2f} px ({cfg.resolution}x{cfg.resolution})\n"
        f"* dynamics: 1-step {metrics['dynamics_error_1step']:.2f} cm, open-loop "
        f"{metrics['dynamics_eval_horizon']}-step {metrics['dynamics_error_open_loop']:.2f} cm (held-out "
        f"trajectories)\n"
        f"* IRL ({irl_metrics['headline']}): visual {metrics['final_test_irl_loss']:.1f} vs ground truth "
        f"{metrics['gt_final_test_irl_loss']:.1f} test IRL loss on the robot\n\n" + irl_metrics["table"]))
    return metrics


class _StageTimer:
    """Wall-clock and process CPU seconds per stage, kept in ``timings.json`` across resumed calls (a stage
    skipped on resume keeps the time it took when it ran)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        saved = _read_metrics(path) if path.is_file() else {}
        self.wall: dict[str, float] = dict(saved.get("wall", {}))
        self.cpu: dict[str, float] = dict(saved.get("cpu", {}))
        self._t0 = self._c0 = 0.0
        self._ran = True

    def start(self, *, ran: bool) -> None:
        self._t0, self._c0, self._ran = time.perf_counter(), time.process_time(), ran

    def stop(self, stage: str) -> None:
        wall, cpu = time.perf_counter() - self._t0, time.process_time() - self._c0
        if self._ran or stage not in self.wall:
            self.wall[stage], self.cpu[stage] = wall, cpu
            write_json_atomic(self.path, {"wall": self.wall, "cpu": self.cpu})


def _copy_figure(src: Path, dst: Path) -> None:
    if src.is_file():
        dst.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(src, dst)
