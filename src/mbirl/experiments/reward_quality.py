"""Reward quality without RL: the EPIC distance (:mod:`mbirl.rewards.epic`) between a run's learned reward and the
task's true reward (``mbirl reward epic RUN_DIR``).

The distributions follow Gleave et al. (2021): coverage transitions are the demonstrations' plus as many from a
uniformly random policy (what the learner saw is somewhere between the two); ``D_S`` is drawn from the coverage
states and ``D_A`` uniformly from the action space. Every reward term the run's discriminator has is measured
(AIRL: the unshaped ``g``, the shaped ``f`` and the logit; GAIL: ``log D``, ``-log(1 - D)`` and the logit), with
the discount of the run's training.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from mbirl.errors import InputError
from mbirl.rewards.epic import TRUE_REWARDS, EpicSamples, epic_distance

__all__ = ["HEATMAP_GRIDS", "TABULAR_MODELS", "EpicConfig", "HeatmapGrid", "epic_of_run", "greedy_agreement",
           "reward_heatmap"]


@dataclass(frozen=True)
class EpicConfig:
    """``mbirl reward epic`` (validated on construction)."""

    coverage_steps: int = 5_000
    """random-policy transitions added to the demonstrations' as the coverage distribution"""
    mean_samples: int = 256
    """samples of ``D_S`` and ``D_A`` for the canonicalisation's expectations"""
    max_coverage: int = 10_000
    """at most this many coverage transitions are used (a random subset)"""
    seed: int = 0
    """seeds the random policy, its resets and the subsets"""

    def __post_init__(self) -> None:
        for name, low, high in (("coverage_steps", 0, 1_000_000), ("mean_samples", 2, 4096),
                                ("max_coverage", 2, 1_000_000)):
            value = getattr(self, name)
            if not low <= value <= high:
                raise InputError(f"must be in [{low}, {high}], got {value}", field=name.replace("_", "-"))
        if self.seed < 0:
            raise InputError(f"must be >= 0, got {self.seed}", field="seed")


