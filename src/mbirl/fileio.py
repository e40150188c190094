"""Crash-safe file writes: a temporary file in the target directory, fsync, then an atomic rename."""

from __future__ import annotations

import json
import math
import os
import tempfile
from pathlib import Path
from typing import Any

__all__ = ["json_safe", "json_text", "write_bytes_atomic", "write_json_atomic", "write_text_atomic"]


def write_bytes_atomic(path: str | Path, data: bytes) -> None:
    """Write ``data`` to ``path`` so that readers see the old file or the whole new one, never a part."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        umask = os.umask(0)
        os.umask(umask)
        os.fchmod(fd, 0o666 & ~umask)  # mkstemp creates 0600; give the file the usual permissions
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def json_safe(obj: Any) -> Any:
    """``obj`` with every non-finite float (NaN, Infinity: not JSON) replaced by None (``null``), tuples as lists
    and numpy scalars as Python numbers."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [json_safe(v) for v in obj]
    item = getattr(obj, "item", None)  # numpy / torch scalars
    if callable(item) and getattr(obj, "ndim", None) == 0:
        return json_safe(item())
    return obj


def json_text(obj: Any, **kwargs: Any) -> str:
    """Valid JSON text of ``obj`` (:func:`json_safe`: non-finite numbers become ``null``, never ``NaN``)."""
    return json.dumps(json_safe(obj), allow_nan=False, **kwargs)


def write_json_atomic(path: str | Path, obj: Any) -> None:
    """Write ``obj`` as valid JSON (:func:`json_text`) atomically."""
    write_bytes_atomic(path, (json_text(obj, indent=2, sort_keys=True) + "\n").encode())


def write_text_atomic(path: str | Path, text: str) -> None:
    write_bytes_atomic(path, text.encode())
