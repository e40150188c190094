"""Reading and writing demonstration files.

Keypoint demonstrations are stored as one ``.npz`` of named arrays stacked over demonstrations
(``start_q (N, n_joints)``, ``keypoints (N, T, k, 3)``, optional ``q (N, T, n_joints)`` and
``images (N, T, H, W, 3)``) plus a JSON metadata string. Files are read with
``allow_pickle=False``; the original MBIRL ``.pt`` files are read with ``torch.load(weights_only=True)``.
"""

from __future__ import annotations

import io
import json
import math
import zipfile
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from mbirl.errors import InputError
from mbirl.fileio import json_text, write_bytes_atomic
from mbirl.types import KeypointTrajectory, Trajectory
from mbirl.validation import check_array, check_file, check_tree

__all__ = [
    "KeypointDemoSet",
    "atomic_write_npz",
    "import_original_mbirl",
    "load_keypoint_demos",
    "load_trajectories",
    "read_npz",
    "save_keypoint_demos",
    "save_trajectories",
]

KEYPOINT_FORMAT = "mbirl.keypoint_demos/v1"
TRAJECTORY_FORMAT = "mbirl.trajectories/v1"
KEYPOINT_OPTIONAL = ("q", "images", "depth")
"""Optional arrays of a keypoint demo file (``depth``: rendered visual demonstrations)."""
# Guards against decompression bombs and absurd headers in files from elsewhere: what the members' headers
# declare, in total, must fit (the largest legitimate files, rendered exploration data, hold a few hundred MB).
MAX_NPZ_BYTES = 1024**3
MAX_META_BYTES = 16 * 1024**2
MAX_ARRAYS = 16
MAX_PT_BYTES = 256 * 1024**2
"""Most tensor data an original MBIRL ``.pt`` file may hold (declared by its records and by its pickle): it holds
keypoint trajectories and start configurations only, no images (256 MiB: 20 million 3-D keypoints in float32,
thousands of times the original files)."""
MAX_PT_PICKLE_BYTES = 4 * 1024**2
"""Largest pickle (``data.pkl``) of a ``.pt`` demo file: a few hundred bytes per demonstration."""
_PT_STORAGES = {"FloatStorage": 4, "DoubleStorage": 8, "HalfStorage": 2, "BFloat16Storage": 2, "LongStorage": 8,
                "IntStorage": 4, "ShortStorage": 2, "CharStorage": 1, "ByteStorage": 1, "BoolStorage": 1}
"""Storage classes a ``.pt`` of numbers names, with their item sizes."""
_PT_GLOBALS = {"torch._utils _rebuild_tensor_v2", "torch._utils _rebuild_parameter", "collections OrderedDict",
               *(f"torch {name}" for name in _PT_STORAGES)}
"""Everything the pickle of a ``.pt`` of tensors, lists and dicts refers to."""
_PT_METADATA = {"version", ".data/version", "byteorder", ".format_version", ".storage_alignment",
                ".data/serialization_id"}
"""The small members torch's zip format writes beside ``data.pkl`` and the storages ``data/<key>``."""


@dataclass(frozen=True)
class KeypointDemoSet:
    """Demonstrations of one task that share a horizon, plus free-form metadata (JSON-serialisable)."""

    demos: tuple[KeypointTrajectory, ...]
    meta: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not self.demos:
            raise InputError("a demo set needs at least one demonstration", field="demos")
        shapes = {(d.keypoints.shape, d.start_q.shape) for d in self.demos}
        if len(shapes) != 1:
            raise InputError(f"all demonstrations must share horizon, keypoints and joints; got {sorted(shapes)}",
                             source=self.demos[0].source, field="keypoints")

    def __len__(self) -> int:
        return len(self.demos)

    def __getitem__(self, index: int) -> KeypointTrajectory:
        return self.demos[index]

    def subset(self, start: int, stop: int) -> tuple[KeypointTrajectory, ...]:
        """Demonstrations ``start:stop``; raises InputError when the range is empty or out of bounds."""
        n = len(self.demos)
        if not (0 <= start < stop <= n):
            raise InputError(f"split {start}:{stop} is out of range for {n} demonstrations", field="split")
        return self.demos[start:stop]


