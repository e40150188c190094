"""The one input-validation layer: every loader (demo files, checkpoints, config files) checks its input
here and raises :class:`~mbirl.errors.InputError` naming the file, the field and what was expected.
"""

from __future__ import annotations

import dataclasses
import math
import os
import reprlib
import types
import typing
import warnings
from pathlib import Path
from typing import Any, TypeVar

import numpy as np

from mbirl.errors import InputError

__all__ = ["MAX_FILE_BYTES", "apply_overrides", "check_array", "check_file", "check_output_path", "check_overrides",
           "check_tree", "config_from_dict", "config_to_dict", "field_default", "flatten_config", "load_config",
           "read_json", "to_plain"]

T = TypeVar("T")

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


def check_output_path(path: str | Path, suffix: str | None = None, *, field: str = "out", directory: bool = False
                      ) -> Path:
    """``path`` as a Path after checking that an output can be written there, before any work is done: the
    expected suffix, not a directory where a file goes (or a file where a directory goes), and a nearest existing
    ancestor that is a writable directory."""
    try:
        path = Path(path)
        if suffix is not None and path.suffix != suffix:
            raise InputError(f"{field} must end in {suffix}, got '{path}'", field=field)
        if path.exists() and path.is_dir() != directory:
            raise InputError(f"'{path}' is {'not ' if directory else ''}a directory", field=field)
        ancestor = path if directory else path.parent
        ancestor = ancestor.absolute()
        while not ancestor.exists() and ancestor != ancestor.parent:
            ancestor = ancestor.parent
    except (OSError, ValueError) as exc:
        raise InputError(f"invalid output path ({exc})", field=field) from None
    if not ancestor.is_dir():
        raise InputError(f"cannot write below '{ancestor}': not a directory", field=field)
    if not os.access(ancestor, os.W_OK | os.X_OK):
        raise InputError(f"cannot write below '{ancestor}': permission denied", field=field)
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


MAX_TREE_NODES = 1_000_000
"""Most values (list items, mapping entries, scalars) a parsed config, metadata or JSON file may hold, counting
a YAML alias once per use: configs hold dozens, checkpoint skeletons thousands."""
MAX_TREE_DEPTH = 64
"""Deepest nesting accepted in parsed files (configs nest three levels, checkpoint skeletons about ten)."""


def check_tree(value: Any, *, source: str | None = None, field: str | None = None,
               max_nodes: int = MAX_TREE_NODES, max_depth: int = MAX_TREE_DEPTH) -> None:
    """Refuse a parsed structure (JSON, YAML) that is nested deeper than ``max_depth`` or holds more than
    ``max_nodes`` values once expanded. YAML aliases share one object per anchor, so a few hundred bytes can
    stand for billions of values (an "alias bomb"); this walk counts every use and stops at the limit, so the
    check itself costs at most ``max_nodes`` steps, as does everything that walks the structure afterwards."""
    count = 0
    stack: list[tuple[Any, int]] = [(value, 0)]
    while stack:
        node, depth = stack.pop()
        count += 1
        if count > max_nodes:
            raise InputError(f"too many values (more than {max_nodes}, YAML aliases expanded)", source=source,
                             field=field)
        if isinstance(node, dict):
            children: Any = [*node.keys(), *node.values()]
        elif isinstance(node, (list, tuple)):
            children = node
        else:
            continue
        if depth >= max_depth:
            raise InputError(f"nested deeper than {max_depth} levels", source=source, field=field)
        stack.extend((child, depth + 1) for child in children)


MAX_JSON_BYTES = 64 * 1024**2
"""Largest JSON file read (run configurations and metrics are kilobytes; checkpoint skeletons well under this)."""


def read_json(path: str | Path, *, what: str = "JSON file", max_bytes: int = MAX_JSON_BYTES) -> Any:
    """Parse a JSON file (e.g. a run's ``config.json``); InputError when missing, oversized, malformed or nested
    beyond :func:`check_tree`'s bounds. ``NaN``/``Infinity`` literals are not JSON and are refused."""
    import json

    path = check_file(path, what=what, max_bytes=max_bytes)
    try:
        data = json.loads(path.read_text(encoding="utf-8"), parse_constant=_refuse_constant)
    except (json.JSONDecodeError, UnicodeDecodeError, RecursionError, ValueError) as exc:
        raise InputError(f"invalid JSON ({type(exc).__name__}: {exc})", source=str(path)) from None
    check_tree(data, source=str(path))
    return data


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def _short(value: Any, limit: int = 60) -> str:
    """``repr(value)`` cut to ``limit`` characters, computed in bounded time and memory (a rejected value may be a
    huge or self-referencing structure: only its first items and levels are looked at)."""
    text = _REPR.repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


_REPR = reprlib.Repr()
_REPR.maxlevel, _REPR.maxlist, _REPR.maxtuple, _REPR.maxdict = 3, 4, 4, 4
_REPR.maxstring, _REPR.maxother, _REPR.maxlong = 80, 80, 40


