"""The KUKA iiwa keypoint tasks of MBIRL (Das et al., CoRL 2020): robots and seeded demo generators.

Two built-in robots (the :data:`ROBOTS` registry): ``kuka``, PyBullet's bundled ``kuka_iiwa/model.urdf`` with two
keypoints on a held object (the default), and ``original``, the original experiment's 7-DoF iiwa7 with its
keypoint links, built from the kinematic facts written below (no file needed).

Demonstrations of :func:`generate_demos` are *reachable*: a desired keypoint path (a rigid translation of
the held object, with noise) is tracked by batched inverse kinematics, and the demonstration stores the
joint states and the keypoints the robot really reaches, ``keypoints = FK(q)``.
:func:`generate_original_placing` regenerates the official code's placing demonstrations instead (desired
keypoints, drawn from torch's random stream exactly as the original draws them).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Literal

import numpy as np
import torch

from mbirl.envs.robot import KeypointRobot, KeypointSpec
from mbirl.errors import InputError
from mbirl.registry import Registry
from mbirl.types import KeypointTrajectory

__all__ = ["DEFAULT_KEYPOINTS", "DEFAULT_ROBOT", "DEMO_HORIZON", "DEMO_NOISE_CM", "ORIGINAL_KEYPOINT_LINKS",
           "REST_POSE", "ROBOTS", "default_kuka", "generate_demos", "generate_original_placing", "original_kuka",
           "original_urdf", "robot_from_options", "solve_ik"]

REST_POSE = (0.0, 0.0, 0.0, 1.57079633, 0.0, 1.03672558, 0.0)
"""Rest pose of the original experiment (radians)."""

# Two keypoints on a held object (a short bar) attached to the flange, in metres in the flange frame.
DEFAULT_KEYPOINTS = (
    KeypointSpec("lbr_iiwa_link_7", (0.0, 0.0, 0.10)),
    KeypointSpec("lbr_iiwa_link_7", (0.0, 0.06, 0.16)),
)

Task = Literal["placing", "reaching"]
DEMO_TASK: Task = "placing"
"""The demonstrated task when none is named: the original experiment's placing."""
DEMO_COUNT = 6
"""Demonstrations per file when not told otherwise: the original experiment's six placing demonstrations."""
DEMO_HORIZON = 10
"""Time steps per demonstration (states, the start included), as the original experiment."""
DEMO_NOISE_CM = 0.3
"""Per-step Gaussian noise [cm] on the desired keypoint path of reachable demonstrations."""


ROBOTS = Registry[KeypointRobot]("robot")
"""The built-in robots by name (``--robot``). Each factory takes ``keypoints`` (None: the robot's own)."""
DEFAULT_ROBOT = "kuka"
"""The robot used when none is named."""


@ROBOTS.register("kuka")
def default_kuka(keypoints: Sequence[KeypointSpec | str] | None = None) -> KeypointRobot:
    """PyBullet's bundled ``kuka_iiwa/model.urdf`` with two keypoints on a held object (or ``keypoints``)."""
    import pybullet_data

    urdf = Path(pybullet_data.getDataPath()) / "kuka_iiwa" / "model.urdf"
    return KeypointRobot(urdf, DEFAULT_KEYPOINTS if keypoints is None else keypoints, name="kuka_iiwa",
                         builtin="kuka")


