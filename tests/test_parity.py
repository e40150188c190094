"""Parity with the official MBIRL code: its placing demonstrations, regenerated, give its published figures.

The official ``run_model_based_irl.py`` (placing, 3 train / 2 test, 100 outer iterations, K=1, inner SGD lr 1e-3,
outer Adam lr 1e-2, one cost update per demo) reports a train IRL loss of 1552.7 before training and final test
IRL losses of 247.5 (weighted), 123.8 (time-dependent) and 144.7 (RBF) on its own demos (torch seed 0, its iiwa7
with keypoint links). Those demos are regenerated here bit for bit on the built-in original robot (no file needed),
and the defaults reproduce the figures.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from mbirl.data import save_keypoint_demos
from mbirl.envs import REST_POSE, KeypointRobot, default_kuka, generate_original_placing, original_kuka
from mbirl.experiments import MBIRLRunConfig, run_mbirl


def test_original_placing_follows_the_original_recipe():
    robot = default_kuka()
    demos = generate_original_placing(4, seed=3, robot=robot)
    with torch.no_grad():
        z0 = robot.keypoints(torch.tensor(REST_POSE)).numpy()
    gen = torch.Generator().manual_seed(3)
    for d in demos:
        dx = -20.0 + float(torch.randn(1, generator=gen)[0])
        dz = -30.0 + float(torch.randn(1, generator=gen)[0])
        assert d.q is None and d.keypoints.shape == (10, 2, 3)
        np.testing.assert_allclose(d.start_q, REST_POSE, atol=1e-6)
        off = d.keypoints - z0[None]
        # Both keypoints move together: x over the first five states, then z over the last five.
        np.testing.assert_allclose(off[:, 0], off[:, 1], atol=1e-4)
        np.testing.assert_allclose(off[:5, 0, 0], np.linspace(0, dx, 5), atol=1e-4)
        np.testing.assert_allclose(off[5:, 0, 0], dx, atol=1e-4)
        np.testing.assert_allclose(off[5:, 0, 2], np.linspace(0, dz, 5), atol=1e-4)
        np.testing.assert_allclose(off[:5, 0, 2], 0.0, atol=1e-4)
        np.testing.assert_allclose(off[:, 0, 1], 0.0, atol=1e-4)
    assert not np.allclose(demos[0].keypoints, demos[1].keypoints)
    again = generate_original_placing(4, seed=3, robot=robot)
    assert all(np.array_equal(a.keypoints, b.keypoints) for a, b in zip(demos, again, strict=True))


def test_builtin_original_robot_equals_the_original_urdf(fixture_urdf):
    """The built-in robot's kinematic facts are the original URDF's: identical joints, limits and keypoints (bit for
    bit) at random poses, for all three keypoint links. Skips where the URDF file (outside the repository) is absent."""
    links = ["kp_link_1", "kp_link_2", "kp_link_3"]
    ours, theirs = original_kuka(links), KeypointRobot(fixture_urdf, links)
    assert ours.joint_names == theirs.joint_names
    assert torch.equal(ours.lower, theirs.lower) and torch.equal(ours.upper, theirs.upper)
    q = (torch.rand(300, 7, generator=torch.Generator().manual_seed(0)) * 2 - 1) * ours.upper
    with torch.no_grad():
        assert torch.equal(ours.keypoints(q), theirs.keypoints(q))
        assert torch.equal(ours.tree_keypoints(q), theirs.tree_keypoints(q))


@pytest.fixture(scope="module")
def original_demos(tmp_path_factory, original_robot):
    path = tmp_path_factory.mktemp("parity") / "placing_original.npz"
    save_keypoint_demos(path, generate_original_placing(6, seed=0, robot=original_robot),
                        {"robot": original_robot.describe()})
    return path


def _run(tmp_path, demos, method: str, **kw) -> dict:
    cfg = MBIRLRunConfig(demos=str(demos), method=method, robot="original", **kw)
    return run_mbirl(cfg, tmp_path / method, progress=False, figures=False)


@pytest.mark.parametrize(("method", "rbf_original", "published"),
                         [("weighted", False, 247.5), ("timedep", False, 123.8), ("rbf", True, 144.7)])
def test_original_demos_reproduce_the_published_figures(tmp_path, original_demos, method, rbf_original, published):
    out = _run(tmp_path, original_demos, method, rbf_original=rbf_original)
    assert out["zero_action_irl_loss_train"] == pytest.approx(1552.7, abs=0.1)
    assert out["final_test_irl_loss"] == pytest.approx(published, abs=0.3)


def test_original_pt_file_gives_the_same_figures(tmp_path, original_demos):
    """The same demos written as the official code writes them (``torch.save`` of a list of dicts) load and train
    to the same figure as the ``.npz``."""
    from mbirl.data import load_keypoint_demos

    raw = [{"start_joint_config": torch.tensor(d.start_q)[None], "desired_keypoints": torch.tensor(d.keypoints)}
           for d in load_keypoint_demos(original_demos).demos]
    pt = tmp_path / "traj_data_placing.pt"
    torch.save(raw, pt)
    out = _run(tmp_path, pt, "timedep")
    assert out["final_test_irl_loss"] == pytest.approx(123.8, abs=0.3)


def test_default_rbf_figure_on_the_official_draw(tmp_path, original_demos):
    """The default RBF formulation (mean over time) ends at 128.5 on the official draw, the original formulation at
    144.7. One draw only: over 20 draws the two are indistinguishable (benchmarks/rbf_default.py,
    docs/results/mbirl.md)."""
    out = _run(tmp_path, original_demos, "rbf")
    assert out["final_test_irl_loss"] == pytest.approx(128.5, abs=0.3)


def test_original_demo_file_rebuilds_its_robot(original_demos, original_robot):
    """The demo file's robot description rebuilds the built-in robot without any path."""
    from mbirl.data import load_keypoint_demos

    desc = load_keypoint_demos(original_demos).meta["robot"]
    assert desc["builtin"] == "original"
    rebuilt = KeypointRobot.from_description(desc)
    q = torch.tensor(REST_POSE)
    with torch.no_grad():
        assert torch.equal(rebuilt.keypoints(q), original_robot.keypoints(q))


def test_original_placing_is_reachable_by_both_robots(original_robot):
    """The desired keypoints are not IK-tracked, but both built-in robots reach them to within 1 cm."""
    from mbirl.envs.kuka import solve_ik

    for robot in (default_kuka(), original_robot):
        demos = generate_original_placing(6, seed=0, robot=robot)
        targets = torch.as_tensor(np.stack([d.keypoints for d in demos]))
        _, residual = solve_ik(robot, targets, torch.tensor(REST_POSE))
        assert float(residual.max()) < 1.0, robot.name


@pytest.mark.slow
def test_converged_preset_reproduces_the_demonstrated_path(tmp_path, original_demos):
    """configs/placing_converged.yaml on the official demos: the path cost with a converged Gauss-Newton inner solver
    and implicit gradients reaches the issue's targets (test IRL loss <= 25, relative goal distance <= 0.05; the
    official code's best is 123.8)."""
    from pathlib import Path

    from mbirl.validation import config_from_dict, load_config

    preset = Path(__file__).resolve().parents[1] / "configs" / "placing_converged.yaml"
    cfg = config_from_dict(MBIRLRunConfig, {**load_config(preset, MBIRLRunConfig), "demos": str(original_demos)},
                           source=str(preset))
    out = run_mbirl(cfg, tmp_path / "converged", progress=False, figures=False)
    assert out["final_test_irl_loss"] <= 25.0
    assert out["test_relative_goal_distance"] <= 0.05
