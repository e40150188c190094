"""The imitation harness: every imitation algorithm trained, evaluated, checkpointed and resumed the same way.

An algorithm is a learner (:class:`mbirl.algorithms.learner.ImitationLearner`) registered in :data:`ALGORITHMS`
under the name ``--algo`` takes; :func:`run_imitation` trains one into a run directory
(:class:`mbirl.reporting.runs.RunDir`) that holds ``config.json`` (an :class:`ImitationRunConfig`: the run-level
fields, ``algo`` and one nested configuration per algorithm family), ``metrics.jsonl`` + TensorBoard events
(``tb/``), one row per iteration; ``checkpoints/last`` (the learner's complete state, so ``--resume`` continues
exactly) and the final ``metrics.json``:

* ``eval``: list of ``{env_steps, mean_return, normalized_return}``, one evaluation before training, one at the
  first iteration that reaches each multiple of ``eval_every`` environment steps and one when training ends;
* ``final_normalized_return``, ``best_normalized_return``, ``final_mean_return``, ``expert_return``,
  ``random_return``, ``env_steps``, ``iterations``, ``train_seconds``, ``seconds_per_1k_env_steps`` (null for
  learners that take no environment steps), ``torch_threads``, ``device`` (where the networks trained, e.g.
  ``cpu`` or ``cuda``), ``env_id``, ``algo``, ``seed``, plus the learner's
  own entries (:meth:`~mbirl.algorithms.learner.ImitationLearner.describe`).

Every evaluation is the same protocol: ``eval_episodes`` deterministic episodes with reset seeds
``EVAL_SEED + i`` (:data:`mbirl.algorithms.learner.EVAL_SEED`) on the true reward, normalised with the demo file's
expert and random returns (0 random, 1 expert). MAIRL's own run configuration (``MAIRLRunConfig``) and
``mbirl mairl train`` go through the same loop.
"""

from __future__ import annotations

import dataclasses
import math
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch

from mbirl.algorithms.adversarial_ppo import AdversarialPPOConfig, build_adversarial_ppo
from mbirl.algorithms.bc import BCConfig, build_bc
from mbirl.algorithms.dac import DACConfig, build_dac
from mbirl.algorithms.learner import ImitationLearner
from mbirl.algorithms.mairl import VARIANTS, MAIRLConfig, build_mairl
from mbirl.errors import InputError
from mbirl.experts.demos import DemoStats, demo_stats, normalized_return
from mbirl.experts.rollout import check_env_id
from mbirl.nets import DEFAULT_DEVICE, check_device, resolve_device
from mbirl.registry import Registry
from mbirl.reporting.checkpoint import load_checkpoint, restoring
from mbirl.reporting.runs import RunDir, checkpoint_stem
from mbirl.validation import check_output_path, config_from_dict, read_json

__all__ = ["ALGORITHMS", "BaseRunConfig", "ImitationRunConfig", "build_learner", "evaluate_imitation_run",
           "learner_components", "load_imitation_config", "run_imitation", "train_learner"]

ALGORITHMS = Registry[ImitationLearner]("algorithm")
"""The imitation algorithms by ``algo`` name; each factory takes ``cfg`` (an :class:`ImitationRunConfig`),
``demos`` (:class:`mbirl.experts.demos.DemoStats`) and ``device`` (a :class:`torch.device`) and builds the
learner."""

MAIRL_FAMILY = tuple(VARIANTS)
"""The ``algo`` names trained by the MAIRL trainer (configured by ``ImitationRunConfig.mairl``; the name is its
variant)."""


@ALGORITHMS.register("mgail")
@ALGORITHMS.register("mairl")
def _mairl(*, cfg: ImitationRunConfig, demos: DemoStats, device: torch.device) -> ImitationLearner:
    return build_mairl(cfg.mairl, demos, seed=cfg.seed, device=device)


@ALGORITHMS.register("bc")
def _bc(*, cfg: ImitationRunConfig, demos: DemoStats, device: torch.device) -> ImitationLearner:
    return build_bc(cfg.bc, demos, seed=cfg.seed, device=device)


