"""Reliability guarantees: no code execution from files, crash-safe and exactly resumable runs,
numerical guards, determinism. Property-based malformed-input tests are in test_fuzz_inputs.py."""

from __future__ import annotations

import json
import os
import random
import re
import signal
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from mbirl.algorithms.mbirl import MBIRL
from mbirl.cli import main
from mbirl.data import save_keypoint_demos
from mbirl.errors import InputError
from mbirl.reporting.checkpoint import load_checkpoint, save_checkpoint

SRC = Path(__file__).resolve().parents[1] / "src" / "mbirl"

UNSAFE = [
    (re.compile(r"^\s*(import|from)\s+(c?pickle|dill|cloudpickle|joblib|shelve|marshal)\b", re.M), "pickle import"),
    (re.compile(r"allow_pickle\s*=\s*True"), "np.load(allow_pickle=True)"),
    (re.compile(r"(?<![.\w])(eval|exec)\s*\("), "eval/exec"),  # builtins, not nn.Module.eval()
    (re.compile(r"yaml\.(load|unsafe_load|full_load)\s*\(|yaml\.(Unsafe|Full)?Loader\b"), "unsafe YAML loader"),
    (re.compile(r"\bpickle\.loads?\s*\("), "pickle.load"),
]


def test_package_source_has_no_code_execution_paths():
    offenders = []
    for path in sorted(SRC.rglob("*.py")):
        text = path.read_text()
        for pattern, what in UNSAFE:
            for m in pattern.finditer(text):
                offenders.append(f"{path.relative_to(SRC)}:{text[: m.start()].count(chr(10)) + 1}: {what}")
        for m in re.finditer(r"torch\.load\(", text):
            call = text[m.start() : text.find(")", m.start()) + 1]
            if "weights_only=True" not in call:
                line = text[: m.start()].count("\n") + 1
                offenders.append(f"{path.relative_to(SRC)}:{line}: torch.load without weights_only=True")
    assert not offenders, "\n".join(offenders)
    assert len(list(SRC.rglob("*.py"))) > 20  # the scan really looked at the package


def test_checkpoint_json_cannot_point_outside_its_directory(tmp_path):
    save_checkpoint(tmp_path / "ck" / "last", {"w": torch.ones(3), "n": 1})
    meta = json.loads((tmp_path / "ck" / "last.json").read_text())
    meta["tensors"] = "../evil.safetensors"
    (tmp_path / "ck" / "last.json").write_text(json.dumps(meta))
    with pytest.raises(InputError, match="tensor file name"):
        load_checkpoint(tmp_path / "ck" / "last")


def test_checkpoint_survives_a_crash_between_its_two_files(tmp_path, monkeypatch):
    stem = tmp_path / "ck" / "last"
    save_checkpoint(stem, {"w": torch.zeros(2), "step": 1})
    import mbirl.reporting.checkpoint as ck

    def crash(*args, **kwargs):
        raise KeyboardInterrupt("killed before the JSON was replaced")

    monkeypatch.setattr(ck, "write_json_atomic", crash)
    with pytest.raises(KeyboardInterrupt):
        save_checkpoint(stem, {"w": torch.ones(2), "step": 2})
    state = load_checkpoint(stem)  # still the complete previous checkpoint
    assert state["step"] == 1 and torch.equal(state["w"], torch.zeros(2))


def run_main(args: list[str]) -> int:
    """Call the CLI entry point in-process; returns its exit code."""
    try:
        main(args)
    except SystemExit as exc:
        return int(exc.code or 0)
    return 0


