"""KeypointRobot forward kinematics against PyBullet, URDF keypoint links, and the seeded demo generators."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

import mbirl.envs
from mbirl import InputError
from mbirl.envs import REST_POSE, KeypointRobot, KeypointSpec
from mbirl.envs.kuka import DEFAULT_KEYPOINTS

FLANGE_LINK_INDEX = 6  # lbr_iiwa_link_7 in PyBullet's kuka_iiwa/model.urdf


@pytest.fixture(scope="module")
def kuka() -> KeypointRobot:
    return mbirl.envs.default_kuka()


@pytest.fixture(scope="module")
def pybullet_kuka():
    import pybullet as p
    import pybullet_data

    client = p.connect(p.DIRECT)
    urdf = str(Path(pybullet_data.getDataPath()) / "kuka_iiwa" / "model.urdf")
    body = p.loadURDF(urdf, useFixedBase=True, physicsClientId=client)
    yield p, client, body
    p.disconnect(physicsClientId=client)


def _pybullet_keypoints(pybullet_kuka, q) -> np.ndarray:
    p, client, body = pybullet_kuka
    assert p.getJointInfo(body, FLANGE_LINK_INDEX, physicsClientId=client)[12] == b"lbr_iiwa_link_7"
    for j, value in enumerate(q):
        p.resetJointState(body, j, float(value), physicsClientId=client)
    state = p.getLinkState(body, FLANGE_LINK_INDEX, computeForwardKinematics=True, physicsClientId=client)
    pos = np.asarray(state[4], dtype=np.float64)  # world link frame position
    rot = np.asarray(p.getMatrixFromQuaternion(state[5]), dtype=np.float64).reshape(3, 3)
    return np.stack([(pos + rot @ np.asarray(s.offset)) * 100.0 for s in DEFAULT_KEYPOINTS])


def test_default_kuka_layout(kuka):
    assert kuka.n_joints == 7
    assert kuka.n_keypoints == 2
    assert kuka.joint_names == [f"lbr_iiwa_joint_{i}" for i in range(1, 8)]
    assert torch.all(kuka.lower < 0) and torch.all(kuka.upper > 0)
    desc = kuka.describe()
    assert desc["keypoints"] == [{"link": s.link, "offset": list(s.offset)} for s in DEFAULT_KEYPOINTS]


def test_rest_pose_matches_pybullet(kuka, pybullet_kuka):
    with torch.no_grad():
        ours = kuka.keypoints(torch.tensor(REST_POSE, dtype=torch.float32)).numpy()
    theirs = _pybullet_keypoints(pybullet_kuka, REST_POSE)
    assert ours.shape == (2, 3)
    np.testing.assert_allclose(ours, theirs, atol=1e-3, rtol=0)
    # The two keypoints are 6 cm apart in y and z in the flange frame: ||(0, 6, 6)|| cm.
    assert np.linalg.norm(ours[1] - ours[0]) == pytest.approx(np.sqrt(72.0), abs=1e-3)


def test_random_poses_match_pybullet(kuka, pybullet_kuka):
    rng = np.random.default_rng(123)
    lower, upper = kuka.lower.numpy(), kuka.upper.numpy()
    for _ in range(3):
        q = rng.uniform(lower, upper)
        with torch.no_grad():
            ours = kuka.keypoints(torch.as_tensor(q, dtype=torch.float32)).numpy()
        theirs = _pybullet_keypoints(pybullet_kuka, q.astype(np.float32))
        np.testing.assert_allclose(ours, theirs, atol=1e-3, rtol=0)
        assert not np.allclose(ours, kuka.keypoints(torch.tensor(REST_POSE)).detach().numpy(), atol=1.0)


def test_batch_shapes(kuka):
    rng = np.random.default_rng(0)
    q = torch.as_tensor(rng.uniform(-1.0, 1.0, size=(2, 3, 7)), dtype=torch.float32)
    with torch.no_grad():
        out = kuka.keypoints(q)
        assert out.shape == (2, 3, 2, 3)
        assert kuka.keypoints(q[0, 0]).shape == (2, 3)
        assert kuka.keypoints(q[0]).shape == (3, 2, 3)
        for i in range(2):
            for j in range(3):
                torch.testing.assert_close(out[i, j], kuka.keypoints(q[i, j]), atol=1e-4, rtol=0)


def test_keypoints_are_differentiable(kuka):
    q = torch.tensor(REST_POSE, dtype=torch.float32, requires_grad=True)
    kuka.keypoints(q)[:, 2].sum().backward()
    assert q.grad is not None and torch.isfinite(q.grad).all()
    assert q.grad.abs().sum() > 0


def test_wrong_joint_count(kuka):
    with pytest.raises(InputError) as excinfo:
        kuka.keypoints(torch.zeros(6))
    assert excinfo.value.field == "q"


def test_clip_respects_limits(kuka):
    q = torch.full((7,), 10.0)
    torch.testing.assert_close(kuka.clip(q), kuka.upper)
    torch.testing.assert_close(kuka.clip(-q), kuka.lower)


def test_unknown_link_named_in_error(kuka):
    with pytest.raises(InputError) as excinfo:
        KeypointRobot(kuka.urdf, ["lbr_iiwa_link_7", "no_such_link_xyz"])
    msg = str(excinfo.value)
    assert "no_such_link_xyz" in msg
    assert "lbr_iiwa_link_7" in msg  # lists the links that do exist
    assert excinfo.value.field == "keypoint_links"
    with pytest.raises(InputError):
        KeypointRobot(kuka.urdf, [KeypointSpec("ghost", (0.0, 0.0, 0.1))])


def test_missing_or_broken_urdf(tmp_path):
    with pytest.raises(InputError, match="URDF file not found"):
        KeypointRobot(tmp_path / "nope.urdf", ["a"])
    with pytest.raises(InputError):
        KeypointRobot(tmp_path / "x.urdf", [])


def test_original_robot_keypoint_links(original_robot):
    assert original_robot.n_joints == 7
    assert original_robot.n_keypoints == 2
    assert original_robot.joint_names == [f"iiwa_joint_{i}" for i in range(1, 8)]
    with torch.no_grad():
        kp = original_robot.keypoints(torch.tensor(REST_POSE, dtype=torch.float32)).numpy()
    np.testing.assert_allclose(kp, [[-48.5, 0.0, 88.4], [-51.0, 0.0, 92.7]], atol=0.1, rtol=0)


def test_original_robot_three_links_via_options(original_robot):
    robot = mbirl.envs.robot_from_options("original", None, "kp_link_1, kp_link_2,kp_link_3")
    assert robot.n_keypoints == 3
    with torch.no_grad():
        kp = robot.keypoints(torch.tensor(REST_POSE))
    two = original_robot.keypoints(torch.tensor(REST_POSE)).detach()
    torch.testing.assert_close(kp[:2], two)
    with pytest.raises(InputError) as excinfo:
        mbirl.envs.robot_from_options("original", None, "kp_link_1,nope")
    assert "'nope'" in str(excinfo.value)


def test_robot_options_are_checked(tmp_path, original_robot):
    urdf = tmp_path / "iiwa7.urdf"
    urdf.write_text(mbirl.envs.kuka.original_urdf())
    from_file = mbirl.envs.robot_from_options("kuka", str(urdf), "kp_link_1,kp_link_2")
    assert from_file.name == "iiwa7" and from_file.builtin is None
    with torch.no_grad():
        torch.testing.assert_close(from_file.keypoints(torch.tensor(REST_POSE)),
                                   original_robot.keypoints(torch.tensor(REST_POSE)), rtol=0, atol=0)
    with pytest.raises(InputError, match="--keypoint-links"):
        mbirl.envs.robot_from_options("kuka", str(urdf), None)
    with pytest.raises(InputError, match="--robot original") as excinfo:
        mbirl.envs.robot_from_options("original", str(urdf), "kp_link_1")
    assert excinfo.value.field == "robot"
    with pytest.raises(InputError, match="unknown robot 'ur5' \\(expected one of kuka, original\\)"):
        mbirl.envs.robot_from_options("ur5")


@pytest.mark.parametrize("name", ["kuka", "original"])
def test_builtin_robot_description_round_trips_without_a_path(name):
    robot = mbirl.envs.ROBOTS.make(name)
    desc = robot.describe()
    # The keys old files have are still there (old readers), plus the built-in robot's name.
    assert {"name", "urdf", "keypoints", "scale", "joint_names"} <= set(desc) and desc["builtin"] == name
    rebuilt = KeypointRobot.from_description({**desc, "urdf": "/nowhere/robot.urdf"})
    assert rebuilt.describe() == desc | {"urdf": robot.urdf}
    q = torch.tensor(REST_POSE)
    with torch.no_grad():
        assert torch.equal(rebuilt.keypoints(q), robot.keypoints(q))


def test_description_of_a_urdf_robot_and_of_old_files(tmp_path, kuka):
    """A robot from a URDF file is rebuilt from its path; an old description (no ``builtin`` key) loads too."""
    old = {k: v for k, v in kuka.describe().items() if k != "builtin"}
    rebuilt = KeypointRobot.from_description(old)
    assert rebuilt.builtin is None and rebuilt.specs == kuka.specs and rebuilt.name == "kuka_iiwa"
    with pytest.raises(InputError, match="robot description") as excinfo:
        KeypointRobot.from_description({"name": "x"}, source="demos.npz")
    assert excinfo.value.source == "demos.npz"
    with pytest.raises(InputError, match="invalid robot description"):
        KeypointRobot.from_description({**old, "keypoints": [{"link": "a"}]})
    with pytest.raises(InputError, match="unknown built-in robot"):
        KeypointRobot.from_description({**old, "builtin": "ur5"})


def test_pytorch_kinematics_private_attributes(kuka):
    """The lean FK (``_serial_fk`` in envs/robot.py) reads private attributes of pytorch-kinematics' chain, which is
    why pyproject.toml pins its version. If this fails after an upgrade, adapt ``_serial_fk`` to the new layout
    (or keep the pin)."""
    chain = kuka.chain
    missing = [a for a in mbirl.envs.robot.PK_CHAIN_ATTRIBUTES if not hasattr(chain, a)]
    assert not missing, (f"pytorch-kinematics' Chain no longer has {missing}: envs/robot.py::_serial_fk reads them; "
                         "adapt it to the new version or restore the pinned version from pyproject.toml")
    n_frames = len(chain.get_frame_names(exclude_fixed=False))
    layout = {
        "_direct_parent_idx": (n_frames,), "_joint_indices_clamped": (n_frames,),
        "_static_offsets": (n_frames, 4, 4), "joint_type_indices": (n_frames,), "axes": (kuka.n_joints, 3),
    }
    changed = {a: tuple(getattr(chain, a).shape) for a, shape in layout.items()
               if tuple(getattr(chain, a).shape) != shape}
    assert not changed, (f"pytorch-kinematics' Chain attributes changed shape {changed} (expected {layout}): "
                         "envs/robot.py::_serial_fk reads them; adapt it or restore the pinned version")
    parents = chain._direct_parent_idx.tolist()
    assert parents[0] == -1 and all(p < i for i, p in enumerate(parents)), \
        "pytorch-kinematics' _direct_parent_idx is no longer a topologically ordered parent index (root -1)"
    assert set(chain.joint_type_indices.tolist()) <= {0, 1, 2}, \
        "pytorch-kinematics' joint_type_indices no longer codes fixed/revolute/prismatic as 0/1/2"
    # And the values they give: the lean FK equals the library's own tree traversal.
    q = torch.rand(5, kuka.n_joints, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        torch.testing.assert_close(kuka.keypoints(q), kuka.tree_keypoints(q), rtol=0, atol=1e-4)


_SLIDER_URDF = """<?xml version="1.0"?>
<robot name="slider">
  <link name="base"/><link name="l1"/><link name="l2"/><link name="l3"/><link name="tool"/>
  <joint name="j1" type="revolute"><parent link="base"/><child link="l1"/>
    <origin xyz="0 0 0.3" rpy="0 0 0"/><axis xyz="0 0 1"/><limit lower="-3" upper="3" effort="1" velocity="1"/></joint>
  <joint name="j2" type="prismatic"><parent link="l1"/><child link="l2"/>
    <origin xyz="0.1 0 0" rpy="0.3 0 0"/><axis xyz="1 0 0"/>
    <limit lower="-1" upper="1" effort="1" velocity="1"/></joint>
  <joint name="j3" type="revolute"><parent link="l2"/><child link="l3"/>
    <origin xyz="0 0.2 0.05" rpy="0 0.4 0"/><axis xyz="0 1 0"/>
    <limit lower="-3" upper="3" effort="1" velocity="1"/></joint>
  <joint name="fixed" type="fixed"><parent link="l3"/><child link="tool"/><origin xyz="0.05 0 0.1"/></joint>
