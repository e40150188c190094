"""Rendering: camera geometry against PyBullet's matrices, the held object on the keypoints, visual data files."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from mbirl.data import load_keypoint_demos, save_keypoint_demos
from mbirl.data.visual import (
    ExplorationData,
    load_exploration,
    load_visual_demos,
    random_joint_motions,
)
from mbirl.envs import default_kuka
from mbirl.envs.kuka import REST_POSE
from mbirl.envs.render import Camera, KukaRenderer, default_camera
from mbirl.errors import InputError
from mbirl.experiments.visual import ExplorationConfig, VisualDemosConfig, make_exploration, make_visual_demos
from mbirl.types import KeypointTrajectory


@pytest.fixture(scope="module")
def robot():
    return default_kuka()


def test_camera_matrices_match_pybullet():
    import pybullet as pb

    cam = Camera(width=48, height=32, fov=40.0)
    view = np.asarray(pb.computeViewMatrix(cam.eye, cam.target, cam.up)).reshape(4, 4).T
    proj = np.asarray(pb.computeProjectionMatrixFOV(cam.fov, cam.width / cam.height, cam.near, cam.far)).reshape(4, 4).T
    np.testing.assert_allclose(cam.view_matrix(), view, atol=1e-6)
    np.testing.assert_allclose(cam.projection_matrix(), proj, atol=1e-6)
    K = cam.intrinsics()
    assert K[0, 2] == 24 and K[1, 2] == 16 and K[0, 0] == pytest.approx(K[1, 1])


def test_project_unproject_round_trip_and_target_at_centre():
    cam = default_camera(64)
    uv, depth = cam.project(np.asarray(cam.target) * cam.scale)
    np.testing.assert_allclose(uv, [32.0, 32.0], atol=1e-9)
    assert depth == pytest.approx(np.linalg.norm(np.subtract(cam.eye, cam.target)))
    pts = np.random.default_rng(0).normal([-60.0, 0.0, 80.0], 15.0, size=(5, 4, 3))
    uv, depth = cam.project(pts)
    np.testing.assert_allclose(cam.unproject(uv, depth), pts, atol=1e-9)


def test_camera_meta_round_trip_and_bad_meta():
    cam = Camera(width=32, height=24, fov=45.0)
    meta = json.loads(json.dumps(cam.to_meta()))
    assert Camera.from_meta(meta) == cam
    np.testing.assert_allclose(meta["intrinsics"], cam.intrinsics())
    with pytest.raises(InputError, match="lacks"):
        Camera.from_meta({"width": 32})
    with pytest.raises(InputError, match="near < far"):
        Camera(near=2.0, far=1.0)
    with pytest.raises(InputError, match="at least 8x8"):
        Camera(width=4, height=4)


def test_render_puts_markers_on_the_projected_keypoints(robot):
    cam = default_camera(64)
    q = np.asarray(REST_POSE, dtype=np.float32)
    with KukaRenderer(robot, cam) as renderer:
        image, depth = renderer.render(q)
    assert image.shape == (64, 64, 3) and image.dtype == np.uint8
    assert depth.shape == (64, 64) and depth.dtype == np.float32
    kp = robot.keypoints(torch.as_tensor(q)).numpy()
    uv, true_depth = cam.project(kp)
    r, g, b = (image[..., i].astype(int) for i in range(3))
    red, green = (r > 2 * g + 40) & (r > 2 * b + 40), (g > r + 40) & (g > b + 40)
    vv, uu = np.mgrid[0:64, 0:64] + 0.5
    for k, mask in enumerate((red, green)):
        near = np.hypot(uu - uv[k, 0], vv - uv[k, 1]) < 6  # the arm's orange links are elsewhere in the frame
        rows, cols = np.nonzero(mask & near)
        assert len(rows) >= 3, f"marker {k} not visible"
        centroid = np.array([cols.mean() + 0.5, rows.mean() + 0.5])
        assert np.linalg.norm(centroid - uv[k]) < 1.5, (k, centroid, uv[k])
        # The depth buffer sees the marker's front surface: one marker radius (3 cm) nearer than its centre.
        d = depth[int(uv[k, 1]), int(uv[k, 0])]
        assert 0.0 < true_depth[k] - d < 0.05
    # The scene is static: rendering the same pose twice gives the same frame.
    with KukaRenderer(robot, cam) as renderer:
        again, _ = renderer.render(q)
    np.testing.assert_array_equal(image, again)


def test_render_rejects_bad_joints(robot):
    with KukaRenderer(robot, default_camera(16)) as renderer, pytest.raises(InputError, match="7 finite"):
        renderer.render(np.zeros(6))


def test_random_joint_motions_stay_in_view_and_follow_actions(robot):
    cam = default_camera(32)
    q, u = random_joint_motions(robot, 6, 4, seed=3, camera=cam)
    assert q.shape == (6, 5, 7) and u.shape == (6, 4, 7)
    np.testing.assert_allclose(q[:, 1:], q[:, :-1] + u, atol=1e-5)
    uv, _ = cam.project(robot.keypoints(torch.as_tensor(q)).numpy())
    assert (uv > 3).all() and (uv < 29).all()
    q2, _ = random_joint_motions(robot, 6, 4, seed=3, camera=cam)
    np.testing.assert_array_equal(q, q2)


def test_visual_demo_file_round_trip(tmp_path, robot):
    out = tmp_path / "vd.npz"
    make_visual_demos(out, VisualDemosConfig(n=2, seed=0, horizon=4), camera=default_camera(24), robot=robot)
    vd = load_visual_demos(out)
    assert len(vd.demo_set) == 2
    images = vd.demo_set[0].images
    assert images is not None and images.shape == (4, 24, 24, 3) and images.dtype == np.uint8
    assert vd.depth.shape == (2, 4, 24, 24) and np.isfinite(vd.depth).all()
    assert vd.camera == default_camera(24)
    assert vd.demo_set.meta["camera"]["intrinsics"] == default_camera(24).intrinsics().tolist()
    # Every other command reads the file as ordinary keypoint demonstrations.
    plain = load_keypoint_demos(out)
    np.testing.assert_array_equal(plain[1].keypoints, vd.demo_set[1].keypoints)
    assert (tmp_path / "vd.png").is_file() and (tmp_path / "vd_frames.png").is_file()


def test_exploration_file_round_trip_and_validation(tmp_path, robot):
    out = tmp_path / "ex.npz"
    data = make_exploration(out, ExplorationConfig(n=3, horizon=3, seed=0), camera=default_camera(16), robot=robot)
    loaded = load_exploration(out)
    assert loaded.images.shape == (3, 4, 16, 16, 3) and loaded.actions.shape == (3, 3, 7)
    np.testing.assert_array_equal(loaded.images, data.images)
    np.testing.assert_allclose(loaded.depth, data.depth, atol=2e-3)  # stored as float16 metres
    with torch.no_grad():
        np.testing.assert_allclose(loaded.keypoints, robot.keypoints(torch.as_tensor(loaded.q)).numpy(), atol=1e-3)
    assert loaded.camera == default_camera(16)
    # A demo file is not an exploration file, and plain demos are not visual demos.
    make_visual_demos(tmp_path / "vd.npz", VisualDemosConfig(n=1, seed=0, horizon=3), camera=default_camera(16),
                      robot=robot)
    with pytest.raises(InputError, match="format"):
        load_exploration(tmp_path / "vd.npz")
    d = load_keypoint_demos(tmp_path / "vd.npz")[0]
    save_keypoint_demos(tmp_path / "plain.npz", [KeypointTrajectory(start_q=d.start_q, keypoints=d.keypoints)])
    with pytest.raises(InputError, match="no images"):
        load_visual_demos(tmp_path / "plain.npz")
    with pytest.raises(InputError, match="depth"):  # images without depth maps
        load_visual_demos(tmp_path / "kd_images.npz") if save_keypoint_demos(
            tmp_path / "kd_images.npz", load_keypoint_demos(tmp_path / "vd.npz").demos) is None else None
    with pytest.raises(InputError, match="shape"):
        ExplorationData(data.q, data.actions[:, :2], data.images, data.depth, data.keypoints, data.meta)
    with pytest.raises(InputError, match="camera"):
        ExplorationData(data.q, data.actions, data.images, data.depth, data.keypoints, {})
