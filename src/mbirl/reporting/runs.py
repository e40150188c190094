"""Shared run-directory mechanics: resuming from the last checkpoint and the RNG states it carries.

Every long-running command uses these, so each gets the same guarantees: a run directory is never
silently overwritten, ``--resume`` refuses a changed configuration, and python/numpy/torch RNG states
travel with the checkpoint so a resumed run continues exactly as an uninterrupted one.
"""

from __future__ import annotations

import ast
import random
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from mbirl.errors import InputError
from mbirl.reporting.checkpoint import load_checkpoint

__all__ = ["checkpoint_stem", "open_for_resume", "rng_state", "set_rng_state"]


def checkpoint_stem(run_dir: str | Path) -> Path:
    """Where a run keeps its last checkpoint: ``run_dir/checkpoints/last``."""
    return Path(run_dir) / "checkpoints" / "last"


def open_for_resume(run_dir: str | Path, config: dict[str, Any], *, resume: bool,
                    may_change: Iterable[str] = (), defaults: dict[str, Any] | None = None) -> dict[str, Any] | None:
    """The state to resume from, or None for a fresh run.

    Raises InputError when ``run_dir`` already holds a run and ``resume`` is false (nothing is lost), or when
    the saved configuration differs from ``config`` in a key outside ``may_change`` (e.g. the iteration count).
    A key the saved run predates (added to the configuration later) counts as its value in ``defaults``.
    """
    stem = checkpoint_stem(run_dir)
    if not stem.with_suffix(".json").exists():
        return None
    if not resume:
        raise InputError("run directory already holds a run; pass --resume to continue it or choose another "
                         "--run-dir", source=str(run_dir))
    state = load_checkpoint(stem)
    saved = state.get("config", {})
    if not isinstance(saved, dict):
        raise InputError("checkpoint has no configuration", source=str(stem.with_suffix(".json")), field="config")
    allowed = set(may_change)
    missing = object()
    fallback = defaults or {}
    mismatched = [k for k, v in config.items()
                  if k not in allowed and saved.get(k, fallback.get(k, missing)) != v]
    if mismatched:
        raise InputError(f"--resume with a different configuration ({', '.join(mismatched)})",
                         source=str(stem.with_suffix(".json")))
    return state


def rng_state() -> dict[str, Any]:
    """Python, numpy (global) and torch RNG states, in checkpointable form (tensors + JSON values)."""
    np_state: Any = np.random.get_state()  # noqa: NPY002 (the global RNG any library code may use)
    return {
        "python": repr(random.getstate()),
        "numpy": {"keys": torch.as_tensor(np_state[1].astype(np.int64)), "pos": int(np_state[2]),
                  "has_gauss": int(np_state[3]), "cached": float(np_state[4])},
        "torch": torch.get_rng_state(),
    }


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore what :func:`rng_state` captured."""
    try:
        py = ast.literal_eval(state["python"])  # a literal tuple of ints; never evaluated as code
        random.setstate((py[0], tuple(py[1]), py[2]))
        n = state["numpy"]
        np.random.set_state(("MT19937", n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"],  # noqa: NPY002
                             n["cached"]))
        torch.set_rng_state(state["torch"].to(torch.uint8))
    except (KeyError, TypeError, ValueError, SyntaxError, IndexError, RuntimeError) as exc:
        raise InputError(f"checkpoint RNG state is invalid ({type(exc).__name__})", field="rng") from None
