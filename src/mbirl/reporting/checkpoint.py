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
import warnings
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

__all__ = ["FORMAT", "flatten_state", "load_checkpoint", "load_optimizer_state", "restoring", "save_checkpoint",
           "unflatten_state"]


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
def restoring(source: str | Path, what: str = "checkpoint does not match this run") -> Iterator[None]:
    """Restore a loaded checkpoint inside this block: a state that does not fit the object it is loaded into
    (missing entries, strings for counters, another model's tensors) becomes one :class:`InputError` naming
    ``source``, whichever trainer reads it; ``what`` says what was wrong. Warnings raised meanwhile are shown once
    the state is restored, and dropped with a refused one (the error says it all, in one line)."""
    with warnings.catch_warnings(record=True) as caught:
        try:
            yield
        except InputError:
            raise
        except (KeyError, TypeError, ValueError, RuntimeError, IndexError, AttributeError) as exc:
            raise InputError(f"{what} ({type(exc).__name__}: {exc})", source=str(source)) from None
    for w in caught:
        warnings.warn_explicit(w.message, w.category, w.filename, w.lineno, source=w.source)


def load_optimizer_state(optimizer: torch.optim.Optimizer, state: Any, *, scheduled: tuple[str, ...] = ("lr",)
                         ) -> None:
    """Load a checkpointed optimiser state into ``optimizer`` once it is known to fit; ValueError otherwise (one
    InputError inside :func:`restoring`).

    Torch checks only the number of groups and parameters; a state with other settings, shapes or types would be
    taken silently or fail at the next training step. So the parameter groups must name the same parameters with
    the same settings as ``optimizer``'s (the ``scheduled`` ones, which the trainer sets at every step, only of
    the same kind), every per-parameter tensor must have its parameter's shape, and a trial step with zero
    gradients must work on a copy (Adam's, AdamW's and SGD's per-parameter tensors are of their parameter's shape;
    scalars aside)."""
    import copy

    fresh = optimizer.state_dict()
    if not isinstance(state, dict) or set(state) != {"state", "param_groups"} \
            or not isinstance(state["param_groups"], list) or not isinstance(state["state"], dict):
        raise ValueError("an optimizer state has 'state' (a mapping) and 'param_groups' (a list)")
    if len(state["param_groups"]) != len(fresh["param_groups"]):
        raise ValueError(f"{len(state['param_groups'])} optimizer parameter groups, expected "
                         f"{len(fresh['param_groups'])}")
    params: dict[Any, torch.Tensor] = {}
    for saved, new, group in zip(state["param_groups"], fresh["param_groups"], optimizer.param_groups, strict=True):
        if not isinstance(saved, dict) or set(saved) != set(new) or saved["params"] != new["params"]:
            raise ValueError("optimizer parameter groups differ from this model's")
        for key, value in new.items():
            if key == "params" or (not isinstance(saved[key], torch.Tensor) and _plain(saved[key]) == _plain(value)):
                continue
            if key not in scheduled or not _number(saved[key]) or not _number(value):
                raise ValueError(f"optimizer setting '{key}' is {str(saved[key])[:40]}, expected {value}")
        params.update(zip(new["params"], group["params"], strict=True))
    for index, entry in state["state"].items():
        if index not in params or not isinstance(entry, dict):
            raise ValueError(f"optimizer state for unknown parameter {str(index)[:20]}")
        for key, value in entry.items():
            if isinstance(value, torch.Tensor) and value.ndim and value.shape != params[index].shape:
                raise ValueError(f"optimizer state '{str(key)[:20]}' of parameter {index} has shape "
                                 f"{tuple(value.shape)}, the parameter {tuple(params[index].shape)}")
    trial = copy.deepcopy(optimizer)
    try:
        trial.load_state_dict(copy.deepcopy(state))  # torch keeps the given tensors: the trial must not change them
        for group in trial.param_groups:
            for p in group["params"]:
                p.grad = torch.zeros_like(p)
        trial.step()
    except Exception as exc:  # whatever torch raises for a state it cannot use
        raise ValueError(f"optimizer state does not work ({type(exc).__name__}: {str(exc)[:200]})") from None
    optimizer.load_state_dict(state)


def _plain(value: Any) -> Any:
    """Tuples as lists (a checkpoint's JSON keeps no tuples)."""
    return [_plain(v) for v in value] if isinstance(value, (list, tuple)) else value


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
