"""Visual data sets of the KUKA keypoint task: rendered demonstrations and random-motion exploration.

Both are ``.npz`` files of named arrays (never pickles) with a JSON ``meta`` holding the camera
(:meth:`mbirl.envs.render.Camera.to_meta`) and the robot, so ground-truth keypoints can be projected to pixels.

* Visual demonstrations are ordinary keypoint demonstration files (``mbirl.keypoint_demos/v1``:
  ``start_q``, ``keypoints`` (ground truth, cm), ``q``, ``images (N, T, H, W, 3)``) plus ``depth (N, T, H, W)``
  (metres along the optical axis, float16), so every other command reads them unchanged.
* Exploration data (``mbirl.exploration/v1``): ``q (N, T + 1, n)``, ``actions (N, T, n)``,
  ``images (N, T + 1, H, W, 3)``, ``depth (N, T + 1, H, W)`` and the ground-truth ``keypoints (N, T + 1, k, 3)``
  (used only for evaluation).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from mbirl.data.demos import (
    KEYPOINT_FORMAT,
    KEYPOINT_OPTIONAL,
    MAX_NPZ_BYTES,
    KeypointDemoSet,
    atomic_write_npz,
    load_keypoint_demos,
    read_npz,
)
from mbirl.envs.kuka import REST_POSE
from mbirl.envs.render import Camera, KukaRenderer
from mbirl.envs.robot import KeypointRobot
from mbirl.errors import InputError
from mbirl.fileio import json_text
from mbirl.types import KeypointTrajectory, check_array

__all__ = ["EXPLORATION_FORMAT", "ExplorationData", "VisualDemos", "check_rendered_size", "generate_exploration",
           "load_exploration",
           "load_visual_demos", "random_joint_motions", "render_demos", "save_exploration", "save_visual_demos"]

EXPLORATION_FORMAT = "mbirl.exploration/v1"
Progress = Callable[[int], None]


@dataclass(frozen=True)
class ExplorationData:
    """Random joint motions with their renderings.

    Attributes:
        q: joint states ``(N, T + 1, n_joints)`` float32.
        actions: joint deltas ``(N, T, n_joints)`` float32; ``q[:, t + 1] = clip(q[:, t] + actions[:, t])``.
        images: ``(N, T + 1, H, W, 3)`` uint8.
        depth: ``(N, T + 1, H, W)`` float32, metres along the optical axis.
        keypoints: ground-truth keypoints ``(N, T + 1, k, 3)`` float32 (cm), for evaluation only.
        meta: JSON metadata (``camera``, ``robot``, generation settings).
    """

    q: np.ndarray
    actions: np.ndarray
    images: np.ndarray
    depth: np.ndarray
    keypoints: np.ndarray
    meta: dict[str, Any] = field(default_factory=dict)
    source: str | None = field(default=None, compare=False)

    def __post_init__(self) -> None:
        src = self.source
        q = check_array(self.q, "q", ndim=3, source=src)
        N, T1, n = q.shape
        if T1 < 2:
            raise InputError(f"need at least 2 states per trajectory, got {T1}", source=src, field="q")
        actions = check_array(self.actions, "actions", ndim=3, source=src, shape=(N, T1 - 1, n))
        images = check_array(self.images, "images", ndim=5, dtype_kind="u", source=src, shape=(N, T1, None, None, 3))
        if images.dtype != np.uint8:
            raise InputError(f"expected uint8, got {images.dtype}", source=src, field="images")
        depth = check_array(self.depth, "depth", ndim=4, source=src, shape=(N, T1, images.shape[2], images.shape[3]))
        keypoints = check_array(self.keypoints, "keypoints", ndim=4, source=src, shape=(N, T1, None, 3))
        for name, value in (("q", q), ("actions", actions), ("depth", depth), ("keypoints", keypoints)):
            object.__setattr__(self, name, value)
        if "camera" not in self.meta:
            raise InputError("metadata lacks the camera", source=src, field="meta_json")
        camera = self.camera
        if (camera.height, camera.width) != images.shape[2:4]:
            raise InputError(f"camera is {camera.width}x{camera.height}, images are {images.shape[3]}x"
                             f"{images.shape[2]}", source=src, field="camera")

    @property
    def camera(self) -> Camera:
        return Camera.from_meta(self.meta["camera"], self.source)

    def __len__(self) -> int:
        return int(self.q.shape[0])

    def subset(self, index: np.ndarray | slice) -> ExplorationData:
        return ExplorationData(self.q[index], self.actions[index], self.images[index], self.depth[index],
                               self.keypoints[index], self.meta, self.source)


@dataclass(frozen=True)
class VisualDemos:
    """Rendered demonstrations: the demo set (ground-truth keypoints + images), depth maps and the camera."""

    demo_set: KeypointDemoSet
    depth: np.ndarray  # (N, T, H, W) float32 metres
    camera: Camera


def random_joint_motions(robot: KeypointRobot, n: int, horizon: int, *, seed: int = 0,
                         start_q: Sequence[float] = REST_POSE, start_std: float = 0.12, drift_std: float = 0.035,
                         step_std: float = 0.02, joint_scale: Sequence[float] | None = None,
                         camera: Camera | None = None, margin: float = 3.0, max_tries: int = 50
                         ) -> tuple[np.ndarray, np.ndarray]:
    """Seeded random joint motions around ``start_q``: ``(q (n, horizon + 1, J), actions (n, horizon, J))``.

    Each trajectory starts at ``start_q`` plus Gaussian noise and moves with a constant random drift plus
    per-step noise (a smooth wander, as demonstrations are smooth), clipped to the joint limits; the stored
    actions are the realised deltas. With a ``camera``, trajectories whose keypoints leave the image (by less
    than ``margin`` pixels) are redrawn, as one would reset a robot that left the camera's view.
    """
    if n < 1 or horizon < 1:
        raise InputError(f"need n >= 1 and horizon >= 1, got n={n}, horizon={horizon}", field="n")
    J = robot.n_joints
    if len(start_q) != J:
        raise InputError(f"start pose has {len(start_q)} joints, robot has {J}", field="start_q")
    scale = np.ones(J) if joint_scale is None else np.asarray(joint_scale, dtype=np.float64)
    if joint_scale is None and J == 7:
        scale = np.array([0.5, 1.0, 0.5, 1.0, 0.7, 1.0, 1.0])  # the base yaw and the arm twist move the object most
    lo, hi = robot.lower.numpy().astype(np.float64), robot.upper.numpy().astype(np.float64)
    rng = np.random.default_rng(seed)
    q0 = np.asarray(start_q, dtype=np.float64)
    out_q = np.empty((n, horizon + 1, J))
    i = 0
    tries = 0
    while i < n:
        batch = max(2 * (n - i), 8)
        drift = rng.normal(0.0, drift_std, (batch, 1, J)) * scale
        steps = drift + rng.normal(0.0, step_std, (batch, horizon, J)) * scale
        q = np.clip(q0 + rng.normal(0.0, start_std, (batch, J)) * scale, lo, hi)
        traj = [q]
        for t in range(horizon):
            q = np.clip(q + steps[:, t], lo, hi)
            traj.append(q)
        qs = np.stack(traj, axis=1)
        keep = np.ones(batch, dtype=bool)
        if camera is not None:
            with torch.no_grad():
                kp = robot.keypoints(torch.as_tensor(qs, dtype=torch.float32)).numpy()
            uv, depth = camera.project(kp)
            inside = (uv[..., 0] > margin) & (uv[..., 0] < camera.width - margin) & (uv[..., 1] > margin) & (
                uv[..., 1] < camera.height - margin) & (depth > camera.near)
            keep = np.asarray(inside.all(axis=(1, 2)))
        take = qs[keep][: n - i]
        out_q[i:i + len(take)] = take
        i += len(take)
        tries += 1
        if tries > max_tries and i < n:
            raise InputError(f"only {i} of {n} random motions stayed in the camera view; reduce the motion scale",
                             field="n")
    q32 = out_q.astype(np.float32)
    return q32, np.diff(q32, axis=1)


def _render(renderer: KukaRenderer, qs: np.ndarray, progress: Progress | None) -> tuple[np.ndarray, np.ndarray]:
    flat = qs.reshape(-1, qs.shape[-1])
    cam = renderer.camera
    images = np.empty((len(flat), cam.height, cam.width, 3), dtype=np.uint8)
    depth = np.empty((len(flat), cam.height, cam.width), dtype=np.float32)
    for i, (img, dep) in enumerate(renderer.iter_render(flat)):
        images[i], depth[i] = img, dep
        if progress is not None:
            progress(1)
    lead = qs.shape[:-1]
    return images.reshape(*lead, *images.shape[1:]), depth.reshape(*lead, *depth.shape[1:])


def check_rendered_size(frames: int, camera: Camera, field: str = "n") -> None:
    """Refuse a data set of ``frames`` rendered frames that would not fit a readable file (images + float16 depth
    beyond :data:`~mbirl.data.demos.MAX_NPZ_BYTES`), before rendering anything."""
    nbytes = frames * camera.width * camera.height * (3 + 2)
    if frames < 1 or nbytes > MAX_NPZ_BYTES:
        raise InputError(f"{frames} frames of {camera.width}x{camera.height} would take {nbytes / 1024**2:.0f} MiB, "
                         f"more than the {MAX_NPZ_BYTES // 1024**2} MiB a data file may hold; render fewer or "
                         "smaller frames", field=field)


def generate_exploration(robot: KeypointRobot, camera: Camera, n: int, horizon: int, *, seed: int = 0,
                         progress: Progress | None = None, **motion: Any) -> ExplorationData:
    """Random joint motions (:func:`random_joint_motions`) rendered from ``camera``."""
    check_rendered_size(n * (horizon + 1), camera)
    q, actions = random_joint_motions(robot, n, horizon, seed=seed, camera=camera, **motion)
    with KukaRenderer(robot, camera) as renderer:
        images, depth = _render(renderer, q, progress)
    with torch.no_grad():
        keypoints = robot.keypoints(torch.as_tensor(q)).numpy()
    meta = {"camera": camera.to_meta(), "robot": robot.describe(), "seed": seed, "n": n, "horizon": horizon,
            "motion": {k: (list(v) if isinstance(v, tuple) else v) for k, v in motion.items()}}
    return ExplorationData(q, actions, images, depth, keypoints, meta)


def save_exploration(path: str | Path, data: ExplorationData) -> None:
    """Write exploration data atomically (depth as float16 metres: ~1 mm resolution at 1 m)."""
    atomic_write_npz(path, {
        "format": np.asarray(EXPLORATION_FORMAT), "meta_json": np.asarray(json_text(data.meta)),
        "q": data.q, "actions": data.actions, "images": data.images, "depth": data.depth.astype(np.float16),
        "keypoints": data.keypoints,
    })


def load_exploration(path: str | Path) -> ExplorationData:
    """Read and validate an exploration file written by :func:`save_exploration`."""
    arrays, meta = read_npz(path, ("q", "actions", "images", "depth", "keypoints"), EXPLORATION_FORMAT)
    return ExplorationData(arrays["q"], arrays["actions"], arrays["images"], arrays["depth"].astype(np.float32),
                           arrays["keypoints"], meta, str(path))


def render_demos(demos: Sequence[KeypointTrajectory], robot: KeypointRobot, camera: Camera,
                 progress: Progress | None = None) -> tuple[list[KeypointTrajectory], np.ndarray]:
    """Render every frame of demonstrations that carry joint states: ``(demos with images, depth (N, T, H, W))``."""
    if any(d.q is None for d in demos):
        raise InputError("rendering needs the joint states 'q' of every demonstration", field="q")
    check_rendered_size(sum(d.horizon for d in demos), camera)
    qs = np.stack([d.q for d in demos if d.q is not None])
    with KukaRenderer(robot, camera) as renderer:
        images, depth = _render(renderer, qs, progress)
    out = [KeypointTrajectory(start_q=d.start_q, keypoints=d.keypoints, q=d.q, images=images[i], source=d.source)
           for i, d in enumerate(demos)]
    return out, depth


def save_visual_demos(path: str | Path, demos: Sequence[KeypointTrajectory], depth: np.ndarray, camera: Camera,
                      meta: dict[str, Any] | None = None) -> None:
    """A keypoint demo file (readable by every command) with ``images``, ``depth`` and the camera in ``meta``."""
    demo_set = KeypointDemoSet(tuple(demos), {**(meta or {}), "camera": camera.to_meta()})
    if any(d.images is None or d.q is None for d in demos):
        raise InputError("visual demonstrations need images and joint states", field="images")
    arrays = {
        "format": np.asarray(KEYPOINT_FORMAT), "meta_json": np.asarray(json_text(demo_set.meta)),
        "start_q": np.stack([d.start_q for d in demos]), "keypoints": np.stack([d.keypoints for d in demos]),
        "q": np.stack([d.q for d in demos if d.q is not None]),
        "images": np.stack([d.images for d in demos if d.images is not None]),
        "depth": np.asarray(depth, dtype=np.float16),
    }
    if arrays["depth"].shape != arrays["images"].shape[:-1]:
        raise InputError(f"depth shape {arrays['depth'].shape} does not match images {arrays['images'].shape}",
                         field="depth")
    atomic_write_npz(path, arrays)


def load_visual_demos(path: str | Path) -> VisualDemos:
    """Read visual demonstrations: the demo set, ``depth`` and the camera (InputError when any is missing)."""
    demo_set = load_keypoint_demos(path)
    src = str(path)
    if any(d.images is None for d in demo_set.demos):
        raise InputError("demonstrations have no images; make them with `mbirl visual demos`", source=src,
                         field="images")
    arrays, _ = read_npz(path, ("start_q", "keypoints", "depth"), KEYPOINT_FORMAT, KEYPOINT_OPTIONAL,
                         only=("depth",))
    images = demo_set[0].images
    assert images is not None
    depth = check_array(arrays["depth"].astype(np.float32), "depth", ndim=4, source=src,
                        shape=(len(demo_set), demo_set[0].horizon, images.shape[1], images.shape[2]))
    if "camera" not in demo_set.meta:
        raise InputError("metadata lacks the camera", source=src, field="meta_json")
    camera = Camera.from_meta(demo_set.meta["camera"], src)
    if (camera.height, camera.width) != images.shape[1:3]:
        raise InputError(f"camera is {camera.width}x{camera.height}, images are {images.shape[2]}x{images.shape[1]}",
                         source=src, field="camera")
    return VisualDemos(demo_set, depth, camera)