def atomic_write_npz(path: str | Path, arrays: dict[str, np.ndarray]) -> None:
    """Write ``arrays`` as a compressed ``.npz`` atomically: never a partial file."""
    buffer = io.BytesIO()
    np.savez_compressed(buffer, **arrays)  # type: ignore[arg-type]
    write_bytes_atomic(path, buffer.getvalue())


def _member_headers(path: Path, allowed: set[str], src: str, max_bytes: int) -> list[str]:
    """Check the members of the ``.npz`` at ``path`` that the format names from their ``.npy`` headers alone,
    before any array is allocated: no object (pickled) dtypes, and declared shapes x item sizes within
    ``max_bytes`` in total (the zip's own size fields say nothing about what a header declares). Returns the
    names of members the format does not name (never read)."""
    seen: set[str] = set()
    unknown: list[str] = []
    total = 0
    with zipfile.ZipFile(path) as zf:
        infos = zf.infolist()
        if len(infos) > MAX_ARRAYS:
            raise InputError(f"too many arrays ({len(infos)})", source=src)
        for info in infos:
            key = info.filename[:-4] if info.filename.endswith(".npy") else info.filename
            if key not in allowed or not info.filename.endswith(".npy"):
                unknown.append(key)
                continue
            if key in seen:
                raise InputError("member appears twice", source=src, field=key)
            seen.add(key)
            with zf.open(info) as fh:
                version = np.lib.format.read_magic(fh)
                if version == (1, 0):
                    shape, _, dtype = np.lib.format.read_array_header_1_0(fh)
                elif version == (2, 0):
                    shape, _, dtype = np.lib.format.read_array_header_2_0(fh)
                else:
                    raise InputError(f"unsupported .npy version {version}", source=src, field=key)
            if dtype.hasobject:
                raise InputError("object arrays (pickles) are not accepted", source=src, field=key)
            limit = MAX_META_BYTES if key in ("format", "meta_json") else max_bytes
            nbytes = math.prod(int(d) for d in shape) * dtype.itemsize
            total += nbytes
            if nbytes > limit or total > max_bytes:
                raise InputError(f"declares a {dtype} array of shape {tuple(shape)} ({nbytes} bytes): more than "
                                 f"the {limit if nbytes > limit else max_bytes} bytes this file may hold",
                                 source=src, field=key)
    return unknown


def _clip(text: str, limit: int = 60) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."


def read_npz(path: str | Path, required: Sequence[str], fmt: str, optional: Sequence[str] = (), *,
             max_bytes: int = MAX_NPZ_BYTES, only: Sequence[str] | None = None
             ) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """Read a project ``.npz`` without pickles; check the format tag and required keys (``only``: read just these
    arrays, and the metadata).

    Only the members the format names (``format``, ``meta_json``, ``required``, ``optional``) are accepted, and
    each member's header is checked before its array is read (:func:`_member_headers`), so memory is bounded by
    ``max_bytes``, not by what a file claims.
    """
    path = check_file(path, what="demonstration file")
    src = str(path)
    allowed = {"format", "meta_json", *required, *optional}
    try:
        unknown = _member_headers(path, allowed, src, max_bytes)
        with np.load(path, allow_pickle=False) as data:
            if "format" not in data.files:
                raise InputError(f"missing format tag (expected '{fmt}')", source=src, field="format")
            tag = str(data["format"])
            if tag != fmt:
                raise InputError(f"expected format '{fmt}', got '{_clip(tag)}'", source=src, field="format")
            if unknown:
                raise InputError(f"unexpected member (this format holds {', '.join(sorted(allowed))})",
                                 source=src, field=unknown[0])
            members = list(data.files)
            arrays = {key: data[key] for key in members
                      if only is None or key in only or key in ("format", "meta_json")}
    except InputError:
        raise
    except ValueError as exc:
        # numpy raises ValueError for object (pickled) arrays when allow_pickle=False and for malformed headers.
        raise InputError(f"not a valid demonstration file ({exc})", source=src) from None
    except (OSError, zipfile.BadZipFile, EOFError, KeyError, zlib.error, NotImplementedError,
            RuntimeError) as exc:
        raise InputError(f"not a readable .npz file ({type(exc).__name__}: {exc})", source=src) from None
    for key in required:
        if key not in members:
            raise InputError("missing required array", source=src, field=key)
    meta: dict[str, Any] = {}
    if "meta_json" in arrays:
        meta_text = arrays["meta_json"]
        if meta_text.dtype.kind != "U" or meta_text.ndim != 0:
            raise InputError("expected a JSON string", source=src, field="meta_json")
        try:
            meta = json.loads(str(meta_text))
        except (json.JSONDecodeError, RecursionError) as exc:
            raise InputError(f"invalid JSON ({type(exc).__name__})", source=src, field="meta_json") from None
        if not isinstance(meta, dict):
            raise InputError("expected a JSON object", source=src, field="meta_json")
        check_tree(meta, source=src, field="meta_json")
    return arrays, meta


