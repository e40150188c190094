"""Rendering the KUKA keypoint task with PyBullet (DIRECT mode, CPU TinyRenderer) from a fixed camera.

The scene is the robot's URDF, a coloured held object whose marker spheres sit exactly on the robot's keypoints
(:data:`~mbirl.envs.kuka.DEFAULT_KEYPOINTS`: a red and a green ball joined by a yellow bar, on a grey stem
from the flange), a ground plane and static background objects (a brown table and a blue cylinder).
:class:`Camera` holds the intrinsics and extrinsics, projects 3-D keypoints (centimetres, robot base frame)
to pixels and lifts pixels with a depth value back to 3-D; it round-trips through the JSON ``meta`` of demo
and exploration files so ground-truth keypoints can be projected for evaluation.

Pixel convention: ``(u, v)`` = (column, row) in pixel units, pixel ``i`` covering ``[i, i + 1)``, so the
centre of the top-left pixel is ``(0.5, 0.5)``. Depth is metric distance along the optical axis (metres).
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from mbirl.envs.robot import KeypointRobot
from mbirl.errors import InputError

__all__ = ["DEFAULT_RESOLUTION", "Camera", "KukaRenderer", "default_camera"]


DEFAULT_RESOLUTION = 64
"""Image size (pixels, square) of the visual experiments unless chosen otherwise."""


MAX_CAMERA_SIZE = 1024
"""Largest image side rendered (a frame is width x height x (3 + 4) bytes with depth)."""


@dataclass(frozen=True)
class Camera:
    """A pinhole camera looking from ``eye`` at ``target`` (metres, robot base frame).

    Attributes:
        width, height: image size in pixels.
        eye, target, up: camera placement (OpenGL look-at).
        fov: vertical field of view in degrees.
        near, far: clipping planes (metres); also needed to linearise PyBullet's depth buffer.
        scale: robot units per metre (100: keypoints in centimetres).
    """

    width: int = DEFAULT_RESOLUTION
    height: int = DEFAULT_RESOLUTION
    eye: tuple[float, float, float] = (-0.6, 0.82, 1.0)
    target: tuple[float, float, float] = (-0.6, 0.0, 0.8)
    up: tuple[float, float, float] = (0.0, 0.0, 1.0)
    fov: float = 50.0
    near: float = 0.1
    far: float = 4.0
    scale: float = 100.0

    def __post_init__(self) -> None:
        if not (8 <= self.width <= MAX_CAMERA_SIZE and 8 <= self.height <= MAX_CAMERA_SIZE):
            raise InputError(f"image size must be at least 8x8 and at most {MAX_CAMERA_SIZE}x{MAX_CAMERA_SIZE}, got "
                             f"{self.width}x{self.height}", field="resolution")
        values = (*self.eye, *self.target, *self.up, self.fov, self.near, self.far, self.scale)
        if len(self.eye) != 3 or len(self.target) != 3 or len(self.up) != 3 or not all(map(math.isfinite, values)):
            raise InputError("eye, target and up need 3 finite coordinates; fov, near, far, scale finite numbers",
                             field="camera")
        if not self.scale > 0:
            raise InputError(f"scale (robot units per metre) must be positive, got {self.scale}", field="camera")
        direction = np.subtract(self.target, self.eye)
        if np.linalg.norm(direction) < 1e-6:
            raise InputError("camera eye and target coincide", field="camera")
        if np.linalg.norm(np.cross(direction, self.up)) < 1e-6 * np.linalg.norm(direction):
            raise InputError("camera 'up' is parallel to the viewing direction (or zero)", field="camera")
        if not 0 < self.near < self.far:
            raise InputError(f"need 0 < near < far, got near={self.near}, far={self.far}", field="camera")
        if not 1.0 <= self.fov < 179.0:
            raise InputError(f"field of view must be in [1, 179) degrees, got {self.fov}", field="camera")

    # --- matrices -------------------------------------------------------------------------------------------
    def view_matrix(self) -> np.ndarray:
        """World -> OpenGL camera (x right, y up, looking along -z), ``(4, 4)`` float64, metres."""
        eye, target, up = (np.asarray(v, dtype=np.float64) for v in (self.eye, self.target, self.up))
        f = target - eye
        f /= np.linalg.norm(f)
        s = np.cross(f, up)
        if np.linalg.norm(s) < 1e-9:
            raise InputError("camera 'up' is parallel to the viewing direction", field="camera")
        s /= np.linalg.norm(s)
        u = np.cross(s, f)
        m = np.eye(4)
        m[0, :3], m[1, :3], m[2, :3] = s, u, -f
        m[:3, 3] = -m[:3, :3] @ eye
        return m

    def projection_matrix(self) -> np.ndarray:
        """OpenGL perspective projection, ``(4, 4)`` float64 (as ``computeProjectionMatrixFOV``)."""
        aspect = self.width / self.height
        t = 1.0 / math.tan(math.radians(self.fov) / 2.0)
        n, f = self.near, self.far
        p = np.zeros((4, 4))
        p[0, 0], p[1, 1] = t / aspect, t
        p[2, 2], p[2, 3] = (f + n) / (n - f), 2.0 * f * n / (n - f)
        p[3, 2] = -1.0
        return p

    def intrinsics(self) -> np.ndarray:
        """OpenCV intrinsics ``K = [[fx, 0, cx], [0, fy, cy], [0, 0, 1]]`` in pixels."""
        p = self.projection_matrix()
        return np.array([[p[0, 0] * self.width / 2, 0.0, self.width / 2],
                         [0.0, p[1, 1] * self.height / 2, self.height / 2], [0.0, 0.0, 1.0]])

    def extrinsics(self) -> np.ndarray:
        """World (metres) -> OpenCV camera frame (x right, y down, z forward), ``(4, 4)``."""
        return np.diag([1.0, -1.0, -1.0, 1.0]) @ self.view_matrix()

    # --- geometry -------------------------------------------------------------------------------------------
    def project(self, points: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Project points ``(..., 3)`` in robot units to pixels ``(..., 2)`` ``(u, v)`` and depths ``(...)`` (m)."""
        pts = np.asarray(points, dtype=np.float64) / self.scale
        cam = pts @ self.extrinsics()[:3, :3].T + self.extrinsics()[:3, 3]
        depth = cam[..., 2]
        K = self.intrinsics()
        safe = np.where(np.abs(depth) < 1e-9, 1e-9, depth)
        u = K[0, 0] * cam[..., 0] / safe + K[0, 2]
        v = K[1, 1] * cam[..., 1] / safe + K[1, 2]
        return np.stack([u, v], axis=-1), depth

    def unproject(self, uv: np.ndarray, depth: np.ndarray) -> np.ndarray:
        """Lift pixels ``(..., 2)`` with depths ``(...)`` (metres, along the optical axis) to robot units."""
        uv = np.asarray(uv, dtype=np.float64)
        depth = np.asarray(depth, dtype=np.float64)
        K = self.intrinsics()
        x = (uv[..., 0] - K[0, 2]) / K[0, 0] * depth
        y = (uv[..., 1] - K[1, 2]) / K[1, 1] * depth
        cam = np.stack([x, y, depth], axis=-1)
        E = self.extrinsics()
        world = (cam - E[:3, 3]) @ E[:3, :3]  # R^T (c - t), row vectors
        return world * self.scale

    def linearize_depth(self, zbuffer: np.ndarray) -> np.ndarray:
        """PyBullet's non-linear depth buffer in ``[0, 1]`` -> metric depth along the optical axis (metres)."""
        n, f = self.near, self.far
        return (f * n / (f - (f - n) * np.asarray(zbuffer, dtype=np.float64))).astype(np.float32)

    # --- metadata -------------------------------------------------------------------------------------------
    def to_meta(self) -> dict[str, Any]:
        """JSON-serialisable description, including the derived matrices (for readers outside this package)."""
        out: dict[str, Any] = {k: (list(v) if isinstance(v, tuple) else v) for k, v in asdict(self).items()}
        out["intrinsics"] = self.intrinsics().tolist()
        out["extrinsics_world_to_camera_opencv"] = self.extrinsics().tolist()
        out["view_matrix_opengl"] = self.view_matrix().tolist()
        out["projection_matrix_opengl"] = self.projection_matrix().tolist()
        out["pixel_convention"] = "(u, v) = (column, row); pixel centres at integer + 0.5"
        out["depth_units"] = "metres along the optical axis"
        return out

    @classmethod
    def from_meta(cls, meta: dict[str, Any], source: str | None = None) -> Camera:
        """Rebuild a camera from :meth:`to_meta` output (InputError when fields are missing or invalid)."""
        keys = ("width", "height", "eye", "target", "up", "fov", "near", "far", "scale")
        if not isinstance(meta, dict):
            raise InputError("camera metadata is not a JSON object", source=source, field="camera")
        missing = [k for k in keys if k not in meta]
        if missing:
            raise InputError(f"camera metadata lacks {', '.join(missing)}", source=source, field="camera")
        try:
            return cls(width=int(meta["width"]), height=int(meta["height"]),
                       eye=tuple(float(x) for x in meta["eye"]),  # type: ignore[arg-type]
                       target=tuple(float(x) for x in meta["target"]),  # type: ignore[arg-type]
                       up=tuple(float(x) for x in meta["up"]),  # type: ignore[arg-type]
                       fov=float(meta["fov"]), near=float(meta["near"]), far=float(meta["far"]),
                       scale=float(meta["scale"]))
        except InputError as exc:
            raise InputError(f"invalid camera metadata ({exc})", source=source, field="camera") from None
        except (TypeError, ValueError, OverflowError) as exc:
            raise InputError(f"invalid camera metadata ({exc})", source=source, field="camera") from None


