"""Reliability, round two (issue 16): bounded memory on hostile files, no code from file content, one-line errors
on every command's error paths, one writer per run directory, interrupts that say what to do.

Each test here is one case of the issue; each failed on the code before the fix."""

from __future__ import annotations

import contextlib
import io
import json
import sys
import time
import zipfile
from pathlib import Path

import numpy as np
import pytest

from mbirl.cli import main
from mbirl.data.demos import load_trajectories, save_trajectories
from mbirl.errors import InputError
from mbirl.types import Trajectory

PENDULUM_DEMOS = Path(__file__).resolve().parents[1] / "data" / "demos" / "Pendulum-v1.npz"


def run_cli(*args: str) -> tuple[int, str]:
    """Exit code and stderr of ``mbirl ARGS`` run in this process."""
    err = io.StringIO()
    code = 0
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        try:
            main([str(a) for a in args])
        except SystemExit as exc:
            code = int(exc.code or 0)
    return code, err.getvalue()


def assert_one_line_error(code: int, err: str, want: int = 2, match: str | None = None) -> None:
    assert code == want, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("mbirl: error:") and "Traceback" not in err, err
    assert len(lines[0]) < 800, len(lines[0])
    if match is not None:
        assert match in lines[0], lines[0]


def _pendulum_arrays() -> tuple[dict[str, np.ndarray], dict]:
    with np.load(PENDULUM_DEMOS) as data:
        arrays = {k: data[k] for k in data.files}
    return arrays, json.loads(str(arrays["meta_json"]))


def write_demos(path: Path, *, meta: dict | None = None, meta_text: str | None = None, **changes: np.ndarray
                ) -> Path:
    """The Pendulum demo file with its metadata (or arrays) changed."""
    arrays, old_meta = _pendulum_arrays()
    if meta is not None:
        old_meta.update(meta)
    arrays["meta_json"] = np.asarray(meta_text if meta_text is not None else json.dumps(old_meta))
    arrays.update(changes)
    np.savez(path, **arrays)  # type: ignore[arg-type]
    return path


def _npy_header_only(shape: tuple[int, ...], dtype: str = "<f4") -> bytes:
    """An ``.npy`` member whose header declares ``shape`` but that carries only a few bytes of data."""
    buf = io.BytesIO()
    np.lib.format.write_array_header_1_0(buf, {"descr": dtype, "fortran_order": False, "shape": shape})
    return buf.getvalue() + b"\0" * 64


# ------------------------------------------------------------------------------ 1. bounded memory


