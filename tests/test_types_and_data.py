"""Validation of the typed demonstrations and the demo file formats (round trips and hostile files)."""

from __future__ import annotations

import pickle
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch

from mbirl import InputError, KeypointTrajectory, Trajectory
from mbirl.data import (
    KeypointDemoSet,
    load_keypoint_demos,
    load_trajectories,
    save_keypoint_demos,
    save_trajectories,
)
from mbirl.data.demos import KEYPOINT_FORMAT, TRAJECTORY_FORMAT

T, K, J = 5, 2, 7


def _kp_kwargs(**overrides):
    rng = np.random.default_rng(0)
    kw = {
        "start_q": rng.normal(size=J).astype(np.float32),
        "keypoints": rng.normal(size=(T, K, 3)).astype(np.float32),
        "q": rng.normal(size=(T, J)).astype(np.float32),
    }
    kw.update(overrides)
    return kw


def _traj_kwargs(n=4, **overrides):
    rng = np.random.default_rng(1)
    kw = {
        "obs": rng.normal(size=(n + 1, 3)).astype(np.float32),
        "acts": rng.normal(size=(n, 2)).astype(np.float32),
        "dones": np.zeros(n, dtype=bool),
    }
    kw.update(overrides)
    return kw


def _assert_field(excinfo: pytest.ExceptionInfo, field: str) -> None:
    assert excinfo.value.field == field
    assert f"field '{field}'" in str(excinfo.value)


