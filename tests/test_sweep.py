"""Sweeps and their statistics: rliable-based statistics on synthetic data with known answers, the report from
synthetic run directories (tables, JSON, a static HTML page that renders in headless Chromium), the sweep's
validation and resume plan without Ray, and (slow) real Ray Tune sweeps: end to end with a report, ``--resume``
after the driver was killed mid-run, and a two-node simulated cluster."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from imitation_helpers import interrupt_after
from mbirl.cli import main
from mbirl.errors import InputError

pytest.importorskip("rliable", reason="the bench extra (pip install 'mbirl[bench]') is not installed")

from mbirl.reporting import stats  # noqa: E402
from mbirl.reporting.stats import (  # noqa: E402
    ReportConfig,
    interval_estimate,
    iqm,
    performance_profiles,
    probability_of_improvement,
    sample_efficiency,
    scheduled_steps,
    step_values,
    steps_to_threshold,
)

PENDULUM, CARTPOLE = "data/demos/Pendulum-v1.npz", "data/demos/CartPole-v1.npz"
FAST = {"reps": 300, "seed": 0}
TINY_YAML = """\
eval_every: 500
eval_episodes: 2
mairl:
  warmup_steps: 500
  n_rollouts: 2
  horizon: 5
  batch_size: 64
  model_steps: 2
  model_pretrain_steps: 20
  policy_hidden: [32]
  disc_hidden: [32]
checkpoint_every: 1
bc:
  max_epochs: 8
