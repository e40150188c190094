"""Bi-level MBIRL learning on the placing task, update semantics, baselines and resumable runs."""

from __future__ import annotations

import json

import pytest
import torch

from mbirl.algorithms import MBIRL, DemoBatch, FeatureMatchingIRL, irl_loss, relative_goal_distance
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
    # The prediction stays at the start: relative distance 1 for keypoint 0, and keypoint 1 has no motion (0/eps).
    assert relative_goal_distance(demo, demo).item() == pytest.approx(0.0)
    moved = demo.clone()
    moved[0, -1, 0] = 1.0
    assert relative_goal_distance(moved, demo).item() == pytest.approx(0.5 * 0.5)


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
    batched = MBIRL(make_cost("weighted", horizon=10, dim=6), dyn, train, test, update="batched")
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
    short = MBIRLRunConfig(**{**cfg.to_json(), "outer_iters": 4, "train": (0, 3), "test": (3, 5)})
    run_mbirl(short, tmp_path / "split", progress=False, figures=False)
    resumed = run_mbirl(cfg, tmp_path / "split", resume=True, progress=False, figures=False)
    assert resumed["irl_loss_train"] == full["irl_loss_train"]
    assert resumed["irl_loss_test"] == full["irl_loss_test"]
    assert len(full["irl_loss_train"]) == 7
    rows = [json.loads(line) for line in (tmp_path / "split" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == list(range(7))
    with pytest.raises(InputError, match="--resume"):
        run_mbirl(cfg, tmp_path / "full", progress=False, figures=False)
    other = MBIRLRunConfig(**{**cfg.to_json(), "outer_lr": 0.5, "train": (0, 3), "test": (3, 5)})
    with pytest.raises(InputError, match="different configuration"):
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
