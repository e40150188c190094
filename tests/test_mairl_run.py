"""MAIRL run directories: metrics.json, exact --resume (also of runs with the old flat config.json), evaluation +
video, the command line's configuration (nested YAML, legacy flat keys, --threads) and its input errors."""

from __future__ import annotations

import json
import re
import shutil
import warnings

import pytest
import torch

from mbirl.algorithms.mairl import MAIRL, MAIRLConfig
from mbirl.cli import main
from mbirl.experiments.mairl_run import MAIRLRunConfig, evaluate_run, run_mairl
from mbirl.experts.demos import demo_stats, normalized_return
from mbirl.reporting.checkpoint import load_checkpoint, save_checkpoint
from mbirl.reporting.runs import checkpoint_stem
from mbirl.validation import flatten_config

DEMOS = "data/demos/Pendulum-v1.npz"
TINY_TRAINER = {"warmup_steps": 100, "n_rollouts": 2, "horizon": 5, "batch_size": 32, "model_steps": 2,
                "model_pretrain_steps": 5}
TIMING = ("train_seconds", "seconds_per_1k_env_steps")


def _tiny(trainer: dict | None = None, **kw) -> MAIRLRunConfig:
    base = {"demos": DEMOS, "env_steps": 300, "eval_every": 100, "eval_episodes": 1, "checkpoint_every": 1,
            "seed": 3}
    return MAIRLRunConfig(**{**base, **kw}, trainer=MAIRLConfig(**{**TINY_TRAINER, **(trainer or {})}))


def _rows(run_dir) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def _untimed(metrics: dict) -> dict:
    return {k: v for k, v in metrics.items() if k not in TIMING}


def _assert_resumed_equals_uninterrupted(resumed: dict, full: dict, stopped_at: int) -> None:
    """Metrics of a run stopped by its budget at ``stopped_at`` steps and resumed with a larger one: those of the
    uninterrupted run, plus the evaluation the first leg ended with."""
    extra = [e for e in resumed["eval"] if e not in full["eval"]]
    assert len(extra) == 1 and stopped_at <= extra[0]["env_steps"] < stopped_at + 10
    assert [e for e in resumed["eval"] if e not in extra] == full["eval"]
    drop = ("eval", "best_normalized_return")
    assert {k: v for k, v in _untimed(resumed).items() if k not in drop} == \
        {k: v for k, v in _untimed(full).items() if k not in drop}


def _assert_same_networks(a_dir, b_dir) -> None:
    a = load_checkpoint(checkpoint_stem(a_dir))["trainer"]
    b = load_checkpoint(checkpoint_stem(b_dir))["trainer"]
    for key in ("policy", "model", "disc"):
        for name, tensor in a[key].items():
            torch.testing.assert_close(b[key][name], tensor, rtol=0, atol=0)


