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

__all__ = ["FORMAT", "check_optimizer_state", "flatten_state", "load_checkpoint", "load_optimizer_state", "restoring",
           "save_checkpoint", "unflatten_state"]


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


def check_optimizer_state(optimizer: torch.optim.Optimizer, state: Any, *, scheduled: tuple[str, ...] = ("lr",),
                          name: str = "") -> None:
    """Check that a checkpointed optimiser state fits ``optimizer`` (ValueError otherwise, its message prefixed by
    ``name``, the state's key in the checkpoint: one InputError inside :func:`restoring`); nothing is loaded
    (:func:`load_optimizer_state` loads it).

    Torch checks only the number of groups and parameters; a state with other settings, shapes, types or counters
    would be taken silently, or fail or turn the parameters into NaN at the next training step. So:

    * the parameter groups must name the same parameters with the same settings as ``optimizer``'s once loaded
      (settings torch fills in for a state saved before they existed count as given; the ``scheduled`` ones,
      which the trainer sets at every step, need only be finite numbers);
    * every per-parameter entry must hold what a step of ``optimizer`` creates: the same keys, tensors of the
      same shape and dtype (finite), a ``step`` counter a whole number >= 0 (an entry may be missing: a parameter
      that never had a gradient has none);
    * a step with zero gradients on a copy must work and leave the (finite) parameters finite.
    """
    try:
        _check_optimizer_state(optimizer, state, scheduled)
    except ValueError as exc:
        raise ValueError(f"{name}: {exc}" if name else str(exc)) from None


def _check_optimizer_state(optimizer: torch.optim.Optimizer, state: Any, scheduled: tuple[str, ...]) -> None:
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
        if not isinstance(saved, dict) or saved.get("params") != new["params"]:
            raise ValueError("optimizer parameter groups differ from this model's")
        unknown = [str(k)[:20] for k in saved if k not in new]
        if unknown:
            raise ValueError(f"unknown optimizer setting '{unknown[0]}'")
        params.update(zip(new["params"], group["params"], strict=True))
    # what one step creates per parameter: a copy of the optimiser without state, stepped with zero gradients
    reference = copy.deepcopy(optimizer)
    reference.state.clear()
    _zero_step(reference)
    created = {index: reference.state[p] for index, p in zip(params, _all_params(reference), strict=True)}
    for index, entry in state["state"].items():
        if index not in params or not isinstance(entry, dict):
            raise ValueError(f"optimizer state for unknown parameter {repr(index)[:20]}")
        expected = created[index]
        if set(entry) != set(expected):
            raise ValueError(f"optimizer state of parameter {index} has entries {sorted(map(str, entry))[:5]}, "
                             f"expected {sorted(map(str, expected))}")
        for key, value in entry.items():
            _check_entry(f"optimizer state '{key}' of parameter {index}", key, value, expected[key])
    trial = copy.deepcopy(optimizer)
    # parameters on torch's "meta" device (shapes without values) have nothing to check for finiteness
    finite = [not p.is_meta and bool(torch.isfinite(p).all()) for p in _all_params(trial)]
    try:
        trial.load_state_dict(copy.deepcopy(state))  # torch keeps the given tensors: the trial must not change them
    except Exception as exc:  # whatever torch raises for a state it cannot use
        raise ValueError(f"optimizer state does not load ({type(exc).__name__}: {str(exc)[:200]})") from None
    for loaded, new in zip(trial.param_groups, fresh["param_groups"], strict=True):
        for key, value in new.items():
            if key == "params" or (key in loaded and not isinstance(loaded[key], torch.Tensor)
                                   and _plain(loaded[key]) == _plain(value)):
                continue
            if key not in scheduled or not _number(loaded.get(key)) or not _number(value):
                raise ValueError(f"optimizer setting '{key}' is {str(loaded.get(key, 'missing'))[:40]}, "
                                 f"expected {str(value)[:40]}")
    try:
        _zero_step(trial)
    except Exception as exc:
        raise ValueError(f"optimizer state does not work ({type(exc).__name__}: {str(exc)[:200]})") from None
    if any(ok and not bool(torch.isfinite(p).all()) for ok, p in zip(finite, _all_params(trial), strict=True)):
        raise ValueError("optimizer state turns the parameters into NaN or infinity at the next step")


def load_optimizer_state(optimizer: torch.optim.Optimizer, state: Any, *, scheduled: tuple[str, ...] = ("lr",),
                         name: str = "") -> None:
    """Load a checkpointed optimiser state into ``optimizer`` once :func:`check_optimizer_state` finds that it
    fits; ValueError otherwise (one InputError inside :func:`restoring`). What is loaded is exactly what torch's
    ``load_state_dict`` loads: a run resumes bit for bit."""
    check_optimizer_state(optimizer, state, scheduled=scheduled, name=name)
    optimizer.load_state_dict(state)


def _all_params(optimizer: torch.optim.Optimizer) -> list[torch.Tensor]:
    return [p for group in optimizer.param_groups for p in group["params"]]


def _zero_step(optimizer: torch.optim.Optimizer) -> None:
    for p in _all_params(optimizer):
        p.grad = torch.zeros_like(p)
    optimizer.step()


def _check_entry(what: str, key: Any, value: Any, expected: Any) -> None:
    """One per-parameter optimiser value against the one a step creates (``expected``)."""
    if isinstance(expected, torch.Tensor):
        if not isinstance(value, torch.Tensor) or value.shape != expected.shape or value.dtype != expected.dtype:
            got = (f"{value.dtype} {tuple(value.shape)}" if isinstance(value, torch.Tensor)
                   else type(value).__name__)
            raise ValueError(f"{what} is {got}, expected {expected.dtype} {tuple(expected.shape)}")
        if value.is_floating_point() and not bool(torch.isfinite(value).all()):
            raise ValueError(f"{what} holds NaN or infinity")
        number = float(value) if key == "step" and value.numel() == 1 else None
    else:
        if type(value) is not type(expected):
            raise ValueError(f"{what} is {type(value).__name__}, expected {type(expected).__name__}")
        number = float(value) if key == "step" and _number(value) else None
        if isinstance(value, float) and not math.isfinite(value):
            raise ValueError(f"{what} is {value}")
    if key == "step" and (number is None or not math.isfinite(number) or number < 0 or number != int(number)):
        raise ValueError(f"{what} is not a step count (a whole number >= 0)")


def _plain(value: Any) -> Any:
    """Tuples as lists (a checkpoint's JSON keeps no tuples)."""
    return [_plain(v) for v in value] if isinstance(value, (list, tuple)) else value


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