def _check_value(value: Any, annotation: Any, key: str, source: str, *, legacy: bool = True,
                 ignore_unknown: bool = False) -> Any:
    """Check one config value against a dataclass field annotation (the simple types configs use).

    A nested config dataclass takes a mapping and returns the validated (partial) mapping of its overrides.
    """
    if dataclasses.is_dataclass(annotation) and isinstance(annotation, type):
        if not isinstance(value, dict):
            raise InputError(f"expected a mapping of {annotation.__name__} options, got {_short(value)}",
                             source=source, field=key)
        return check_overrides(value, annotation, source=source, prefix=f"{key}.", legacy=legacy,
                               ignore_unknown=ignore_unknown)
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        for option in typing.get_args(annotation):
            try:
                return _check_value(value, option, key, source, legacy=legacy)
            except InputError:
                continue
        raise InputError(f"expected {annotation}, got {_short(value)}", source=source, field=key)
    if annotation is type(None):
        if value is not None:
            raise InputError(f"expected null, got {_short(value)}", source=source, field=key)
        return None
    if annotation is bool:
        if not isinstance(value, bool):
            raise InputError(f"expected true/false, got {_short(value)}", source=source, field=key)
        return value
    if annotation is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise InputError(f"expected an integer, got {_short(value)}", source=source, field=key)
        if abs(value) > 2**31:
            raise InputError(f"integer out of range: {_short(value)}", source=source, field=key)
        return value
    if annotation is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise InputError(f"expected a finite number, got {_short(value)}", source=source, field=key)
        return float(value)
    if annotation is str:
        if not isinstance(value, str) or "\x00" in value:
            raise InputError(f"expected a string, got {_short(value)}", source=source, field=key)
        return value
    if origin is tuple:
        args = typing.get_args(annotation)
        if len(args) == 2 and args[1] is Ellipsis:  # tuple[X, ...]
            if not isinstance(value, (list, tuple)):
                raise InputError(f"expected a list, got {_short(value)}", source=source, field=key)
            return tuple(_check_value(v, args[0], key, source) for v in value)
        if not isinstance(value, (list, tuple)) or len(value) != len(args):
            raise InputError(f"expected a list of {len(args)} values, got {_short(value)}", source=source, field=key)
        return tuple(_check_value(v, a, key, source) for v, a in zip(value, args, strict=True))
    raise InputError(f"unsupported config type {annotation}", source=source, field=key)


def _nested_fields(cls: type) -> dict[str, type]:
    """The fields of config dataclass ``cls`` that are config dataclasses themselves."""
    hints = typing.get_type_hints(cls)
    return {f.name: hints[f.name] for f in dataclasses.fields(cls)
            if dataclasses.is_dataclass(hints[f.name]) and isinstance(hints[f.name], type)}


def check_overrides(raw: dict[Any, Any], cls: type, *, source: str, prefix: str = "", legacy: bool = True,
                    ignore_unknown: bool = False) -> dict[str, Any]:
    """Validate a (nested) mapping of option overrides against config dataclass ``cls``.

    Keys nest as the dataclasses do (``trainer: {horizon: 10}``). With ``legacy``, a flat key that belongs to
    exactly one nested config (the layout before configs were nested, e.g. ``horizon`` for ``trainer.horizon``)
    is moved there with a deprecation warning. ``ignore_unknown`` drops keys the config no longer has (a saved
    run's configuration) instead of refusing them. Returns the validated overrides, nested the same way.
    """
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    nested = _nested_fields(cls)
    out: dict[str, Any] = {}
    for key, value in raw.items():
        if isinstance(key, str) and key in names:
            checked = _check_value(value, hints[key], prefix + key, source, legacy=legacy,
                                   ignore_unknown=ignore_unknown)
            if key in nested:
                out[key] = {**out.get(key, {}), **checked}
            else:
                out[key] = checked
            continue
        owners = [n for n, sub in nested.items() if isinstance(key, str) and _has_field(sub, key)]
        if legacy and len(owners) == 1:
            owner = owners[0]
            warnings.warn(f"{source}: option '{prefix}{key}' is deprecated at this level; write it as "
                          f"'{prefix}{owner}.{key}' (nested under '{owner}:')", FutureWarning, stacklevel=2)
            checked = check_overrides({key: value}, nested[owner], source=source, prefix=f"{prefix}{owner}.",
                                      legacy=legacy, ignore_unknown=ignore_unknown)
            out[owner] = {**out.get(owner, {}), **checked}
            continue
        if ignore_unknown:
            continue
        expected = ", ".join(sorted(names))
        raise InputError(f"unknown option (expected some of {expected})", source=source,
                         field=_short(f"{prefix}{key}" if isinstance(key, str) else key, 80).strip("'"))
    return out


def _has_field(cls: type, name: str) -> bool:
    return any(f.name == name for f in dataclasses.fields(cls))


