"""``mbirl visual ...``: MBIRL from visual demonstrations (rendering, detector, learned dynamics, IRL, pipeline).

Option defaults are the config dataclasses' (:mod:`mbirl.experiments.visual`); the commands that train take
``--config FILE.yaml`` with the config's nested keys (e.g. ``train: {steps: 500}`` for ``train-detector``),
which options given on the command line override.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from mbirl.algorithms.mbirl import MBIRLConfig
from mbirl.cli.options import DeviceOpt, build_config
from mbirl.dynamics.keypoint_mlp import DynamicsTrainConfig, KeypointMLPConfig
from mbirl.envs.render import DEFAULT_RESOLUTION, default_camera
from mbirl.experiments.visual import (
    DetectorStageConfig,
    DynamicsStageConfig,
    ExplorationConfig,
    IRLSettings,
    PipelineConfig,
    VisualDemosConfig,
    VisualIRLConfig,
    make_exploration,
    make_visual_demos,
    run_detector_stage,
    run_dynamics_stage,
    run_pipeline,
    run_visual_irl,
)
from mbirl.perception.detector import DetectorConfig
from mbirl.perception.train import DetectorTrainConfig
from mbirl.validation import check_output_path, config_to_dict, flatten_config

__all__ = ["visual_app"]

visual_app = typer.Typer(help="MBIRL from visual demonstrations: render, detect keypoints, learn dynamics, learn "
                              "costs.", no_args_is_help=True)

RunDirOpt = Annotated[Path, typer.Option(help="run directory for metrics, checkpoints and figures")]
ResumeOpt = Annotated[bool, typer.Option(help="continue the run in --run-dir from its last checkpoint")]
ProgressOpt = Annotated[bool, typer.Option(help="show a progress bar")]
SeedOpt = Annotated[int, typer.Option(help="random seed")]
ResolutionOpt = Annotated[int, typer.Option(help="square image size in pixels")]
StepsOpt = Annotated[int, typer.Option(help="gradient steps")]
DataOpt = Annotated[Path | None, typer.Option(help="exploration .npz (mbirl visual explore)")]


ConfigOpt = Annotated[Path | None, typer.Option(
    help="YAML configuration: the command's config fields, nested as its dataclass nests them (e.g. 'train: "
         "{steps: 500}'); options given on the command line take precedence")]


def _methods(costs: str) -> tuple[str, ...]:
    from mbirl.experiments.kuka_irl import METHODS

    return tuple(METHODS) if costs == "all" else tuple(c.strip() for c in costs.split(",") if c.strip())


def _split_text(split: tuple[int, int]) -> str:
    return f"{split[0]}:{split[1]}"


def _given(**values: Any) -> dict[str, Any]:
    """The options that have a value (an unset path may come from ``--config``)."""
    return {k: v for k, v in values.items() if v is not None}


def _fresh_output(out: Path) -> None:
    check_output_path(out, ".npz")


@visual_app.command("demos")
def demos(
    task: Annotated[str, typer.Option(help="placing or reaching")] = VisualDemosConfig.task,
    n: Annotated[int, typer.Option(help="number of demonstrations")] = VisualDemosConfig.n,
    seed: SeedOpt = VisualDemosConfig.seed,
    horizon: Annotated[int, typer.Option(help="time steps per demonstration (states, incl. the start)")] = (
        VisualDemosConfig.horizon),
    noise: Annotated[float, typer.Option(help="per-step noise on the desired path [cm]")] = VisualDemosConfig.noise,
    resolution: ResolutionOpt = DEFAULT_RESOLUTION,
    out: Annotated[Path, typer.Option(help="output .npz (plots are written beside it)")] = Path("visual_demos.npz"),
) -> None:
    """Rendered demonstrations: keypoint demos with images (T, H, W, 3), depth and the camera in the metadata."""
    _fresh_output(out)
    cfg = VisualDemosConfig(task=task, n=n, seed=seed, horizon=horizon, noise=noise)
    make_visual_demos(out, cfg, camera=default_camera(resolution))
    typer.echo(f"wrote {n} rendered {task} demonstrations ({resolution}x{resolution}) to {out} "
               f"(plots: {out.with_suffix('.png')}, {out.with_name(out.stem + '_frames.png')})")


@visual_app.command("explore")
def explore(
    n: Annotated[int, typer.Option(help="number of random-motion trajectories")] = ExplorationConfig.n,
    horizon: Annotated[int, typer.Option(help="actions per trajectory")] = ExplorationConfig.horizon,
    seed: SeedOpt = ExplorationConfig.seed,
    resolution: ResolutionOpt = DEFAULT_RESOLUTION,
    out: Annotated[Path, typer.Option(help="output .npz (a plot is written beside it)")] = Path("explore.npz"),
    progress: ProgressOpt = True,
) -> None:
    """Exploration data: random joint motions (images, depth, joint states, actions; ground-truth keypoints)."""
    _fresh_output(out)
    cfg = ExplorationConfig(n=n, horizon=horizon, seed=seed)
    data = make_exploration(out, cfg, camera=default_camera(resolution), progress=progress)
    typer.echo(f"wrote {len(data)} trajectories x {horizon + 1} frames to {out} (plot: {out.with_suffix('.png')})")


@visual_app.command("train-detector")
def train_detector(
    ctx: typer.Context,
    data: DataOpt = None,
    keypoints: Annotated[int, typer.Option(help="number of learned keypoints")] = DetectorConfig.n_keypoints,
    width: Annotated[int, typer.Option(help="convolution channels")] = DetectorConfig.width,
    steps: StepsOpt = DetectorTrainConfig.steps,
    batch_size: Annotated[int, typer.Option(help="images per step")] = DetectorTrainConfig.batch_size,
    lr: Annotated[float, typer.Option(help="Adam learning rate")] = DetectorTrainConfig.lr,
    saliency_weight: Annotated[float, typer.Option(help="extra loss weight of pixels unlike the background")] = (
        DetectorTrainConfig.saliency_weight),
    seed: SeedOpt = DetectorStageConfig.seed,
    device: DeviceOpt = DetectorStageConfig.device,
    run_dir: RunDirOpt = Path("runs/detector"),
    resume: ResumeOpt = False,
    progress: ProgressOpt = True,
    config: ConfigOpt = None,
) -> None:
    """Train the spatial-softmax keypoint autoencoder; report the matched pixel error on held-out frames."""
    cfg = build_config(ctx, DetectorStageConfig, _given(
        data=data, keypoints=keypoints, width=width, steps=steps, batch_size=batch_size, lr=lr,
        saliency_weight=saliency_weight, seed=seed, device=device), config, fields={
        "keypoints": "model.n_keypoints", "width": "model.width", "steps": "train.steps",
        "batch_size": "train.batch_size", "lr": "train.lr", "saliency_weight": "train.saliency_weight"})
    m = run_detector_stage(cfg, run_dir, resume=resume, progress=progress)
    per_kp = [round(e, 2) for e in m["detector_pixel_error_per_keypoint"]]
    typer.echo(f"detector: matched keypoints {m['matched_indices']}, held-out pixel error "
               f"{m['detector_pixel_error']:.2f} px (per keypoint {per_kp}), "
               f"3-D lifting error {m['lift_error_cm']:.2f} cm; outputs in {run_dir}")


@visual_app.command("train-dynamics")
def train_dynamics(
    ctx: typer.Context,
    data: DataOpt = None,
    detector: Annotated[Path | None, typer.Option(help="trained detector directory (mbirl visual train-detector)")
                        ] = None,
    hidden: Annotated[int, typer.Option(help="hidden units per layer")] = KeypointMLPConfig.hidden,
    layers: Annotated[int, typer.Option(help="hidden layers")] = KeypointMLPConfig.layers,
    ensemble: Annotated[int, typer.Option(help="ensemble members")] = KeypointMLPConfig.ensemble,
    steps: StepsOpt = DynamicsTrainConfig.steps,
    lr: Annotated[float, typer.Option(help="AdamW learning rate")] = DynamicsTrainConfig.lr,
    seed: SeedOpt = DynamicsStageConfig.seed,
    device: DeviceOpt = DynamicsStageConfig.device,
    run_dir: RunDirOpt = Path("runs/dynamics"),
    resume: ResumeOpt = False,
    progress: ProgressOpt = True,
    config: ConfigOpt = None,
) -> None:
    """Train the keypoint dynamics MLP on detector keypoints; report 1-step and open-loop held-out errors."""
    cfg = build_config(ctx, DynamicsStageConfig, _given(
        data=data, detector=detector, hidden=hidden, layers=layers, ensemble=ensemble, steps=steps, lr=lr, seed=seed,
        device=device),
        config, fields={"hidden": "model.hidden", "layers": "model.layers", "ensemble": "model.ensemble",
                        "steps": "train.steps", "lr": "train.lr"})
    m = run_dynamics_stage(cfg, run_dir, resume=resume, progress=progress)
    typer.echo(f"dynamics: held-out 1-step {m['dynamics_error_1step']:.2f} cm, open-loop {m['eval_horizon']}-step "
               f"{m['dynamics_error_open_loop']:.2f} cm; outputs in {run_dir}")


@visual_app.command("irl")
def irl(
    ctx: typer.Context,
    demos: Annotated[Path | None, typer.Option(help="visual demonstrations (mbirl visual demos)")] = None,
    detector: Annotated[Path | None, typer.Option(help="trained detector directory")] = None,
    dynamics: Annotated[Path | None, typer.Option(help="trained dynamics directory")] = None,
    costs: Annotated[str, typer.Option(help="comma-separated methods, or 'all'")] = "all",
    headline: Annotated[str, typer.Option(help="method reported as final_test_irl_loss in metrics.json")] = (
        IRLSettings.headline),
    train: Annotated[str, typer.Option(help="training demo range START:STOP")] = _split_text(IRLSettings.train),
    test: Annotated[str, typer.Option(help="test demo range START:STOP")] = _split_text(IRLSettings.test),
    outer_iters: Annotated[int, typer.Option(help="outer iterations")] = IRLSettings.outer_iters,
    inner_steps: Annotated[int, typer.Option(help="inner gradient steps K")] = MBIRLConfig.inner_steps,
    inner_lr: Annotated[float, typer.Option(help="inner (action) learning rate")] = MBIRLConfig.inner_lr,
    outer_lr: Annotated[float, typer.Option(help="outer (cost) Adam learning rate")] = MBIRLConfig.outer_lr,
    seed: SeedOpt = VisualIRLConfig.seed,
    device: DeviceOpt = VisualIRLConfig.device,
    run_dir: RunDirOpt = Path("runs/visual_irl"),
    resume: ResumeOpt = False,
    progress: ProgressOpt = True,
    config: ConfigOpt = None,
) -> None:
    """Visual MBIRL (detector keypoints, learned model) and the ground-truth pipeline on the same demos."""
    from mbirl.experiments.kuka_irl import parse_split

    cfg = build_config(ctx, VisualIRLConfig, _given(
        demos=demos, detector=detector, dynamics=dynamics, costs=_methods(costs), headline=headline,
        train=parse_split(train, "train"), test=parse_split(test, "test"), outer_iters=outer_iters,
        inner_steps=inner_steps, inner_lr=inner_lr, outer_lr=outer_lr, seed=seed, device=device), config, fields={
        "costs": "methods", "inner_steps": "trainer.inner_steps", "inner_lr": "trainer.inner_lr",
        "outer_lr": "trainer.outer_lr"})
    m = run_visual_irl(cfg, run_dir, resume=resume, progress=progress)
    typer.echo(m["table"])
    typer.echo(f"figures and summary.md in {run_dir}")


def _pipeline_help() -> tuple[str, str]:
    full, quick = PipelineConfig(), PipelineConfig.quick()
    return (f"comma-separated methods, or 'all' (default: {','.join(full.irl.methods)}; --quick: "
            f"{','.join(quick.irl.methods)})",
            f"outer iterations (default {full.irl.outer_iters}; --quick: {quick.irl.outer_iters})")


_COSTS_HELP, _OUTER_HELP = _pipeline_help()


@visual_app.command("pipeline")
def pipeline(
    ctx: typer.Context,
    run_dir: RunDirOpt = Path("runs/visual"),
    quick: Annotated[bool, typer.Option(help="tiny settings for a smoke run (< 2 minutes)")] = False,
    resolution: ResolutionOpt = PipelineConfig.resolution,
    costs: Annotated[str | None, typer.Option(help=_COSTS_HELP)] = None,
    outer_iters: Annotated[int | None, typer.Option(help=_OUTER_HELP)] = None,
    seed: SeedOpt = PipelineConfig.seed,
    device: DeviceOpt = PipelineConfig.device,
    resume: ResumeOpt = False,
    progress: ProgressOpt = True,
    config: ConfigOpt = None,
) -> None:
    """All stages in one run directory: demos, exploration, detector, dynamics, visual + ground-truth MBIRL.

    Precedence: the defaults (or --quick's) < --config < options given on the command line.
    """
    # --quick's settings enter as defaults: a --config file overrides them, explicit options override both.
    values: dict[str, Any] = flatten_config(config_to_dict(PipelineConfig.quick())) if quick else {}
    values.update(_given(resolution=resolution, seed=seed, costs=None if costs is None else _methods(costs),
                         outer_iters=outer_iters, device=device))
    cfg = build_config(ctx, PipelineConfig, values, config,
                       fields={"costs": "irl.methods", "outer_iters": "irl.outer_iters"})
    m = run_pipeline(cfg, run_dir, resume=resume, progress=progress)
    typer.echo((run_dir / "summary.md").read_text())
    typer.echo(f"detector {m['detector_pixel_error']:.2f} px; dynamics 1-step {m['dynamics_error_1step']:.2f} cm, "
               f"{m['dynamics_eval_horizon']}-step {m['dynamics_error_open_loop']:.2f} cm; {m['headline']}: test IRL "
               f"loss visual {m['final_test_irl_loss']:.1f} vs GT {m['gt_final_test_irl_loss']:.1f}; outputs in "
               f"{run_dir}")
