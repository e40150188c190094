"""``mbirl expert train|demos`` and ``mbirl mairl train|eval|plot|models``: experts, demonstrations and MAIRL.

Options default to the fields of the commands' config dataclasses; ``--config FILE.yaml`` sets any field (nested
as the dataclass nests, e.g. ``trainer: {horizon: 10}``), and options given on the command line win over it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from mbirl.algorithms.mairl import OBS_MODES, VARIANTS, MAIRLConfig
from mbirl.cli.options import DeviceOpt, build_config
from mbirl.dynamics.models import MODELS
from mbirl.envs.pixels import PIXEL_RENDERERS
from mbirl.errors import InputError
from mbirl.experiments.mairl_run import MAIRLRunConfig, ModelComparisonConfig
from mbirl.experts.train import ExpertRunConfig
from mbirl.fileio import json_text
from mbirl.validation import check_output_path

__all__ = ["expert_app", "mairl_app"]

expert_app = typer.Typer(help="Experts (Stable-Baselines3) and their demonstration files.", no_args_is_help=True)
mairl_app = typer.Typer(help="MAIRL: adversarial IRL with an end-to-end differentiable dynamics model.",
                        no_args_is_help=True)

EnvOpt = Annotated[str, typer.Option(help="gymnasium environment id, e.g. Pendulum-v1")]
SeedOpt = Annotated[int, typer.Option(help="random seed")]
ProgressOpt = Annotated[bool, typer.Option(help="show progress")]


def _config_opt(cls: type) -> Any:
    return typer.Option(help=f"YAML configuration (keys: the fields of {cls.__name__}, nested as it nests); "
                             "options given on the command line take precedence")


def _short(value: Any) -> str:
    import reprlib

    return reprlib.repr(value)


def _given(values: dict[str, Any]) -> dict[str, Any]:
    """The option values that are set (None: not given, so the config file or the dataclass default decides)."""
    return {k: v for k, v in values.items() if v is not None}


@expert_app.command("train")
def expert_train(
    ctx: typer.Context,
    env: Annotated[str | None, typer.Option(help="gymnasium environment id, e.g. Pendulum-v1")] = None,
    out: Annotated[Path | None, typer.Option(help="output directory (default: runs/experts/ENV)")] = None,
    seed: SeedOpt = ExpertRunConfig.seed,
    steps: Annotated[int | None, typer.Option(help="environment steps (default: the preset's)")
                     ] = ExpertRunConfig.steps,
    max_minutes: Annotated[float | None, typer.Option(help="stop after this many minutes (best export kept)")
                           ] = ExpertRunConfig.max_minutes,
    eval_every: Annotated[int, typer.Option(help="steps between evaluations of the exported policy")
                          ] = ExpertRunConfig.eval_every,
    algo: Annotated[str | None, typer.Option(help="sac|td3|ppo with Stable-Baselines3's defaults: for an "
                                                  "environment without a preset (default: the preset)")] = None,
    device: DeviceOpt = ExpertRunConfig.device,
    config: Annotated[Path | None, _config_opt(ExpertRunConfig)] = None,
    overwrite: Annotated[bool, typer.Option(help="train a new expert in place of the one in OUT")] = False,
    resume: Annotated[bool, typer.Option(help="continue the expert run in OUT from its last checkpoint (exactly as "
                                              "if it had not stopped)")] = False,
    progress: ProgressOpt = True,
) -> None:
    """Train the expert of ENV (its preset, or --algo with SB3's defaults for any environment, module:EnvId
    included); writes OUT/expert.{safetensors,json} (the best exported policy)."""
    from mbirl.experts.train import train_expert

    cfg = build_config(ctx, ExpertRunConfig, _given({"env": env, "seed": seed, "steps": steps,
                                                     "max_minutes": max_minutes, "eval_every": eval_every,
                                                     "algo": algo, "device": device}), config)
    out_dir = out if out is not None else Path("runs/experts") / cfg.env
    res = train_expert(cfg, out_dir, progress=progress, overwrite=overwrite, resume=resume)
    typer.echo(f"{cfg.env}: best evaluation return {res.best_return:.1f} after {res.env_steps} steps "
               f"({res.seconds:.0f} s); policy in {res.path}.safetensors")


@expert_app.command("demos")
def expert_demos(
    env: EnvOpt,
    n: Annotated[int, typer.Option(help="number of expert episodes")] = 10,
    expert: Annotated[Path | None, typer.Option(help="exported expert (default: runs/experts/ENV/expert)")] = None,
    out: Annotated[Path | None, typer.Option(help="output .npz (default: data/demos/ENV.npz)")] = None,
    seed: SeedOpt = 0,
) -> None:
    """Roll out the expert N times and save the demonstrations (with expert and random mean returns)."""
    from mbirl.experts.demos import generate_expert_demos
    from mbirl.experts.policy import ExpertPolicy

    stem = expert if expert is not None else Path("runs/experts") / env / "expert"
    if stem.is_dir():  # the output directory of `mbirl expert train`
        stem = stem / "expert"
    out_path = check_output_path(out if out is not None else Path("data/demos") / f"{env}.npz", ".npz")
    policy, info = ExpertPolicy.load(stem.with_suffix("") if stem.suffix in (".json", ".safetensors") else stem)
    if "env_id" not in info:
        raise InputError("the expert does not record its environment (export it with `mbirl expert train`)",
                         source=str(stem), field="env_id")
    if info["env_id"] != env:
        raise InputError(f"expert was trained on {_short(info['env_id'])}, not '{env}'", source=str(stem),
                         field="env")
    command = f"mbirl expert demos --env {env} --n {n} --seed {seed}" + (f" --out {out}" if out else "")
    meta = generate_expert_demos(env, policy, n, out_path, seed=seed, command=command, expert_info=info)
    typer.echo(f"wrote {n} demonstrations to {out_path}: expert mean return {meta['expert_mean_return']:.1f}, "
               f"random {meta['random_mean_return']:.1f}")


@mairl_app.command("train")
def mairl_train(
    ctx: typer.Context,
    demos: Annotated[Path | None, typer.Option(help="demonstrations written by `mbirl expert demos`")] = None,
    env: Annotated[str, typer.Option(help="environment id (must match the demo file; default: the file's)")
                   ] = MAIRLRunConfig.env,
    dynamics: Annotated[str, typer.Option(help="forward model: " + "|".join(MODELS.names))] = MAIRLConfig.dynamics,
    variant: Annotated[str, typer.Option(help="|".join(VARIANTS) + ": AIRL or GAIL discriminator")
                       ] = MAIRLConfig.variant,
    env_steps: Annotated[int, typer.Option(help="environment-step budget")] = MAIRLRunConfig.env_steps,
    seed: SeedOpt = MAIRLRunConfig.seed,
    run_dir: Annotated[Path, typer.Option(help="run directory")] = Path("runs/mairl"),
    eval_every: Annotated[int, typer.Option(help="env steps between deterministic evaluations")
                          ] = MAIRLRunConfig.eval_every,
    eval_episodes: Annotated[int, typer.Option(help="episodes per evaluation")] = MAIRLRunConfig.eval_episodes,
    horizon: Annotated[int, typer.Option(help="H: steps per differentiable rollout (original: 10)")
                       ] = MAIRLConfig.horizon,
    n_rollouts: Annotated[int, typer.Option(help="rollouts accumulated per policy update (original: 7)")
                          ] = MAIRLConfig.n_rollouts,
    state_only: Annotated[bool, typer.Option(help="state-only reward g(s) (for transfer; mairl only)")
                          ] = MAIRLConfig.state_only,
    obs: Annotated[str, typer.Option(help="|".join(OBS_MODES) + ": what the trainer observes (pixels: 64x64 RGB "
                                          "frames through a conv encoder; " + ", ".join(PIXEL_RENDERERS.names) + ")")
                   ] = MAIRLConfig.obs,
    frame_stack: Annotated[int, typer.Option(help="frames stacked per pixel observation")] = MAIRLConfig.frame_stack,
    device: DeviceOpt = MAIRLRunConfig.device,
    config: Annotated[Path | None, _config_opt(MAIRLRunConfig)] = None,
    resume: Annotated[bool, typer.Option(help="continue the run in --run-dir from its last checkpoint")] = False,
    progress: ProgressOpt = True,
) -> None:
    """Train MAIRL (or MGAIL); writes RUN_DIR/metrics.json (eval curve, final_normalized_return) and more."""
    from mbirl.experiments.mairl_run import run_mairl

    values = {"demos": demos, "env": env, "dynamics": dynamics, "variant": variant, "env_steps": env_steps,
              "seed": seed, "eval_every": eval_every, "eval_episodes": eval_episodes, "horizon": horizon,
              "n_rollouts": n_rollouts, "state_only": state_only, "obs": obs, "frame_stack": frame_stack,
              "device": device}
    trainer_fields = {name: f"trainer.{name}" for name in ("dynamics", "variant", "horizon", "n_rollouts",
                                                           "state_only", "obs", "frame_stack")}
    cfg = build_config(ctx, MAIRLRunConfig, _given(values), config, fields=trainer_fields)
    m = run_mairl(cfg, run_dir, resume=resume, progress=progress)
    typer.echo(f"{m['env_id']} {m['variant']}/{m['dynamics']}{' from pixels' if 'obs' in m else ''} seed "
               f"{m['seed']}: normalised return "
               f"{m['final_normalized_return']:.3f} (return {m['final_mean_return']:.1f}) after {m['env_steps']} "
               f"env steps, {m['train_seconds']:.0f} s; outputs in {run_dir}")


@mairl_app.command("eval")
def mairl_eval(
    run_dir: Annotated[Path, typer.Option(help="run directory of `mbirl mairl train` or `mbirl il train`")],
    episodes: Annotated[int, typer.Option(help="deterministic episodes")] = 10,
    video: Annotated[Path | None, typer.Option(help="write an .mp4 of one episode")] = None,
    seed: Annotated[int, typer.Option(
        help="reset seed of the first episode (then seed+1, ...); training's evaluations use 1000000+")] = 2_000_000,
    out: Annotated[Path | None, typer.Option(help="JSON file for the result with every episode's return, written "
                                                  "before the video (default: RUN_DIR/eval.json)")] = None,
    env: Annotated[str | None, typer.Option(
        help="environment to evaluate in (default: the run's); needed for a run on your own module:Env, which "
             "is never imported from a file; another id must have the run's observation and action spaces")] = None,
) -> None:
    """Evaluate a run's policy on the true reward (and optionally record a video); any imitation algorithm's."""
    from mbirl.experiments.mairl_run import evaluate_run

    result = evaluate_run(run_dir, episodes, video=video, seed=seed, out=out if out is not None else
                          run_dir / "eval.json", env=env)
    typer.echo(json_text({k: v for k, v in result.items() if k != "returns"}))


@mairl_app.command("plot")
def mairl_plot(
    run_dirs: Annotated[list[Path], typer.Argument(help="run directories (their metrics.json)")],
    out: Annotated[Path, typer.Option(help="output figure (.png)")] = Path("runs/mairl_curves.png"),
    title: Annotated[str, typer.Option(help="figure title")] = "MAIRL learning curves",
) -> None:
    """Learning curves (normalised return vs environment steps), one line per run, grouped by environment."""
    from mbirl.experiments.mairl_run import plot_return_curves

    plot_return_curves(run_dirs, out, title=title)
    typer.echo(f"wrote {out}")


@mairl_app.command("models")
def mairl_models(
    ctx: typer.Context,
    demos: Annotated[Path | None, typer.Option(help="demonstrations of the environment (defines env and "
                                                    "normalisers)")] = None,
    out: Annotated[Path, typer.Option(help="output directory (model_errors.json, model_errors.png)")] = Path(
        "runs/model_errors"),
    steps: Annotated[int, typer.Option(help="environment steps of random + policy data")
                     ] = ModelComparisonConfig.steps,
    train_steps: Annotated[int, typer.Option(help="minibatch updates per model")] = ModelComparisonConfig.train_steps,
    seed: SeedOpt = ModelComparisonConfig.seed,
    models: Annotated[str, typer.Option(help="comma-separated model types")] = ",".join(ModelComparisonConfig.models),
    run_dir: Annotated[Path | None, typer.Option(help="MAIRL run whose noisy policy supplies half of the data "
                                                      "(default: the demonstrations)")] = None,
    ensemble_size: Annotated[int, typer.Option(help="also measure each model type as an ensemble of this many")
                             ] = ModelComparisonConfig.ensemble_size,
    device: DeviceOpt = ModelComparisonConfig.device,
    config: Annotated[Path | None, _config_opt(ModelComparisonConfig)] = None,
) -> None:
    """Train every forward model on the same replay data; report 1-step and open-loop multi-step errors on the same
    held-out episodes."""
    from mbirl.experiments.mairl_run import compare_models

    values = {"demos": demos, "steps": steps, "train_steps": train_steps, "seed": seed, "run_dir": run_dir,
              "ensemble_size": ensemble_size, "device": device,
              "models": tuple(k.strip() for k in models.split(",") if k.strip())}
    cfg = build_config(ctx, ModelComparisonConfig, _given(values), config)
    res = compare_models(cfg, out)
    for kind, r in res["models"].items():
        trust = (f"; disagreement vs error Spearman {r['disagreement_error_spearman']:.2f}"
                 if "disagreement_error_spearman" in r else "")
        typer.echo(f"{kind:20s} 1-step {r['one_step']:.2e}  {cfg.horizon}-step open loop {r['open_loop'][-1]:.2e}  "
                   f"({r['params']} parameters, {r['train_seconds']:.0f} s{trust})")
    typer.echo(f"outputs in {out}")
