"""The visual pipeline stage by stage on tiny data, its CLI errors, and (slow) the quick pipeline end to end."""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import pytest

from mbirl.data import load_keypoint_demos, save_keypoint_demos
from mbirl.errors import InputError
from mbirl.experiments.visual import (
    DetectorStageConfig,
    DynamicsStageConfig,
    PipelineConfig,
    VisualIRLConfig,
    load_detector,
    load_dynamics,
    make_exploration,
    make_visual_demos,
    run_detector_stage,
    run_dynamics_stage,
    run_pipeline,
    run_visual_irl,
)
from mbirl.types import KeypointTrajectory
from test_cli import _tree, assert_one_line_error, run_cli

PNG = b"\x89PNG\r\n\x1a\n"
PIPELINE_KEYS = ("detector_pixel_error", "dynamics_error_1step", "dynamics_error_10step", "final_test_irl_loss",
                 "test_relative_goal_distance", "gt_final_test_irl_loss", "gt_test_relative_goal_distance")


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> dict[str, Path]:
    """Tiny exploration data (16x16), three short rendered demos, a trained detector and dynamics model."""
    root = tmp_path_factory.mktemp("visual")
    make_exploration(root / "explore.npz", n=10, horizon=3, seed=0, resolution=16)
    make_visual_demos(root / "demos.npz", n=3, seed=0, horizon=4, resolution=16)
    det = DetectorStageConfig(data=str(root / "explore.npz"), n_keypoints=3, width=8, steps=6, batch_size=8,
                              calibration_frames=20, checkpoint_every=3)
    det_metrics = run_detector_stage(det, root / "det", progress=False)
    dyn = DynamicsStageConfig(data=str(root / "explore.npz"), detector=str(root / "det"), hidden=16, layers=1,
                              steps=8, batch_size=4, checkpoint_every=4)
    dyn_metrics = run_dynamics_stage(dyn, root / "dyn", progress=False)
    return {"root": root, "det_cfg": det, "det_metrics": det_metrics, "dyn_metrics": dyn_metrics}  # type: ignore[dict-item]


def _png(path: Path) -> bool:
    return path.is_file() and path.read_bytes()[:8] == PNG


def test_detector_stage_outputs(tiny):
    root, m = tiny["root"], tiny["det_metrics"]
    for key in ("detector_pixel_error", "detector_pixel_error_per_keypoint", "matched_indices", "lift_error_cm",
                "n_heldout_frames"):
        assert key in m, key
    assert np.isfinite(m["detector_pixel_error"]) and len(m["matched_indices"]) == 2
    assert len(set(m["matched_indices"])) == 2 and all(0 <= i < 3 for i in m["matched_indices"])
    assert m["n_heldout_frames"] == 2 * 4  # 2 of 10 trajectories held out, 4 frames each
    det = root / "det"
    assert _png(det / "figures" / "keypoints.png")
    for name in ("checkpoints/last.json", "detector.json", "metrics.json", "config.json"):
        assert (det / name).is_file(), name
    # Tensors beside each JSON (safetensors; the file naming is the checkpoint module's business).
    assert list((det / "checkpoints").glob("*.safetensors")) and list(det.glob("detector*.safetensors"))
    assert [json.loads(line)["step"] for line in (det / "metrics.jsonl").read_text().splitlines()] == [6]
    assert list((det / "tb").iterdir())
    loaded = load_detector(det)
    assert loaded.matched == tuple(m["matched_indices"])
    images = np.zeros((2, 16, 16, 3), dtype=np.uint8)
    assert loaded.keypoints_3d(images, np.ones((2, 16, 16), dtype=np.float32)).shape == (2, 2, 3)


