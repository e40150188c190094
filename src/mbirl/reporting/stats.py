"""Statistics of a sweep's runs (rliable): interquartile means with stratified-bootstrap confidence intervals,
sample-efficiency curves, performance profiles, probability of improvement, steps to a threshold and wall-clock.

Scores are normalised returns (0 random policy, 1 expert). A score matrix has shape ``(runs, environments)``
(rliable's ``(num_runs, num_tasks)``); a curve tensor ``(runs, environments, points)``. The bootstrap resamples
runs within each environment (stratified); with ``seed`` it is reproducible (rliable draws from numpy's global
generator, which is seeded for the call and restored afterwards).

Curves are read step-wise: a run's score at ``n`` environment steps is that of its last evaluation at or before
``n``, an evaluation counting at the step it was scheduled for (the multiple of ``eval_every`` it was taken at;
the last one at the run's budget) since training reaches a multiple within one iteration.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from mbirl.errors import InputError
from mbirl.validation import read_json

__all__ = ["ReportConfig", "RunRecord", "curve_matrix", "final_matrix", "interval_estimate", "iqm",
           "load_sweep_runs", "performance_profiles", "probability_of_improvement", "sample_efficiency",
           "scheduled_steps", "spearman", "step_values", "steps_to_threshold", "summarize"]


def spearman(x: np.ndarray, y: np.ndarray) -> float:
    """Rank correlation of two samples: the Pearson correlation of their ranks (ties ranked in order of
    appearance)."""
    rx, ry = np.argsort(np.argsort(np.asarray(x))), np.argsort(np.argsort(np.asarray(y)))
    return float(np.corrcoef(rx, ry)[0, 1])


@dataclass(frozen=True)
class ReportConfig:
    """What ``mbirl bench report`` computes."""

    budgets: tuple[int, ...] = (10_000, 30_000, 100_000)
    """environment-step budgets at which the IQM is reported besides the final one (those above the sweep's
    largest budget are left out)"""
    threshold: float = 0.9
    """normalised return whose first attainment is counted in environment steps"""
    reference: str = "mairl"
    """the algorithm whose probability of improvement over each other one is reported"""
    reps: int = 2_000
    """bootstrap resamples per confidence interval"""
    confidence: float = 0.95
    """confidence level of the intervals"""
    grid_points: int = 21
    """points of the sample-efficiency curves (0 to the largest budget, evenly spaced)"""
    seed: int = 0
    """seed of the bootstrap"""
    videos: bool = False
    """record one rollout video per (environment, algorithm) (the smallest seed's run) for the HTML report"""
    epic: bool = True
    """the EPIC distance of every finished run's learned reward (its default term) to the true reward, where the
    environment's true reward is known (:data:`mbirl.rewards.epic.TRUE_REWARDS`) and the run learned one"""

    def __post_init__(self) -> None:
        if any(b < 1 for b in self.budgets):
            raise InputError(f"must be >= 1, got {list(self.budgets)}", field="budgets")
        if self.reps < 10:
            raise InputError(f"must be >= 10, got {self.reps}", field="reps")
        if not 0 < self.confidence < 1:
            raise InputError(f"must be in (0, 1), got {self.confidence}", field="confidence")
        if self.grid_points < 2:
            raise InputError(f"must be >= 2, got {self.grid_points}", field="grid-points")


# --------------------------------------------------------------------------------------------------- the runs


@dataclass
class RunRecord:
    """One run directory of a sweep: where it is, what it was and (when finished) its metrics."""

    env: str
    algo: str
    seed: int
    path: Path
    config: dict[str, Any] | None = None
    metrics: dict[str, Any] | None = None
    videos: list[Path] = field(default_factory=list)

    @property
    def name(self) -> str:
        return f"{self.env}/{self.algo}/s{self.seed}"

    @property
    def finished(self) -> bool:
        return self.metrics is not None

    def evals(self) -> tuple[np.ndarray, np.ndarray]:
        """The evaluations' actual environment steps and normalised returns."""
        assert self.metrics is not None
        rows = self.metrics["eval"]
        return (np.array([r["env_steps"] for r in rows], dtype=np.int64),
                np.array([r["normalized_return"] for r in rows], dtype=np.float64))

    def scheduled_evals(self) -> tuple[np.ndarray, np.ndarray]:
        """The evaluations at their scheduled steps (see :func:`scheduled_steps`) and normalised returns."""
        steps, values = self.evals()
        cfg = self.config or {}
        return scheduled_steps(steps, cfg.get("eval_every"), cfg.get("env_steps")), values

    @property
    def budget(self) -> int:
        return int((self.config or {}).get("env_steps", 0))


def load_sweep_runs(sweep_dir: str | Path) -> list[RunRecord]:
    """Every run directory of a sweep (``<env>/<algo>/s<seed>``, in ``sweep.json``'s order when it has one),
    finished or not."""
    root = Path(sweep_dir)
    if not root.is_dir():
        raise InputError("not a directory", source=str(root))
    record = root / "sweep.json"
    names: list[tuple[str, str, int]] = []
    if record.is_file():
        data = read_json(record, what="sweep record")
        try:
            names = [(str(t["env"]), str(t["algo"]), int(t["seed"])) for t in data["trials"]]
        except (KeyError, TypeError, ValueError):
            raise InputError("expected a list of {env, algo, seed}", source=str(record), field="trials") from None
    else:
        for p in sorted(root.glob("*/*/s*/config.json")):
            tag = p.parent.name[1:]
            if tag.isdigit():
                names.append((p.parent.parent.parent.name, p.parent.parent.name, int(tag)))
    if not names:
        raise InputError("no runs found (expected sweep.json or <env>/<algo>/s<seed>/ run directories)",
                         source=str(root))
    runs = []
    for env, algo, seed in names:
        path = root / env / algo / f"s{seed}"
        run = RunRecord(env, algo, seed, path)
        if (path / "config.json").is_file():
            run.config = read_json(path / "config.json", what="run configuration")
        if (path / "metrics.json").is_file():
            m = read_json(path / "metrics.json", what="run metrics")
            if not isinstance(m, dict) or not m.get("eval"):
                raise InputError("expected an eval list", source=str(path / "metrics.json"), field="eval")
            run.metrics = m
        run.videos = sorted(path.rglob("*.mp4")) if path.is_dir() else []
        runs.append(run)
    return runs


# ------------------------------------------------------------------------------------------ per-run quantities


def scheduled_steps(steps: np.ndarray, eval_every: int | None, budget: int | None) -> np.ndarray:
    """Each evaluation's scheduled step: the multiple of ``eval_every`` it was taken at (training passes it within
    one iteration), the last one capped at the run's ``budget``. Without ``eval_every``, the steps as they are."""
    steps = np.asarray(steps, dtype=np.int64)
    if not eval_every or len(steps) == 0:
        return steps
    out = steps // int(eval_every) * int(eval_every)
    if budget:
        out[-1] = min(int(steps[-1]), int(budget))
    return np.maximum.accumulate(out)  # never decreasing


def step_values(steps: Sequence[float] | np.ndarray, values: Sequence[float] | np.ndarray,
                grid: Sequence[float] | np.ndarray) -> np.ndarray:
    """Step-wise interpolation: at each grid point, the value of the last evaluation at or before it (NaN before
    the first one). ``steps`` must not decrease."""
    s, v, g = np.asarray(steps, dtype=np.float64), np.asarray(values, dtype=np.float64), np.asarray(grid, np.float64)
    if s.shape != v.shape or s.ndim != 1 or len(s) == 0:
        raise ValueError("steps and values must be 1-D of the same, non-zero length")
    if np.any(np.diff(s) < 0):
        raise ValueError("steps must not decrease")
    idx = np.searchsorted(s, g, side="right") - 1
    return np.where(idx >= 0, v[np.clip(idx, 0, None)], np.nan)


def steps_to_threshold(steps: Sequence[float] | np.ndarray, values: Sequence[float] | np.ndarray,
                       threshold: float) -> int | None:
    """Environment steps of the first evaluation whose value reaches ``threshold`` (None: never)."""
    hit = np.flatnonzero(np.asarray(values, dtype=np.float64) >= threshold)
    return int(np.asarray(steps)[hit[0]]) if len(hit) else None


# ------------------------------------------------------------------------------------------------- statistics


def iqm(scores: np.ndarray) -> float:
    """Interquartile mean of all scores (rliable's ``aggregate_iqm``: the mean of the middle 50%)."""
    metrics = _rliable("metrics")
    return float(metrics.aggregate_iqm(np.asarray(scores, dtype=np.float64)))


def _rliable(module: str) -> Any:
    from mbirl.experiments.sweep import bench_import

    return bench_import(f"rliable.{module}")


@contextmanager
def _seeded(seed: int) -> Iterator[None]:
    state = np.random.get_state()  # noqa: NPY002 (rliable's bootstrap draws from the global generator)
    np.random.seed(seed)  # noqa: NPY002
    try:
        yield
    finally:
        np.random.set_state(state)  # noqa: NPY002


def _trim_mean(a: np.ndarray, axis: int = 0) -> np.ndarray:
    """The 25% trimmed mean along ``axis`` (``scipy.stats.trim_mean(a, 0.25, axis)``, which rliable's IQM is,
    without scipy's per-call overhead: the bootstrap calls it thousands of times)."""
    n = a.shape[axis]
    lo = int(0.25 * n)
    return np.asarray(np.take(np.sort(a, axis=axis), np.arange(lo, n - lo), axis=axis).mean(axis=axis))


def _iqm_columns(scores: np.ndarray) -> np.ndarray:
    """IQM over runs and environments of each point: ``(runs, envs, points)`` -> ``(points,)``."""
    return _trim_mean(scores.reshape(-1, scores.shape[-1]), axis=0)


def _improvement(x: np.ndarray, y: np.ndarray) -> float:
    """rliable's ``probability_of_improvement`` (the Mann-Whitney U statistic over ``runs_x * runs_y`` per
    environment, averaged over environments), vectorised."""
    gt = (x[:, None, :] > y[None, :, :]).mean(axis=(0, 1))
    eq = (x[:, None, :] == y[None, :, :]).mean(axis=(0, 1))
    return float(np.mean(gt + 0.5 * eq))


def interval_estimate(scores: np.ndarray, *, reps: int = ReportConfig.reps,
                      confidence: float = ReportConfig.confidence, seed: int = ReportConfig.seed
                      ) -> tuple[float, float, float]:
    """IQM of a ``(runs, envs)`` score matrix and its stratified-bootstrap confidence interval."""
    point, low, high = _intervals(np.asarray(scores, np.float64)[..., None], reps=reps, confidence=confidence,
                                  seed=seed)
    return float(point[0]), float(low[0]), float(high[0])


def _intervals(scores: np.ndarray, *, reps: int, confidence: float, seed: int
               ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    if scores.ndim != 3 or scores.shape[0] < 1 or scores.shape[1] < 1:
        raise ValueError(f"expected a (runs, envs, points) array, got shape {scores.shape}")
    if not np.isfinite(scores).all():
        raise ValueError("scores must be finite")
    library = _rliable("library")
    with _seeded(seed):
        points, cis = library.get_interval_estimates({"x": scores}, _iqm_columns, reps=reps,
                                                     confidence_interval_size=confidence)
    low, high = np.asarray(cis["x"], dtype=np.float64)
    point = np.asarray(points["x"], dtype=np.float64)
    return point, np.minimum(low, point), np.maximum(high, point)


def sample_efficiency(curves: np.ndarray, *, reps: int = ReportConfig.reps,
                      confidence: float = ReportConfig.confidence, seed: int = ReportConfig.seed
                      ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """IQM at each point of a ``(runs, envs, points)`` curve tensor, with its confidence band (low, high)."""
    return _intervals(np.asarray(curves, dtype=np.float64), reps=reps, confidence=confidence, seed=seed)


def probability_of_improvement(x: np.ndarray, y: np.ndarray, *, reps: int = ReportConfig.reps,
                               confidence: float = ReportConfig.confidence, seed: int = ReportConfig.seed
                               ) -> tuple[float, float, float]:
    """P(X > Y): the probability that a run of algorithm X scores higher than one of Y (ties count half), averaged
    over environments; ``x`` and ``y`` are ``(runs, envs)`` (run counts may differ). Returns the estimate and
    its confidence interval (runs resampled independently for each algorithm)."""
    x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
    if x.ndim != 2 or y.ndim != 2 or x.shape[1] != y.shape[1]:
        raise ValueError(f"expected (runs, envs) arrays with the same envs, got {x.shape} and {y.shape}")
    library = _rliable("library")

    def poi(a: np.ndarray, b: np.ndarray) -> np.ndarray:
        return np.array([_improvement(a, b)])

    with _seeded(seed):
        points, cis = library.get_interval_estimates({"p": [x, y]}, poi, reps=reps,
                                                     confidence_interval_size=confidence)
    point = float(points["p"][0])
    low, high = (float(v[0]) for v in np.asarray(cis["p"]))
    return point, min(low, point), max(high, point)


def performance_profiles(scores: Mapping[str, np.ndarray], taus: np.ndarray, *, reps: int = ReportConfig.reps,
                         confidence: float = ReportConfig.confidence, seed: int = ReportConfig.seed
                         ) -> dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """Score distributions: for each algorithm, the fraction of runs scoring above each ``tau`` (with confidence
    bands), from ``(runs, envs)`` score matrices."""
    library = _rliable("library")

    def above(s: np.ndarray, t: np.ndarray) -> np.ndarray:  # rliable's score distribution, vectorised
        return np.asarray((s.reshape(-1)[:, None] > t[None, :]).mean(axis=0))

    with _seeded(seed):
        profiles, cis = library.create_performance_profile(
            {k: np.asarray(v, np.float64) for k, v in scores.items()}, np.asarray(taus, np.float64), reps=reps,
            confidence_interval_size=confidence, custom_profile_func=above)
    return {k: (np.asarray(profiles[k], np.float64), np.asarray(cis[k][0], np.float64),
                np.asarray(cis[k][1], np.float64)) for k in scores}


# ------------------------------------------------------------------------------------------ score matrices


def _by_seed(runs: Sequence[RunRecord], env: str, algo: str) -> list[RunRecord]:
    return sorted((r for r in runs if r.env == env and r.algo == algo and r.finished), key=lambda r: r.seed)


def _common_count(runs: Sequence[RunRecord], envs: Sequence[str], algo: str) -> int:
    return min(len(_by_seed(runs, env, algo)) for env in envs)


def curve_matrix(runs: Sequence[RunRecord], envs: Sequence[str], algo: str, grid: np.ndarray) -> np.ndarray:
    """``(runs, envs, points)``: each finished run's step-wise score on ``grid``; with unequal numbers of finished
    runs per environment, the smallest seeds' runs up to the smallest count."""
    n = _common_count(runs, envs, algo)
    out = np.empty((n, len(envs), len(grid)))
    for j, env in enumerate(envs):
        for i, run in enumerate(_by_seed(runs, env, algo)[:n]):
            out[i, j] = step_values(*run.scheduled_evals(), grid)
    return out


def final_matrix(runs: Sequence[RunRecord], envs: Sequence[str], algo: str) -> np.ndarray:
    """``(runs, envs)``: final normalised returns (the smallest seeds' runs up to the smallest count)."""
    n = _common_count(runs, envs, algo)
    out = np.empty((n, len(envs)))
    for j, env in enumerate(envs):
        for i, run in enumerate(_by_seed(runs, env, algo)[:n]):
            assert run.metrics is not None
            out[i, j] = float(run.metrics["final_normalized_return"])
    return out


def _ordered(values: Sequence[str]) -> list[str]:
    return list(dict.fromkeys(values))


def _ci(point: float, low: float, high: float) -> dict[str, float]:
    return {"iqm": point, "ci_low": low, "ci_high": high}


def _mean(values: Sequence[float | None]) -> float | None:
    vals = [v for v in values if v is not None and math.isfinite(v)]
    return float(np.mean(vals)) if vals else None


def summarize(runs: Sequence[RunRecord], cfg: ReportConfig | None = None) -> dict[str, Any]:
    """Every statistic of the report, JSON-ready (``summary.json``), plus the curves for the figures under
    ``"_curves"`` / ``"_profiles"`` (arrays; dropped before writing).

    ``envs[env][algo]``: ``iqm``, ``ci_low``, ``ci_high`` of the final normalised return; ``budgets`` (IQM and
    CI at each budget); ``seeds``, ``final`` (per seed); ``steps_to_<threshold>`` (per seed, null when never);
    ``never_fraction``; ``seconds_per_1k_steps`` (mean over runs; null for algorithms without environment
    steps). ``aggregate[algo]``: the same IQM statistics over all environments. ``probability_of_improvement``:
    ``reference`` over each other algorithm, per environment and aggregated.
    """
    cfg = cfg if cfg is not None else ReportConfig()
    done = [r for r in runs if r.finished]
    if not done:
        raise InputError("no finished runs (no metrics.json) to report on")
    envs = _ordered([r.env for r in runs])
    algos = _ordered([r.algo for r in runs])
    envs_done = [e for e in envs if any(r.env == e for r in done)]
    kw: dict[str, Any] = {"reps": cfg.reps, "confidence": cfg.confidence, "seed": cfg.seed}
    max_budget = max(max(r.budget, int(r.evals()[0][-1])) for r in done)
    budgets = [b for b in cfg.budgets if b <= max_budget]
    grid = np.linspace(0, max_budget, cfg.grid_points).round().astype(np.int64)
    key = f"steps_to_{cfg.threshold:g}"
    summary: dict[str, Any] = {
        "threshold": cfg.threshold, "budgets": budgets, "confidence": cfg.confidence, "reps": cfg.reps,
        "seed": cfg.seed, "envs": {}, "aggregate": {}, "probability_of_improvement": {},
        "unfinished": [r.name for r in runs if not r.finished], "grid": grid.tolist(),
        "_curves": {}, "_profiles": {},
    }
    for env in envs_done:
        per_env: dict[str, Any] = {}
        for algo in algos:
            rs = _by_seed(runs, env, algo)
            if not rs:
                continue
            final = final_matrix(runs, [env], algo)
            curves = curve_matrix(runs, [env], algo, np.array([*budgets, *grid]))
            entry: dict[str, Any] = _ci(*interval_estimate(final, **kw))
            entry["n_runs"] = len(rs)
            entry["budgets"] = {}
            if budgets:
                pts, lows, highs = sample_efficiency(curves[..., :len(budgets)], **kw)
                entry["budgets"] = {str(b): _ci(float(p), float(lo), float(hi))
                                    for b, p, lo, hi in zip(budgets, pts, lows, highs, strict=True)}
            summary["_curves"][(env, algo)] = sample_efficiency(curves[..., len(budgets):], **kw)
            entry["seeds"] = [r.seed for r in rs]
            entry["final"] = {str(r.seed): float(r.metrics["final_normalized_return"]) for r in rs if r.metrics}
            reach = {str(r.seed): steps_to_threshold(*r.evals(), cfg.threshold) for r in rs}
            entry[key] = reach
            entry["never_fraction"] = sum(v is None for v in reach.values()) / len(reach)
            entry["seconds_per_1k_steps"] = _mean([r.metrics.get("seconds_per_1k_env_steps") for r in rs
                                                   if r.metrics])
            entry["train_seconds"] = _mean([r.metrics.get("train_seconds") for r in rs if r.metrics])
            per_env[algo] = entry
        summary["envs"][env] = per_env
    # aggregated over environments: algorithms that finished runs in every environment
    full = [a for a in algos if all(_by_seed(runs, e, a) for e in envs_done)]
    finals = {a: final_matrix(runs, envs_done, a) for a in full}
    for algo in full:
        curves = curve_matrix(runs, envs_done, algo, np.array([*budgets, *grid]))
        entry = dict[str, Any](_ci(*interval_estimate(finals[algo], **kw)))
        entry["n_runs_per_env"] = int(finals[algo].shape[0])
        entry["budgets"] = {}
        if budgets:
            pts, lows, highs = sample_efficiency(curves[..., :len(budgets)], **kw)
            entry["budgets"] = {str(b): _ci(float(p), float(lo), float(hi))
                                for b, p, lo, hi in zip(budgets, pts, lows, highs, strict=True)}
        summary["_curves"][("all", algo)] = sample_efficiency(curves[..., len(budgets):], **kw)
        secs = [r.metrics.get("seconds_per_1k_env_steps") for r in done if r.algo == algo and r.metrics]
        entry["seconds_per_1k_steps"] = _mean(secs)
        reached = [v for env in envs_done for v in summary["envs"][env][algo][key].values()]
        entry["never_fraction"] = sum(v is None for v in reached) / len(reached)
        summary["aggregate"][algo] = entry
    if finals:
        lowest = min(0.0, min(float(np.min(f)) for f in finals.values()))
        taus = np.linspace(lowest, max(1.2, max(float(np.max(f)) for f in finals.values())), 61)
        summary["_profiles"] = {"taus": taus, "profiles": performance_profiles(finals, taus, **kw)}
    if cfg.reference in algos:
        poi: dict[str, Any] = {}
        for other in algos:
            if other == cfg.reference:
                continue
            row: dict[str, Any] = {}
            for env in envs_done:
                x, y = final_matrix(runs, [env], cfg.reference), final_matrix(runs, [env], other)
                if x.size and y.size:
                    p, lo, hi = probability_of_improvement(x, y, **kw)
                    row[env] = {"probability": p, "ci_low": lo, "ci_high": hi}
            if cfg.reference in finals and other in finals:
                p, lo, hi = probability_of_improvement(finals[cfg.reference], finals[other], **kw)
                row["all"] = {"probability": p, "ci_low": lo, "ci_high": hi}
            poi[other] = row
        summary["probability_of_improvement"] = {"reference": cfg.reference, "over": poi}
    return summary
