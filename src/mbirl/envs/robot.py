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


class KeypointRobot(torch.nn.Module):
    """A fixed-base robot whose state is its joint vector and whose observation is k 3-D keypoints.

    Args:
        urdf: path to the URDF file.
        keypoints: the keypoints, as :class:`KeypointSpec` or link names.
        scale: factor applied to positions (100: metres to centimetres).
        name: a short name used in metadata and figures.
    """

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
        unique = sorted({s.link for s in specs}, key=[s.link for s in specs].index)
        self._links = unique
        self._frame_indices = self.chain.get_frame_indices(*unique)
        self._link_of = [unique.index(s.link) for s in specs]

    @property
    def n_joints(self) -> int:
        return len(self.joint_names)

    @property
    def n_keypoints(self) -> int:
        return len(self.specs)

    def _apply(self, fn, recurse=True):  # type: ignore[no-untyped-def,override]
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
        frames = self.chain.forward_kinematics(flat, frame_indices=self._frame_indices)
        mats = torch.stack([frames[link].get_matrix() for link in self._links], dim=1)  # (N, L, 4, 4)
        mats = mats[:, self._link_of]  # (N, k, 4, 4)
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
