"""The ``mbirl`` command line, run as a subprocess (bad inputs mostly in-process, a few also as a subprocess): outputs,
one-line errors with exit code 2, resume."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pytest
import torch

from mbirl.data import load_keypoint_demos
from mbirl.data.demos import KEYPOINT_FORMAT
from mbirl.experiments import METHODS

METRIC_KEYS = ("irl_loss_train", "irl_loss_test", "final_test_irl_loss", "test_relative_goal_distance",
               "seconds_per_outer_iter")


def run_cli(cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "MPLBACKEND": "Agg", "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-c", "from mbirl.cli import main; main()", *map(str, args)],
                          capture_output=True, text=True, cwd=cwd, env=env, timeout=120)


def run_cli_in_process(cwd: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, *args: str
                       ) -> subprocess.CompletedProcess[str]:
    """``run_cli`` without a new interpreter (no 3 s of imports per call): ``main`` in this process, in ``cwd``."""
    from mbirl.cli import main

    monkeypatch.chdir(cwd)
    capsys.readouterr()
    threads = torch.get_num_threads()
    try:
        main([str(a) for a in args])
        code = 0
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    finally:
        torch.set_num_threads(threads)
    out = capsys.readouterr()
    return subprocess.CompletedProcess(list(args), code, out.out, out.err)


def assert_one_line_error(result: subprocess.CompletedProcess[str], *needles: str) -> str:
    assert result.returncode == 2, (result.returncode, result.stdout, result.stderr)
    assert "Traceback" not in result.stderr, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("mbirl: error:"), lines[0]
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])
    return lines[0]


def _tree(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*")}


@pytest.fixture(scope="module")
def demos_dir(tmp_path_factory) -> tuple[Path, subprocess.CompletedProcess[str]]:
    """``mbirl kuka demos --task placing --n 6 --seed 0 --out d.npz``, run once for the module."""
    cwd = tmp_path_factory.mktemp("demos")
    result = run_cli(cwd, "kuka", "demos", "--task", "placing", "--n", "6", "--seed", "0", "--out", "d.npz")
    return cwd, result


@pytest.fixture(scope="module")
def demos_npz(demos_dir) -> Path:
    cwd, result = demos_dir
    if result.returncode != 0:
        pytest.fail(f"kuka demos failed: {result.stderr}")
    return cwd / "d.npz"


def test_kuka_demos_writes_npz_and_plot(demos_dir, placing_demos):
    cwd, result = demos_dir
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr
    assert (cwd / "d.npz").is_file()
    png = cwd / "d.png"
    assert png.is_file() and png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "wrote 6 placing demonstrations" in result.stdout
    loaded = load_keypoint_demos(cwd / "d.npz")
    assert len(loaded) == 6
    assert loaded.meta["task"] == "placing" and loaded.meta["seed"] == 0
    assert loaded.meta["robot"]["name"] == "kuka_iiwa"
    # Same seed, same demonstrations as the library call (up to thread-order float noise in the IK).
    for ours, lib in zip(loaded.demos, placing_demos, strict=True):
        np.testing.assert_allclose(ours.keypoints, lib.keypoints, atol=1e-3, rtol=0)
        np.testing.assert_allclose(ours.q, lib.q, atol=1e-3, rtol=0)
    # Nothing but the two outputs (no stray temporary files).
    assert _tree(cwd) == {"d.npz", "d.png"}


def _write_nan_demos(path: Path, demos_npz: Path) -> None:
    with np.load(demos_npz) as data:
        keypoints = data["keypoints"].copy()
        start_q = data["start_q"]
    keypoints[4, 3, 1, 2] = np.nan
    np.savez(path, format=np.asarray(KEYPOINT_FORMAT), start_q=start_q, keypoints=keypoints)


BAD_INPUTS = {
    "missing_demos": (["mbirl", "train", "--demos", "missing.npz", "--run-dir", "r"],
                      ["missing.npz", "not found"]),
    "bogus_cost": (["mbirl", "train", "--demos", "{demos}", "--cost", "bogus", "--run-dir", "r"], ["bogus"]),
    "train_out_of_range": (["mbirl", "train", "--demos", "{demos}", "--train", "0:9", "--run-dir", "r"],
                           ["0:9", "6 demonstrations"]),
    "train_not_a_range": (["mbirl", "train", "--demos", "{demos}", "--train", "abc", "--run-dir", "r"],
                          ["abc", "train"]),
    "nan_keypoints": (["mbirl", "train", "--demos", "nan.npz", "--run-dir", "r"],
                      ["nan.npz", "keypoints", "NaN"]),
    "unknown_link": (["mbirl", "train", "--demos", "{demos}", "--robot", "original", "--keypoint-links",
                      "kp_link_1,nope", "--run-dir", "r"], ["'nope'", "kp_link_2"]),
    "keypoint_count_mismatch": (["mbirl", "train", "--demos", "{demos}", "--robot", "original",
                                 "--keypoint-links", "kp_link_1,kp_link_2,kp_link_3", "--run-dir", "r"],
                                ["2 keypoints", "has 3"]),
    "unknown_robot": (["mbirl", "train", "--demos", "{demos}", "--robot", "ur5", "--run-dir", "r"],
                      ["unknown robot 'ur5'", "kuka, original"]),
    "robot_and_urdf": (["kuka", "demos", "--robot", "original", "--urdf", "x.urdf", "--keypoint-links", "a",
                        "--out", "x.npz"], ["--urdf", "--robot original"]),
    "urdf_without_links": (["mbirl", "train", "--demos", "{demos}", "--urdf", "x.urdf", "--run-dir", "r"],
                           ["--keypoint-links"]),
    "bad_inner_optimizer": (["mbirl", "train", "--demos", "{demos}", "--inner-optimizer", "lbfgs", "--run-dir", "r"],
                            ["lbfgs", "sgd, adam, gauss-newton"]),
    "compare_bad_update": (["mbirl", "compare", "--demos", "{demos}", "--update", "never", "--run-dir", "r"],
                           ["never", "per_demo or batched"]),
    "config_unknown_key": (["mbirl", "train", "--config", "bad.yaml", "--run-dir", "r"], ["bad.yaml", "bogus"]),
    "unknown_task": (["kuka", "demos", "--task", "flying", "--out", "x.npz"], ["flying"]),
    "zero_threads": (["--threads", "0", "kuka", "demos", "--out", "x.npz"], ["threads", "256", "got 0"]),
    "unknown_style": (["kuka", "demos", "--style", "fancy", "--out", "x.npz"], ["fancy", "reachable or original"]),
    "original_style_reaching": (["kuka", "demos", "--task", "reaching", "--style", "original", "--out", "x.npz"],
                                ["placing only"]),
    "original_style_noise": (["kuka", "demos", "--style", "original", "--noise", "1", "--out", "x.npz"],
                             ["--noise", "reachable style only"]),
    "rbf_original_other_cost": (["mbirl", "train", "--demos", "{demos}", "--cost", "timedep", "--rbf-original",
                                 "--run-dir", "r"], ["--rbf-original", "'timedep'"]),
    "rbf_original_without_rbf": (["mbirl", "compare", "--demos", "{demos}", "--costs", "weighted,timedep",
                                  "--rbf-original", "--run-dir", "r"], ["--rbf-original", "not among"]),
}


SUBPROCESS_CASES = ("missing_demos", "zero_threads")
"""Bad inputs also checked in a real ``mbirl`` process (the others run ``main`` in the test's process)."""


@pytest.mark.parametrize("case", list(BAD_INPUTS) + [f"{c}@subprocess" for c in SUBPROCESS_CASES])
def test_bad_input_one_line_error_exit_2(case, tmp_path, demos_npz, capsys, monkeypatch):
    case, _, mode = case.partition("@")
    args, needles = BAD_INPUTS[case]
    if case == "nan_keypoints":
        _write_nan_demos(tmp_path / "nan.npz", demos_npz)
    if case == "config_unknown_key":
        (tmp_path / "bad.yaml").write_text(f"demos: {demos_npz}\ntrainer:\n  bogus: 1\n")
    args = [a.format(demos=demos_npz) for a in args]
    before = _tree(tmp_path)

    result = run_cli(tmp_path, *args) if mode else run_cli_in_process(tmp_path, capsys, monkeypatch, *args)

    assert_one_line_error(result, *needles)
    assert _tree(tmp_path) == before, "a failed command left files behind"
    assert not (tmp_path / "r").exists()


def test_original_style_demos_and_rbf_formulation_reproduce_the_original(tmp_path):
    """``--style original --robot original``, seed 0, then ``--cost rbf --rbf-original``: 144.7 as published."""
    result = run_cli(tmp_path, "kuka", "demos", "--style", "original", "--seed", "0", "--robot", "original",
                     "--out", "orig.npz")
    assert result.returncode == 0, result.stderr
    loaded = load_keypoint_demos(tmp_path / "orig.npz")
    assert loaded.meta["style"] == "original" and "--style original" in loaded.meta["command"]
    assert "--robot original" in loaded.meta["command"] and loaded.meta["robot"]["builtin"] == "original"
    assert all(d.q is None for d in loaded.demos)
    result = run_cli(tmp_path, "mbirl", "train", "--demos", "orig.npz", "--robot", "original", "--cost", "rbf",
                     "--rbf-original", "--run-dir", "r", "--no-progress")
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("rbf: test IRL loss")
    metrics = json.loads((tmp_path / "r" / "metrics.json").read_text())
    assert metrics["final_test_irl_loss"] == pytest.approx(144.7, abs=0.3)
    config = json.loads((tmp_path / "r" / "config.json").read_text())
    assert config["rbf_original"] is True and config["robot"] == "original"


@pytest.mark.slow  # the default suite is near its 10-minute limit
def test_config_file_nested_and_flat(tmp_path, demos_npz):
    """``--config`` takes the preset (nested ``trainer:``); command-line options win; an old flat file still loads,
    with a deprecation warning naming the new place of each key."""
    preset = Path(__file__).resolve().parents[1] / "configs" / "placing_original.yaml"
    result = run_cli(tmp_path, "mbirl", "train", "--config", preset, "--demos", demos_npz, "--robot", "kuka",
                     "--outer-iters", "1", "--inner-lr", "0.002", "--run-dir", "nested", "--no-progress")
    assert result.returncode == 0, result.stderr
    config = json.loads((tmp_path / "nested" / "config.json").read_text())
    assert config["outer_iters"] == 1 and config["robot"] == "kuka" and config["demos"] == str(demos_npz)
    from mbirl.algorithms import MBIRLConfig

    assert config["trainer"] == {**asdict(MBIRLConfig()), "inner_steps": 1, "inner_lr": 0.002, "inner_optimizer": "sgd",
                                 "outer_lr": 0.01, "update": "per_demo", "grad_mode": "unrolled", "grad_clip": None}
    (tmp_path / "old.yaml").write_text(f"demos: {demos_npz}\nmethod: timedep\nouter_iters: 1\ninner_lr: 0.003\n")
    result = run_cli(tmp_path, "mbirl", "train", "--config", "old.yaml", "--run-dir", "flat", "--no-progress")
    assert result.returncode == 0, result.stderr
    assert "FutureWarning" in result.stderr and "trainer.inner_lr" in result.stderr
    config = json.loads((tmp_path / "flat" / "config.json").read_text())
    assert config["method"] == "timedep" and config["trainer"]["inner_lr"] == 0.003


def test_option_defaults_and_help_come_from_the_config_classes():
    import inspect

    from typer.testing import CliRunner

    from mbirl.algorithms import MBIRLConfig
    from mbirl.cli import app
    from mbirl.cli.mbirl_cmds import compare, train
    from mbirl.experiments import MBIRLRunConfig

    for command in ("train", "compare"):
        result = CliRunner().invoke(app, ["mbirl", command, "--help"], env={"COLUMNS": "200"})
        assert result.exit_code == 0, result.output
        assert "configs/placing.yaml" not in result.output and "placing_original.yaml" in result.output
        assert "--robot" in result.output
    for command in (train, compare):
        params = inspect.signature(command).parameters
        assert params["inner_lr"].default == MBIRLConfig.inner_lr
        assert params["update"].default == MBIRLConfig.update
        assert params["outer_iters"].default == MBIRLRunConfig.outer_iters
        assert params["robot"].default == MBIRLRunConfig.robot
        assert params["train"].default == "{}:{}".format(*MBIRLRunConfig.train)


def test_threads_option_sets_torch_threads():
    """Every command runs with one torch thread unless ``mbirl --threads N`` says otherwise."""
    import torch
    from typer.testing import CliRunner

    from mbirl.cli import app

    before = torch.get_num_threads()
    try:
        for args, expected in ((["kuka", "--help"], 1), (["--threads", "2", "kuka", "--help"], 2)):
            torch.set_num_threads(3)
            result = CliRunner().invoke(app, args)
            assert result.exit_code == 0, result.output
            assert torch.get_num_threads() == expected
    finally:
        torch.set_num_threads(before)


# --------------------------------------------------------------------------- training runs


@pytest.fixture(scope="module")
def first_run(tmp_path_factory, demos_npz) -> tuple[Path, subprocess.CompletedProcess[str], dict]:
    """A tiny ``mbirl train`` (3 outer iterations) in a module run directory; metrics copied at once."""
    cwd = tmp_path_factory.mktemp("train")
    result = run_cli(cwd, "mbirl", "train", "--demos", demos_npz, "--cost", "weighted", "--outer-iters", "3",
                     "--run-dir", "r", "--no-progress")
    metrics_path = cwd / "r" / "metrics.json"
    metrics = json.loads(metrics_path.read_text()) if metrics_path.is_file() else {}
    jsonl = cwd / "r" / "metrics.jsonl"
    # Snapshot now: a later test resumes this run directory.
    metrics["_jsonl_steps"] = [json.loads(line)["step"] for line in jsonl.read_text().splitlines()] \
        if jsonl.is_file() else None
    return cwd, result, metrics


def test_train_writes_metrics(first_run):
    cwd, result, metrics = first_run
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr
    run = cwd / "r"
    for key in METRIC_KEYS:
        assert key in metrics, key
    assert len(metrics["irl_loss_train"]) == 4
    assert len(metrics["irl_loss_test"]) == 4
    assert all(np.isfinite(metrics["irl_loss_test"])) and all(v > 0 for v in metrics["irl_loss_test"])
    assert np.isfinite(metrics["final_test_irl_loss"]) and metrics["final_test_irl_loss"] > 0
    assert metrics["test_relative_goal_distance"] >= 0
    assert metrics["seconds_per_outer_iter"] > 0
    assert metrics["method"] == "weighted" and metrics["outer_iters"] == 3
    # Learning happened: three outer steps on the placing demos lower the training loss.
    assert metrics["irl_loss_train"][-1] < metrics["irl_loss_train"][0]
    assert (run / "config.json").is_file()
    assert (run / "checkpoints" / "last.json").is_file()
    assert len(list((run / "checkpoints").glob("last-*.safetensors"))) == 1  # content-named tensor file
    assert (run / "figures" / "learning_curve.png").is_file()
    assert metrics["_jsonl_steps"] == [0, 1, 2, 3]


def test_train_refuses_to_clobber_then_resumes(first_run):
    cwd, result, first = first_run
    assert result.returncode == 0, result.stderr
    run = cwd / "r"
    metrics_before = (run / "metrics.json").read_bytes()
    ckpt_before = (run / "checkpoints" / "last.json").read_bytes()

    demos = json.loads((run / "config.json").read_text())["demos"]
    again = run_cli(cwd, "mbirl", "train", "--demos", demos, "--cost", "weighted", "--outer-iters", "3",
                    "--run-dir", "r", "--no-progress")
    assert_one_line_error(again, "--resume")
    assert (run / "metrics.json").read_bytes() == metrics_before
    assert (run / "checkpoints" / "last.json").read_bytes() == ckpt_before

    # --resume with a different configuration is refused too, and touches nothing.
    changed = run_cli(cwd, "mbirl", "train", "--demos", demos, "--cost", "weighted", "--outer-iters", "5",
                      "--outer-lr", "0.5", "--run-dir", "r", "--no-progress", "--resume")
    assert_one_line_error(changed, "outer_lr")
    assert (run / "metrics.json").read_bytes() == metrics_before
    assert (run / "checkpoints" / "last.json").read_bytes() == ckpt_before

    resumed = run_cli(cwd, "mbirl", "train", "--demos", demos, "--cost", "weighted", "--outer-iters", "5",
                      "--run-dir", "r", "--no-progress", "--resume")
    assert resumed.returncode == 0, resumed.stderr
    metrics = json.loads((run / "metrics.json").read_text())
    assert len(metrics["irl_loss_train"]) == 6
    assert len(metrics["irl_loss_test"]) == 6
    assert len(first["irl_loss_train"]) == 4
    assert metrics["irl_loss_train"][:4] == first["irl_loss_train"]
    assert metrics["irl_loss_test"][:4] == first["irl_loss_test"]
    assert metrics["outer_iters"] == 5
    assert metrics["final_test_irl_loss"] != first["final_test_irl_loss"]
    # The JSONL log matches an uninterrupted run: every step 0..5 exactly once.
    steps = [json.loads(line)["step"] for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert steps == [0, 1, 2, 3, 4, 5]

    # Resuming continues the same optimisation (cost and optimiser state restored): same curve as 5 iterations
    # in one go.
    straight = run_cli(cwd, "mbirl", "train", "--demos", demos, "--cost", "weighted", "--outer-iters", "5",
                       "--run-dir", "r5", "--no-progress")
    assert straight.returncode == 0, straight.stderr
    reference = json.loads((cwd / "r5" / "metrics.json").read_text())
    np.testing.assert_allclose(metrics["irl_loss_test"], reference["irl_loss_test"], rtol=1e-4)
    np.testing.assert_allclose(metrics["irl_loss_train"], reference["irl_loss_train"], rtol=1e-4)
    assert metrics["final_test_irl_loss"] == pytest.approx(reference["final_test_irl_loss"], rel=1e-4)


@pytest.mark.slow  # the default suite is near its 10-minute limit
def test_resume_after_zero_iterations_does_not_duplicate_step_0(tmp_path, demos_npz):
    common = ("mbirl", "train", "--demos", demos_npz, "--run-dir", "r", "--no-progress")
    assert run_cli(tmp_path, *common, "--outer-iters", "0").returncode == 0
    result = run_cli(tmp_path, *common, "--outer-iters", "2", "--resume")
    assert result.returncode == 0, result.stderr
    metrics = json.loads((tmp_path / "r" / "metrics.json").read_text())
    assert len(metrics["irl_loss_test"]) == 3, metrics["irl_loss_test"]
    steps = [json.loads(line)["step"] for line in (tmp_path / "r" / "metrics.jsonl").read_text().splitlines()]
    assert steps == [0, 1, 2]


def test_train_accepts_original_pt(tmp_path, demos_npz, first_run):
    _, _, npz_metrics = first_run
    with np.load(demos_npz) as data:
        start_q, keypoints = data["start_q"], data["keypoints"]
    raw = [{"start_joint_config": torch.from_numpy(start_q[i]).unsqueeze(0),
            "desired_keypoints": torch.from_numpy(keypoints[i])} for i in range(len(start_q))]
    torch.save(raw, tmp_path / "traj_data.pt")

    result = run_cli(tmp_path, "mbirl", "train", "--demos", "traj_data.pt", "--cost", "weighted",
                     "--outer-iters", "3", "--run-dir", "rp", "--no-progress")
    assert result.returncode == 0, result.stderr
    metrics = json.loads((tmp_path / "rp" / "metrics.json").read_text())
    assert len(metrics["irl_loss_test"]) == 4
    # Same start poses and keypoints as the .npz: the same learning curve (up to float noise).
    assert npz_metrics, "the .npz training run did not produce metrics"
    np.testing.assert_allclose(metrics["irl_loss_test"], npz_metrics["irl_loss_test"], rtol=1e-3)
    np.testing.assert_allclose(metrics["irl_loss_train"], npz_metrics["irl_loss_train"], rtol=1e-3)


@pytest.mark.slow  # the default suite is near its 10-minute limit
def test_quickstart_takes_a_config_and_refuses_demos_in_it(tmp_path):
    (tmp_path / "q.yaml").write_text("outer_iters: 2\ntrainer:\n  inner_steps: 2\n  inner_lr: 0.0005\n")
    result = run_cli(tmp_path, "quickstart", "--run-dir", "qs", "--config", "q.yaml", "--no-progress")
    assert result.returncode == 0, result.stderr
    saved = json.loads((tmp_path / "qs" / "config.json").read_text())
    assert saved["run"]["outer_iters"] == 2 and saved["run"]["trainer"]["inner_steps"] == 2
    assert saved["run"]["trainer"]["inner_lr"] == 0.0005 and saved["methods"] == list(METHODS)
    metrics = json.loads((tmp_path / "qs" / "neural" / "metrics.json").read_text())
    assert len(metrics["irl_loss_train"]) == 3  # before training + two outer iterations

    (tmp_path / "d.yaml").write_text("demos: other.npz\n")
    result = run_cli(tmp_path, "quickstart", "--run-dir", "qs2", "--config", "d.yaml", "--no-progress")
    assert_one_line_error(result, "d.yaml", "makes its own demonstrations")
    assert not (tmp_path / "qs2").exists()
