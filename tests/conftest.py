"""Shared fixtures: single-threaded torch, SIGINT / SIGTERM at their defaults, one session-wide set of placing demos,
the original URDF file."""

from __future__ import annotations

import signal
from pathlib import Path

import pytest
import torch

torch.set_num_threads(1)


@pytest.fixture(scope="session", autouse=True)
def _signals_not_ignored():
    """pytest started with SIGINT / SIGTERM ignored (a background job of a script, nohup): the signal tests need
    the defaults, in this process and in the commands it spawns (an ignored signal is inherited across exec, and
    mbirl keeps an ignored signal ignored)."""
    if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
        signal.signal(signal.SIGINT, signal.default_int_handler)
    if signal.getsignal(signal.SIGTERM) is signal.SIG_IGN:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)

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
