"""Shared fixtures: single-threaded torch, one session-wide set of placing demos, the original URDF file."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

torch.set_num_threads(1)

FIXTURE_URDF = Path(__file__).resolve().parents[2] / "shared" / "fixtures" / "iiwa7_keypoints.urdf"


@pytest.fixture(scope="session")
def placing_demos():
    """Six seeded placing demonstrations on the default KUKA (generated once per session)."""
    import mbirl.envs

    return mbirl.envs.generate_demos("placing", 6, seed=0)


@pytest.fixture(scope="session")
def original_robot():
    """The original experiment's iiwa7 with keypoint links ``kp_link_1``, ``kp_link_2`` (built in, no file)."""
    import mbirl.envs

    return mbirl.envs.original_kuka()


@pytest.fixture(scope="session")
def fixture_urdf() -> Path:
    """The original MBIRL iiwa7 URDF file (outside this repository: tests that compare against it skip without
    it; everything else uses the built-in :func:`mbirl.envs.original_kuka`)."""
    if not FIXTURE_URDF.is_file():
        pytest.skip(f"fixture URDF not found at {FIXTURE_URDF}")
    return FIXTURE_URDF
