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
from dataclasses import dataclass
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


# ------------------------------------------------------------------------------ a tiny MAIRL run to edit

TINY_MAIRL = "trainer:\n  warmup_steps: 100\n  model_pretrain_steps: 5\n  batch_size: 32\n  model_steps: 1\n"


def tiny_mairl_args(tmp: Path, run_dir: Path | str) -> list:
    (tmp / "tiny.yaml").write_text(TINY_MAIRL)
    return ["mairl", "train", "--demos", PENDULUM_DEMOS, "--env-steps", "150", "--eval-every", "200",
            "--eval-episodes", "1", "--horizon", "5", "--n-rollouts", "1", "--dynamics", "mlp", "--config",
            tmp / "tiny.yaml", "--run-dir", run_dir, "--no-progress"]


@pytest.fixture(scope="module")
def mairl_run(tmp_path_factory) -> Path:
    """A finished two-evaluation MAIRL run (about a second in this process)."""
    tmp = tmp_path_factory.mktemp("mairl")
    code, err = run_cli(*tiny_mairl_args(tmp, tmp / "run"))
    assert code == 0, err
    return tmp / "run"


def _copy_run(src: Path, dst: Path) -> Path:
    import shutil

    shutil.copytree(src, dst, ignore=shutil.ignore_patterns(".lock"))
    return dst


def _edit_checkpoint(run: Path, edit) -> None:
    from mbirl.reporting.checkpoint import load_checkpoint, save_checkpoint
    from mbirl.reporting.runs import checkpoint_stem

    stem = checkpoint_stem(run)
    state = load_checkpoint(stem)
    edit(state)
    save_checkpoint(stem, state)


@pytest.mark.parametrize("edit", [
    pytest.param(lambda s: s.pop("trainer"), id="no-trainer"),
    pytest.param(lambda s: s.pop("evals"), id="no-evals"),
    pytest.param(lambda s: s.update(evals="abc"), id="evals-string"),
    pytest.param(lambda s: s["trainer"].update(env_steps="many"), id="counter-string"),
    pytest.param(lambda s: s["trainer"].update(iteration=[1]), id="counter-list"),
    pytest.param(lambda s: s["trainer"].update(policy={k: v[..., :1] if v.ndim else v
                                                       for k, v in s["trainer"]["policy"].items()}),
                 id="other-tensors"),
])
def test_edited_mairl_checkpoints_are_refused_on_resume_and_eval(tmp_path, mairl_run, edit):
    run = _copy_run(mairl_run, tmp_path / "run")
    _edit_checkpoint(run, edit)
    code, err = run_cli(*tiny_mairl_args(tmp_path, run), "--resume")
    assert_one_line_error(code, err)
    code, err = run_cli("mairl", "eval", "--run-dir", run, "--episodes", "1")
    assert code in (0, 2) and "Traceback" not in err, err  # eval reads only the policy and the step counter


@pytest.mark.parametrize("text", ['{"algo": "mairl", "demos": 3}', "[1, 2]", '{"demos": "x", "env_steps": "many"}',
                                  '{"algo": "mairl", "demos": "d.npz", "env": "this:Pendulum-v1"}', "{" * 10])
def test_mairl_eval_with_a_malformed_config_json(tmp_path, mairl_run, text):
    run = _copy_run(mairl_run, tmp_path / "run")
    (run / "config.json").write_text(text)
    code, err = run_cli("mairl", "eval", "--run-dir", run, "--episodes", "1")
    assert_one_line_error(code, err)


def test_run_configs_store_demo_paths_absolute_and_eval_works_from_elsewhere(tmp_path, mairl_run, monkeypatch):
    import shutil

    shutil.copy(PENDULUM_DEMOS, tmp_path / "d.npz")
    monkeypatch.chdir(tmp_path)
    args = tiny_mairl_args(tmp_path, "run")
    args[args.index(PENDULUM_DEMOS)] = "d.npz"
    assert run_cli(*args)[0] == 0
    assert json.loads((tmp_path / "run" / "config.json").read_text())["demos"] == str(tmp_path / "d.npz")
    (tmp_path / "elsewhere").mkdir()
    monkeypatch.chdir(tmp_path / "elsewhere")
    code, err = run_cli("mairl", "eval", "--run-dir", tmp_path / "run", "--episodes", "1")
    assert code == 0, err
    monkeypatch.chdir(tmp_path)
    args[args.index("--env-steps") + 1] = "160"
    for spelling in ("d.npz", str(tmp_path / "d.npz")):  # either spelling resumes
        args[args.index("--demos") + 1] = spelling
        code, err = run_cli(*args, "--resume")
        assert code == 0, err