def apply_overrides(config: T, overrides: dict[str, Any]) -> T:
    """A copy of dataclass ``config`` with validated (nested) ``overrides`` applied; nested configs are merged."""
    changes: dict[str, Any] = {}
    for key, value in overrides.items():
        current = getattr(config, key)
        if dataclasses.is_dataclass(current) and not isinstance(current, type) and isinstance(value, dict):
            changes[key] = apply_overrides(current, value)
        else:
            changes[key] = value
    return dataclasses.replace(config, **changes)  # type: ignore[type-var]


def config_from_dict(cls: type[T], data: Any, *, source: str, legacy: bool = True) -> T:
    """Build config dataclass ``cls`` from a (nested) mapping, e.g. a run's ``config.json``: types are checked,
    unknown keys refused, missing keys take their defaults; required fields must be present."""
    if not isinstance(data, dict):
        raise InputError(f"expected a mapping of options, got {type(data).__name__}", source=source)
    overrides = check_overrides(data, cls, source=source, legacy=legacy)
    return _build(cls, overrides, source=source)


def _build(cls: type[T], overrides: dict[str, Any], *, source: str, prefix: str = "") -> T:
    nested = _nested_fields(cls)
    kw = {k: (_build(nested[k], v, source=source, prefix=f"{prefix}{k}.") if k in nested else v)
          for k, v in overrides.items()}
    missing = [f.name for f in dataclasses.fields(cls) if f.name not in kw  # type: ignore[arg-type]
               and f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING]
    if missing:
        raise InputError(f"missing required option(s) {', '.join(prefix + m for m in missing)}", source=source)
    try:
        return cls(**kw)
    except TypeError as exc:
        raise InputError(f"invalid configuration ({exc})", source=source) from None


def config_to_dict(config: Any) -> dict[str, Any]:
    """A config dataclass as a JSON-ready nested mapping (tuples become lists)."""
    out = to_plain(config)
    assert isinstance(out, dict)
    return out


def to_plain(value: Any) -> Any:
    """``value`` as JSON would hold it: config dataclasses as mappings, tuples as lists."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: to_plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, dict):
        return {k: to_plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [to_plain(v) for v in value]
    return value


def flatten_config(data: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """A nested config mapping as ``{"trainer.horizon": 20, ...}``."""
    out: dict[str, Any] = {}
    for key, value in data.items():
        if isinstance(value, dict):
            out.update(flatten_config(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def field_default(cls: type, dotted: str) -> Any:
    """The default of the (possibly nested, ``a.b``) field of config dataclass ``cls``; ``MISSING`` if none."""
    head, _, rest = dotted.partition(".")
    for f in dataclasses.fields(cls):
        if f.name != head:
            continue
        if rest:
            sub = typing.get_type_hints(cls)[head]
            return field_default(sub, rest) if isinstance(sub, type) and dataclasses.is_dataclass(sub) \
                else dataclasses.MISSING
        if f.default is not dataclasses.MISSING:
            return to_plain(f.default)
        if f.default_factory is not dataclasses.MISSING:
            return to_plain(f.default_factory())
    return dataclasses.MISSING


MAX_CONFIG_BYTES = 64 * 1024
"""YAML configs are a few hundred bytes; refusing larger ones bounds what parsing them can cost."""
MAX_CONFIG_NODES = 10_000
"""Most values a YAML config may hold once its aliases are expanded (:func:`check_tree`)."""


def _safe_yaml(text: str) -> Any:
    """``yaml.safe_load`` with libyaml's parser where PyYAML has it (the same safe constructor: plain data only;
    about 15x faster, and it refuses flow nesting beyond 1000 levels instead of recursing for seconds)."""
    import yaml

    loader_cls = getattr(yaml, "CSafeLoader", None)
    if loader_cls is None:
        return yaml.safe_load(text)
    loader = loader_cls(text)
    try:
        return loader.get_single_data()
    finally:
        loader.dispose()


def load_config(path: str | Path, cls: type, *, legacy: bool = True) -> dict[str, Any]:
    """Read a YAML config (``yaml.safe_load`` only) whose keys are the fields of config dataclass ``cls``,
    nested as its config dataclasses nest.

    Returns the validated overrides (nested mappings); unknown keys, wrong types and non-mappings are InputErrors.
    """
    import yaml

    path = check_file(path, what="config file", max_bytes=MAX_CONFIG_BYTES)
    src = str(path)
    try:
        raw = _safe_yaml(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError as exc:
        raise InputError(f"not UTF-8 text ({exc.reason})", source=src) from None
    except yaml.YAMLError as exc:
        lines = str(exc).strip().splitlines()
        raise InputError(f"invalid YAML ({lines[0] if lines else type(exc).__name__})", source=src) from None
    except RecursionError:
        raise InputError("invalid YAML (nesting too deep)", source=src) from None
    check_tree(raw, source=src, max_nodes=MAX_CONFIG_NODES, max_depth=16)
    if not isinstance(raw, dict):
        raise InputError(f"expected a mapping of options, got {type(raw).__name__}", source=src)
    return check_overrides(raw, cls, source=src, legacy=legacy)
