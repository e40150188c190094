"""Bi-level MBIRL learning on the placing task, update semantics, baselines and resumable runs."""

from __future__ import annotations

import json
import math
from dataclasses import replace

import pytest
import torch

from mbirl.algorithms import (
    MBIRL,
    CostLearner,
    DemoBatch,
    FeatureMatchingIRL,
    MBIRLConfig,
    evaluate_on_robot,
    irl_loss,
    relative_goal_distance,
)
from mbirl.costs import make_cost
from mbirl.data import save_keypoint_demos
from mbirl.dynamics import KinematicKeypointDynamics
from mbirl.envs import default_kuka
from mbirl.errors import InputError
from mbirl.experiments import MBIRLRunConfig, run_mbirl


@pytest.fixture(scope="module")
def setup(placing_demos):
    dyn = KinematicKeypointDynamics(default_kuka())
    return dyn, DemoBatch.from_demos(placing_demos[0:3]), DemoBatch.from_demos(placing_demos[3:5])


def test_metrics_on_known_answers():
    z = torch.zeros(1, 3, 6)
    demo = torch.zeros(1, 3, 6)
    demo[0, :, 0] = torch.tensor([0.0, 1.0, 2.0])
    assert irl_loss(z, demo).item() == pytest.approx((1 + 4) / 6)
    # Keypoint 1 starts at its goal: it has nowhere to go and does not count (it used to divide by ~0).
    assert relative_goal_distance(demo, demo).item() == pytest.approx(0.0)
    moved = demo.clone()
    moved[0, -1, 0] = 1.0  # keypoint 0 halfway to its goal
    assert relative_goal_distance(moved, demo).item() == pytest.approx(0.5)
    moved[0, -1, 3] = 5.0  # keypoint 1 wanders off: still not a ratio over a zero start distance
    assert relative_goal_distance(moved, demo).item() == pytest.approx(0.5)
    almost = demo.clone()
    almost[0, 0, 4] = 1e-9  # a start a nanometre from the goal is not a reference either
    assert relative_goal_distance(moved, almost).item() == pytest.approx(0.5)
    assert math.isnan(relative_goal_distance(z, torch.zeros(1, 3, 6)).item())  # nothing to reach: undefined


@pytest.mark.parametrize("name", ["weighted", "timedep", "rbf"])
def test_learned_costs_beat_default_and_fit_the_demos(setup, name):
    dyn, train, test = setup
    default_test = MBIRL(make_cost("default", horizon=10, dim=6), dyn, train, test).evaluate(test).irl_loss.mean()
    learner = MBIRL(make_cost(name, horizon=10, dim=6), dyn, train, test)
    before = float(learner.evaluate(test).irl_loss.mean())
    for _ in range(40):
        learner.outer_iteration()
    after = learner.evaluate(test)
    # The zero-action loss of these demos is ~1570; a learned cost must go far below it and the default cost.
    assert float(after.irl_loss.mean()) < 0.5 * min(before, 1570.0)
    assert float(after.irl_loss.mean()) < 0.05 * float(default_test)
    assert float(after.relative_goal_distance.mean()) < 0.7


def test_per_demo_updates_make_one_adam_step_per_demo(setup):
    dyn, train, test = setup
    learner = MBIRL(make_cost("weighted", horizon=10, dim=6), dyn, train, test)
    learner.outer_iteration()
    assert learner.optimizer is not None
    assert int(learner.optimizer.state[learner.params[0]]["step"]) == 3
    batched = MBIRL(make_cost("weighted", horizon=10, dim=6), dyn, train, test, MBIRLConfig(update="batched"))
    batched.outer_iteration()
    assert int(batched.optimizer.state[batched.params[0]]["step"]) == 1  # type: ignore[union-attr]


def test_per_demo_update_matches_manual_sequential_updates(setup):
    dyn, train, _ = setup
    learner = MBIRL(make_cost("timedep", horizon=10, dim=6), dyn, train)
    manual_cost = make_cost("timedep", horizon=10, dim=6)
    manual = MBIRL(manual_cost, dyn, train.select(0))
    opt = manual.optimizer
    learner.outer_iteration()
    for i in range(3):  # the original's loop: one demo, one inner loop, one Adam step
        single = MBIRL(manual_cost, dyn, train.select(i))
        single.optimizer = opt
        single.params = manual.params
        single._step(train.select(i))
    torch.testing.assert_close(learner.cost.weights, manual_cost.weights)


