"""Hostile inputs (hypothesis), per command family: trajectory files, keypoint files, ``.pt`` files, visual data
files, checkpoints of every trainer (of finished runs; and unfinished runs resumed with edited optimiser states,
which only a run that trains on reads), YAML configs and run-directory JSON files, each thrown at the command that
reads it. Every case must end in exit 0 or a one-line error with exit 2 (3 for numerical failure), never a
traceback; a refused input leaves its directory as it was (no partial outputs); no module named in a file is
imported; and the process's peak RSS stays under 2 GB (headers declaring huge arrays, alias bombs and deep nesting
are among the cases).

The default run takes a few examples per family; ``-m slow`` runs 200 per family (``FULL``)."""

from __future__ import annotations

import collections
import contextlib
import hashlib
import io
import json
import resource
import shutil
import sys
import tempfile
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mbirl.cli import main
from mbirl.data.demos import KEYPOINT_FORMAT

FAST = settings(max_examples=4, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True)
FULL = settings(max_examples=200, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True)

ROOT = Path(__file__).resolve().parents[1]
PENDULUM = ROOT / "data" / "demos" / "Pendulum-v1.npz"
PROBE = "mbirl_fuzz_probe"
"""A module that must never be imported: env ids in the generated files name it (``mbirl_fuzz_probe:Env``)."""
MAX_RSS_BYTES = 2 * 1024**3
TINY_MAIRL = "trainer:\n  warmup_steps: 100\n  model_pretrain_steps: 5\n  batch_size: 32\n  model_steps: 1\n"


@pytest.fixture(scope="module", autouse=True)
def probe_module(tmp_path_factory):
    """Put the probe module on sys.path (so an import would succeed and be seen); check it was never imported."""
    where = tmp_path_factory.mktemp("probe")
    (where / f"{PROBE}.py").write_text("raise SystemExit('mbirl_fuzz_probe imported')\n")
    sys.path.insert(0, str(where))
    yield
    sys.path.remove(str(where))
    assert PROBE not in sys.modules


def peak_rss() -> int:
    """Peak resident set size of this process so far, in bytes (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def run_cli(args: list) -> tuple[int, str]:
    err = io.StringIO()
    code = 0
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        try:
            main([str(a) for a in args])
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else 1
    return code, err.getvalue()


def snapshot(root: Path) -> dict[str, str]:
    """Every file below ``root`` (but lock files) and its content hash."""
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file() and p.name != ".lock"}


def check_case(args: list, root: Path, allowed: tuple[int, ...] = (0, 2, 3)) -> int:
    """Run one hostile case: no traceback, an allowed exit code, one line on failure, nothing written on refusal,
    no probe import, bounded memory."""
    before = snapshot(root)
    code, err = run_cli(args)
    assert "Traceback" not in err, err
    assert code in allowed, (code, err)
    if code != 0:
        lines = err.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("mbirl: error:") and len(lines[0]) < 800, err
    if code == 2:
        assert snapshot(root) == before, "a refused input left outputs behind"
    assert PROBE not in sys.modules
    assert peak_rss() < MAX_RSS_BYTES, peak_rss()
    return code


# ------------------------------------------------------------------------------------ hostile npz building


def npy_header_only(shape: tuple[int, ...], dtype: str = "<f4") -> bytes:
    buf = io.BytesIO()
    np.lib.format.write_array_header_1_0(buf, {"descr": dtype, "fortran_order": False, "shape": shape})
    return buf.getvalue() + b"\0" * 32


def npz_bytes(arrays: dict[str, np.ndarray], raw: dict[str, bytes] | None = None) -> bytes:
    """An ``.npz`` of ``arrays`` plus members given as raw ``.npy`` bytes (e.g. lying headers)."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        for key, value in arrays.items():
            member = io.BytesIO()
            np.lib.format.write_array(member, np.asanyarray(value), allow_pickle=False)
            zf.writestr(f"{key}.npy", member.getvalue())
        for key, data in (raw or {}).items():
            zf.writestr(f"{key}.npy", data)
    return buf.getvalue()


