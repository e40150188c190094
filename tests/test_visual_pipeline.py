"""The visual pipeline stage by stage on tiny data, its CLI errors, and (slow) the quick pipeline end to end."""

from __future__ import annotations

import json
import re
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from mbirl.data import load_keypoint_demos, save_keypoint_demos
from mbirl.dynamics.keypoint_mlp import DynamicsTrainConfig, KeypointMLPConfig, KeypointMLPDynamics
from mbirl.envs.render import default_camera
from mbirl.errors import InputError
from mbirl.experiments.visual import (
    DetectorSettings,
    DetectorStageConfig,
    DynamicsSettings,
    DynamicsStageConfig,
    ExplorationConfig,
    IRLSettings,
    PipelineConfig,
    VisualDemosConfig,
    VisualIRLConfig,
    make_exploration,
    make_visual_demos,
    run_detector_stage,
    run_dynamics_stage,
    run_pipeline,
    run_visual_irl,
)
from mbirl.perception import DetectorConfig, DetectorTrainConfig, TrainedDetector
from mbirl.types import KeypointTrajectory
from test_cli import _tree, assert_one_line_error, run_cli

PNG = b"\x89PNG\r\n\x1a\n"
PIPELINE_KEYS = ("detector_pixel_error", "dynamics_error_1step", "dynamics_error_open_loop", "final_test_irl_loss",
                 "test_relative_goal_distance", "gt_final_test_irl_loss", "gt_test_relative_goal_distance")


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> dict[str, Path]:
    """Tiny exploration data (16x16), three short rendered demos, a trained detector and dynamics model."""
    root = tmp_path_factory.mktemp("visual")
    make_exploration(root / "explore.npz", ExplorationConfig(n=10, horizon=3, seed=0), camera=default_camera(16))
    make_visual_demos(root / "demos.npz", VisualDemosConfig(n=3, seed=0, horizon=4), camera=default_camera(16))
    det = DetectorStageConfig(data=str(root / "explore.npz"), model=DetectorConfig(n_keypoints=3, width=8),
                              train=DetectorTrainConfig(steps=6, batch_size=8), calibration_frames=20,
                              checkpoint_every=3)
    det_metrics = run_detector_stage(det, root / "det", progress=False)
    dyn = DynamicsStageConfig(data=str(root / "explore.npz"), detector=str(root / "det"),
                              model=KeypointMLPConfig(hidden=16, layers=1),
                              train=DynamicsTrainConfig(steps=8, batch_size=4), checkpoint_every=4)
    dyn_metrics = run_dynamics_stage(dyn, root / "dyn", progress=False)
    return {"root": root, "det_cfg": det, "dyn_cfg": dyn, "det_metrics": det_metrics,  # type: ignore[dict-item]
            "dyn_metrics": dyn_metrics}


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
    loaded = TrainedDetector.load(det)
    assert loaded.matched == tuple(m["matched_indices"])
    images = np.zeros((2, 16, 16, 3), dtype=np.uint8)
    assert loaded.keypoints_3d(images, np.ones((2, 16, 16), dtype=np.float32)).shape == (2, 2, 3)


