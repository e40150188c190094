"""MBIRL from visual demonstrations, stage by stage, as run directories.

Stages (each a function over a config dataclass, each resumable from its checkpoint):

1. demos: placing/reaching demonstrations rendered from a fixed camera (:mod:`mbirl.experiments.visual_data`);
2. explore: random joint motions with images, joint states and actions;
3. detector: the spatial-softmax keypoint autoencoder trained on the exploration images; evaluated by matching
   its keypoints to the projected ground-truth object keypoints on held-out frames (pixel error);
4. dynamics: an MLP ``(q, z, u) -> (q', z')`` trained on the exploration data with the detector's (lifted)
   keypoints; 1-step and open-loop 10-step errors on held-out trajectories;
5. irl: the bi-level MBIRL learner with the detector's keypoints as demonstrations and the learned model in the
   inner loop, for every cost and baseline; each learned cost is evaluated by optimising actions through the
   learned model and executing them on the true robot kinematics, scored against the ground-truth keypoints.
   The ground-truth pipeline (true keypoints and kinematics) runs on the same demonstrations for comparison.

:func:`run_pipeline` chains them in one run directory (``data/``, ``detector/``, ``dynamics/``, ``irl/``,
``figures/`` with one figure per stage, ``metrics.json``); finished stages are skipped on ``--resume``.
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np
import torch

from mbirl.algorithms.mbirl import DemoBatch, irl_loss, relative_goal_distance
from mbirl.data.demos import KeypointDemoSet, save_keypoint_demos
from mbirl.dynamics.keypoint_mlp import DynamicsTrainConfig, KeypointMLPDynamics, dynamics_errors, fit_keypoint_dynamics
from mbirl.dynamics.kinematic import KinematicKeypointDynamics
from mbirl.envs.kuka import generate_demos
from mbirl.envs.render import Camera, default_camera
from mbirl.envs.robot import KeypointRobot, KeypointSpec
from mbirl.errors import InputError
from mbirl.experiments.kuka_irl import METHODS, MBIRLRunConfig, prepare_run, run_mbirl
from mbirl.experiments.visual_data import (
    ExplorationData,
    generate_exploration,
    load_exploration,
    load_visual_demos,
    render_demos,
    save_exploration,
    save_visual_demos,
)
from mbirl.fileio import write_json_atomic
from mbirl.perception.detector import DetectorConfig, KeypointAutoencoder, images_to_tensor
from mbirl.perception.evaluate import lift_keypoints_checked, match_keypoints
from mbirl.perception.train import DetectorTrainConfig, fit_detector, init_background
from mbirl.planning.gradient_mpc import GradientMode, optimize_actions
from mbirl.reporting.checkpoint import load_checkpoint, save_checkpoint
from mbirl.reporting.logger import MetricsLogger
from mbirl.types import KeypointTrajectory

__all__ = [
    "DetectorStageConfig",
    "DynamicsStageConfig",
    "PipelineConfig",
    "TrainedDetector",
    "VisualIRLConfig",
    "evaluate_on_robot",
    "load_detector",
    "load_dynamics",
    "make_exploration",
    "make_visual_demos",
    "robot_from_meta",
    "run_detector_stage",
    "run_dynamics_stage",
    "run_pipeline",
    "run_visual_irl",
]


# --------------------------------------------------------------------------------------------- helpers


def robot_from_meta(meta: dict[str, Any], source: str | None = None) -> KeypointRobot:
    """Rebuild the :class:`KeypointRobot` described in a data file's ``meta['robot']``."""
    desc = meta.get("robot")
    if not isinstance(desc, dict) or "urdf" not in desc or "keypoints" not in desc:
        raise InputError("metadata lacks the robot description", source=source, field="meta_json")
    try:
        specs = [KeypointSpec(str(k["link"]), tuple(float(x) for x in k["offset"]))  # type: ignore[arg-type]
                 for k in desc["keypoints"]]
        scale = float(desc.get("scale", 100.0))
    except (KeyError, TypeError, ValueError) as exc:
        raise InputError(f"invalid robot description ({exc})", source=source, field="meta_json") from None
    return KeypointRobot(desc["urdf"], specs, scale=scale, name=str(desc.get("name", "robot")))


def _split(n: int, holdout_fraction: float) -> int:
    """Number of training trajectories when the last ``holdout_fraction`` are held out (at least one each)."""
    if not 0.0 < holdout_fraction < 1.0:
        raise InputError(f"must be in (0, 1), got {holdout_fraction}", field="holdout_fraction")
    if n < 2:
        raise InputError(f"need at least 2 trajectories to hold some out, got {n}", field="n")
    return int(min(max(round(n * (1.0 - holdout_fraction)), 1), n - 1))


def _check_config_match(saved: dict[str, Any], current: dict[str, Any], source: Path,
                        ignore: Sequence[str] = ("steps", "checkpoint_every", "outer_iters")) -> None:
    mismatched = [k for k, v in current.items() if k not in ignore and saved.get(k) != v]
    if mismatched:
        raise InputError(f"--resume with a different configuration ({', '.join(mismatched)})", source=str(source))