def save_keypoint_demos(path: str | Path, demos: Sequence[KeypointTrajectory], meta: dict[str, Any] | None = None
                        ) -> None:
    """Save keypoint demonstrations (same horizon) as one ``.npz``."""
    demo_set = KeypointDemoSet(tuple(demos), dict(meta or {}))
    arrays: dict[str, np.ndarray] = {
        "format": np.asarray(KEYPOINT_FORMAT),
        "meta_json": np.asarray(json_text(demo_set.meta)),
        "start_q": np.stack([d.start_q for d in demos]),
        "keypoints": np.stack([d.keypoints for d in demos]),
    }
    for name in ("q", "images"):
        values = [getattr(d, name) for d in demos]
        if all(v is not None for v in values):
            arrays[name] = np.stack(values)
        elif any(v is not None for v in values):
            raise InputError(f"either every demonstration has '{name}' or none does", field=name)
    atomic_write_npz(path, arrays)


def load_keypoint_demos(path: str | Path) -> KeypointDemoSet:
    """Load keypoint demonstrations from our ``.npz`` or from an original MBIRL ``.pt`` file."""
    path = Path(path)
    if path.suffix == ".pt":
        return import_original_mbirl(path)
    src = str(path)
    arrays, meta = read_npz(path, ("start_q", "keypoints"), KEYPOINT_FORMAT, KEYPOINT_OPTIONAL)
    start_q = check_array(arrays["start_q"], "start_q", ndim=2, source=src)
    keypoints = check_array(arrays["keypoints"], "keypoints", ndim=4, source=src, shape=(len(start_q), None, None, 3))
    n = len(start_q)
    q = arrays.get("q")
    if q is not None:
        q = check_array(q, "q", ndim=3, source=src, shape=(n, keypoints.shape[1], start_q.shape[1]))
    images = arrays.get("images")
    if images is not None:
        images = check_array(images, "images", ndim=5, dtype_kind="u", source=src,
                             shape=(n, keypoints.shape[1], None, None, 3))
    demos = tuple(
        KeypointTrajectory(
            start_q=start_q[i],
            keypoints=keypoints[i],
            q=None if q is None else q[i],
            images=None if images is None else images[i],
            source=src,
        )
        for i in range(n)
    )
    return KeypointDemoSet(demos, meta)


def _numbers(value: Any, source: str, field: str) -> np.ndarray:
    """A tensor (or nested list of numbers) from a ``.pt`` file as a numeric array; InputError for anything else
    (strings, mappings, ragged lists)."""
    import torch

    try:
        arr = value.detach().cpu().numpy() if isinstance(value, torch.Tensor) else np.asarray(value)
    except (TypeError, ValueError, RuntimeError) as exc:
        raise InputError(f"expected numbers ({type(exc).__name__})", source=source, field=field) from None
    if arr.dtype.kind not in "fiu":
        raise InputError(f"expected numbers, got {arr.dtype}", source=source, field=field)
    return arr


