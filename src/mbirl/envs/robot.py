"""Differentiable keypoint forward kinematics for any URDF robot (via pytorch-kinematics).

A keypoint is either a named link of the URDF (e.g. a fixed-joint child of the end effector)
or a fixed offset expressed in a link's frame. Positions are returned in centimetres by default,
as in the original MBIRL experiments. :meth:`KeypointRobot.describe` records a robot in data files and
:meth:`KeypointRobot.from_description` rebuilds it.
"""

from __future__ import annotations

import contextlib
import io
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from mbirl.errors import InputError

__all__ = ["KeypointRobot", "KeypointSpec", "check_joint_limits"]


@dataclass(frozen=True)
class KeypointSpec:
    """A keypoint: the origin of ``link`` moved by ``offset`` (metres, in the link's frame)."""

    link: str
    offset: tuple[float, float, float] = (0.0, 0.0, 0.0)


def _build_chain(urdf: str | Path, text: str | None = None):  # type: ignore[no-untyped-def]
    """The pytorch-kinematics chain of the URDF file ``urdf``, or of the URDF ``text`` (``urdf`` then names it)."""
    import pytorch_kinematics as pk

    path = Path(urdf)
    if text is not None:
        data: str | bytes = text
    elif not path.is_file():
        raise InputError("URDF file not found", source=str(path))
    else:
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
    lin: torch.Tensor
    axis_local: torch.Tensor
    is_prismatic: torch.Tensor
    head: torch.Tensor
    bottom: torch.Tensor
    eye4: torch.Tensor
    tails: torch.Tensor

    BATCH_LAST_MIN = 256
    """From this many states on, :meth:`forward` uses the batch-last chain (fwd+bwd 2.2x faster at 640 states,
    3.6x at 2560; ``make bench``); below it the log-depth tree of 4x4 products has less per-call overhead."""

    def __init__(self, segments: list[tuple[int, str, torch.Tensor, torch.Tensor]], head: torch.Tensor,
                 tails: torch.Tensor) -> None:
        super().__init__()
        self.joint_index = [j for j, _, _, _ in segments]
        self.has_prismatic = any(kind == "prismatic" for _, kind, _, _ in segments)
        # Per joint j, the motion J_j followed by the constant P_j: rotation and translation terms.
        rot_c, rot_s, rot_1c, pos_c, pos_s, pos_1c, lin, axis_local = [], [], [], [], [], [], [], []
        for _, kind, axis, after in segments:
            K = torch.tensor([[0.0, -axis[2], axis[1]], [axis[2], 0.0, -axis[0]], [-axis[1], axis[0], 0.0]],
                             dtype=head.dtype)
            R, p = after[:3, :3], after[:3, 3]
            if kind == "prismatic":  # a translation along the axis, no rotation
                K = torch.zeros_like(K)
            lin.append(axis.to(head.dtype) if kind == "prismatic" else torch.zeros(3, dtype=head.dtype))
            axis_local.append(axis.to(head.dtype))
            rot_c.append(R)
            rot_s.append(K @ R)
            rot_1c.append(K @ K @ R)
            pos_c.append(p)
            pos_s.append(K @ p)
            pos_1c.append(K @ K @ p)
        self.register_buffer("rot_c", torch.stack(rot_c))
        self.register_buffer("rot_s", torch.stack(rot_s))
        self.register_buffer("rot_1c", torch.stack(rot_1c))
        self.register_buffer("pos_c", torch.stack(pos_c))
        self.register_buffer("pos_s", torch.stack(pos_s))
        self.register_buffer("pos_1c", torch.stack(pos_1c))
        self.register_buffer("lin", torch.stack(lin))
        self.register_buffer("axis_local", torch.stack(axis_local))
        self.register_buffer("is_prismatic", torch.tensor([kind == "prismatic" for _, kind, _, _ in segments]))
        self.register_buffer("head", head.clone())
        self.register_buffer("bottom", torch.tensor([0.0, 0.0, 0.0, 1.0], dtype=head.dtype))
        self.register_buffer("eye4", torch.eye(4, dtype=head.dtype))
        n = len(segments) + 1
        self.pad = (1 << (n - 1).bit_length()) - n  # identities to reach a power of two
        self.register_buffer("tails", tails)  # (k, 3): keypoints in the last joint's frame

    def _joint_motion(self, q: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Rotation ``(N, J, 3, 3)`` and translation ``(N, J, 3)`` of ``J_j(q_j) P_j`` for all joints at once."""
        theta = q[:, self.joint_index, None, None]  # (N, J, 1, 1)
        s, c1 = torch.sin(theta), 1.0 - torch.cos(theta)
        A = self.rot_c + s * self.rot_s + c1 * self.rot_1c
        b = self.pos_c + s[..., 0] * self.pos_s + c1[..., 0] * self.pos_1c
        if self.has_prismatic:
            b = b + theta[..., 0] * self.lin
        return A, b

    def _joint_transforms(self, q: torch.Tensor) -> torch.Tensor:
        """``(N, J, 4, 4)`` homogeneous ``J_j(q_j) P_j`` for all joints at once (a handful of batched ops)."""
        A, b = self._joint_motion(q)
        N, J = q.shape[0], len(self.joint_index)
        return torch.cat([torch.cat([A, b.unsqueeze(-1)], dim=-1), self.bottom.expand(N, J, 1, 4)], dim=-2)

    def _keypoints_from(self, T: torch.Tensor) -> torch.Tensor:
        return torch.einsum("nij,kj->nki", T[:, :3, :3], self.tails) + T[:, None, :3, 3]

    def forward(self, q: torch.Tensor) -> torch.Tensor:
        if q.shape[0] >= self.BATCH_LAST_MIN:
            return self.chain_last(q, frames=False)[0].permute(2, 0, 1)
        return self.tree_forward(q)

    def tree_forward(self, q: torch.Tensor) -> torch.Tensor:
        """Keypoints ``(N, k, 3)`` from the joint transforms multiplied as a log-depth tree of batched 4x4
        products (less per-call overhead than :meth:`chain_last` for small N)."""
        N = q.shape[0]
        M = self._joint_transforms(q)
        # [head, joint_1, ..., joint_J, identity padding] multiplied pairwise in a tree (log2 depth):
        # a few batched products instead of J sequential ones.
        parts = [self.head.expand(N, 1, 4, 4), M]
        if self.pad:
            parts.append(self.eye4.expand(N, self.pad, 4, 4))
        M = torch.cat(parts, dim=1)
        while M.shape[1] > 1:
            M = M[:, 0::2] @ M[:, 1::2]
        return self._keypoints_from(M[:, 0])

    def chain_last(self, q: torch.Tensor, frames: bool = True
                   ) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
        """Keypoints ``(k, 3, N)`` and, with ``frames``, every joint's world axis and origin ``(J, 3, N)``.

        Batch-last layout: each 3x3 product is a few element-wise operations over all N states at once,
        several times faster on a CPU than ``bmm`` over N tiny matrices, and so is its backward. Plain
        (twice-differentiable) autograd throughout.
        """
        theta = q[:, self.joint_index].T  # (J, N)
        s, c1 = torch.sin(theta), 1.0 - torch.cos(theta)
        A = (self.rot_c.unsqueeze(-1) + s[:, None, None] * self.rot_s.unsqueeze(-1)
             + c1[:, None, None] * self.rot_1c.unsqueeze(-1))  # (J, 3, 3, N)
        b = self.pos_c.unsqueeze(-1) + s[:, None] * self.pos_s.unsqueeze(-1) + c1[:, None] * self.pos_1c.unsqueeze(-1)
        if self.has_prismatic:
            b = b + theta[:, None] * self.lin.unsqueeze(-1)
        R = self.head[:3, :3].unsqueeze(-1)  # (3, 3, 1): broadcasts over N until the first joint
        p = self.head[:3, 3].unsqueeze(-1)  # (3, 1)
        axes, origins = [], []
        for j in range(A.shape[0]):
            if frames:
                axes.append((R * self.axis_local[j, None, :, None]).sum(1))
                origins.append(p)
            p = p + (R * b[j].unsqueeze(0)).sum(1)
            R = (R.unsqueeze(2) * A[j].unsqueeze(0)).sum(1)
        kp = (R.unsqueeze(0) * self.tails[:, None, :, None]).sum(2) + p.unsqueeze(0)  # (k, 3, N)
        if not frames:
            return kp, None, None
        N = q.shape[0]
        return kp, torch.stack([a.expand(3, N) for a in axes]), torch.stack([o.expand(3, N) for o in origins])

    def jacobian_transpose(self, kp: torch.Tensor, axes: torch.Tensor, origins: torch.Tensor,
                           dz: torch.Tensor) -> torch.Tensor:
        """``J(q)^T dz`` ``(J, N)`` for keypoint cotangents ``dz`` ``(k, 3, N)``, from :meth:`chain_last`'s output.

        Joint j moves keypoint k by ``a_j x (p_k - o_j)`` (revolute) or ``a_j`` (prismatic), so with the scalar
        triple product ``sum_k dz_k . (a_j x (p_k - o_j)) = a_j . (sum_k p_k x dz_k - o_j x sum_k dz_k)``:
        the Jacobian itself is never formed.
        """
        D = dz.sum(0)  # (3, N)
        M = _cross(kp, dz).sum(0)  # (3, N)
        dq = (axes * (M.unsqueeze(0) - _cross(origins, D.unsqueeze(0)))).sum(1)
        if self.has_prismatic:
            dq = torch.where(self.is_prismatic[:, None], (axes * D.unsqueeze(0)).sum(1), dq)
        return dq

    def forward_with_jacobian(self, q: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Keypoints ``(N, k, 3)`` and their geometric Jacobian ``(N, k, 3, J)`` in the chain's joints
        (``dp/dq_j = a_j x (p - o_j)`` revolute, ``a_j`` prismatic); differentiable."""
        kp, axes, origins = self.chain_last(q)
        assert axes is not None and origins is not None
        jac = _cross(axes.unsqueeze(0), kp.unsqueeze(1) - origins.unsqueeze(0))  # (k, J, 3, N)
        if self.has_prismatic:
            jac = torch.where(self.is_prismatic[None, :, None, None], axes.unsqueeze(0).expand_as(jac), jac)
        return kp.permute(2, 0, 1), jac.permute(3, 0, 2, 1)


def _cross(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Cross product along dimension -2 (the xyz axis of batch-last tensors), broadcasting the rest."""
    a0, a1, a2 = a.unbind(-2)
    b0, b1, b2 = b.unbind(-2)
    return torch.stack([a1 * b2 - a2 * b1, a2 * b0 - a0 * b2, a0 * b1 - a1 * b0], dim=-2)


# pytorch-kinematics attributes that _serial_fk reads. The first three are private, so pyproject.toml pins
# pytorch-kinematics to an exact version; tests/test_robot.py::test_pytorch_kinematics_private_attributes fails with
# a clear message if an upgrade renames them or changes their meaning.
PK_CHAIN_ATTRIBUTES = ("_direct_parent_idx", "_joint_indices_clamped", "_static_offsets", "joint_type_indices", "axes")


def _serial_fk(chain, frames: list[int], offsets: torch.Tensor) -> _SerialKeypointFK | None:  # type: ignore[no-untyped-def]
    """Build the lean FK when all keypoints share their joint sequence; None otherwise.

    Reads the chain's flattened tree (:data:`PK_CHAIN_ATTRIBUTES`): per frame its parent frame index, joint type
    (0 fixed, 1 revolute, 2 prismatic), joint index, constant offset ``(F, 4, 4)`` and joint axis.
    """
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
        urdf: path to the URDF file (a label when ``urdf_text`` is given).
        keypoints: the keypoints, as :class:`KeypointSpec` or link names.
        scale: factor applied to positions (100: metres to centimetres).
        name: a short name used in metadata and figures.
        urdf_text: the URDF itself (then no file is read).
        builtin: the name of the built-in robot this is (``mbirl.envs.ROBOTS``), recorded by :meth:`describe` so
            that :meth:`from_description` rebuilds it without a file.
    """

    lower: torch.Tensor
    upper: torch.Tensor
    offsets: torch.Tensor
    serial_fk: _SerialKeypointFK | None

    def __init__(self, urdf: str | Path, keypoints: Sequence[KeypointSpec | str], *, scale: float = 100.0,
                 name: str = "robot", urdf_text: str | None = None, builtin: str | None = None) -> None:
        super().__init__()
        if not keypoints:
            raise InputError("need at least one keypoint", field="keypoints")
        self.urdf = str(urdf)
        self.name = name
        self.scale = float(scale)
        self.builtin = builtin
        self.chain = _build_chain(urdf, urdf_text)
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

    def keypoints_and_jacobian(self, q: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor] | None:
        """Keypoints ``(..., k, 3)`` and ``d keypoints / d q`` ``(..., k, 3, n_joints)``, both differentiable.

        None when the robot has no serial keypoint chain (use autograd on :meth:`keypoints` instead).
        """
        if self.serial_fk is None:
            return None
        batch = q.shape[:-1]
        kp, jac = self.serial_fk.forward_with_jacobian(q.reshape(-1, self.n_joints))
        if self.serial_fk.joint_index != list(range(self.n_joints)):
            full = jac.new_zeros(*jac.shape[:-1], self.n_joints)
            full[..., self.serial_fk.joint_index] = jac
            jac = full
        k = self.n_keypoints
        return (kp * self.scale).reshape(*batch, k, 3), (jac * self.scale).reshape(*batch, k, 3, self.n_joints)

    def keypoints_and_vjp(self, q: torch.Tensor
                          ) -> tuple[torch.Tensor, Callable[[torch.Tensor], torch.Tensor]] | None:
        """Keypoints ``(..., k, 3)`` and a function ``dz (..., k, 3) -> J(q)^T dz (..., n_joints)``.

        Both are differentiable (the bi-level gradient differentiates through them). Cheaper than
        :meth:`keypoints_and_jacobian` followed by a product: the Jacobian is never formed. None when the
        robot has no serial keypoint chain.
        """
        fk = self.serial_fk
        if fk is None:
            return None
        batch, k = q.shape[:-1], self.n_keypoints
        kp, axes, origins = fk.chain_last(q.reshape(-1, self.n_joints))
        assert axes is not None and origins is not None
        N = kp.shape[-1]

        def vjp(dz: torch.Tensor) -> torch.Tensor:
            dz_last = dz.reshape(N, k, 3).permute(1, 2, 0)
            dq = fk.jacobian_transpose(kp, axes, origins, dz_last).T * self.scale  # (N, J)
            if fk.joint_index != list(range(self.n_joints)):
                full = dq.new_zeros(N, self.n_joints)
                full[:, fk.joint_index] = dq
                dq = full
            return dq.reshape(*batch, self.n_joints)

        return (kp.permute(2, 0, 1) * self.scale).reshape(*batch, k, 3), vjp

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
        """JSON-serialisable description, stored in demo files and run configs; :meth:`from_description`
        rebuilds the robot from it. A built-in robot adds ``builtin`` (its name in ``mbirl.envs.ROBOTS``)."""
        desc: dict[str, object] = {
            "name": self.name,
            "urdf": self.urdf,
            "keypoints": [{"link": s.link, "offset": list(s.offset)} for s in self.specs],
            "scale": self.scale,
            "joint_names": self.joint_names,
        }
        if self.builtin is not None:
            desc["builtin"] = self.builtin
        return desc

    @classmethod
    def from_description(cls, desc: Any, *, source: str | None = None) -> KeypointRobot:
        """Rebuild the robot that :meth:`describe` described (e.g. a data file's ``meta["robot"]``).

        A built-in robot is built by name (no file needed), any other from its ``urdf`` path. The keypoints and
        scale are the description's. InputError (naming ``source``) when the description is incomplete or invalid.
        """
        if not isinstance(desc, dict) or "keypoints" not in desc or ("urdf" not in desc and "builtin" not in desc):
            raise InputError("metadata lacks the robot description", source=source, field="robot")
        try:
            specs = [KeypointSpec(str(k["link"]), (float(k["offset"][0]), float(k["offset"][1]), float(k["offset"][2])))
                     for k in desc["keypoints"]]
            scale = float(desc.get("scale", 100.0))
            name = str(desc.get("name", "robot"))
        except (KeyError, TypeError, ValueError, IndexError) as exc:
            raise InputError(f"invalid robot description ({type(exc).__name__}: {exc})", source=source,
                             field="robot") from None
        builtin = desc.get("builtin")
        if builtin is not None:
            from mbirl.envs.kuka import ROBOTS

            if not isinstance(builtin, str) or builtin not in ROBOTS:
                raise InputError(f"unknown built-in robot {builtin!r} (expected one of {', '.join(ROBOTS.names)})",
                                 source=source, field="robot")
            robot = ROBOTS.make(builtin, keypoints=specs)
            robot.scale = scale
            return robot
        return cls(str(desc["urdf"]), specs, scale=scale, name=name)


def check_joint_limits(q: Any, robot: KeypointRobot, *, source: str | None = None, field: str = "start_q",
                       slack: float = 1e-3) -> None:
    """Refuse joint states ``(..., n_joints)`` outside ``robot``'s limits (by more than ``slack`` rad): a state the
    robot cannot be in would be clipped silently and train on something else than the data says."""
    arr = np.asarray(q, dtype=np.float64)
    lower, upper = robot.lower.double().cpu().numpy(), robot.upper.double().cpu().numpy()
    outside = (arr < lower - slack) | (arr > upper + slack)
    if outside.any():
        idx = tuple(int(i) for i in np.argwhere(outside)[0])
        j = idx[-1]
        raise InputError(f"{int(outside.any(axis=-1).sum())} joint states lie outside the robot's limits (e.g. "
                         f"joint {j} = {arr[idx]:.3g} rad, limits [{lower[j]:.3g}, {upper[j]:.3g}])", source=source,
                         field=field)

