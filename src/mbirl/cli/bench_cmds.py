"""``mbirl bench run|report``: multi-seed sweeps of the imitation harness on Ray Tune, and their statistics.

``bench run`` trains a grid of algorithms x environments x seeds, one Ray Tune trial per run, each an ordinary
``mbirl il train`` run directory ``OUT/<env>/<algo>/s<seed>``; ``--resume`` finishes a killed sweep without
re-running finished runs. ``bench report`` writes IQMs with stratified-bootstrap confidence intervals,
sample-efficiency curves, performance profiles, probability of improvement, steps to 0.9 and wall-clock into
``REPORT/`` (``summary.md``, ``summary.json``, ``figures/``, ``index.html``). Both need the bench extra
(``pip install 'mbirl[bench]'``: Ray Tune and rliable).
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from mbirl.errors import InputError
from mbirl.experiments.imitation import ALGORITHMS, ImitationRunConfig
from mbirl.experiments.sweep import SweepConfig
from mbirl.reporting.stats import ReportConfig

__all__ = ["bench_app"]

bench_app = typer.Typer(help="Sweeps of the imitation algorithms over environments and seeds (Ray Tune), and "
                             "their statistics and HTML report (rliable).", no_args_is_help=True)

SEEDS = f"{SweepConfig.seeds[0]}-{SweepConfig.seeds[-1]}"
BUDGETS = ",".join(map(str, ReportConfig.budgets))


def _parse_pairs(items: list[str], what: str, form: str) -> dict[str, str]:
    out: dict[str, str] = {}
    for item in items:
        key, sep, path = item.partition("=")
        if not sep or not key or not path:
            raise InputError(f"expected {form}, got '{item[:80]}'", field=what)
        if key in out:
            raise InputError(f"'{key[:40]}' given twice", field=what)
        out[key] = path
    return out


def _parse_demos(items: list[str]) -> dict[str, str]:
    return _parse_pairs(items, "demos", "ENV=FILE")


def _ints(text: str, what: str) -> tuple[int, ...]:
    try:
        return tuple(int(v) for v in text.replace("_", "").split(",") if v.strip())
    except ValueError:
        raise InputError(f"expected comma-separated integers, got '{text}'", field=what) from None


@bench_app.command("run")
def bench_run(
    ctx: typer.Context,
    algos: Annotated[str | None, typer.Option(help="comma-separated algorithms: " + ",".join(ALGORITHMS.names))
                     ] = None,
    envs: Annotated[str | None, typer.Option(help="comma-separated environment ids (shipped demonstrations "
                                                  "data/demos/ENV.npz unless --demos gives them)")] = None,
    seeds: Annotated[str, typer.Option(help="seeds: a range 0-4, a list 0,1,2 or both 0-2,7")] = SEEDS,
    env_steps: Annotated[int | None, typer.Option(
        help=f"environment-step budget of every run (default: --config's, else {ImitationRunConfig.env_steps})")
                         ] = None,
    eval_every: Annotated[int | None, typer.Option(help="env steps between evaluations (default: --config's, else "
                                                        f"{ImitationRunConfig.eval_every})")] = None,
    eval_episodes: Annotated[int | None, typer.Option(help="episodes per evaluation (default: --config's, else "
                                                           f"{ImitationRunConfig.eval_episodes})")] = None,
    demos: Annotated[list[str] | None, typer.Option(help="ENV=FILE: demonstrations for ENV in place of the "
                                                         "shipped ones (repeatable)")] = None,
    config: Annotated[Path | None, typer.Option(
        help="YAML run settings shared by every run: the fields of ImitationRunConfig but algo/env/seed/demos, "
             "each algorithm family's nested under its name (mairl: {horizon: 10}, bc: {patience: 10})")] = None,
    variant: Annotated[list[str] | None, typer.Option(
        help="NAME=FILE: a named configuration usable in --algos (repeatable); FILE is YAML run settings that name "
             "their algo (algo: mairl, mairl: {policy_utd: 0.1}), applied over --config's")] = None,
    device: Annotated[str | None, typer.Option(
        help="where every run's networks train: auto|cpu|cuda (default: --config's, else "
             f"{ImitationRunConfig.device}); cuda, or auto on a GPU machine, needs --gpus-per-trial")] = None,
    cpus_per_trial: Annotated[float, typer.Option(help="CPUs per trial (torch threads)")
                              ] = SweepConfig.cpus_per_trial,
    gpus_per_trial: Annotated[float, typer.Option(help="GPUs per trial (a fraction shares one GPU between trials; "
                                                       "Ray hides the GPUs from a trial that reserves none)")
                              ] = SweepConfig.gpus_per_trial,
    max_failures: Annotated[int, typer.Option(help="restarts of a failed trial (each continues from its "
                                                   "checkpoint)")] = SweepConfig.max_failures,
    address: Annotated[str | None, typer.Option(help="join a running Ray cluster: auto or HOST:PORT (default: "
                                                     "start a local Ray on this machine's CPUs)")] = None,
    num_cpus: Annotated[int | None, typer.Option(help="CPUs of the local Ray (default: all)")] = None,
    out: Annotated[Path, typer.Option(help="sweep directory: OUT/<env>/<algo>/s<seed>, OUT/sweep.json")
                   ] = Path("runs/bench"),
    resume: Annotated[bool, typer.Option(help="continue the sweep in OUT: unfinished runs from their checkpoints, "
                                              "finished ones kept; options not given come from OUT/sweep.json")
                      ] = False,
    quiet: Annotated[bool, typer.Option(help="no Ray Tune status table")] = False,
) -> None:
    """Train every (algorithm, environment, seed) of the grid as a Ray Tune trial; writes OUT/sweep.json and one
    run directory per trial."""
    from mbirl.cli.options import explicit_options
    from mbirl.experiments.sweep import SWEEP_FILE, run_sweep, sweep_command
    from mbirl.validation import load_config, read_json

    given = explicit_options(ctx)
    base: dict[str, Any] = {}
    record = out / SWEEP_FILE
    if resume and record.is_file():
        saved = read_json(record, what="sweep record")
        base = dict(saved.get("config", {})) if isinstance(saved, dict) else {}
    elif algos is None or envs is None:
        raise InputError("required (or --resume a sweep in --out)", field="algos" if algos is None else "envs")
    if num_cpus is not None and num_cpus < 1:
        raise InputError(f"must be >= 1, got {num_cpus}", field="num-cpus")
    if num_cpus is not None and address is not None:
        raise InputError("sets the local Ray's CPUs; a cluster joined with --address has its own", field="num-cpus")
    from mbirl.experiments.sweep import parse_seeds

    if algos is not None:
        base["algos"] = tuple(algos.split(","))
    if envs is not None:
        base["envs"] = tuple(envs.split(","))
    if "seeds" in given or "seeds" not in base:
        base["seeds"] = parse_seeds(seeds)
    if demos:
        base["demos"] = {**base.get("demos", {}), **_parse_demos(demos)}
    run: dict[str, Any] = dict(base.get("run", {}))
    if config is not None:
        run = load_config(config, ImitationRunConfig, legacy=False)
    for name, value in (("env_steps", env_steps), ("eval_every", eval_every), ("eval_episodes", eval_episodes),
                        ("device", device)):
        if value is not None:
            run[name] = value
    base["run"] = run
    variant_files = _parse_pairs(variant or [], "variant", "NAME=FILE")
    if variant_files:
        base["variants"] = {name: load_config(Path(path), ImitationRunConfig, legacy=False)
                            for name, path in variant_files.items()}
    for name, resource in (("cpus_per_trial", cpus_per_trial), ("gpus_per_trial", gpus_per_trial),
                           ("max_failures", max_failures)):
        if name in given or name not in base:
            base[name] = resource
    sweep = SweepConfig.from_json(base, source="command line" if config is None else f"command line / {config}")
    command = sweep_command(sweep, out.resolve(), config_file=str(config.resolve()) if config else None,
                            address=address, variant_files={k: str(Path(v).resolve())
                                                            for k, v in variant_files.items()})
    if resume:
        command += " --resume"

    def show(plan: Any) -> None:
        done = len(plan.cells) - len(plan.todo)
        typer.echo(f"{len(plan.cells)} runs ({len(sweep.algos)} algorithms x {len(sweep.envs)} environments x "
                   f"{len(sweep.seeds)} seeds), {done} already finished, {len(plan.todo)} to run; outputs in "
                   f"{plan.out}")

    result = run_sweep(sweep, out, resume=resume, address=address, num_cpus=num_cpus, command=command,
                       verbose=0 if quiet else 1, on_plan=show)
    typer.echo(f"finished now: {len(result.finished)}, already finished: {len(result.skipped)}, failed: "
               f"{len(result.failed)}")
    if result.failed:
        first = next(iter(result.failed.items()))
        typer.echo(f"mbirl: error: {len(result.failed)} run(s) failed after {sweep.max_failures} restart(s), e.g. "
                   f"{first[0]}: {first[1]}; fix the cause and rerun with --resume", err=True)
        raise typer.Exit(1)
    typer.echo(f"report: mbirl bench report {result.out} --out {result.out / 'report'}")


@bench_app.command("report")
def bench_report(
    sweep_dir: Annotated[Path, typer.Argument(help="the sweep's directory (bench run --out)")],
    out: Annotated[Path | None, typer.Option(help="report directory (default: SWEEP_DIR/report)")] = None,
    budgets: Annotated[str, typer.Option(help="env-step budgets of the IQM tables, besides the final one")
                       ] = BUDGETS,
    threshold: Annotated[float, typer.Option(help="normalised return whose first attainment is counted")
                         ] = ReportConfig.threshold,
    reference: Annotated[str, typer.Option(help="algorithm whose probability of improvement over the others is "
                                                "reported")] = ReportConfig.reference,
    reps: Annotated[int, typer.Option(help="bootstrap resamples per confidence interval")] = ReportConfig.reps,
    confidence: Annotated[float, typer.Option(help="confidence level")] = ReportConfig.confidence,
    grid_points: Annotated[int, typer.Option(help="points of the sample-efficiency curves")
                           ] = ReportConfig.grid_points,
    seed: Annotated[int, typer.Option(help="bootstrap seed")] = ReportConfig.seed,
    videos: Annotated[bool, typer.Option(help="record one rollout video per (environment, algorithm)")
                      ] = ReportConfig.videos,
    epic: Annotated[bool, typer.Option(help="EPIC distance of each run's learned reward to the true reward, where "
                                            "one is known")] = ReportConfig.epic,
) -> None:
    """Statistics of a sweep: summary.md, summary.json, figures/ and index.html in OUT."""
    from mbirl.reporting.bench_report import tables, write_report

    cfg = ReportConfig(budgets=_ints(budgets, "budgets"), threshold=threshold, reference=reference, reps=reps,
                       confidence=confidence, grid_points=grid_points, seed=seed, videos=videos,
                       epic=epic)
    target = out if out is not None else sweep_dir / "report"
    summary = write_report(sweep_dir, target, cfg)
    title, table = tables({**summary, "_curves": {}})[0]
    header, rows = table
    typer.echo(title)
    for row in rows:
        typer.echo("  " + "  ".join(f"{h}: {c}" for h, c in zip(header, row, strict=True) if h != "algorithm")
                   + f"  ({row[0]})")
    typer.echo(f"report in {target} (open {target / 'index.html'})")
