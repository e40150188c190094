"""``mbirl il train|eval``: any imitation algorithm (MAIRL, MGAIL, GAIL, AIRL, DAC, behaviour cloning)
through one harness.

``--config FILE.yaml`` sets any field of :class:`mbirl.experiments.imitation.ImitationRunConfig`, each algorithm
family's hyper-parameters nested under its name (``mairl: {horizon: 10}``, ``bc: {patience: 10}``); options given on
the command line win over it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from mbirl.cli.mairl_cmds import mairl_eval
from mbirl.cli.options import DeviceOpt, build_config
from mbirl.experiments.imitation import ALGORITHMS, ImitationRunConfig

__all__ = ["il_app"]

il_app = typer.Typer(help="Imitation algorithms in one harness: the same run directory, metrics, evaluation "
                          "episodes, checkpoints and --resume for each.", no_args_is_help=True)


@il_app.command("train")
def il_train(
    ctx: typer.Context,
    algo: Annotated[str, typer.Option(help="algorithm: " + "|".join(ALGORITHMS.names))] = ImitationRunConfig.algo,
    demos: Annotated[Path | None, typer.Option(help="demonstrations written by `mbirl expert demos`")] = None,
    env: Annotated[str, typer.Option(help="environment id (must match the demo file; default: the file's)")
                   ] = ImitationRunConfig.env,
    env_steps: Annotated[int, typer.Option(help="environment-step budget (bc takes none: it stops early or after "
                                                "bc.max_epochs)")] = ImitationRunConfig.env_steps,
    seed: Annotated[int, typer.Option(help="random seed")] = ImitationRunConfig.seed,
    eval_every: Annotated[int, typer.Option(help="env steps between deterministic evaluations")
                          ] = ImitationRunConfig.eval_every,
    eval_episodes: Annotated[int, typer.Option(help="episodes per evaluation")] = ImitationRunConfig.eval_episodes,
    run_dir: Annotated[Path | None, typer.Option(help="run directory (default: runs/il/ALGO)")] = None,
    device: DeviceOpt = ImitationRunConfig.device,
    config: Annotated[Path | None, typer.Option(
        help="YAML configuration (keys: the fields of ImitationRunConfig, each algorithm family's nested under its "
             "name); options given on the command line take precedence")] = None,
    resume: Annotated[bool, typer.Option(help="continue the run in --run-dir from its last checkpoint")] = False,
    progress: Annotated[bool, typer.Option(help="show progress")] = True,
) -> None:
    """Train one imitation algorithm; writes RUN_DIR/metrics.json (eval curve, final_normalized_return) and more."""
    from mbirl.experiments.imitation import run_imitation

    values = {"algo": algo, "env": env, "env_steps": env_steps, "seed": seed, "eval_every": eval_every,
              "eval_episodes": eval_episodes, "device": device}
    if demos is not None:
        values["demos"] = demos
    cfg = build_config(ctx, ImitationRunConfig, values, config)
    out = run_dir if run_dir is not None else Path("runs/il") / cfg.algo
    m = run_imitation(cfg, out, resume=resume, progress=progress)
    typer.echo(f"{m['env_id']} {m['algo']} seed {m['seed']}: normalised return {m['final_normalized_return']:.3f} "
               f"(return {m['final_mean_return']:.1f}) after {m['env_steps']} env steps, {m['iterations']} "
               f"iterations, {m['train_seconds']:.0f} s; outputs in {out}")


il_app.command("eval")(mairl_eval)
