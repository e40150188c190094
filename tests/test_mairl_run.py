"""MAIRL run directories: metrics.json, exact --resume, evaluation + video, and the CLI's input errors."""

from __future__ import annotations

import json

import pytest
import torch

from mbirl.cli import main
from mbirl.experiments.mairl_run import MAIRLRunConfig, evaluate_run, run_mairl
from mbirl.reporting.checkpoint import load_checkpoint

DEMOS = "data/demos/Pendulum-v1.npz"


def _tiny(**kw) -> MAIRLRunConfig:
    base = {"demos": DEMOS, "env_steps": 300, "warmup_steps": 100, "n_rollouts": 2, "horizon": 5, "batch_size": 32,
            "model_steps": 2, "model_pretrain_steps": 5, "eval_every": 100, "eval_episodes": 1, "checkpoint_every": 1,
            "seed": 3}
    return MAIRLRunConfig(**{**base, **kw})


def test_run_writes_metrics_and_resume_is_exact(tmp_path):
    full = run_mairl(_tiny(), tmp_path / "full", progress=False)
    assert [e["env_steps"] for e in full["eval"]][0] == 0
    assert full["env_steps"] >= 300 and "final_normalized_return" in full
    saved = json.loads((tmp_path / "full" / "metrics.json").read_text())
    assert set(saved["eval"][0]) == {"env_steps", "mean_return", "normalized_return"}
    rows = [json.loads(line) for line in (tmp_path / "full" / "metrics.jsonl").read_text().splitlines()]
    assert rows[-1]["step"] == full["env_steps"]

    run_mairl(_tiny(env_steps=180), tmp_path / "split", progress=False)
    with pytest.raises(Exception, match="--resume"):
        run_mairl(_tiny(), tmp_path / "split", progress=False)
    with pytest.raises(Exception, match="different configuration"):
        run_mairl(_tiny(seed=4), tmp_path / "split", resume=True, progress=False)
    resumed = run_mairl(_tiny(), tmp_path / "split", resume=True, progress=False)
    a = load_checkpoint(tmp_path / "full" / "checkpoints" / "last")["trainer"]
    b = load_checkpoint(tmp_path / "split" / "checkpoints" / "last")["trainer"]
    for key in ("policy", "model", "disc"):
        for name, tensor in a[key].items():
            torch.testing.assert_close(b[key][name], tensor, rtol=0, atol=0)
    assert resumed["final_mean_return"] == full["final_mean_return"]
    rows_b = [json.loads(line) for line in (tmp_path / "split" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows_b] == [r["step"] for r in rows]

    out = evaluate_run(tmp_path / "full", 1, video=tmp_path / "v.mp4")
    assert (tmp_path / "v.mp4").stat().st_size > 1000
    assert out["episodes"] == 1 and out["seed"] == 2_000_000
    # Episode i resets with seed + i: two episodes from seed 5 are episode 1 from 5 and episode 1 from 6.
    two = evaluate_run(tmp_path / "full", 2, seed=5)["returns"]
    assert two == [evaluate_run(tmp_path / "full", 1, seed=s)["returns"][0] for s in (5, 6)]
    assert two[0] != two[1]


def test_cli_mairl_and_expert_errors(tmp_path, capsys):
    def run(*args: str) -> int:
        with pytest.raises(SystemExit) as exc:
            main(list(args))
        return int(exc.value.code or 0)

    assert run("mairl", "train", "--demos", str(tmp_path / "none.npz"), "--run-dir", str(tmp_path / "r")) == 2
    assert "mbirl: error:" in capsys.readouterr().err
    assert run("mairl", "train", "--demos", DEMOS, "--dynamics", "lstm", "--run-dir", str(tmp_path / "r")) == 2
    assert run("mairl", "train", "--demos", DEMOS, "--env", "Hopper-v5", "--run-dir", str(tmp_path / "r")) == 2
    assert run("mairl", "train", "--demos", DEMOS, "--env-steps", "0", "--run-dir", str(tmp_path / "r")) == 2
    assert not (tmp_path / "r").exists()
    assert run("mairl", "eval", "--run-dir", str(tmp_path / "nothing")) == 2
    assert run("mairl", "eval", "--run-dir", str(tmp_path / "nothing"), "--seed", "-1") == 2
    assert "field 'seed'" in capsys.readouterr().err
    assert run("expert", "train", "--env", "NoSuchEnv-v0", "--out", str(tmp_path / "e")) == 2
    assert run("expert", "demos", "--env", "Pendulum-v1", "--expert", str(tmp_path / "missing")) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err


def test_cli_mairl_train_tiny(tmp_path, capsys):
    cfg = tmp_path / "c.json"
    cfg.write_text(json.dumps({"warmup_steps": 100, "batch_size": 32, "model_pretrain_steps": 5, "model_steps": 1}))
    with pytest.raises(SystemExit) as exc:
        main(["mairl", "train", "--demos", DEMOS, "--env", "Pendulum-v1", "--env-steps", "200", "--n-rollouts", "2",
              "--eval-every", "200", "--eval-episodes", "1", "--config", str(cfg), "--run-dir", str(tmp_path / "r"),
              "--no-progress", "--dynamics", "gru", "--variant", "mgail"])
    assert exc.value.code in (0, None)
    m = json.loads((tmp_path / "r" / "metrics.json").read_text())
    assert m["variant"] == "mgail" and m["dynamics"] == "gru" and isinstance(m["final_normalized_return"], float)


@pytest.mark.parametrize(("env", "kw"), [("CartPole-v1", {}), ("InvertedPendulum-v5", {"state_only": True}),
                                         ("Pendulum-v1", {"variant": "mgail", "dynamics": "attention-multi",
                                                          "ema_rate": 0.5})])
def test_tiny_runs_of_every_action_space_and_option(tmp_path, env, kw):
    cfg = _tiny(demos=f"data/demos/{env}.npz", env=env, **kw)
    m = run_mairl(cfg, tmp_path / "r", progress=False)
    assert m["env_id"] == env and len(m["eval"]) >= 2
    assert all(isinstance(e["mean_return"], float) for e in m["eval"])
