"""The transfer protocol (AIRL, Fu et al. 2018, section 7.1): does a learned reward still produce the demonstrated
behaviour when the dynamics change, where imitating the policy does not?

``run_transfer(cfg, out)`` runs, for one task of :data:`TRANSFER_TASKS` (environments: :mod:`mbirl.envs.transfer`),
each stage in its own run directory under ``out``:

1. ``expert/``: an SB3 SAC expert on the **source** environment's true reward (:func:`mbirl.experts.train
   .train_expert`) and its demonstrations ``demos.npz`` (skipped when ``cfg.demos`` names a demo file);
2. ``irl/mairl``, ``irl/airl``, ``irl/gail``: MAIRL with a state-only AIRL reward ``g(s)``, the model-free AIRL
   baseline (SB3 PPO generator, state-only) and GAIL (SB3 PPO), on the source, through the imitation harness
   (:func:`mbirl.experiments.imitation.run_imitation`);
3. ``rewards/<algo>.json``: each AIRL reward ``g(s)``, frozen (:class:`mbirl.rewards.learned.LearnedReward`);
4. ``target/mairl``, ``target/airl``: a fresh SB3 SAC on the **target** environment whose reward is the frozen one
   (:class:`~mbirl.rewards.learned.LearnedRewardWrapper`), standardised by its mean and standard deviation over the
   demonstrations' states (AIRL's ``g`` has an arbitrary scale and offset; SAC's entropy bonus does not);
   ``target/true_reward``: the same SAC on the target's true reward (the upper bound);
5. evaluation of every row on the target's true reward: deterministic episodes with reset seeds ``EVAL_SEED + i``,
   the GAIL policy applied unchanged (policy transfer) and a uniformly random policy (the lower bound), normalised
   as ``(R - R_random) / (R_true_reward - R_random)``.

The learned-reward rows report the **last** policy of their SAC run (the true reward never selects among
checkpoints: it is only logged). Finished stages are skipped on ``--resume``; the imitation stages continue from
their checkpoints exactly, and so do the SAC stages (:mod:`mbirl.experts.sb3_state`: networks, optimisers, replay
buffer, environments and RNGs, checkpointed after each of their evaluations).
``out/metrics.json`` holds ``normalized_return`` and ``mean_return`` per row, ``out/summary.md`` the table,
``out/figures/`` the bars, the SAC learning curves and (maze) the rows' paths on the target maze.
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch

from mbirl.errors import InputError
from mbirl.experts.train import ExpertPreset
from mbirl.nets import DEFAULT_DEVICE, check_device, resolve_device
from mbirl.reporting.runs import RunDir, checkpoint_stem

__all__ = ["TRANSFER_ROWS", "TRANSFER_TASKS", "SACStageConfig", "TransferRunConfig", "TransferTask", "run_transfer",
           "scripted_maze_demos", "train_sac_stage", "transfer_summary"]


@dataclass(frozen=True)
class TransferTask:
    """One transfer task: its environments and default budgets."""

    source: str
    """environment of the expert, the demonstrations and the reward learning"""
    target: str
    """environment the learned rewards are transferred to"""
    sac: ExpertPreset
    """SAC for the expert (on the source) and for every RL run on the target; ``steps`` is the target runs' budget"""
    expert_steps: int
    """the expert's environment steps"""
    demo_episodes: int
    """expert episodes saved as demonstrations"""
    irl_steps: int
    """environment steps of MAIRL, AIRL and GAIL on the source"""
    mairl: dict[str, Any] = field(default_factory=dict)
    """MAIRL settings (:class:`mbirl.algorithms.mairl.MAIRLConfig` fields) over the defaults; ``state_only`` is
    always set"""
    ppo: dict[str, Any] = field(default_factory=dict)
    """AIRL / GAIL settings (:class:`mbirl.algorithms.adversarial_ppo.AdversarialPPOConfig` fields)"""


