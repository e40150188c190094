"""The imitation harness: behaviour cloning learns the shipped demonstrations and keeps its best held-out weights,
every algorithm resumes exactly after an interruption, MAIRL through the harness is ``run_mairl``, and ``mbirl il``
(nested YAML, unknown algorithms)."""

from __future__ import annotations

import json
import warnings

import pytest
import torch

from imitation_helpers import cli as _cli
from imitation_helpers import interrupt_after
from imitation_helpers import rows as _rows
from imitation_helpers import untimed as _untimed
from mbirl.algorithms.bc import BC, BCConfig, build_bc
from mbirl.algorithms.mairl import MAIRLConfig
from mbirl.errors import InputError
from mbirl.experiments.imitation import ALGORITHMS, ImitationRunConfig, run_imitation
from mbirl.experiments.mairl_run import MAIRLRunConfig, run_mairl
from mbirl.experts.demos import DemoStats, demo_stats
from mbirl.reporting.checkpoint import load_checkpoint
from mbirl.reporting.runs import checkpoint_stem

CARTPOLE, PENDULUM = "data/demos/CartPole-v1.npz", "data/demos/Pendulum-v1.npz"
TINY_MAIRL = MAIRLConfig(warmup_steps=100, n_rollouts=2, horizon=5, batch_size=32, model_steps=2,
                         model_pretrain_steps=5)


def test_registry_and_config():
    assert ALGORITHMS.names[:3] == ("mairl", "mgail", "bc") and "dac" in ALGORITHMS.names
    with pytest.raises(InputError, match=r"unknown algorithm 'dagger' \(expected one of mairl, mgail, bc, "):
        ImitationRunConfig(demos=PENDULUM, algo="dagger")
    # algo decides MAIRL's variant: mgail sets it, an explicit contradiction is refused
    assert ImitationRunConfig(demos=PENDULUM, algo="mgail").mairl.variant == "mgail"
    assert ImitationRunConfig(demos=PENDULUM, algo="mairl").mairl.variant == "mairl"
    with pytest.raises(InputError, match="mairl.variant"):
        ImitationRunConfig(demos=PENDULUM, algo="mairl", mairl=MAIRLConfig(variant="mgail"))
    with pytest.raises(InputError, match="mairl.warmup_steps"):
        ImitationRunConfig(demos=PENDULUM, env_steps=1000)
    ImitationRunConfig(demos=PENDULUM, algo="bc", env_steps=1000)  # BC has no warm-up
    assert MAIRLRunConfig(demos=PENDULUM, seed=4, trainer=MAIRLConfig(variant="mgail")).to_imitation() == \
        ImitationRunConfig(demos=PENDULUM, seed=4, algo="mgail", mairl=MAIRLConfig(variant="mgail"))
    for bad in ({"holdout": 1.0}, {"patience": 0}, {"lr": 0.0}, {"ent_weight": -1.0}, {"hidden": (0,)}):
        with pytest.raises(InputError):
            BCConfig(**bad)


@pytest.mark.parametrize(("demos", "epochs", "at_least"), [(CARTPOLE, 5, 0.95), (PENDULUM, 30, 0.8)])
def test_bc_learns_the_shipped_demonstrations(tmp_path, demos, epochs, at_least):
    """Measured with seed 1: CartPole 0.02 before training, 1.0 after 5 epochs; Pendulum 0.16 before, 0.95 after
    30 epochs (the evaluation protocol of every algorithm: 10 deterministic episodes, reset seeds 1000000+i)."""
    cfg = ImitationRunConfig(demos=demos, algo="bc", seed=1, bc=BCConfig(max_epochs=epochs))
    m = run_imitation(cfg, tmp_path / "r", progress=False)
    before, after = (e["normalized_return"] for e in m["eval"])
    assert before < 0.3 and after >= at_least, m["eval"]
    assert [e["env_steps"] for e in m["eval"]] == [0, 0] and m["env_steps"] == 0
    assert m["seconds_per_1k_env_steps"] is None and m["iterations"] == m["epochs"] == epochs
    assert m["final_normalized_return"] == after and m["algo"] == "bc"
    assert json.loads((tmp_path / "r" / "metrics.json").read_text()) == m
    rows = _rows(tmp_path / "r")
    assert [r["step"] for r in rows] == list(range(epochs + 1))  # the initial evaluation, then one row per epoch


