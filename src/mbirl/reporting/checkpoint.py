"""Checkpoints as safetensors (tensors) + JSON (everything else), written atomically.

A checkpoint ``<stem>`` is two files, ``<stem>.safetensors`` and ``<stem>.json``; the JSON is written
last and records the SHA-256 of the tensor file, so a reader never pairs a new JSON with an old or
partial tensor file. Nothing is pickled.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import torch

from mbirl.errors import InputError
from mbirl.fileio import write_bytes_atomic, write_json_atomic

__all__ = ["flatten_state", "load_checkpoint", "save_checkpoint", "unflatten_state", "write_bytes_atomic",
           "write_json_atomic"]


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
        if obj is None or isinstance(obj, (bool, int, float, str)):
            return obj
        raise TypeError(f"cannot checkpoint value of type {type(obj).__name__} at '{key}'")

    return tensors, walk(state, prefix or "s")


def unflatten_state(skeleton: Any, tensors: dict[str, torch.Tensor]) -> Any:
    if isinstance(skeleton, dict) and "__tensor__" in skeleton:
        return tensors[skeleton["__tensor__"]]
    if isinstance(skeleton, dict) and "__dict__" in skeleton:
        return {k: unflatten_state(v, tensors) for k, v in skeleton["__dict__"]}
    if isinstance(skeleton, list):
        return [unflatten_state(v, tensors) for v in skeleton]
    return skeleton


def save_checkpoint(stem: str | Path, state: dict[str, Any]) -> None:
    """Save a nested state dict (tensors + JSON values) as ``stem.safetensors`` + ``stem.json``."""
    from safetensors.torch import save

    stem = Path(stem)
    tensors, skeleton = flatten_state(state)
    blob = save(tensors) if tensors else save({"__empty__": torch.zeros(0)})
    tensor_path = stem.with_suffix(".safetensors")
    write_bytes_atomic(tensor_path, blob)
    meta = {"format": "mbirl.checkpoint/v1", "sha256": hashlib.sha256(blob).hexdigest(), "state": skeleton}
    write_json_atomic(stem.with_suffix(".json"), meta)


def load_checkpoint(stem: str | Path) -> dict[str, Any]:
    """Load a checkpoint saved by :func:`save_checkpoint`; InputError if missing, corrupt or mismatched."""
    from safetensors.torch import load

    stem = Path(stem)
    json_path, tensor_path = stem.with_suffix(".json"), stem.with_suffix(".safetensors")
    for p in (json_path, tensor_path):
        if not p.is_file():
            raise InputError("checkpoint file not found", source=str(p))
    try:
        meta = json.loads(json_path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise InputError(f"invalid checkpoint JSON ({exc})", source=str(json_path)) from None
    if not isinstance(meta, dict) or meta.get("format") != "mbirl.checkpoint/v1" or "state" not in meta:
        raise InputError("not an mbirl checkpoint", source=str(json_path), field="format")
    blob = tensor_path.read_bytes()
    if hashlib.sha256(blob).hexdigest() != meta.get("sha256"):
        raise InputError("tensor file does not match its JSON (checksum)", source=str(tensor_path))
    try:
        tensors = load(blob)
    except Exception as exc:
        raise InputError(f"unreadable safetensors ({exc})", source=str(tensor_path)) from None
    try:
        state = unflatten_state(meta["state"], tensors)
    except (KeyError, TypeError, ValueError) as exc:
        raise InputError(f"checkpoint structure is inconsistent ({exc})", source=str(json_path)) from None
    if not isinstance(state, dict):
        raise InputError("checkpoint state is not a mapping", source=str(json_path))
    return state
