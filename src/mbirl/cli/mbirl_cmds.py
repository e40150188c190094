"""``mbirl mbirl train|compare`` and ``mbirl quickstart``: bi-level cost learning on keypoint demos."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from mbirl.errors import InputError
from mbirl.experiments.kuka_irl import MBIRLRunConfig, parse_split

__all__ = ["mbirl_app", "quickstart"]

mbirl_app = typer.Typer(help="MBIRL: learn costs by differentiating through gradient-based MPC.",
                        no_args_is_help=True)

DemosOpt = Annotated[Path | None, typer.Option(help="demonstrations (.npz, or an original MBIRL .pt)")]
UrdfOpt = Annotated[str | None, typer.Option(help="robot URDF (default: PyBullet's KUKA iiwa + held object)")]
LinksOpt = Annotated[str | None, typer.Option(help="comma-separated keypoint link names of --urdf")]
TrainOpt = Annotated[str, typer.Option(help="training demo range START:STOP")]
TestOpt = Annotated[str, typer.Option(help="test demo range START:STOP")]
OuterOpt = Annotated[int, typer.Option(help="outer iterations (passes over the training demos)")]
InnerOpt = Annotated[int, typer.Option(help="inner gradient steps K")]
InnerLrOpt = Annotated[float, typer.Option(help="inner (action) learning rate")]
OuterLrOpt = Annotated[float, typer.Option(help="outer (cost) Adam learning rate")]
InnerOptimOpt = Annotated[str, typer.Option(help="inner optimiser: sgd or adam")]
UpdateOpt = Annotated[str, typer.Option(help="per_demo (as the original) or batched cost updates")]
GradModeOpt = Annotated[str, typer.Option(help="gradient through the inner loop: unrolled or truncated")]
ClipOpt = Annotated[float | None, typer.Option(help="clip the cost gradient norm (reported in metrics)")]
SeedOpt = Annotated[int, typer.Option(help="random seed")]
RunDirOpt = Annotated[Path, typer.Option(help="run directory for metrics, checkpoints and figures")]
ResumeOpt = Annotated[bool, typer.Option(help="continue the run in --run-dir from its last checkpoint")]
ProgressOpt = Annotated[bool, typer.Option(help="show a progress bar")]
RbfOriginalOpt = Annotated[bool, typer.Option(
    "--rbf-original", help="the rbf cost in the official code's formulation (sum over time, integer centres)")]


ConfigOpt = Annotated[Path | None, typer.Option(
    help="YAML run configuration (keys: MBIRLRunConfig fields, e.g. configs/placing.yaml); options given on "
         "the command line take precedence")]

# CLI option names that differ from MBIRLRunConfig field names.
_FIELD_OF = {"cost": "method"}


def _merge_config(ctx: typer.Context, cfg: MBIRLRunConfig, config: Path | None) -> MBIRLRunConfig:
    """Defaults < the YAML file < options given explicitly on the command line."""
    from dataclasses import replace

    from mbirl.validation import load_config

    if config is None:
        return cfg
    overrides = load_config(config, MBIRLRunConfig, exclude=("extra",))
    explicit = {_FIELD_OF.get(name, name) for name in ctx.params
                if getattr(ctx.get_parameter_source(name), "name", None) == "COMMANDLINE"}
    return replace(cfg, **{k: v for k, v in overrides.items() if k not in explicit})


def _config(demos: Path | None, method: str, urdf: str | None, keypoint_links: str | None, train: str, test: str,
            outer_iters: int, inner_steps: int, inner_lr: float, outer_lr: float, inner_optimizer: str, update: str,
            grad_mode: str, grad_clip: float | None, seed: int, rbf_original: bool = False) -> MBIRLRunConfig:

    return MBIRLRunConfig(
        demos="" if demos is None else str(demos), method=method, urdf=urdf, keypoint_links=keypoint_links,
        train=parse_split(train, "train"), test=parse_split(test, "test"), outer_iters=outer_iters,
        inner_steps=inner_steps, inner_lr=inner_lr, outer_lr=outer_lr, inner_optimizer=inner_optimizer,
        update=update, grad_mode=grad_mode, grad_clip=grad_clip, rbf_original=rbf_original, seed=seed,
    )


@mbirl_app.command("train")
def train(
    ctx: typer.Context,
    demos: DemosOpt = None,
    cost: Annotated[str, typer.Option(help="default|weighted|timedep|rbf|neural, or the baseline abbeel")] = "weighted",
    urdf: UrdfOpt = None,
    keypoint_links: LinksOpt = None,
    train: TrainOpt = "0:3",
    test: TestOpt = "3:5",
    outer_iters: OuterOpt = 100,
    inner_steps: InnerOpt = 1,
    inner_lr: InnerLrOpt = 1e-3,
    outer_lr: OuterLrOpt = 1e-2,
    inner_optimizer: InnerOptimOpt = "sgd",
    update: UpdateOpt = "per_demo",
    grad_mode: GradModeOpt = "unrolled",
    grad_clip: ClipOpt = None,
    rbf_original: RbfOriginalOpt = False,
    seed: SeedOpt = 0,
    run_dir: RunDirOpt = Path("runs/mbirl"),
    resume: ResumeOpt = False,
    progress: ProgressOpt = True,
    config: ConfigOpt = None,
    checkpoint_every: Annotated[int, typer.Option(help="outer iterations between checkpoints")] = 10,
) -> None:
    """Learn one cost; writes RUN_DIR/metrics.json, metrics.jsonl, tb/, checkpoints/ and figures/."""
    from mbirl.experiments.kuka_irl import run_mbirl

    cfg = _config(demos, cost, urdf, keypoint_links, train, test, outer_iters, inner_steps, inner_lr, outer_lr,
                  inner_optimizer, update, grad_mode, grad_clip, seed, rbf_original)
    cfg.checkpoint_every = checkpoint_every
    cfg = _merge_config(ctx, cfg, config)
    if not cfg.demos:
        raise InputError("no demonstrations: pass --demos FILE or set 'demos' in --config", field="demos")
    m = run_mbirl(cfg, run_dir, resume=resume, progress=progress)
    typer.echo(f"{cfg.method}: test IRL loss {m['irl_loss_test'][0]:.1f} -> {m['final_test_irl_loss']:.1f}, "
               f"relative goal distance {m['test_relative_goal_distance']:.3f}, "
               f"{m['seconds_per_outer_iter'] * 1000:.1f} ms / outer iteration; outputs in {run_dir}")


@mbirl_app.command("compare")
def compare(
    ctx: typer.Context,
    demos: DemosOpt = None,
    costs: Annotated[str, typer.Option(help="comma-separated methods, or 'all'")] = "all",
    urdf: UrdfOpt = None,
    keypoint_links: LinksOpt = None,
    train: TrainOpt = "0:3",
    test: TestOpt = "3:5",
    outer_iters: OuterOpt = 100,
    inner_steps: InnerOpt = 1,
    inner_lr: InnerLrOpt = 1e-3,
    outer_lr: OuterLrOpt = 1e-2,
    inner_optimizer: InnerOptimOpt = "sgd",
    update: UpdateOpt = "per_demo",
    grad_mode: GradModeOpt = "unrolled",
    rbf_original: RbfOriginalOpt = False,
    seed: SeedOpt = 0,
    run_dir: RunDirOpt = Path("runs/compare"),
    resume: ResumeOpt = False,
    progress: ProgressOpt = True,
    config: ConfigOpt = None,
) -> None:
    """Every cost and baseline on one demo set: one figure per kind and summary.md."""
    from mbirl.experiments.kuka_irl import METHODS, run_compare

    methods = list(METHODS) if costs == "all" else [c.strip() for c in costs.split(",") if c.strip()]
    cfg = _config(demos, methods[0] if methods else "", urdf, keypoint_links, train, test, outer_iters, inner_steps,
                  inner_lr, outer_lr, inner_optimizer, update, grad_mode, None, seed, rbf_original)
    cfg = _merge_config(ctx, cfg, config)
    if not cfg.demos:
        raise InputError("no demonstrations: pass --demos FILE or set 'demos' in --config", field="demos")
    out = run_compare(cfg, methods, run_dir, resume=resume, progress=progress)
    typer.echo(out["table"])
    typer.echo(f"figures and summary.md in {run_dir}")


def quickstart(
    run_dir: RunDirOpt = Path("runs/quickstart"),
    seed: SeedOpt = 0,
    outer_iters: OuterOpt = 100,
    progress: ProgressOpt = True,
) -> None:
    """Placing demos + every cost and baseline with the original settings (3 train / 2 test, K=1)."""
    from mbirl.data.demos import save_keypoint_demos
    from mbirl.envs.kuka import default_kuka, generate_demos
    from mbirl.experiments.kuka_irl import METHODS, MBIRLRunConfig, run_compare
    from mbirl.reporting.plots import plot_demos

    if outer_iters < 1:
        raise InputError(f"must be >= 1, got {outer_iters}", field="outer_iters")
    robot = default_kuka()
    demo_path = run_dir / "demos_placing.npz"
    trajs = generate_demos("placing", 6, seed=seed, robot=robot)
    save_keypoint_demos(demo_path, trajs, {"task": "placing", "seed": seed, "robot": robot.describe(),
                                           "command": f"mbirl kuka demos --task placing --n 6 --seed {seed}"})
    plot_demos(trajs, run_dir / "demos_placing.png", title=f"placing: 6 demonstrations (seed {seed})")
    cfg = MBIRLRunConfig(demos=str(demo_path), train=(0, 3), test=(3, 5), outer_iters=outer_iters, seed=seed)
    out = run_compare(cfg, list(METHODS), run_dir, resume=True, progress=progress)
    typer.echo(out["table"])
    typer.echo(f"figures: {run_dir}/learning_curves.png, predictions.png, weights.png; table: {run_dir}/summary.md")