TRANSFER_TASKS: dict[str, TransferTask] = {
    # small networks and batches: the point mass needs little, and on a shared 2-core machine SB3's default SAC
    # (256 x 256, batch 256) ran at 14 environment steps per second
    "maze": TransferTask("ShiftingMazeLeft-v0", "ShiftingMazeRight-v0",
                         ExpertPreset("sac", 20_000, {"learning_starts": 1_000, "batch_size": 128,
                                                      "policy_kwargs": {"net_arch": [64, 64]}}),
                         expert_steps=20_000, demo_episodes=20, irl_steps=20_000),
    "ant": TransferTask("TransferAnt-v5", "DisabledAnt-v5",
                        ExpertPreset("sac", 1_000_000, {"learning_starts": 10_000}), expert_steps=1_000_000,
                        demo_episodes=10, irl_steps=1_000_000),
}
"""The transfer tasks (``mbirl transfer run --task NAME``)."""

TRANSFER_ROWS: dict[str, str] = {
    "mairl": "SAC on the frozen MAIRL state-only reward g(s)",
    "airl": "SAC on the frozen model-free AIRL state-only reward g(s)",
    "gail_policy": "the GAIL policy applied unchanged (policy transfer)",
    "true_reward": "SAC on the target's true reward (upper bound)",
    "random": "uniformly random actions (lower bound)",
}
"""The rows of the results table, in order."""

RANDOM_EPISODES = 50
"""Episodes of the random row (its return is noisy)."""


@dataclass(frozen=True)
class TransferRunConfig:
    """``mbirl transfer run`` (validated on construction). Budgets left as None take the task's
    (:data:`TRANSFER_TASKS`)."""

    task: str = "maze"
    """``maze`` (shifting maze) or ``ant`` (disabled ant)"""
    seed: int = 0
    """seeds every stage (the expert, the demonstrations, each learner and SAC run)"""
    demos: str = ""
    """demonstrations of the source environment (empty: train an expert and generate them)"""
    expert_steps: int | None = None
    """the expert's SAC environment steps"""
    demo_episodes: int | None = None
    """expert episodes saved as demonstrations"""
    irl_steps: int | None = None
    """environment steps of MAIRL, AIRL and GAIL on the source"""
    rl_steps: int | None = None
    """environment steps of each SAC run on the target"""
    rows: tuple[str, ...] = tuple(TRANSFER_ROWS)
    """the rows to run (:data:`TRANSFER_ROWS`; ``true_reward`` and ``random`` are always run: they normalise)"""
    eval_episodes: int = 10
    """deterministic evaluation episodes of each row on the target"""
    eval_every: int = 5_000
    """environment steps between the (logged, never selecting) evaluations of the training runs"""
    random_episodes: int = RANDOM_EPISODES
    """episodes of the random row (its return is noisy)"""
    standardize_reward: bool = True
    """standardise each learned reward over the demonstrations' states before SAC trains on it"""
    videos: bool = True
    """record one deterministic target-environment episode of each row's policy (``out/videos/ROW.mp4``; MuJoCo
    offscreen through EGL)"""
    workers: int = 1
    """processes for the stages that do not depend on each other (MAIRL / AIRL / GAIL; the SAC runs on the
    target), one torch thread each; the results do not depend on it"""
    device: str = DEFAULT_DEVICE
    """where every stage's networks train: ``auto`` (CUDA when there is a GPU), ``cpu`` or ``cuda``
    (:func:`mbirl.nets.resolve_device`)"""

    RESUMABLE: ClassVar[tuple[str, ...]] = ("eval_every", "workers", "device", "videos")
    """What ``--resume`` may change (finished stages are kept whatever their budget was)."""
    PATHS: ClassVar[tuple[str, ...]] = ("demos",)

    def __post_init__(self) -> None:
        if self.task not in TRANSFER_TASKS:
            raise InputError(f"unknown task '{self.task}' (expected one of {', '.join(TRANSFER_TASKS)})",
                             field="task")
        for name in ("expert_steps", "demo_episodes", "irl_steps", "rl_steps", "eval_episodes", "eval_every",
                     "random_episodes"):
            value = getattr(self, name)
            if value is not None and not 1 <= value <= 100_000_000:
                raise InputError(f"must be in [1, 100000000], got {value}", field=name.replace("_", "-"))
        if self.seed < 0:
            raise InputError(f"must be >= 0, got {self.seed}", field="seed")
        if not 1 <= self.workers <= 16:
            raise InputError(f"must be in [1, 16], got {self.workers}", field="workers")
        check_device(self.device)
        unknown = [r for r in self.rows if r not in TRANSFER_ROWS]
        if unknown or not self.rows:
            raise InputError(f"unknown rows {', '.join(unknown) or '(none given)'} (expected some of "
                             f"{', '.join(TRANSFER_ROWS)})", field="rows")
        rows = tuple(r for r in TRANSFER_ROWS if r in self.rows or r in ("true_reward", "random"))
        object.__setattr__(self, "rows", rows)

    def budget(self, name: str) -> int:
        """``name``'s budget: this config's, or the task's default."""
        task = TRANSFER_TASKS[self.task]
        value = getattr(self, name)
        if value is not None:
            return int(value)
        return int(task.sac.steps if name == "rl_steps" else getattr(task, name))