def test_npz_member_declaring_a_huge_array_is_refused_from_its_header(tmp_path):
    path = tmp_path / "bomb.npz"
    save_trajectories(path, [Trajectory(obs=np.zeros((3, 3)), acts=np.zeros((2, 1)), dones=np.zeros(2, bool))],
                      {"env_id": "Pendulum-v1"})
    with zipfile.ZipFile(path) as zf:
        names = zf.namelist()
    rebuilt = tmp_path / "bomb2.npz"
    with zipfile.ZipFile(path) as src, zipfile.ZipFile(rebuilt, "w", zipfile.ZIP_DEFLATED) as dst:
        for name in names:
            data = _npy_header_only((50 * 1024**3 // 4 // 3, 3)) if name == "obs.npy" else src.read(name)
            dst.writestr(name, data)
    assert rebuilt.stat().st_size < 10_000
    t0 = time.perf_counter()
    with pytest.raises(InputError, match="declares a float32 array") as exc:
        load_trajectories(rebuilt)
    assert exc.value.field == "obs" and time.perf_counter() - t0 < 5
    code, err = run_cli("mairl", "train", "--demos", rebuilt, "--run-dir", tmp_path / "run", "--no-progress")
    assert_one_line_error(code, err, match="declares")
    assert not (tmp_path / "run").exists()


def test_npz_members_the_format_does_not_name_are_refused_unread(tmp_path):
    path = write_demos(tmp_path / "d.npz", junk=np.zeros(10))
    with pytest.raises(InputError, match="unexpected member") as exc:
        load_trajectories(path)
    assert exc.value.field == "junk"


def test_yaml_alias_bomb_is_refused_quickly_with_a_short_message(tmp_path):
    lines = ['a0: &a0 ["xxxxxxxxxxxxxxxxxxxx"]']
    for i in range(1, 10):
        prev = f"*a{i - 1}"
        lines.append(f"a{i}: &a{i} [{', '.join([prev] * 9)}]")
    lines.append("horizon: *a9")
    path = tmp_path / "bomb.yaml"
    path.write_text("\n".join(lines) + "\n")
    assert path.stat().st_size < 600
    t0 = time.perf_counter()
    code, err = run_cli("mairl", "train", "--demos", PENDULUM_DEMOS, "--config", path, "--run-dir", tmp_path / "r")
    assert time.perf_counter() - t0 < 10
    assert_one_line_error(code, err, match="too many values")


def test_rejected_values_are_cut_in_messages(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("env_steps: [" + ", ".join(["123456789"] * 5_000) + "]\n")
    code, err = run_cli("mairl", "train", "--demos", PENDULUM_DEMOS, "--config", path, "--run-dir", tmp_path / "r")
    assert_one_line_error(code, err, match="env_steps")
    assert len(err) < 700


def test_error_messages_are_one_line():
    exc = InputError("first\nsecond\rthird", source="a\nb", field="c\nd")
    assert "\n" not in str(exc) and "\r" not in str(exc) and "first second third" in str(exc)
    assert len(str(InputError("x" * 10**6))) <= 600


def test_json_files_with_nan_literals_are_refused(tmp_path):
    from mbirl.validation import read_json

    (tmp_path / "m.json").write_text('{"a": NaN}')
    with pytest.raises(InputError, match="NaN is not JSON"):
        read_json(tmp_path / "m.json")
    (tmp_path / "deep.json").write_text("[" * 500 + "]" * 500)
    with pytest.raises(InputError, match="nested deeper"):
        read_json(tmp_path / "deep.json")


# ------------------------------------------------------------------------------ 2. no code from data


def test_env_id_in_demo_metadata_never_imports_a_module(tmp_path, monkeypatch):
    (tmp_path / "mbirl_evil_probe.py").write_text(
        "from pathlib import Path\nPath(__file__).with_name('IMPORTED').write_text('yes')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    path = write_demos(tmp_path / "d.npz", meta={"env_id": "mbirl_evil_probe:Pendulum-v1"})
    code, err = run_cli("mairl", "train", "--demos", path, "--run-dir", tmp_path / "run", "--no-progress")
    assert_one_line_error(code, err, match="not a plain registered environment id")
    assert "mbirl_evil_probe" not in sys.modules and not (tmp_path / "IMPORTED").exists()


def test_make_env_works_with_an_environment_whose_constructor_takes_no_render_mode():
    import gymnasium as gym

    from mbirl.experts.rollout import make_env

    class Plain(gym.Env):
        observation_space = gym.spaces.Box(-1, 1, (2,))
        action_space = gym.spaces.Box(-1, 1, (1,))

        def __init__(self) -> None:
            pass

        def reset(self, *, seed=None, options=None):
            return np.zeros(2, np.float32), {}

        def step(self, action):
            return np.zeros(2, np.float32), 0.0, False, True, {}

    gym.register("MbirlTestPlain-v0", entry_point=Plain)
    try:
        env = make_env("MbirlTestPlain-v0")
        assert env.reset(seed=0)[0].shape == (2,)
        with pytest.raises(InputError, match="cannot render"):
            make_env("MbirlTestPlain-v0", render_mode="rgb_array")
    finally:
        del gym.registry["MbirlTestPlain-v0"]


# ------------------------------------------------------------------------------ 3./4. one-line errors, refusals


@pytest.mark.parametrize(("meta", "match"), [
    ({"expert_mean_return": "abc"}, "expected a finite number"),
    ({"expert_mean_return": [1, 2]}, "expected a finite number"),
    ({"expert_mean_return": float("inf")}, "expected a finite number"),
    ({"random_mean_return": None}, "expected a finite number"),
    ({"env_id": ["Pendulum-v1"]}, "expected an environment id"),
])
def test_demo_metadata_of_the_wrong_type_is_refused(tmp_path, meta, match):
    path = write_demos(tmp_path / "d.npz", meta=meta)
    code, err = run_cli("mairl", "train", "--demos", path, "--run-dir", tmp_path / "run", "--no-progress")
    assert_one_line_error(code, err, match=match)


def test_deeply_nested_demo_metadata_is_refused(tmp_path):
    path = write_demos(tmp_path / "d.npz", meta_text='{"env_id": ' + "[" * 100_000 + "]" * 100_000 + "}")
    code, err = run_cli("mairl", "train", "--demos", path, "--run-dir", tmp_path / "run", "--no-progress")
    assert_one_line_error(code, err, match="meta_json")


@pytest.mark.parametrize(("acts", "match"), [
    (lambda a: a * 1e6, "outside Pendulum-v1's action space"),
    (lambda a: np.round(a).astype(np.int64), "continuous actions"),
])
def test_demo_actions_outside_the_action_space_are_refused(tmp_path, acts, match):
    arrays, _ = _pendulum_arrays()
    path = write_demos(tmp_path / "d.npz", acts=acts(arrays["acts"]))
    code, err = run_cli("mairl", "train", "--demos", path, "--run-dir", tmp_path / "run", "--no-progress")
    assert_one_line_error(code, err, match=match)
    assert not (tmp_path / "run").exists()


# ------------------------------------------------------------------------------ 1. sizing options are bounded


@pytest.mark.parametrize("args", [
    ("visual", "demos", "--resolution", "100000"),
    ("visual", "explore", "--resolution", "100000"),
    ("visual", "explore", "--n", "100000", "--horizon", "100"),
    ("visual", "train-detector", "--keypoints", "100000", "--data", "x.npz"),
    ("visual", "train-detector", "--width", "100000", "--data", "x.npz"),
    ("visual", "train-dynamics", "--hidden", "10000000", "--data", "x.npz", "--detector", "d"),
    ("visual", "pipeline", "--resolution", "100000"),
])
def test_sizing_options_have_upper_bounds(tmp_path, monkeypatch, args):
    monkeypatch.chdir(tmp_path)
    t0 = time.perf_counter()
    code, err = run_cli(*args)
    assert_one_line_error(code, err)
    assert time.perf_counter() - t0 < 10 and sorted(p.name for p in tmp_path.iterdir()) == []


@pytest.mark.parametrize(("change", "match"), [
    ({"target": (-0.6, 0.82, 1.0)}, "eye and target coincide"),
    ({"scale": 0.0}, "scale"),
    ({"up": (0.0, 0.0, 0.0)}, "parallel"),
    ({"fov": float("nan")}, "finite"),
])
def test_degenerate_cameras_are_refused(change, match):
    from mbirl.envs.render import Camera

    with pytest.raises(InputError, match=match):
        Camera(**change)


def _fake_exploration(path: Path, *, camera_size: int = 16, image_size: int = 16, joints: int = 7) -> Path:
    from mbirl.data.visual import EXPLORATION_FORMAT
    from mbirl.envs.kuka import default_kuka
    from mbirl.envs.render import Camera

    n, t1 = 4, 3
    meta = {"camera": Camera(width=camera_size, height=camera_size).to_meta(), "robot": default_kuka().describe()}
    np.savez(path, format=np.asarray(EXPLORATION_FORMAT), meta_json=np.asarray(json.dumps(meta)),
             q=np.zeros((n, t1, joints), np.float32), actions=np.zeros((n, t1 - 1, joints), np.float32),
             images=np.zeros((n, t1, image_size, image_size, 3), np.uint8),
             depth=np.ones((n, t1, image_size, image_size), np.float16),
             keypoints=np.zeros((n, t1, 2, 3), np.float32))
    return path


def test_detector_stage_refuses_a_camera_that_disagrees_with_the_images_before_writing(tmp_path):
    data = _fake_exploration(tmp_path / "e.npz", camera_size=32, image_size=16)
    code, err = run_cli("visual", "train-detector", "--data", data, "--run-dir", tmp_path / "run", "--steps", "2",
                        "--no-progress")
    assert_one_line_error(code, err, match="camera is 32x32, images are 16x16")
    assert not (tmp_path / "run").exists()


def test_dynamics_stage_refuses_joint_states_of_another_robot_before_writing(tmp_path):
    data = _fake_exploration(tmp_path / "e.npz", joints=5)
    code, err = run_cli("visual", "train-dynamics", "--data", data, "--detector", tmp_path / "none",
                        "--run-dir", tmp_path / "run", "--no-progress")
    assert_one_line_error(code, err, match="5 joints")
    assert not (tmp_path / "run").exists()


def test_dynamics_stage_refuses_a_nan_learning_rate(tmp_path):
    code, err = run_cli("visual", "train-dynamics", "--data", tmp_path / "e.npz", "--detector", tmp_path / "d",
                        "--lr", "nan", "--run-dir", tmp_path / "run", "--no-progress")
    assert_one_line_error(code, err)