# The original experiment's robot: KUKA LBR iiwa 7 R800 (the iiwa_description xacro's iiwa7), with a force-torque
# sensor flange and three keypoint links 5 cm apart along the flange's z axis. Per revolute joint (all about their
# local z axis): parent link, child link, origin xyz (m), origin rpy (rad), symmetric position limit (rad).
_ORIGINAL_REVOLUTE = (
    ("iiwa_joint_1", "iiwa_link_0", "iiwa_link_1", (0.0, 0.0, 0.15), (0.0, 0.0, 0.0), 2.9670597283903604),
    ("iiwa_joint_2", "iiwa_link_1", "iiwa_link_2", (0.0, 0.0, 0.19), (1.5707963267948966, 0.0, 3.141592653589793),
     2.0943951023931953),
    ("iiwa_joint_3", "iiwa_link_2", "iiwa_link_3", (0.0, 0.21, 0.0), (1.5707963267948966, 0.0, 3.141592653589793),
     2.9670597283903604),
    ("iiwa_joint_4", "iiwa_link_3", "iiwa_link_4", (0.0, 0.0, 0.19), (1.5707963267948966, 0.0, 0.0),
     2.0943951023931953),
    ("iiwa_joint_5", "iiwa_link_4", "iiwa_link_5", (0.0, 0.21, 0.0), (-1.5707963267948966, 3.141592653589793, 0.0),
     2.9670597283903604),
    ("iiwa_joint_6", "iiwa_link_5", "iiwa_link_6", (0.0, 0.0607, 0.19), (1.5707963267948966, 0.0, 0.0),
     2.0943951023931953),
    ("iiwa_joint_7", "iiwa_link_6", "iiwa_link_7", (0.0, 0.081, 0.0607), (-1.5707963267948966, 3.141592653589793, 0.0),
     3.0543261909900763),
)
# Fixed joints: parent link, child link, origin xyz (m) (no rotation).
_ORIGINAL_FIXED = (
    ("iiwa_joint_fts", "iiwa_link_7", "iiwa_link_fts", (0.0, 0.0, 0.036)),
    ("keypoint_1", "iiwa_link_fts", "kp_link_1", (0.0, 0.0, 0.05)),
    ("keypoint_2", "kp_link_1", "kp_link_2", (0.0, 0.0, 0.05)),
    ("keypoint_3", "kp_link_2", "kp_link_3", (0.0, 0.0, 0.05)),
)
ORIGINAL_KEYPOINT_LINKS = ("kp_link_1", "kp_link_2")
"""The original experiment's two keypoints (``kp_link_3`` exists too)."""


def original_urdf() -> str:
    """The original robot's kinematics as URDF text (links, joints, limits; no meshes or inertias)."""

    def xyz(v: tuple[float, ...]) -> str:
        return " ".join(repr(float(x)) for x in v)

    links = ["iiwa_link_0"] + [child for _, _, child, *_ in _ORIGINAL_REVOLUTE] + \
        [child for _, _, child, _ in _ORIGINAL_FIXED]
    lines = ['<?xml version="1.0"?>', '<robot name="iiwa7">']
    lines += [f'  <link name="{name}"/>' for name in links]
    for name, parent, child, origin, rpy, limit in _ORIGINAL_REVOLUTE:
        lines += [f'  <joint name="{name}" type="revolute">', f'    <parent link="{parent}"/>',
                  f'    <child link="{child}"/>', f'    <origin rpy="{xyz(rpy)}" xyz="{xyz(origin)}"/>',
                  '    <axis xyz="0 0 1"/>',
                  f'    <limit effort="300" lower="{-limit!r}" upper="{limit!r}" velocity="10"/>', "  </joint>"]
    for name, parent, child, origin in _ORIGINAL_FIXED:
        lines += [f'  <joint name="{name}" type="fixed">', f'    <parent link="{parent}"/>',
                  f'    <child link="{child}"/>', f'    <origin rpy="0 0 0" xyz="{xyz(origin)}"/>', "  </joint>"]
    return "\n".join([*lines, "</robot>", ""])


@ROBOTS.register("original")
def original_kuka(keypoints: Sequence[KeypointSpec | str] | None = None) -> KeypointRobot:
    """The original experiment's iiwa7, whose keypoints are links ``kp_link_1``, ``kp_link_2`` (or ``keypoints``).

    Built from the kinematic facts in this module; forward kinematics equal the original URDF's (in the tests).
    """
    return KeypointRobot("builtin:original", ORIGINAL_KEYPOINT_LINKS if keypoints is None else keypoints,
                         name="iiwa7_keypoints", urdf_text=original_urdf(), builtin="original")


