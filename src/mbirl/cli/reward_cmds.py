"""``mbirl reward epic|heatmap|greedy``: how close a run's learned reward is to the task's true one, without
training anything on it (the EPIC pseudometric, :mod:`mbirl.rewards.epic`), the two drawn side by side, and (known
tabular dynamics) the policy the learned reward makes optimal against the expert's."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from mbirl.experiments.reward_quality import EpicConfig

__all__ = ["reward_app"]

reward_app = typer.Typer(help="Learned rewards: their distance to the true reward (EPIC), heat maps, greedy policies.",
                         no_args_is_help=True)


@reward_app.command("epic")
def reward_epic(
    run_dir: Annotated[Path, typer.Argument(help="an adversarial imitation run (mairl, mgail, gail, airl, dac)")],
    coverage_steps: Annotated[int, typer.Option(help="random-policy transitions added to the demonstrations' as "
                                                     "the coverage distribution")] = EpicConfig.coverage_steps,
    mean_samples: Annotated[int, typer.Option(help="state and action samples of the canonicalisation")
                            ] = EpicConfig.mean_samples,
    seed: Annotated[int, typer.Option(help="seeds the random policy and the subsets")] = EpicConfig.seed,
    out: Annotated[Path | None, typer.Option(help="JSON output (default: RUN_DIR/epic.json)")] = None,
) -> None:
    """EPIC distance (0: the same reward up to shaping and scale, 1: its negation) of every reward term of the run
    to the task's true reward; writes RUN_DIR/epic.json."""
    from mbirl.experiments.reward_quality import epic_of_run
    from mbirl.fileio import write_json_atomic
    from mbirl.validation import check_output_path

    cfg = EpicConfig(coverage_steps=coverage_steps, mean_samples=mean_samples, seed=seed)
    target = check_output_path(out if out is not None else run_dir / "epic.json", ".json")
    result = epic_of_run(run_dir, cfg)
    write_json_atomic(target, result)
    for term, distance in result["epic"].items():
        default = "  (the run's reward)" if term == result["default_term"] else ""
        typer.echo(f"{term:12s} EPIC {distance:.3f}{default}")
    typer.echo(f"{result['env_id']}, {result['coverage_transitions']} coverage transitions; written to {target}")


@reward_app.command("heatmap")
def reward_heatmap_cmd(
    run_dir: Annotated[Path, typer.Argument(help="an adversarial imitation run (mairl, mgail, gail, airl, dac)")],
    out: Annotated[Path | None, typer.Option(help="figure (default: RUN_DIR/reward_heatmap.png)")] = None,
    term: Annotated[str | None, typer.Option(help="reward term (default: the run's own; g, f, logit, log_d, "
                                                  "neg_log_1md)")] = None,
    resolution: Annotated[int, typer.Option(help="grid points per axis")] = 101,
) -> None:
    """The learned reward over the task's state plane next to the true reward (Pendulum: angle x velocity)."""
    from mbirl.experiments.reward_quality import reward_heatmap
    from mbirl.validation import check_output_path

    target = check_output_path(out if out is not None else run_dir / "reward_heatmap.png", ".png")
    result = reward_heatmap(run_dir, target, term=term, resolution=resolution)
    typer.echo(f"{result['term']}: correlation with the true reward over {result['states_drawn']} states: Pearson "
               f"{result['pearson']:.3f}, Spearman {result['spearman']:.3f}; figure {result['figure']}")


@reward_app.command("greedy")
def reward_greedy(
    run_dir: Annotated[Path, typer.Argument(help="an adversarial imitation run on a task with tabular dynamics "
                                                 "(MudGrid-v0)")],
    out: Annotated[Path | None, typer.Option(help="JSON output (default: RUN_DIR/greedy.json)")] = None,
) -> None:
    """The greedy policy under each learned reward term (value iteration on the task's known dynamics) against the
    expert's optimal actions; writes RUN_DIR/greedy.json."""
    from mbirl.experiments.reward_quality import greedy_agreement
    from mbirl.fileio import write_json_atomic
    from mbirl.validation import check_output_path

    target = check_output_path(out if out is not None else run_dir / "greedy.json", ".json")
    result = greedy_agreement(run_dir)
    write_json_atomic(target, result)
    for term, entry in result["terms"].items():
        default = "  (the run's reward)" if term == result["default_term"] else ""
        typer.echo(f"{term:12s} greedy action optimal in {entry['agreement']:.1%} of {result['states']} states; "
                   f"the demonstrator's on {entry['demo_agreement']:.1%} of demo transitions{default}")
    for name, share in result["references"].items():
        typer.echo(f"reference: a reward of the {name}: greedy action optimal in {share:.1%}")
    typer.echo(f"(the demonstrator's own actions are optimal on {result['demonstrator_optimal']:.1%} of its "
               f"transitions); written to {target}")