def test_feature_matching_baseline_learns_nonnegative_weights(setup):
    dyn, train, test = setup
    fm = FeatureMatchingIRL(dyn, train, test)
    start = float(fm.evaluate(train).irl_loss.mean())
    for _ in range(5):
        fm.outer_iteration()
    w = fm.cost.weights
    assert torch.all(w >= 0) and w.norm() > 0
    assert float(fm.evaluate(train).irl_loss.mean()) <= start * 1.05
    assert fm.margin >= 0


def test_mismatched_robot_is_an_input_error(setup, placing_demos):
    dyn, train, _ = setup
    bad = DemoBatch(q0=train.q0, z=train.z[..., :3])
    with pytest.raises(InputError, match="keypoints"):
        MBIRL(make_cost("weighted", horizon=10, dim=3), dyn, bad)


@pytest.mark.parametrize("method", ["rbf", "abbeel", "neural"])
def test_resumed_run_equals_uninterrupted_run(tmp_path, placing_demos, method):
    demos = tmp_path / "demos.npz"
    save_keypoint_demos(demos, placing_demos)
    cfg = MBIRLRunConfig(demos=str(demos), method=method, outer_iters=6, checkpoint_every=2, seed=1)
    full = run_mbirl(cfg, tmp_path / "full", progress=False, figures=False)
    short = replace(cfg, outer_iters=4)
    run_mbirl(short, tmp_path / "split", progress=False, figures=False)
    resumed = run_mbirl(cfg, tmp_path / "split", resume=True, progress=False, figures=False)
    assert resumed["irl_loss_train"] == full["irl_loss_train"]
    assert resumed["irl_loss_test"] == full["irl_loss_test"]
    assert len(full["irl_loss_train"]) == 7
    rows = [json.loads(line) for line in (tmp_path / "split" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == list(range(7))
    with pytest.raises(InputError, match="--resume"):
        run_mbirl(cfg, tmp_path / "full", progress=False, figures=False)
    other = replace(cfg, trainer=replace(cfg.trainer, outer_lr=0.5))
    with pytest.raises(InputError, match=r"different configuration \(trainer.outer_lr\)"):
        run_mbirl(other, tmp_path / "full", resume=True, progress=False, figures=False)


def test_run_writes_metrics_figures_and_tensorboard(tmp_path, placing_demos):
    demos = tmp_path / "demos.npz"
    save_keypoint_demos(demos, placing_demos)
    cfg = MBIRLRunConfig(demos=str(demos), method="timedep", outer_iters=3)
    run_mbirl(cfg, tmp_path / "run", progress=False)
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert len(metrics["irl_loss_train"]) == len(metrics["irl_loss_test"]) == 4
    assert metrics["final_test_irl_loss"] == pytest.approx(metrics["irl_loss_test"][-1])
    assert metrics["final_test_irl_loss"] < metrics["irl_loss_test"][0]
    assert 0 < metrics["seconds_per_outer_iter"] < 5
    for fig in ("learning_curve.png", "predictions.png", "weights.png"):
        assert (tmp_path / "run" / "figures" / fig).stat().st_size > 1000
    assert any((tmp_path / "run" / "tb").iterdir())


def test_learners_satisfy_the_cost_learner_protocol(setup):
    dyn, train, test = setup
    cfg = MBIRLConfig(inner_steps=2, inner_lr=2e-3, inner_optimizer="adam")
    for learner in (MBIRL(make_cost("weighted", horizon=10, dim=6), dyn, train, test, cfg),
                    FeatureMatchingIRL(dyn, train, test, cfg)):
        assert isinstance(learner, CostLearner)
        assert learner.inner == cfg.inner_kwargs()
        assert {k: learner.inner[k] for k in ("n_steps", "lr", "optimizer")} == {"n_steps": 2, "lr": 2e-3,
                                                                              "optimizer": "adam"}


def test_evaluate_on_robot_with_the_true_model_equals_the_learners_own(setup):
    dyn, train, test = setup
    learner = MBIRL(make_cost("rbf", horizon=10, dim=6), dyn, train, test)
    learner.outer_iteration()
    own = learner.evaluate(test)
    ours = evaluate_on_robot(learner, dyn, dyn, test, test)
    torch.testing.assert_close(ours["irl_loss"], own.irl_loss, rtol=1e-5, atol=1e-4)
    torch.testing.assert_close(ours["relative_goal_distance"], own.relative_goal_distance, rtol=1e-5, atol=1e-6)
    assert ours["actions"].shape == (2, 9, 7) and not ours["actions"].requires_grad


@pytest.mark.parametrize(("kwargs", "field"), [
    ({"inner_steps": 0}, "inner_steps"), ({"inner_lr": 0.0}, "inner_lr"), ({"outer_lr": float("nan")}, "outer_lr"),
    ({"inner_optimizer": "lbfgs"}, "inner_optimizer"), ({"grad_mode": "none"}, "grad_mode"),
    ({"update": "sometimes"}, "update"), ({"grad_clip": -1.0}, "grad_clip"),
])
def test_mbirl_config_rejects_bad_values(kwargs, field):
    with pytest.raises(InputError) as excinfo:
        MBIRLConfig(**kwargs)
    assert excinfo.value.field == field


def test_every_config_field_is_documented():
    """cleanrl style: a string literal under every field of the run and learner configs."""
    import ast
    import dataclasses
    import inspect

    from mbirl.experiments.kuka_irl import MBIRLCompareConfig

    for cls in (MBIRLConfig, MBIRLRunConfig, MBIRLCompareConfig):
        body = ast.parse(inspect.getsource(cls)).body[0].body  # type: ignore[attr-defined]
        documented = {stmt.target.id for stmt, nxt in zip(body, body[1:], strict=False)
                      if isinstance(stmt, ast.AnnAssign) and isinstance(nxt, ast.Expr)
                      and isinstance(nxt.value, ast.Constant) and isinstance(nxt.value.value, str)}
        missing = {f.name for f in dataclasses.fields(cls)} - documented
        assert not missing, (cls.__name__, missing)
    assert MBIRLRunConfig.RESUMABLE == ("outer_iters", "checkpoint_every", "device")
    assert "extra" not in {f.name for f in dataclasses.fields(MBIRLRunConfig)}


def test_resume_may_extend_the_run_but_not_change_the_robot(tmp_path, placing_demos):
    demos = tmp_path / "demos.npz"
    save_keypoint_demos(demos, placing_demos)
    cfg = MBIRLRunConfig(demos=str(demos), method="weighted", outer_iters=1)
    run_mbirl(cfg, tmp_path / "r", progress=False, figures=False)
    out = run_mbirl(replace(cfg, outer_iters=2, checkpoint_every=1), tmp_path / "r", resume=True, progress=False,
                    figures=False)
    assert len(out["irl_loss_train"]) == 3
    with pytest.raises(InputError, match=r"different configuration \(robot\)"):
        run_mbirl(replace(cfg, robot="original"), tmp_path / "r", resume=True, progress=False, figures=False)
    saved = json.loads((tmp_path / "r" / "config.json").read_text())
    assert saved["trainer"]["inner_lr"] == MBIRLConfig.inner_lr and saved["robot"] == "kuka"


def test_compare_is_one_run_directory(tmp_path, placing_demos):
    from mbirl.experiments import run_compare

    demos = tmp_path / "demos.npz"
    save_keypoint_demos(demos, placing_demos)
    cfg = MBIRLRunConfig(demos=str(demos), outer_iters=1)
    out = run_compare(cfg, ["default", "abbeel"], tmp_path / "c", progress=False)
    run = tmp_path / "c"
    assert json.loads((run / "config.json").read_text())["methods"] == ["default", "abbeel"]
    assert json.loads((run / "metrics.json").read_text()) == json.loads(json.dumps(out["summary"]))
    assert "| abbeel |" in (run / "summary.md").read_text()
    with pytest.raises(InputError, match="already holds a run"):
        run_compare(cfg, ["default", "abbeel"], run, progress=False)
    with pytest.raises(InputError, match="different configuration"):
        run_compare(cfg, ["default", "weighted"], run, resume=True, progress=False)
    again = run_compare(replace(cfg, outer_iters=2), ["default", "abbeel"], run, resume=True, progress=False)
    assert set(again["summary"]) == {"default", "abbeel"}


def test_config_files_load_without_deprecation_warnings():
    """Every preset in configs/ is a valid nested MBIRLRunConfig; the flat layout of old files still loads."""
    import warnings
    from pathlib import Path

    from mbirl.validation import config_from_dict, load_config

    presets = sorted((Path(__file__).resolve().parents[1] / "configs").glob("placing_*.yaml"))  # the MBIRL ones
    assert presets
    for path in presets:
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            overrides = load_config(path, MBIRLRunConfig)
        cfg = config_from_dict(MBIRLRunConfig, overrides, source=str(path))
        if path.name == "placing_original.yaml":  # the original settings are the defaults
            assert cfg.trainer == MBIRLConfig()
        assert cfg.trainer == MBIRLConfig(**overrides.get("trainer", {}))
    with pytest.warns(FutureWarning, match="trainer.inner_lr"):
        flat = config_from_dict(MBIRLRunConfig, {"demos": "d.npz", "inner_lr": 0.002}, source="old.yaml")
    assert flat.trainer.inner_lr == 0.002


def test_converged_settings_are_validated():
    cfg = MBIRLConfig(inner_optimizer="gauss-newton", grad_mode="implicit", inner_tol=1e-3, action_reg=1e-4)
    assert cfg.inner_kwargs()["optimizer"] == "gauss-newton" and cfg.inner_kwargs()["tol"] == 1e-3
    for bad in ({"grad_mode": "backprop"}, {"inner_optimizer": "lbfgs"}, {"inner_tol": -1.0},
                {"action_reg": float("nan")}, {"truncate_steps": 0}, {"cg_iters": 0}):
        with pytest.raises(InputError):
            MBIRLConfig(**bad)


def test_path_cost_learns_with_a_converged_solver_and_implicit_gradients(setup):
    """Gauss-Newton to convergence + implicit gradients: a few batched outer steps on the path cost cut the training
    IRL loss by more than half (the timedep cost under the same solver plans a dash to the goal and cannot)."""
    dyn, train, test = setup
    cfg = MBIRLConfig(inner_optimizer="gauss-newton", inner_steps=10, inner_tol=3e-3, grad_mode="implicit",
                      action_reg=1e-5, cg_iters=20, implicit_damping=1e-4, outer_lr=0.1, update="batched")
    learner = MBIRL(make_cost("path", horizon=10, dim=6), dyn, train, test, cfg)
    first = learner.outer_iteration()
    for _ in range(5):
        last = learner.outer_iteration()
    assert last < 0.5 * first
    assert learner.last_inner is not None and learner.last_inner.stats["cg_iters"] >= 1


def test_cli_converged_options_reach_the_run_config(tmp_path, placing_demos):
    """``--inner-solver``, ``--grad-mode implicit``, ``--inner-tol``, ``--action-reg`` land in the run's trainer config
    (in-process CLI); an unknown gradient mode is a one-line input error."""
    from typer.testing import CliRunner

    from mbirl.cli import app

    demos = tmp_path / "demos.npz"
    save_keypoint_demos(demos, placing_demos)
    args = ["mbirl", "train", "--demos", str(demos), "--cost", "path", "--inner-solver", "gauss-newton",
            "--grad-mode", "implicit", "--inner-tol", "0.003", "--action-reg", "1e-5", "--inner-steps", "5",
            "--outer-iters", "1", "--run-dir", str(tmp_path / "run"), "--no-progress"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    trainer = json.loads((tmp_path / "run" / "config.json").read_text())["trainer"]
    assert (trainer["inner_optimizer"], trainer["grad_mode"], trainer["inner_tol"], trainer["action_reg"]) == (
        "gauss-newton", "implicit", 0.003, 1e-5)
    bad = CliRunner().invoke(app, ["mbirl", "train", "--demos", str(demos), "--grad-mode", "backprop",
                                   "--run-dir", str(tmp_path / "bad"), "--no-progress"])
    assert bad.exit_code != 0 and "backprop" in f"{bad.output} {bad.exception}"
    assert not (tmp_path / "bad").exists()