def _links(keypoint_links: str | None) -> list[str] | None:
    if not keypoint_links:
        return None
    return [s.strip() for s in keypoint_links.split(",") if s.strip()]


def robot_from_options(robot: str = DEFAULT_ROBOT, urdf: str | Path | None = None,
                       keypoint_links: str | None = None) -> KeypointRobot:
    """Build the robot named by CLI options: a built-in ``robot`` (``kuka`` or ``original``; ``keypoint_links``
    optionally chooses some of its links as keypoints), or ``urdf`` with comma-separated ``keypoint_links``."""
    ROBOTS.check(robot)
    if urdf is None:
        return ROBOTS.make(robot, keypoints=_links(keypoint_links))
    if robot != DEFAULT_ROBOT:
        raise InputError(f"--urdf gives the robot; it cannot be combined with --robot {robot}", field="robot")
    links = _links(keypoint_links)
    if not links:
        raise InputError("--urdf needs --keypoint-links (comma-separated link names)", field="keypoint_links")
    return KeypointRobot(urdf, links, name=Path(urdf).stem)


def solve_ik(robot: KeypointRobot, targets: torch.Tensor, q_init: torch.Tensor, *, iters: int = 1000,
             lr: float = 0.03, reg: float = 1e-4) -> tuple[torch.Tensor, torch.Tensor]:
    """Batched keypoint inverse kinematics by Adam on ``||FK(q) - target||^2``, within joint limits.

    Args:
        targets: ``(..., k, 3)`` keypoint targets (robot units).
        q_init: ``(..., n_joints)`` initial joints (broadcastable); also the anchor of a small regulariser
            that keeps solutions on the same IK branch.
    Returns:
        ``(q, residual)``: joints ``(..., n_joints)`` and per-sample max keypoint error ``(...)``.
    """
    q_init = q_init.expand(*targets.shape[:-2], robot.n_joints).clone()
    q = q_init.clone().requires_grad_(True)
    opt = torch.optim.Adam([q], lr=lr)
    for _ in range(iters):
        opt.zero_grad()
        err = robot.keypoints(robot.clip(q)) - targets
        loss = err.pow(2).sum() + reg * (q - q_init).pow(2).sum()
        loss.backward()
        opt.step()
    with torch.no_grad():
        q = robot.clip(q)
        residual = (robot.keypoints(q) - targets).norm(dim=-1).amax(dim=-1)
    return q.detach(), residual


def _placing_offsets(T: int, rng: np.random.Generator, noise: float) -> np.ndarray:
    # As the original: the first half moves ≈ -20 cm in x, the second half ≈ -30 cm in z.
    dx = -20.0 + rng.normal(0.0, 1.5)
    dz = -30.0 + rng.normal(0.0, 2.0)
    h = T // 2
    off = np.zeros((T, 3))
    off[:h, 0] = np.linspace(0.0, dx, h)
    off[h:, 0] = dx
    off[h:, 2] = np.linspace(0.0, dz, T - h)
    off[1:] += rng.normal(0.0, noise, size=(T - 1, 3))
    return off


def _reaching_offsets(T: int, rng: np.random.Generator, noise: float) -> np.ndarray:
    # Mostly along x to varied goals, with small y/z components.
    goal = np.array([rng.uniform(-25.0, -8.0), rng.uniform(-4.0, 4.0), rng.uniform(-4.0, 4.0)])
    off = np.linspace(0.0, 1.0, T)[:, None] * goal[None, :]
    off[1:] += rng.normal(0.0, noise, size=(T - 1, 3))
    return off


def _start(n: int, horizon: int, robot: KeypointRobot | None, start_q: tuple[float, ...]
           ) -> tuple[KeypointRobot, torch.Tensor, torch.Tensor]:
    """Validate a generator's sizes and start pose; return the robot, ``q0`` and its keypoints ``(k, 3)``."""
    if n < 1 or horizon < 2:
        raise InputError(f"need n >= 1 and horizon >= 2, got n={n}, horizon={horizon}", field="n")
    robot = robot if robot is not None else ROBOTS.make(DEFAULT_ROBOT)
    if len(start_q) != robot.n_joints:
        raise InputError(f"start pose has {len(start_q)} joints, robot has {robot.n_joints}", field="start_q")
    q0 = torch.tensor(start_q, dtype=torch.float32)
    with torch.no_grad():
        z0 = robot.keypoints(q0)
    return robot, q0, z0


