"""``mbirl data import|export``: demonstrations from Stable-Baselines3, ``imitation``, Minari and D4RL-style HDF5
files into this project's demo files, and demo files out to Minari (:mod:`mbirl.data.interop`)."""

from __future__ import annotations

import shlex
import sys
from pathlib import Path
from typing import Annotated

import typer

from mbirl.data.interop import FORMATS, RANDOM_EPISODES

__all__ = ["data_app"]

data_app = typer.Typer(help="Demonstrations in from other libraries' files, and out to Minari.",
                       no_args_is_help=True)


@data_app.command("import")
def data_import(
    path: Annotated[Path, typer.Argument(help="the file or directory to import")],
    fmt: Annotated[str, typer.Option("--format", help="|".join(FORMATS))],
    out: Annotated[Path, typer.Option(help="demo file to write (.npz)")],
    env: Annotated[str | None, typer.Option(help="environment id (needed when the file does not name it; "
                                                  "module:EnvId for your own)")] = None,
    expert_return: Annotated[float | None, typer.Option(help="the expert's mean return (default: the imported "
                                                             "episodes' mean, when they carry rewards)")] = None,
    random_return: Annotated[float | None, typer.Option(help="a uniformly random policy's mean return (default: "
                                                             "the file's, else measured in --env)")] = None,
    random_episodes: Annotated[int, typer.Option(help="episodes when the random return is measured")
                               ] = RANDOM_EPISODES,
    seed: Annotated[int, typer.Option(help="seed of the random-policy episodes")] = 0,
) -> None:
    """Import demonstrations into a demo file that every `mbirl` trainer reads."""
    from mbirl.data.interop import import_demos

    meta = import_demos(path, fmt, out, env_id=env, expert_return=expert_return, random_return_value=random_return,
                        random_episodes=random_episodes, seed=seed, command=shlex.join(["mbirl", *sys.argv[1:]]))
    typer.echo(f"{meta['n']} episodes of {meta['env_id']} -> {out} (expert return {meta['expert_mean_return']:.1f}, "
               f"random {meta['random_mean_return']:.1f})")


@data_app.command("export")
def data_export(
    demos: Annotated[Path, typer.Argument(help="demo file (.npz) to export")],
    out: Annotated[Path, typer.Option(help="Minari datasets root to write into (MINARI_DATASETS_PATH)")],
    dataset_id: Annotated[str, typer.Option(help="Minari dataset id, e.g. mbirl/pendulum/expert-v0")],
    to: Annotated[str, typer.Option(help="target format: minari")] = "minari",
    author: Annotated[str | None, typer.Option(help="dataset author")] = None,
) -> None:
    """Export a demo file as a local Minari dataset (its returns as ref_max_score / ref_min_score)."""
    from mbirl.data.interop import export_minari
    from mbirl.errors import InputError

    if to != "minari":
        raise InputError(f"unknown target '{to}' (expected minari)", field="to")
    target = export_minari(demos, out, dataset_id, author=author)
    typer.echo(f"Minari dataset '{dataset_id}' -> {target}")