</robot>
"""


@pytest.fixture(scope="module", params=["kuka", "slider"])
def robot64(request, tmp_path_factory) -> KeypointRobot:
    """The default KUKA and a revolute-prismatic-revolute arm, in float64."""
    if request.param == "kuka":
        return mbirl.envs.default_kuka().double()
    path = tmp_path_factory.mktemp("urdf") / "slider.urdf"
    path.write_text(_SLIDER_URDF)
    return KeypointRobot(path, [KeypointSpec("tool"), KeypointSpec("tool", (0.0, 0.05, 0.0)),
                                KeypointSpec("l3", (0.02, 0.0, 0.0))]).double()


def test_large_batch_forward_equals_tree_fk(robot64):
    """Above BATCH_LAST_MIN states the lean FK switches to its batch-last chain: same keypoints as
    pytorch-kinematics' tree traversal, and as the small-batch path."""
    assert robot64.serial_fk is not None
    n = robot64.serial_fk.BATCH_LAST_MIN + 44
    q = torch.rand(n, robot64.n_joints, dtype=torch.float64, generator=torch.Generator().manual_seed(0)) * 2 - 1
    with torch.no_grad():
        big = robot64.keypoints(q)
        torch.testing.assert_close(big, robot64.tree_keypoints(q), rtol=0, atol=1e-9)
        torch.testing.assert_close(big[:7], robot64.keypoints(q[:7]), rtol=0, atol=1e-9)


