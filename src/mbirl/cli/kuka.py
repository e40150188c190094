"""``mbirl kuka ...``: demonstrations of the KUKA iiwa keypoint tasks."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from mbirl.envs.kuka import DEFAULT_ROBOT, DEMO_COUNT, DEMO_HORIZON, DEMO_NOISE_CM, DEMO_TASK
from mbirl.errors import InputError
from mbirl.validation import check_output_path

__all__ = ["LinksOpt", "RobotOpt", "UrdfOpt", "kuka_app"]

kuka_app = typer.Typer(help="KUKA iiwa keypoint tasks: generate and plot demonstrations.", no_args_is_help=True)

RobotOpt = Annotated[str, typer.Option(
    help="built-in robot: kuka (PyBullet's KUKA iiwa, two keypoints on a held object) or original (the original "
         "experiment's iiwa7 with keypoint links kp_link_1,kp_link_2)")]
UrdfOpt = Annotated[str | None, typer.Option(
    help="a robot URDF instead of the built-in robot (needs --keypoint-links)")]
LinksOpt = Annotated[str | None, typer.Option(
    help="comma-separated keypoint link names of --urdf (or of the built-in robot, e.g. --robot original "
         "--keypoint-links kp_link_1,kp_link_2,kp_link_3)")]


@kuka_app.command("demos")
def demos(
    ctx: typer.Context,
    task: Annotated[str, typer.Option(help="placing or reaching")] = DEMO_TASK,
    style: Annotated[str, typer.Option(
        help="reachable (IK-tracked paths with noise) or original (the official code's placing demos: desired "
             "keypoints, offsets from torch's seeded stream; --seed 0 --robot original is its traj_data_placing.pt)"
    )] = "reachable",
    n: Annotated[int, typer.Option(help="number of demonstrations")] = DEMO_COUNT,
    seed: Annotated[int, typer.Option(help="random seed")] = 0,
    out: Annotated[Path, typer.Option(help="output .npz file (a .png plot is written beside it)")] = Path(
        "demos.npz"),
    horizon: Annotated[int, typer.Option(help="time steps per demonstration (states, incl. the start)")] = DEMO_HORIZON,
    noise: Annotated[float, typer.Option(
        help="per-step noise on the desired path [cm] (reachable style)")] = DEMO_NOISE_CM,
    robot: RobotOpt = DEFAULT_ROBOT,
    urdf: UrdfOpt = None,
    keypoint_links: LinksOpt = None,
) -> None:
    """Generate seeded demonstrations and save them as .npz (plus a plot)."""
    from mbirl.data.demos import save_keypoint_demos
    from mbirl.envs.kuka import generate_demos, generate_original_placing, robot_from_options
    from mbirl.reporting.plots import plot_demos

    check_output_path(out, ".npz")
    if noise < 0:
        raise InputError(f"must be >= 0, got {noise}", field="noise")
    if style not in ("reachable", "original"):
        raise InputError(f"unknown style '{style}' (expected reachable or original)", field="style")
    if style == "original":
        if task != "placing":
            raise InputError("the original style exists for --task placing only", field="style")
        if getattr(ctx.get_parameter_source("noise"), "name", None) == "COMMANDLINE":
            raise InputError("--noise applies to the reachable style only (the original has no per-step noise)",
                             field="noise")
    kp_robot = robot_from_options(robot, urdf, keypoint_links)
    command = f"mbirl kuka demos --task {task} --n {n} --seed {seed} --horizon {horizon}"
    if robot != DEFAULT_ROBOT:
        command += f" --robot {robot}"
    if urdf is not None:
        command += f" --urdf {urdf}"
    if keypoint_links:
        command += f" --keypoint-links {keypoint_links}"
    if style == "original":
        trajs = generate_original_placing(n, seed=seed, horizon=horizon, robot=kp_robot)
        meta = {"task": task, "style": style, "seed": seed, "robot": kp_robot.describe(),
                "command": f"{command} --style original"}
    else:
        trajs = generate_demos(task, n, seed=seed, horizon=horizon, robot=kp_robot,  # type: ignore[arg-type]
                               noise=noise)
        meta = {"task": task, "style": style, "seed": seed, "noise_cm": noise, "robot": kp_robot.describe(),
                "command": f"{command} --noise {noise}"}
    save_keypoint_demos(out, trajs, meta)
    plot_demos(trajs, out.with_suffix(".png"), title=f"{task} ({style}): {n} demonstrations (seed {seed})")
    typer.echo(f"wrote {n} {task} demonstrations ({style}) to {out} (plot: {out.with_suffix('.png')})")
