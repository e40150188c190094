"""The report of a sweep (``mbirl bench report``): ``summary.json``, ``summary.md``, figures and a static
``index.html`` that opens from the file system (relative links only, no server, nothing fetched from elsewhere).

``REPORT/`` holds ``summary.json`` (:func:`mbirl.reporting.stats.summarize`), ``summary.md`` (the tables),
``figures/*.png`` (sample-efficiency curves, final IQMs with confidence intervals, performance profile,
probability of improvement), ``videos/*.mp4`` (rollouts found in the run directories, or recorded with
``videos=True``) and ``index.html`` (all of these, each run's configuration and command, the package versions).
"""

from __future__ import annotations

import html
import json
import os
import shlex
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from mbirl.errors import InputError
from mbirl.fileio import write_json_atomic, write_text_atomic
from mbirl.reporting.stats import ReportConfig, RunRecord, load_sweep_runs, summarize
from mbirl.validation import read_json

__all__ = ["write_report"]

Table = tuple[list[str], list[list[str]]]


# ------------------------------------------------------------------------------------------------------ tables


def _fmt_ci(entry: dict[str, Any] | None, key: str = "iqm") -> str:
    if not entry:
        return "–"
    return f"{entry[key]:.2f} [{entry['ci_low']:.2f}, {entry['ci_high']:.2f}]"


def _fmt_steps(value: int | None) -> str:
    return "never" if value is None else f"{value:,}"


def _columns(summary: dict[str, Any]) -> list[str]:
    return [*summary["envs"], *(["all environments"] if summary["aggregate"] else [])]


def _algos(summary: dict[str, Any]) -> list[str]:
    return list(dict.fromkeys(a for per_env in summary["envs"].values() for a in per_env))


def _cell(summary: dict[str, Any], column: str, algo: str) -> dict[str, Any] | None:
    if column == "all environments":
        return summary["aggregate"].get(algo)
    entry: dict[str, Any] | None = summary["envs"][column].get(algo)
    return entry


def tables(summary: dict[str, Any]) -> list[tuple[str, Table]]:
    """The report's tables: (title, (header, rows))."""
    cols, algos = _columns(summary), _algos(summary)
    out: list[tuple[str, Table]] = []
    pct = f"{summary['confidence']:.0%}"
    out.append((f"Final normalised return: IQM [{pct} CI]",
                (["algorithm", *cols], [[a, *(_fmt_ci(_cell(summary, c, a)) for c in cols)] for a in algos])))
    for budget in summary["budgets"]:
        rows = [[a, *(_fmt_ci((_cell(summary, c, a) or {}).get("budgets", {}).get(str(budget))) for c in cols)]
                for a in algos]
        out.append((f"Normalised return at {budget:,} environment steps: IQM [{pct} CI]", (["algorithm", *cols],
                                                                                          rows)))
    poi = summary.get("probability_of_improvement") or {}
    if poi.get("over"):
        ref = poi["reference"]
        rows = [[f"{ref} > {other}", *(_fmt_ci(row.get("all" if c == "all environments" else c), "probability")
                                       for c in cols)] for other, row in poi["over"].items()]
        out.append((f"Probability of improvement (final normalised return) [{pct} CI]", (["", *cols], rows)))
    key = f"steps_to_{summary['threshold']:g}"
    envs = list(summary["envs"])
    rows = []
    for a in algos:
        row = [a]
        for env in envs:
            e = summary["envs"][env].get(a)
            row.append("–" if e is None else
                       " / ".join(_fmt_steps(v) for v in e[key].values()) + f" (never: {e['never_fraction']:.0%})")
        rows.append(row)
    out.append((f"Environment steps to first reach {summary['threshold']:g} (each seed; never: fraction of runs "
                "that never do)", (["algorithm", *envs], rows)))
    epic = summary.get("epic") or {}
    if epic:
        epic_envs = [env for env in envs if env in epic]
        rows = []
        for a in algos:
            if any(a in epic[env] for env in epic_envs):
                rows.append([a, *(_fmt_epic(epic[env].get(a)) for env in epic_envs)])
        out.append(("EPIC distance of the learned reward to the true reward (0: the same up to shaping and scale, "
                    "1: its negation; the reward term the run uses; mean over seeds [min–max])",
                    (["algorithm", *epic_envs], rows)))
    rows = []
    for a in algos:
        vals = [(_cell(summary, c, a) or {}).get("seconds_per_1k_steps") for c in cols]
        rows.append([a, *("–" if v is None else f"{v:.2f}" for v in vals)])
    out.append(("Wall-clock seconds per 1,000 environment steps (mean over runs; – for algorithms that take "
                "none)", (["algorithm", *cols], rows)))
    return out


