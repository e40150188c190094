"""Property-based malformed inputs (hypothesis): demo files, checkpoints and config files thrown at the
loaders and the CLI must give a clean InputError / exit code 2, a one-line message, and write nothing.

The default run uses a small number of examples per property; ``-m slow`` runs the full set
(1000 generated inputs: 200 for each of five properties)."""

from __future__ import annotations

import contextlib
import io
import os
import tempfile
import warnings
from pathlib import Path

import numpy as np
import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mbirl.cli import main
from mbirl.data import load_keypoint_demos
from mbirl.data.demos import KEYPOINT_FORMAT
from mbirl.errors import InputError
from mbirl.experiments import MBIRLRunConfig
from mbirl.reporting.checkpoint import load_checkpoint
from mbirl.validation import apply_overrides, config_to_dict, flatten_config, load_config

FAST = settings(max_examples=25, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True)
FULL = settings(max_examples=200, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True)

DTYPES = ["float32", "float64", "int32", "uint8", "bool", "complex64", "<U3", "float16"]
SPECIAL = [np.nan, np.inf, -np.inf, 1e39, -0.0, 0.0, 1.0]


@st.composite
def arrays(draw) -> np.ndarray:
    ndim = draw(st.integers(0, 5))
    shape = tuple(draw(st.lists(st.integers(0, 7), min_size=ndim, max_size=ndim)))
    dtype = draw(st.sampled_from(DTYPES))
    n = int(np.prod(shape)) if shape else 1
    if dtype == "<U3":
        return np.full(shape, "ab", dtype=dtype)
    values = draw(st.lists(st.sampled_from(SPECIAL) | st.floats(-1e3, 1e3), min_size=n, max_size=n))
    with np.errstate(all="ignore"):
        return np.asarray(values, dtype=np.float64).reshape(shape).astype(dtype)


@st.composite
def demo_payloads(draw) -> bytes:
    """Bytes of a (mostly) malformed demo file."""
    kind = draw(st.sampled_from(["npz", "npz", "npz", "truncated", "garbage", "empty"]))
    if kind == "garbage":
        return draw(st.binary(min_size=1, max_size=300))
    if kind == "empty":
        return b""
    keys = draw(st.lists(st.sampled_from(["start_q", "keypoints", "q", "images", "meta_json", "x", "format"]),
                         unique=True, max_size=6))
    content: dict[str, np.ndarray] = {}
    for key in keys:
        if key == "format":
            content[key] = np.asarray(draw(st.sampled_from([KEYPOINT_FORMAT, "other/v1", ""])))
        elif key == "meta_json":
            content[key] = np.asarray(draw(st.sampled_from(["{}", "[1, 2]", "{bad", "null"])))
        else:
            content[key] = draw(arrays())
    if draw(st.booleans()):  # near-valid: right keys and format, one field broken
        content.setdefault("format", np.asarray(KEYPOINT_FORMAT))
        content.setdefault("start_q", np.zeros((2, 7), np.float32))
        content.setdefault("keypoints", np.zeros((2, 10, 2, 3), np.float32))
    buf = io.BytesIO()
    np.savez(buf, **content)
    data = buf.getvalue()
    if kind == "truncated":
        data = data[: draw(st.integers(0, max(len(data) - 1, 0)))]
    return data


@st.composite
def trajectory_payloads(draw) -> bytes:
    """Bytes of a (mostly) malformed trajectory file, as ``mbirl mairl train --demos`` reads."""
    from mbirl.data.demos import TRAJECTORY_FORMAT

    if draw(st.integers(0, 4)) == 0:
        return draw(st.binary(min_size=1, max_size=200))
    content: dict[str, np.ndarray] = {"format": np.asarray(draw(st.sampled_from([TRAJECTORY_FORMAT, "x/v1"])))}
    for key in draw(st.lists(st.sampled_from(["lengths", "obs", "acts", "dones", "rews", "meta_json"]), unique=True,
                             max_size=6)):
        content[key] = (np.asarray(draw(st.sampled_from(['{"env_id": "Pendulum-v1"}', "{}", "[", "3"])))
                        if key == "meta_json" else draw(arrays()))
    buf = io.BytesIO()
    np.savez(buf, **content)
    data = buf.getvalue()
    if draw(st.booleans()):
        data = data[: draw(st.integers(0, len(data)))]
    return data


def _check_cli_trajectories(data: bytes) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "demos.npz"
        path.write_bytes(data)
        before = sorted(os.listdir(tmp))
        code, err = _run_cli(["mairl", "train", "--demos", str(path), "--run-dir", str(Path(tmp) / "run"),
                              "--env-steps", "2000", "--no-progress"])
        assert "Traceback" not in err
        assert code == 2, err
        assert len(err.strip().splitlines()) == 1 and err.startswith("mbirl: error:"), err
        assert sorted(os.listdir(tmp)) == before


names = st.text(st.characters(blacklist_categories=("Cs", "Cc"), blacklist_characters="/\\"), min_size=1,
                max_size=20).filter(lambda s: s not in (".", "..") and len(s.encode()) < 200)


def _run_cli(args: list[str]) -> tuple[int, str]:
    err = io.StringIO()
    code = 0
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        try:
            main(args)
        except SystemExit as exc:
            code = int(exc.code or 0)
    return code, err.getvalue()


def _check_loader(data: bytes, name: str) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / f"{name}.npz"
        path.write_bytes(data)
        try:
            demos = load_keypoint_demos(path)
        except InputError as exc:
            assert str(path) in str(exc) or "file" in str(exc)
            return
        # Loaded: then it really is a valid demo set.
        assert len(demos) >= 1 and np.isfinite(demos[0].keypoints).all()