@ALGORITHMS.register("dac")
def _dac(*, cfg: ImitationRunConfig, demos: DemoStats, device: torch.device) -> ImitationLearner:
    return build_dac(cfg.dac, demos, seed=cfg.seed, device=device)


@ALGORITHMS.register("airl")
@ALGORITHMS.register("gail")
def _adversarial_ppo(*, cfg: ImitationRunConfig, demos: DemoStats, device: torch.device) -> ImitationLearner:
    return build_adversarial_ppo(cfg.ppo, demos, discriminator=cfg.algo, seed=cfg.seed, device=device)


@dataclass(frozen=True)
class BaseRunConfig:
    """The run-level fields every imitation run has: the demonstrations, the budget, the seed and the evaluation and
    checkpoint schedule (validated on construction)."""

    demos: str
    """demonstration file written by ``mbirl expert demos`` (its metadata holds the env id and the expert's and
    random policy's mean returns used for normalisation)"""
    env: str = ""
    """environment id; must match the demo file's (empty: take it from the file)"""
    env_steps: int = 50_000
    """training budget in environment steps (warm-up included, evaluation excluded); learners that take no
    environment steps (``bc``) stop by their own rule"""
    seed: int = 0
    """seeds the networks, the sampling generators, the replay sampling and the environment resets"""
    eval_every: int = 5_000
    """environment steps between deterministic evaluations on the true reward"""
    eval_episodes: int = 10
    """episodes per evaluation (fixed reset seeds)"""
    checkpoint_every: int = 50
    """iterations between checkpoints (one is also written at every evaluation and at the end)"""
    device: str = DEFAULT_DEVICE
    """where the networks train: ``auto`` (CUDA when there is a GPU), ``cpu`` or ``cuda``
    (:func:`mbirl.nets.resolve_device`)"""

    RESUMABLE: ClassVar[tuple[str, ...]] = ("env_steps", "eval_every", "eval_episodes", "checkpoint_every", "device")
    """What ``--resume`` may change: how long the run goes, how often it reports and the device it trains on
    (checkpoints hold CPU tensors)."""
    PATHS: ClassVar[tuple[str, ...]] = ("demos",)
    """Input files: recorded absolute in ``config.json`` (:class:`~mbirl.reporting.runs.RunDir`)."""

    def __post_init__(self) -> None:
        for name in ("env_steps", "eval_every", "eval_episodes", "checkpoint_every"):
            if getattr(self, name) < 1:
                raise InputError(f"must be >= 1, got {getattr(self, name)}", field=name.replace("_", "-"))
        if self.seed < 0:
            raise InputError(f"must be >= 0, got {self.seed}", field="seed")
        check_device(self.device)

    def base_fields(self) -> dict[str, Any]:
        """The run-level fields as keyword arguments."""
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(BaseRunConfig)}


@dataclass(frozen=True)
class ImitationRunConfig(BaseRunConfig):
    """One imitation run of any registered algorithm (:data:`ALGORITHMS`): the run-level fields, the algorithm and
    its family's hyper-parameters (the other families' are recorded but unused)."""

    algo: str = "mairl"
    """the algorithm (:data:`ALGORITHMS` name): ``mairl``, ``mgail`` (the MAIRL trainer with the GAIL
    discriminator), ``bc`` (behaviour cloning), ``gail`` / ``airl`` (SB3 PPO generator) or ``dac``
    (Discriminator-Actor-Critic: SB3 SAC networks, absorbing states)"""
    mairl: MAIRLConfig = field(default_factory=MAIRLConfig)
    """hyper-parameters of ``mairl`` and ``mgail``; their ``variant`` follows ``algo`` (leave it out)"""
    bc: BCConfig = field(default_factory=BCConfig)
    """hyper-parameters of ``bc``"""
    ppo: AdversarialPPOConfig = field(default_factory=AdversarialPPOConfig)
    """hyper-parameters of ``gail`` and ``airl`` (their discriminator and PPO generator; unset PPO fields take the
    environment's preset)"""
    dac: DACConfig = field(default_factory=DACConfig)
    """hyper-parameters of ``dac`` (Discriminator-Actor-Critic: SAC generator, absorbing states)"""

    def __post_init__(self) -> None:
        super().__post_init__()
        ALGORITHMS.check(self.algo, field="algo")
        if self.algo in MAIRL_FAMILY and self.mairl.variant != self.algo:
            if self.mairl.variant != MAIRLConfig.variant:
                raise InputError(f"variant '{self.mairl.variant}' contradicts algo '{self.algo}' (the variant "
                                 "follows algo: set algo instead)", field="mairl.variant")
            object.__setattr__(self, "mairl", dataclasses.replace(self.mairl, variant=self.algo))
        if self.algo in MAIRL_FAMILY and self.mairl.warmup_steps >= self.env_steps:
            raise InputError(f"must be in [1, env_steps), got {self.mairl.warmup_steps}", field="mairl.warmup_steps")


