"""The demonstrations shipped with the package (``data/demos/<env>.npz``): found in the working directory, beside a
source checkout, or where a wheel installed them (``<prefix>/share/mbirl/demos``), so the tutorials and
``--demos`` defaults work from ``pip install`` without the repository."""

from __future__ import annotations

import sys
import sysconfig
from pathlib import Path

__all__ = ["shipped_demo_names", "shipped_demos"]


def _roots() -> list[Path]:
    checkout = Path(__file__).resolve().parents[3] / "data" / "demos"
    installed = [Path(p) / "share" / "mbirl" / "demos" for p in {sysconfig.get_path("data"), sys.prefix}]
    return [Path.cwd() / "data" / "demos", checkout, *installed]


def shipped_demos(env: str) -> Path | None:
    """The shipped demonstrations of ``env`` (e.g. ``"Pendulum-v1"``), or None when there are none."""
    for root in _roots():
        path = root / f"{env}.npz"
        if path.is_file():
            return path.resolve()
    return None


def shipped_demo_names() -> list[str]:
    """The environments with shipped demonstrations."""
    return sorted({p.stem for root in _roots() for p in root.glob("*.npz")})