def _check_cli(data: bytes, name: str) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / f"{name}.npz"
        path.write_bytes(data)
        before = sorted(os.listdir(tmp))
        code, err = _run_cli(["mbirl", "train", "--demos", str(path), "--run-dir", str(Path(tmp) / "run"),
                              "--outer-iters", "1", "--no-progress"])
        assert "Traceback" not in err
        if code == 0:  # a valid file by chance
            return
        assert code == 2, err
        lines = err.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("mbirl: error:"), err
        assert sorted(os.listdir(tmp)) == before  # nothing written


@st.composite
def yaml_configs(draw) -> str:
    kind = draw(st.sampled_from(["mapping", "mapping", "text", "list"]))
    if kind == "text":
        return draw(st.text(max_size=80))
    if kind == "list":
        return "- 1\n- 2\n"
    keys = draw(st.lists(st.sampled_from(["outer_iters", "inner_lr", "train", "seed", "method", "bogus", "demos",
                                          "grad_clip", "update", "inner_steps"]), unique=True, min_size=1,
                         max_size=4))
    values = st.one_of(st.integers(-10**12, 10**12), st.floats(allow_nan=True, allow_infinity=True),
                       st.text(max_size=8), st.booleans(), st.none(), st.lists(st.integers(-3, 9), max_size=3))
    lines = []
    for k in keys:
        v = draw(values)
        if isinstance(v, float) and not np.isfinite(v):
            text = {True: ".nan"}.get(bool(np.isnan(v)), ".inf" if v > 0 else "-.inf")
        elif isinstance(v, str):
            text = '"' + v.replace("\\", "\\\\").replace('"', '\\"') + '"'
        elif v is None:
            text = "null"
        elif isinstance(v, bool):
            text = str(v).lower()
        else:
            text = str(v)
        lines.append(f"{k}: {text}")
    return "\n".join(lines) + "\n"


def _check_config(text: str) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "c.yaml"
        path.write_text(text, encoding="utf-8")
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", FutureWarning)  # flat keys of the older layout
                overrides = load_config(path, MBIRLRunConfig)
        except InputError:
            overrides = None
        try:  # a config's own checks (e.g. a positive learning rate) refuse some well-typed values
            built = None if overrides is None else apply_overrides(MBIRLRunConfig(demos="d.npz"), overrides)
        except InputError:
            built = None
        if built is not None:  # what load_config accepts must land, typed, where the YAML put it
            raw = yaml.safe_load(text)
            flat = flatten_config(config_to_dict(built))
            for key, value in raw.items():
                landed = [v for k, v in flat.items() if k == key or k.endswith("." + key)]
                assert len(landed) == 1, (key, flat)
                want = list(value) if isinstance(value, list) else value
                assert landed[0] == want, (key, value, landed[0])
        before = sorted(os.listdir(tmp))
        code, err = _run_cli(["mbirl", "train", "--config", str(path), "--run-dir", str(Path(tmp) / "run"),
                              "--no-progress"])
        assert "Traceback" not in err
        assert code == 2, err
        assert len(err.strip().splitlines()) == 1
        assert sorted(os.listdir(tmp)) == before


def _check_checkpoint(payload: bytes, json_text: str) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / "last.json").write_text(json_text)
        (Path(tmp) / "last-0.safetensors").write_bytes(payload)
        with pytest.raises(InputError):
            load_checkpoint(Path(tmp) / "last")


checkpoint_json = st.sampled_from([
    "", "{", "[]", '{"format": "mbirl.checkpoint/v2"}',
    '{"format": "mbirl.checkpoint/v2", "state": {}, "tensors": "last-0.safetensors", "sha256": "00"}',
    '{"format": "mbirl.checkpoint/v2", "state": {"__tensor__": "x"}, "tensors": "/etc/passwd", "sha256": "1"}',
    '{"format": "mbirl.checkpoint/v1", "state": {}}', "[" * 5000,
])


@FAST
@given(demo_payloads(), names)
def test_demo_loader_fast(data, name):
    _check_loader(data, name)


@FAST
@given(demo_payloads(), names)
def test_cli_demo_files_fast(data, name):
    _check_cli(data, name)


@FAST
@given(yaml_configs())
def test_cli_config_files_fast(text):
    _check_config(text)


@FAST
@given(st.binary(max_size=200), checkpoint_json)
def test_checkpoint_loader_fast(payload, json_text):
    _check_checkpoint(payload, json_text)


@FAST
@given(trajectory_payloads())
def test_cli_trajectory_files_fast(data):
    _check_cli_trajectories(data)


@pytest.mark.slow
@FULL
@given(trajectory_payloads())
def test_cli_trajectory_files_full(data):
    _check_cli_trajectories(data)


@pytest.mark.slow
@FULL
@given(demo_payloads(), names)
def test_demo_loader_full(data, name):
    _check_loader(data, name)


@pytest.mark.slow
@FULL
@given(demo_payloads(), names)
def test_cli_demo_files_full(data, name):
    _check_cli(data, name)


@pytest.mark.slow
@FULL
@given(yaml_configs())
def test_cli_config_files_full(text):
    _check_config(text)


@pytest.mark.slow
@FULL
@given(st.binary(max_size=200), checkpoint_json)
def test_checkpoint_loader_full(payload, json_text):
    _check_checkpoint(payload, json_text)