def _progress_bar(label: str, total: int, completed: int, enabled: bool) -> Any:
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    bar = Progress(TextColumn(f"[bold]{label}[/]"), BarColumn(), MofNCompleteColumn(),
                   TextColumn("{task.fields[info]}"), TimeRemainingColumn(), disable=not enabled)
    task = bar.add_task(label, total=total, completed=completed, info="")
    return bar, task


def _train_resumable(run_dir: Path, label: str, cfg_json: dict[str, Any], total: int, model: torch.nn.Module,
                     generator: torch.Generator, fit: Callable[..., dict[str, Any]], *, resume: bool, progress: bool,
                     checkpoint_every: int, log_every: int = 10) -> float:
    """Run ``fit`` with JSONL + TensorBoard logging and atomic checkpoints; resume from ``checkpoints/last``.

    Returns the seconds spent training in this call.
    """
    ckpt = run_dir / "checkpoints" / "last"
    start, opt_state = 0, None
    if ckpt.with_suffix(".json").exists():
        if not resume:
            raise InputError("run directory already holds a run; pass --resume to continue it or choose another "
                             "--run-dir", source=str(run_dir))
        state = load_checkpoint(ckpt)
        _check_config_match(state.get("config", {}), cfg_json, ckpt.with_suffix(".json"))
        model.load_state_dict(state["model"])
        opt_state = state["optimizer"]
        generator.set_state(state["generator"])
        start = int(state["step"])
    run_dir.mkdir(parents=True, exist_ok=True)
    write_json_atomic(run_dir / "config.json", cfg_json)
    t0 = time.perf_counter()
    bar, task = _progress_bar(label, total, start, progress)
    with MetricsLogger(run_dir, resume_from_step=start + 1 if start else None) as log, bar:

        def on_step(step: int, scalars: dict[str, float], state: dict[str, Any]) -> None:
            if step % log_every == 0 or step == total:
                log.log(step, **scalars)
            if step % checkpoint_every == 0 or step == total:
                save_checkpoint(ckpt, {"model": model.state_dict(), "optimizer": state["optimizer"],
                                       "generator": generator.get_state(), "step": step, "config": cfg_json})
            bar.update(task, advance=1, info=" ".join(f"{k.split('/')[-1]} {v:.3g}" for k, v in scalars.items()
                                                       if k.startswith("losses/")))

        fit(start_step=start, optimizer_state=opt_state, on_step=on_step)
    return time.perf_counter() - t0


def _read_json(path: Path) -> dict[str, Any]:
    import json

    try:
        data = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise InputError(f"invalid JSON ({exc})", source=str(path)) from None
    if not isinstance(data, dict):
        raise InputError("expected a JSON object", source=str(path))
    return data


def _frames(x: np.ndarray) -> np.ndarray:
    """Merge the leading (trajectory, time) axes of images or depth maps."""
    return x.reshape(-1, *x.shape[2:])


# --------------------------------------------------------------------------------------------- data stages


def make_visual_demos(out: str | Path, *, task: str = "placing", n: int = 6, seed: int = 0, horizon: int = 10,
                      noise: float = 0.3, resolution: int = 64, robot: KeypointRobot | None = None,
                      camera: Camera | None = None) -> KeypointDemoSet:
    """Generate reachable demonstrations (:func:`mbirl.envs.kuka.generate_demos`), render them, save ``out``."""
    from mbirl.envs.kuka import default_kuka
    from mbirl.reporting.plots import plot_demos

    out = Path(out)
    if out.suffix != ".npz":
        raise InputError(f"output must end in .npz, got '{out}'", field="out")
    camera = camera if camera is not None else default_camera(resolution)
    robot = robot if robot is not None else default_kuka()
    demos = generate_demos(task, n, seed=seed, horizon=horizon, robot=robot, noise=noise)  # type: ignore[arg-type]
    rendered, depth = render_demos(demos, robot, camera)
    meta = {"task": task, "seed": seed, "noise_cm": noise, "robot": robot.describe(),
            "command": f"mbirl visual demos --task {task} --n {n} --seed {seed} --horizon {horizon} --noise {noise} "
                       f"--resolution {camera.width}"}
    save_visual_demos(out, rendered, depth, camera, meta)
    plot_demos(rendered, out.with_suffix(".png"), title=f"{task}: {n} visual demonstrations (seed {seed})")
    _plot_frames(rendered, camera, out.with_name(out.stem + "_frames.png"), title=f"{task}: rendered demonstrations")
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


def make_exploration(out: str | Path, *, n: int = 800, horizon: int = 10, seed: int = 1, resolution: int = 64,
                     robot: KeypointRobot | None = None, camera: Camera | None = None, progress: bool = False
                     ) -> ExplorationData:
    """Render random joint motions (:func:`~mbirl.experiments.visual_data.generate_exploration`), save ``out``."""
    from mbirl.envs.kuka import default_kuka
    from mbirl.perception.plots import plot_keypoint_overlay

    out = Path(out)
    if out.suffix != ".npz":
        raise InputError(f"output must end in .npz, got '{out}'", field="out")
    camera = camera if camera is not None else default_camera(resolution)
    robot = robot if robot is not None else default_kuka()
    bar, task = _progress_bar("render", n * (horizon + 1), 0, progress)
    with bar:
        data = generate_exploration(robot, camera, n, horizon, seed=seed,
                                    progress=lambda k: bar.update(task, advance=k))
    data.meta["command"] = f"mbirl visual explore --n {n} --horizon {horizon} --seed {seed} --resolution {resolution}"
    save_exploration(out, data)
    pick = np.linspace(0, len(data) - 1, min(len(data), 6)).astype(int)
    uv, _ = camera.project(data.keypoints[pick, -1])
    plot_keypoint_overlay(data.images[pick, -1], uv, out.with_suffix(".png"), ncols=3,
                          title="exploration: last frames of random joint motions\n"
                                "(dots: projected ground-truth keypoints)")
    return data