def build_learner(cfg: ImitationRunConfig, demos: DemoStats | None = None, *,
                  device: str | torch.device | None = None) -> tuple[ImitationLearner, DemoStats]:
    """The learner of ``cfg`` (reads the demo file unless ``demos`` is given; writes nothing) on ``device``
    (default: the configuration's)."""
    where = resolve_device(cfg.device if device is None else device)
    demos = demos if demos is not None else demo_stats(cfg.demos, env=cfg.env or None)
    if cfg.env and cfg.env != demos.env_id:
        raise InputError(f"demos are for '{demos.env_id}', not '{cfg.env}'", source=cfg.demos, field="env")
    return ALGORITHMS.make(cfg.algo, cfg=cfg, demos=demos, device=where), demos


def learner_components(learner: ImitationLearner) -> dict[str, str]:
    """Role -> class name of a learner and of the networks it holds (what ``run.json`` records)."""
    from mbirl.reporting.provenance import component_name

    out = {"learner": component_name(learner)}
    for role, attr in (("policy", "policy"), ("dynamics", "model"), ("discriminator", "disc")):
        part = getattr(learner, attr, None)
        if part is not None:
            out[role] = component_name(part)
    return out


def run_imitation(cfg: ImitationRunConfig, run_dir: str | Path, *, resume: bool = False, progress: bool = True
                  ) -> dict[str, Any]:
    """Train (or resume) one run of ``cfg.algo``; writes everything into ``run_dir`` and returns the final
    metrics."""
    return train_learner(RunDir(run_dir, cfg, resume=resume), cfg, progress=progress)