def _cli(args: list[str], cwd: Path) -> subprocess.Popen:
    env = {**os.environ, "MPLBACKEND": "Agg", "OMP_NUM_THREADS": "1"}
    return subprocess.Popen([sys.executable, "-c", "from mbirl.cli import main; main()", *args], cwd=cwd, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _untimed(value: object) -> object:
    """``value`` without its wall-clock entries (keys naming seconds), at any depth."""
    if isinstance(value, dict):
        return {k: _untimed(v) for k, v in value.items() if "seconds" not in k}
    return value


def _comparable(run: Path) -> tuple[object, list]:
    """metrics.json and metrics.jsonl (if any) without wall-clock fields."""
    metrics = _untimed(json.loads((run / "metrics.json").read_text()))
    lines = (run / "metrics.jsonl").read_text().splitlines() if (run / "metrics.jsonl").exists() else []
    return metrics, [_untimed(json.loads(line)) for line in lines]


def _rows(run: Path) -> int:
    try:
        return len((run / "metrics.jsonl").read_text().splitlines())
    except OSError:
        return 0


def _kill_resume_trial(cwd: Path, base: list[str], kills: int, rng: random.Random, max_rows: int,
                       parts: tuple[str, ...] = (), spread: bool = False) -> tuple[int, int]:
    """Kill a training command ``kills`` times at random points, resume it, compare with an uninterrupted run.

    ``base`` is the command without ``--run-dir``/``--resume``; kills land after a random number of metric rows
    in ``[2, max_rows]`` (``spread``: distinct numbers, in increasing order, so every kill lands further on).
    ``parts``: sub-directories that are runs of their own (a comparison's methods), whose rows count too and whose
    outputs are compared as well. Returns ``(mismatches, kills that landed mid-run)``."""
    runs = [Path("."), *map(Path, parts)]
    targets = sorted(rng.sample(range(2, max_rows + 1), kills)) if spread else None

    def outputs(root: Path) -> list:
        return [_comparable(root / part) for part in runs]

    ref = _cli([*base, "--run-dir", "ref"], cwd)
    assert ref.wait(timeout=600) == 0, ref.stderr.read() if ref.stderr else ""
    mismatches = landed = 0
    flag: list[str] = []
    for _ in range(kills):
        proc = _cli([*base, "--run-dir", "run", *flag], cwd)
        flag = ["--resume"]
        target = targets.pop(0) if targets is not None else rng.randint(2, max_rows)
        deadline = time.time() + 300
        while time.time() < deadline and proc.poll() is None:
            if sum(_rows(cwd / "run" / part) for part in runs) >= target:
                break
            time.sleep(0.01)
        time.sleep(rng.uniform(0.0, 0.05))
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=60)
        if proc.returncode == -signal.SIGKILL and not (cwd / "run" / "metrics.json").exists():
            landed += 1
        for part in runs:
            ckpt = cwd / "run" / part / "checkpoints" / "last"
            if ckpt.with_suffix(".json").exists():
                load_checkpoint(ckpt)  # never left unreadable
    final = _cli([*base, "--run-dir", "run", "--resume"], cwd)
    assert final.wait(timeout=600) == 0, final.stderr.read() if final.stderr else ""
    if outputs(cwd / "run") != outputs(cwd / "ref"):
        mismatches += 1
    return mismatches, landed


def _mbirl_command(cwd: Path, placing_demos, method: str) -> list[str]:
    save_keypoint_demos(cwd / "d.npz", placing_demos)
    return ["mbirl", "train", "--demos", "d.npz", "--cost", method, "--outer-iters", "120", "--checkpoint-every",
            "7", "--seed", "3", "--no-progress"]


PENDULUM_DEMOS = Path(__file__).resolve().parents[1] / "data" / "demos" / "Pendulum-v1.npz"


def _mairl_command(cwd: Path, env_steps: int, variant: str = "mairl") -> list[str]:
    (cwd / "c.yaml").write_text("checkpoint_every: 3\n")
    return ["mairl", "train", "--demos", str(PENDULUM_DEMOS), "--env-steps", str(env_steps), "--eval-every", "400",
            "--eval-episodes", "1", "--horizon", "5", "--n-rollouts", "1", "--seed", "5", "--variant", variant,
            "--config", str(cwd / "c.yaml"), "--no-progress"]