def test_detector_stage_refuses_to_clobber_and_resumes(tiny, tmp_path):
    import shutil

    run = tmp_path / "det"
    shutil.copytree(tiny["root"] / "det", run)
    cfg = tiny["det_cfg"]
    with pytest.raises(InputError, match="already holds a run"):
        run_detector_stage(cfg, run, progress=False)
    # --resume may change how long training goes (DetectorStageConfig.RESUMABLE), nothing else.
    for changed, name in ((replace(cfg, model=replace(cfg.model, n_keypoints=4)), "model.n_keypoints"),
                          (replace(cfg, train=replace(cfg.train, lr=1e-3)), "train.lr"),
                          (replace(cfg, seed=1), "seed")):
        with pytest.raises(InputError, match=re.escape(f"different configuration ({name})")):
            run_detector_stage(changed, run, resume=True, progress=False)
    longer = replace(cfg, train=replace(cfg.train, steps=10), checkpoint_every=5)
    m = run_detector_stage(longer, run, resume=True, progress=False)
    assert m["steps"] == 10
    steps = [json.loads(line)["step"] for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert steps == [6, 10]
    state = json.loads((run / "checkpoints" / "last.json").read_text())
    assert state["format"].startswith("mbirl.checkpoint/")


def test_dynamics_stage_outputs(tiny):
    root, m = tiny["root"], tiny["dyn_metrics"]
    for key in ("dynamics_error_1step", "dynamics_error_open_loop", "dynamics_error_open_loop_mean",
                "dynamics_readout_error", "eval_horizon", "train_error_open_loop", "ground_truth_error_open_loop"):
        assert key in m and np.isfinite(m[key]), key
    assert m["eval_horizon"] == 3  # capped by the trajectories' length
    assert _png(root / "dyn" / "figures" / "rollouts.png")
    model = KeypointMLPDynamics.load(root / "dyn")
    assert model.n_joints == 7 and model.n_keypoints == 2
    assert json.loads((root / "dyn" / "config.json").read_text())["model"]["hidden"] == 16


def test_dynamics_stage_resume_rule(tiny, tmp_path):
    import shutil

    run = tmp_path / "dyn"
    shutil.copytree(tiny["root"] / "dyn", run)
    cfg = tiny["dyn_cfg"]
    with pytest.raises(InputError, match="already holds a run"):
        run_dynamics_stage(cfg, run, progress=False)
    for changed, name in ((replace(cfg, train=replace(cfg.train, lr=1e-3)), "train.lr"),
                          (replace(cfg, model=replace(cfg.model, hidden=8)), "model.hidden"),
                          (replace(cfg, eval_horizon=2), "eval_horizon")):
        with pytest.raises(InputError, match=re.escape(f"different configuration ({name})")):
            run_dynamics_stage(changed, run, resume=True, progress=False)
    m = run_dynamics_stage(replace(cfg, train=replace(cfg.train, steps=12)), run, resume=True, progress=False)
    assert m["steps"] == 12
    assert [json.loads(line)["step"] for line in (run / "metrics.jsonl").read_text().splitlines()] == [8, 10, 12]


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in root.rglob("*") if p.is_file() and p.name != ".lock"}


def _entry(node: dict, key: object) -> list:
    """The ``[key, value]`` pair of a checkpoint skeleton's mapping (edit its value in place)."""
    return next(pair for pair in node["__dict__"] if pair[0] == key)


@pytest.mark.parametrize("stage", ["det", "dyn"])
def test_edited_stage_checkpoints_are_refused_on_resume_before_anything_is_written(tiny, tmp_path, stage):
    # torch checks only an optimiser state's sizes: gradient ascent or another parameter's moments were taken
    import shutil

    def edit_maximize(optimizer: dict) -> None:
        _entry(_entry(optimizer, "param_groups")[1][0], "maximize")[1] = True

    def edit_moments(optimizer: dict) -> None:
        moments = _entry(optimizer, "state")[1]
        _entry(_entry(moments, 0)[1], "exp_avg")[1] = _entry(_entry(moments, 1)[1], "exp_avg")[1]

    def edit_config(state: dict) -> None:
        _entry(state, "config")[1] = {"__dict__": [["seed", {"__tensor__": "s.2"}]]}  # the generator's state

    cfg, run_stage = {"det": (tiny["det_cfg"], run_detector_stage), "dyn": (tiny["dyn_cfg"], run_dynamics_stage)}[stage]
    longer = replace(cfg, train=replace(cfg.train, steps=cfg.train.steps + 4))
    for edit, match in ((edit_maximize, "optimizer setting 'maximize'"), (edit_moments, "optimizer state 'exp_avg'"),
                        (edit_config, "configuration holds a tensor")):
        run = tmp_path / edit.__name__
        shutil.copytree(tiny["root"] / stage, run)
        meta = json.loads((run / "checkpoints" / "last.json").read_text())
        edit(meta["state"] if edit is edit_config else _entry(meta["state"], "optimizer")[1])
        (run / "checkpoints" / "last.json").write_text(json.dumps(meta))
        before = _files(run)
        with pytest.raises(InputError, match=match):
            run_stage(longer, run, resume=True, progress=False)
        assert _files(run) == before