"""


def _cli(*args: str) -> int:
    with pytest.raises(SystemExit) as exc:
        main(list(args))
    return int(exc.value.code or 0)


# ------------------------------------------------------------------------------------------------ statistics


def test_iqm_of_known_arrays():
    from rliable import metrics

    assert iqm(np.arange(8.0).reshape(8, 1)) == 3.5  # the middle half: 2, 3, 4, 5
    assert iqm(np.array([[0.0, 100.0], [1.0, 2.0], [3.0, -50.0], [4.0, 5.0]])) == 2.5  # over all 8: 1, 2, 3, 4
    rng = np.random.default_rng(0)
    for shape in [(5, 3), (7, 1), (10, 2)]:
        a = rng.normal(size=shape)
        assert stats._trim_mean(a.reshape(-1, 1)).item() == pytest.approx(metrics.aggregate_iqm(a))
        point, _, _ = interval_estimate(a, **FAST)
        assert point == pytest.approx(metrics.aggregate_iqm(a))


def test_confidence_interval_contains_the_truth_and_is_reproducible():
    rng = np.random.default_rng(1)
    scores = rng.normal(0.5, 0.1, size=(40, 3))  # symmetric: the population IQM is 0.5
    point, low, high = interval_estimate(scores, **FAST)
    assert low < 0.5 < high and low <= point <= high and high - low < 0.1
    assert interval_estimate(scores, **FAST) == (point, low, high)  # seeded
    state = np.random.get_state()  # noqa: NPY002
    interval_estimate(scores, **FAST)
    assert np.array_equal(np.random.get_state()[1], state[1])  # noqa: NPY002 (the global generator is restored)
    one = interval_estimate(np.array([[0.7]]), **FAST)
    assert one == pytest.approx((0.7, 0.7, 0.7))
    wider = interval_estimate(scores, reps=300, confidence=0.99)
    assert wider[1] <= low and wider[2] >= high


def test_sample_efficiency_bands():
    curves = np.stack([np.linspace(0, 1, 5) + d for d in (-0.1, 0.0, 0.0, 0.1)])[:, None, :]  # (4 runs, 1, 5)
    point, low, high = sample_efficiency(curves, **FAST)
    np.testing.assert_allclose(point, np.linspace(0, 1, 5))
    assert np.all(low <= point) and np.all(point <= high)


def test_step_values_and_scheduled_steps():
    steps, values = [0, 510, 1000, 1530], [0.1, 0.2, 0.3, 0.4]
    np.testing.assert_array_equal(step_values(steps, values, [0, 500, 510, 999, 1000, 5000]),
                                  [0.1, 0.1, 0.2, 0.2, 0.3, 0.4])
    assert np.isnan(step_values([100], [1.0], [50])[0])
    with pytest.raises(ValueError):
        step_values([0, 10, 5], [1, 2, 3], [1])
    # an evaluation counts at the step it was scheduled for; the last one at the budget
    np.testing.assert_array_equal(scheduled_steps(np.array([0, 510, 1000, 1530, 2040]), 500, 2000),
                                  [0, 500, 1000, 1500, 2000])
    np.testing.assert_array_equal(scheduled_steps(np.array([0, 0]), 5000, 2000), [0, 0])  # BC takes no steps
    np.testing.assert_array_equal(scheduled_steps(np.array([0, 1010, 2340]), 1000, 2300), [0, 1000, 2300])
    np.testing.assert_array_equal(scheduled_steps(np.array([0, 7]), None, None), [0, 7])


def test_steps_to_threshold_with_runs_that_never_reach_it():
    steps = [0, 1000, 2000, 3000]
    assert steps_to_threshold(steps, [0.1, 0.5, 0.95, 0.85], 0.9) == 2000  # the first time, even if it drops
    assert steps_to_threshold(steps, [0.1, 0.5, 0.6, 0.89], 0.9) is None
    assert steps_to_threshold(steps, [0.9, 0.5, 0.6, 0.89], 0.9) == 0
    assert steps_to_threshold([0, 0], [0.2, 0.93], 0.9) == 0  # BC: reached without environment steps


def test_probability_of_improvement():
    from rliable import metrics

    rng = np.random.default_rng(2)
    better, worse = rng.uniform(0.8, 1.0, (5, 2)), rng.uniform(0.0, 0.5, (4, 2))
    assert probability_of_improvement(better, worse, **FAST) == (1.0, 1.0, 1.0)
    assert probability_of_improvement(worse, better, **FAST) == (0.0, 0.0, 0.0)
    p, low, high = probability_of_improvement(better, better, **FAST)
    assert p == 0.5 and low < 0.5 < high
    a, b = rng.normal(size=(6, 3)).round(1), rng.normal(size=(5, 3)).round(1)  # with ties
    assert stats._improvement(a, b) == pytest.approx(metrics.probability_of_improvement(a, b))
    assert probability_of_improvement(a, b, **FAST)[0] == pytest.approx(metrics.probability_of_improvement(a, b))


def test_performance_profiles():
    taus = np.array([0.0, 0.25, 0.5, 0.75, 1.0])
    scores = {"a": np.array([[0.1, 0.6], [0.3, 0.9]]), "b": np.ones((3, 2))}
    out = performance_profiles(scores, taus, **FAST)
    np.testing.assert_allclose(out["a"][0], [1.0, 0.75, 0.5, 0.25, 0.0])
    np.testing.assert_allclose(out["b"][0], [1.0, 1.0, 1.0, 1.0, 0.0])
    assert np.all(out["a"][1] <= out["a"][0]) and np.all(out["a"][0] <= out["a"][2])


# ------------------------------------------------------------------------------- the report of synthetic runs


def _fake_run(root: Path, env: str, algo: str, seed: int, curve: list[tuple[int, float]], *, budget: int = 30_000,
              seconds: float | None = 2.0) -> None:
    run = root / env / algo / f"s{seed}"
    run.mkdir(parents=True)
    (run / "config.json").write_text(json.dumps({"demos": f"{env}.npz", "env": env, "algo": algo, "seed": seed,
                                                 "env_steps": budget, "eval_every": 10_000}))
    evals = [{"env_steps": s, "mean_return": v, "normalized_return": v} for s, v in curve]
    steps = curve[-1][0]
    (run / "metrics.json").write_text(json.dumps({
        "env_id": env, "algo": algo, "seed": seed, "eval": evals, "final_normalized_return": curve[-1][1],
        "env_steps": steps, "train_seconds": 10.0,
        "seconds_per_1k_env_steps": None if seconds is None or steps == 0 else seconds}))


def _fake_sweep(root: Path) -> Path:
    """Two environments; mairl reaches 0.9 (seed 2 never does), bc has no environment steps, gail is worse; one
    gail run is unfinished."""
    trials = []
    for env, shift in (("Pendulum-v1", 0.0), ("CartPole-v1", 0.05)):
        for seed in range(3):
            late = 0.8 if seed == 2 else 0.95 + shift
            _fake_run(root, env, "mairl", seed, [(0, 0.1), (10_010, 0.5), (20_040, 0.92 if seed == 0 else 0.7),
                                                 (30_020, late)], seconds=3.0 + seed)
            _fake_run(root, env, "bc", seed, [(0, 0.2), (0, 0.6 + 0.1 * seed)], seconds=None)
            trials += [{"env": env, "algo": a, "seed": seed, "run_dir": f"{env}/{a}/s{seed}"} for a in
                       ("mairl", "bc", "gail")]
            if not (env == "CartPole-v1" and seed == 2):
                _fake_run(root, env, "gail", seed, [(0, 0.0), (10_000, 0.1), (30_000, 0.3 + 0.01 * seed)])
    (root / "Pendulum-v1" / "mairl" / "s0" / "rollout.mp4").write_bytes(b"\x00\x00\x00\x18ftypmp42")
    (root / "sweep.json").write_text(json.dumps({
        "config": {"algos": ["mairl", "bc", "gail"]}, "command": "mbirl bench run --algos mairl,bc,gail ...",
        "commands": [{"command": "mbirl bench run ...", "started": "2026-11-28T10:00:00"}],
        "trials": trials, "versions": {"python": "3.11", "ray": "2.60.0"}}))
    return root


def test_report_of_a_synthetic_sweep(tmp_path):
    from mbirl.reporting.bench_report import write_report

    sweep = _fake_sweep(tmp_path / "sweep")
    out = tmp_path / "report"
    summary = write_report(sweep, out, ReportConfig(budgets=(10_000, 20_000, 100_000), reps=200))
    assert json.loads((out / "summary.json").read_text()) == summary
    assert summary["budgets"] == [10_000, 20_000]  # 100k is beyond the sweep
    assert summary["unfinished"] == ["CartPole-v1/gail/s2"]
    # these runs have metrics but no learned reward to load: the EPIC table says which were left out and why
    assert summary["epic"] == {}
    assert sorted(summary["epic_skipped"]) == [f"Pendulum-v1/{a}/s{s}" for a in ("gail", "mairl") for s in range(3)]
    pend = summary["envs"]["Pendulum-v1"]
    assert set(pend) == {"mairl", "bc", "gail"}
    # mairl's finals on Pendulum: 0.95, 0.95, 0.8 -> IQM of 3 values (trim int(0.75)=0 each side) = mean
    assert pend["mairl"]["iqm"] == pytest.approx((0.95 + 0.95 + 0.8) / 3)
    assert pend["mairl"]["ci_low"] <= pend["mairl"]["iqm"] <= pend["mairl"]["ci_high"]
    assert pend["mairl"]["steps_to_0.9"] == {"0": 20_040, "1": 30_020, "2": None}
    assert pend["mairl"]["never_fraction"] == pytest.approx(1 / 3)
    assert pend["mairl"]["seconds_per_1k_steps"] == pytest.approx(4.0)
    assert pend["bc"]["seconds_per_1k_steps"] is None and pend["bc"]["steps_to_0.9"] == {"0": None, "1": None,
                                                                                          "2": None}
    # the 10k budget reads the evaluation taken at 10,010 steps (scheduled for 10,000)
    assert pend["mairl"]["budgets"]["10000"]["iqm"] == pytest.approx(0.5)
    assert pend["bc"]["budgets"]["10000"]["iqm"] == pytest.approx(0.7)  # no steps: its final score throughout
    # gail has an unfinished run on CartPole: 3 + 2 runs, aggregated over the 2 smallest seeds of each env
    assert summary["envs"]["CartPole-v1"]["gail"]["n_runs"] == 2
    assert summary["aggregate"]["gail"]["n_runs_per_env"] == 2 and summary["aggregate"]["mairl"]["n_runs_per_env"] == 3
    poi = summary["probability_of_improvement"]
    assert poi["reference"] == "mairl" and poi["over"]["gail"]["all"]["probability"] == 1.0
    assert 0 < poi["over"]["bc"]["Pendulum-v1"]["probability"] <= 1
    md = (out / "summary.md").read_text()
    assert "| mairl |" in md and "IQM [95% CI]" in md and "never: 33%" in md and "CartPole-v1/gail/s2" in md
    page = (out / "index.html").read_text()
    images = re.findall(r"<img src='([^']+)'", page)
    assert len(images) == 4 and all((out / src).is_file() and not src.startswith(("/", "http")) for src in images)
    assert "http://" not in page and "https://" not in page  # nothing fetched from elsewhere
    assert (out / "videos" / "Pendulum-v1_mairl_s0_rollout.mp4").is_file() and "<video" in page
    assert "mbirl bench run --algos mairl,bc,gail" in page and "ray" in page
    assert "mbirl il train --config" in page and "&quot;algo&quot;: &quot;gail&quot;" in page
    for href in re.findall(r"<a href='([^']+)'", page):
        assert (out / href).exists(), href  # relative links that work from the file system


def test_report_has_an_epic_column_where_rewards_exist(tmp_path, monkeypatch):
    """Each finished run with a learned reward on an environment with a known true reward gets its EPIC distance
    (the term it uses); BC runs and CartPole (no true reward known) are left out."""
    from mbirl.experiments import reward_quality
    from mbirl.reporting.bench_report import reward_distances, summary_markdown, tables
    from mbirl.reporting.stats import load_sweep_runs, summarize

    calls = []

    def fake_epic(run_dir, cfg=None):
        calls.append(Path(run_dir))
        seed = int(Path(run_dir).name[1:])
        term = "g" if "mairl" in str(run_dir) else "neg_log_1m_d"
        return {"default_term": term, "epic": {term: 0.1 * (seed + 1), "logit": 0.9}}

    monkeypatch.setattr(reward_quality, "epic_of_run", fake_epic)
    skipped: dict[str, str] = {}
    runs = load_sweep_runs(_fake_sweep(tmp_path / "sweep"))
    summary = {**summarize(runs, ReportConfig(reps=50)), "epic": reward_distances(runs, skipped)}
    assert sorted(p.parent.name + "/" + p.name for p in calls) == [f"{a}/s{s}" for a in ("gail", "mairl")
                                                                   for s in range(3)]
    assert summary["epic"]["Pendulum-v1"]["mairl"] == {"term": "g", "per_seed": {"0": 0.1, "1": 0.2,
                                                                                 "2": pytest.approx(0.3)},
                                                       "mean": pytest.approx(0.2)}
    assert set(summary["epic"]) == {"Pendulum-v1"} and skipped == {}
    title, (header, rows) = next(t for t in tables(summary) if t[0].startswith("EPIC"))
    assert header == ["algorithm", "Pendulum-v1"]
    assert ["mairl", "g: 0.200 [0.100–0.300]"] in rows and all(r[0] != "bc" for r in rows)
    assert "EPIC distance" in summary_markdown(summary, title="t")


def test_cli_report_and_its_errors(tmp_path, capsys):
    sweep = _fake_sweep(tmp_path / "sweep")
    assert _cli("bench", "report", str(sweep), "--reps", "100", "--budgets", "10000", "--no-epic") == 0
    out = capsys.readouterr().out
    assert "Final normalised return: IQM [95% CI]" in out and "(mairl)" in out and "index.html" in out
    summary = json.loads((sweep / "report" / "summary.json").read_text())
    assert summary["budgets"] == [10_000] and summary["reps"] == 100 and "epic" not in summary
    assert _cli("bench", "report", str(tmp_path / "none")) == 2
    assert "not a directory" in capsys.readouterr().err
    (tmp_path / "empty").mkdir()
    assert _cli("bench", "report", str(tmp_path / "empty")) == 2
    assert "no runs found" in capsys.readouterr().err
    assert _cli("bench", "report", str(sweep), "--out", str(sweep)) == 2
    assert _cli("bench", "report", str(sweep), "--budgets", "10k") == 2
    assert _cli("bench", "report", str(sweep), "--reps", "1") == 2
    err = capsys.readouterr().err
    assert err.count("mbirl: error:") == 3 and "Traceback" not in err


@pytest.mark.slow
def test_html_report_renders_in_headless_chromium(tmp_path):
    chromium = Path("/usr/bin/chromium")
    if not chromium.exists():
        pytest.skip("no /usr/bin/chromium (apt-get install -y chromium)")
    from mbirl.reporting.bench_report import write_report

    out = tmp_path / "report"
    write_report(_fake_sweep(tmp_path / "sweep"), out, ReportConfig(reps=100))
    dom = subprocess.run([str(chromium), "--headless", "--no-sandbox", "--disable-gpu", "--virtual-time-budget=10000",
                          "--dump-dom", (out / "index.html").resolve().as_uri()],
                         capture_output=True, text=True, timeout=120, check=True).stdout
    loaded = re.search(r'data-images-loaded="(\d+)/(\d+)"', dom)
    assert loaded is not None, dom[:500]
    assert loaded.group(1) == loaded.group(2) == "4"  # every <img> has naturalWidth > 0
    assert "broken" not in re.findall(r"<img[^>]*>", dom)[0]


# ------------------------------------------------------------------------------ sweep validation, no Ray


def test_sweep_config_and_cli_errors(tmp_path, capsys):
    from mbirl.experiments.sweep import SweepConfig, parse_seeds

    assert parse_seeds("0-4") == (0, 1, 2, 3, 4) and parse_seeds("0,2,5-6") == (0, 2, 5, 6)
    for bad in ("3-1", "a", "0,0", ""):
        with pytest.raises(InputError, match="seeds"):
            parse_seeds(bad)
    sweep = SweepConfig(algos=("mairl", "bc"), envs=("Pendulum-v1",), seeds=(0, 1), run={"env_steps": 2000})
    assert [c.name for c in sweep.cells()] == ["Pendulum-v1/mairl/s0", "Pendulum-v1/mairl/s1", "Pendulum-v1/bc/s0",
                                               "Pendulum-v1/bc/s1"]
    assert sweep.demos["Pendulum-v1"] == str(Path(PENDULUM).resolve())
    assert SweepConfig.from_json(json.loads(json.dumps(sweep.to_json())), source="x") == sweep
    with pytest.raises(InputError, match="set by the sweep's grid"):
        SweepConfig(algos=("bc",), envs=("Pendulum-v1",), run={"seed": 3})
    with pytest.raises(InputError, match="sweep cell Pendulum-v1/mairl/s0: field 'mairl.warmup_steps'"):
        SweepConfig(algos=("mairl",), envs=("Pendulum-v1",), run={"env_steps": 500})
    out = str(tmp_path / "sweep")
    cases = [
        (["--algos", "mairl,dagger", "--envs", "Pendulum-v1"], "unknown algorithm 'dagger'"),
        (["--algos", "bc", "--envs", "Nope-v0"], "unknown environment 'Nope-v0': no shipped demonstrations"),
        (["--algos", "bc", "--envs", "Pendulum-v1", "--demos", "CartPole-v1=" + CARTPOLE], "not one of the sweep"),
        (["--algos", "bc", "--envs", "Pendulum-v1", "--demos", "Pendulum-v1=" + CARTPOLE], "are for 'CartPole-v1'"),
        (["--algos", "bc", "--envs", "Pendulum-v1", "--demos", "Pendulum-v1"], "expected ENV=FILE"),
        (["--algos", "bc", "--envs", "Pendulum-v1", "--seeds", "2-1"], "expected seeds like"),
        (["--algos", "bc", "--envs", "Pendulum-v1", "--cpus-per-trial", "0"], "cpus-per-trial"),
        (["--envs", "Pendulum-v1"], "field 'algos': required"),
    ]
    for args, message in cases:
        assert _cli("bench", "run", *args, "--out", out) == 2, args
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and err.startswith("mbirl: error:") and message in err, (args, err)
    bad = tmp_path / "bad.yaml"
    bad.write_text("algo: bc\n")
    assert _cli("bench", "run", "--algos", "bc", "--envs", "Pendulum-v1", "--config", str(bad), "--out", out) == 2
    assert "set by the sweep's grid" in capsys.readouterr().err
    assert not (tmp_path / "sweep").exists()  # nothing ran, nothing was written


def test_variants_are_named_configurations_of_an_algorithm(tmp_path, monkeypatch, capsys):
    from mbirl.experiments.sweep import SweepConfig

    variants = {"mairl-im": {"algo": "mairl", "mairl": {"policy_utd": 0.1, "horizon": 6}}}
    sweep = SweepConfig(algos=("mairl", "mairl-im"), envs=("Pendulum-v1",), seeds=(0,),
                        run={"env_steps": 3000, "mairl": {"horizon": 4, "n_rollouts": 2}}, variants=variants)
    plain, variant = (c.config() for c in sweep.cells())
    assert [c.name for c in sweep.cells()] == ["Pendulum-v1/mairl/s0", "Pendulum-v1/mairl-im/s0"]
    assert plain.algo == variant.algo == "mairl"
    assert (plain.mairl.policy_utd, plain.mairl.horizon) == (0.0, 4)
    # the variant's overrides go over the shared settings, key by key
    assert (variant.mairl.policy_utd, variant.mairl.horizon, variant.mairl.n_rollouts) == (0.1, 6, 2)
    assert SweepConfig.from_json(json.loads(json.dumps(sweep.to_json())), source="x") == sweep
    for bad, message in [({"mairl": {"algo": "bc"}}, "other than the algorithms' own"),
                         ({"Bad/Name": {"algo": "bc"}}, "variant names"),
                         ({"v": {"bc": {"max_epochs": 3}}}, "must name its algo"),
                         ({"v": {"algo": "dagger"}}, "unknown algorithm 'dagger'"),
                         ({"v": {"algo": "bc", "seed": 3}}, "set by the sweep's grid")]:
        with pytest.raises(InputError, match=message):
            SweepConfig(algos=("bc",), envs=("Pendulum-v1",), variants=bad)
    with pytest.raises(InputError, match="sweep cell Pendulum-v1/v/s0: field 'policy_utd'"):
        SweepConfig(algos=("v",), envs=("Pendulum-v1",), variants={"v": {"algo": "mairl",
                                                                          "mairl": {"policy_utd": -1}}})
    # from the command line: --variant NAME=FILE, recorded in the sweep's command
    file = tmp_path / "im.yaml"
    file.write_text("algo: bc\nbc:\n  max_epochs: 2\n")
    seen = {}
    monkeypatch.setattr("mbirl.experiments.sweep.run_sweep",
                        lambda sweep, out, **kw: seen.update(sweep=sweep, command=kw["command"]) or
                        type("R", (), {"finished": [], "skipped": [], "failed": {}, "out": out})())
    assert _cli("bench", "run", "--algos", "bc,bc2", "--envs", "Pendulum-v1", "--seeds", "0", "--variant",
                f"bc2={file}", "--out", str(tmp_path / "s")) == 0
    assert seen["sweep"].cells()[1].config().bc.max_epochs == 2
    assert f"--variant bc2={file.resolve()}" in seen["command"]
    assert _cli("bench", "run", "--algos", "bc", "--envs", "Pendulum-v1", "--variant", "x", "--out",
                str(tmp_path / "s")) == 2
    assert "expected NAME=FILE" in capsys.readouterr().err


def test_missing_bench_extra_is_a_clear_error(tmp_path, monkeypatch, capsys):
    from mbirl.experiments.sweep import bench_import

    for name in ("ray", "ray.tune", "rliable", "rliable.metrics", "rliable.library"):
        monkeypatch.setitem(sys.modules, name, None)
    with pytest.raises(InputError, match=r"ray is not installed.*pip install 'mbirl\[bench\]'"):
        bench_import("ray.tune")
    with pytest.raises(InputError, match="rliable is not installed"):
        iqm(np.ones((2, 1)))
    assert _cli("bench", "run", "--algos", "bc", "--envs", "Pendulum-v1", "--seeds", "0", "--out",
                str(tmp_path / "s")) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "pip install 'mbirl[bench]'" in err
    assert not (tmp_path / "s").exists()


def test_resume_plan_keeps_finished_runs_and_continues_unfinished_ones(tmp_path, monkeypatch):
    """Without Ray: the plan of a sweep whose first run finished and second was interrupted; run_cell leaves the
    finished run's files alone and completes the other exactly as an uninterrupted run."""
    from mbirl.algorithms.bc import BC
    from mbirl.experiments.imitation import run_imitation
    from mbirl.experiments.sweep import SweepConfig, plan_sweep, run_cell, run_sweep

    sweep = SweepConfig(algos=("bc",), envs=("Pendulum-v1",), seeds=(0, 1),
                        run={"eval_episodes": 1, "checkpoint_every": 1, "bc": {"max_epochs": 4}})
    out = tmp_path / "sweep"
    first, second = sweep.cells()
    reference = run_imitation(second.config(), tmp_path / "reference", progress=False)
    run_cell(first.config(), first.run_dir(out))
    before = {p: p.read_bytes() for p in first.run_dir(out).rglob("*") if p.is_file()}
    with monkeypatch.context() as patch:
        interrupt_after(patch, BC, 2)  # the driver killed mid-run
        with pytest.raises(KeyboardInterrupt):
            run_cell(second.config(), second.run_dir(out))
    with pytest.raises(InputError, match="already holds a run; pass --resume"):
        plan_sweep(sweep, out)
    plan = plan_sweep(sweep, out, resume=True)
    assert [c.name for c in plan.todo] == [second.name]
    # a finished sweep needs no Ray at all
    monkeypatch.setitem(sys.modules, "ray", None)
    resumed = run_cell(second.config(), second.run_dir(out))
    timing = ("train_seconds", "seconds_per_1k_env_steps")
    assert {k: v for k, v in resumed.items() if k not in timing} == \
        {k: v for k, v in reference.items() if k not in timing}
    result = run_sweep(sweep, out, resume=True)
    assert result.skipped == [first.name, second.name] and not result.finished and not result.failed
    assert {p: p.read_bytes() for p in first.run_dir(out).rglob("*") if p.is_file()} == before
    record = json.loads((out / "sweep.json").read_text())
    assert [t["run_dir"] for t in record["trials"]] == ["Pendulum-v1/bc/s0", "Pendulum-v1/bc/s1"]
    assert record["versions"]["torch"] and record["command"].startswith("mbirl bench run --algos bc")
    # a different grid or run setting is refused; a larger budget is not
    with pytest.raises(InputError, match="different sweep"):
        plan_sweep(SweepConfig(algos=("bc",), envs=("Pendulum-v1",), seeds=(0, 1, 2), run=sweep.run), out, resume=True)
    with pytest.raises(InputError, match="run settings"):
        plan_sweep(SweepConfig(algos=("bc",), envs=("Pendulum-v1",), seeds=(0, 1),
                               run={**sweep.run, "bc": {"max_epochs": 5}}), out, resume=True)
    with pytest.raises(InputError, match="already holds a sweep"):
        plan_sweep(sweep, out)