def test_sigkill_and_resume_reproduce_an_uninterrupted_run(tmp_path, placing_demos):
    base = _mbirl_command(tmp_path, placing_demos, "neural")
    assert _kill_resume_trial(tmp_path, base, kills=2, rng=random.Random(0), max_rows=100) == (0, 2)


@pytest.mark.slow  # the default suite is near its 10-minute limit
def test_sigkill_and_resume_mairl(tmp_path):
    base = _mairl_command(tmp_path, env_steps=1200)
    assert _kill_resume_trial(tmp_path, base, kills=1, rng=random.Random(1), max_rows=100) == (0, 1)


@pytest.mark.slow
def test_sigkill_and_resume_of_a_comparison(tmp_path, placing_demos):
    # the methods run one after the other, each in its own run directory: kills land in either, or between them
    methods = ("weighted", "neural", "abbeel")
    save_keypoint_demos(tmp_path / "d.npz", placing_demos)
    (tmp_path / "c.yaml").write_text("checkpoint_every: 4\n")
    base = ["mbirl", "compare", "--demos", "d.npz", "--costs", ",".join(methods), "--outer-iters", "30",
            "--config", "c.yaml", "--seed", "3", "--no-progress"]
    assert _kill_resume_trial(tmp_path, base, kills=4, rng=random.Random(5), max_rows=90, parts=methods,
                              spread=True) == (0, 4)


@pytest.mark.slow
@pytest.mark.parametrize("trial", range(4))
def test_sigkill_and_resume_many_random_points(tmp_path, placing_demos, trial):
    base = _mbirl_command(tmp_path, placing_demos, ["weighted", "rbf", "neural", "abbeel"][trial])
    assert _kill_resume_trial(tmp_path, base, kills=4, rng=random.Random(100 + trial), max_rows=100) == (0, 4)


@pytest.mark.slow
@pytest.mark.parametrize("variant", ["mairl", "mgail"])
def test_sigkill_and_resume_mairl_many_random_points(tmp_path, variant):
    base = _mairl_command(tmp_path, env_steps=2000, variant=variant)
    assert _kill_resume_trial(tmp_path, base, kills=3, rng=random.Random(7), max_rows=180) == (0, 3)


def test_non_finite_loss_stops_with_message_and_keeps_last_checkpoint(tmp_path, placing_demos, monkeypatch, capsys):
    save_keypoint_demos(tmp_path / "d.npz", placing_demos)
    original = MBIRL.outer_iteration

    def poisoned(self: MBIRL) -> float:
        if self.iteration == 4:
            with torch.no_grad():
                self.params[0].fill_(float("nan"))
        return original(self)

    monkeypatch.setattr(MBIRL, "outer_iteration", poisoned)
    run = tmp_path / "run"
    code = run_main(["mbirl", "train", "--demos", str(tmp_path / "d.npz"), "--cost", "timedep", "--outer-iters", "10",
                     "--checkpoint-every", "1", "--run-dir", str(run), "--no-progress"])
    assert code == 3
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "not finite at iteration 5" in err[0] and "Traceback" not in err[0]
    state = load_checkpoint(run / "checkpoints" / "last")
    assert state["iteration"] == 4
    assert torch.isfinite(state["learner"]["cost"]["weights"]).all()
    assert not (run / "metrics.json").exists()


def test_mairl_non_finite_parameter_stops_the_run(tmp_path, monkeypatch, capsys):
    from mbirl.algorithms.mairl import MAIRL

    original = MAIRL.train_model

    def poisoned(self: MAIRL, steps: int) -> float:
        out = original(self, steps)
        if self.iteration == 12:
            with torch.no_grad():
                next(self.model.parameters()).fill_(float("inf"))
        return out

    monkeypatch.setattr(MAIRL, "train_model", poisoned)
    base = _mairl_command(tmp_path, env_steps=1500)
    code = run_main([*base, "--run-dir", str(tmp_path / "run")])
    assert code == 3
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "model parameter" in err[0] and "iteration 13" in err[0]
    state = load_checkpoint(tmp_path / "run" / "checkpoints" / "last")  # the last good one
    assert not (tmp_path / "run" / "metrics.json").exists()

    def tensors(obj):
        if isinstance(obj, torch.Tensor):
            yield obj
        elif isinstance(obj, dict):
            for v in obj.values():
                yield from tensors(v)
        elif isinstance(obj, list):
            for v in obj:
                yield from tensors(v)

    floats = [t for t in tensors(state["trainer"]) if t.is_floating_point()]
    assert floats and all(torch.isfinite(t).all() for t in floats)