def generate_demos(task: Task, n: int, *, seed: int = 0, horizon: int = DEMO_HORIZON,
                   robot: KeypointRobot | None = None, start_q: tuple[float, ...] = REST_POSE,
                   noise: float = DEMO_NOISE_CM, max_residual: float = 2.0) -> list[KeypointTrajectory]:
    """Seeded, reachable demonstrations of ``task`` ("placing" or "reaching").

    The held object is translated rigidly along the task's path (plus Gaussian noise of ``noise`` cm per
    step); inverse kinematics finds the joint states, and the stored keypoints are ``FK(q)``.
    Raises InputError if the IK residual exceeds ``max_residual`` cm (the path is not reachable).
    """
    if task not in ("placing", "reaching"):
        raise InputError(f"unknown task '{task}' (expected placing or reaching)", field="task")
    robot, q0, z0 = _start(n, horizon, robot, start_q)
    rng = np.random.default_rng(seed)
    make = _placing_offsets if task == "placing" else _reaching_offsets
    offsets = np.stack([make(horizon, rng, noise) for _ in range(n)])  # (n, T, 3)
    targets = z0[None, None] + torch.as_tensor(offsets, dtype=torch.float32)[:, :, None, :]
    q, residual = solve_ik(robot, targets, q0)
    q[:, 0] = q0
    worst = float(residual[:, 1:].max())
    if worst > max_residual:
        raise InputError(f"{task} path not reachable by {robot.name}: IK residual {worst:.2f} cm", field="task")
    with torch.no_grad():
        keypoints = robot.keypoints(q)
    return [
        KeypointTrajectory(start_q=q0.numpy().copy(), keypoints=keypoints[i].numpy(), q=q[i].numpy())
        for i in range(n)
    ]


def generate_original_placing(n: int, *, seed: int = 0, horizon: int = DEMO_HORIZON, robot: KeypointRobot | None = None,
                              start_q: tuple[float, ...] = REST_POSE) -> list[KeypointTrajectory]:
    """The official MBIRL code's placing demonstrations (its ``generate_expert_demo.py``), regenerated.

    Every keypoint is translated by ``dx = -20 + N(0, 1)`` cm in x along the first half of the horizon
    (``linspace`` from the start, the start included), then held there while it moves ``dz = -30 + N(0, 1)`` cm
    in z along the second half. ``dx`` and ``dz`` come from ``torch.randn`` on a generator seeded with
    ``seed``, in the original's order (dx, then dz, per demonstration), in float32: with the original's robot
    (:func:`original_kuka`, ``--robot original``) and ``seed=0`` this is its ``traj_data_placing.pt``. The
    keypoints are the desired ones, not tracked by IK (they are a rigid translation of the start keypoints, which
    both built-in robots reach to within 1 cm), and no joint states are stored. There is no per-step noise: all
    randomness is in the two offsets.
    """
    _, q0, z0 = _start(n, horizon, robot, start_q)
    gen = torch.Generator().manual_seed(seed)
    h = horizon // 2
    demos = []
    for _ in range(n):
        dx = -20.0 + torch.randn(1, generator=gen)[0]
        dz = -30.0 + torch.randn(1, generator=gen)[0]
        z = z0.expand(horizon, -1, -1).clone()
        z[:h, :, 0] = z0[:, 0] + torch.linspace(0.0, 1.0, h)[:, None] * dx
        z[h:, :, 0] = z0[:, 0] + dx
        z[h:, :, 2] = z0[:, 2] + torch.linspace(0.0, 1.0, horizon - h)[:, None] * dz
        demos.append(KeypointTrajectory(start_q=q0.numpy().copy(), keypoints=z.numpy()))
    return demos