# ----------------------------------------------------------------------------------------- Ray sweeps (slow)


def _metrics_bytes(out: Path) -> dict[str, bytes]:
    return {str(p.relative_to(out)): p.read_bytes() for p in sorted(out.glob("*/*/s*/metrics.json"))}


@pytest.mark.slow
def test_local_sweep_end_to_end_report_and_resume_after_a_kill(tmp_path, monkeypatch, capsys):
    """mairl and bc x Pendulum x 2 seeds on a local Ray (2k env steps), the report, then one run replaced by a
    half-done one (the driver killed mid-trial) and ``bench run --resume``: finished runs' metrics.json unchanged
    byte for byte, the interrupted run completed exactly as it first ran."""
    from mbirl.algorithms.mairl import MAIRL
    from mbirl.experiments.imitation import run_imitation
    from mbirl.experiments.sweep import SweepConfig

    cfg = tmp_path / "tiny.yaml"
    cfg.write_text(TINY_YAML)
    out = tmp_path / "sweep"
    args = ["bench", "run", "--algos", "mairl,bc", "--envs", "Pendulum-v1", "--seeds", "0-1", "--env-steps", "2000",
            "--config", str(cfg), "--num-cpus", "2", "--out", str(out), "--quiet"]
    assert _cli(*args) == 0
    text = capsys.readouterr().out
    assert "4 runs (2 algorithms x 1 environments x 2 seeds), 0 already finished, 4 to run" in text
    assert "finished now: 4, already finished: 0, failed: 0" in text
    first = _metrics_bytes(out)
    assert len(first) == 4
    record = json.loads((out / "sweep.json").read_text())
    assert record["config"]["seeds"] == [0, 1] and record["config"]["run"]["mairl"]["horizon"] == 5
    assert "--env-steps 2000" in record["command"] and record["versions"]["ray"]
    m = json.loads(first["Pendulum-v1/mairl/s1/metrics.json"])
    assert m["env_steps"] >= 2000 and m["eval"][-1]["env_steps"] == m["env_steps"]

    assert _cli("bench", "report", str(out), "--out", str(tmp_path / "report"), "--reps", "200") == 0
    summary = json.loads((tmp_path / "report" / "summary.json").read_text())
    assert set(summary["envs"]["Pendulum-v1"]) == {"mairl", "bc"}
    assert summary["envs"]["Pendulum-v1"]["mairl"]["seconds_per_1k_steps"] > 0
    assert (tmp_path / "report" / "index.html").is_file()

    # the driver was killed while Pendulum-v1/mairl/s1 was training: its directory holds a checkpoint, no metrics
    victim = out / "Pendulum-v1" / "mairl" / "s1"
    shutil.rmtree(victim)
    sweep = SweepConfig.from_json(record["config"], source="sweep.json")
    cell = next(c for c in sweep.cells() if c.name == "Pendulum-v1/mairl/s1")
    with monkeypatch.context() as patch:
        interrupt_after(patch, MAIRL, 60)
        with pytest.raises(KeyboardInterrupt):
            run_imitation(cell.config(), victim, progress=False)
    assert not (victim / "metrics.json").exists() and (victim / "checkpoints" / "last.json").exists()
    assert _cli("bench", "run", "--out", str(out), "--resume", "--num-cpus", "2", "--quiet") == 0
    assert "3 already finished, 1 to run" in capsys.readouterr().out
    again = _metrics_bytes(out)
    assert {k: v for k, v in again.items() if "mairl/s1" not in k} == \
        {k: v for k, v in first.items() if "mairl/s1" not in k}
    timing = ("train_seconds", "seconds_per_1k_env_steps")
    resumed, before = (json.loads(d["Pendulum-v1/mairl/s1/metrics.json"]) for d in (again, first))
    assert {k: v for k, v in resumed.items() if k not in timing} == {k: v for k, v in before.items() if k not in timing}
    # and once all are finished, --resume runs nothing (no Ray needed)
    assert _cli("bench", "run", "--out", str(out), "--resume", "--quiet") == 0
    assert "finished now: 0, already finished: 4, failed: 0" in capsys.readouterr().out
    assert _metrics_bytes(out) == again


