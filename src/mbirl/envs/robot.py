"""Differentiable keypoint forward kinematics for any URDF robot (via pytorch-kinematics).

A keypoint is either a named link of the URDF (e.g. a fixed-joint child of the end effector)
or a fixed offset expressed in a link's frame. Positions are returned in centimetres by default,
as in the original MBIRL experiments.
"""

from __future__ import annotations

import contextlib
import io
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from mbirl.errors import InputError

__all__ = ["KeypointRobot", "KeypointSpec"]


@dataclass(frozen=True)
class KeypointSpec:
    """A keypoint: the origin of ``link`` moved by ``offset`` (metres, in the link's frame)."""

    link: str
    offset: tuple[float, float, float] = (0.0, 0.0, 0.0)


def _build_chain(urdf: str | Path):  # type: ignore[no-untyped-def]
    import pytorch_kinematics as pk

    path = Path(urdf)
    if not path.is_file():
        raise InputError("URDF file not found", source=str(path))
    data = path.read_bytes()
    # The URDF parser prints a warning for every tag it does not know (materials, contacts, ...).
    sink = io.StringIO()
    logging.getLogger("pytorch_kinematics").setLevel(logging.ERROR)
    try:
        with contextlib.redirect_stdout(sink), contextlib.redirect_stderr(sink):
            return pk.build_chain_from_urdf(data)
    except Exception as exc:
        raise InputError(f"cannot parse URDF ({type(exc).__name__}: {exc})", source=str(path)) from None


class _SerialKeypointFK(torch.nn.Module):
    """Lean forward kinematics for keypoints that hang rigidly off one serial joint sequence.

    With ``S`` the chain's constant frame offsets and ``J_j(q_j)`` the joint motions, every keypoint is
    ``P_0 J_1(q_1) P_1 ... J_n(q_n) c_k``. Constants between joints are folded together, and a revolute
    joint is Rodrigues' formula ``R = I + sin(q) K + (1 - cos(q)) K^2``, so each joint costs a few batched
    products; this is several times cheaper than a general tree traversal, and all of it is plain
    (twice-differentiable) autograd.
    """

    rot_c: torch.Tensor
    rot_s: torch.Tensor
    rot_1c: torch.Tensor
    pos_c: torch.Tensor
    pos_s: torch.Tensor
    pos_1c: torch.Tensor
    axes: torch.Tensor
    head_R: torch.Tensor
    head_p: torch.Tensor
    tails: torch.Tensor

    def __init__(self, segments: list[tuple[int, str, torch.Tensor, torch.Tensor]], head: torch.Tensor,
                 tails: torch.Tensor) -> None:
        super().__init__()
        self.joint_index = [j for j, _, _, _ in segments]
        self.prismatic = [kind == "prismatic" for _, kind, _, _ in segments]
        # Per joint j, the motion J_j followed by the constant P_j: rotation and translation terms.
        rot_c, rot_s, rot_1c, pos_c, pos_s, pos_1c, axes = [], [], [], [], [], [], []
        for _, kind, axis, after in segments:
            K = torch.tensor([[0.0, -axis[2], axis[1]], [axis[2], 0.0, -axis[0]], [-axis[1], axis[0], 0.0]],
                             dtype=head.dtype)
            R, p = after[:3, :3], after[:3, 3]
            if kind == "prismatic":
                K = torch.zeros_like(K)
            rot_c.append(R)
            rot_s.append(K @ R)
            rot_1c.append(K @ K @ R)
            pos_c.append(p)
            pos_s.append(K @ p)
            pos_1c.append(K @ K @ p)
            axes.append(axis.to(head.dtype))
        self.register_buffer("rot_c", torch.stack(rot_c))
        self.register_buffer("rot_s", torch.stack(rot_s))
        self.register_buffer("rot_1c", torch.stack(rot_1c))
        self.register_buffer("pos_c", torch.stack(pos_c))
        self.register_buffer("pos_s", torch.stack(pos_s))
        self.register_buffer("pos_1c", torch.stack(pos_1c))
        self.register_buffer("axes", torch.stack(axes))
        self.register_buffer("head_R", head[:3, :3].clone())
        self.register_buffer("head_p", head[:3, 3].clone())
        self.register_buffer("tails", tails)  # (k, 3): keypoints in the last joint's frame

    def forward(self, q: torch.Tensor) -> torch.Tensor:
        N = q.shape[0]
        R = self.head_R.expand(N, 3, 3)
        p = self.head_p.expand(N, 3)
        for i, j in enumerate(self.joint_index):
            theta = q[:, j, None, None]
            if self.prismatic[i]:
                A = self.rot_c[i].expand(N, 3, 3)
                b = self.pos_c[i] + theta[:, :, 0] * self.axes[i]
            else:
                s, c1 = torch.sin(theta), 1.0 - torch.cos(theta)
                A = self.rot_c[i] + s * self.rot_s[i] + c1 * self.rot_1c[i]
                b = self.pos_c[i] + s[:, :, 0] * self.pos_s[i] + c1[:, :, 0] * self.pos_1c[i]
            p = p + (R @ b.unsqueeze(-1)).squeeze(-1)
            R = R @ A
        return torch.einsum("nij,kj->nki", R, self.tails) + p.unsqueeze(1)