def test_threads_option_has_an_upper_bound():
    code, err = run_cli("--threads", "100000", "kuka", "--help")
    assert_one_line_error(code, err, match="threads")


# ------------------------------------------------------------------------------ 5. one writer per run directory

@dataclass
class _Cfg:
    x: int = 1


def _hold(path: str, ready) -> None:
    """Another process: open a run in ``path``, say so, and keep it open until killed."""
    from mbirl.reporting.runs import RunDir

    run = RunDir(path, _Cfg())
    run.start()
    ready.set()
    time.sleep(60)


def test_one_writer_per_run_directory_and_a_dead_writer_leaves_no_lock(tmp_path):
    import multiprocessing

    from mbirl.reporting.runs import RunDir

    C = _Cfg
    ctx = multiprocessing.get_context("fork")
    ready = ctx.Event()
    proc = ctx.Process(target=_hold, args=(str(tmp_path / "r"), ready))
    proc.start()
    try:
        assert ready.wait(60)
        with pytest.raises(InputError, match=rf"in use by another process \(pid {proc.pid}\)"):
            RunDir(tmp_path / "r", C(), resume=True)
        fresh = RunDir(tmp_path / "new", C())  # the directory did not exist: the lock is taken at start()
        fresh.start()
        fresh.close()
    finally:
        proc.kill()
        proc.join()
    run = RunDir(tmp_path / "r", C(), resume=True)  # the killed holder's lock went with it
    again = RunDir(tmp_path / "r", C(), resume=True)  # handles of one process share the lock
    run.close()
    again.close()


def test_two_runs_started_together_on_one_directory(tmp_path):
    """The second of two fresh runs that both opened an empty directory is refused at start()."""
    from dataclasses import dataclass

    from mbirl.reporting.runs import ALREADY_HOLDS_A_RUN, RunDir

    @dataclass
    class C:
        x: int = 1

    first, second = RunDir(tmp_path / "r", C()), RunDir(tmp_path / "r", C())
    first.start()
    with pytest.raises(InputError, match=ALREADY_HOLDS_A_RUN.split(";")[0]):
        second.start()


# ------------------------------------------------------------------------------ 8. interrupts say what to do


def _checkpoint_text(run: Path) -> str:
    path = run / "checkpoints" / "last.json"
    try:
        return path.read_text()
    except OSError:
        return ""


def _interrupt(cwd: Path, args: list[str], sig: int, checkpoints: int = 1) -> tuple[int, str]:
    """Start ``mbirl ARGS`` in a subprocess and send it ``sig`` once it has written ``checkpoints`` checkpoints
    of its own (so its handlers are installed)."""
    import os
    import subprocess

    env = {**os.environ, "MPLBACKEND": "Agg", "OMP_NUM_THREADS": "1"}
    seen = _checkpoint_text(cwd / "run")
    proc = subprocess.Popen([sys.executable, "-c", "from mbirl.cli import main; main()", *args], cwd=cwd, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None and checkpoints > 0:
        text = _checkpoint_text(cwd / "run")
        if text and text != seen:
            seen, checkpoints = text, checkpoints - 1
        time.sleep(0.005)
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=60)
    return proc.returncode, err


def _interrupt_in_process(run: Path, args: list, sig: int) -> tuple[int, str]:
    """Run ``mbirl ARGS`` in this process; a thread sends ``sig`` to it once a new checkpoint is written."""
    import os
    import threading

    seen = _checkpoint_text(run)
    stop = threading.Event()

    def watch() -> None:
        while not stop.is_set():
            text = _checkpoint_text(run)
            if text and text != seen:
                os.kill(os.getpid(), sig)
                return
            time.sleep(0.002)

    thread = threading.Thread(target=watch, daemon=True)
    thread.start()
    try:
        return run_cli(*args)
    finally:
        stop.set()
        thread.join()


