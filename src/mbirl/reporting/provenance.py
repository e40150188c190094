"""Where a run came from: the package version, the git commit of the code when it is a checkout, the command line
and the real names of the components it was built from (``run.json`` beside ``config.json``)."""

from __future__ import annotations

import shlex
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from mbirl.fileio import write_json_atomic

__all__ = ["RUN_INFO", "component_name", "git_commit", "provenance", "record_provenance"]

RUN_INFO = "run.json"
"""The provenance file of a run directory."""


def component_name(obj: Any) -> str:
    """``module.QualName`` of ``obj``'s class: what a run records for a cost, model or discriminator (a user's own
    class keeps its own name, never the name of the configured default)."""
    cls = obj if isinstance(obj, type) else type(obj)
    return f"{cls.__module__}.{cls.__qualname__}"


def git_commit() -> dict[str, Any] | None:
    """The commit (and whether the tree has changes) of the git checkout the package is imported from; None when
    it is not a checkout (an installed wheel) or git is missing."""
    here = Path(__file__).resolve().parent
    package = here.parent
    try:
        top = subprocess.run(["git", "-C", str(here), "rev-parse", "--show-toplevel"], capture_output=True, text=True,
                             timeout=5, check=True).stdout.strip()
        if not top or Path(top).resolve() / "src" / "mbirl" != package:
            return None  # installed inside some other repository (a user's project): not this code's commit
        head = subprocess.run(["git", "-C", str(here), "rev-parse", "HEAD"], capture_output=True, text=True,
                              timeout=5, check=True).stdout.strip()
        status = subprocess.run(["git", "-C", str(here), "status", "--porcelain", "--untracked-files=no"],
                                capture_output=True, text=True, timeout=5, check=True).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    return {"commit": head, "dirty": bool(status.strip())} if head else None


def provenance(components: dict[str, str] | None = None) -> dict[str, Any]:
    """This process's provenance: ``mbirl_version``, ``git`` (None outside a checkout), ``command`` (the command
    line), ``python``, ``torch``, ``time`` (UTC) and ``components`` (role -> :func:`component_name`)."""
    import torch

    from mbirl import __version__

    return {
        "mbirl_version": __version__, "git": git_commit(), "command": shlex.join(sys.argv),
        "python": sys.version.split()[0], "torch": torch.__version__,
        "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "components": dict(components or {}),
    }


def record_provenance(run_dir: str | Path, components: dict[str, str] | None = None) -> None:
    """Write ``run_dir/run.json``: the first invocation's :func:`provenance`, each later one (a ``--resume``)
    appended under ``resumed``."""
    import json

    path = Path(run_dir) / RUN_INFO
    now = provenance(components)
    try:
        old = json.loads(path.read_text()) if path.is_file() else None
    except (OSError, ValueError):
        old = None
    if isinstance(old, dict) and "mbirl_version" in old:
        old.setdefault("resumed", []).append(now)
        now = old
    write_json_atomic(path, now)