@dataclass(frozen=True)
class _Storage:
    key: str
    itemsize: int


def _check_pt_archive(path: Path) -> None:
    """Check an original MBIRL ``.pt`` from its zip directory and its pickle's opcodes alone, before
    ``torch.load`` allocates anything: only the members torch's zip format writes, every record's declared
    (uncompressed) size and every storage and tensor the pickle declares within :data:`MAX_PT_BYTES` in total, and
    nothing in the pickle but tensors, lists, dicts and numbers. The format of torch < 1.6 (pickles and raw storages
    in one stream) is checked the same way from its pickles. Nothing is unpickled here; ValueError says what does
    not fit."""
    if not zipfile.is_zipfile(path):
        with path.open("rb") as fh:  # the legacy stream: magic number, protocol, system info, then the data
            head = io.BytesIO(fh.read(MAX_PT_PICKLE_BYTES + 4096))
        for _ in range(3):
            _scan_pt_pickle(head, lambda pid: None)
        storages = _scan_pt_pickle(head, lambda pid: pid[4] if len(pid) == 6 else None)
        if storages > path.stat().st_size:
            raise ValueError(f"its pickle declares {storages} bytes of storage, more than the file holds")
        return
    with zipfile.ZipFile(path) as zf:
        infos = zf.infolist()
        if len(infos) > 2 * MAX_PT_BYTES // 4096 or len({i.filename for i in infos}) != len(infos):
            raise ValueError(f"{len(infos)} members, some repeated or far more than a demo file holds")
        prefix = infos[0].filename.split("/", 1)[0] + "/" if infos else ""
        records: dict[str, int] = {}
        pickle_info = None
        for info in infos:
            name = info.filename[len(prefix):] if info.filename.startswith(prefix) else None
            limit = 1024 if name in _PT_METADATA else MAX_PT_PICKLE_BYTES if name == "data.pkl" else MAX_PT_BYTES
            if name is None or not (name in _PT_METADATA or name == "data.pkl" or
                                    (name.startswith("data/") and name[5:].isdigit())):
                raise ValueError(f"unexpected member '{_clip(info.filename)}' (a torch archive of tensors holds "
                                 "data.pkl, data/<n> and version records)")
            if info.file_size > limit:
                raise ValueError(f"member '{_clip(info.filename)}' declares {info.file_size} bytes, more than the "
                                 f"{limit} it may hold")
            if name == "data.pkl":
                pickle_info = info
            elif name.startswith("data/"):
                records[name[5:]] = info.file_size
        if sum(records.values()) > MAX_PT_BYTES:
            raise ValueError(f"its tensor records declare {sum(records.values())} bytes, more than the "
                             f"{MAX_PT_BYTES} a demo file may hold")
        if pickle_info is None:
            raise ValueError("not a torch archive (no data.pkl)")
        pickled = io.BytesIO(zf.read(pickle_info))

    def record(pid: tuple) -> int | None:  # a storage's element count, which must be its record's size
        return pid[4] if len(pid) == 5 and pid[2] in records and pid[4] * _PT_STORAGES[pid[1]] == records[pid[2]] \
            else None

    _scan_pt_pickle(pickled, record)