def _fmt_epic(entry: dict[str, Any] | None) -> str:
    if not entry:
        return "–"
    values = list(entry["per_seed"].values())
    return f"{entry['term']}: {entry['mean']:.3f} [{min(values):.3f}–{max(values):.3f}]"


def reward_distances(runs: Sequence[RunRecord], skipped: dict[str, str]) -> dict[str, dict[str, Any]]:
    """``[env][algo]``: the EPIC distance (:func:`mbirl.experiments.reward_quality.epic_of_run`, default settings)
    of each finished run's learned reward, in the term the run uses, to the environment's true reward: ``term``,
    ``per_seed`` and their ``mean``. Runs without a learned reward (BC) and environments without a known true
    reward are left out; runs whose reward cannot be measured are added to ``skipped`` (name: why)."""
    from mbirl.experiments.reward_quality import epic_of_run
    from mbirl.rewards.epic import TRUE_REWARDS

    found: dict[str, dict[str, Any]] = {}
    for run in runs:
        if not run.finished or run.env not in TRUE_REWARDS or (run.config or {}).get("algo") == "bc":
            continue
        try:
            result = epic_of_run(run.path)
        except InputError as exc:  # e.g. a run whose reward cannot be loaded: the report says so, per run
            skipped[run.name] = str(exc)
            continue
        term = str(result["default_term"])
        entry = found.setdefault(run.env, {}).setdefault(run.algo, {"term": term, "per_seed": {}})
        entry["per_seed"][str(run.seed)] = float(result["epic"][term])
    for per_env in found.values():
        for entry in per_env.values():
            entry["mean"] = float(np.mean(list(entry["per_seed"].values())))
    return found


def _markdown(table: Table) -> str:
    header, rows = table
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)


def _html_table(table: Table) -> str:
    header, rows = table
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in r) + "</tr>" for r in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def summary_markdown(summary: dict[str, Any], *, title: str) -> str:
    parts = [f"# {title}", ""]
    for name, table in tables(summary):
        parts += [f"## {name}", "", _markdown(table), ""]
    if summary["unfinished"]:
        parts += ["Unfinished runs (left out): " + ", ".join(summary["unfinished"]), ""]
    return "\n".join(parts)


# ----------------------------------------------------------------------------------------------------- figures


def _colors(algos: Sequence[str]) -> dict[str, Any]:
    import matplotlib.pyplot as plt

    cmap = plt.get_cmap("tab10")
    return {a: cmap(i % 10) for i, a in enumerate(algos)}