@dataclass(frozen=True)
class SACStageConfig:
    """One SAC run on the target (a run directory of :func:`train_sac_stage`)."""

    task: str
    env: str
    """the environment trained and evaluated on"""
    reward: str = ""
    """learned reward file (``LearnedReward.save``'s ``.json``); empty: the environment's true reward"""
    reward_mean: float = 0.0
    reward_std: float = 1.0
    """the learned reward is used as ``(r - reward_mean) / reward_std``"""
    steps: int = 30_000
    seed: int = 0
    eval_every: int = 5_000
    eval_episodes: int = 10
    device: str = DEFAULT_DEVICE
    """where SAC's networks train (:func:`mbirl.nets.resolve_device`)"""

    RESUMABLE: ClassVar[tuple[str, ...]] = ("eval_every", "device")
    PATHS: ClassVar[tuple[str, ...]] = ("reward",)


def _eval_seed() -> int:
    from mbirl.algorithms.learner import EVAL_SEED

    return EVAL_SEED


def _evaluate(env_id: str, policy: Callable[[np.ndarray], Any], episodes: int, seed: int) -> np.ndarray:
    from mbirl.experts.rollout import make_env, run_episodes

    env = make_env(env_id)
    try:
        return np.asarray(run_episodes(env, policy, episodes, seed=seed).returns, np.float64)
    finally:
        env.close()


def _stage_open(path: Path, cfg: Any) -> RunDir | None:
    """A stage's run directory, or None when the stage has finished (its ``metrics.json`` exists). An unfinished
    stage continues from its checkpoint; one that has none starts afresh."""
    if (path / "metrics.json").exists():
        RunDir(path, cfg, resume=True).close()  # refuses a finished stage of another configuration
        return None
    if checkpoint_stem(path).with_suffix(".json").exists():
        return RunDir(path, cfg, resume=True)
    for name in ("config.json", "run.json", "metrics.jsonl"):
        (path / name).unlink(missing_ok=True)
    return RunDir(path, cfg)