# --------------------------------------------------------------------------------------------- detector


@dataclass
class DetectorStageConfig:
    """Train and evaluate the keypoint detector.

    Attributes:
        data: exploration ``.npz`` (``mbirl visual explore``).
        n_keypoints, width, sigma: detector architecture (:class:`~mbirl.perception.detector.DetectorConfig`).
        steps, batch_size, lr, saliency_weight: optimisation (:class:`~mbirl.perception.train.DetectorTrainConfig`).
        holdout_fraction: the last trajectories held out for evaluation (never trained on).
        calibration_frames: training frames used to match learned to ground-truth keypoints.
        seed: initialisation and minibatch order. checkpoint_every: steps between checkpoints.
    """

    data: str
    n_keypoints: int = 16
    width: int = 32
    sigma: float = 1.0
    steps: int = 3000
    batch_size: int = 32
    lr: float = 2e-3
    saliency_weight: float = 5.0
    holdout_fraction: float = 0.2
    calibration_frames: int = 500
    seed: int = 0
    checkpoint_every: int = 250

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class TrainedDetector:
    """A trained detector with its matched object keypoints and camera: images + depth -> 3-D keypoints."""

    model: KeypointAutoencoder
    matched: tuple[int, ...]
    camera: Camera
    background_depth: np.ndarray | None = None  # (H, W) static scene depth, metres

    def image_keypoints(self, images: np.ndarray) -> np.ndarray:
        """Matched keypoints ``(N, k, 2)`` (pixels) of uint8 frames ``(N, H, W, 3)``."""
        return self.model.detect(images).numpy()[:, list(self.matched)]

    def keypoints_3d(self, images: np.ndarray, depth: np.ndarray) -> np.ndarray:
        """Matched keypoints lifted to 3-D with the depth maps ``(N, H, W)``: ``(N, k, 3)`` (robot units)."""
        return self.keypoints_3d_checked(images, depth)[0]

    def keypoints_3d_checked(self, images: np.ndarray, depth: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """:meth:`keypoints_3d` and whether each keypoint sat on a foreground object, ``(N, k)`` bool (False: the
        keypoint lost the object, its depth is the static scene's; such frames are left out of training)."""
        return lift_keypoints_checked(self.image_keypoints(images), depth, self.camera,
                                      background=self.background_depth)


def load_detector(run_dir: str | Path) -> TrainedDetector:
    """Load ``RUN_DIR/detector.{safetensors,json}`` written by :func:`run_detector_stage`."""
    run_dir = Path(run_dir)
    if not (run_dir / "detector.json").is_file():
        raise InputError("no trained detector here (run `mbirl visual train-detector` first)", source=str(run_dir))
    state = load_checkpoint(run_dir / "detector")
    try:
        config = DetectorConfig(**state["config"])
        model = KeypointAutoencoder(config)
        model.load_state_dict(state["model"])
        matched = tuple(int(i) for i in state["matched"])
        background = state["background_depth"].numpy().astype(np.float64)
    except (KeyError, TypeError, RuntimeError) as exc:
        raise InputError(f"inconsistent detector file ({str(exc).splitlines()[0]})",
                         source=str(run_dir / "detector.json")) from None
    model.eval()
    camera = Camera.from_meta(state["camera"], str(run_dir))
    if background.shape != (camera.height, camera.width):
        raise InputError("background depth does not match the camera", source=str(run_dir / "detector.json"))
    return TrainedDetector(model, matched, camera, background)


def run_detector_stage(cfg: DetectorStageConfig, run_dir: str | Path, *, resume: bool = False, progress: bool = True,
                       data: ExplorationData | None = None) -> dict[str, Any]:
    """Train (or resume) the detector on the exploration images, evaluate it, write figures and metrics."""
    from mbirl.perception.plots import plot_keypoint_overlay

    run_dir = Path(run_dir)
    data = data if data is not None else load_exploration(cfg.data)
    H, W = data.images.shape[2:4]
    if H != W:
        raise InputError(f"the detector needs square images, got {W}x{H}", source=cfg.data, field="images")
    k = data.keypoints.shape[2]
    det_cfg = DetectorConfig(n_keypoints=cfg.n_keypoints, image_size=H, width=cfg.width, sigma=cfg.sigma)
    if cfg.n_keypoints < k:
        raise InputError(f"need at least as many learned keypoints as object keypoints ({k}), got {cfg.n_keypoints}",
                         field="n_keypoints")
    train_cfg = DetectorTrainConfig(steps=cfg.steps, batch_size=cfg.batch_size, lr=cfg.lr,
                                    saliency_weight=cfg.saliency_weight, seed=cfg.seed)
    if cfg.checkpoint_every < 1 or cfg.calibration_frames < 1:
        raise InputError("checkpoint_every and calibration_frames must be >= 1", field="detector")
    n_train = _split(len(data), cfg.holdout_fraction)
    camera = data.camera
    train_images = _frames(data.images[:n_train])
    torch.manual_seed(cfg.seed)
    model = KeypointAutoencoder(det_cfg)
    init_background(model, train_images)
    generator = torch.Generator().manual_seed(cfg.seed)
    cfg_json = cfg.to_json()

    def fit(**kw: Any) -> dict[str, Any]:
        return fit_detector(model, train_images, train_cfg, generator=generator, **kw)

    seconds = _train_resumable(run_dir, "detector", cfg_json, cfg.steps, model, generator, fit, resume=resume,
                               progress=progress, checkpoint_every=cfg.checkpoint_every)
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
    save_checkpoint(run_dir / "detector", {"model": model.state_dict(), "config": det_cfg.to_json(),
                                           "matched": list(match.indices), "camera": camera.to_meta(),
                                           "background_depth": torch.as_tensor(background_depth, dtype=torch.float32)})
    pick = np.linspace(0, len(held_images) - 1, 6).astype(int)
    with torch.no_grad():
        recon = model(images_to_tensor(held_images[pick]))[1]
    recon_u8 = ((recon.movedim(1, -1) + 0.5).clamp(0, 1) * 255).round().to(torch.uint8).numpy()
    plot_keypoint_overlay(held_images[pick], learned_held[pick], run_dir / "figures" / "keypoints.png",
                          truth=truth_held[pick], matched=match.indices, reconstructions=recon_u8,
                          title=f"held-out frames: {cfg.n_keypoints} learned keypoints (matched: circled; "
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
        "steps": cfg.steps,
    }
    write_json_atomic(run_dir / "metrics.json", metrics)
    return metrics


# --------------------------------------------------------------------------------------------- dynamics


@dataclass
class DynamicsStageConfig:
    """Train and evaluate the learned keypoint dynamics on detector keypoints.

    Attributes:
        data: exploration ``.npz``. detector: directory of a trained detector (``train-detector``).
        hidden, layers, ensemble: model size (:class:`~mbirl.dynamics.keypoint_mlp.KeypointMLPDynamics`).
        steps, batch_size, lr, one_step_weight, huber_delta: optimisation (see ``DynamicsTrainConfig``).
        holdout_fraction: the last trajectories held out for evaluation (as the detector's).
        eval_horizon: open-loop horizon of the reported multi-step error.
        seed: initialisation and minibatch order. checkpoint_every: steps between checkpoints.
    """

    data: str
    detector: str
    hidden: int = 256
    layers: int = 3
    ensemble: int = 1
    steps: int = 2000
    batch_size: int = 64
    lr: float = 2e-3
    one_step_weight: float = 0.5
    huber_delta: float | None = 0.05
    holdout_fraction: float = 0.2
    eval_horizon: int = 10
    seed: int = 0
    checkpoint_every: int = 250

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def load_dynamics(run_dir: str | Path) -> KeypointMLPDynamics:
    """Load ``RUN_DIR/model.{safetensors,json}`` written by :func:`run_dynamics_stage`."""
    run_dir = Path(run_dir)
    if not (run_dir / "model.json").is_file():
        raise InputError("no trained dynamics model here (run `mbirl visual train-dynamics` first)",
                         source=str(run_dir))
    state = load_checkpoint(run_dir / "model")
    try:
        model = KeypointMLPDynamics.from_description(state["description"])
        model.load_state_dict(state["model"])
    except (KeyError, TypeError, RuntimeError) as exc:
        raise InputError(f"inconsistent dynamics file ({str(exc).splitlines()[0]})",
                         source=str(run_dir / "model.json")) from None
    model.eval()
    return model


def _detect_exploration(detector: TrainedDetector, data: ExplorationData) -> tuple[np.ndarray, np.ndarray]:
    """Lifted detector keypoints ``(N, T+1, k, 3)`` and per-trajectory validity ``(N,)`` (no keypoint lost)."""
    N, T1 = data.q.shape[:2]
    z, found = detector.keypoints_3d_checked(_frames(data.images), _frames(data.depth))
    return z.reshape(N, T1, *z.shape[1:]), np.asarray(found.reshape(N, -1).all(axis=1))


def run_dynamics_stage(cfg: DynamicsStageConfig, run_dir: str | Path, *, resume: bool = False, progress: bool = True,
                       data: ExplorationData | None = None) -> dict[str, Any]:
    """Train (or resume) the keypoint dynamics on detector keypoints of the exploration data; evaluate it."""
    from mbirl.perception.plots import plot_dynamics_rollouts

    run_dir = Path(run_dir)
    data = data if data is not None else load_exploration(cfg.data)
    detector = load_detector(cfg.detector)
    if detector.camera != data.camera:
        raise InputError("the detector was trained with a different camera than this data set's",
                         source=cfg.data, field="camera")
    if cfg.eval_horizon < 1 or cfg.checkpoint_every < 1:
        raise InputError("eval_horizon and checkpoint_every must be >= 1", field="dynamics")
    robot = robot_from_meta(data.meta, cfg.data)
    n_train = _split(len(data), cfg.holdout_fraction)
    z, valid = _detect_exploration(detector, data)
    # Trajectories where the detector lost the object in some frame are left out (training and evaluation).
    tr = np.flatnonzero(valid[:n_train])
    ho = n_train + np.flatnonzero(valid[n_train:])
    if len(tr) == 0 or len(ho) == 0:
        raise InputError("the detector lost the object in every training or held-out trajectory", source=cfg.detector)
    torch.manual_seed(cfg.seed)
    model = KeypointMLPDynamics(data.q.shape[-1], z.shape[2], hidden=cfg.hidden, layers=cfg.layers,
                                ensemble=cfg.ensemble, lower=robot.lower, upper=robot.upper, seed=cfg.seed)
    train_cfg = DynamicsTrainConfig(steps=cfg.steps, batch_size=cfg.batch_size, lr=cfg.lr,
                                    one_step_weight=cfg.one_step_weight, huber_delta=cfg.huber_delta, seed=cfg.seed)
    generator = torch.Generator().manual_seed(cfg.seed)
    q, u = data.q, data.actions

    def fit(**kw: Any) -> dict[str, Any]:
        return fit_keypoint_dynamics(model, q[tr], z[tr], u[tr], train_cfg, generator=generator, **kw)

    if cfg.steps < 1:
        raise InputError(f"need at least one training step, got {cfg.steps}", field="steps")
    seconds = _train_resumable(run_dir, "dynamics", cfg.to_json(), cfg.steps, model, generator, fit, resume=resume,
                               progress=progress, checkpoint_every=cfg.checkpoint_every)
    model.eval()
    held = dynamics_errors(model, q[ho], z[ho], u[ho], cfg.eval_horizon)
    train = dynamics_errors(model, q[tr], z[tr], u[tr], cfg.eval_horizon)
    # Evaluation only: the same rollouts against the ground-truth keypoints, moved by the lifting's constant
    # offset (the marker's front surface vs its centre; the median over training frames).
    offset = np.median((z[tr] - data.keypoints[tr]).reshape(-1, *z.shape[2:]), axis=0)
    truth = dynamics_errors(model, q[ho], data.keypoints[ho] + offset, u[ho], cfg.eval_horizon)
    save_checkpoint(run_dir / "model", {"model": model.state_dict(), "description": model.describe()})
    with torch.no_grad():
        qh = torch.as_tensor(q[ho][:6])
        _, zp = model.rollout(qh[:, 0], torch.as_tensor(u[ho][:6]), torch.as_tensor(z[ho][:6, 0]))
    plot_dynamics_rollouts(z[ho][:6], zp.numpy(), run_dir / "figures" / "rollouts.png",
                           title=f"held-out exploration: detector keypoints (black) and {u.shape[1]}-step open-loop "
                                 f"predictions")
    metrics = {
        "dynamics_error_1step": held["one_step"],
        "dynamics_error_10step": held["open_loop"],
        "dynamics_error_open_loop_mean": held["open_loop_mean"],
        "dynamics_readout_error": held["readout"],
        "eval_horizon": int(held["horizon"]),
        "train_error_1step": train["one_step"],
        "train_error_10step": train["open_loop"],
        "ground_truth_error_1step": truth["one_step"],
        "ground_truth_error_10step": truth["open_loop"],
        "lift_offset_cm": offset.tolist(),
        "units": "cm, mean Euclidean distance per keypoint, against the detector's lifted keypoints",
        "n_train_trajectories": int(len(tr)),
        "n_heldout_trajectories": int(len(ho)),
        "n_trajectories_with_lost_keypoints": int((~valid).sum()),
        "seconds_training": seconds,
        "steps": cfg.steps,
    }
    write_json_atomic(run_dir / "metrics.json", metrics)
    return metrics


# --------------------------------------------------------------------------------------------- visual IRL


@dataclass
class VisualIRLConfig:
    """Visual MBIRL and the ground-truth pipeline on the same visual demonstrations.

    Attributes:
        demos: visual demonstrations (``mbirl visual demos``). detector, dynamics: trained stage directories.
        methods: costs and baselines (see :data:`mbirl.experiments.kuka_irl.METHODS`).
        headline: the method whose figures are reported as ``final_test_irl_loss`` etc. in ``metrics.json``.
        train, test, outer_iters, inner_steps, inner_lr, outer_lr, seed: as :class:`MBIRLRunConfig`.
    """

    demos: str
    detector: str
    dynamics: str
    methods: tuple[str, ...] = METHODS
    headline: str = "rbf"
    train: tuple[int, int] = (0, 3)
    test: tuple[int, int] = (3, 5)
    outer_iters: int = 100
    inner_steps: int = 1
    inner_lr: float = 1e-3
    outer_lr: float = 1e-2
    seed: int = 0

    def to_json(self) -> dict[str, Any]:
        out = asdict(self)
        out["methods"], out["train"], out["test"] = list(self.methods), list(self.train), list(self.test)
        return out


def evaluate_on_robot(cost_learner: Any, model: Any, robot_dynamics: KinematicKeypointDynamics, planned: DemoBatch,
                      truth: DemoBatch) -> dict[str, Any]:
    """Plan through ``model`` with the learner's frozen cost (its inner-loop settings, goals from ``planned``),
    execute the actions on the true kinematics and score against the ground-truth demonstrations ``truth``."""
    u, _ = optimize_actions(model, cost_learner.cost, planned.q0, planned.goal, planned.horizon,
                            grad_mode=GradientMode.NONE, **cost_learner.inner)
    with torch.no_grad():
        _, z = robot_dynamics.rollout(truth.q0, u)
    z = z.flatten(-2)
    return {"irl_loss": irl_loss(z, truth.z), "relative_goal_distance": relative_goal_distance(z, truth.z),
            "z": z, "actions": u}


def run_visual_irl(cfg: VisualIRLConfig, run_dir: str | Path, *, resume: bool = False, progress: bool = True
                   ) -> dict[str, Any]:
    """Learn every cost from detector keypoints through the learned model, and from ground truth; compare."""
    from mbirl.perception.plots import plot_visual_vs_gt
    from mbirl.reporting.plots import plot_learning_curves, plot_predictions, plot_weights

    run_dir = Path(run_dir)
    unknown = [m for m in cfg.methods if m not in METHODS]
    if unknown or not cfg.methods:
        raise InputError(f"unknown method(s) {unknown} (expected some of {', '.join(METHODS)})", field="costs")
    if cfg.headline not in cfg.methods:
        raise InputError(f"headline method '{cfg.headline}' is not among {list(cfg.methods)}", field="headline")
    visual = load_visual_demos(cfg.demos)
    detector = load_detector(cfg.detector)
    model = load_dynamics(cfg.dynamics)
    if detector.camera != visual.camera:
        raise InputError("the demonstrations were rendered with a different camera than the detector's",
                         source=cfg.demos, field="camera")
    robot = robot_from_meta(visual.demo_set.meta, cfg.demos)
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
    detected_set = KeypointDemoSet(tuple(detected), {"detected_from": cfg.demos, "detector": cfg.detector})
    base: dict[str, Any] = {"train": cfg.train, "test": cfg.test, "outer_iters": cfg.outer_iters,
                            "inner_steps": cfg.inner_steps, "inner_lr": cfg.inner_lr, "outer_lr": cfg.outer_lr,
                            "seed": cfg.seed}
    detected_path = run_dir / "demos_detected.npz"
    visual_cfgs = {m: MBIRLRunConfig(demos=str(detected_path), method=m, extra={"dynamics": cfg.dynamics,
                                                                                 "detector": cfg.detector}, **base)
                   for m in cfg.methods}
    gt_cfgs = {m: MBIRLRunConfig(demos=cfg.demos, method=m, **base) for m in cfg.methods}
    # Validate everything before writing anything.
    prepared = {m: prepare_run(visual_cfgs[m], detected_set, model) for m in cfg.methods}
    gt_prepared = {m: prepare_run(gt_cfgs[m], visual.demo_set, true_dyn) for m in cfg.methods}
    if (run_dir / "config.json").exists():
        if not resume:
            raise InputError("run directory already holds a run; pass --resume to continue it or choose another "
                             "--run-dir", source=str(run_dir))
        _check_config_match(_read_json(run_dir / "config.json"), cfg.to_json(), run_dir / "config.json")
    run_dir.mkdir(parents=True, exist_ok=True)
    write_json_atomic(run_dir / "config.json", cfg.to_json())
    if not detected_path.exists():
        save_keypoint_demos(detected_path, detected, detected_set.meta)
    gt_train = DemoBatch.from_demos(visual.demo_set.subset(*cfg.train))
    gt_test = DemoBatch.from_demos(visual.demo_set.subset(*cfg.test))
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
        robot_z[m] = test_eval["z"].numpy()
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
    fig_dir = run_dir / "figures"
    plot_visual_vs_gt({m: {"visual": r["final_test_irl_loss"], "gt": r["gt_final_test_irl_loss"]}
                       for m, r in results.items()}, fig_dir / "visual_vs_gt.png")
    plot_learning_curves(curves, fig_dir / "learning_curves_visual.png",
                         title="visual MBIRL: IRL loss in the detector's keypoint space (learned model)")
    plot_predictions(gt_test.z.numpy(), robot_z, fig_dir / "predictions_on_robot.png",
                     title="test demos (ground truth) vs visual costs' plans executed on the robot")
    if weights:
        plot_weights(weights, fig_dir / "weights_visual.png", model.n_keypoints)
    rows = ["| method | visual: test IRL loss (robot) | visual: rel. goal distance | GT pipeline: test IRL loss | "
            "GT: rel. goal distance | visual / GT |", "|---|---|---|---|---|---|"]
    for m, r in results.items():
        rows.append(f"| {m} | {r['final_test_irl_loss']:.1f} | {r['test_relative_goal_distance']:.3f} | "
                    f"{r['gt_final_test_irl_loss']:.1f} | {r['gt_test_relative_goal_distance']:.3f} | "
                    f"{r['ratio_visual_to_gt']:.2f} |")
    table = "\n".join(rows) + "\n"
    (run_dir / "summary.md").write_text(
        f"# Visual MBIRL vs ground truth\n\nDemos: `{cfg.demos}`; train {cfg.train[0]}:{cfg.train[1]}, test "
        f"{cfg.test[0]}:{cfg.test[1]}; {cfg.outer_iters} outer iterations, K={cfg.inner_steps}, inner lr "
        f"{cfg.inner_lr}, outer lr {cfg.outer_lr}. Visual costs are learned from detector keypoints through the "
        f"learned dynamics; every test figure is measured on the true robot with ground-truth keypoints.\n\n{table}")
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
    write_json_atomic(run_dir / "metrics.json", metrics)
    return metrics


# --------------------------------------------------------------------------------------------- pipeline


@dataclass
class PipelineConfig:
    """Every stage of visual MBIRL with sensible defaults (``quick()`` for a tiny smoke run).

    Attributes:
        task, n_demos, demo_seed, horizon, noise: the demonstrations (``mbirl visual demos``).
        resolution: square image size.
        explore_n, explore_horizon, explore_seed: the exploration data set.
        n_keypoints, detector_width, detector_steps, detector_batch, saliency_weight: the detector.
        dynamics_hidden, dynamics_layers, dynamics_ensemble, dynamics_steps: the learned dynamics.
        methods, headline, train, test, outer_iters, inner_steps, inner_lr, outer_lr: visual and GT MBIRL.
        seed: detector, dynamics and cost initialisation.
    """

    task: str = "placing"
    n_demos: int = 6
    demo_seed: int = 0
    horizon: int = 10
    noise: float = 0.3
    resolution: int = 64
    explore_n: int = 800
    explore_horizon: int = 10
    explore_seed: int = 1
    n_keypoints: int = 16
    detector_width: int = 32
    detector_steps: int = 3000
    detector_batch: int = 32
    saliency_weight: float = 5.0
    dynamics_hidden: int = 256
    dynamics_layers: int = 3
    dynamics_ensemble: int = 1
    dynamics_steps: int = 2000
    methods: tuple[str, ...] = METHODS
    headline: str = "rbf"
    train: tuple[int, int] = (0, 3)
    test: tuple[int, int] = (3, 5)
    outer_iters: int = 100
    inner_steps: int = 1
    inner_lr: float = 1e-3
    outer_lr: float = 1e-2
    seed: int = 0
    extra: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def quick(cls, **overrides: Any) -> PipelineConfig:
        """A tiny setting for smoke tests (well under two minutes on two CPU cores)."""
        base: dict[str, Any] = {"explore_n": 40, "n_keypoints": 6, "detector_width": 16, "detector_steps": 150,
                                "detector_batch": 16, "dynamics_hidden": 64, "dynamics_layers": 2,
                                "dynamics_steps": 150, "methods": ("default", "weighted", "rbf", "abbeel"),
                                "outer_iters": 5}
        return cls(**{**base, **overrides})

    def to_json(self) -> dict[str, Any]:
        out = asdict(self)
        out["methods"], out["train"], out["test"] = list(self.methods), list(self.train), list(self.test)
        return out

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> PipelineConfig:
        names = {f.name for f in fields(cls)}
        kw = {k: v for k, v in data.items() if k in names}
        for key in ("methods", "train", "test"):
            if key in kw:
                kw[key] = tuple(kw[key])
        return cls(**kw)


STAGES = ("demos", "explore", "detector", "dynamics", "irl")


def run_pipeline(cfg: PipelineConfig, run_dir: str | Path, *, resume: bool = False, progress: bool = True
                 ) -> dict[str, Any]:
    """Run every stage into ``run_dir``; with ``resume``, finished stages are skipped and a stage cut short
    continues from its checkpoint. Returns (and writes) ``metrics.json``."""
    run_dir = Path(run_dir)
    if cfg.resolution < 8 or cfg.resolution % 2:
        raise InputError(f"resolution must be an even number >= 8, got {cfg.resolution}", field="resolution")
    unknown = [m for m in cfg.methods if m not in METHODS]
    if unknown or not cfg.methods or cfg.headline not in cfg.methods:
        raise InputError(f"methods {list(cfg.methods)} must be known ({', '.join(METHODS)}) and include the headline "
                         f"'{cfg.headline}'", field="costs")
    for name in ("n_demos", "explore_n", "detector_steps", "dynamics_steps", "n_keypoints"):
        if getattr(cfg, name) < 1:
            raise InputError(f"must be >= 1, got {getattr(cfg, name)}", field=name)
    if not (0 <= cfg.train[0] < cfg.train[1] <= cfg.n_demos and 0 <= cfg.test[0] < cfg.test[1] <= cfg.n_demos):
        raise InputError(f"train {cfg.train} / test {cfg.test} out of range for {cfg.n_demos} demonstrations",
                         field="split")
    config_path = run_dir / "config.json"
    if config_path.exists():
        if not resume:
            raise InputError("run directory already holds a pipeline; pass --resume to continue it or choose another "
                             "--run-dir", source=str(run_dir))
        _check_config_match(_read_json(config_path), cfg.to_json(), config_path, ignore=())
    run_dir.mkdir(parents=True, exist_ok=True)
    write_json_atomic(config_path, cfg.to_json())
    figures = run_dir / "figures"
    timings = _StageTimer(run_dir / "timings.json")
    data_dir = run_dir / "data"
    demos_path, explore_path = data_dir / "demos.npz", data_dir / "explore.npz"

    timings.start(ran=not demos_path.exists())
    if not demos_path.exists():
        make_visual_demos(demos_path, task=cfg.task, n=cfg.n_demos, seed=cfg.demo_seed, horizon=cfg.horizon,
                          noise=cfg.noise, resolution=cfg.resolution)
    _copy_figure(data_dir / "demos_frames.png", figures / "stage1_demos.png")
    timings.stop("demos")

    timings.start(ran=not explore_path.exists())
    if not explore_path.exists():
        make_exploration(explore_path, n=cfg.explore_n, horizon=cfg.explore_horizon, seed=cfg.explore_seed,
                         resolution=cfg.resolution, progress=progress)
    _copy_figure(data_dir / "explore.png", figures / "stage2_exploration.png")
    timings.stop("explore")
    exploration = load_exploration(explore_path)

    det_dir = run_dir / "detector"
    timings.start(ran=not (det_dir / "metrics.json").exists())
    if (det_dir / "metrics.json").exists() and (det_dir / "detector.json").exists():
        det_metrics = _read_json(det_dir / "metrics.json")
    else:
        det_metrics = run_detector_stage(
            DetectorStageConfig(data=str(explore_path), n_keypoints=cfg.n_keypoints, width=cfg.detector_width,
                                steps=cfg.detector_steps, batch_size=cfg.detector_batch,
                                saliency_weight=cfg.saliency_weight, seed=cfg.seed),
            det_dir, resume=True, progress=progress, data=exploration)
    _copy_figure(det_dir / "figures" / "keypoints.png", figures / "stage3_detector_keypoints.png")
    timings.stop("detector")

    dyn_dir = run_dir / "dynamics"
    timings.start(ran=not (dyn_dir / "metrics.json").exists())
    if (dyn_dir / "metrics.json").exists() and (dyn_dir / "model.json").exists():
        dyn_metrics = _read_json(dyn_dir / "metrics.json")
    else:
        dyn_metrics = run_dynamics_stage(
            DynamicsStageConfig(data=str(explore_path), detector=str(det_dir), hidden=cfg.dynamics_hidden,
                                layers=cfg.dynamics_layers, ensemble=cfg.dynamics_ensemble, steps=cfg.dynamics_steps,
                                seed=cfg.seed),
            dyn_dir, resume=True, progress=progress, data=exploration)
    _copy_figure(dyn_dir / "figures" / "rollouts.png", figures / "stage4_dynamics_rollouts.png")
    timings.stop("dynamics")

    irl_dir = run_dir / "irl"
    timings.start(ran=not (irl_dir / "metrics.json").exists())
    irl_metrics = run_visual_irl(
        VisualIRLConfig(demos=str(demos_path), detector=str(det_dir), dynamics=str(dyn_dir), methods=cfg.methods,
                        headline=cfg.headline, train=cfg.train, test=cfg.test, outer_iters=cfg.outer_iters,
                        inner_steps=cfg.inner_steps, inner_lr=cfg.inner_lr, outer_lr=cfg.outer_lr, seed=cfg.seed),
        irl_dir, resume=True, progress=progress)
    _copy_figure(irl_dir / "figures" / "visual_vs_gt.png", figures / "stage5_irl_visual_vs_gt.png")
    timings.stop("irl")

    metrics = {
        "detector_pixel_error": det_metrics["detector_pixel_error"],
        "dynamics_error_1step": dyn_metrics["dynamics_error_1step"],
        "dynamics_error_10step": dyn_metrics["dynamics_error_10step"],
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
    write_json_atomic(run_dir / "metrics.json", metrics)
    (run_dir / "summary.md").write_text(
        "# Visual MBIRL pipeline\n\n"
        f"* detector: mean pixel error of matched keypoints on held-out frames "
        f"{metrics['detector_pixel_error']:.2f} px ({cfg.resolution}x{cfg.resolution})\n"
        f"* dynamics: 1-step {metrics['dynamics_error_1step']:.2f} cm, open-loop {dyn_metrics['eval_horizon']}-step "
        f"{metrics['dynamics_error_10step']:.2f} cm (held-out trajectories)\n"
        f"* IRL ({irl_metrics['headline']}): visual {metrics['final_test_irl_loss']:.1f} vs ground truth "
        f"{metrics['gt_final_test_irl_loss']:.1f} test IRL loss on the robot\n\n" + irl_metrics["table"])
    return metrics


class _StageTimer:
    """Wall-clock and process CPU seconds per stage, kept in ``timings.json`` across resumed calls (a stage
    skipped on resume keeps the time it took when it ran)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        saved = _read_json(path) if path.is_file() else {}
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