HUGE_SHAPES = [(2**40,), (10**6, 10**6), (50 * 1024**3 // 4,), (2**62,), (0,), (3, 0, 5)]
META_VALUES = st.one_of(
    st.sampled_from([f"{PROBE}:Pendulum-v1", "Pendulum-v1", "CartPole-v1", "Nope-v9", "", "gymnasium.envs:Foo",
                     f"{PROBE}.x:Y"]),
    st.floats(allow_nan=True, allow_infinity=True), st.integers(-10**30, 10**30), st.none(), st.booleans(),
    st.lists(st.integers(), max_size=3), st.text(max_size=12), st.just({"a": [1, {"b": None}]}))


@st.composite
def meta_texts(draw, base: dict) -> str:
    kind = draw(st.sampled_from(["edit", "edit", "edit", "deep", "garbage", "nan"]))
    if kind == "deep":
        depth = draw(st.sampled_from([70, 1000, 100_000]))
        return '{"env_id": ' + "[" * depth + "]" * depth + "}"
    if kind == "garbage":
        return draw(st.sampled_from(["", "[]", "null", "{", '"x"', "1e999", "{" * 50]))
    meta = dict(base)
    for key in draw(st.lists(st.sampled_from(["env_id", "expert_mean_return", "random_mean_return", "n", "extra"]),
                             max_size=3, unique=True)):
        if draw(st.booleans()) and key in meta:
            del meta[key]
        else:
            meta[key] = draw(META_VALUES)
    if kind == "nan":
        meta[draw(st.sampled_from(["expert_mean_return", "random_mean_return"]))] = float("nan")
    return json.dumps(meta)


def _pendulum() -> tuple[dict[str, np.ndarray], dict]:
    with np.load(PENDULUM) as data:
        arrays = {k: data[k] for k in data.files}
    return arrays, json.loads(str(arrays["meta_json"]))


@st.composite
def hostile_trajectory_files(draw) -> bytes:
    """A Pendulum demo file with one or two hostile changes."""
    arrays, meta = _pendulum()
    raw: dict[str, bytes] = {}
    for change in draw(st.lists(st.sampled_from(["bomb", "unknown", "meta", "acts", "obs", "lengths", "dtype",
                                                 "format", "drop"]), min_size=1, max_size=2)):
        if change == "bomb":
            key = draw(st.sampled_from(["obs", "acts", "rews", "meta_json", "format"]))
            arrays.pop(key, None)
            raw[key] = npy_header_only(draw(st.sampled_from(HUGE_SHAPES)),
                                       draw(st.sampled_from(["<f4", "<f8", "|u1", "<U100"])))
        elif change == "unknown":
            name = draw(st.sampled_from(["junk", "x", "obs2"]))
            if draw(st.booleans()):
                raw[name] = npy_header_only(draw(st.sampled_from(HUGE_SHAPES)))
            else:
                arrays[name] = np.zeros(draw(st.integers(1, 1000)))
        elif change == "meta":
            arrays["meta_json"] = np.asarray(draw(meta_texts(meta)))
        elif change == "acts":
            scale = draw(st.sampled_from([1e6, -3.0, np.nan, np.inf, 1.0]))
            with np.errstate(all="ignore"):
                acts = arrays["acts"] * scale
            arrays["acts"] = acts.astype(draw(st.sampled_from(["float32", "int64", "float16", "bool"])))
        elif change == "obs":
            obs = arrays["obs"].copy()
            obs[draw(st.integers(0, len(obs) - 1))] = draw(st.sampled_from([np.nan, np.inf, 1e30, 0.0]))
            arrays["obs"] = obs[:, : draw(st.integers(1, 3))]
        elif change == "lengths":
            arrays["lengths"] = np.asarray(draw(st.lists(st.integers(-5, 5000), min_size=1, max_size=4)))
        elif change == "dtype":
            key = draw(st.sampled_from(["obs", "acts", "dones", "lengths"]))
            arrays[key] = np.full(arrays[key].shape, "ab")
        elif change == "format":
            arrays["format"] = np.asarray(draw(st.sampled_from(["", "x" * 5000, KEYPOINT_FORMAT])))
        elif change == "drop":
            arrays.pop(draw(st.sampled_from(sorted(arrays))), None)
    data = npz_bytes(arrays, raw)
    if draw(st.integers(0, 9)) == 0:
        data = data[: draw(st.integers(0, len(data)))]
    return data


def _trajectory_case(data: bytes) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        (root / "d.npz").write_bytes(data)
        (root / "c.yaml").write_text(TINY_MAIRL)
        check_case(["mairl", "train", "--demos", root / "d.npz", "--env-steps", "150", "--eval-every", "200",
                    "--eval-episodes", "1", "--horizon", "5", "--n-rollouts", "1", "--dynamics", "mlp", "--config",
                    root / "c.yaml", "--run-dir", root / "run", "--no-progress"], root)


@st.composite
def hostile_keypoint_files(draw) -> bytes:
    rng = np.random.default_rng(draw(st.integers(0, 100)))
    n, t, k = 3, 6, 2
    arrays: dict[str, np.ndarray] = {
        "format": np.asarray(KEYPOINT_FORMAT), "meta_json": np.asarray("{}"),
        "start_q": rng.normal(0, 0.3, (n, 7)).astype(np.float32),
        "keypoints": rng.normal(0, 30, (n, t, k, 3)).astype(np.float32)}
    raw: dict[str, bytes] = {}
    change = draw(st.sampled_from(["bomb", "unknown", "meta", "start", "shape", "nan", "images", "none"]))
    if change == "bomb":
        key = draw(st.sampled_from(["start_q", "keypoints", "q", "images", "depth"]))
        arrays.pop(key, None)
        raw[key] = npy_header_only(draw(st.sampled_from(HUGE_SHAPES)), draw(st.sampled_from(["<f4", "|u1"])))
    elif change == "unknown":
        arrays[draw(st.sampled_from(["junk", "extra"]))] = np.zeros((draw(st.integers(1, 5)), 1000), np.float32)
    elif change == "meta":
        arrays["meta_json"] = np.asarray(draw(meta_texts({})))
    elif change == "start":
        arrays["start_q"] = arrays["start_q"] * draw(st.sampled_from([1e3, 50.0, -1e9]))
    elif change == "shape":
        arrays["keypoints"] = arrays["keypoints"][..., : draw(st.integers(1, 2))]
    elif change == "nan":
        arrays["keypoints"][0, 0, 0, 0] = np.nan
    elif change == "images":
        arrays["images"] = np.zeros((n, t, draw(st.sampled_from([2, 8])), 8, draw(st.sampled_from([1, 3]))),
                                    draw(st.sampled_from(["uint8", "float32"])))
    return npz_bytes(arrays, raw)


def _keypoint_case(data: bytes) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        (root / "d.npz").write_bytes(data)
        check_case(["mbirl", "train", "--demos", root / "d.npz", "--outer-iters", "1", "--train", "0:2",
                    "--test", "2:3", "--run-dir", root / "run", "--no-progress"], root)


def pt_declaring(data: bytes, member: str, size: int) -> bytes:
    """A torch archive whose zip directory declares ``size`` uncompressed bytes for ``member`` (its data unchanged:
    what a deflated bomb declares)."""
    out = bytearray(data)
    at = out.find(b"PK\x01\x02")
    while at >= 0:  # central directory entries: uncompressed size at +24, name length at +28, name at +46
        name = bytes(out[at + 46: at + 46 + int.from_bytes(out[at + 28: at + 30], "little")]).decode()
        if name.endswith(member):
            out[at + 24: at + 28] = size.to_bytes(4, "little")
        at = out.find(b"PK\x01\x02", at + 1)
    return bytes(out)


def pt_with_member(data: bytes, name: str, content: bytes) -> bytes:
    """A torch archive with one more member (beside its own, under the same prefix)."""
    buf = io.BytesIO(data)
    with zipfile.ZipFile(buf, "a") as zf:
        prefix = zf.namelist()[0].split("/")[0]
        zf.writestr(f"{prefix}/{name}", content)
    return buf.getvalue()


@st.composite
def hostile_pt_files(draw) -> bytes:
    kind = draw(st.sampled_from(["entries", "entries", "entries", "other", "bytes", "declared", "view", "member",
                                 "legacy"]))
    if kind == "bytes":
        return draw(st.binary(max_size=300))
    good = [{"start_joint_config": torch.zeros(1, 7), "desired_keypoints": torch.zeros(5, 2, 3)}]
    buf = io.BytesIO()
    if kind == "declared":  # a record (or the pickle) whose zip entry declares far more than it holds
        torch.save(good, buf)
        return pt_declaring(buf.getvalue(), draw(st.sampled_from(["data/0", "data/1", "data.pkl", "version"])),
                            draw(st.sampled_from([2**31 - 1, 2**32 - 1, 300 * 1024**2])))
    if kind == "view":  # a few bytes of storage, a tensor that declares hundreds of MB to GBs over it
        n = draw(st.sampled_from([12_000_000, 10**9, 2**40]))
        key = draw(st.sampled_from(["start_joint_config", "desired_keypoints"]))
        torch.save([{**good[0], key: torch.zeros(1, 1, 1).expand(n, 2, 3)}], buf)
        return buf.getvalue()
    if kind == "member":
        torch.save(good, buf)
        return pt_with_member(buf.getvalue(), draw(st.sampled_from(["data/x", "extra.pkl", "data/9", "../x"])),
                              draw(st.sampled_from([b"", b"\0" * 5000])))
    if kind == "legacy":  # torch < 1.6's format: pickles and storages in one stream
        huge = torch.zeros(1, 1, 1).expand(10**9, 2, 3)
        obj = draw(st.sampled_from([good, [{**good[0], "desired_keypoints": huge}]]))
        torch.save(obj, buf, _use_new_zipfile_serialization=False)
        data = buf.getvalue()
        return data[: draw(st.sampled_from([len(data), len(data) - 100, 40]))]
    if kind == "other":
        obj = draw(st.sampled_from([[], {}, "abc", 3, [1, 2], {"start_joint_config": 1}, [None], [[{}]]]))
    else:
        values = st.one_of(
            st.sampled_from(["abc", None, 3, [1, 2], {"a": 1}, [[1.0] * 7], [["x"]]]),
            st.builds(lambda s: torch.zeros(s), st.lists(st.integers(0, 4), max_size=4).map(tuple)),
            st.builds(lambda s: torch.full(s, float("nan")), st.lists(st.integers(1, 4), max_size=3).map(tuple)),
            st.just(torch.zeros(1, 7)), st.just(torch.zeros(5, 2, 3)), st.just(torch.zeros(5, 2, 3, dtype=torch.int8)))
        obj = [{"start_joint_config": draw(values), "desired_keypoints": draw(values)}
               for _ in range(draw(st.integers(1, 3)))]
        if draw(st.booleans()):
            obj[0].pop(draw(st.sampled_from(["start_joint_config", "desired_keypoints"])))
    torch.save(obj, buf)
    return buf.getvalue()


def _pt_case(data: bytes) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        (root / "d.pt").write_bytes(data)
        check_case(["mbirl", "train", "--demos", root / "d.pt", "--outer-iters", "1", "--train", "0:1",
                    "--test", "0:1", "--run-dir", root / "run", "--no-progress"], root)


@st.composite
def hostile_visual_files(draw) -> bytes:
    from mbirl.data.visual import EXPLORATION_FORMAT
    from mbirl.envs.kuka import default_kuka
    from mbirl.envs.render import Camera

    n, t1, size = 4, 3, 16
    camera = Camera(width=size, height=size).to_meta()
    meta: dict = {"camera": camera, "robot": default_kuka().describe()}
    arrays = {"q": np.zeros((n, t1, 7), np.float32), "actions": np.zeros((n, t1 - 1, 7), np.float32),
              "images": np.zeros((n, t1, size, size, 3), np.uint8), "depth": np.ones((n, t1, size, size), np.float16),
              "keypoints": np.zeros((n, t1, 2, 3), np.float32)}
    raw: dict[str, bytes] = {}
    change = draw(st.sampled_from(["camera", "camera", "robot", "bomb", "joints", "unknown", "meta", "depth"]))
    if change == "camera":
        field = draw(st.sampled_from(["width", "eye", "target", "scale", "fov", "near", "up"]))
        camera[field] = draw(st.sampled_from([0, -1, 10**9, float("nan"), "x", [0, 0, 0], camera["eye"], None]))
    elif change == "robot":
        meta["robot"] = draw(st.sampled_from([None, {}, "kuka", {"urdf": "/etc/passwd"}, [1]]))
    elif change == "bomb":
        key = draw(st.sampled_from(sorted(arrays)))
        arrays.pop(key)
        raw[key] = npy_header_only(draw(st.sampled_from(HUGE_SHAPES)), "|u1")
    elif change == "joints":
        arrays["q"] = np.zeros((n, t1, 5), np.float32)
        arrays["actions"] = np.zeros((n, t1 - 1, 5), np.float32)
    elif change == "unknown":
        arrays["junk"] = np.zeros(10)
    elif change == "meta":
        return npz_bytes({"format": np.asarray(EXPLORATION_FORMAT), "meta_json": np.asarray(draw(meta_texts({}))),
                          **arrays})
    elif change == "depth":
        arrays["depth"] = np.full((n, t1, size, size), draw(st.sampled_from([np.nan, np.inf, -1.0])), np.float16)
    return npz_bytes({"format": np.asarray(EXPLORATION_FORMAT), "meta_json": np.asarray(json.dumps(meta)), **arrays},
                     raw)


def _visual_case(data: bytes) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        (root / "e.npz").write_bytes(data)
        check_case(["visual", "train-detector", "--data", root / "e.npz", "--steps", "1", "--batch-size", "2",
                    "--keypoints", "2", "--width", "4", "--run-dir", root / "run", "--no-progress"], root)
        check_case(["visual", "train-dynamics", "--data", root / "e.npz", "--detector", root / "none",
                    "--run-dir", root / "run2", "--no-progress"], root)


# ------------------------------------------------------------------------------------ checkpoints


def _tiny_run(kind: str, root: Path) -> list:
    """The command of a tiny finished run of trainer ``kind`` (its run directory is ``root / 'run'``)."""
    (root / "c.yaml").write_text(TINY_MAIRL)
    if kind == "mairl":
        return ["mairl", "train", "--demos", PENDULUM, "--env-steps", "150", "--eval-every", "200",
                "--eval-episodes", "1", "--horizon", "5", "--n-rollouts", "1", "--dynamics", "mlp", "--config",
                root / "c.yaml", "--run-dir", root / "run", "--no-progress"]
    if kind == "bc":
        (root / "bc.yaml").write_text("bc:\n  max_epochs: 2\n")
        return ["il", "train", "--algo", "bc", "--demos", PENDULUM, "--eval-episodes", "1", "--config",
                root / "bc.yaml", "--run-dir", root / "run", "--no-progress"]
    if kind == "dac":
        (root / "dac.yaml").write_text("dac:\n  learning_starts: 50\n  batch_size: 16\n  net_arch: [16, 16]\n"
                                       "  disc_hidden: [16, 16]\n  iteration_steps: 50\n")
        return ["il", "train", "--algo", "dac", "--demos", PENDULUM, "--env-steps", "150", "--eval-every", "150",
                "--eval-episodes", "1", "--config", root / "dac.yaml", "--run-dir", root / "run", "--no-progress"]
    if kind in ("gail", "airl"):
        (root / "ppo.yaml").write_text("ppo:\n  n_envs: 1\n  n_steps: 32\n  batch_size: 32\n  n_epochs: 1\n"
                                       "  demo_batch_size: 32\n  disc_updates: 1\n")
        return ["il", "train", "--algo", kind, "--demos", PENDULUM, "--env-steps", "96", "--eval-every", "96",
                "--eval-episodes", "1", "--config", root / "ppo.yaml", "--run-dir", root / "run", "--no-progress"]
    if kind == "expert":
        return ["expert", "train", "--env", "Pendulum-v1", "--algo", "sac", "--steps", "120", "--eval-every", "60",
                "--out", root / "run", "--no-progress"]
    if kind in VISUAL:
        # the detector stage trains into run/ (or det/ for the dynamics stage, which trains into run/ on it)
        assert run_cli(["visual", "explore", "--n", "6", "--horizon", "3", "--resolution", "16", "--out",
                        root / "explore.npz", "--no-progress"])[0] == 0
        (root / "det.yaml").write_text("checkpoint_every: 4\ncalibration_frames: 8\n")
        detector = ["visual", "train-detector", "--data", root / "explore.npz", "--keypoints", "3", "--width", "4",
                    "--steps", "10", "--batch-size", "4", "--config", root / "det.yaml", "--no-progress"]
        if kind == "detector":
            return [*detector, "--run-dir", root / "run"]
        assert run_cli([*detector, "--run-dir", root / "det"])[0] == 0
        (root / "dyn.yaml").write_text("checkpoint_every: 4\neval_horizon: 2\n")
        assert run_cli(["visual", "demos", "--n", "3", "--horizon", "4", "--resolution", "16", "--out",
                        root / "demos.npz"])[0] == 0
        return ["visual", "train-dynamics", "--data", root / "explore.npz", "--detector", root / "det", "--hidden",
                "8", "--layers", "1", "--steps", "10", "--config", root / "dyn.yaml", "--run-dir", root / "run",
                "--no-progress"]
    return ["mbirl", "train", "--demos", root / "kp.npz", "--outer-iters", "3", "--checkpoint-every", "1",
            "--cost", kind, "--run-dir", root / "run", "--no-progress"]


VISUAL = ("detector", "dynamics")
"""The visual pipeline's training stages (keypoint detector, keypoint dynamics)."""
CHECKPOINTED = ("mairl", "bc", "dac", "gail", "airl", "expert", "neural", "weighted", *VISUAL)
"""The trainers whose checkpoints the fuzz suite edits (MBIRL through two of its costs). The visual stages' edits
reach their training checkpoint (``--resume``) or the trained detector / model that the next stage reads."""


@pytest.fixture(scope="module")
def finished_runs(tmp_path_factory, placing_demos) -> dict[str, tuple[Path, list]]:
    from mbirl.data import save_keypoint_demos

    out = {}
    for kind in CHECKPOINTED:
        root = tmp_path_factory.mktemp(kind)
        save_keypoint_demos(root / "kp.npz", placing_demos)
        args = _tiny_run(kind, root)
        code, err = run_cli(args)
        assert code == 0, err
        out[kind] = (root, args)
    return out


LEAVES = st.one_of(st.sampled_from(["abc", None, [], {}, [1, "x"], True, -1, 10**30, 1.5, float("nan")]),
                   st.just({"__tensor__": "s.nope"}), st.just({"__dict__": [[1]]}), st.just("[" * 50))


@st.composite
def checkpoint_edits(draw) -> tuple[str, int, object, str, bool]:
    """(trainer, which node of its checkpoint skeleton, replacement, how, whether a visual stage's trained
    detector / model is edited rather than its training checkpoint)."""
    return (draw(st.sampled_from(CHECKPOINTED)), draw(st.integers(0, 10**6)),
            draw(LEAVES), draw(st.sampled_from(["replace", "replace", "delete", "deep", "swap-tensor"])),
            draw(st.booleans()))


def _nodes(tree: object, path: tuple = ()) -> list[tuple]:
    out = [path]
    if isinstance(tree, dict):
        for k, v in tree.items():
            out += _nodes(v, (*path, k))
    elif isinstance(tree, list):
        for i, v in enumerate(tree):
            out += _nodes(v, (*path, i))
    return out


def _visual_reader(kind: str, root: Path) -> tuple[Path, list]:
    """The file a visual stage's next stage reads (its trained detector / model) and that stage's command."""
    if kind == "detector":
        return root / "run" / "detector.json", [
            "visual", "train-dynamics", "--data", root / "explore.npz", "--detector", root / "run", "--hidden", "8",
            "--layers", "1", "--steps", "2", "--run-dir", root / "next", "--no-progress"]
    return root / "run" / "model.json", [
        "visual", "irl", "--demos", root / "demos.npz", "--detector", root / "det", "--dynamics", root / "run",
        "--costs", "weighted", "--headline", "weighted", "--train", "0:2", "--test", "2:3", "--outer-iters", "1",
        "--run-dir", root / "next", "--no-progress"]


def _checkpoint_case(finished_runs, edit: tuple[str, int, object, str, bool]) -> None:
    kind, index, value, how, artefact = edit
    src, args = finished_runs[kind]
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        shutil.copytree(src, root, dirs_exist_ok=True, ignore=shutil.ignore_patterns(".lock"))
        # the copy of the run directory; its inputs stay where the run recorded them (--resume checks that)
        args = [root / "run" if a == src / "run" else a for a in args]
        ck = root / "run" / "checkpoints" / "last.json"
        if kind in VISUAL and artefact:
            ck, args = _visual_reader(kind, root)
        else:
            args = [*args, "--resume"]
        meta = json.loads(ck.read_text())
        nodes = [p for p in _nodes(meta["state"]) if p]
        path = nodes[index % len(nodes)]
        parent = meta["state"]
        for part in path[:-1]:
            parent = parent[part]
        if how == "delete" and isinstance(parent, dict):
            del parent[path[-1]]
        elif how == "deep":
            parent[path[-1]] = json.loads("[" * 200 + "]" * 200)
        elif how == "swap-tensor":
            tensors = [p for p in nodes if p[-1] == "__tensor__"]
            other = meta["state"]
            for part in tensors[(index // 7) % len(tensors)]:
                other = other[part]
            parent[path[-1]] = {"__tensor__": other} if isinstance(other, str) else value
        else:
            parent[path[-1]] = value
        ck.write_text(json.dumps(meta))
        (root / "run" / "metrics.json").unlink(missing_ok=True)
        check_case(args, root)
        if kind in ("mairl", "bc", "dac", "gail", "airl"):
            check_case(["mairl", "eval", "--run-dir", root / "run", "--episodes", "1", "--out", root / "eval.json"],
                       root)


# ------------------------------------------------------------------------------------ optimiser states of stopped runs


STOPPED = ("mairl", "bc", "dac", "gail", "airl", "weighted", "neural", "expert")
"""The trainers whose *unfinished* runs the optimiser-state family resumes (MBIRL through two of its costs; the expert
is SB3's PPO): a resumed unfinished run loads its optimisers' states and steps them, which a finished one never
does."""


def _stopped_run(kind: str, root: Path) -> list:
    """The command of a tiny run of trainer ``kind`` long enough to be stopped after its third checkpoint, when every
    optimiser has stepped (its run directory is ``root / 'run'``)."""
    args = _tiny_run("weighted" if kind == "expert" else kind, root)

    def setopt(name: str, value: str) -> None:
        args[args.index(name) + 1] = value

    if kind == "mairl":
        setopt("--env-steps", "600")
        setopt("--eval-every", "100")
    elif kind == "bc":
        (root / "bc.yaml").write_text("bc:\n  max_epochs: 8\n  patience: 100\ncheckpoint_every: 1\n")
    elif kind == "dac":
        (root / "dac.yaml").write_text((root / "dac.yaml").read_text() + "checkpoint_every: 1\n")
        setopt("--env-steps", "600")
        setopt("--eval-every", "600")
    elif kind in ("gail", "airl"):
        (root / "ppo.yaml").write_text((root / "ppo.yaml").read_text() + "checkpoint_every: 1\n")
        setopt("--env-steps", "320")
        setopt("--eval-every", "320")
    elif kind == "expert":
        args = ["expert", "train", "--env", "CartPole-v1", "--steps", "1024", "--eval-every", "256", "--out",
                root / "run", "--no-progress"]
    else:
        setopt("--outer-iters", "6")
    return args


def _stop_after_saves(args: list, saves: int) -> tuple[int, str]:
    """Run ``args``, interrupted (SIGINT, as the CLI sees it) right after its ``saves``-th checkpoint."""
    import signal

    from mbirl.interrupts import Interrupted
    from mbirl.reporting.runs import RunDir

    original, count = RunDir.save, [0]

    def save(self, state):
        original(self, state)
        count[0] += 1
        if count[0] == saves:
            raise Interrupted(signal.SIGINT)

    RunDir.save = save
    try:
        return run_cli(args)
    finally:
        RunDir.save = original


def _optimizer_states(tree: object) -> list[tuple[object, object]]:
    """(container, key) of every optimiser state (a mapping of exactly 'state' and 'param_groups') in a loaded
    checkpoint."""
    out: list[tuple[object, object]] = []
    items = tree.items() if isinstance(tree, dict) else enumerate(tree) if isinstance(tree, list) else ()
    for key, value in items:
        if isinstance(value, dict) and set(value) == {"state", "param_groups"}:
            out.append((tree, key))
        else:
            out += _optimizer_states(value)
    return out


@pytest.fixture(scope="module")
def stopped_runs(tmp_path_factory, placing_demos) -> dict[str, tuple[Path, list]]:
    """Per trainer, a run stopped by an interrupt after its third checkpoint (every optimiser with moments), and
    its ``--resume`` command; an unedited copy of it resumes to the end."""
    from mbirl.data import save_keypoint_demos
    from mbirl.reporting.checkpoint import load_checkpoint

    out = {}
    for kind in STOPPED:
        root = tmp_path_factory.mktemp(f"stopped-{kind}")
        save_keypoint_demos(root / "kp.npz", placing_demos)
        args = _stopped_run(kind, root)
        code, err = _stop_after_saves(args, 3)
        assert code == 130 and "--resume" in err, (kind, code, err)
        state = load_checkpoint(root / "run" / "checkpoints" / "last")
        found = _optimizer_states(state)
        assert found and all(parent[key]["state"] for parent, key in found), (kind, "an optimiser without moments")
        assert not (root / "run" / "metrics.json").exists()
        resumed = [*args, "--resume"]
        with tempfile.TemporaryDirectory() as tmp:
            shutil.copytree(root, tmp, dirs_exist_ok=True, ignore=shutil.ignore_patterns(".lock"))
            code, err = run_cli([Path(tmp) / "run" if a == root / "run" else a for a in resumed])
            assert code == 0 and (Path(tmp) / "run" / "metrics.json").is_file(), (kind, err)
        out[kind] = (root, resumed)
    return out


OPTIMIZER_EDITS = ("shape", "flat", "string", "nan-step", "float-step", "negative-step", "fraction-step",
                   "maximize", "no-groups", "two-groups", "nan-moment", "negative-second-moment", "int-moment",
                   "double-moment", "drop-moment", "extra-moment", "unknown-param", "bad-params", "state-list",
                   "betas", "lr-string", "swap", "sgd", "not-a-state")


@st.composite
def optimizer_edits(draw) -> tuple[str, str, int, int]:
    """(trainer, edit, which optimiser of its checkpoint, which parameter's entry / group)."""
    return (draw(st.sampled_from(STOPPED)), draw(st.sampled_from(OPTIMIZER_EDITS)), draw(st.integers(0, 10**6)),
            draw(st.integers(0, 10**6)))


def _cloned(tree: object) -> object:
    """A copy of a loaded checkpoint's subtree sharing no tensor (safetensors refuses shared storage)."""
    if isinstance(tree, dict):
        return {k: _cloned(v) for k, v in tree.items()}
    if isinstance(tree, list):
        return [_cloned(v) for v in tree]
    return tree.clone() if isinstance(tree, torch.Tensor) else tree


def _edit_optimizer(state: dict, edit: str, which: int, index: int) -> None:
    """Apply ``edit`` to one optimiser state of a loaded checkpoint (in place)."""
    found = _optimizer_states(state)
    parent, key = found[which % len(found)]
    opt = parent[key]
    entries = list(opt["state"].values())
    entry = entries[index % len(entries)]
    group = opt["param_groups"][index % len(opt["param_groups"])]
    moment = entry["exp_avg"]
    nan = float("nan")
    if edit == "shape":
        entry["exp_avg"] = torch.zeros(*moment.shape, 2)
    elif edit == "flat":
        entry["exp_avg_sq"] = torch.zeros(moment.numel() + 1)
    elif edit == "string":
        entry[("exp_avg", "exp_avg_sq", "step")[index % 3]] = "abc"
    elif edit == "nan-step":
        entry["step"] = torch.tensor(nan)
    elif edit == "float-step":
        entry["step"] = nan
    elif edit == "negative-step":
        entry["step"] = torch.tensor(-3.0)
    elif edit == "fraction-step":
        entry["step"] = entry["step"] + 0.5
    elif edit == "maximize":
        group["maximize"] = True
    elif edit == "no-groups":
        opt["param_groups"] = []
    elif edit == "two-groups":
        opt["param_groups"] = [group, dict(group)]
    elif edit == "nan-moment":
        entry["exp_avg"] = torch.full_like(moment, nan)
    elif edit == "negative-second-moment":
        entry["exp_avg_sq"] = -1.0 - entry["exp_avg_sq"]
    elif edit == "int-moment":
        entry["exp_avg"] = moment.to(torch.int64)
    elif edit == "double-moment":
        entry["exp_avg"] = moment.double()
    elif edit == "drop-moment":
        del entry["exp_avg_sq"]
    elif edit == "extra-moment":
        entry["max_exp_avg_sq"] = entry["exp_avg_sq"].clone()  # AMSGrad's, for an optimiser without it
    elif edit == "unknown-param":
        opt["state"][10**6] = _cloned(entry)
    elif edit == "bad-params":
        group["params"] = [*group["params"], max(group["params"]) + 1]
    elif edit == "state-list":
        opt["state"] = entries
    elif edit == "betas":
        group["betas"] = [0.5, 0.5]
    elif edit == "lr-string":
        group["lr"] = "abc"
    elif edit == "swap" and len(found) > 1:  # another optimiser's state in its place
        other_parent, other_key = found[(which + 1 + index % (len(found) - 1)) % len(found)]
        parent[key] = _cloned(other_parent[other_key])
    elif edit == "sgd":
        entries[index % len(entries)].clear()
        entries[index % len(entries)]["momentum_buffer"] = moment.clone()
    else:  # "not-a-state" (and "swap" where there is one optimiser)
        parent[key] = {"state": {}, "param_groups": "abc"} if index % 2 else [1, 2]


def _optimizer_case(stopped_runs, case: tuple[str, str, int, int]) -> None:
    from mbirl.reporting.checkpoint import load_checkpoint, save_checkpoint
    from mbirl.reporting.runs import checkpoint_stem

    kind, edit, which, index = case
    src, args = stopped_runs[kind]
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        shutil.copytree(src, root, dirs_exist_ok=True, ignore=shutil.ignore_patterns(".lock"))
        args = [root / "run" if a == src / "run" else a for a in args]
        stem = checkpoint_stem(root / "run")
        state = load_checkpoint(stem)
        _edit_optimizer(state, edit, which, index)
        save_checkpoint(stem, state)
        check_case(args, root, allowed=(2,))


# ------------------------------------------------------------------------------------ YAML and run JSON


@st.composite
def hostile_yaml(draw) -> str:
    kind = draw(st.sampled_from(["bomb", "bomb", "deep", "big", "tags", "keys"]))
    if kind == "bomb":
        width, depth = draw(st.integers(2, 12)), draw(st.integers(2, 12))
        lines = ['a0: &a0 ["' + "x" * draw(st.integers(1, 100)) + '"]']
        for i in range(1, depth):
            lines.append(f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * width)}]")
        lines.append(f"{draw(st.sampled_from(['env_steps', 'trainer', 'seed', 'bogus']))}: *a{depth - 1}")
        return "\n".join(lines) + "\n"
    if kind == "deep":
        depth = draw(st.sampled_from([20, 200, 5000]))
        return "trainer: " + "[" * depth + "]" * depth + "\n"
    if kind == "big":
        return "env_steps: [" + ", ".join(["1"] * draw(st.sampled_from([10, 20_000, 60_000]))) + "]\n"
    if kind == "tags":
        return draw(st.sampled_from(["seed: !!python/object/apply:os.system ['true']\n",
                                     "seed: !!python/name:os.system\n", f"env: !!python/module:{PROBE}\n",
                                     "seed: &a 1\nenv_steps: *a\n", "<<: {seed: 1}\n"]))
    keys = draw(st.lists(st.sampled_from(["env", "env_steps", "trainer", "demos", "seed", "x" * 5000]), min_size=1,
                         max_size=3, unique=True))
    return "".join(f"{k}: {json.dumps(draw(META_VALUES))}\n" for k in keys)


def _yaml_case(text: str) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        (root / "c.yaml").write_text(text)
        check_case(["mairl", "train", "--demos", PENDULUM, "--config", root / "c.yaml", "--env-steps", "150",
                    "--run-dir", root / "run", "--no-progress"], root, allowed=(2,))


@st.composite
def hostile_run_json(draw) -> tuple[str, str]:
    which = draw(st.sampled_from(["config.json", "metrics.json"]))
    kind = draw(st.sampled_from(["edit", "edit", "garbage", "deep"]))
    if kind == "garbage":
        return which, draw(st.sampled_from(["", "{", "[]", "NaN", '{"a": Infinity}', "\x00", "1" * 10_000]))
    if kind == "deep":
        return which, "[" * draw(st.sampled_from([100, 100_000])) + "]" * 10
    return which, json.dumps({k: draw(META_VALUES) for k in draw(st.lists(st.sampled_from(
        ["algo", "demos", "env", "env_steps", "eval", "env_id", "final_normalized_return", "seed", "variant",
         "dynamics", "trainer"]), max_size=6, unique=True))})


def _run_json_case(finished_runs, case: tuple[str, str]) -> None:
    which, text = case
    src, _ = finished_runs["mairl"]
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        shutil.copytree(src / "run", root / "run", ignore=shutil.ignore_patterns(".lock"))
        (root / "run" / which).write_text(text)
        check_case(["mairl", "eval", "--run-dir", root / "run", "--episodes", "1", "--out", root / "eval.json"], root)
        check_case(["mairl", "plot", root / "run", "--out", root / "f.png"], root)


# ------------------------------------------------------------------------------------ the tests

FAMILIES = {
    "trajectory": (hostile_trajectory_files(), _trajectory_case),
    "keypoint": (hostile_keypoint_files(), _keypoint_case),
    "pt": (hostile_pt_files(), _pt_case),
    "visual": (hostile_visual_files(), _visual_case),
    "yaml": (hostile_yaml(), _yaml_case),
}


@pytest.mark.parametrize("family", ["pt", "trajectory"])  # the quick ones; -m slow runs every family
def test_hostile_files_fast(family):
    strategy, case = FAMILIES[family]
    FAST(given(strategy)(case))()


@pytest.mark.slow
@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_hostile_files_full(family):
    strategy, case = FAMILIES[family]
    FULL(given(strategy)(case))()
    print(f"{family}: peak RSS {peak_rss() / 1024**2:.0f} MiB")


@pytest.mark.slow
def test_hostile_checkpoints_full(finished_runs):
    FULL(given(checkpoint_edits())(lambda edit: _checkpoint_case(finished_runs, edit)))()
    print(f"checkpoints: peak RSS {peak_rss() / 1024**2:.0f} MiB")


@pytest.mark.slow
def test_hostile_checkpoints_full_optimizer_states_of_stopped_runs(stopped_runs):
    """Unfinished runs resumed with edited optimiser states: every one refused in one line, exit 2, nothing
    written."""
    refused: collections.Counter[str] = collections.Counter()

    def case(edit: tuple[str, str, int, int]) -> None:
        _optimizer_case(stopped_runs, edit)
        refused[edit[0]] += 1

    FULL(given(optimizer_edits())(case))()
    print(f"optimizer states: {sum(refused.values())} cases refused ({dict(refused)}); peak RSS "
          f"{peak_rss() / 1024**2:.0f} MiB")


@pytest.mark.slow
def test_hostile_run_json_full(finished_runs):
    FULL(given(hostile_run_json())(lambda case: _run_json_case(finished_runs, case)))()
    print(f"run JSON: peak RSS {peak_rss() / 1024**2:.0f} MiB")