def test_jacobian_and_vjp_match_autograd(robot64):
    """The geometric Jacobian equals autograd's; ``J^T dz`` (never forming J) equals the product with it and
    is itself differentiable in q with the right derivative (the bi-level loop needs that)."""
    g = torch.Generator().manual_seed(1)
    q = torch.rand(5, robot64.n_joints, dtype=torch.float64, generator=g) * 2 - 1
    kp, jac = robot64.keypoints_and_jacobian(q)
    ref = torch.stack([torch.autograd.functional.jacobian(robot64.tree_keypoints, qi) for qi in q])
    # 1e-5 cm: the URDF constants are folded in float32 before the chain is cast to float64.
    torch.testing.assert_close(jac, ref, rtol=0, atol=1e-5)
    dz = torch.randn(5, robot64.n_keypoints, 3, dtype=torch.float64, generator=g)
    kp2, vjp = robot64.keypoints_and_vjp(q)
    torch.testing.assert_close(kp2, kp)
    torch.testing.assert_close(vjp(dz), torch.einsum("nkdj,nkd->nj", jac, dz), rtol=0, atol=1e-9)

    def f(qq: torch.Tensor) -> torch.Tensor:
        out = robot64.keypoints_and_vjp(qq)
        assert out is not None
        return out[1](dz)

    assert torch.autograd.gradcheck(f, (q.clone().requires_grad_(True),))


