"""The one input-validation layer: every loader (demo files, checkpoints, config files) checks its input
here and raises :class:`~mbirl.errors.InputError` naming the file, the field and what was expected.
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from pathlib import Path
from typing import Any

import numpy as np

from mbirl.errors import InputError

__all__ = ["MAX_FILE_BYTES", "check_array", "check_file", "load_config"]

MAX_FILE_BYTES = 8 * 1024**3
"""Refuse larger inputs outright (guards against decompression bombs and absurd headers)."""


def check_file(path: str | Path, *, what: str = "file", max_bytes: int = MAX_FILE_BYTES) -> Path:
    """``path`` as a Path after checking that it names an existing regular file of sane size."""
    try:
        path = Path(path)
        exists, is_file = path.exists(), path.is_file()
    except (OSError, ValueError) as exc:  # embedded NUL, name too long, ...
        raise InputError(f"invalid path ({exc})", source=repr(str(path))) from None
    if not exists:
        raise InputError(f"{what} not found", source=str(path))
    if not is_file:
        raise InputError(f"{what} is not a regular file", source=str(path))
    size = path.stat().st_size
    if size == 0:
        raise InputError(f"{what} is empty", source=str(path))
    if size > max_bytes:
        raise InputError(f"{what} is too large ({size} bytes)", source=str(path))
    return path


def check_array(
    value: Any,
    name: str,
    *,
    ndim: int,
    dtype_kind: str = "f",
    source: str | None = None,
    finite: bool = True,
    shape: tuple[int | None, ...] | None = None,
    min_len: int = 1,
) -> np.ndarray:
    """Return ``value`` as an ndarray after checking rank, dtype kind, size and finiteness.

    ``dtype_kind``: ``"f"`` real numbers (converted to float32), ``"i"`` integers, ``"u"`` unsigned, ``"b"`` bool.
    """
    if not isinstance(value, np.ndarray):
        try:
            value = np.asarray(value)
        except Exception as exc:  # ragged lists and the like
            raise InputError(f"not convertible to an array ({exc})", source=source, field=name) from None
    if value.dtype == object:
        raise InputError("object arrays are not accepted", source=source, field=name)
    if value.ndim != ndim:
        raise InputError(f"expected {ndim}-D array, got shape {value.shape}", source=source, field=name)
    if shape is not None:
        for axis, want in enumerate(shape):
            if want is not None and value.shape[axis] != want:
                raise InputError(f"expected size {want} on axis {axis}, got shape {value.shape}", source=source,
                                 field=name)
    if value.ndim and value.shape[0] < min_len:
        raise InputError(f"expected at least {min_len} entries, got {value.shape[0]}", source=source, field=name)
    if any(s == 0 for s in value.shape):
        raise InputError(f"empty array of shape {value.shape}", source=source, field=name)
    kinds = {"f": "fiu", "u": "u", "i": "iu", "b": "b"}[dtype_kind]
    if value.dtype.kind not in kinds:
        raise InputError(f"expected a numeric dtype of kind '{dtype_kind}', got {value.dtype}", source=source,
                         field=name)
    if dtype_kind == "f":
        with np.errstate(over="ignore"):
            value = value.astype(np.float32, copy=False)
    if finite and value.dtype.kind == "f" and not np.isfinite(value).all():
        raise InputError("contains NaN or Inf (or values beyond float32)", source=source, field=name)
    return value


def _check_value(value: Any, annotation: Any, key: str, source: str) -> Any:
    """Check one config value against a dataclass field annotation (the simple types configs use)."""
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        for option in typing.get_args(annotation):
            try:
                return _check_value(value, option, key, source)
            except InputError:
                continue
        raise InputError(f"expected {annotation}, got {value!r}", source=source, field=key)
    if annotation is type(None):
        if value is not None:
            raise InputError(f"expected null, got {value!r}", source=source, field=key)
        return None
    if annotation is bool:
        if not isinstance(value, bool):
            raise InputError(f"expected true/false, got {value!r}", source=source, field=key)
        return value
    if annotation is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise InputError(f"expected an integer, got {value!r}", source=source, field=key)
        if abs(value) > 2**31:
            raise InputError(f"integer out of range: {value}", source=source, field=key)
        return value
    if annotation is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise InputError(f"expected a finite number, got {value!r}", source=source, field=key)
        return float(value)
    if annotation is str:
        if not isinstance(value, str) or "\x00" in value:
            raise InputError(f"expected a string, got {value!r}", source=source, field=key)
        return value
    if origin is tuple:
        args = typing.get_args(annotation)
        if not isinstance(value, (list, tuple)) or len(value) != len(args):
            raise InputError(f"expected a list of {len(args)} values, got {value!r}", source=source, field=key)
        return tuple(_check_value(v, a, key, source) for v, a in zip(value, args, strict=True))
    if origin is dict:
        if not isinstance(value, dict):
            raise InputError(f"expected a mapping, got {value!r}", source=source, field=key)
        return value
    raise InputError(f"unsupported config type {annotation}", source=source, field=key)


def load_config(path: str | Path, cls: type, *, exclude: tuple[str, ...] = ()) -> dict[str, Any]:
    """Read a YAML config (``yaml.safe_load`` only) whose keys are fields of dataclass ``cls``.

    Returns the validated key/value overrides; unknown keys, wrong types and non-mappings are InputErrors.
    """
    import yaml

    path = check_file(path, what="config file", max_bytes=1024**2)
    src = str(path)
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError as exc:
        raise InputError(f"not UTF-8 text ({exc.reason})", source=src) from None
    except yaml.YAMLError as exc:
        first = str(exc).strip().splitlines()[0]
        raise InputError(f"invalid YAML ({first})", source=src) from None
    except RecursionError:
        raise InputError("invalid YAML (nesting too deep)", source=src) from None
    if not isinstance(raw, dict):
        raise InputError(f"expected a mapping of options, got {type(raw).__name__}", source=src)
    hints = typing.get_type_hints(cls)
    fields = {f.name for f in dataclasses.fields(cls)} - set(exclude)
    out: dict[str, Any] = {}
    for key, value in raw.items():
        if not isinstance(key, str) or key not in fields:
            raise InputError(f"unknown option (expected some of {', '.join(sorted(fields))})", source=src,
                             field=str(key))
        out[key] = _check_value(value, hints[key], key, src)
    return out