def train_sac_stage(cfg: SACStageConfig, out: str | Path, *, sac_kwargs: dict[str, Any] | None = None,
                    progress: bool = True) -> dict[str, Any]:
    """Train SB3 SAC on ``cfg.env`` with its true reward or a frozen learned one; evaluate the final policy on the
    true reward. Writes ``out/{config,metrics}.json``, ``metrics.jsonl`` (true-reward evaluations along the way,
    logged only), a checkpoint after each evaluation (an interrupted stage continues from it exactly) and
    ``out/policy.{safetensors,json}``; returns the metrics (a finished stage's are read back)."""
    from stable_baselines3 import SAC
    from stable_baselines3.common.logger import Logger

    from mbirl.experts.policy import export_sb3_policy
    from mbirl.experts.rollout import make_env
    from mbirl.experts.sb3_state import SB3StateCapture, eval_checkpoint_callback, load_sb3_state
    from mbirl.reporting.checkpoint import restoring
    from mbirl.reporting.runs import rng_state, set_rng_state
    from mbirl.rewards.learned import LearnedReward, LearnedRewardWrapper
    from mbirl.validation import read_json

    out = Path(out)
    run = _stage_open(out, cfg)
    if run is None:
        metrics = read_json(out / "metrics.json")
        assert isinstance(metrics, dict)
        return metrics
    env = make_env(cfg.env)
    if cfg.reward:
        learned = LearnedReward.load(cfg.reward)
        mean, std = cfg.reward_mean, cfg.reward_std

        def reward_fn(o: np.ndarray, a: np.ndarray, o2: np.ndarray, d: np.ndarray | None) -> np.ndarray:
            return (learned(o, a, o2, d) - mean) / std

        env = LearnedRewardWrapper(env, reward_fn)
    torch.manual_seed(cfg.seed)
    model = SAC("MlpPolicy", env, seed=cfg.seed, verbose=0, device=resolve_device(cfg.device),
                **(sac_kwargs or {}))
    model.set_logger(Logger(folder=None, output_formats=[]))
    curve: list[dict[str, float]] = []
    spent = 0.0
    if run.state is not None:
        with restoring(run.checkpoint.with_suffix(".json")):
            load_sb3_state(model, run.state["sb3"])
            curve = [{"env_steps": int(c["env_steps"]), "mean_return": float(c["mean_return"])}
                     for c in run.state["curve"]]
            spent = float(run.state["seconds"])
            set_rng_state(run.state["rng"])
    resumed_at = int(model.num_timesteps) if run.resumed else None
    run.start()
    t0 = time.monotonic() - spent
    capture = SB3StateCapture(model, cfg.env, "this SAC stage writes no checkpoints and restarts if it is "
                              "interrupted")

    def save() -> None:
        state = capture()
        if state is not None:
            run.save({"sb3": state, "curve": curve, "seconds": time.monotonic() - t0, "rng": rng_state()})

    with run.logger(tensorboard=False, resume_from_step=None if resumed_at is None else resumed_at + 1) as log:

        def evaluate(steps: int) -> None:
            ret = _evaluate(cfg.env, export_sb3_policy(model).act, cfg.eval_episodes, _eval_seed())
            curve.append({"env_steps": steps, "mean_return": float(ret.mean())})
            log.log(steps, **{"charts/eval_true_return": float(ret.mean()),
                              "charts/seconds": time.monotonic() - t0})
            if progress:
                print(f"[{out}] {steps} steps: true return {ret.mean():.2f} ({time.monotonic() - t0:.0f}s)",
                      flush=True)

        callback = eval_checkpoint_callback(model, cfg.eval_every, evaluate, save, until=cfg.steps)
        model.learn(total_timesteps=max(cfg.steps - int(model.num_timesteps), 0), callback=callback,
                    reset_num_timesteps=resumed_at is None)
    policy = export_sb3_policy(model)
    policy.save(out / "policy", {"env_id": cfg.env, "algo": "sac", "env_steps": int(model.num_timesteps),
                                 "reward": cfg.reward or "true"})
    returns = _evaluate(cfg.env, policy.act, cfg.eval_episodes, _eval_seed())
    metrics = {"env_id": cfg.env, "reward": cfg.reward or "true", "env_steps": int(model.num_timesteps),
               "returns": returns.tolist(), "mean_return": float(returns.mean()),
               "std_return": float(returns.std()), "curve": curve, "seconds": time.monotonic() - t0}
    run.finish(metrics)
    env.close()
    return metrics


def _expert_and_demos(cfg: TransferRunConfig, out: Path, progress: bool) -> Path:
    """The demonstration file: ``cfg.demos``, or an expert trained on the source and its demonstrations."""
    from mbirl.experts.demos import generate_expert_demos
    from mbirl.experts.train import ExpertRunConfig, load_expert, train_expert

    task = TRANSFER_TASKS[cfg.task]
    if cfg.demos:
        return Path(cfg.demos)
    demos = out / "demos.npz"
    if demos.exists():
        return demos
    expert_dir = out / "expert"
    if not (expert_dir / "metrics.json").exists():
        steps = cfg.budget("expert_steps")
        ecfg = ExpertRunConfig(env=task.source, seed=cfg.seed, steps=steps,
                               eval_every=min(cfg.eval_every, steps), eval_episodes=cfg.eval_episodes,
                               device=cfg.device)
        train_expert(ecfg, expert_dir, progress=progress, preset=dataclasses.replace(task.sac, steps=steps),
                     overwrite=True)
    n = cfg.budget("demo_episodes")
    generate_expert_demos(task.source, load_expert(expert_dir), n, demos, seed=cfg.seed,
                          command=f"mbirl transfer run --task {cfg.task} --seed {cfg.seed} (stage 1; or: mbirl "
                                  f"expert demos --env {task.source} --expert {expert_dir} --n {n} --seed {cfg.seed})")
    return demos