def _serial_fk(chain, frames: list[int], offsets: torch.Tensor) -> _SerialKeypointFK | None:  # type: ignore[no-untyped-def]
    """Build the lean FK when all keypoints share their joint sequence; None otherwise."""
    parents = chain._direct_parent_idx.tolist()
    types = chain.joint_type_indices.tolist()
    joints = chain._joint_indices_clamped.tolist()
    static = chain._static_offsets.to(torch.float64)
    axes = chain.axes.to(torch.float64)
    plans = []
    for f in frames:
        path = []
        while f >= 0:
            path.append(f)
            f = parents[f]
        pending = torch.eye(4, dtype=torch.float64)
        consts, segs = [], []
        for g in reversed(path):
            pending = pending @ static[g]
            if types[g] in (1, 2):
                consts.append(pending)
                segs.append((joints[g], "revolute" if types[g] == 1 else "prismatic"))
                pending = torch.eye(4, dtype=torch.float64)
        plans.append((consts, segs, pending))
    consts0, segs0, _ = plans[0]
    for consts, segs, _ in plans[1:]:
        if segs != segs0 or any(not torch.allclose(a, b) for a, b in zip(consts, consts0, strict=True)):
            return None
    if not segs0:
        return None
    tails = []
    for (_, _, tail), off in zip(plans, offsets.to(torch.float64), strict=True):
        tails.append(tail[:3, :3] @ off + tail[:3, 3])
    afters = [*consts0[1:], torch.eye(4, dtype=torch.float64)]
    segments = [(j, kind, axes[j], after) for (j, kind), after in zip(segs0, afters, strict=True)]
    fk = _SerialKeypointFK(segments, consts0[0], torch.stack(tails))
    return fk.float()


class KeypointRobot(torch.nn.Module):
    """A fixed-base robot whose state is its joint vector and whose observation is k 3-D keypoints.

    Args:
        urdf: path to the URDF file.
        keypoints: the keypoints, as :class:`KeypointSpec` or link names.
        scale: factor applied to positions (100: metres to centimetres).
        name: a short name used in metadata and figures.
    """

    lower: torch.Tensor
    upper: torch.Tensor
    offsets: torch.Tensor
    serial_fk: _SerialKeypointFK | None

    def __init__(self, urdf: str | Path, keypoints: Sequence[KeypointSpec | str], *, scale: float = 100.0,
                 name: str = "robot") -> None:
        super().__init__()
        if not keypoints:
            raise InputError("need at least one keypoint", field="keypoints")
        self.urdf = str(urdf)
        self.name = name
        self.scale = float(scale)
        self.chain = _build_chain(urdf)
        specs = [KeypointSpec(k) if isinstance(k, str) else k for k in keypoints]
        links = self.chain.get_link_names()
        for spec in specs:
            if spec.link not in links:
                raise InputError(f"unknown link '{spec.link}'; the URDF has: {', '.join(links)}",
                                 source=self.urdf, field="keypoint_links")
        self.specs = tuple(specs)
        self.joint_names = list(self.chain.get_joint_parameter_names())
        lower, upper = self.chain.get_joint_limits()
        self.register_buffer("lower", torch.as_tensor(lower, dtype=torch.float32))
        self.register_buffer("upper", torch.as_tensor(upper, dtype=torch.float32))
        self.register_buffer("offsets", torch.tensor([s.offset for s in specs], dtype=torch.float32))
        self._keypoint_frames = self.chain.get_frame_indices(*[s.link for s in specs])
        self.serial_fk = _serial_fk(self.chain, self._keypoint_frames.tolist(), self.offsets)

    @property
    def n_joints(self) -> int:
        return len(self.joint_names)

    @property
    def n_keypoints(self) -> int:
        return len(self.specs)

    def _apply(self, fn, recurse=True):  # type: ignore[no-untyped-def]
        # Keep the kinematic chain on the same device/dtype as the buffers.
        out = super()._apply(fn, recurse)
        probe = fn(torch.zeros(1))
        self.chain = self.chain.to(dtype=probe.dtype, device=probe.device)
        return out

    def clip(self, q: torch.Tensor) -> torch.Tensor:
        """Clamp joint values to the URDF limits."""
        return torch.maximum(torch.minimum(q, self.upper), self.lower)

    def keypoints(self, q: torch.Tensor) -> torch.Tensor:
        """Keypoint positions for joint vectors ``q`` of shape ``(..., n_joints)``: ``(..., k, 3)``."""
        if q.shape[-1] != self.n_joints:
            raise InputError(f"expected {self.n_joints} joint values, got shape {tuple(q.shape)}", field="q")
        batch = q.shape[:-1]
        flat = q.reshape(-1, self.n_joints)
        if self.serial_fk is not None:
            return (self.serial_fk(flat) * self.scale).reshape(*batch, self.n_keypoints, 3)
        return self.tree_keypoints(q)

    def tree_keypoints(self, q: torch.Tensor) -> torch.Tensor:
        """Keypoints via pytorch-kinematics' general tree FK (the reference for the lean serial path)."""
        batch = q.shape[:-1]
        flat = q.reshape(-1, self.n_joints)
        # Plain autograd, not pytorch-kinematics' analytical backward: that backward is not itself
        # differentiable (its Hessian is zero), and the bi-level gradient through K >= 2 inner steps needs
        # second derivatives of the kinematics.
        frames = self.chain.forward_kinematics_tensor(flat, analytical_grad=False)  # (F, N, 4, 4)
        mats = frames[self._keypoint_frames].transpose(0, 1)  # (N, k, 4, 4)
        pos = mats[..., :3, 3] + (mats[..., :3, :3] @ self.offsets.unsqueeze(-1)).squeeze(-1)
        return (pos * self.scale).reshape(*batch, self.n_keypoints, 3)

    def describe(self) -> dict[str, object]:
        """JSON-serialisable description, stored in demo files and run configs."""
        return {
            "name": self.name,
            "urdf": self.urdf,
            "keypoints": [{"link": s.link, "offset": list(s.offset)} for s in self.specs],
            "scale": self.scale,
            "joint_names": self.joint_names,
        }