def test_grad_clipping_is_reported(tmp_path, placing_demos):
    from mbirl.experiments import MBIRLRunConfig, run_mbirl

    save_keypoint_demos(tmp_path / "d.npz", placing_demos)
    from mbirl.algorithms.mbirl import MBIRLConfig

    cfg = MBIRLRunConfig(demos=str(tmp_path / "d.npz"), method="weighted", outer_iters=4,
                         trainer=MBIRLConfig(grad_clip=1e-6))
    out = run_mbirl(cfg, tmp_path / "r", progress=False, figures=False)
    assert out["grad_clip"] == 1e-6 and out["grad_clipped_iterations"] == 4
    rows = [json.loads(x) for x in (tmp_path / "r" / "metrics.jsonl").read_text().splitlines()]
    assert [r.get("charts/grad_clipped") for r in rows[1:]] == [1.0] * 4
    assert all(r["charts/cost_grad_norm"] > 1e-6 for r in rows[1:])


@pytest.mark.slow  # the default suite is near its 10-minute limit
def test_mairl_same_seed_same_metrics(tmp_path):
    base = _mairl_command(tmp_path, env_steps=1200)
    for name in ("a", "b"):
        assert run_main([*base, "--run-dir", str(tmp_path / name)]) == 0
    a, b = _comparable(tmp_path / "a"), _comparable(tmp_path / "b")
    assert a == b and len(a[1]) > 10


@pytest.mark.parametrize("method", ["neural", "abbeel"])
def test_same_seed_same_metrics(tmp_path, placing_demos, method, capsys):
    save_keypoint_demos(tmp_path / "d.npz", placing_demos)
    for name in ("a", "b"):
        assert run_main(["mbirl", "train", "--demos", str(tmp_path / "d.npz"), "--cost", method, "--outer-iters", "5",
                         "--seed", "7", "--run-dir", str(tmp_path / name), "--no-progress"]) == 0
    a, b = _comparable(tmp_path / "a"), _comparable(tmp_path / "b")
    assert a == b
    assert np.isfinite(a[0]["final_test_irl_loss"])


def test_resume_accepts_runs_that_predate_a_new_config_field(tmp_path, placing_demos):
    from mbirl.algorithms.mbirl import MBIRLConfig
    from mbirl.experiments import MBIRLRunConfig, run_mbirl
    from mbirl.reporting.runs import checkpoint_stem

    save_keypoint_demos(tmp_path / "d.npz", placing_demos)
    cfg = MBIRLRunConfig(demos=str(tmp_path / "d.npz"), method="weighted", outer_iters=2)
    run_mbirl(cfg, tmp_path / "r", progress=False, figures=False)
    stem = checkpoint_stem(tmp_path / "r")
    state = load_checkpoint(stem)
    del state["config"]["trainer"]["grad_clip"]  # as if the run was made before the field existed (default None)
    save_checkpoint(stem, state)
    out = run_mbirl(replace(cfg, outer_iters=3),
                    tmp_path / "r", resume=True, progress=False, figures=False)
    assert len(out["irl_loss_train"]) == 4
    changed = replace(cfg, outer_iters=4, trainer=MBIRLConfig(grad_clip=1.0))
    with pytest.raises(InputError, match="grad_clip"):
        run_mbirl(changed, tmp_path / "r", resume=True, progress=False, figures=False)