def _mbirl_args(cwd: Path, placing_demos, iters: int) -> list[str]:
    from mbirl.data import save_keypoint_demos

    save_keypoint_demos(cwd / "d.npz", placing_demos)
    return ["mbirl", "train", "--demos", "d.npz", "--cost", "weighted", "--outer-iters", str(iters),
            "--checkpoint-every", "3", "--seed", "3", "--no-progress", "--run-dir", "run"]


def test_sigterm_and_sigint_exit_143_and_130_with_one_line_naming_resume(tmp_path, placing_demos, monkeypatch):
    import signal

    from mbirl.reporting.checkpoint import load_checkpoint
    from mbirl.reporting.runs import checkpoint_stem

    monkeypatch.chdir(tmp_path)
    args = _mbirl_args(tmp_path, placing_demos, 400)
    before = signal.getsignal(signal.SIGINT)  # the default handler, or SIG_IGN in a backgrounded shell job
    for sig, code, flag in ((signal.SIGTERM, 143, []), (signal.SIGINT, 130, ["--resume"])):
        rc, err = _interrupt_in_process(tmp_path / "run", [*args, *flag], sig)
        assert_one_line_error(rc, err, want=code, match="--resume")
        assert signal.Signals(sig).name in err and "the last checkpoint is safe in run" in err
        state = load_checkpoint(checkpoint_stem(tmp_path / "run"))  # complete, not cut short
        assert state["iteration"] >= 0 and not (tmp_path / "run" / "metrics.json").exists()
    assert signal.getsignal(signal.SIGINT) is before  # the CLI put the handlers back


def test_a_signal_during_start_up_imports_ends_in_one_line(tmp_path):
    # the console script's entry point catches signals before importing the command line (torch: seconds)
    import os
    import signal
    import subprocess
    import tomllib

    scripts = tomllib.loads((Path(__file__).parents[1] / "pyproject.toml").read_text())["project"]["scripts"]
    assert scripts["mbirl"] == "mbirl.__main__:main"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    for sig in (signal.SIGINT, signal.SIGTERM):
        proc = subprocess.Popen([sys.executable, "-m", "mbirl", "mairl", "eval", "--run-dir", "run"], cwd=tmp_path,
                                env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        time.sleep(0.3)
        status = Path(f"/proc/{proc.pid}/status")
        while status.exists() and proc.poll() is None:  # a loaded machine: wait until the handler is in place
            caught = next(line for line in status.read_text().splitlines() if line.startswith("SigCgt:"))
            if int(caught.split()[1], 16) >> (signal.SIGTERM - 1) & 1:
                break
            time.sleep(0.01)
        proc.send_signal(sig)
        out, err = proc.communicate(timeout=60)
        assert_one_line_error(proc.returncode, err, want=128 + sig, match="before the command started")
        assert sig.name in err and "--resume" not in err and out == ""


@pytest.mark.slow
@pytest.mark.parametrize("sig", ["SIGTERM", "SIGINT"])
def test_interrupted_runs_resume_to_the_uninterrupted_result(tmp_path, placing_demos, sig, monkeypatch):
    import random
    import signal

    monkeypatch.chdir(tmp_path)
    args = _mbirl_args(tmp_path, placing_demos, 60)
    ref = [*args[:-1], "ref"]
    assert run_cli(*ref)[0] == 0
    rng = random.Random(sig)
    flag: list[str] = []
    for _ in range(3):
        rc, err = _interrupt(tmp_path, [*args, *flag], getattr(signal, sig), checkpoints=rng.randint(1, 6))
        assert rc in (0, 128 + getattr(signal, sig)), err
        flag = ["--resume"]
    assert run_cli(*args, "--resume")[0] == 0

    def comparable(run: Path) -> tuple[dict, list]:
        metrics = {k: v for k, v in json.loads((run / "metrics.json").read_text()).items() if "seconds" not in k}
        rows = [{k: v for k, v in json.loads(line).items() if "seconds" not in k}
                for line in (run / "metrics.jsonl").read_text().splitlines()]
        return metrics, rows

    assert comparable(tmp_path / "run") == comparable(tmp_path / "ref")


# ------------------------------------------------------------------------------ 3./7./10. more commands


@pytest.mark.parametrize("text", ["[1]", '{"env_id": "Pendulum-v1", "algo": "bc", "seed": 0, "env_steps": 0}',
                                  '{"env_id": "P", "algo": "bc", "seed": 0, "env_steps": "x", "eval": [],'
                                  ' "final_normalized_return": 1}',
                                  '{"env_id": "P", "algo": "bc", "seed": 0, "env_steps": 5, "eval": [{"x": 1}],'
                                  ' "final_normalized_return": 1}', '{"a": NaN}'])
def test_mairl_plot_with_malformed_metrics(tmp_path, text):
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "metrics.json").write_text(text)
    code, err = run_cli("mairl", "plot", tmp_path / "run", "--out", tmp_path / "f.png")
    assert_one_line_error(code, err)
    assert not (tmp_path / "f.png").exists()