# --------------------------------------------------------------------------- demo generation


def _stack(demos, name="keypoints") -> np.ndarray:
    return np.stack([getattr(d, name) for d in demos])


def test_generate_demos_deterministic_per_seed(kuka, placing_demos):
    again = mbirl.envs.generate_demos("placing", 6, seed=0, robot=kuka)
    other = mbirl.envs.generate_demos("placing", 6, seed=1, robot=kuka)
    np.testing.assert_array_equal(_stack(again), _stack(placing_demos))
    np.testing.assert_array_equal(_stack(again, "q"), _stack(placing_demos, "q"))
    assert np.abs(_stack(other)[:, 1:] - _stack(placing_demos)[:, 1:]).max() > 0.5
    np.testing.assert_array_equal(_stack(other)[:, 0], _stack(placing_demos)[:, 0])  # same start


def test_placing_demos_are_reachable(kuka, placing_demos):
    assert len(placing_demos) == 6
    for demo in placing_demos:
        assert demo.keypoints.shape == (10, 2, 3)
        assert demo.q is not None and demo.q.shape == (10, 7)
        np.testing.assert_array_equal(demo.start_q, np.asarray(REST_POSE, np.float32))
        np.testing.assert_array_equal(demo.q[0], demo.start_q)
        q = torch.as_tensor(demo.q)
        assert torch.all(q >= kuka.lower - 1e-6) and torch.all(q <= kuka.upper + 1e-6)
        with torch.no_grad():
            fk = kuka.keypoints(q).numpy()
        np.testing.assert_allclose(demo.keypoints, fk, atol=1e-3, rtol=0)