def test_bc_early_stopping_keeps_the_best_heldout_weights():
    demos = demo_stats(CARTPOLE)
    bc = build_bc(BCConfig(patience=2, max_epochs=100), demos, seed=0)
    assert len(bc.heldout_episodes) == 2 and len(bc.train_episodes) == 8  # 20% of 10 episodes
    assert not set(bc.heldout_episodes) & set(bc.train_episodes)
    initial = bc.heldout_nll()
    nlls = []
    while not bc.finished(0):
        nlls.append(bc.iteration_step().scalars["losses/heldout_nll"])
    assert bc.stopped_early and bc.iteration == len(nlls) < 100
    best = min(nlls)
    assert best < initial and bc.best_epoch == nlls.index(best) + 1 and bc.iteration == bc.best_epoch + 2
    assert nlls[-1] > best and bc.heldout_nll(bc.policy) == nlls[-1]
    # what is evaluated and exported is the best epoch's policy, not the last one
    assert bc.heldout_nll() == best == bc.best_nll
    again = build_bc(BCConfig(patience=2, max_epochs=100), demos, seed=0)
    again.load_policy(bc.state_dict())
    assert again.heldout_nll() == best
    obs = torch.as_tensor(demos.obs[:50])
    assert torch.equal(again.best_policy.act(obs), bc.best_policy.act(obs))
    assert not torch.equal(bc.policy.distribution(obs).logits, bc.best_policy.distribution(obs).logits)

    one_episode = DemoStats(demos.trajectories[:1], demos.meta, "one.npz")
    with pytest.raises(InputError, match="at least 2"):
        build_bc(BCConfig(), one_episode, seed=0)


@pytest.mark.parametrize("algo", ["bc", "mgail"])
def test_interrupted_run_resumes_exactly(tmp_path, monkeypatch, algo):
    """A run interrupted mid-way and resumed ends exactly where the uninterrupted one does: metrics, log rows and
    networks."""
    from mbirl.algorithms.mairl import MAIRL

    cfg = ImitationRunConfig(demos=PENDULUM, algo=algo, seed=2, env_steps=300, eval_every=100, eval_episodes=1,
                             checkpoint_every=1, mairl=TINY_MAIRL, bc=BCConfig(max_epochs=6, batch_size=64))
    full = run_imitation(cfg, tmp_path / "full", progress=False)
    with monkeypatch.context() as patch:
        interrupt_after(patch, BC if algo == "bc" else MAIRL, 3)
        with pytest.raises(KeyboardInterrupt):
            run_imitation(cfg, tmp_path / "split", progress=False)
    assert not (tmp_path / "split" / "metrics.json").exists()
    with pytest.raises(InputError, match="--resume"):
        run_imitation(cfg, tmp_path / "split", progress=False)
    resumed = run_imitation(cfg, tmp_path / "split", resume=True, progress=False)
    assert _untimed(resumed) == _untimed(full)
    assert _rows(tmp_path / "split") == _rows(tmp_path / "full")
    a = load_checkpoint(checkpoint_stem(tmp_path / "full"))["trainer"]
    b = load_checkpoint(checkpoint_stem(tmp_path / "split"))["trainer"]
    for key in ("policy", "best_policy") if algo == "bc" else ("policy", "model", "disc"):
        for name, tensor in a[key].items():
            torch.testing.assert_close(b[key][name], tensor, rtol=0, atol=0)
    # resuming a finished run changes nothing
    assert _untimed(run_imitation(cfg, tmp_path / "split", resume=True, progress=False)) == _untimed(full)


def test_mairl_through_the_harness_is_run_mairl(tmp_path):
    cfg = MAIRLRunConfig(demos=PENDULUM, env_steps=200, eval_every=100, eval_episodes=1, seed=3,
                         trainer=TINY_MAIRL)
    old = run_mairl(cfg, tmp_path / "mairl", progress=False)
    new = run_imitation(cfg.to_imitation(), tmp_path / "il", progress=False)
    assert _untimed(new) == _untimed(old)
    assert old["algo"] == "mairl" and (old["variant"], old["dynamics"]) == ("mairl", "attention")
    assert _rows(tmp_path / "il") == _rows(tmp_path / "mairl")
    # each directory keeps its own layout, and either evaluates with `mbirl il eval` or `mbirl mairl eval`
    assert "trainer" in json.loads((tmp_path / "mairl" / "config.json").read_text())
    assert json.loads((tmp_path / "il" / "config.json").read_text())["algo"] == "mairl"
    from mbirl.experiments.imitation import evaluate_imitation_run

    assert evaluate_imitation_run(tmp_path / "mairl", 1) == evaluate_imitation_run(tmp_path / "il", 1)