class _Payload:
    """Unpickling this object opens (creates) ``marker`` for writing: a stand-in for arbitrary code."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


# --------------------------------------------------------------------------- KeypointTrajectory


def test_keypoint_trajectory_valid_converts_to_float32():
    kw = _kp_kwargs(keypoints=np.arange(T * K * 3, dtype=np.float64).reshape(T, K, 3))
    demo = KeypointTrajectory(**kw)
    assert demo.keypoints.dtype == np.float32
    assert demo.start_q.dtype == np.float32
    assert (demo.horizon, demo.n_keypoints, demo.n_joints) == (T, K, J)
    np.testing.assert_array_equal(demo.goal, kw["keypoints"][-1].astype(np.float32))


@pytest.mark.parametrize(
    ("overrides", "field"),
    [
        ({"start_q": np.zeros((1, J), np.float32)}, "start_q"),  # wrong ndim
        ({"keypoints": np.zeros((T, K * 3), np.float32)}, "keypoints"),  # wrong ndim
        ({"keypoints": np.zeros((T, K, 2), np.float32)}, "keypoints"),  # wrong last dim
        ({"keypoints": np.zeros((1, K, 3), np.float32)}, "keypoints"),  # a single frame is no demonstration
        ({"keypoints": np.full((T, K, 3), np.nan, np.float32)}, "keypoints"),
        ({"start_q": np.array([0, 0, 0, np.inf, 0, 0, 0], np.float32)}, "start_q"),
        ({"q": np.full((T, J), -np.inf, np.float32)}, "q"),
        ({"keypoints": np.empty((T, K, 3), dtype=object)}, "keypoints"),
        ({"start_q": np.array([None] * J, dtype=object)}, "start_q"),
        ({"q": np.zeros((T - 1, J), np.float32)}, "q"),  # q length != horizon
        ({"q": np.zeros((T, J - 1), np.float32)}, "q"),  # q joints != start_q joints
        ({"images": np.zeros((T, 4, 4, 3), np.float32)}, "images"),  # not uint8
        ({"images": np.zeros((T, 4, 4, 3), np.uint16)}, "images"),  # not uint8
        ({"images": np.zeros((T, 4, 4, 4), np.uint8)}, "images"),  # not RGB
        ({"images": np.zeros((T + 1, 4, 4, 3), np.uint8)}, "images"),  # wrong length
        ({"keypoints": np.array(["a"] * (T * K * 3)).reshape(T, K, 3)}, "keypoints"),  # strings
    ],
)
def test_keypoint_trajectory_rejects(overrides, field):
    with pytest.raises(InputError) as excinfo:
        KeypointTrajectory(**_kp_kwargs(**overrides), source="demo.npz")
    _assert_field(excinfo, field)
    assert str(excinfo.value).startswith("demo.npz: ")


def test_keypoint_trajectory_accepts_uint8_images():
    images = np.random.default_rng(0).integers(0, 255, size=(T, 4, 6, 3), dtype=np.uint8)
    demo = KeypointTrajectory(**_kp_kwargs(images=images))
    assert demo.images is not None and demo.images.shape == (T, 4, 6, 3) and demo.images.dtype == np.uint8


# --------------------------------------------------------------------------- Trajectory


def test_trajectory_valid():
    traj = Trajectory(**_traj_kwargs(dones=np.array([0, 0, 0, 1])), rews=np.ones(4))
    assert len(traj) == 4
    assert traj.terminal
    assert traj.dones.dtype == np.bool_
    np.testing.assert_array_equal(traj.next_obs, traj.obs[1:])
    discrete = Trajectory(**_traj_kwargs(acts=np.array([0, 2, 1, 1], dtype=np.int64)))
    assert discrete.acts.dtype.kind == "i"
    assert not discrete.terminal


@pytest.mark.parametrize(
    ("overrides", "field"),
    [
        ({"obs": np.zeros((4, 3), np.float32)}, "obs"),  # len(obs) == len(acts)
        ({"obs": np.zeros((6, 3), np.float32)}, "obs"),  # len(obs) == len(acts) + 2
        ({"obs": np.float32(1.0)}, "obs"),  # 0-d
        ({"obs": np.full((5, 3), np.nan, np.float32)}, "obs"),
        ({"acts": np.full((4, 2), np.inf, np.float32)}, "acts"),
        ({"obs": np.empty((5, 3), dtype=object)}, "obs"),
        ({"acts": np.empty((4, 2), dtype=object)}, "acts"),
        ({"dones": np.array([False, True, False, False])}, "dones"),  # terminal in the middle
        ({"dones": np.array([True, False, False, True])}, "dones"),
        ({"dones": np.zeros(3, dtype=bool)}, "dones"),  # wrong length
        ({"dones": np.array([0, 2, 0, 0])}, "dones"),  # not boolean
    ],
)
def test_trajectory_rejects(overrides, field):
    with pytest.raises(InputError) as excinfo:
        Trajectory(**_traj_kwargs(**overrides))
    _assert_field(excinfo, field)


def test_trajectory_rejects_bad_rewards():
    with pytest.raises(InputError) as excinfo:
        Trajectory(**_traj_kwargs(), rews=np.ones(3))
    _assert_field(excinfo, "rews")
    with pytest.raises(InputError) as excinfo:
        Trajectory(**_traj_kwargs(), rews=np.array([0.0, np.nan, 0.0, 0.0]))
    _assert_field(excinfo, "rews")


# --------------------------------------------------------------------------- keypoint demo files


def test_keypoint_demos_round_trip_exact(tmp_path, placing_demos):
    path = tmp_path / "demos.npz"
    meta = {"task": "placing", "seed": 0, "nested": {"a": [1, 2.5]}}
    save_keypoint_demos(path, placing_demos, meta)
    loaded = load_keypoint_demos(path)
    assert len(loaded) == len(placing_demos) == 6
    assert loaded.meta == meta
    for a, b in zip(placing_demos, loaded.demos, strict=True):
        assert b.q is not None and a.q is not None
        assert b.images is None
        np.testing.assert_array_equal(a.start_q, b.start_q)
        np.testing.assert_array_equal(a.keypoints, b.keypoints)
        np.testing.assert_array_equal(a.q, b.q)
        assert b.keypoints.dtype == np.float32 and b.q.dtype == np.float32
        assert b.source == str(path)
    assert not list(tmp_path.glob("*.tmp")), "atomic write left a temporary file behind"


def test_keypoint_demos_round_trip_with_images(tmp_path):
    rng = np.random.default_rng(3)
    demos = [KeypointTrajectory(**_kp_kwargs(images=rng.integers(0, 256, (T, 3, 5, 3), dtype=np.uint8)))
             for _ in range(2)]
    path = tmp_path / "img.npz"
    save_keypoint_demos(path, demos)
    loaded = load_keypoint_demos(path)
    for a, b in zip(demos, loaded.demos, strict=True):
        np.testing.assert_array_equal(a.images, b.images)
        assert b.images.dtype == np.uint8


def test_save_keypoint_demos_requires_q_on_all_or_none(tmp_path):
    with_q = KeypointTrajectory(**_kp_kwargs())
    without_q = KeypointTrajectory(**_kp_kwargs(q=None))
    with pytest.raises(InputError) as excinfo:
        save_keypoint_demos(tmp_path / "x.npz", [with_q, without_q])
    assert excinfo.value.field == "q"
    assert not (tmp_path / "x.npz").exists()


def test_demo_set_rejects_mixed_horizons():
    a = KeypointTrajectory(**_kp_kwargs())
    b = KeypointTrajectory(start_q=np.zeros(J), keypoints=np.zeros((T + 1, K, 3)))
    with pytest.raises(InputError):
        KeypointDemoSet((a, b))
    with pytest.raises(InputError):
        KeypointDemoSet(())


@pytest.mark.parametrize(("start", "stop"), [(0, 7), (3, 3), (4, 2), (-1, 2), (6, 7)])
def test_demo_set_subset_out_of_range(placing_demos, start, stop):
    demo_set = KeypointDemoSet(tuple(placing_demos))
    with pytest.raises(InputError) as excinfo:
        demo_set.subset(start, stop)
    assert excinfo.value.field == "split"
    assert f"{start}:{stop}" in str(excinfo.value)


def test_demo_set_subset_in_range(placing_demos):
    demo_set = KeypointDemoSet(tuple(placing_demos))
    sub = demo_set.subset(3, 6)
    assert len(sub) == 3
    assert sub[0] is placing_demos[3]


# --------------------------------------------------------------------------- trajectory files


def test_trajectories_round_trip_varying_lengths(tmp_path):
    rng = np.random.default_rng(5)
    trajs = []
    for n in (1, 4, 7):
        dones = np.zeros(n, dtype=bool)
        dones[-1] = n == 4
        trajs.append(Trajectory(obs=rng.normal(size=(n + 1, 3)), acts=rng.normal(size=(n, 2)), dones=dones,
                                rews=rng.normal(size=n)))
    path = tmp_path / "trajs.npz"
    save_trajectories(path, trajs, {"env": "Pendulum-v1"})
    loaded, meta = load_trajectories(path)
    assert meta == {"env": "Pendulum-v1"}
    assert [len(t) for t in loaded] == [1, 4, 7]
    assert [t.terminal for t in loaded] == [False, True, False]
    for a, b in zip(trajs, loaded, strict=True):
        np.testing.assert_array_equal(a.obs, b.obs)
        np.testing.assert_array_equal(a.acts, b.acts)
        np.testing.assert_array_equal(a.dones, b.dones)
        np.testing.assert_array_equal(a.rews, b.rews)


def test_trajectories_round_trip_discrete_without_rewards(tmp_path):
    trajs = [Trajectory(obs=np.arange(n + 1, dtype=np.int64)[:, None], acts=np.arange(n) % 3,
                        dones=np.eye(n, dtype=bool)[-1])
             for n in (2, 5)]
    path = tmp_path / "d.npz"
    save_trajectories(path, trajs)
    loaded, meta = load_trajectories(path)
    assert meta == {}
    for a, b in zip(trajs, loaded, strict=True):
        assert b.rews is None
        assert b.acts.dtype.kind == "i"
        np.testing.assert_array_equal(a.acts, b.acts)
        np.testing.assert_array_equal(a.obs, b.obs)
        assert b.terminal


def test_load_trajectories_rejects_inconsistent_lengths(tmp_path):
    path = tmp_path / "bad.npz"
    np.savez(path, format=np.asarray(TRAJECTORY_FORMAT), lengths=np.array([2, 3]), obs=np.zeros((7, 2)),
             acts=np.zeros((4, 1)), dones=np.zeros(4, bool))
    with pytest.raises(InputError) as excinfo:
        load_trajectories(path)
    assert excinfo.value.field == "acts"


# --------------------------------------------------------------------------- hostile / broken files


@pytest.fixture
def good_npz(tmp_path, placing_demos) -> Path:
    path = tmp_path / "good.npz"
    save_keypoint_demos(path, placing_demos[:2])
    return path


def test_load_missing_file(tmp_path):
    for loader in (load_keypoint_demos, load_trajectories):
        with pytest.raises(InputError, match="file not found"):
            loader(tmp_path / "missing.npz")
    with pytest.raises(InputError, match="file not found"):
        load_keypoint_demos(tmp_path / "missing.pt")


def test_load_truncated_file(tmp_path, good_npz):
    data = good_npz.read_bytes()
    for cut in (len(data) // 2, len(data) - 30, 10):
        path = tmp_path / f"trunc{cut}.npz"
        path.write_bytes(data[:cut])
        with pytest.raises(InputError) as excinfo:
            load_keypoint_demos(path)
        assert str(path) in str(excinfo.value)


def test_load_non_zip_file(tmp_path):
    path = tmp_path / "text.npz"
    path.write_text("these are not the demonstrations you are looking for\n")
    with pytest.raises(InputError) as excinfo:
        load_keypoint_demos(path)
    assert str(path) in str(excinfo.value)
    empty = tmp_path / "empty.npz"
    empty.write_bytes(b"")
    with pytest.raises(InputError):
        load_keypoint_demos(empty)


def test_load_wrong_format_tag(tmp_path, good_npz):
    # A valid trajectory file is not a keypoint file, and vice versa.
    traj_path = tmp_path / "t.npz"
    save_trajectories(traj_path, [Trajectory(**_traj_kwargs())])
    with pytest.raises(InputError) as excinfo:
        load_keypoint_demos(traj_path)
    _assert_field(excinfo, "format")
    assert TRAJECTORY_FORMAT in str(excinfo.value)
    with pytest.raises(InputError) as excinfo:
        load_trajectories(good_npz)
    _assert_field(excinfo, "format")

    untagged = tmp_path / "untagged.npz"
    np.savez(untagged, start_q=np.zeros((1, J)), keypoints=np.zeros((1, T, K, 3)))
    with pytest.raises(InputError) as excinfo:
        load_keypoint_demos(untagged)
    _assert_field(excinfo, "format")


def test_load_missing_key(tmp_path):
    path = tmp_path / "nokp.npz"
    np.savez(path, format=np.asarray(KEYPOINT_FORMAT), start_q=np.zeros((2, J), np.float32))
    with pytest.raises(InputError) as excinfo:
        load_keypoint_demos(path)
    _assert_field(excinfo, "keypoints")


def test_load_mismatched_counts(tmp_path):
    path = tmp_path / "counts.npz"
    np.savez(path, format=np.asarray(KEYPOINT_FORMAT), start_q=np.zeros((2, J), np.float32),
             keypoints=np.zeros((3, T, K, 3), np.float32))
    with pytest.raises(InputError) as excinfo:
        load_keypoint_demos(path)
    _assert_field(excinfo, "keypoints")


def test_load_nan_keypoints(tmp_path):
    kp = np.zeros((2, T, K, 3), np.float32)
    kp[1, 2, 0, 1] = np.nan
    path = tmp_path / "nan.npz"
    np.savez(path, format=np.asarray(KEYPOINT_FORMAT), start_q=np.zeros((2, J), np.float32), keypoints=kp)
    with pytest.raises(InputError, match="NaN") as excinfo:
        load_keypoint_demos(path)
    _assert_field(excinfo, "keypoints")


def test_load_pickled_npz_does_not_run_payload(tmp_path):
    marker = tmp_path / "pwned_npz"
    payload = np.empty(1, dtype=object)
    payload[0] = _Payload(marker)
    path = tmp_path / "evil.npz"
    np.savez(path, allow_pickle=True, format=np.asarray(KEYPOINT_FORMAT), start_q=payload,
             keypoints=np.zeros((1, T, K, 3), np.float32))
    assert not marker.exists()
    assert zipfile.is_zipfile(path)

    with pytest.raises(InputError) as excinfo:
        load_keypoint_demos(path)
    assert str(path) in str(excinfo.value)
    assert not marker.exists(), "loading a demo file executed a pickled payload"

    # Control: the file really carries a live payload that a pickle-enabled reader would run.
    with np.load(path, allow_pickle=True) as data:
        data["start_q"][0].close()
    assert marker.exists()


def test_load_pickled_trajectory_npz_does_not_run_payload(tmp_path):
    marker = tmp_path / "pwned_traj"
    payload = np.empty(2, dtype=object)
    payload[:] = [_Payload(marker), _Payload(marker)]
    path = tmp_path / "evil_traj.npz"
    np.savez(path, allow_pickle=True, format=np.asarray(TRAJECTORY_FORMAT), lengths=np.array([1]),
             obs=np.zeros((2, 1)), acts=payload[:1], dones=np.zeros(1, bool))
    with pytest.raises(InputError):
        load_trajectories(path)
    assert not marker.exists()


# --------------------------------------------------------------------------- original MBIRL .pt files


def test_import_original_pt(tmp_path):
    torch.manual_seed(0)
    raw = [{"start_joint_config": torch.randn(1, 7), "desired_keypoints": torch.randn(10, 2, 3)}
           for _ in range(3)]
    raw[0]["start_joint_config"] = torch.zeros(1, 7)
    path = tmp_path / "traj_data.pt"
    torch.save(raw, path)
    demo_set = load_keypoint_demos(path)
    assert len(demo_set) == 3
    assert demo_set.meta["imported_from"] == "mbirl-original"
    for entry, demo in zip(raw, demo_set.demos, strict=True):
        assert demo.start_q.shape == (7,)
        assert demo.keypoints.shape == (10, 2, 3)
        assert demo.q is None
        np.testing.assert_array_equal(demo.start_q, entry["start_joint_config"][0].numpy())
        np.testing.assert_array_equal(demo.keypoints, entry["desired_keypoints"].numpy())
    np.testing.assert_array_equal(demo_set[0].start_q, np.zeros(7, np.float32))


@pytest.mark.parametrize(
    "raw",
    [
        [],
        {"start_joint_config": torch.zeros(1, 7)},
        [{"start_joint_config": torch.zeros(1, 7)}],  # no desired_keypoints
        [torch.zeros(3)],
        [{"start_joint_config": torch.zeros(1, 7),
          "desired_keypoints": torch.full((10, 2, 3), float("nan"))}],
        [{"start_joint_config": torch.zeros(1, 7), "desired_keypoints": torch.zeros(10, 2, 2)}],
    ],
)
def test_import_original_pt_rejects_bad_content(tmp_path, raw):
    path = tmp_path / "bad.pt"
    torch.save(raw, path)
    with pytest.raises(InputError):
        load_keypoint_demos(path)


def test_import_original_pt_not_a_torch_file(tmp_path):
    path = tmp_path / "junk.pt"
    path.write_bytes(b"\x00\x01garbage" * 10)
    with pytest.raises(InputError, match="cannot be read safely"):
        load_keypoint_demos(path)


def test_import_original_pt_refuses_pickled_object(tmp_path):
    marker = tmp_path / "pwned_pt"
    raw = [{"start_joint_config": _Payload(marker), "desired_keypoints": torch.randn(10, 2, 3)}]
    path = tmp_path / "evil.pt"
    torch.save(raw, path)
    assert not marker.exists()

    with pytest.raises(InputError, match="cannot be read safely") as excinfo:
        load_keypoint_demos(path)
    assert str(path) in str(excinfo.value)
    assert not marker.exists(), "importing a .pt file executed a pickled payload"

    # Control: an unrestricted unpickler does run the payload, so the refusal above is what saved us.
    loaded = torch.load(path, weights_only=False)
    loaded[0]["start_joint_config"].close()
    assert marker.exists()


def test_payload_helper_is_live(tmp_path):
    marker = tmp_path / "control"
    pickle.loads(pickle.dumps(_Payload(marker))).close()  # noqa: S301 - deliberate, our own payload
    assert marker.exists()