def test_placing_path_shape(placing_demos):
    kp = _stack(placing_demos)
    T = kp.shape[1]
    off = kp[:, :, 0, :] - kp[:, :1, 0, :]  # first keypoint, relative to its start
    final = off[:, -1]
    assert np.all((final[:, 0] >= -26) & (final[:, 0] <= -14)), final
    assert np.all((final[:, 2] >= -38) & (final[:, 2] <= -22)), final
    assert np.all(np.abs(final[:, 1]) < 3.0), final
    mid = off[:, T // 2 - 1]
    assert np.all(np.abs(mid[:, 2]) <= 2.0), mid  # first half: no vertical motion yet
    assert np.all((mid[:, 0] >= -26) & (mid[:, 0] <= -14)), mid  # ... but the x move is done
    # The x move happens monotonically-ish during the first half (noise is 0.3 cm per step).
    assert np.all(np.diff(off[:, : T // 2, 0], axis=1) < 1.0)
    # Demonstrations differ from each other (noise and per-demo offsets).
    assert np.ptp(final[:, 0]) > 0.5


def test_reaching_moves_mostly_along_x(kuka):
    demos = mbirl.envs.generate_demos("reaching", 3, seed=0, robot=kuka)
    kp = _stack(demos)
    d = kp[:, -1, 0] - kp[:, 0, 0]
    assert np.all(d[:, 0] < -5.0), d
    assert np.all(np.abs(d[:, 0]) > np.abs(d[:, 1])), d
    assert np.all(np.abs(d[:, 0]) > np.abs(d[:, 2])), d


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"task": "flying", "n": 2}, "task"),
        ({"task": "placing", "n": 0}, "n"),
        ({"task": "placing", "n": 2, "horizon": 1}, "n"),
        ({"task": "placing", "n": 2, "start_q": (0.0, 0.0)}, "start_q"),
    ],
)
def test_generate_demos_rejects(kwargs, field, kuka):
    with pytest.raises(InputError) as excinfo:
        mbirl.envs.generate_demos(robot=kuka, **kwargs)
    assert excinfo.value.field == field