def test_cli_il_train_bc_end_to_end(tmp_path, capsys):
    yaml = tmp_path / "bc.yaml"
    yaml.write_text("algo: bc\neval_episodes: 2\nbc:\n  max_epochs: 2\n  hidden: [16]\n")
    run_dir = tmp_path / "r"
    assert _cli("il", "train", "--demos", CARTPOLE, "--config", str(yaml), "--seed", "1", "--run-dir", str(run_dir),
                "--no-progress") == 0
    assert "CartPole-v1 bc seed 1: normalised return" in capsys.readouterr().out
    m = json.loads((run_dir / "metrics.json").read_text())
    assert m["algo"] == "bc" and m["epochs"] == 2 and m["seed"] == 1
    saved = json.loads((run_dir / "config.json").read_text())
    assert saved["algo"] == "bc" and saved["bc"]["hidden"] == [16] and saved["eval_episodes"] == 2
    for group in ("il", "mairl"):
        assert _cli(group, "eval", "--run-dir", str(run_dir), "--episodes", "1") == 0
        out = json.loads(capsys.readouterr().out)
        assert out["algo"] == "bc" and out["env_steps_trained"] == 0 and out["episodes"] == 1
    # the finished run resumes to the same metrics; a changed hyper-parameter is refused
    assert _cli("il", "train", "--demos", CARTPOLE, "--config", str(yaml), "--seed", "1", "--run-dir", str(run_dir),
                "--no-progress", "--resume") == 0
    assert _untimed(json.loads((run_dir / "metrics.json").read_text())) == _untimed(m)
    assert _cli("il", "train", "--demos", CARTPOLE, "--config", str(yaml), "--seed", "2", "--run-dir", str(run_dir),
                "--no-progress", "--resume") == 2
    assert "different configuration (seed)" in capsys.readouterr().err


def test_cli_il_errors(tmp_path, capsys):
    run_dir = str(tmp_path / "r")
    assert _cli("il", "train", "--algo", "dagger", "--demos", CARTPOLE, "--run-dir", run_dir) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("mbirl: error:") and "Traceback" not in err
    assert "unknown algorithm 'dagger' (expected one of mairl, mgail, bc, " in err
    bad = tmp_path / "bad.yaml"
    bad.write_text("algo: mairl\nmairl:\n  variant: mgail\n")
    assert _cli("il", "train", "--demos", PENDULUM, "--config", str(bad), "--run-dir", run_dir) == 2
    assert "mairl.variant" in capsys.readouterr().err
    bad.write_text("bc:\n  patience: soon\n")
    assert _cli("il", "train", "--demos", PENDULUM, "--config", str(bad), "--run-dir", run_dir) == 2
    assert _cli("il", "train", "--algo", "bc", "--run-dir", run_dir) == 2  # no demos
    assert "missing required option(s) demos" in capsys.readouterr().err
    assert not (tmp_path / "r").exists()
    assert _cli("il", "eval", "--run-dir", str(tmp_path / "nothing")) == 2


def test_cli_il_train_nested_yaml(tmp_path, monkeypatch):
    import mbirl.experiments.imitation as imitation

    seen = []

    def fake_run(cfg, run_dir, **kw):
        seen.append((cfg, run_dir))
        return {"env_id": "x", "algo": cfg.algo, "seed": cfg.seed, "final_normalized_return": 0.0,
                "final_mean_return": 0.0, "env_steps": 0, "iterations": 0, "train_seconds": 0.0}

    monkeypatch.setattr(imitation, "run_imitation", fake_run)
    yaml = tmp_path / "c.yaml"
    yaml.write_text(f"demos: {PENDULUM}\nalgo: mgail\nenv_steps: 4000\nmairl:\n  horizon: 10\n  dynamics: gru\n"
                    "bc:\n  patience: 3\n  hidden: [16, 16]\n")
    assert _cli("il", "train", "--config", str(yaml), "--seed", "7") == 0
    cfg, run_dir = seen[-1]
    assert cfg == ImitationRunConfig(demos=PENDULUM, algo="mgail", env_steps=4000, seed=7,
                                     mairl=MAIRLConfig(horizon=10, dynamics="gru", variant="mgail"),
                                     bc=BCConfig(patience=3, hidden=(16, 16)))
    assert str(run_dir) == "runs/il/mgail"
    # the command line wins over the file, the file over the defaults
    assert _cli("il", "train", "--config", str(yaml), "--algo", "bc", "--env-steps", "10") == 0
    cfg, _ = seen[-1]
    assert (cfg.algo, cfg.env_steps, cfg.bc.patience, cfg.mairl.variant) == ("bc", 10, 3, "mairl")
    # a flat key that belongs to one family still works, with a deprecation warning; an ambiguous one is refused
    yaml.write_text(f"demos: {PENDULUM}\nhorizon: 10\n")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert _cli("il", "train", "--config", str(yaml)) == 0
    assert seen[-1][0].mairl.horizon == 10 and any("mairl.horizon" in str(w.message) for w in caught)
    yaml.write_text(f"demos: {PENDULUM}\nbatch_size: 10\n")
    assert _cli("il", "train", "--config", str(yaml)) == 2