def _scan_pt_pickle(stream: io.BytesIO, elements: Callable[[tuple], int | None]) -> int:
    """Run one pickle of a ``.pt`` symbolically (strings, numbers and tuples only; nothing is built): refuse
    references to anything but tensors, lists and dicts, storages for which ``elements(pid)`` (the storage's
    persistent id, its class reduced to the name) gives no element count, and tensors declaring more than
    :data:`MAX_PT_BYTES` in total. Returns the bytes of the storages it declares (ValueError otherwise)."""
    import pickletools

    storages = tensors = 0
    stack: list[Any] = []
    marks: list[int] = []
    memo: dict[Any, Any] = {}
    for op, arg, _ in pickletools.genops(stream):
        if op.name == "MARK":
            marks.append(len(stack))
        elif op.name in ("PUT", "BINPUT", "LONG_BINPUT", "MEMOIZE"):
            memo[len(memo) if op.name == "MEMOIZE" else arg] = stack[-1] if stack else None
        elif op.name in ("GET", "BINGET", "LONG_BINGET"):
            stack.append(memo.get(arg))
        elif op.name in ("GLOBAL", "STACK_GLOBAL"):
            where = arg if op.name == "GLOBAL" else f"{stack.pop(-2)} {stack.pop()}" if len(stack) > 1 else None
            if where not in _PT_GLOBALS:
                raise ValueError(f"its pickle refers to {_clip(str(where))}, not only to tensors, lists and dicts")
            stack.append(where)
        elif op.name in ("TUPLE", "TUPLE1", "TUPLE2", "TUPLE3", "EMPTY_TUPLE"):
            n = {"TUPLE1": 1, "TUPLE2": 2, "TUPLE3": 3, "EMPTY_TUPLE": 0}.get(op.name)
            start = max(marks.pop() if n is None and marks else len(stack) - (n or 0), 0)
            items = tuple(stack[start:])
            del stack[start:]
            stack.append(items)
        elif op.name in ("BINPERSID", "PERSID"):
            pid: Any = stack.pop() if op.name == "BINPERSID" and stack else arg
            kind = pid[1].split(" ")[-1] if isinstance(pid, tuple) and len(pid) > 4 and isinstance(pid[1], str) \
                else ""
            itemsize = _PT_STORAGES.get(kind, 0)
            count = elements((pid[0], kind, *pid[2:])) if itemsize else None
            if not isinstance(count, int) or isinstance(count, bool) or count < 0 or pid[0] != "storage":
                raise ValueError("its pickle names a storage it does not hold")
            storages += count * itemsize
            if storages > MAX_PT_BYTES:
                raise ValueError(f"its storages declare more than the {MAX_PT_BYTES} bytes a demo file may hold")
            stack.append(_Storage(str(pid[2]), itemsize))
        elif op.name == "REDUCE" and len(stack) > 1 and stack[-2] == "torch._utils _rebuild_tensor_v2":
            args = stack[-1]
            if not (isinstance(args, tuple) and len(args) > 2 and isinstance(args[0], _Storage)
                    and isinstance(args[2], tuple) and all(isinstance(d, int) and d >= 0 for d in args[2])):
                raise ValueError("its pickle rebuilds a tensor from something else than a storage")
            tensors += math.prod(args[2]) * args[0].itemsize
            if tensors > MAX_PT_BYTES:
                raise ValueError(f"its tensors declare more than the {MAX_PT_BYTES} bytes a demo file may hold")
            del stack[-2:]
            stack.append(None)
        elif op.arg is not None and op.name not in ("PROTO", "FRAME") and not op.stack_before:
            stack.append(arg)  # a string or number
        else:  # any other opcode: its stack effect, values unknown
            before = op.stack_before
            if pickletools.markobject in before:
                start = marks.pop() if marks else len(stack)
                del stack[start:]
                before = before[:before.index(pickletools.markobject)]
            del stack[max(len(stack) - len(before), 0):]
            stack.extend([None] * len(op.stack_after))
    return storages


