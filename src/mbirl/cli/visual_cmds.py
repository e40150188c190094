"""``mbirl visual ...``: MBIRL from visual demonstrations (rendering, detector, learned dynamics, IRL, pipeline)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from mbirl.errors import InputError

__all__ = ["visual_app"]

visual_app = typer.Typer(help="MBIRL from visual demonstrations: render, detect keypoints, learn dynamics, learn "
                              "costs.", no_args_is_help=True)

RunDirOpt = Annotated[Path, typer.Option(help="run directory for metrics, checkpoints and figures")]
ResumeOpt = Annotated[bool, typer.Option(help="continue the run in --run-dir from its last checkpoint")]
ProgressOpt = Annotated[bool, typer.Option(help="show a progress bar")]
SeedOpt = Annotated[int, typer.Option(help="random seed")]
ResolutionOpt = Annotated[int, typer.Option(help="square image size in pixels")]


def _methods(costs: str) -> tuple[str, ...]:
    from mbirl.experiments.kuka_irl import METHODS

    return tuple(METHODS) if costs == "all" else tuple(c.strip() for c in costs.split(",") if c.strip())


def _fresh_output(out: Path) -> None:
    if out.suffix != ".npz":
        raise InputError(f"output must end in .npz, got '{out}'", field="out")


@visual_app.command("demos")
def demos(
    task: Annotated[str, typer.Option(help="placing or reaching")] = "placing",
    n: Annotated[int, typer.Option(help="number of demonstrations")] = 6,
    seed: SeedOpt = 0,
    horizon: Annotated[int, typer.Option(help="time steps per demonstration (states, incl. the start)")] = 10,
    noise: Annotated[float, typer.Option(help="per-step noise on the desired path [cm]")] = 0.3,
    resolution: ResolutionOpt = 64,
    out: Annotated[Path, typer.Option(help="output .npz (plots are written beside it)")] = Path("visual_demos.npz"),
) -> None:
    """Rendered demonstrations: keypoint demos with images (T, H, W, 3), depth and the camera in the metadata."""
    from mbirl.experiments.visual import make_visual_demos

    _fresh_output(out)
    if noise < 0:
        raise InputError(f"must be >= 0, got {noise}", field="noise")
    make_visual_demos(out, task=task, n=n, seed=seed, horizon=horizon, noise=noise, resolution=resolution)
    typer.echo(f"wrote {n} rendered {task} demonstrations ({resolution}x{resolution}) to {out} "
               f"(plots: {out.with_suffix('.png')}, {out.with_name(out.stem + '_frames.png')})")


@visual_app.command("explore")
def explore(
    n: Annotated[int, typer.Option(help="number of random-motion trajectories")] = 800,
    horizon: Annotated[int, typer.Option(help="actions per trajectory")] = 10,
    seed: SeedOpt = 1,
    resolution: ResolutionOpt = 64,
    out: Annotated[Path, typer.Option(help="output .npz (a plot is written beside it)")] = Path("explore.npz"),
    progress: ProgressOpt = True,
) -> None:
    """Exploration data: random joint motions (images, depth, joint states, actions; ground-truth keypoints)."""
    from mbirl.experiments.visual import make_exploration

    _fresh_output(out)
    data = make_exploration(out, n=n, horizon=horizon, seed=seed, resolution=resolution, progress=progress)
    typer.echo(f"wrote {len(data)} trajectories x {horizon + 1} frames to {out} (plot: {out.with_suffix('.png')})")


@visual_app.command("train-detector")
def train_detector(
    data: Annotated[Path, typer.Option(help="exploration .npz (mbirl visual explore)")],
    keypoints: Annotated[int, typer.Option(help="number of learned keypoints")] = 16,
    width: Annotated[int, typer.Option(help="convolution channels")] = 32,
    steps: Annotated[int, typer.Option(help="gradient steps")] = 3000,
    batch_size: Annotated[int, typer.Option(help="images per step")] = 32,
    lr: Annotated[float, typer.Option(help="Adam learning rate")] = 2e-3,
    saliency_weight: Annotated[float, typer.Option(help="extra loss weight of pixels unlike the background")] = 5.0,
    seed: SeedOpt = 0,
    run_dir: RunDirOpt = Path("runs/detector"),
    resume: ResumeOpt = False,
    progress: ProgressOpt = True,
) -> None:
    """Train the spatial-softmax keypoint autoencoder; report the matched pixel error on held-out frames."""
    from mbirl.experiments.visual import DetectorStageConfig, run_detector_stage

    cfg = DetectorStageConfig(data=str(data), n_keypoints=keypoints, width=width, steps=steps, batch_size=batch_size,
                              lr=lr, saliency_weight=saliency_weight, seed=seed)
    m = run_detector_stage(cfg, run_dir, resume=resume, progress=progress)
    per_kp = [round(e, 2) for e in m["detector_pixel_error_per_keypoint"]]
    typer.echo(f"detector: matched keypoints {m['matched_indices']}, held-out pixel error "
               f"{m['detector_pixel_error']:.2f} px (per keypoint {per_kp}), "
               f"3-D lifting error {m['lift_error_cm']:.2f} cm; outputs in {run_dir}")


@visual_app.command("train-dynamics")
def train_dynamics(
    data: Annotated[Path, typer.Option(help="exploration .npz (mbirl visual explore)")],
    detector: Annotated[Path, typer.Option(help="trained detector directory (mbirl visual train-detector)")],
    hidden: Annotated[int, typer.Option(help="hidden units per layer")] = 256,
    layers: Annotated[int, typer.Option(help="hidden layers")] = 3,
    ensemble: Annotated[int, typer.Option(help="ensemble members")] = 1,
    steps: Annotated[int, typer.Option(help="gradient steps")] = 2000,
    lr: Annotated[float, typer.Option(help="AdamW learning rate")] = 2e-3,
    seed: SeedOpt = 0,
    run_dir: RunDirOpt = Path("runs/dynamics"),
    resume: ResumeOpt = False,
    progress: ProgressOpt = True,
) -> None:
    """Train the keypoint dynamics MLP on detector keypoints; report 1-step and 10-step held-out errors."""
    from mbirl.experiments.visual import DynamicsStageConfig, run_dynamics_stage

    cfg = DynamicsStageConfig(data=str(data), detector=str(detector), hidden=hidden, layers=layers, ensemble=ensemble,
                              steps=steps, lr=lr, seed=seed)
    m = run_dynamics_stage(cfg, run_dir, resume=resume, progress=progress)
    typer.echo(f"dynamics: held-out 1-step {m['dynamics_error_1step']:.2f} cm, open-loop {m['eval_horizon']}-step "
               f"{m['dynamics_error_10step']:.2f} cm; outputs in {run_dir}")


@visual_app.command("irl")
def irl(
    demos: Annotated[Path, typer.Option(help="visual demonstrations (mbirl visual demos)")],
    detector: Annotated[Path, typer.Option(help="trained detector directory")],
    dynamics: Annotated[Path, typer.Option(help="trained dynamics directory")],
    costs: Annotated[str, typer.Option(help="comma-separated methods, or 'all'")] = "all",
    headline: Annotated[str, typer.Option(help="method reported as final_test_irl_loss in metrics.json")] = "rbf",
    train: Annotated[str, typer.Option(help="training demo range START:STOP")] = "0:3",
    test: Annotated[str, typer.Option(help="test demo range START:STOP")] = "3:5",
    outer_iters: Annotated[int, typer.Option(help="outer iterations")] = 100,
    inner_steps: Annotated[int, typer.Option(help="inner gradient steps K")] = 1,
    inner_lr: Annotated[float, typer.Option(help="inner (action) learning rate")] = 1e-3,
    outer_lr: Annotated[float, typer.Option(help="outer (cost) Adam learning rate")] = 1e-2,
    seed: SeedOpt = 0,
    run_dir: RunDirOpt = Path("runs/visual_irl"),
    resume: ResumeOpt = False,
    progress: ProgressOpt = True,
) -> None:
    """Visual MBIRL (detector keypoints, learned model) and the ground-truth pipeline on the same demos."""
    from mbirl.experiments.kuka_irl import parse_split
    from mbirl.experiments.visual import VisualIRLConfig, run_visual_irl

    cfg = VisualIRLConfig(demos=str(demos), detector=str(detector), dynamics=str(dynamics), methods=_methods(costs),
                          headline=headline, train=parse_split(train, "train"), test=parse_split(test, "test"),
                          outer_iters=outer_iters, inner_steps=inner_steps, inner_lr=inner_lr, outer_lr=outer_lr,
                          seed=seed)
    m = run_visual_irl(cfg, run_dir, resume=resume, progress=progress)
    typer.echo(m["table"])
    typer.echo(f"figures and summary.md in {run_dir}")


@visual_app.command("pipeline")
def pipeline(
    run_dir: RunDirOpt = Path("runs/visual"),
    quick: Annotated[bool, typer.Option(help="tiny settings for a smoke run (< 2 minutes)")] = False,
    resolution: ResolutionOpt = 64,
    costs: Annotated[str | None, typer.Option(help="comma-separated methods, or 'all' (default: all; quick: "
                                                     "default,weighted,rbf,abbeel)")] = None,
    outer_iters: Annotated[int | None, typer.Option(help="outer iterations (default 100; quick 5)")] = None,
    seed: SeedOpt = 0,
    resume: ResumeOpt = False,
    progress: ProgressOpt = True,
) -> None:
    """All stages in one run directory: demos, exploration, detector, dynamics, visual + ground-truth MBIRL."""
    from mbirl.experiments.visual import PipelineConfig, run_pipeline

    overrides: dict[str, object] = {"resolution": resolution, "seed": seed}
    if costs is not None:
        overrides["methods"] = _methods(costs)
    if outer_iters is not None:
        overrides["outer_iters"] = outer_iters
    cfg = PipelineConfig.quick(**overrides) if quick else PipelineConfig(**overrides)  # type: ignore[arg-type]
    m = run_pipeline(cfg, run_dir, resume=resume, progress=progress)
    typer.echo((run_dir / "summary.md").read_text())
    typer.echo(f"detector {m['detector_pixel_error']:.2f} px; dynamics 1-step {m['dynamics_error_1step']:.2f} cm, "
               f"10-step {m['dynamics_error_10step']:.2f} cm; {m['headline']}: test IRL loss visual "
               f"{m['final_test_irl_loss']:.1f} vs GT {m['gt_final_test_irl_loss']:.1f}; outputs in {run_dir}")
