"""``mbirl mbirl train|compare`` and ``mbirl quickstart``: bi-level cost learning on keypoint demos.

Option defaults are the config dataclasses' (:class:`~mbirl.experiments.kuka_irl.MBIRLRunConfig`, the learner's
:class:`~mbirl.algorithms.MBIRLConfig`); ``--config`` reads the same fields from YAML (the learner's nested under
``trainer:``), and options given on the command line take precedence.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from mbirl.algorithms.mbirl import MBIRLConfig
from mbirl.cli.kuka import LinksOpt, RobotOpt, UrdfOpt
from mbirl.cli.options import DeviceOpt, build_config
from mbirl.costs import COSTS
from mbirl.errors import InputError
from mbirl.experiments.kuka_irl import BASELINES, MBIRLRunConfig, parse_split

__all__ = ["mbirl_app", "quickstart"]

mbirl_app = typer.Typer(help="MBIRL: learn costs by differentiating through gradient-based MPC.",
                        no_args_is_help=True)


def _range(split: tuple[int, int]) -> str:
    return f"{split[0]}:{split[1]}"


DEFAULT_TRAIN, DEFAULT_TEST = _range(MBIRLRunConfig.train), _range(MBIRLRunConfig.test)

DemosOpt = Annotated[Path | None, typer.Option(help="demonstrations (.npz, or an original MBIRL .pt)")]
CostOpt = Annotated[str, typer.Option(help=f"{'|'.join(COSTS.names)}, or the baseline {'|'.join(BASELINES)}")]
TrainOpt = Annotated[str, typer.Option(help="training demo range START:STOP")]
TestOpt = Annotated[str, typer.Option(help="test demo range START:STOP")]
OuterOpt = Annotated[int, typer.Option(help="outer iterations (passes over the training demos)")]
InnerOpt = Annotated[int, typer.Option(help="inner gradient steps K")]
InnerLrOpt = Annotated[float, typer.Option(help="inner (action) learning rate")]
OuterLrOpt = Annotated[float, typer.Option(help="outer (cost) Adam learning rate")]
InnerOptimOpt = Annotated[str, typer.Option(
    "--inner-solver", "--inner-optimizer",
    help="inner solver: sgd, adam or gauss-newton (Levenberg-Marquardt over the action sequence)")]
InnerTolOpt = Annotated[float | None, typer.Option(
    help="stop the inner loop once every demo's inner gradient norm is below this (default: always K steps)")]
ActionRegOpt = Annotated[float, typer.Option(help="weight of the action-magnitude term in the inner objective")]
SmoothRegOpt = Annotated[float, typer.Option(help="weight of the action-smoothness term in the inner objective")]
UpdateOpt = Annotated[str, typer.Option(help="per_demo (as the original) or batched cost updates")]
GradModeOpt = Annotated[str, typer.Option(
    help="gradient through the inner loop: unrolled, truncated or implicit (implicit function theorem; needs a "
         "converged inner solver, e.g. --inner-solver gauss-newton --inner-tol)")]
ClipOpt = Annotated[float | None, typer.Option(help="clip the cost gradient norm (reported in metrics)")]
SeedOpt = Annotated[int, typer.Option(help="random seed")]
CheckpointOpt = Annotated[int, typer.Option(help="outer iterations between checkpoints")]
RunDirOpt = Annotated[Path, typer.Option(help="run directory for metrics, checkpoints and figures")]
ResumeOpt = Annotated[bool, typer.Option(help="continue the run in --run-dir from its last checkpoint")]
ProgressOpt = Annotated[bool, typer.Option(help="show a progress bar")]
RbfOriginalOpt = Annotated[bool, typer.Option(
    "--rbf-original", help="the rbf cost in the official code's formulation (sum over time, integer centres)")]
ConfigOpt = Annotated[Path | None, typer.Option(
    help="YAML run configuration: MBIRLRunConfig fields, the learner's under 'trainer:' (e.g. "
         "configs/placing_original.yaml, configs/placing_converged.yaml); options given on the command line take "
         "precedence")]

# CLI option names that differ from (dotted) MBIRLRunConfig field names.
_FIELDS = {"cost": "method", "inner_steps": "trainer.inner_steps", "inner_lr": "trainer.inner_lr",
           "outer_lr": "trainer.outer_lr", "inner_optimizer": "trainer.inner_optimizer", "update": "trainer.update",
           "grad_mode": "trainer.grad_mode", "grad_clip": "trainer.grad_clip", "inner_tol": "trainer.inner_tol",
           "action_reg": "trainer.action_reg", "smooth_reg": "trainer.smooth_reg"}
_NOT_FIELDS = ("run_dir", "resume", "progress", "config", "costs")


def _run_config(ctx: typer.Context, values: dict[str, Any], config: Path | None) -> MBIRLRunConfig:
    """Defaults < the YAML file < options given explicitly on the command line; demos are required."""
    values = {k: v for k, v in values.items() if k not in _NOT_FIELDS}
    values["demos"] = "" if values["demos"] is None else str(values["demos"])
    values["train"], values["test"] = parse_split(values["train"], "train"), parse_split(values["test"], "test")
    cfg = build_config(ctx, MBIRLRunConfig, values, config, fields=_FIELDS)
    if not cfg.demos:
        raise InputError("no demonstrations: pass --demos FILE or set 'demos' in --config", field="demos")
    return cfg


@mbirl_app.command("train")
def train(
    ctx: typer.Context,
    demos: DemosOpt = None,
    cost: CostOpt = MBIRLRunConfig.method,
    robot: RobotOpt = MBIRLRunConfig.robot,
    urdf: UrdfOpt = MBIRLRunConfig.urdf,
    keypoint_links: LinksOpt = MBIRLRunConfig.keypoint_links,
    train: TrainOpt = DEFAULT_TRAIN,
    test: TestOpt = DEFAULT_TEST,
    outer_iters: OuterOpt = MBIRLRunConfig.outer_iters,
    inner_steps: InnerOpt = MBIRLConfig.inner_steps,
    inner_lr: InnerLrOpt = MBIRLConfig.inner_lr,
    outer_lr: OuterLrOpt = MBIRLConfig.outer_lr,
    inner_optimizer: InnerOptimOpt = MBIRLConfig.inner_optimizer,
    inner_tol: InnerTolOpt = MBIRLConfig.inner_tol,
    action_reg: ActionRegOpt = MBIRLConfig.action_reg,
    smooth_reg: SmoothRegOpt = MBIRLConfig.smooth_reg,
    update: UpdateOpt = MBIRLConfig.update,
    grad_mode: GradModeOpt = MBIRLConfig.grad_mode,
    grad_clip: ClipOpt = MBIRLConfig.grad_clip,
    rbf_original: RbfOriginalOpt = MBIRLRunConfig.rbf_original,
    seed: SeedOpt = MBIRLRunConfig.seed,
    checkpoint_every: CheckpointOpt = MBIRLRunConfig.checkpoint_every,
    device: DeviceOpt = MBIRLRunConfig.device,
    run_dir: RunDirOpt = Path("runs/mbirl"),
    resume: ResumeOpt = False,
    progress: ProgressOpt = True,
    config: ConfigOpt = None,
) -> None:
    """Learn one cost; writes RUN_DIR/metrics.json, metrics.jsonl, tb/, checkpoints/ and figures/."""
    from mbirl.experiments.kuka_irl import run_mbirl

    cfg = _run_config(ctx, dict(ctx.params), config)
    m = run_mbirl(cfg, run_dir, resume=resume, progress=progress)
    typer.echo(f"{cfg.method}: test IRL loss {m['irl_loss_test'][0]:.1f} -> {m['final_test_irl_loss']:.1f}, "
               f"relative goal distance {m['test_relative_goal_distance']:.3f}, "
               f"{m['seconds_per_outer_iter'] * 1000:.1f} ms / outer iteration; outputs in {run_dir}")


@mbirl_app.command("compare")
def compare(
    ctx: typer.Context,
    demos: DemosOpt = None,
    costs: Annotated[str, typer.Option(help="comma-separated methods, or 'all'")] = "all",
    robot: RobotOpt = MBIRLRunConfig.robot,
    urdf: UrdfOpt = MBIRLRunConfig.urdf,
    keypoint_links: LinksOpt = MBIRLRunConfig.keypoint_links,
    train: TrainOpt = DEFAULT_TRAIN,
    test: TestOpt = DEFAULT_TEST,
    outer_iters: OuterOpt = MBIRLRunConfig.outer_iters,
    inner_steps: InnerOpt = MBIRLConfig.inner_steps,
    inner_lr: InnerLrOpt = MBIRLConfig.inner_lr,
    outer_lr: OuterLrOpt = MBIRLConfig.outer_lr,
    inner_optimizer: InnerOptimOpt = MBIRLConfig.inner_optimizer,
    inner_tol: InnerTolOpt = MBIRLConfig.inner_tol,
    action_reg: ActionRegOpt = MBIRLConfig.action_reg,
    smooth_reg: SmoothRegOpt = MBIRLConfig.smooth_reg,
    update: UpdateOpt = MBIRLConfig.update,
    grad_mode: GradModeOpt = MBIRLConfig.grad_mode,
    rbf_original: RbfOriginalOpt = MBIRLRunConfig.rbf_original,
    seed: SeedOpt = MBIRLRunConfig.seed,
    device: DeviceOpt = MBIRLRunConfig.device,
    run_dir: RunDirOpt = Path("runs/compare"),
    resume: ResumeOpt = False,
    progress: ProgressOpt = True,
    config: ConfigOpt = None,
) -> None:
    """Every cost and baseline on one demo set: one figure per kind, metrics.json and summary.md."""
    from mbirl.experiments.kuka_irl import METHODS, run_compare

    methods = list(METHODS) if costs == "all" else [c.strip() for c in costs.split(",") if c.strip()]
    cfg = _run_config(ctx, dict(ctx.params), config)
    out = run_compare(cfg, methods, run_dir, resume=resume, progress=progress)
    typer.echo(out["table"])
    typer.echo(f"figures, metrics.json and summary.md in {run_dir}")


def quickstart(
    ctx: typer.Context,
    run_dir: RunDirOpt = Path("runs/quickstart"),
    seed: SeedOpt = MBIRLRunConfig.seed,
    outer_iters: OuterOpt = MBIRLRunConfig.outer_iters,
    device: DeviceOpt = MBIRLRunConfig.device,
    progress: ProgressOpt = True,
    config: ConfigOpt = None,
) -> None:
    """Placing demos + every cost and baseline with the original settings (3 train / 2 test, K=1)."""
    from mbirl.data.demos import save_keypoint_demos
    from mbirl.envs.kuka import DEMO_COUNT, DEMO_TASK, generate_demos, robot_from_options
    from mbirl.experiments.kuka_irl import METHODS, run_compare
    from mbirl.reporting.plots import plot_demos

    demo_path = run_dir / "demos_placing.npz"
    cfg = build_config(ctx, MBIRLRunConfig, {"demos": str(demo_path), "seed": seed, "outer_iters": outer_iters,
                                             "device": device}, config)
    if cfg.demos != str(demo_path):
        raise InputError("the quickstart makes its own demonstrations; use `mbirl mbirl compare --demos` for a file",
                         source=str(config), field="demos")
    if cfg.outer_iters < 1:
        raise InputError(f"must be >= 1, got {cfg.outer_iters}", field="outer_iters")
    robot = robot_from_options(cfg.robot, cfg.urdf, cfg.keypoint_links)
    trajs = generate_demos(DEMO_TASK, DEMO_COUNT, seed=cfg.seed, robot=robot)
    save_keypoint_demos(demo_path, trajs, {"task": DEMO_TASK, "seed": cfg.seed, "robot": robot.describe(),
                                           "command": f"mbirl kuka demos --task {DEMO_TASK} --n {DEMO_COUNT} "
                                                      f"--seed {cfg.seed}"})
    plot_demos(trajs, run_dir / "demos_placing.png",
               title=f"{DEMO_TASK}: {DEMO_COUNT} demonstrations (seed {cfg.seed})")
    out = run_compare(cfg, list(METHODS), run_dir, resume=True, progress=progress)
    typer.echo(out["table"])
    typer.echo(f"figures: {run_dir}/learning_curves.png, predictions.png, weights.png; table: {run_dir}/summary.md")