def figures(summary: dict[str, Any], out: Path) -> list[tuple[str, Path]]:
    """Draw the report's figures into ``out``; returns (caption, path)."""
    import matplotlib.pyplot as plt

    from mbirl.reporting.plots import save_figure

    algos = _algos(summary)
    colors = _colors(algos)
    cols = [*summary["envs"], *(["all"] if summary["aggregate"] else [])]
    pct = f"{summary['confidence']:.0%}"
    made: list[tuple[str, Path]] = []
    grid = np.asarray(summary["grid"], dtype=np.float64)

    fig, axes = plt.subplots(1, len(cols), figsize=(4.2 * len(cols), 3.6), squeeze=False, sharey=True)
    for ax, col in zip(axes[0], cols, strict=True):
        for a in algos:
            curve = summary["_curves"].get((col, a))
            if curve is None:
                continue
            point, low, high = curve
            ax.plot(grid, point, drawstyle="steps-post", color=colors[a], label=a)
            ax.fill_between(grid, low, high, step="post", color=colors[a], alpha=0.2)
        ax.set_title("all environments" if col == "all" else col)
        ax.set_xlabel("environment steps")
        ax.grid(alpha=0.3)
    axes[0, 0].set_ylabel("IQM normalised return")
    axes[0, -1].legend(fontsize=8)
    made.append((f"Sample efficiency: IQM of the normalised return against environment steps ({pct} CI bands)",
                 save_figure(fig, out / "sample_efficiency.png")))

    fig, axes = plt.subplots(1, len(cols), figsize=(3.4 * len(cols), 0.5 * len(algos) + 1.6), squeeze=False,
                             sharey=True)
    for ax, col in zip(axes[0], cols, strict=True):
        for i, a in enumerate(algos):
            e = _cell(summary, "all environments" if col == "all" else col, a)
            if e is None:
                continue
            ax.plot([e["ci_low"], e["ci_high"]], [i, i], color=colors[a], lw=6, alpha=0.5, solid_capstyle="butt")
            ax.plot([e["iqm"]], [i], "o", color=colors[a], mec="k", ms=6)
        ax.set_yticks(range(len(algos)), algos)
        ax.set_title("all environments" if col == "all" else col)
        ax.set_xlabel("final normalised return (IQM)")
        ax.grid(alpha=0.3, axis="x")
    made.append((f"Final normalised return: IQM (dot) and {pct} stratified-bootstrap CI (bar)",
                 save_figure(fig, out / "final_iqm.png")))

    profiles = summary.get("_profiles") or {}
    if profiles:
        fig, ax = plt.subplots(figsize=(5.5, 3.8))
        taus = np.asarray(profiles["taus"])
        for a, (p, low, high) in profiles["profiles"].items():
            ax.plot(taus, p, color=colors[a], label=a)
            ax.fill_between(taus, low, high, color=colors[a], alpha=0.2)
        ax.set_xlabel(r"normalised return $\tau$")
        ax.set_ylabel(r"fraction of runs with score > $\tau$")
        ax.set_title("performance profile (all environments)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
        made.append((f"Performance profile: score distribution over all runs and environments ({pct} CI bands)",
                     save_figure(fig, out / "performance_profile.png")))

    poi = summary.get("probability_of_improvement") or {}
    rows = [(other, row["all"]) for other, row in (poi.get("over") or {}).items() if "all" in row]
    if rows:
        fig, ax = plt.subplots(figsize=(5.5, 0.5 * len(rows) + 1.6))
        for i, (other, e) in enumerate(rows):
            ax.plot([e["ci_low"], e["ci_high"]], [i, i], color=colors.get(other, "C0"), lw=6, alpha=0.5,
                    solid_capstyle="butt")
            ax.plot([e["probability"]], [i], "o", color=colors.get(other, "C0"), mec="k", ms=6)
        ax.axvline(0.5, color="grey", ls="--", lw=1)
        ax.set_xlim(-0.02, 1.02)
        ax.set_yticks(range(len(rows)), [f"{poi['reference']} > {o}" for o, _ in rows])
        ax.set_xlabel("probability of improvement")
        ax.grid(alpha=0.3, axis="x")
        made.append((f"Probability of improvement of {poi['reference']} over each other algorithm (all "
                     f"environments, {pct} CI)", save_figure(fig, out / "probability_of_improvement.png")))
    return made


# ------------------------------------------------------------------------------------------------------ videos


def _videos(runs: Sequence[RunRecord], out: Path, record: bool) -> list[tuple[str, Path]]:
    """Rollout videos: those in the run directories (copied), or one recorded per (env, algo) with ``record``."""
    found: list[tuple[str, Path]] = []
    seen: set[tuple[str, str]] = set()
    for run in runs:
        for video in run.videos:
            dest = out / f"{run.env}_{run.algo}_s{run.seed}_{video.stem}.mp4"
            dest.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(video, dest)
            found.append((f"{run.name}: {video.name}", dest))
            seen.add((run.env, run.algo))
    if record:
        from mbirl.experiments.imitation import evaluate_imitation_run

        for run in sorted(runs, key=lambda r: r.seed):
            if not run.finished or (run.env, run.algo) in seen:
                continue
            seen.add((run.env, run.algo))
            dest = out / f"{run.env}_{run.algo}_s{run.seed}.mp4"
            dest.parent.mkdir(parents=True, exist_ok=True)
            r = evaluate_imitation_run(run.path, 1, video=dest)
            found.append((f"{run.name}: one deterministic episode, return {r['mean_return']:.1f} (normalised "
                          f"{r['normalized_return']:.2f})", dest))
    return found


# -------------------------------------------------------------------------------------------------------- HTML

_STYLE = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1200px; padding: 0 1em; color: #222; }
table { border-collapse: collapse; margin: 0.5em 0 1.5em; font-size: 0.9em; }
th, td { border: 1px solid #ccc; padding: 0.25em 0.6em; text-align: left; vertical-align: top; }
th { background: #f3f3f3; }
figure { margin: 1em 0 2em; }
figure img { max-width: 100%; border: 1px solid #eee; }
img.broken { outline: 3px solid red; }
pre { background: #f7f7f7; padding: 0.6em; overflow-x: auto; font-size: 0.85em; }
code { font-size: 0.9em; }
details { margin: 0.2em 0; }
"""

# Marks each image that did not load and records the count on <body> (a check that needs no server).
_SCRIPT = """
window.addEventListener("load", function () {
  var imgs = document.images, ok = 0;
  for (var i = 0; i < imgs.length; i++) {
    if (imgs[i].complete && imgs[i].naturalWidth > 0) { ok++; } else { imgs[i].className += " broken"; }
  }
  document.body.setAttribute("data-images-loaded", ok + "/" + imgs.length);
});
"""


def _rel(path: Path, start: Path) -> str:
    return Path(os.path.relpath(path.resolve(), start.resolve())).as_posix()


def _pre(value: Any) -> str:
    text = value if isinstance(value, str) else json.dumps(value, indent=2)
    return f"<pre>{html.escape(text)}</pre>"


def _page(*, title: str, summary: dict[str, Any], figs: list[tuple[str, Path]], videos: list[tuple[str, Path]],
          runs: Sequence[RunRecord], sweep: dict[str, Any] | None, sweep_dir: Path, out: Path) -> str:
    e = html.escape
    parts = [f"<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'><title>{e(title)}</title>",
             f"<style>{_STYLE}</style><script>{_SCRIPT}</script></head><body>", f"<h1>{e(title)}</h1>"]
    n_done = sum(r.finished for r in runs)
    parts.append(f"<p>{n_done} of {len(runs)} runs finished; sweep directory <code>{e(str(sweep_dir))}</code>. "
                 f"Scores are normalised returns (0: random policy, 1: expert). Confidence intervals: "
                 f"{summary['confidence']:.0%} stratified bootstrap over runs ({summary['reps']:,} resamples, "
                 f"seed {summary['seed']}). Tables also in <a href='summary.md'>summary.md</a>, numbers in "
                 f"<a href='summary.json'>summary.json</a>.</p>")
    if summary["unfinished"]:
        parts.append(f"<p><strong>Unfinished runs (left out):</strong> {e(', '.join(summary['unfinished']))}</p>")
    parts.append("<h2>Tables</h2>")
    for name, table in tables(summary):
        parts.append(f"<h3>{e(name)}</h3>{_html_table(table)}")
    parts.append("<h2>Figures</h2>")
    for caption, path in figs:
        parts.append(f"<figure><img src='{e(_rel(path, out))}' alt='{e(caption)}'>"
                     f"<figcaption>{e(caption)}</figcaption></figure>")
    if videos:
        parts.append("<h2>Rollout videos</h2>")
        for caption, path in videos:
            parts.append(f"<figure><video controls width='480' src='{e(_rel(path, out))}'></video>"
                         f"<figcaption>{e(caption)}</figcaption></figure>")
    parts.append("<h2>Sweep</h2>")
    if sweep:
        parts.append(f"<p>Command:</p>{_pre(sweep.get('command', ''))}")
        if len(sweep.get("commands", [])) > 1:
            parts.append("<details><summary>every invocation</summary>"
                         + _pre("\n".join(f"{c['started']}  {c['command']}" for c in sweep["commands"]))
                         + "</details>")
        parts.append(f"<p>Package versions:</p>{_html_table((['package', 'version'], [[k, str(v)] for k, v in sweep.get('versions', {}).items()]))}")  # noqa: E501
        parts.append(f"<details><summary>sweep configuration</summary>{_pre(sweep.get('config', {}))}</details>")
    parts.append("<h2>Runs</h2><p>Each run's command reproduces it in a new directory (its configuration holds "
                 "every setting); with its own directory as <code>--run-dir</code> and <code>--resume</code> it "
                 "continues the run.</p>")
    rows = []
    for run in runs:
        m = run.metrics or {}
        link = f"<a href='{e(_rel(run.path, out))}/'>{e(run.name)}</a>" if run.path.is_dir() else e(run.name)
        status = f"{m['final_normalized_return']:.3f}" if run.finished else "unfinished"
        steps = f"{m['env_steps']:,}" if run.finished else "–"
        secs = f"{m['train_seconds']:.0f}" if run.finished else "–"
        command = shlex.join(["mbirl", "il", "train", "--config", str(run.path.resolve() / "config.json"),
                              "--run-dir", f"runs/repro/{run.name}"])
        details = (f"<details><summary>config and command</summary>{_pre(command)}"
                   f"{_pre(run.config) if run.config else '<p>no config.json</p>'}</details>")
        rows.append(f"<tr><td>{link}</td><td>{status}</td><td>{steps}</td><td>{secs}</td><td>{details}</td></tr>")
    parts.append("<table><thead><tr><th>run</th><th>final normalised return</th><th>env steps</th>"
                 "<th>train seconds</th><th>configuration</th></tr></thead><tbody>" + "".join(rows)
                 + "</tbody></table>")
    parts.append("</body></html>")
    return "\n".join(parts)


def write_report(sweep_dir: str | Path, out: str | Path, cfg: ReportConfig | None = None) -> dict[str, Any]:
    """Compute the statistics of the sweep in ``sweep_dir`` and write the report into ``out``; returns the
    summary (as written to ``summary.json``)."""
    cfg = cfg if cfg is not None else ReportConfig()
    sweep_dir, out = Path(sweep_dir), Path(out)
    if out.resolve() == sweep_dir.resolve():
        raise InputError("the report needs its own directory, not the sweep's", source=str(out))
    runs = load_sweep_runs(sweep_dir)
    summary = summarize(runs, cfg)
    if cfg.epic:
        summary["epic_skipped"] = {}
        summary["epic"] = reward_distances(runs, summary["epic_skipped"])
    sweep = read_json(sweep_dir / "sweep.json", what="sweep record") if (sweep_dir / "sweep.json").is_file() else None
    out.mkdir(parents=True, exist_ok=True)
    figs = figures(summary, out / "figures")
    videos = _videos(runs, out / "videos", cfg.videos)
    public = {k: v for k, v in summary.items() if not k.startswith("_")}
    public["versions"] = (sweep or {}).get("versions")
    public["command"] = (sweep or {}).get("command")
    write_json_atomic(out / "summary.json", public)
    title = f"Imitation benchmark: {', '.join(_algos(summary))} on {', '.join(summary['envs'])}"
    write_text_atomic(out / "summary.md", summary_markdown(summary, title=title))
    write_text_atomic(out / "index.html", _page(title=title, summary=summary, figs=figs, videos=videos, runs=runs,
                                                sweep=sweep, sweep_dir=sweep_dir.resolve(), out=out))
    return public
