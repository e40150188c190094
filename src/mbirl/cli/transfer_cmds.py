"""``mbirl transfer run``: AIRL's transfer experiments (shifting maze, disabled ant): learn a state-only reward on the
source environment, freeze it, train a fresh SAC on the target against it and score it on the target's true reward
beside GAIL's policy transfer, SAC on the true reward and a random policy (:mod:`mbirl.experiments.transfer`).

``--config FILE.yaml`` sets any field of :class:`mbirl.experiments.transfer.TransferRunConfig`; options given on the
command line win over it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from mbirl.cli.options import DeviceOpt, build_config
from mbirl.experiments.transfer import TRANSFER_ROWS, TRANSFER_TASKS, TransferRunConfig

__all__ = ["transfer_app"]

transfer_app = typer.Typer(help="Reward transfer: a reward learned in one environment, optimised in another.",
                           no_args_is_help=True)


@transfer_app.command("run")
def transfer_run(
    ctx: typer.Context,
    task: Annotated[str, typer.Option(help="|".join(TRANSFER_TASKS))] = TransferRunConfig.task,
    out: Annotated[Path | None, typer.Option(help="output directory (default: runs/transfer/TASK/sSEED)")] = None,
    seed: Annotated[int, typer.Option(help="random seed of every stage")] = TransferRunConfig.seed,
    demos: Annotated[Path | None, typer.Option(help="demonstrations of the source environment (default: train an "
                                                    "expert and generate them in OUT)")] = None,
    expert_steps: Annotated[int | None, typer.Option(help="expert SAC steps (default: the task's)")] = None,
    demo_episodes: Annotated[int | None, typer.Option(help="demonstration episodes (default: the task's)")] = None,
    irl_steps: Annotated[int | None, typer.Option(help="env steps of MAIRL, AIRL and GAIL (default: the task's)")
                         ] = None,
    rl_steps: Annotated[int | None, typer.Option(help="env steps of each SAC run on the target (default: the "
                                                      "task's)")] = None,
    rows: Annotated[str, typer.Option(help="comma-separated rows: " + ",".join(TRANSFER_ROWS))
                    ] = ",".join(TRANSFER_ROWS),
    eval_episodes: Annotated[int, typer.Option(help="evaluation episodes per row")] = TransferRunConfig.eval_episodes,
    eval_every: Annotated[int, typer.Option(help="env steps between logged evaluations of training runs")
                          ] = TransferRunConfig.eval_every,
    random_episodes: Annotated[int, typer.Option(help="episodes of the random row")
                               ] = TransferRunConfig.random_episodes,
    workers: Annotated[int, typer.Option(help="processes for independent stages (the reward learners; the SAC runs "
                                              "on the target)")] = TransferRunConfig.workers,
    device: DeviceOpt = TransferRunConfig.device,
    videos: Annotated[bool, typer.Option(help="record one target episode of each row's policy (OUT/videos)")
                      ] = TransferRunConfig.videos,
    config: Annotated[Path | None, typer.Option(help="YAML configuration (keys: the fields of TransferRunConfig); "
                                                     "options given on the command line take precedence")] = None,
    resume: Annotated[bool, typer.Option(help="continue the run in OUT (finished stages are kept)")] = False,
    progress: Annotated[bool, typer.Option(help="show progress")] = True,
) -> None:
    """Run the transfer protocol; writes OUT/metrics.json (normalized_return per row), OUT/summary.md and figures."""
    from mbirl.experiments.transfer import run_transfer

    values: dict[str, object] = {"task": task, "seed": seed, "expert_steps": expert_steps,
                                 "demo_episodes": demo_episodes, "irl_steps": irl_steps, "rl_steps": rl_steps,
                                 "rows": tuple(r.strip() for r in rows.split(",") if r.strip()),
                                 "eval_episodes": eval_episodes, "eval_every": eval_every, "workers": workers,
                                 "random_episodes": random_episodes, "device": device, "videos": videos}
    if demos is not None:
        values["demos"] = demos
    cfg = build_config(ctx, TransferRunConfig, values, config)
    target = out if out is not None else Path("runs/transfer") / cfg.task / f"s{cfg.seed}"
    m = run_transfer(cfg, target, resume=resume, progress=progress)
    for row, norm in m["normalized_return"].items():
        shown = "n/a" if norm is None else f"{norm:.3f}"
        typer.echo(f"{row:12s} return {m['mean_return'][row]:9.2f}  normalised {shown}")
    typer.echo(f"{m['source']} -> {m['target']}; table {target / 'summary.md'}, metrics {target / 'metrics.json'}")


@transfer_app.command("demos")
def transfer_demos(
    task: Annotated[str, typer.Option(help="maze (the only task with a scripted expert)")] = TransferRunConfig.task,
    n: Annotated[int, typer.Option(help="episodes")] = 20,
    seed: Annotated[int, typer.Option(help="reset seed of the first episode")] = 0,
    out: Annotated[Path, typer.Option(help="demo file (.npz)")] = Path("data/demos/ShiftingMazeLeft-v0.npz"),
) -> None:
    """Demonstrations of the source maze from a scripted waypoint controller (no training): for `mbirl transfer run
    --demos` when an SAC expert does not fit the budget."""
    from mbirl.errors import InputError
    from mbirl.experiments.transfer import scripted_maze_demos

    if task != "maze":
        raise InputError(f"only the maze has a scripted expert, not '{task}'", field="task")
    meta = scripted_maze_demos(n, out, seed=seed)
    typer.echo(f"{n} episodes of {meta['env_id']}: return {meta['expert_mean_return']:.2f} (random "
               f"{meta['random_mean_return']:.2f}); written to {out}")