def _quiet_pybullet() -> Any:
    """``import pybullet`` without the build-time banner its C extension writes to the process's stderr on import
    (every visual command's output began with it)."""
    import os
    import sys

    if "pybullet" in sys.modules:
        return sys.modules["pybullet"]
    sys.stderr.flush()
    saved = os.dup(2)
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, 2)
        import pybullet
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)
    return pybullet


def default_camera(resolution: int = DEFAULT_RESOLUTION) -> Camera:
    """The fixed side camera of the visual experiments (looks at the placing workspace), square images."""
    return Camera(width=resolution, height=resolution)


# Marker colours per keypoint (RGBA), cycled when there are more keypoints.
MARKER_COLOURS = ((0.95, 0.1, 0.1, 1.0), (0.1, 0.85, 0.15, 1.0), (0.95, 0.5, 0.0, 1.0), (0.7, 0.1, 0.9, 1.0))


def _quat_from_z(direction: np.ndarray) -> list[float]:
    """Quaternion (x, y, z, w) rotating the z axis onto ``direction``."""
    d = direction / np.linalg.norm(direction)
    axis = np.cross([0.0, 0.0, 1.0], d)
    s = float(np.linalg.norm(axis))
    if s < 1e-9:
        return [0.0, 0.0, 0.0, 1.0] if d[2] > 0 else [1.0, 0.0, 0.0, 0.0]
    angle = math.atan2(s, float(d[2]))
    axis /= s
    h = angle / 2.0
    return [*(axis * math.sin(h)).tolist(), math.cos(h)]


