"""Checkpoints as safetensors (tensors) + JSON (everything else), written crash-safely.

A checkpoint ``<stem>`` is ``<stem>.json`` plus a tensor file named by its content,
``<stem>-<sha256[:16]>.safetensors``. The tensor file is written (atomically) first, then the JSON that
names it and records its full SHA-256 replaces the old JSON atomically, and only then are older tensor
files removed. A crash at any point leaves the previous or the new checkpoint complete, never a JSON
that points at a missing or partial tensor file. Nothing is pickled.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch

from mbirl.errors import InputError
from mbirl.fileio import write_bytes_atomic, write_json_atomic
from mbirl.interrupts import deferred
from mbirl.validation import check_file, read_json

FORMAT = "mbirl.checkpoint/v2"

__all__ = ["FORMAT", "flatten_state", "load_checkpoint", "restoring", "save_checkpoint", "unflatten_state"]


def flatten_state(state: Any, prefix: str = "") -> tuple[dict[str, torch.Tensor], Any]:
    """Split a nested state (dicts/lists of tensors and JSON values) into tensors and a JSON skeleton."""
    tensors: dict[str, torch.Tensor] = {}

    def walk(obj: Any, key: str) -> Any:
        if isinstance(obj, torch.Tensor):
            tensors[key] = obj.detach().cpu().contiguous()
            return {"__tensor__": key}
        if isinstance(obj, dict):
            return {"__dict__": [[walk(k, f"{key}.k{i}") if not isinstance(k, (str, int)) else k,
                                  walk(v, f"{key}.{i}")] for i, (k, v) in enumerate(obj.items())]}
        if isinstance(obj, (list, tuple)):
            return [walk(v, f"{key}.{i}") for i, v in enumerate(obj)]
        if isinstance(obj, float) and not math.isfinite(obj):  # JSON has no NaN/Infinity: tagged, restored exactly
            return {"__float__": repr(obj)}
        if obj is None or isinstance(obj, (bool, int, float, str)):
            return obj
        raise TypeError(f"cannot checkpoint value of type {type(obj).__name__} at '{key}'")

    return tensors, walk(state, prefix or "s")


def unflatten_state(skeleton: Any, tensors: dict[str, torch.Tensor]) -> Any:
    if isinstance(skeleton, dict) and "__tensor__" in skeleton:
        return tensors[skeleton["__tensor__"]]
    if isinstance(skeleton, dict) and "__float__" in skeleton:
        if skeleton["__float__"] not in ("nan", "inf", "-inf"):
            raise ValueError(f"invalid __float__ {str(skeleton['__float__'])[:20]!r}")
        return float(skeleton["__float__"])
    if isinstance(skeleton, dict) and "__dict__" in skeleton:
        return {k: unflatten_state(v, tensors) for k, v in skeleton["__dict__"]}
    if isinstance(skeleton, list):
        return [unflatten_state(v, tensors) for v in skeleton]
    return skeleton


def save_checkpoint(stem: str | Path, state: dict[str, Any]) -> None:
    """Save a nested state dict (tensors + JSON values) as ``stem.json`` + a content-named tensor file."""
    from safetensors.torch import save

    stem = Path(stem)
    tensors, skeleton = flatten_state(state)
    blob = save(tensors) if tensors else save({"__empty__": torch.zeros(0)})
    digest = hashlib.sha256(blob).hexdigest()
    tensor_name = f"{stem.name}-{digest[:16]}.safetensors"
    with deferred():  # an interrupt waits for the checkpoint to be complete (and its old tensor file removed)
        write_bytes_atomic(stem.parent / tensor_name, blob)
        meta = {"format": FORMAT, "sha256": digest, "tensors": tensor_name, "state": skeleton}
        write_json_atomic(stem.with_suffix(".json"), meta)
        for old in stem.parent.glob(f"{stem.name}-*.safetensors"):
            if old.name != tensor_name:
                old.unlink(missing_ok=True)


def load_checkpoint(stem: str | Path) -> dict[str, Any]:
    """Load a checkpoint saved by :func:`save_checkpoint`; InputError if missing, corrupt or mismatched."""
    from safetensors.torch import load

    stem = Path(stem)
    json_path = stem.with_suffix(".json")
    meta = read_json(json_path, what="checkpoint file")
    if not isinstance(meta, dict) or meta.get("format") != FORMAT or "state" not in meta:
        raise InputError(f"not an mbirl checkpoint (expected format '{FORMAT}')", source=str(json_path),
                         field="format")
    name = meta.get("tensors")
    if not isinstance(name, str) or Path(name).name != name or not name.endswith(".safetensors"):
        raise InputError("invalid tensor file name", source=str(json_path), field="tensors")
    tensor_path = check_file(stem.parent / name, what="checkpoint tensor file")
    blob = tensor_path.read_bytes()
    if hashlib.sha256(blob).hexdigest() != meta.get("sha256"):
        raise InputError("tensor file does not match its JSON (checksum)", source=str(tensor_path))
    try:
        tensors = load(blob)
    except Exception as exc:
        raise InputError(f"unreadable safetensors ({exc})", source=str(tensor_path)) from None
    try:
        state = unflatten_state(meta["state"], tensors)
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise InputError(f"checkpoint structure is inconsistent ({type(exc).__name__}: {exc})",
                         source=str(json_path)) from None
    if not isinstance(state, dict):
        raise InputError("checkpoint state is not a mapping", source=str(json_path))
    return state


@contextmanager
def restoring(source: str | Path) -> Iterator[None]:
    """Restore a loaded checkpoint inside this block: a state that does not fit the object it is loaded into
    (missing entries, strings for counters, another model's tensors) becomes one :class:`InputError` naming
    ``source``, whichever trainer reads it."""
    try:
        yield
    except InputError:
        raise
    except (KeyError, TypeError, ValueError, RuntimeError, IndexError, AttributeError) as exc:
        raise InputError(f"checkpoint does not match this run ({type(exc).__name__}: {exc})",
                         source=str(source)) from None