@pytest.mark.slow
def test_two_node_cluster_runs_every_trial(tmp_path):
    """A simulated two-node Ray cluster (one CPU each): the trials spread over both nodes and every run directory
    is complete."""
    import ray
    from ray.cluster_utils import Cluster

    from mbirl.experiments.sweep import SweepConfig, run_sweep

    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1})
    try:
        cluster.add_node(num_cpus=1)
        cluster.wait_for_nodes()
        sweep = SweepConfig(algos=("bc",), envs=("Pendulum-v1", "CartPole-v1"), seeds=(0, 1),
                            run={"eval_episodes": 2, "bc": {"max_epochs": 3}})
        result = run_sweep(sweep, tmp_path / "sweep", address=cluster.address, verbose=0)
        assert not result.failed and len(result.finished) == 4
        assert len(set(result.nodes.values())) == 2, result.nodes  # both nodes ran trials
        for cell in sweep.cells():
            run = cell.run_dir(tmp_path / "sweep")
            m = json.loads((run / "metrics.json").read_text())
            assert (m["env_id"], m["algo"], m["seed"]) == (cell.env, cell.algo, cell.seed)
            assert (run / "checkpoints" / "last.json").exists() and (run / "metrics.jsonl").exists()
    finally:
        ray.shutdown()
        cluster.shutdown()