def _init_worker() -> None:
    torch.set_num_threads(1)


def _run_all(jobs: dict[str, tuple[Callable[..., dict[str, Any]], tuple[Any, ...], dict[str, Any]]], workers: int
             ) -> dict[str, dict[str, Any]]:
    """``{name: fn(*args, **kwargs)}``, in up to ``workers`` processes (spawned: a fresh interpreter each)."""
    if workers <= 1 or len(jobs) <= 1:
        return {name: fn(*args, **kwargs) for name, (fn, args, kwargs) in jobs.items()}
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    with ProcessPoolExecutor(min(workers, len(jobs)), mp_context=multiprocessing.get_context("spawn"),
                             initializer=_init_worker) as pool:
        futures = {name: pool.submit(fn, *args, **kwargs) for name, (fn, args, kwargs) in jobs.items()}
        return {name: f.result() for name, f in futures.items()}


def scripted_maze_demos(n: int, out: str | Path, *, seed: int = 0) -> dict[str, Any]:
    """Demonstrations of the shifting maze's source (``ShiftingMazeLeft-v0``) from the scripted waypoint controller
    (:func:`mbirl.envs.transfer.maze_waypoint_policy`), with the random policy's return, as ``mbirl expert demos``
    writes them; returns the metadata."""
    from mbirl.data.demos import save_trajectories
    from mbirl.envs.transfer import maze_waypoint_policy
    from mbirl.experts.demos import RANDOM_EPISODES as DEMO_RANDOM_EPISODES
    from mbirl.experts.rollout import make_env, random_policy, run_episodes
    from mbirl.validation import check_output_path

    if not 1 <= n <= 10_000:
        raise InputError(f"must be in [1, 10000], got {n}", field="n")
    out = check_output_path(out, ".npz")
    env_id = TRANSFER_TASKS["maze"].source
    env = make_env(env_id)
    demos = run_episodes(env, maze_waypoint_policy("left"), n, seed=seed)
    rand = run_episodes(env, random_policy(env, seed + 1), DEMO_RANDOM_EPISODES, seed=seed + 100_000)
    env.close()
    meta: dict[str, Any] = {
        "env_id": env_id, "n": n, "seed": seed, "expert_mean_return": demos.mean_return,
        "expert_std_return": float(np.std(demos.returns)), "random_mean_return": rand.mean_return,
        "random_std_return": float(np.std(rand.returns)), "random_episodes": DEMO_RANDOM_EPISODES,
        "discrete": False, "command": f"mbirl transfer demos --task maze --n {n} --seed {seed} --out {out}",
        "expert": {"kind": "scripted waypoint controller (mbirl.envs.transfer.maze_waypoint_policy)"},
    }
    save_trajectories(out, demos.trajectories, meta)
    return meta