def import_original_mbirl(path: str | Path) -> KeypointDemoSet:
    """Import an original MBIRL trajectory file: a ``torch.save``d list of dicts with
    ``start_joint_config`` ``(1, 7)`` and ``desired_keypoints`` ``(T, k, 3)``.

    Read with ``torch.load(weights_only=True)`` once the archive's records and the sizes its pickle declares are
    known to fit (:data:`MAX_PT_BYTES`): a file that needs arbitrary unpickling is refused, and memory is bounded by
    what a demo file may hold, not by what a file claims.
    """
    import torch

    path = check_file(path, what="demonstration file")
    src = str(path)
    try:
        _check_pt_archive(path)
    except (ValueError, IndexError, KeyError, TypeError, zipfile.BadZipFile, zlib.error, EOFError,
            NotImplementedError, OSError) as exc:  # what a malformed archive or pickle raises
        raise InputError(f"cannot be read safely as an MBIRL .pt file ({exc})", source=src) from None
    try:
        raw = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # UnpicklingError, RuntimeError on corrupt archives, ...
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise InputError(f"cannot be read safely as an MBIRL .pt file ({first})", source=src) from None
    if not isinstance(raw, (list, tuple)) or not raw:
        raise InputError("expected a non-empty list of trajectory dicts", source=src)
    demos = []
    for i, entry in enumerate(raw):
        if not isinstance(entry, dict):
            raise InputError(f"entry {i} is a {type(entry).__name__}, expected a dict", source=src)
        for key in ("start_joint_config", "desired_keypoints"):
            if key not in entry:
                raise InputError(f"entry {i} has no '{key}'", source=src, field=key)
        q0, kp = (_numbers(entry[key], src, f"{key} (entry {i})") for key in ("start_joint_config",
                                                                            "desired_keypoints"))
        if q0.ndim == 2 and q0.shape[0] == 1:
            q0 = q0[0]
        demos.append(KeypointTrajectory(start_q=q0, keypoints=kp, source=src))
    return KeypointDemoSet(tuple(demos), {"imported_from": "mbirl-original", "file": path.name})


def save_trajectories(path: str | Path, trajectories: Sequence[Trajectory], meta: dict[str, Any] | None = None
                      ) -> None:
    """Save state-action trajectories of varying length as one ``.npz`` (concatenated, with offsets)."""
    if not trajectories:
        raise InputError("need at least one trajectory", field="trajectories")
    lengths = np.asarray([len(t) for t in trajectories], dtype=np.int64)
    arrays: dict[str, np.ndarray] = {
        "format": np.asarray(TRAJECTORY_FORMAT),
        "meta_json": np.asarray(json_text(dict(meta or {}))),
        "lengths": lengths,
        "obs": np.concatenate([t.obs for t in trajectories]),
        "acts": np.concatenate([t.acts for t in trajectories]),
        "dones": np.concatenate([t.dones for t in trajectories]),
    }
    if all(t.rews is not None for t in trajectories):
        arrays["rews"] = np.concatenate([t.rews for t in trajectories if t.rews is not None])
    atomic_write_npz(path, arrays)


def load_trajectories(path: str | Path) -> tuple[list[Trajectory], dict[str, Any]]:
    """Load trajectories saved by :func:`save_trajectories`; returns ``(trajectories, meta)``."""
    src = str(path)
    arrays, meta = read_npz(path, ("lengths", "obs", "acts", "dones"), TRAJECTORY_FORMAT, ("rews",))
    lengths = check_array(arrays["lengths"], "lengths", ndim=1, dtype_kind="i", source=src)
    if (lengths < 1).any():
        raise InputError("every trajectory needs at least one step", source=src, field="lengths")
    n_steps = int(lengths.sum())
    if len(arrays["acts"]) != n_steps or len(arrays["dones"]) != n_steps:
        raise InputError(f"expected {n_steps} actions and dones in total", source=src, field="acts")
    if len(arrays["obs"]) != n_steps + len(lengths):
        raise InputError(f"expected {n_steps + len(lengths)} observations in total", source=src, field="obs")
    if "rews" in arrays and len(arrays["rews"]) != n_steps:
        raise InputError(f"expected {n_steps} rewards", source=src, field="rews")
    out = []
    o = a = 0
    for n in lengths.tolist():
        out.append(
            Trajectory(
                obs=arrays["obs"][o : o + n + 1],
                acts=arrays["acts"][a : a + n],
                dones=arrays["dones"][a : a + n],
                rews=arrays["rews"][a : a + n] if "rews" in arrays else None,
                source=src,
            )
        )
        o += n + 1
        a += n
    return out, meta