def _check_run(cfg: MAIRLRunConfig, run_dir, m: dict) -> None:
    """What every finished run must satisfy: budget reached, eval rows at the schedule with their normalisation,
    one JSONL row per iteration (plus the initial evaluation), the metrics file equal to what was returned."""
    demos = demo_stats(cfg.demos)
    per_iteration = cfg.trainer.n_rollouts * cfg.trainer.horizon
    assert cfg.env_steps <= m["env_steps"] < cfg.env_steps + per_iteration
    assert m["env_id"] == demos.env_id and m["seed"] == cfg.seed
    assert (m["variant"], m["dynamics"]) == (cfg.trainer.variant, cfg.trainer.dynamics)
    steps = [e["env_steps"] for e in m["eval"]]
    assert steps[0] == 0 and steps[-1] == m["env_steps"] and steps == sorted(set(steps))
    # one evaluation per eval_every interval, at the first iteration that reaches it
    assert [s // cfg.eval_every for s in steps[1:-1]] == list(range(1, len(steps) - 1))
    for e in m["eval"]:
        assert set(e) == {"env_steps", "mean_return", "normalized_return"}
        assert e["normalized_return"] == normalized_return(e["mean_return"], demos.expert_return,
                                                           demos.random_return)
    assert m["final_normalized_return"] == m["eval"][-1]["normalized_return"]
    assert m["best_normalized_return"] == max(e["normalized_return"] for e in m["eval"])
    rows = _rows(run_dir)
    assert len(rows) == m["iterations"] + 1 and rows[0]["step"] == 0 and rows[-1]["step"] == m["env_steps"]
    assert [r["step"] for r in rows if "charts/eval_return" in r] == steps
    assert json.loads((run_dir / "metrics.json").read_text()) == m
    state = load_checkpoint(checkpoint_stem(run_dir))
    assert state["trainer"]["env_steps"] == m["env_steps"] and state["trainer"]["iteration"] == m["iterations"]
    assert json.loads((run_dir / "config.json").read_text()) == state["config"]


@pytest.fixture(scope="module")
def full_run(tmp_path_factory):
    """The uninterrupted tiny Pendulum run the resume tests compare against."""
    run_dir = tmp_path_factory.mktemp("mairl") / "full"
    return run_dir, run_mairl(_tiny(), run_dir, progress=False)


def test_run_writes_metrics_and_resume_is_exact(tmp_path, full_run):
    full_dir, full = full_run
    _check_run(_tiny(), full_dir, full)
    saved = json.loads((full_dir / "config.json").read_text())
    assert saved["trainer"]["horizon"] == 5 and "horizon" not in saved  # nested: trainer hyper-parameters apart

    run_mairl(_tiny(env_steps=180), tmp_path / "split", progress=False)
    with pytest.raises(Exception, match="--resume"):
        run_mairl(_tiny(), tmp_path / "split", progress=False)
    with pytest.raises(Exception, match="different configuration"):
        run_mairl(_tiny(seed=4), tmp_path / "split", resume=True, progress=False)
    with pytest.raises(Exception, match=r"different configuration \(trainer.horizon\)"):
        run_mairl(_tiny(trainer={"horizon": 6}), tmp_path / "split", resume=True, progress=False)
    resumed = run_mairl(_tiny(), tmp_path / "split", resume=True, progress=False)
    _assert_same_networks(full_dir, tmp_path / "split")
    _assert_resumed_equals_uninterrupted(resumed, full, 180)
    assert [r["step"] for r in _rows(tmp_path / "split")] == [r["step"] for r in _rows(full_dir)]

    out = evaluate_run(full_dir, 1, video=tmp_path / "v.mp4")
    assert (tmp_path / "v.mp4").stat().st_size > 1000
    assert out["episodes"] == 1 and out["seed"] == 2_000_000
    # Episode i resets with seed + i: two episodes from seed 5 are episode 1 from 5 and episode 1 from 6.
    two = evaluate_run(full_dir, 2, seed=5)["returns"]
    assert two == [evaluate_run(full_dir, 1, seed=s)["returns"][0] for s in (5, 6)]
    assert two[0] != two[1]


def _flat(config: dict) -> dict:
    """A config as runs wrote it before the trainer's hyper-parameters were nested (no hidden widths then)."""
    trainer = {k: v for k, v in config["trainer"].items() if k not in ("policy_hidden", "disc_hidden")}
    return {**{k: v for k, v in config.items() if k != "trainer"}, **trainer}


def test_runs_with_the_old_flat_config_evaluate_and_resume_exactly(tmp_path, full_run):
    full_dir, full = full_run
    old = tmp_path / "old"
    run_mairl(_tiny(env_steps=180), old, progress=False)
    config = json.loads((old / "config.json").read_text())
    (old / "config.json").write_text(json.dumps(_flat(config)))
    state = load_checkpoint(checkpoint_stem(old))
    save_checkpoint(checkpoint_stem(old), {**state, "config": _flat(state["config"])})

    with warnings.catch_warnings():
        warnings.simplefilter("error")  # reading a saved run's layout warns nobody
        assert evaluate_run(old, 1)["env_steps_trained"] == 180
    with pytest.raises(Exception, match=r"different configuration \(trainer.n_rollouts\)"):
        run_mairl(_tiny(trainer={"n_rollouts": 3}), old, resume=True, progress=False)
    resumed = run_mairl(_tiny(), old, resume=True, progress=False)
    _assert_resumed_equals_uninterrupted(resumed, full, 180)
    _assert_same_networks(full_dir, old)
    assert json.loads((old / "config.json").read_text()) == json.loads((full_dir / "config.json").read_text())


@pytest.mark.parametrize(("env", "trainer"), [("CartPole-v1", {}), ("InvertedPendulum-v5", {"state_only": True}),
                                              ("Pendulum-v1", {"variant": "mgail", "dynamics": "attention-multi",
                                                               "ema_rate": 0.5}),
                                              ("CartPole-v1", {"policy_utd": 0.3, "ensemble_size": 2,
                                                               "model_penalty": 0.1, "max_disagreement": 5.0,
                                                               "demo_starts": 0.25, "start_window": 50,
                                                               "imagine_batch": 8, "imagine_horizon": 3}),
                                              pytest.param("Pendulum-v1", {"policy_utd": 0.1, "real_update": False,
                                                                           "imagine_batch": 8, "imagine_horizon": 3},
                                                           marks=pytest.mark.slow)])
def test_tiny_runs_of_every_action_space_and_option(tmp_path, env, trainer):
    """Each action space / option: a complete, consistent run directory, and the run interrupted at 180 steps
    and resumed ends exactly where the uninterrupted one does."""
    cfg = _tiny(trainer, demos=f"data/demos/{env}.npz", env=env)
    m = run_mairl(cfg, tmp_path / "r", progress=False)
    _check_run(cfg, tmp_path / "r", m)
    assert len(m["eval"]) == 4  # 0, then one per 100 steps
    assert m["torch_threads"] == torch.get_num_threads()
    run_mairl(_tiny(trainer, demos=f"data/demos/{env}.npz", env=env, env_steps=180), tmp_path / "s",
              progress=False)
    resumed = run_mairl(cfg, tmp_path / "s", resume=True, progress=False)
    _assert_resumed_equals_uninterrupted(resumed, m, 180)
    _assert_same_networks(tmp_path / "r", tmp_path / "s")


def _cli(*args: str) -> int:
    with pytest.raises(SystemExit) as exc:
        main(list(args))
    return int(exc.value.code or 0)


def test_cli_mairl_and_expert_errors(tmp_path, capsys):
    assert _cli("mairl", "train", "--demos", str(tmp_path / "none.npz"), "--run-dir", str(tmp_path / "r")) == 2
    assert "mbirl: error:" in capsys.readouterr().err
    assert _cli("mairl", "train", "--demos", DEMOS, "--dynamics", "lstm", "--run-dir", str(tmp_path / "r")) == 2
    assert _cli("mairl", "train", "--demos", DEMOS, "--env", "Hopper-v5", "--run-dir", str(tmp_path / "r")) == 2
    assert _cli("mairl", "train", "--demos", DEMOS, "--env-steps", "0", "--run-dir", str(tmp_path / "r")) == 2
    assert _cli("mairl", "train", "--run-dir", str(tmp_path / "r")) == 2  # demos neither given nor in a config
    assert "missing required option(s) demos" in capsys.readouterr().err
    # MGAIL's GAIL discriminator has no state-only form: refused, not silently dropped
    assert _cli("mairl", "train", "--demos", DEMOS, "--variant", "mgail", "--state-only", "--run-dir",
                str(tmp_path / "r")) == 2
    assert "field 'state_only'" in capsys.readouterr().err
    assert not (tmp_path / "r").exists()
    assert _cli("mairl", "eval", "--run-dir", str(tmp_path / "nothing")) == 2
    assert _cli("mairl", "eval", "--run-dir", str(tmp_path / "nothing"), "--seed", "-1") == 2
    assert "field 'seed'" in capsys.readouterr().err
    assert _cli("expert", "train", "--env", "NoSuchEnv-v0", "--out", str(tmp_path / "e")) == 2
    assert _cli("expert", "demos", "--env", "Pendulum-v1", "--expert", str(tmp_path / "missing")) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err


def _captured_config(monkeypatch, *args: str) -> MAIRLRunConfig:
    """The run configuration ``mbirl mairl train ARGS`` builds (without training)."""
    import mbirl.experiments.mairl_run as mairl_run

    seen = []

    def fake_run(cfg, run_dir, **kw):
        seen.append(cfg)
        return {"env_id": "x", "variant": cfg.trainer.variant, "dynamics": cfg.trainer.dynamics, "seed": cfg.seed,
                "final_normalized_return": 0.0, "final_mean_return": 0.0, "env_steps": 0, "train_seconds": 0.0}

    monkeypatch.setattr(mairl_run, "run_mairl", fake_run)
    assert _cli("mairl", "train", *args) == 0
    return seen[0]


def test_cli_config_file_is_nested_and_accepts_the_legacy_flat_keys(tmp_path, monkeypatch):
    nested = tmp_path / "nested.yaml"
    nested.write_text(f"demos: {DEMOS}\nenv_steps: 4000\ntrainer:\n  horizon: 10\n  batch_size: 64\n"
                      "  policy_hidden: [32, 32]\n  variant: mgail\n")
    cfg = _captured_config(monkeypatch, "--config", str(nested), "--seed", "7")
    assert cfg == MAIRLRunConfig(demos=DEMOS, env_steps=4000, seed=7,
                                 trainer=MAIRLConfig(horizon=10, batch_size=64, policy_hidden=(32, 32),
                                                     variant="mgail"))
    # options given on the command line win over the file; the file wins over the defaults
    cfg = _captured_config(monkeypatch, "--config", str(nested), "--horizon", "3", "--env-steps", "5000")
    assert (cfg.trainer.horizon, cfg.env_steps, cfg.trainer.batch_size) == (3, 5000, 64)

    flat = tmp_path / "flat.yaml"
    flat.write_text(f"demos: {DEMOS}\nenv_steps: 4000\nhorizon: 10\nbatch_size: 64\npolicy_hidden: [32, 32]\n"
                    "variant: mgail\n")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        legacy = _captured_config(monkeypatch, "--config", str(flat), "--seed", "7")
    moved = [re.search(r"option '(\w+)' is deprecated at this level; write it as 'trainer\.(\w+)'", str(w.message))
             for w in caught if issubclass(w.category, FutureWarning)]
    assert sorted(m[1] for m in moved if m and m[1] == m[2]) == ["batch_size", "horizon", "policy_hidden", "variant"]
    assert legacy == MAIRLRunConfig(demos=DEMOS, env_steps=4000, seed=7,
                                    trainer=MAIRLConfig(horizon=10, batch_size=64, policy_hidden=(32, 32),
                                                        variant="mgail"))
    bad = tmp_path / "bad.yaml"
    bad.write_text("trainer:\n  horizon: ten\n")
    assert _cli("mairl", "train", "--demos", DEMOS, "--config", str(bad), "--run-dir", str(tmp_path / "r")) == 2
    bad.write_text("trainer:\n  no_such_option: 1\n")
    assert _cli("mairl", "train", "--demos", DEMOS, "--config", str(bad), "--run-dir", str(tmp_path / "r")) == 2
    assert not (tmp_path / "r").exists()


def test_cli_mairl_train_tiny_with_two_threads(tmp_path, monkeypatch):
    """``mbirl --threads 2`` decides torch's threads for the whole run (nothing in the MAIRL path resets them)."""
    cfg = tmp_path / "c.yaml"
    cfg.write_text("trainer:\n  warmup_steps: 100\n  batch_size: 32\n  model_pretrain_steps: 5\n  model_steps: 1\n")
    threads = []
    original = MAIRL.iteration_step

    def recording(self):
        threads.append(torch.get_num_threads())
        return original(self)

    monkeypatch.setattr(MAIRL, "iteration_step", recording)
    before = torch.get_num_threads()
    try:
        code = _cli("--threads", "2", "mairl", "train", "--demos", DEMOS, "--env", "Pendulum-v1", "--env-steps",
                    "200", "--n-rollouts", "2", "--eval-every", "200", "--eval-episodes", "1", "--config", str(cfg),
                    "--run-dir", str(tmp_path / "r"), "--no-progress", "--dynamics", "gru", "--variant", "mgail")
    finally:
        torch.set_num_threads(before)
    assert code == 0
    assert threads and set(threads) == {2}
    m = json.loads((tmp_path / "r" / "metrics.json").read_text())
    assert m["torch_threads"] == 2 and m["variant"] == "mgail" and m["dynamics"] == "gru"
    saved = flatten_config(json.loads((tmp_path / "r" / "config.json").read_text()))
    assert saved["trainer.batch_size"] == 32 and saved["trainer.n_rollouts"] == 2 and saved["env_steps"] == 200


def test_cli_mairl_models_takes_a_config_file(tmp_path):
    cfg = tmp_path / "models.yaml"
    cfg.write_text(f"demos: {DEMOS}\nsteps: 200\ntrain_steps: 3\nmodels: [gru, mlp]\nbatch_size: 16\n")
    assert _cli("mairl", "models", "--config", str(cfg), "--models", "mlp", "--out", str(tmp_path / "m")) == 0
    res = json.loads((tmp_path / "m" / "model_errors.json").read_text())
    assert list(res["models"]) == ["mlp"] and res["train_steps"] == 3
    assert (tmp_path / "m" / "model_errors.png").is_file()
    shutil.rmtree(tmp_path / "m")
    bad = tmp_path / "bad.yaml"
    bad.write_text(f"demos: {DEMOS}\nmodels: [lstm]\n")
    assert _cli("mairl", "models", "--config", str(bad), "--out", str(tmp_path / "m")) == 2
    assert not (tmp_path / "m").exists()
    # ensembles beside the single models: the mean prediction's errors and how disagreement ranks the errors
    assert _cli("mairl", "models", "--config", str(cfg), "--models", "mlp", "--ensemble-size", "3", "--out",
                str(tmp_path / "e")) == 0
    res = json.loads((tmp_path / "e" / "model_errors.json").read_text())
    assert list(res["models"]) == ["mlp", "mlp-x3"]
    single, ens = res["models"]["mlp"], res["models"]["mlp-x3"]
    assert ens["params"] == 3 * single["params"] and "disagreement_error_spearman" not in single
    assert ens["mean_disagreement"] > 0 and -1 <= ens["disagreement_error_spearman"] <= 1
    assert _cli("mairl", "models", "--config", str(cfg), "--ensemble-size", "0", "--out", str(tmp_path / "z")) == 2