def _random_transitions(env_id: str, steps: int, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    from mbirl.experts.rollout import make_env

    env = make_env(env_id)
    env.action_space.seed(seed)
    obs_l, act_l, next_l = [], [], []
    obs, _ = env.reset(seed=seed)
    episode = 0
    for _ in range(steps):
        a = env.action_space.sample()
        nxt, _, terminated, truncated, _ = env.step(a)
        obs_l.append(np.asarray(obs, np.float32))
        act_l.append(np.asarray(a))
        next_l.append(np.asarray(nxt, np.float32))
        obs = nxt
        if terminated or truncated:
            episode += 1
            obs, _ = env.reset(seed=seed + episode)
    env.close()
    return np.stack(obs_l), np.stack(act_l), np.stack(next_l)


def _terms(reward: Any) -> list[str]:
    """The reward terms this learned reward has (:data:`mbirl.rewards.learned.TERMS`)."""
    from mbirl.rewards.learned import TERMS

    out = []
    for term in TERMS:
        try:
            reward.with_term(term)
        except InputError:
            continue
        out.append(term)
    return out


def epic_of_run(run_dir: str | Path, cfg: EpicConfig | None = None) -> dict[str, Any]:
    """EPIC distances of every reward term of the run in ``run_dir`` to its task's true reward."""
    from mbirl.api import ImitationRun, load_run
    from mbirl.experts.demos import demo_stats
    from mbirl.experts.rollout import make_env

    cfg = cfg or EpicConfig()
    run = load_run(run_dir)
    if not isinstance(run, ImitationRun) or run.reward is None:
        raise InputError("needs an adversarial imitation run (mairl, mgail, gail, airl or dac): it has no "
                         "per-step learned reward", source=str(run_dir))
    true = TRUE_REWARDS.get(run.env_id)
    if true is None:
        raise InputError(f"no true reward is known for '{run.env_id}' (known: {', '.join(TRUE_REWARDS)})",
                         source=str(run_dir), field="env")
    demos = demo_stats(run.config.demos, env=run.config.env or None)
    rng = np.random.default_rng(cfg.seed)
    parts = [(demos.obs, np.asarray(demos.acts), demos.next_obs)]
    if cfg.coverage_steps > 0:
        parts.append(_random_transitions(run.env_id, cfg.coverage_steps, cfg.seed))
    obs = np.concatenate([p[0] for p in parts]).astype(np.float64)
    act = np.concatenate([np.asarray(p[1], np.float64).reshape(len(p[0]), -1) for p in parts])
    nxt = np.concatenate([p[2] for p in parts]).astype(np.float64)
    if len(obs) > cfg.max_coverage:
        keep = rng.choice(len(obs), size=cfg.max_coverage, replace=False)
        obs, act, nxt = obs[keep], act[keep], nxt[keep]
    env = make_env(run.env_id)
    env.action_space.seed(cfg.seed)
    actions = np.stack([np.asarray(env.action_space.sample(), np.float64) for _ in range(cfg.mean_samples)])
    env.close()
    states = obs[rng.choice(len(obs), size=cfg.mean_samples, replace=len(obs) < cfg.mean_samples)]
    samples = EpicSamples(obs, act, nxt, states, actions.reshape(cfg.mean_samples, -1))
    gamma = float(run.reward.spec.kwargs.get("gamma", 0.99))
    discrete = hasattr(env.action_space, "n")

    def as_reward(term: str) -> Any:
        reward = run.reward.with_term(term)  # type: ignore[union-attr]

        def fn(o: np.ndarray, a: np.ndarray, o2: np.ndarray) -> np.ndarray:
            acts = a.reshape(len(a)).astype(np.int64) if discrete else a.astype(np.float32)
            return reward(o.astype(np.float32), acts, o2.astype(np.float32), None)
        return fn

    distances = {term: epic_distance(as_reward(term), true, samples, gamma) for term in _terms(run.reward)}
    return {"run_dir": str(run.path), "algo": run.algo, "env_id": run.env_id, "env_steps": run.env_steps,
            "default_term": run.reward.term, "gamma": gamma, "coverage_transitions": len(obs),
            "demo_transitions": len(demos.obs), "mean_samples": cfg.mean_samples, "seed": cfg.seed,
            "epic": distances}


@dataclass(frozen=True)
class HeatmapGrid:
    """Two state variables drawn against each other, and how they make an observation."""

    x_label: str
    y_label: str
    x_range: tuple[float, float]
    y_range: tuple[float, float]
    to_obs: Callable[[np.ndarray, np.ndarray], np.ndarray]
    """``(x (N,), y (N,)) -> observations (N, obs_dim)``"""


def _pendulum_obs(theta: np.ndarray, theta_dot: np.ndarray) -> np.ndarray:
    return np.stack([np.cos(theta), np.sin(theta), theta_dot], -1)


def _grid_obs(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    from mbirl.envs.gridworld import GRID_SIZE

    cell = np.clip(np.rint(y), 0, GRID_SIZE - 1).astype(int) * GRID_SIZE + np.clip(np.rint(x), 0, GRID_SIZE - 1)
    out: np.ndarray = np.eye(GRID_SIZE * GRID_SIZE, dtype=np.float32)[cell.astype(int)]
    return out


def _maze_obs(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    return np.stack([x, y, np.zeros_like(x), np.zeros_like(x)], -1)  # the point at rest


HEATMAP_GRIDS: dict[str, HeatmapGrid] = {
    "Pendulum-v1": HeatmapGrid("angle θ (rad, 0 = upright)", "angular velocity θ̇ (rad/s)", (-np.pi, np.pi),
                               (-8.0, 8.0), _pendulum_obs),
    # the shifting maze's free 3 x 3 cells (mbirl.envs.transfer.MAZE_MAPS), the point at rest
    "ShiftingMazeLeft-v0": HeatmapGrid("x", "y", (-1.5, 1.5), (-1.5, 1.5), _maze_obs),
    "ShiftingMazeRight-v0": HeatmapGrid("x", "y", (-1.5, 1.5), (-1.5, 1.5), _maze_obs),
    # mbirl.envs.gridworld's cells (x right, y up)
    "MudGrid-v0": HeatmapGrid("cell x", "cell y", (-0.5, 7.5), (-0.5, 7.5), _grid_obs),
}
"""The state plane each task's reward is drawn over."""


def reward_heatmap(run_dir: str | Path, out: str | Path, *, term: str | None = None, resolution: int = 101
                   ) -> dict[str, Any]:
    """Draw the run's learned reward (``term``; default: the run's own) over its task's state plane
    (:data:`HEATMAP_GRIDS`) next to the true reward, at action 0 and ``s' = s`` (the state-only ``g(s)`` needs
    neither). States that end an episode (the task's termination rule, :mod:`mbirl.dynamics.termination`) are
    never a current state, so a reward of the current state is not defined there: they are left blank and out of
    the statistics. Both maps are standardised (z-scores over the drawn states, colours clipped to their 2nd-98th
    percentiles), so shapes compare whatever the reward's scale. Returns the Pearson and Spearman correlations of
    the two over the drawn states, with the figure's path."""
    import matplotlib.pyplot as plt

    from mbirl.api import ImitationRun, load_run
    from mbirl.reporting.plots import save_figure

    if not 11 <= resolution <= 1001:
        raise InputError(f"must be in [11, 1001], got {resolution}", field="resolution")
    run = load_run(run_dir)
    if not isinstance(run, ImitationRun) or run.reward is None:
        raise InputError("needs an adversarial imitation run (mairl, mgail, gail, airl or dac)", source=str(run_dir))
    grid, true = HEATMAP_GRIDS.get(run.env_id), TRUE_REWARDS.get(run.env_id)
    if grid is None or true is None:
        raise InputError(f"no heat-map grid is defined for '{run.env_id}' (defined: {', '.join(HEATMAP_GRIDS)})",
                         source=str(run_dir), field="env")
    reward = run.reward if term is None else run.reward.with_term(term)
    xs, ys = np.linspace(*grid.x_range, resolution), np.linspace(*grid.y_range, resolution)
    xx, yy = np.meshgrid(xs, ys)
    obs = grid.to_obs(xx.ravel(), yy.ravel()).astype(np.float32)
    act_dim = int(reward.spec.kwargs.get("act_dim", 1))
    act = (np.zeros(len(obs), np.int64) if reward.spec.action == "onehot" else
           np.zeros((len(obs), act_dim), np.float32))
    learned = reward(obs, act, obs, None).reshape(xx.shape)
    truth = true(obs.astype(np.float64), act.astype(np.float64), obs.astype(np.float64)).reshape(xx.shape)
    import torch

    from mbirl.dynamics.termination import termination_fn
    from mbirl.reporting.stats import spearman

    drawn = ~termination_fn(run.env_id)[0](torch.as_tensor(obs)).numpy().reshape(xx.shape)
    if drawn.sum() < 2:
        raise InputError("no state of the grid can be a current state", field="env")
    t, lr = truth[drawn], learned[drawn]
    corr = float(np.corrcoef(t, lr)[0, 1]) if t.std() > 0 and lr.std() > 0 else 0.0
    rank = spearman(t, lr)
    fig, axes = plt.subplots(1, 2, figsize=(10, 4), sharey=True)
    for ax, values, title in zip(axes, (truth, learned), ("true reward", f"learned {reward.term} ({run.algo})"),
                                 strict=True):
        zs = np.where(drawn, (values - values[drawn].mean()) / (values[drawn].std() + 1e-12), np.nan)
        low, high = np.nanpercentile(zs, [2, 98])
        im = ax.imshow(zs, origin="lower", aspect="auto", cmap="viridis", vmin=low, vmax=max(high, low + 1e-9),
                       extent=(xs[0], xs[-1], ys[0], ys[-1]))
        ax.set_title(f"{title}, standardised")
        ax.set_xlabel(grid.x_label)
        fig.colorbar(im, ax=ax)
    axes[0].set_ylabel(grid.y_label)
    fig.suptitle(f"{run.env_id}: reward at action 0 (correlation over the drawn states: Pearson {corr:.2f}, "
                 f"Spearman {rank:.2f})")
    path = save_figure(fig, out)
    return {"figure": str(path), "term": reward.term, "pearson": corr, "spearman": rank, "env_id": run.env_id,
            "states_drawn": int(drawn.sum()), "states_blank": int((~drawn).sum())}


def _mud_grid_model() -> Any:
    from mbirl.envs.gridworld import mud_grid_model

    return mud_grid_model()


def _mud_grid_goal_only(obs: np.ndarray, act: np.ndarray, next_obs: np.ndarray) -> np.ndarray:
    from mbirl.envs.gridworld import REWARD_MUD, REWARD_STEP, mud_grid_true_reward

    r = mud_grid_true_reward(obs, act, next_obs)
    out: np.ndarray = np.where(r == REWARD_MUD, REWARD_STEP, r)
    return out


TABULAR_MODELS: dict[str, Callable[[], Any]] = {"MudGrid-v0": _mud_grid_model}
"""Tasks whose dynamics are known as a table (:class:`mbirl.envs.gridworld.TabularModel`), so a learned reward can
be optimised exactly."""

REFERENCE_REWARDS: dict[str, dict[str, Callable[[np.ndarray, np.ndarray, np.ndarray], np.ndarray]]] = {
    "MudGrid-v0": {"goal only (the mud unknown)": _mud_grid_goal_only},
}
"""Rewards whose greedy agreement puts a learned reward's in context (what knowing part of the task gives)."""


def greedy_agreement(run_dir: str | Path) -> dict[str, Any]:
    """The greedy policy of each reward term of the run, optimised exactly (value iteration on the task's known
    tabular dynamics, the run's discount), against the expert's: the fraction of non-terminal states where the
    greedy action is optimal under the true reward (ties count: a state may have several optimal moves), and where
    it is the demonstrator's action on the states the demonstrations visit."""
    from mbirl.api import ImitationRun, load_run
    from mbirl.envs.gridworld import optimal_actions, value_iteration
    from mbirl.experts.demos import demo_stats

    run = load_run(run_dir)
    if not isinstance(run, ImitationRun) or run.reward is None:
        raise InputError("needs an adversarial imitation run (mairl, mgail, gail, airl or dac)", source=str(run_dir))
    make_model, true = TABULAR_MODELS.get(run.env_id), TRUE_REWARDS.get(run.env_id)
    if make_model is None or true is None:
        raise InputError(f"the greedy policy needs known tabular dynamics; none for '{run.env_id}' (known: "
                         f"{', '.join(TABULAR_MODELS)})", source=str(run_dir), field="env")
    model = make_model()
    n_s, n_a = model.n_states, model.n_actions
    states = np.repeat(np.arange(n_s), n_a)
    actions = np.tile(np.arange(n_a), n_s)
    nxt = model.next_state[states, actions]
    eye = np.eye(n_s, dtype=np.float32)
    done = model.terminal[nxt].astype(np.float32)
    gamma = float(run.reward.spec.kwargs.get("gamma", 0.99))
    q_true = value_iteration(model, true(eye[states], actions, eye[nxt]).reshape(n_s, n_a), gamma)
    expert = optimal_actions(q_true)
    live = ~model.terminal
    demos = demo_stats(run.config.demos, env=run.config.env or None)
    demo_states = np.asarray(demos.obs).argmax(-1)
    demo_actions = np.asarray(demos.acts).reshape(len(demo_states)).astype(np.int64)
    result: dict[str, Any] = {
        "run_dir": str(run.path), "algo": run.algo, "env_id": run.env_id, "gamma": gamma,
        "default_term": run.reward.term, "states": int(live.sum()),
        "demo_transitions": len(demo_states), "demo_states": int(len(np.unique(demo_states))),
        "demonstrator_optimal": float(expert[demo_states, demo_actions].mean()), "terms": {}}
    def agreement(reward: np.ndarray) -> tuple[float, np.ndarray]:
        greedy = value_iteration(model, reward.reshape(n_s, n_a), gamma).argmax(1)
        return float(expert[np.arange(n_s), greedy][live].mean()), greedy

    for term in _terms(run.reward):
        share, greedy = agreement(run.reward.with_term(term)(eye[states], actions, eye[nxt], done))
        result["terms"][term] = {"agreement": share, "demo_agreement": float((greedy[demo_states] ==
                                                                              demo_actions).mean()),
                                 "greedy": greedy.tolist()}
    result["references"] = {name: agreement(fn(eye[states], actions, eye[nxt]))[0]
                            for name, fn in REFERENCE_REWARDS.get(run.env_id, {}).items()}
    return result