def test_detector_stage_refuses_to_clobber_and_resumes(tiny, tmp_path):
    import shutil

    run = tmp_path / "det"
    shutil.copytree(tiny["root"] / "det", run)
    cfg = tiny["det_cfg"]
    with pytest.raises(InputError, match="--resume"):
        run_detector_stage(cfg, run, progress=False)
    changed = DetectorStageConfig(**{**cfg.to_json(), "n_keypoints": 4})
    with pytest.raises(InputError, match="n_keypoints"):
        run_detector_stage(changed, run, resume=True, progress=False)
    longer = DetectorStageConfig(**{**cfg.to_json(), "steps": 10})
    m = run_detector_stage(longer, run, resume=True, progress=False)
    assert m["steps"] == 10
    steps = [json.loads(line)["step"] for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert steps == [6, 10]
    state = json.loads((run / "checkpoints" / "last.json").read_text())
    assert state["format"].startswith("mbirl.checkpoint/")


def test_dynamics_stage_outputs(tiny):
    root, m = tiny["root"], tiny["dyn_metrics"]
    for key in ("dynamics_error_1step", "dynamics_error_10step", "dynamics_readout_error", "eval_horizon"):
        assert key in m and np.isfinite(m[key]), key
    assert m["eval_horizon"] == 3  # capped by the trajectories' length
    assert _png(root / "dyn" / "figures" / "rollouts.png")
    model = load_dynamics(root / "dyn")
    assert model.n_joints == 7 and model.n_keypoints == 2


def test_visual_irl_stage(tiny):
    root = tiny["root"]
    cfg = VisualIRLConfig(demos=str(root / "demos.npz"), detector=str(root / "det"), dynamics=str(root / "dyn"),
                          methods=("default", "weighted", "abbeel"), headline="weighted", train=(0, 2), test=(2, 3),
                          outer_iters=2)
    m = run_visual_irl(cfg, root / "irl", progress=False)
    for key in ("final_test_irl_loss", "test_relative_goal_distance", "gt_final_test_irl_loss",
                "gt_test_relative_goal_distance"):
        assert np.isfinite(m[key]), key
    assert set(m["per_method"]) == {"default", "weighted", "abbeel"}
    assert m["final_test_irl_loss"] == m["per_method"]["weighted"]["final_test_irl_loss"]
    irl = root / "irl"
    for method in ("default", "weighted", "abbeel"):
        assert (irl / "visual" / method / "metrics.json").is_file()
        assert (irl / "gt" / method / "metrics.json").is_file()
    assert _png(irl / "figures" / "visual_vs_gt.png") and _png(irl / "figures" / "predictions_on_robot.png")
    detected = load_keypoint_demos(irl / "demos_detected.npz")
    assert len(detected) == 3 and detected[0].keypoints.shape == (4, 2, 3)
    # Unknown headline or a demo file without images: InputError before anything is written.
    with pytest.raises(InputError, match="headline"):
        run_visual_irl(VisualIRLConfig(**{**cfg.to_json(), "methods": ("default",), "train": (0, 2),
                                          "test": (2, 3)}), root / "irl2", progress=False)
    assert not (root / "irl2").exists()


def test_pipeline_tiny_and_resume_skips_finished_stages(tmp_path):
    cfg = PipelineConfig(n_demos=3, horizon=4, resolution=16, explore_n=6, explore_horizon=3, n_keypoints=3,
                         detector_width=8, detector_steps=4, detector_batch=4, dynamics_hidden=8, dynamics_layers=1,
                         dynamics_steps=4, methods=("default", "weighted"), headline="weighted", train=(0, 2),
                         test=(2, 3), outer_iters=1)
    m = run_pipeline(cfg, tmp_path / "p", progress=False)
    for key in PIPELINE_KEYS:
        assert key in m and np.isfinite(m[key]), key
    figures = sorted(p.name for p in (tmp_path / "p" / "figures").iterdir())
    assert figures == ["stage1_demos.png", "stage2_exploration.png", "stage3_detector_keypoints.png",
                       "stage4_dynamics_rollouts.png", "stage5_irl_visual_vs_gt.png"]
    with pytest.raises(InputError, match="--resume"):
        run_pipeline(cfg, tmp_path / "p", progress=False)
    with pytest.raises(InputError, match="outer_iters"):
        run_pipeline(PipelineConfig(**{**cfg.__dict__, "outer_iters": 3}), tmp_path / "p", resume=True,
                     progress=False)
    detector_before = (tmp_path / "p" / "detector" / "detector.json").read_bytes()  # records the tensors' SHA-256
    again = run_pipeline(cfg, tmp_path / "p", resume=True, progress=False)
    assert (tmp_path / "p" / "detector" / "detector.json").read_bytes() == detector_before
    assert again["detector_pixel_error"] == m["detector_pixel_error"]
    assert again["final_test_irl_loss"] == pytest.approx(m["final_test_irl_loss"], rel=1e-5)


# --------------------------------------------------------------------------------------------- CLI


def test_cli_bad_inputs_one_line_errors_and_nothing_written(tmp_path):
    plain = tmp_path / "plain.npz"
    save_keypoint_demos(plain, [KeypointTrajectory(start_q=np.zeros(7), keypoints=np.zeros((3, 2, 3)))])
    cases = [
        (["visual", "train-detector", "--data", "missing.npz", "--run-dir", "r"], ["missing.npz", "not found"]),
        (["visual", "demos", "--out", "x.txt"], ["x.txt", ".npz"]),
        (["visual", "irl", "--demos", "plain.npz", "--detector", "d", "--dynamics", "m", "--run-dir", "r"],
         ["plain.npz", "no images"]),
        (["visual", "pipeline", "--costs", "default,bogus", "--run-dir", "r"], ["bogus"]),
    ]
    for args, needles in cases:
        before = _tree(tmp_path)
        result = run_cli(tmp_path, *args)
        assert_one_line_error(result, *needles)
        assert _tree(tmp_path) == before, (args, _tree(tmp_path) - before)


@pytest.mark.slow
def test_quick_pipeline_end_to_end(tmp_path):
    t0 = time.perf_counter()
    result = run_cli(tmp_path, "visual", "pipeline", "--quick", "--run-dir", "run", "--no-progress")
    seconds = time.perf_counter() - t0
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr
    assert seconds < 120, seconds
    run = tmp_path / "run"
    metrics = json.loads((run / "metrics.json").read_text())
    for key in PIPELINE_KEYS:
        assert key in metrics and np.isfinite(metrics[key]), key
    for name in ("stage1_demos.png", "stage2_exploration.png", "stage3_detector_keypoints.png",
                 "stage4_dynamics_rollouts.png", "stage5_irl_visual_vs_gt.png"):
        assert _png(run / "figures" / name), name
    for name in ("detector/figures/keypoints.png", "dynamics/figures/rollouts.png", "irl/figures/visual_vs_gt.png",
                 "irl/figures/learning_curves_visual.png", "irl/figures/predictions_on_robot.png",
                 "data/demos.png", "data/explore.png"):
        assert _png(run / name), name
    images = load_keypoint_demos(run / "data" / "demos.npz")[0].images
    assert images is not None and images.shape == (10, 64, 64, 3)
    # Not without --resume; with it, every finished stage is skipped.
    again = run_cli(tmp_path, "visual", "pipeline", "--quick", "--run-dir", "run", "--no-progress")
    assert_one_line_error(again, "--resume")
    resumed = run_cli(tmp_path, "visual", "pipeline", "--quick", "--run-dir", "run", "--no-progress", "--resume")
    assert resumed.returncode == 0, resumed.stderr
    assert json.loads((run / "metrics.json").read_text())["detector_pixel_error"] == metrics["detector_pixel_error"]


def test_robot_evaluation_with_the_true_model_equals_the_learners_own(placing_demos):
    import torch

    from mbirl.algorithms import MBIRL, DemoBatch
    from mbirl.costs import make_cost
    from mbirl.dynamics import KinematicKeypointDynamics
    from mbirl.envs import default_kuka
    from mbirl.experiments.visual import evaluate_on_robot

    dyn = KinematicKeypointDynamics(default_kuka())
    train, test = DemoBatch.from_demos(placing_demos[:3]), DemoBatch.from_demos(placing_demos[3:5])
    learner = MBIRL(make_cost("rbf", horizon=10, dim=6), dyn, train, test)
    learner.outer_iteration()
    own = learner.evaluate(test)
    ours = evaluate_on_robot(learner, dyn, dyn, test, test)
    torch.testing.assert_close(ours["irl_loss"], own.irl_loss, rtol=1e-5, atol=1e-4)
    torch.testing.assert_close(ours["relative_goal_distance"], own.relative_goal_distance, rtol=1e-5, atol=1e-6)


def test_cli_stage_commands_chain(tmp_path):
    steps = [
        ["visual", "demos", "--n", "3", "--horizon", "4", "--resolution", "16", "--out", "vd.npz"],
        ["visual", "explore", "--n", "6", "--horizon", "3", "--resolution", "16", "--out", "ex.npz", "--no-progress"],
        ["visual", "train-detector", "--data", "ex.npz", "--keypoints", "3", "--width", "8", "--steps", "3",
         "--batch-size", "4", "--run-dir", "det", "--no-progress"],
        ["visual", "train-dynamics", "--data", "ex.npz", "--detector", "det", "--hidden", "8", "--layers", "1",
         "--steps", "3", "--run-dir", "dyn", "--no-progress"],
        ["visual", "irl", "--demos", "vd.npz", "--detector", "det", "--dynamics", "dyn", "--costs", "default,weighted",
         "--headline", "weighted", "--train", "0:2", "--test", "2:3", "--outer-iters", "1", "--run-dir", "irl",
         "--no-progress"],
    ]
    for args in steps:
        result = run_cli(tmp_path, *args)
        assert result.returncode == 0, (args, result.stderr)
        assert "Traceback" not in result.stderr
    assert "held-out pixel error" in run_cli(tmp_path, *steps[2], "--resume").stdout
    metrics = json.loads((tmp_path / "irl" / "metrics.json").read_text())
    assert set(metrics["per_method"]) == {"default", "weighted"}
    assert "| weighted |" in (tmp_path / "irl" / "summary.md").read_text()