@pytest.mark.parametrize(("out", "match"), [("f.xyz", "unknown image format"), (".", "is a directory")])
def test_mairl_plot_checks_its_output_before_reading(tmp_path, mairl_run, out, match, monkeypatch):
    monkeypatch.chdir(tmp_path)
    code, err = run_cli("mairl", "plot", mairl_run, "--out", out)
    assert_one_line_error(code, err, match=match)


def test_mairl_models_refuses_a_run_of_another_environment(tmp_path, mairl_run):
    code, err = run_cli("mairl", "models", "--demos", PENDULUM_DEMOS.with_name("CartPole-v1.npz"), "--run-dir",
                        mairl_run, "--out", tmp_path / "out", "--steps", "200", "--train-steps", "1")
    assert_one_line_error(code, err, match="the run is of 'Pendulum-v1'")
    assert not (tmp_path / "out").exists()


def test_mairl_models_refuses_integer_actions_for_a_continuous_environment(tmp_path):
    arrays, _ = _pendulum_arrays()
    path = write_demos(tmp_path / "d.npz", acts=np.zeros_like(arrays["acts"], dtype=np.int64))
    code, err = run_cli("mairl", "models", "--demos", path, "--out", tmp_path / "out", "--steps", "200",
                        "--train-steps", "1")
    assert_one_line_error(code, err, match="continuous actions")
    assert not (tmp_path / "out").exists()


def _export_expert(tmp_path: Path, extra: dict) -> Path:
    from mbirl.experts.policy import ExpertPolicy

    (tmp_path / "exp").mkdir()
    ExpertPolicy([3, 8, 1], "relu", "tanh_box", [-2.0], [2.0]).save(tmp_path / "exp" / "expert", extra)
    return tmp_path / "exp"


def test_expert_demos_needs_the_experts_environment_and_takes_its_directory(tmp_path):
    expert = _export_expert(tmp_path, {"algo": "sac"})
    code, err = run_cli("expert", "demos", "--env", "Pendulum-v1", "--expert", expert, "--n", "1",
                        "--out", tmp_path / "d.npz")
    assert_one_line_error(code, err, match="does not record its environment")
    import shutil

    shutil.rmtree(expert)
    expert = _export_expert(tmp_path, {"env_id": "Pendulum-v1"})
    code, err = run_cli("expert", "demos", "--env", "Pendulum-v1", "--expert", expert, "--n", "1",
                        "--out", tmp_path / "d.npz")  # the directory `mbirl expert train --out` wrote
    assert code == 0, err
    code, err = run_cli("expert", "demos", "--env", "CartPole-v1", "--expert", expert, "--n", "1",
                        "--out", tmp_path / "c.npz")
    assert_one_line_error(code, err, match="trained on 'Pendulum-v1'")


def test_expert_demos_checks_the_output_before_rolling_out(tmp_path):
    expert = _export_expert(tmp_path, {"env_id": "Pendulum-v1"})
    (tmp_path / "file").write_text("x")
    code, err = run_cli("expert", "demos", "--env", "Pendulum-v1", "--expert", expert, "--n", "1",
                        "--out", tmp_path / "file" / "d.npz")
    assert_one_line_error(code, err, match="not a directory")