@pytest.mark.slow
def test_failed_trials_are_retried_and_reported(tmp_path):
    """A trial whose demonstrations vanish after the sweep was validated fails; Ray restarts it (max_failures) and
    it finishes once the file is back. One whose file never comes back is reported as failed with its error."""
    import os
    import threading
    import time

    from mbirl.experiments.sweep import SweepConfig, run_sweep

    files = {env: tmp_path / f"{env}.npz" for env in ("Pendulum-v1", "CartPole-v1")}
    for env, path in files.items():
        shutil.copyfile(f"data/demos/{env}.npz", path)
    sweep = SweepConfig(algos=("bc",), envs=tuple(files), seeds=(0,), demos={k: str(v) for k, v in files.items()},
                        run={"eval_episodes": 1, "bc": {"max_epochs": 2}}, max_failures=2)
    out = tmp_path / "sweep"
    hidden = tmp_path / "hidden.npz"

    def hide(plan) -> None:
        os.rename(files["Pendulum-v1"], hidden)
        files["CartPole-v1"].unlink()

        def restore() -> None:  # after the first failure has been recorded
            deadline = time.monotonic() + 120
            while not list((out / "_tune").glob("*/Pendulum-v1_bc_s0/error.txt")) and time.monotonic() < deadline:
                time.sleep(0.05)
            os.rename(hidden, files["Pendulum-v1"])

        threading.Thread(target=restore, daemon=True).start()

    result = run_sweep(sweep, out, num_cpus=2, verbose=0, on_plan=hide)
    assert result.finished == ["Pendulum-v1/bc/s0"]
    assert list(result.failed) == ["CartPole-v1/bc/s0"]
    assert "demonstration file not found" in result.failed["CartPole-v1/bc/s0"]
    assert (out / "Pendulum-v1" / "bc" / "s0" / "metrics.json").is_file()