def _learn_rewards(cfg: TransferRunConfig, out: Path, demos: Path, progress: bool) -> dict[str, dict[str, Any]]:
    """Stage 2: MAIRL, AIRL and GAIL on the source, as the rows need them; returns their final metrics."""
    from mbirl.algorithms.adversarial_ppo import AdversarialPPOConfig
    from mbirl.algorithms.mairl import MAIRLConfig
    from mbirl.experiments.imitation import ImitationRunConfig, run_imitation
    from mbirl.validation import read_json

    task = TRANSFER_TASKS[cfg.task]
    steps = cfg.budget("irl_steps")
    wanted = [a for a, row in (("mairl", "mairl"), ("airl", "airl"), ("gail", "gail_policy")) if row in cfg.rows]
    results: dict[str, dict[str, Any]] = {}
    jobs: dict[str, tuple[Callable[..., dict[str, Any]], tuple[Any, ...], dict[str, Any]]] = {}
    for algo in wanted:
        run_dir = out / "irl" / algo
        if (run_dir / "metrics.json").exists():
            data = read_json(run_dir / "metrics.json")
            assert isinstance(data, dict)
            results[algo] = data
            continue
        mairl = MAIRLConfig(**{**task.mairl, "state_only": True,
                               "warmup_steps": min(MAIRLConfig.warmup_steps, steps // 2)})
        ppo = AdversarialPPOConfig(**{**task.ppo, "state_only": algo == "airl"})
        icfg = ImitationRunConfig(demos=str(demos), env=task.source, env_steps=steps, seed=cfg.seed,
                                  eval_every=min(cfg.eval_every, steps), eval_episodes=cfg.eval_episodes,
                                  algo=algo, mairl=mairl, ppo=ppo, device=cfg.device)
        jobs[algo] = (run_imitation, (icfg, run_dir), {"resume": True, "progress": progress and cfg.workers == 1})
    return {**results, **_run_all(jobs, cfg.workers)}


def _freeze_reward(out: Path, algo: str, demos: Path) -> tuple[Path, float, float]:
    """Stage 3: the run's unshaped ``g(s)``, saved as ``rewards/<algo>.json``, and its mean and standard deviation
    over the demonstrations' states."""
    from mbirl.experts.demos import demo_stats
    from mbirl.rewards.learned import LearnedReward

    reward = LearnedReward.load(out / "irl" / algo, term="g")
    if not reward.state_only:
        raise InputError(f"the {algo} reward is not state-only", source=str(out / "irl" / algo))
    path = reward.save(out / "rewards" / f"{algo}.json")
    d = demo_stats(demos)
    values = reward(d.obs, np.asarray(d.acts), d.next_obs, None)
    return path, float(values.mean()), float(max(values.std(), 1e-8))


def run_transfer(cfg: TransferRunConfig, out: str | Path, *, resume: bool = False, progress: bool = True
                 ) -> dict[str, Any]:
    """Run the transfer protocol of ``cfg.task`` into ``out`` (stages in the module docstring); returns the final
    metrics (also ``out/metrics.json``)."""
    from mbirl.experts.rollout import make_env, random_policy
    from mbirl.reporting.provenance import record_provenance

    task = TRANSFER_TASKS[cfg.task]
    out = Path(out)
    top = RunDir(out, cfg, resume=resume)
    top.start()
    t0 = time.monotonic()
    demos = _expert_and_demos(cfg, out, progress)
    learned = _learn_rewards(cfg, out, demos, progress)
    rl_steps = cfg.budget("rl_steps")
    sac_kwargs = dict(task.sac.kwargs)
    sac_kwargs["learning_starts"] = min(int(sac_kwargs.get("learning_starts", 100)), max(rl_steps // 10, 1))
    jobs: dict[str, tuple[Callable[..., dict[str, Any]], tuple[Any, ...], dict[str, Any]]] = {}
    for row in ("mairl", "airl", "true_reward"):
        if row not in cfg.rows:
            continue
        reward, mean, std = "", 0.0, 1.0
        if row != "true_reward":
            path, mean, std = _freeze_reward(out, row, demos)
            reward = str(path)
            if not cfg.standardize_reward:
                mean, std = 0.0, 1.0
        scfg = SACStageConfig(task=cfg.task, env=task.target, reward=reward, reward_mean=mean, reward_std=std,
                              steps=rl_steps, seed=cfg.seed, eval_every=min(cfg.eval_every, rl_steps),
                              eval_episodes=cfg.eval_episodes, device=cfg.device)
        jobs[row] = (train_sac_stage, (scfg, out / "target" / row), {"sac_kwargs": sac_kwargs, "progress": progress})
    rows = _run_all(jobs, cfg.workers)
    seed = _eval_seed()
    if "gail_policy" in cfg.rows:
        gail = _imitation_run(out / "irl" / "gail")
        returns = _evaluate(task.target, gail.policy.act, cfg.eval_episodes, seed)
        rows["gail_policy"] = {"returns": returns.tolist(), "mean_return": float(returns.mean()),
                               "std_return": float(returns.std())}
    env = make_env(task.target)
    returns = _evaluate(task.target, random_policy(env, cfg.seed + 1), cfg.random_episodes, seed)
    env.close()
    rows["random"] = {"returns": returns.tolist(), "mean_return": float(returns.mean()),
                      "std_return": float(returns.std())}
    lo, hi = rows["random"]["mean_return"], rows["true_reward"]["mean_return"]
    normalized = {r: _normalize(rows[r]["mean_return"], lo, hi) for r in TRANSFER_ROWS if r in rows}
    extra: dict[str, Any] = {}
    if cfg.task == "maze":  # a second yardstick that does not depend on the SAC run's budget
        from mbirl.envs.transfer import maze_waypoint_policy

        scripted = float(_evaluate(task.target, maze_waypoint_policy("right"), cfg.eval_episodes, seed).mean())
        extra = {"scripted_target_return": scripted,
                 "normalized_vs_scripted": {r: _normalize(rows[r]["mean_return"], lo, scripted) for r in rows}}
    metrics: dict[str, Any] = {
        "task": cfg.task, "source": task.source, "target": task.target, "seed": cfg.seed,
        "normalized_return": normalized,
        "mean_return": {r: rows[r]["mean_return"] for r in normalized},
        "std_return": {r: rows[r]["std_return"] for r in normalized},
        "returns": {r: rows[r]["returns"] for r in normalized},
        "source_normalized_return": {a: m.get("final_normalized_return") for a, m in learned.items()},
        "budgets": {name: cfg.budget(name) for name in ("expert_steps", "demo_episodes", "irl_steps", "rl_steps")
                    if not (cfg.demos and name in ("expert_steps", "demo_episodes"))},
        "demos": str(demos), "seconds_this_session": time.monotonic() - t0, **extra,
    }
    if cfg.videos:
        metrics["videos"] = _videos(out, task, [r for r in rows if r != "random"], seed)
    _figures(out, task, rows, normalized, demos)
    top.finish(metrics, summary=transfer_summary(metrics))
    record_provenance(out)
    return metrics


def _videos(out: Path, task: TransferTask, rows: list[str], seed: int) -> dict[str, str]:
    """One episode of each row's policy on the target (the first evaluation episode's reset seed); a video already
    recorded (a resumed run) is kept. Returns row -> path relative to ``out``."""
    from mbirl.experts.policy import ExpertPolicy
    from mbirl.experts.rollout import record_video

    made = {}
    for row in rows:
        path = out / "videos" / f"{row}.mp4"
        if not path.exists():
            if row == "gail_policy":
                act = _imitation_run(out / "irl" / "gail").policy.act
            else:
                act = ExpertPolicy.load(out / "target" / row / "policy")[0].act
            tmp = path.with_name(f".{path.stem}.partial.mp4")
            record_video(act, task.target, tmp, seed=seed)
            tmp.replace(path)
        made[row] = str(path.relative_to(out))
    return made


def _imitation_run(path: Path) -> Any:
    from mbirl.api import ImitationRun, load_run

    run = load_run(path)
    if not isinstance(run, ImitationRun):
        raise InputError("not an imitation run", source=str(path))
    return run


def _normalize(ret: float, lo: float, hi: float) -> float | None:
    return (ret - lo) / (hi - lo) if math.isfinite(ret) and hi - lo > 1e-12 else None


def transfer_summary(metrics: dict[str, Any]) -> str:
    """The results table (markdown) of a transfer run's ``metrics.json``."""
    lines = [f"# Transfer: {metrics['task']} ({metrics['source']} -> {metrics['target']}), seed {metrics['seed']}",
             "", "| row | what | return on the target | normalised |", "|---|---|---|---|"]
    for row, norm in metrics["normalized_return"].items():
        ret, sd = metrics["mean_return"][row], metrics["std_return"][row]
        lines.append(f"| `{row}` | {TRANSFER_ROWS[row]} | {ret:.2f} ± {sd:.2f} | "
                     f"{'n/a' if norm is None else f'{norm:.3f}'} |")
    if "scripted_target_return" in metrics:
        lines += ["", f"Scripted waypoint controller through the target's gap: {metrics['scripted_target_return']:.2f}"
                  " (normalised against it instead: " + ", ".join(
                      f"{r} {v:.3f}" for r, v in metrics["normalized_vs_scripted"].items() if v is not None) + ")."]
    lines += ["", "Normalised: (R - R_random) / (R_true_reward - R_random). Budgets: "
              + ", ".join(f"{k} {v}" for k, v in metrics["budgets"].items()) + "."]
    return "\n".join(lines) + "\n"


def _figures(out: Path, task: TransferTask, rows: dict[str, dict[str, Any]], normalized: dict[str, float | None],
             demos: Path) -> None:
    import matplotlib.pyplot as plt

    from mbirl.reporting.plots import save_figure

    fig, (ax, bx) = plt.subplots(1, 2, figsize=(11, 4))
    names = list(normalized)
    ax.bar(names, [normalized[n] or 0.0 for n in names], color="tab:blue")
    ax.axhline(1.0, color="k", lw=0.8, ls="--")
    ax.set_ylabel("normalised return on the target")
    ax.set_title(f"{task.source} -> {task.target}")
    ax.tick_params(axis="x", rotation=20)
    for name, data in rows.items():
        curve = data.get("curve")
        if curve:
            bx.plot([c["env_steps"] for c in curve] + [data["env_steps"]],
                    [c["mean_return"] for c in curve] + [data["mean_return"]], marker="o", label=name)
    bx.set_xlabel("SAC environment steps on the target")
    bx.set_ylabel("true return (logged, not used for selection)")
    if bx.lines:
        bx.legend()
    save_figure(fig, out / "figures" / "transfer.png")
    if task.target.startswith("ShiftingMaze"):
        _maze_paths(out, task, rows, demos)


def _maze_paths(out: Path, task: TransferTask, rows: dict[str, dict[str, Any]], demos: Path) -> None:
    """The first evaluation episode of each policy row drawn on the target maze beside the demonstrations on the
    source maze (walls grey, goal a star)."""
    import matplotlib.pyplot as plt

    from mbirl.envs.transfer import MAZE_GOAL, MAZE_MAPS
    from mbirl.experts.policy import ExpertPolicy
    from mbirl.experts.rollout import make_env, run_episodes
    from mbirl.reporting.plots import save_figure

    policies: dict[str, Callable[[np.ndarray], Any]] = {}
    for row in ("mairl", "airl", "true_reward"):
        if (out / "target" / row / "policy.json").exists():
            policies[row] = ExpertPolicy.load(out / "target" / row / "policy")[0].act
    if "gail_policy" in rows:
        policies["gail_policy"] = _imitation_run(out / "irl" / "gail").policy.act
    fig, axes = plt.subplots(1, 2, figsize=(10, 5))
    for ax, (env_id, title) in zip(axes, ((task.source, "source (demonstrations)"), (task.target, "target")),
                                   strict=True):
        grid = MAZE_MAPS["left" if "Left" in env_id else "right"]
        walls = np.asarray([[1.0 if c == 1 else 0.0 for c in r] for r in grid])
        h, w = walls.shape
        ax.imshow(walls, cmap="Greys", vmin=0, vmax=1.5, extent=(-w / 2, w / 2, -h / 2, h / 2))
        ax.plot(*MAZE_GOAL, marker="*", ms=18, color="gold", mec="k")
        ax.set_title(title)
        if env_id == task.target:
            env = make_env(env_id)
            for name, act in policies.items():
                traj = run_episodes(env, act, 1, seed=_eval_seed()).trajectories[0]
                ax.plot(traj.obs[:, 0], traj.obs[:, 1], label=name, lw=2)
            env.close()
            ax.legend(loc="lower right", fontsize=8)
        else:
            from mbirl.data.demos import load_trajectories

            if demos.exists():
                for traj in load_trajectories(demos)[0][:10]:
                    ax.plot(traj.obs[:, 0], traj.obs[:, 1], color="tab:green", alpha=0.6)
    save_figure(fig, out / "figures" / "maze_paths.png")