def test_pt_demo_files_holding_strings_are_refused(tmp_path):
    import torch

    from mbirl.data import load_keypoint_demos

    torch.save([{"start_joint_config": "abc", "desired_keypoints": "def"}], tmp_path / "d.pt")
    with pytest.raises(InputError, match="start_joint_config"):
        load_keypoint_demos(tmp_path / "d.pt")


def test_pt_files_declaring_more_than_a_demo_file_holds_are_refused_before_loading(tmp_path, monkeypatch):
    import torch

    from mbirl.data import load_keypoint_demos
    from test_fuzz_hostile import pt_declaring, pt_with_member

    good = [{"start_joint_config": torch.zeros(1, 7), "desired_keypoints": torch.zeros(5, 2, 3)}]
    torch.save(good, tmp_path / "old.pt", _use_new_zipfile_serialization=False)  # torch < 1.6's format still reads
    assert len(load_keypoint_demos(tmp_path / "old.pt")) == 1
    buf, view = io.BytesIO(), io.BytesIO()
    torch.save(good, buf)
    # a 4-byte storage under a tensor that declares 72 million coordinates (288 MB)
    torch.save([{**good[0], "desired_keypoints": torch.zeros(1, 1, 1).expand(12_000_000, 2, 3)}], view)
    cases = {"view": (view.getvalue(), "tensors declare more than"),
             "record": (pt_declaring(buf.getvalue(), "data/1", 2**31 - 1), "declares 2147483647 bytes"),
             "member": (pt_with_member(buf.getvalue(), "extra.pkl", b""), "unexpected member")}
    loads: list = []
    monkeypatch.setattr(torch, "load", lambda *args, **kwargs: loads.append(args))
    for name, (data, match) in cases.items():
        (tmp_path / f"{name}.pt").write_bytes(data)
        with pytest.raises(InputError, match=match):
            load_keypoint_demos(tmp_path / f"{name}.pt")
    assert not loads  # refused before torch.load


def test_json_outputs_never_hold_nan_literals(tmp_path):
    from mbirl.fileio import json_text, write_json_atomic

    write_json_atomic(tmp_path / "m.json", {"a": float("nan"), "b": [float("inf"), 1.0], "c": np.float32("nan")})
    assert json.loads((tmp_path / "m.json").read_text(), parse_constant=lambda c: pytest.fail(c)) == {
        "a": None, "b": [None, 1.0], "c": None}
    assert json_text({"x": -float("inf")}) == '{"x": null}'


def test_max_minutes_must_be_positive():
    for value in ("0", "-1", "nan"):
        code, err = run_cli("expert", "train", "--env", "Pendulum-v1", "--max-minutes", value, "--out", "/nonexistent")
        assert_one_line_error(code, err, match="max")


# ------------------------------------------------------------------------------ 6. expert training resumes


def _expert_args(out: Path, steps: int) -> list:
    (out.parent / "expert.yaml").write_text("eval_episodes: 1\n")
    return ["expert", "train", "--env", "CartPole-v1", "--steps", str(steps), "--eval-every", "256", "--out", out,
            "--config", out.parent / "expert.yaml", "--no-progress"]