def test_trained_model_loaders_refuse_missing_and_inconsistent_files(tiny, tmp_path):
    import shutil

    from mbirl.reporting.checkpoint import load_checkpoint, save_checkpoint

    with pytest.raises(InputError, match="no trained detector"):
        TrainedDetector.load(tmp_path / "nothing")
    with pytest.raises(InputError, match="no trained dynamics model"):
        KeypointMLPDynamics.load(tmp_path / "nothing")
    with pytest.raises(InputError, match="no trained detector"):  # a dynamics run is not a detector run
        TrainedDetector.load(tiny["root"] / "dyn")
    state = load_checkpoint(tiny["root"] / "det" / "detector")
    bad_cases = {
        "matched": ({**state, "matched": [0, 7]}, "out of range"),
        "weights": ({**state, "config": {**state["config"], "width": 16}}, "inconsistent detector file"),
        "camera": ({**state, "camera": {"width": 16}}, "camera"),
        "size": ({**state, "image_size": 32}, "inconsistent detector file"),
        "config": ({**state, "config": {**state["config"], "bogus": 1}}, "bogus"),
        "background": ({**state, "background_depth": state["background_depth"][:4]}, "background depth"),
    }
    for name, (bad, needle) in bad_cases.items():
        save_checkpoint(tmp_path / name / "detector", bad)
        with pytest.raises(InputError, match=needle):
            TrainedDetector.load(tmp_path / name)
    # A detector saved before the image size left DetectorConfig still loads.
    old = {k: v for k, v in state.items() if k != "image_size"}
    save_checkpoint(tmp_path / "old" / "detector", {**old, "config": {**state["config"], "image_size": 16}})
    assert TrainedDetector.load(tmp_path / "old").model.image_size == 16
    # The dynamics stage and visual irl refuse a detector directory without a detector, writing nothing.
    shutil.copytree(tiny["root"] / "det", tmp_path / "det_broken")
    (tmp_path / "det_broken" / "detector.json").unlink()
    with pytest.raises(InputError, match="no trained detector"):
        run_dynamics_stage(replace(tiny["dyn_cfg"], detector=str(tmp_path / "det_broken")), tmp_path / "dyn2",
                           progress=False)
    assert not (tmp_path / "dyn2").exists()


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
        run_visual_irl(replace(cfg, methods=("default",)), root / "irl2", progress=False)
    assert not (root / "irl2").exists()
    # --resume: more outer iterations continue every method's runs (as an MBIRL run); a learning rate may not change.
    with pytest.raises(InputError, match="already holds a run"):
        run_visual_irl(cfg, irl, progress=False)
    with pytest.raises(InputError, match=re.escape("different configuration (trainer.inner_lr)")):
        run_visual_irl(replace(cfg, trainer=replace(cfg.trainer, inner_lr=1e-2)), irl, resume=True, progress=False)
    longer = run_visual_irl(replace(cfg, outer_iters=3), irl, resume=True, progress=False)
    assert len(longer["per_method"]) == 3
    assert json.loads((irl / "visual" / "weighted" / "metrics.json").read_text())["outer_iters"] == 3
    assert json.loads((irl / "config.json").read_text())["outer_iters"] == 3


def _tiny_pipeline() -> PipelineConfig:
    return PipelineConfig(
        demos=VisualDemosConfig(n=3, horizon=4), explore=ExplorationConfig(n=6, horizon=3), resolution=16,
        detector=DetectorSettings(model=DetectorConfig(n_keypoints=3, width=8),
                                  train=DetectorTrainConfig(steps=4, batch_size=4)),
        dynamics=DynamicsSettings(model=KeypointMLPConfig(hidden=8, layers=1), train=DynamicsTrainConfig(steps=4)),
        irl=IRLSettings(methods=("default", "weighted"), headline="weighted", train=(0, 2), test=(2, 3),
                        outer_iters=1))


def test_pipeline_tiny_and_resume_skips_finished_stages(tmp_path):
    cfg = _tiny_pipeline()
    m = run_pipeline(cfg, tmp_path / "p", progress=False)
    for key in PIPELINE_KEYS:
        assert key in m and np.isfinite(m[key]), key
    figures = sorted(p.name for p in (tmp_path / "p" / "figures").iterdir())
    assert figures == ["stage1_demos.png", "stage2_exploration.png", "stage3_detector_keypoints.png",
                       "stage4_dynamics_rollouts.png", "stage5_irl_visual_vs_gt.png"]
    assert m["dynamics_eval_horizon"] == 3
    saved = json.loads((tmp_path / "p" / "config.json").read_text())
    assert saved["detector"]["train"]["steps"] == 4 and saved["irl"]["trainer"]["inner_steps"] == 1
    with pytest.raises(InputError, match="already holds a run"):
        run_pipeline(cfg, tmp_path / "p", progress=False)
    # A finished stage is not rerun, so its settings may not change on --resume.
    with pytest.raises(InputError, match=re.escape("different configuration (detector.train.steps)")):
        run_pipeline(replace(cfg, detector=replace(cfg.detector, train=DetectorTrainConfig(steps=8, batch_size=4))),
                     tmp_path / "p", resume=True, progress=False)
    detector_before = (tmp_path / "p" / "detector" / "detector.json").read_bytes()  # records the tensors' SHA-256
    again = run_pipeline(cfg, tmp_path / "p", resume=True, progress=False)
    assert (tmp_path / "p" / "detector" / "detector.json").read_bytes() == detector_before
    assert again["detector_pixel_error"] == m["detector_pixel_error"]
    assert again["final_test_irl_loss"] == pytest.approx(m["final_test_irl_loss"], rel=1e-5)
    # The IRL stage is always continued: more outer iterations are allowed (PipelineConfig.RESUMABLE).
    longer = run_pipeline(replace(cfg, irl=replace(cfg.irl, outer_iters=2)), tmp_path / "p", resume=True,
                          progress=False)
    assert (tmp_path / "p" / "detector" / "detector.json").read_bytes() == detector_before
    assert json.loads((tmp_path / "p" / "irl" / "gt" / "weighted" / "metrics.json").read_text())["outer_iters"] == 2
    assert np.isfinite(longer["final_test_irl_loss"])