def _start_sweep(out: Path, cfg: Path, *extra: str) -> subprocess.Popen:
    args = [sys.executable, "-m", "mbirl", "bench", "run", "--algos", "bc,mairl", "--envs", "Pendulum-v1", "--seeds",
            "0", "--env-steps", "3000", "--config", str(cfg), "--num-cpus", "2", "--out", str(out), "--quiet", *extra]
    return subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _wait_for(condition, proc: subprocess.Popen, timeout: float = 300.0) -> None:
    import time

    deadline = time.monotonic() + timeout
    while not condition():
        assert proc.poll() is None, f"the sweep ended early: {proc.communicate()}"
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.1)


@pytest.mark.slow
def test_a_real_driver_killed_by_sigterm_or_sigkill(tmp_path):
    """The sweep driver as a real process. SIGTERM: exit 143 with one line naming --resume (no Ray stack dump,
    and --quiet prints no Ray Tune box). SIGKILL while one trial has finished and the other is mid-run:
    ``--resume`` completes the sweep and leaves the finished trial's metrics.json as it was."""
    import os
    import signal

    cfg = tmp_path / "tiny.yaml"
    cfg.write_text(TINY_YAML)
    out = tmp_path / "sweep"
    mairl, bc = out / "Pendulum-v1" / "mairl" / "s0", out / "Pendulum-v1" / "bc" / "s0"

    proc = _start_sweep(out, cfg)
    _wait_for(lambda: (mairl / "config.json").is_file() or (bc / "config.json").is_file(), proc)
    proc.send_signal(signal.SIGTERM)
    stdout, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 143, stderr
    assert "SIGTERM received" not in stderr and "Traceback" not in stderr
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and "interrupted by SIGTERM" in lines[0] and "--resume" in lines[0], stderr
    assert "Configuration for experiment" not in stdout and "View detailed results" not in stdout, stdout

    proc = _start_sweep(out, cfg, "--resume")
    _wait_for(lambda: (bc / "metrics.json").is_file() and (mairl / "checkpoints" / "last.json").is_file(), proc)
    os.kill(proc.pid, signal.SIGKILL)
    proc.communicate(timeout=60)
    assert not (mairl / "metrics.json").exists(), "the run finished before the kill: make it longer"
    finished = (bc / "metrics.json").read_bytes()
    done = subprocess.run([sys.executable, "-m", "mbirl", "bench", "run", "--out", str(out), "--resume",
                           "--num-cpus", "2", "--quiet"], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    assert "finished now: 1, already finished: 1, failed: 0" in done.stdout, done.stdout
    assert (bc / "metrics.json").read_bytes() == finished
    metrics = json.loads((mairl / "metrics.json").read_text())
    assert metrics["env_steps"] >= 3000 and metrics["eval"][-1]["env_steps"] == metrics["env_steps"]