class KukaRenderer:
    """Renders a :class:`KeypointRobot` (its URDF) with a held object on its keypoints in a static scene.

    One PyBullet DIRECT client per renderer; use it as a context manager or call :meth:`close`.

    Args:
        robot: the keypoint robot; every keypoint gets a coloured marker ball of ``marker_radius`` metres,
            consecutive keypoints on the same link are joined by a bar, and a stem joins the link origin
            to the first keypoint (the "held object").
        camera: the fixed camera.
        background: add the static background objects (table, cylinder) besides the ground plane.
    """

    def __init__(self, robot: KeypointRobot, camera: Camera | None = None, *, marker_radius: float = 0.03,
                 background: bool = True) -> None:
        import pybullet_data

        pb = _quiet_pybullet()
        self.robot = robot
        self.camera = camera if camera is not None else default_camera()
        self._pb = pb
        self._client = pb.connect(pb.DIRECT)
        cid = self._client
        pb.setAdditionalSearchPath(pybullet_data.getDataPath(), physicsClientId=cid)
        self._body = pb.loadURDF(robot.urdf, useFixedBase=True, physicsClientId=cid)
        names = {pb.getJointInfo(self._body, j, physicsClientId=cid)[1].decode(): j
                 for j in range(pb.getNumJoints(self._body, physicsClientId=cid))}
        links = {pb.getJointInfo(self._body, j, physicsClientId=cid)[12].decode(): j
                 for j in range(pb.getNumJoints(self._body, physicsClientId=cid))}
        missing = [n for n in robot.joint_names if n not in names]
        if missing:
            raise InputError(f"PyBullet model lacks joints {missing}", source=robot.urdf)
        self._joints = [names[n] for n in robot.joint_names]
        pb.loadURDF("plane.urdf", physicsClientId=cid)
        if background:
            table = pb.createVisualShape(pb.GEOM_BOX, halfExtents=[0.16, 0.22, 0.24],
                                         rgbaColor=[0.55, 0.35, 0.2, 1.0], physicsClientId=cid)
            pb.createMultiBody(baseMass=0, baseVisualShapeIndex=table, basePosition=[-0.8, -0.2, 0.24],
                               physicsClientId=cid)
            can = pb.createVisualShape(pb.GEOM_CYLINDER, radius=0.06, length=0.3, rgbaColor=[0.15, 0.25, 0.9, 1.0],
                                       physicsClientId=cid)
            pb.createMultiBody(baseMass=0, baseVisualShapeIndex=can, basePosition=[-0.25, -0.35, 0.15],
                               physicsClientId=cid)
        # The held object: one visual-only body per link that carries keypoints, moved to the link's pose.
        self._objects: list[tuple[int, int]] = []  # (body id, pybullet link index or -1 for the base)
        groups: dict[str, list[int]] = {}
        for i, spec in enumerate(robot.specs):
            groups.setdefault(spec.link, []).append(i)
        for link, idx in groups.items():
            if link not in links and link != pb.getBodyInfo(self._body, physicsClientId=cid)[0].decode():
                raise InputError(f"PyBullet model lacks link '{link}'", source=robot.urdf, field="keypoint_links")
            offs = [np.asarray(robot.specs[i].offset, dtype=np.float64) for i in idx]
            types, radii, lengths, colours, positions, orients = [], [], [], [], [], []
            for i, off in zip(idx, offs, strict=True):
                types.append(pb.GEOM_SPHERE)
                radii.append(marker_radius)
                lengths.append(0.0)
                colours.append(list(MARKER_COLOURS[i % len(MARKER_COLOURS)]))
                positions.append(off.tolist())
                orients.append([0.0, 0.0, 0.0, 1.0])
            segments = [(np.zeros(3), offs[0], [0.5, 0.5, 0.5, 1.0], 0.012)]
            segments += [(a, b, [0.95, 0.85, 0.1, 1.0], 0.011) for a, b in zip(offs[:-1], offs[1:], strict=True)]
            for a, b, colour, radius in segments:
                length = float(np.linalg.norm(b - a))
                if length < 1e-4:
                    continue
                types.append(pb.GEOM_CYLINDER)
                radii.append(radius)
                lengths.append(length)
                colours.append(colour)
                positions.append(((a + b) / 2).tolist())
                orients.append(_quat_from_z(b - a))
            shape = pb.createVisualShapeArray(shapeTypes=types, radii=radii, lengths=lengths, rgbaColors=colours,
                                              visualFramePositions=positions, visualFrameOrientations=orients,
                                              physicsClientId=cid)
            body = pb.createMultiBody(baseMass=0, baseVisualShapeIndex=shape, physicsClientId=cid)
            self._objects.append((body, links.get(link, -1)))
        self._view = self.camera.view_matrix().T.flatten().tolist()  # PyBullet wants column-major
        self._proj = self.camera.projection_matrix().T.flatten().tolist()

    def set_joints(self, q: np.ndarray) -> None:
        pb, cid = self._pb, self._client
        for j, value in zip(self._joints, np.asarray(q, dtype=np.float64).tolist(), strict=True):
            pb.resetJointState(self._body, j, value, physicsClientId=cid)
        for body, link in self._objects:
            if link < 0:
                pos, orn = pb.getBasePositionAndOrientation(self._body, physicsClientId=cid)
            else:
                state = pb.getLinkState(self._body, link, computeForwardKinematics=True, physicsClientId=cid)
                pos, orn = state[4], state[5]  # the URDF link frame (not the inertial frame)
            pb.resetBasePositionAndOrientation(body, pos, orn, physicsClientId=cid)

    def render(self, q: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Image ``(H, W, 3)`` uint8 and metric depth ``(H, W)`` float32 (metres) at joints ``q``."""
        if np.shape(q) != (self.robot.n_joints,) or not np.isfinite(q).all():
            raise InputError(f"expected {self.robot.n_joints} finite joint values, got shape {np.shape(q)}",
                             field="q")
        self.set_joints(q)
        pb, cam = self._pb, self.camera
        _, _, rgba, zbuf, _ = pb.getCameraImage(cam.width, cam.height, self._view, self._proj,
                                                renderer=pb.ER_TINY_RENDERER, physicsClientId=self._client)
        rgb = np.asarray(rgba, dtype=np.uint8).reshape(cam.height, cam.width, 4)[..., :3].copy()
        depth = cam.linearize_depth(np.asarray(zbuf, dtype=np.float64).reshape(cam.height, cam.width))
        return rgb, depth

    def render_many(self, qs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Render joint states ``(..., n_joints)``: images ``(..., H, W, 3)`` uint8, depths ``(..., H, W)``."""
        qs = np.asarray(qs)
        flat = qs.reshape(-1, qs.shape[-1])
        images = np.empty((len(flat), self.camera.height, self.camera.width, 3), dtype=np.uint8)
        depths = np.empty((len(flat), self.camera.height, self.camera.width), dtype=np.float32)
        for i, q in enumerate(flat):
            images[i], depths[i] = self.render(q)
        lead = qs.shape[:-1]
        return images.reshape(*lead, *images.shape[1:]), depths.reshape(*lead, *depths.shape[1:])

    def iter_render(self, qs: np.ndarray) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """Render ``(N, n_joints)`` joint states one at a time (for progress bars)."""
        for q in np.asarray(qs):
            yield self.render(q)

    def close(self) -> None:
        if self._client >= 0:
            self._pb.disconnect(self._client)
            self._client = -1

    def __enter__(self) -> KukaRenderer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:  # noqa: S110 (interpreter shutdown: pybullet may be gone already)
            pass