def test_expert_train_refuses_to_clobber_and_resumes(tmp_path):
    out = tmp_path / "exp"
    assert run_cli(*_expert_args(out, 256))[0] == 0
    best = json.loads((out / "expert.json").read_text())
    code, err = run_cli(*_expert_args(out, 256))
    assert_one_line_error(code, err, match="--resume")
    assert json.loads((out / "expert.json").read_text()) == best  # the expert was not touched
    code, err = run_cli(*_expert_args(out, 512), "--resume")
    assert code == 0, err
    rows = [json.loads(line)["step"] for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert rows[:2] == [256, 256] and rows[-1] == 512


def test_expert_train_leaves_no_temporary_log_directory(tmp_path, monkeypatch):
    import tempfile

    monkeypatch.setenv("TMPDIR", str(tmp_path / "tmp"))
    (tmp_path / "tmp").mkdir()
    monkeypatch.setattr(tempfile, "tempdir", None)
    assert run_cli(*_expert_args(tmp_path / "exp", 256))[0] == 0
    assert list((tmp_path / "tmp").iterdir()) == []


@pytest.mark.slow
@pytest.mark.parametrize(("env", "steps"), [("CartPole-v1", 2048), ("Pendulum-v1", 1500)])
def test_expert_train_sigkill_and_resume_equal_an_uninterrupted_run(tmp_path, env, steps):
    import os
    import random
    import signal
    import subprocess

    from mbirl.experts.policy import ExpertPolicy

    preset = {"CartPole-v1": "", "Pendulum-v1": "sac"}[env]
    base = ["expert", "train", "--env", env, "--steps", str(steps), "--eval-every", "256", "--config",
            "c.yaml", "--no-progress", *(["--algo", preset] if preset else [])]
    (tmp_path / "c.yaml").write_text("eval_episodes: 1\n")
    penv = {**os.environ, "OMP_NUM_THREADS": "1", "MPLBACKEND": "Agg"}
    assert run_cli(*[a if a != "c.yaml" else tmp_path / "c.yaml" for a in base], "--out", tmp_path / "ref")[0] == 0
    rng = random.Random(env)
    flag: list[str] = []
    landed = 0
    for _ in range(3):
        proc = subprocess.Popen([sys.executable, "-c", "from mbirl.cli import main; main()", *base, "--out", "run",
                                 *flag], cwd=tmp_path, env=penv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        target = rng.randint(1, steps // 256 - 1)
        jsonl = tmp_path / "run" / "metrics.jsonl"
        deadline = time.time() + 300
        while time.time() < deadline and proc.poll() is None:
            if jsonl.exists() and len(jsonl.read_text().splitlines()) >= target:
                break
            time.sleep(0.01)
        time.sleep(rng.uniform(0, 0.3))
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        landed += proc.returncode == -signal.SIGKILL and not (tmp_path / "run" / "metrics.json").exists()
        flag = ["--resume"]
    code, err = run_cli(*[a if a != "c.yaml" else tmp_path / "c.yaml" for a in base], "--out", tmp_path / "run",
                        "--resume")
    assert code == 0, err

    def rows(run: Path) -> list:
        return [{k: v for k, v in json.loads(line).items() if "seconds" not in k}
                for line in (run / "metrics.jsonl").read_text().splitlines()]

    assert rows(tmp_path / "run") == rows(tmp_path / "ref") and landed >= 1
    for name in ("expert", "last"):
        a = ExpertPolicy.load(tmp_path / "ref" / name)[0].state_dict()
        b = ExpertPolicy.load(tmp_path / "run" / name)[0].state_dict()
        assert all(torch_equal(a[k], b[k]) for k in a)


def torch_equal(a, b) -> bool:
    import torch

    return bool(torch.equal(a, b))


def test_demo_start_states_outside_the_joint_limits_are_refused(tmp_path, placing_demos):
    from dataclasses import replace

    from mbirl.data import save_keypoint_demos

    demos = list(placing_demos)
    demos[1] = replace(demos[1], start_q=demos[1].start_q + np.float32(50.0))
    save_keypoint_demos(tmp_path / "d.npz", demos)
    code, err = run_cli("mbirl", "train", "--demos", tmp_path / "d.npz", "--outer-iters", "1", "--run-dir",
                        tmp_path / "run", "--no-progress")
    assert_one_line_error(code, err, match="outside the robot's limits")
    assert not (tmp_path / "run").exists()


@pytest.mark.slow  # a fresh interpreter (the banner is printed once per process)
def test_pybullet_banner_is_not_printed():
    import subprocess

    out = subprocess.run([sys.executable, "-c", "from mbirl.envs.render import _quiet_pybullet; _quiet_pybullet()"],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and out.stdout == "" and "pybullet build time" not in out.stderr, out.stderr


@pytest.mark.parametrize("args", [("kuka", "demos", "--out", "{file}/d.npz"),
                                  ("visual", "demos", "--out", "{file}/d.npz"),
                                  ("visual", "explore", "--out", "{file}/d.npz")])
def test_output_locations_are_checked_before_the_work(tmp_path, args):
    (tmp_path / "file").write_text("x")
    t0 = time.perf_counter()
    code, err = run_cli(*[a.format(file=tmp_path / "file") for a in args])
    assert_one_line_error(code, err, match="not a directory")
    assert time.perf_counter() - t0 < 10


# ------------------------------------------------------------------------------ SIGKILL at random points (slow)


@pytest.mark.slow
@pytest.mark.parametrize("algo", ["bc", "dac", "gail", "airl", "mgail"])
def test_sigkill_and_resume_imitation_baselines(tmp_path, algo):
    import random

    from test_reliability import _kill_resume_trial

    (tmp_path / "c.yaml").write_text({
        "bc": "checkpoint_every: 1\nbc:\n  max_epochs: 40\n",
        "dac": "checkpoint_every: 5\n",
        "gail": "checkpoint_every: 1\n", "airl": "checkpoint_every: 1\n",
        "mgail": "checkpoint_every: 3\n" + TINY_MAIRL.replace("trainer:", "mairl:")}[algo])
    steps = {"bc": 1000, "dac": 1500, "gail": 12000, "airl": 12000, "mgail": 1200}[algo]
    rows = {"gail": 3, "airl": 3}.get(algo, 8)  # PPO logs one row per rollout of thousands of steps
    base = ["il", "train", "--algo", algo, "--demos", str(PENDULUM_DEMOS), "--env-steps", str(steps), "--eval-every",
            "400", "--eval-episodes", "1", "--seed", "2", "--config", str(tmp_path / "c.yaml"), "--no-progress"]
    mismatches, landed = _kill_resume_trial(tmp_path, base, kills=2, rng=random.Random(algo), max_rows=rows)
    assert mismatches == 0 and landed >= 1


@pytest.mark.slow
def test_sigkill_and_resume_visual_stages(tmp_path):
    import random

    from test_reliability import _kill_resume_trial

    assert run_cli("visual", "explore", "--n", "10", "--horizon", "3", "--resolution", "16", "--out",
                   tmp_path / "explore.npz", "--no-progress")[0] == 0
    (tmp_path / "det.yaml").write_text("checkpoint_every: 7\ncalibration_frames: 20\n")
    det = ["visual", "train-detector", "--data", str(tmp_path / "explore.npz"), "--keypoints", "3", "--width", "8",
           "--steps", "300", "--batch-size", "8", "--config", str(tmp_path / "det.yaml"), "--no-progress"]
    assert _kill_resume_trial(tmp_path, det, kills=3, rng=random.Random(3), max_rows=25) == (0, 3)
    (tmp_path / "dyn.yaml").write_text("checkpoint_every: 7\n")
    dyn_dir = tmp_path / "dyn"
    dyn_dir.mkdir()
    dyn = ["visual", "train-dynamics", "--data", str(tmp_path / "explore.npz"), "--detector", str(tmp_path / "ref"),
           "--hidden", "16", "--layers", "1", "--steps", "300", "--config", str(tmp_path / "dyn.yaml"),
           "--no-progress"]
    assert _kill_resume_trial(dyn_dir, dyn, kills=3, rng=random.Random(4), max_rows=25) == (0, 3)


def test_mairl_eval_checks_its_outputs_before_evaluating(tmp_path, mairl_run):
    (tmp_path / "file").write_text("x")
    for option, name in (("--out", "e.json"), ("--video", "v.mp4")):
        code, err = run_cli("mairl", "eval", "--run-dir", mairl_run, "--episodes", "1", option,
                            tmp_path / "file" / name)
        assert_one_line_error(code, err, match="not a directory")


def test_checkpoints_keep_non_finite_numbers_exactly_in_valid_json(tmp_path):
    import math

    import torch

    from mbirl.reporting.checkpoint import load_checkpoint, save_checkpoint

    save_checkpoint(tmp_path / "last", {"a": float("nan"), "b": [float("inf"), -float("inf")], "t": torch.ones(1)})
    json.loads((tmp_path / "last.json").read_text(), parse_constant=lambda c: pytest.fail(c))  # valid JSON
    state = load_checkpoint(tmp_path / "last")
    assert math.isnan(state["a"]) and state["b"] == [float("inf"), -float("inf")]