def train_learner(run: RunDir, cfg: ImitationRunConfig, *, progress: bool = True) -> dict[str, Any]:
    """The harness's loop: train the learner of ``cfg`` in the opened run directory ``run`` (whose recorded
    configuration may be another layout of the same run, e.g. a ``MAIRLRunConfig``), evaluating on the
    schedule, logging every iteration and checkpointing; writes ``metrics.json`` and returns the metrics."""
    learner, demos = build_learner(cfg)
    evals: list[dict[str, float]] = []
    seconds = 0.0
    if run.state is not None:
        with restoring(run.checkpoint.with_suffix(".json")):
            learner.load_state_dict(run.state["trainer"])
            evals = [{k: float(v) for k, v in e.items()} for e in run.state["evals"]]
            seconds = float(run.state["seconds"])
            if not evals or not all(math.isfinite(v) for e in evals for v in e.values()) \
                    or any(set(e) != {"env_steps", "mean_return", "normalized_return"} for e in evals):
                raise ValueError("evals must be a non-empty list of finite evaluations")
    run.start(components=learner_components(learner))

    def save() -> None:
        run.save({"trainer": learner.state_dict(), "evals": evals, "seconds": seconds})

    def evaluate() -> dict[str, float]:
        ret = learner.evaluate(cfg.eval_episodes).mean_return
        row = {"env_steps": float(learner.env_steps), "mean_return": ret,
               "normalized_return": normalized_return(ret, demos.expert_return, demos.random_return)}
        evals.append(row)
        return row

    def info() -> str:
        return f"norm. return {evals[-1]['normalized_return']:.2f}"

    threads = torch.get_num_threads()
    label = f"{cfg.algo} {demos.env_id} seed {cfg.seed}"
    done, total = learner.progress(cfg.env_steps)
    with run.logger(resume_from_step=done + 1 if run.resumed else None) as log:
        if not evals:
            row = evaluate()
            log.log(0, **{"charts/eval_return": row["mean_return"],
                          "charts/eval_normalized_return": row["normalized_return"]})
            save()
        with run.progress(label, total, done, enabled=progress, info=info()) as update:
            next_eval = (int(evals[-1]["env_steps"]) // cfg.eval_every + 1) * cfg.eval_every
            while not learner.finished(cfg.env_steps):
                t0 = time.perf_counter()
                it = learner.iteration_step()
                seconds += time.perf_counter() - t0
                scalars = {**it.scalars, "charts/iteration": learner.iteration, "charts/seconds": seconds}
                if it.episode_returns:
                    scalars["charts/episode_return"] = float(np.mean(it.episode_returns))
                evaluated = learner.env_steps >= next_eval or learner.finished(cfg.env_steps)
                if evaluated:
                    row = evaluate()
                    next_eval = (learner.env_steps // cfg.eval_every + 1) * cfg.eval_every
                    scalars["charts/eval_return"] = row["mean_return"]
                    scalars["charts/eval_normalized_return"] = row["normalized_return"]
                done, total = learner.progress(cfg.env_steps)
                log.log(done, **scalars)
                if evaluated or learner.iteration % cfg.checkpoint_every == 0:
                    save()
                update(completed=min(done, total), info=info())
    if evals[-1]["env_steps"] < learner.env_steps:  # resumed with a budget already reached
        evaluate()
        save()
    metrics = {
        "env_id": demos.env_id, "algo": cfg.algo, **learner.describe(), "seed": cfg.seed,
        "eval": [{"env_steps": int(e["env_steps"]), "mean_return": e["mean_return"],
                  "normalized_return": e["normalized_return"]} for e in evals],
        "final_mean_return": evals[-1]["mean_return"],
        "final_normalized_return": evals[-1]["normalized_return"],
        "best_normalized_return": max(e["normalized_return"] for e in evals),
        "expert_return": demos.expert_return, "random_return": demos.random_return,
        "env_steps": learner.env_steps, "iterations": learner.iteration, "train_seconds": seconds,
        "seconds_per_1k_env_steps": 1000 * seconds / learner.env_steps if learner.env_steps else None,
        "torch_threads": threads, "device": str(resolve_device(cfg.device)),
    }
    run.finish(metrics)
    return metrics


def load_imitation_config(run_dir: str | Path, *, env: str | None = None) -> ImitationRunConfig:
    """The configuration of an imitation run directory, whichever way it was written: ``mbirl il train``'s
    :class:`ImitationRunConfig`, or ``mbirl mairl train``'s ``MAIRLRunConfig`` (nested or the old flat
    layout).

    ``env``: the environment id the user typed (``--env``); the recorded one may be ``module:Env`` only when it is
    this one (:func:`~mbirl.experts.rollout.check_env_id`)."""
    from mbirl.experiments.mairl_run import load_run_config

    path = Path(run_dir) / "config.json"
    if not path.is_file():
        raise InputError("not an imitation run directory (no config.json)", source=str(run_dir))
    data = read_json(path, what="run configuration")
    if isinstance(data, dict) and "algo" in data:
        with warnings.catch_warnings():  # a saved run's layout is not the user's to fix: no deprecation warning
            warnings.simplefilter("ignore", FutureWarning)
            cfg = config_from_dict(ImitationRunConfig, data, source=str(path))
    else:
        cfg = load_run_config(run_dir).to_imitation()
    if cfg.env:  # read from a file: a plain registered id, never module:Env (unless the user typed the same)
        check_env_id(cfg.env, source=str(path), field="env", trusted=env)
    return cfg


def _check_same_spaces(recorded: str, env: str) -> None:
    """Refuse to evaluate a policy trained on ``recorded`` in ``env`` when their observation or action spaces
    differ (the policy's inputs or outputs would mean something else)."""
    from mbirl.experts.rollout import make_env

    made = [make_env(recorded), make_env(env)]
    try:
        for name in ("observation", "action"):
            theirs, ours = (getattr(e, f"{name}_space") for e in made)
            if theirs != ours:
                raise InputError(f"the run was trained on {recorded} whose {name} space is {theirs}; {env}'s is "
                                 f"{ours}: its policy cannot be evaluated there", field="env", source=env)
    finally:
        for e in made:
            e.close()


def evaluate_imitation_run(run_dir: str | Path, episodes: int = 10, *, video: str | Path | None = None,
                           seed: int = 2_000_000, out: str | Path | None = None, env: str | None = None
                           ) -> dict[str, Any]:
    """Deterministic episodes of a run's last checkpointed policy (any algorithm); optionally an ``.mp4`` of the
    first episodes.

    Episode ``i`` resets with seed ``seed + i``; the default keeps clear of training's evaluations (1,000,000+).
    ``out`` (a ``.json`` path) receives the result, per-episode ``returns`` included, before any video is recorded,
    so a video that fails leaves the evaluation saved. ``env``: the environment to evaluate in, as the user typed
    it (default: the run's). A run recorded with a ``module:Env`` id (an environment of the user's own module,
    which a file may not make us import) is evaluated only with that id given here; another id must have the same
    observation and action spaces as the run's.
    """
    if out is not None:
        check_output_path(out, ".json")
    if episodes < 1:
        raise InputError(f"must be >= 1, got {episodes}", field="episodes")
    if seed < 0:
        raise InputError(f"must be >= 0, got {seed}", field="seed")
    if video is not None:
        check_output_path(video, ".mp4", field="video")
    if env is not None:
        from mbirl.experts.rollout import make_env

        make_env(env).close()  # the user's module first: it may register the id the run recorded
    cfg = load_imitation_config(run_dir, env=env)
    demos = demo_stats(cfg.demos, env=env or cfg.env or None)
    if env is not None and env != demos.env_id:
        _check_same_spaces(demos.env_id, env)
        demos.env_id = env
    # evaluation acts one observation at a time: on the CPU, whichever device trained the run
    learner, demos = build_learner(dataclasses.replace(cfg, env=demos.env_id), demos, device="cpu")
    stem = checkpoint_stem(run_dir)
    state = load_checkpoint(stem)
    with restoring(stem.with_suffix(".json")):
        learner.load_policy(state["trainer"])
        trained = int(state["trainer"]["env_steps"])
    result = learner.evaluate(episodes, seed=seed)
    result_row: dict[str, Any] = {
        "env_id": demos.env_id, "algo": cfg.algo, "episodes": episodes, "seed": seed,
        "returns": result.returns.tolist(), "mean_return": result.mean_return,
        "normalized_return": normalized_return(result.mean_return, demos.expert_return, demos.random_return),
        "env_steps_trained": trained,
    }
    if not math.isfinite(result_row["mean_return"]):
        raise InputError("evaluation produced a non-finite return", source=str(run_dir))
    if out is not None:
        from mbirl.fileio import write_json_atomic

        write_json_atomic(out, result_row)
    if video is not None:
        from mbirl.experts.rollout import record_video

        own = getattr(learner, "record_video", None)  # a learner that does not act on states (pixels) films itself
        path = own(video, seed=seed) if own is not None else record_video(learner.act_deterministic, demos.env_id,
                                                                          video, seed=seed)
        result_row["video"] = str(path)
        if out is not None:
            write_json_atomic(out, result_row)
    return result_row