def test_pipeline_quick_keeps_the_stage_defaults():
    full, quick = PipelineConfig(), PipelineConfig.quick()
    # One definition per hyper-parameter: the pipeline's defaults are the stage commands' (detector 3000 steps,
    # dynamics 2000), and --quick changes only what it names.
    assert full.detector.train.steps == DetectorTrainConfig().steps == 3000
    assert full.dynamics.train.steps == DynamicsTrainConfig().steps == 2000
    assert full.detector == DetectorSettings() and full.dynamics == DynamicsSettings() and full.irl == IRLSettings()
    assert quick.detector.train.lr == full.detector.train.lr and quick.demos == full.demos
    assert (quick.explore.n, quick.detector.train.steps, quick.irl.outer_iters) == (40, 150, 5)


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
    from mbirl.algorithms.mbirl import evaluate_on_robot
    from mbirl.costs import make_cost
    from mbirl.dynamics import KinematicKeypointDynamics
    from mbirl.envs import default_kuka

    dyn = KinematicKeypointDynamics(default_kuka())
    train, test = DemoBatch.from_demos(placing_demos[:3]), DemoBatch.from_demos(placing_demos[3:5])
    learner = MBIRL(make_cost("rbf", horizon=10, dim=6), dyn, train, test)
    learner.outer_iteration()
    own = learner.evaluate(test)
    ours = evaluate_on_robot(learner, dyn, dyn, test, test)
    torch.testing.assert_close(ours["irl_loss"], own.irl_loss, rtol=1e-5, atol=1e-4)
    torch.testing.assert_close(ours["relative_goal_distance"], own.relative_goal_distance, rtol=1e-5, atol=1e-6)


@pytest.mark.slow  # the default suite is near its 10-minute limit
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
    assert "--resume with a different configuration (train.lr)" in run_cli(
        tmp_path, *steps[2], "--resume", "--lr", "0.01").stderr
    metrics = json.loads((tmp_path / "irl" / "metrics.json").read_text())
    assert set(metrics["per_method"]) == {"default", "weighted"}
    assert "| weighted |" in (tmp_path / "irl" / "summary.md").read_text()


def test_cli_config_file_with_nested_keys(tiny, tmp_path):
    explore = tiny["root"] / "explore.npz"
    (tmp_path / "det.yaml").write_text(f"data: {explore}\nmodel:\n  n_keypoints: 3\n  width: 8\ntrain:\n  steps: 3\n"
                                       f"  batch_size: 4\n  lr: 0.005\ncalibration_frames: 20\n")
    result = run_cli(tmp_path, "visual", "train-detector", "--config", "det.yaml", "--steps", "2", "--run-dir", "det",
                     "--no-progress")
    assert result.returncode == 0, result.stderr
    saved = json.loads((tmp_path / "det" / "config.json").read_text())
    assert saved["model"] == {"n_keypoints": 3, "width": 8, "sigma": 1.0}
    assert saved["train"] == {"steps": 2, "batch_size": 4, "lr": 0.005, "saliency_weight": 5.0}  # --steps wins
    assert saved["calibration_frames"] == 20 and saved["data"] == str(explore)
    # The pipeline's nested config: --quick's settings under the file's, checked before anything is written.
    before = _tree(tmp_path)
    (tmp_path / "p.yaml").write_text("irl:\n  outer_iters: 2\n  headline: bogus\n")
    assert_one_line_error(run_cli(tmp_path, "visual", "pipeline", "--quick", "--config", "p.yaml", "--run-dir", "p"),
                          "bogus", "default', 'weighted', 'rbf', 'abbeel")
    (tmp_path / "p.yaml").write_text("detector:\n  train:\n    stepz: 2\n")
    assert_one_line_error(run_cli(tmp_path, "visual", "pipeline", "--config", "p.yaml", "--run-dir", "p"),
                          "p.yaml", "detector.train.stepz")
    assert _tree(tmp_path) - before == {"p.yaml"}
