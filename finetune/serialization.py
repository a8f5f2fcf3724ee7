"""``finetune.save`` / ``finetune.load``: checkpoints in formats that can never run code.

By default a file is one ``.npz`` archive written and read with ``allow_pickle=False``: every
tensor and numpy array is an ``arr_<i>.npy`` entry, and a JSON document (entry ``__structure__``,
a uint8 array) describes the nesting of dicts, lists and tuples and holds the plain values (ints,
floats, strings, bools, None). Dict keys keep their types, so an optimizer's integer-keyed state
survives. Loading a pickle, including PyTorch's ``.pt`` files, is refused before anything is
unpickled.

A path ending in ``.safetensors`` gets the format model hubs publish weights in, written and read
with the ``safetensors`` package: a flat dict of str -> tensor plus str -> str metadata, as
``safetensors.torch.save_file`` / ``load_file`` have it. ``save_structured`` also puts a nested
object (a training checkpoint) in one such file: each tensor under its dotted path
(``model.fc.weight``, ``optimizer.state.0.momentum_buffer``), the nesting and the plain values as
the same JSON document in the metadata entry ``finetune.structure``; ``load`` rebuilds the object.
"""

from __future__ import annotations

import collections
import json
import math
import os
import struct
import zipfile
import zlib
from collections.abc import Mapping
from typing import IO, Any

import numpy as np
import safetensors
import safetensors.numpy

from .errors import CheckpointError
from .tensor import Tensor
from .utils.atomic import atomic_write

FORMAT = "finetune.save"
VERSION = 1
_STRUCTURE = "__structure__"
_ZIP_MAGIC = (b"PK\x03\x04", b"PK\x05\x06")
_PICKLE_PROTO = b"\x80"
SAFETENSORS_SUFFIX = ".safetensors"
STRUCTURE_METADATA = "finetune.structure"  # metadata entry holding a nested object's JSON

# what the safetensors header calls each dtype numpy has; BF16 (no numpy type) reads as float32
_SAFETENSORS_DTYPES = {
    "F64": np.float64, "F32": np.float32, "F16": np.float16, "BOOL": np.bool_,
    "I64": np.int64, "I32": np.int32, "I16": np.int16, "I8": np.int8,
    "U64": np.uint64, "U32": np.uint32, "U16": np.uint16, "U8": np.uint8,
}  # fmt: skip
_SAVABLE_DTYPES = frozenset(np.dtype(t) for t in _SAFETENSORS_DTYPES.values())

# dict subclasses that survive a round trip; any other mapping comes back as a plain dict
_DICT_TYPES: dict[str, type] = {
    "OrderedDict": collections.OrderedDict,
    "Counter": collections.Counter,
}


def save(
    obj: Any, f: str | os.PathLike | IO[bytes], *, metadata: Mapping[str, str] | None = None
) -> None:
    """Write ``obj`` (nested dicts/lists/tuples of tensors, arrays and plain values) to ``f``.

    A path ending in ``.safetensors`` is written in that format (see :func:`save_file`): ``obj``
    must then be a flat dict of str -> tensor, and ``metadata`` (str -> str) is stored with it.
    A path is written atomically: a crash mid-write leaves any previous file intact.
    """
    if _is_safetensors_path(f):
        save_file(obj, f, metadata)
        return
    if metadata is not None:
        raise CheckpointError(
            f"metadata= is stored only in .safetensors files, and {_name_of(f)} is not one"
        )
    arrays: dict[str, np.ndarray] = {}
    root = _Encoder(arrays).encode(obj, "obj")
    document = {"format": FORMAT, "version": VERSION, "root": root}
    arrays[_STRUCTURE] = np.frombuffer(
        json.dumps(document, allow_nan=False).encode("utf-8"), dtype=np.uint8
    )
    if isinstance(f, (str, os.PathLike)):
        with atomic_write(f, "wb") as fh:
            np.savez(fh, allow_pickle=False, **arrays)
    else:
        np.savez(f, allow_pickle=False, **arrays)


def load(
    f: str | os.PathLike | IO[bytes], map_location: Any = None, weights_only: bool | None = None
) -> Any:
    """Read what :func:`save` wrote; tensors come back as ``finetune.Tensor`` with their dtype.

    ``map_location`` and ``weights_only`` are accepted for PyTorch compatibility: everything lives
    on the CPU, and loading is always as safe as ``weights_only=True``.
    """
    if map_location is not None and str(map_location) != "cpu":
        raise CheckpointError(f"map_location={map_location!r}: finetune only has the CPU device")
    if isinstance(f, (str, os.PathLike)):
        with open(f, "rb") as fh:
            return _load_from(fh, os.fspath(f))
    return _load_from(f, _name_of(f))


def _name_of(f: Any) -> str:
    return os.fspath(f) if isinstance(f, (str, os.PathLike)) else getattr(f, "name", repr(f))


def _is_safetensors_path(f: Any) -> bool:
    return isinstance(f, (str, os.PathLike)) and (os.fspath(f).lower().endswith(SAFETENSORS_SUFFIX))


def _load_from(fh: IO[bytes], name: str) -> Any:
    start = fh.tell()
    head = fh.read(9)
    fh.seek(start)
    magic = head[:4]
    if _looks_like_safetensors(head) or (
        name.lower().endswith(SAFETENSORS_SUFFIX)
        and not magic.startswith(_PICKLE_PROTO)
        and magic not in _ZIP_MAGIC
    ):
        return _load_safetensors(fh.read(), name)
    if magic.startswith(_PICKLE_PROTO):
        raise CheckpointError(
            f"{name} is a pickle file; finetune.load refuses to unpickle because unpickling can "
            "run arbitrary code. Re-save the weights with finetune.save or "
            "safetensors.torch.save_file (or as ONNX / .npz)."
        )
    if magic not in _ZIP_MAGIC:
        raise CheckpointError(
            f"{name} is not a checkpoint written by finetune.save (neither an .npz archive nor "
            "a safetensors file)"
        )
    try:
        with np.load(fh, allow_pickle=False) as archive:
            if _STRUCTURE not in archive.files:
                raise CheckpointError(_foreign_archive_message(name, archive.zip.namelist()))
            _check_stored_size(archive, _STRUCTURE, name)
            document = _document(archive[_STRUCTURE].tobytes(), name)

            def entry(key: str) -> np.ndarray:
                _check_stored_size(archive, key, name)
                return archive[key]

            return _Decoder(entry, name).decode(document["root"])
    except CheckpointError:
        raise
    except (
        zipfile.BadZipFile,
        zlib.error,
        EOFError,
        OSError,
        ValueError,
        KeyError,
        TypeError,
        MemoryError,
        RuntimeError,  # zipfile: an "encrypted" member
        NotImplementedError,  # zipfile: an unknown compression method or flag
        struct.error,
    ) as e:
        raise CheckpointError(f"{name} is truncated or corrupt: {e}") from e


def _document(text: bytes | str, name: str) -> dict:
    """The JSON structure document of a finetune.save file, checked for format and version."""
    try:
        document = json.loads(text)
    except (ValueError, RecursionError) as e:
        raise CheckpointError(f"{name}: its structure entry is not valid JSON ({e})") from e
    if not isinstance(document, dict) or document.get("format") != FORMAT:
        raise CheckpointError(f"{name}: its structure entry is not a finetune.save document")
    if not isinstance(document.get("version"), int) or document["version"] > VERSION:
        raise CheckpointError(
            f"{name} was written by a newer finetune (format version "
            f"{document.get('version')}; this one reads up to {VERSION})"
        )
    if "root" not in document:
        raise CheckpointError(f"{name}: its structure entry has no root")
    return document


def _foreign_archive_message(name: str, members: list[str]) -> str:
    if any(m == "data.pkl" or m.endswith("/data.pkl") for m in members):
        return (
            f"{name} is a PyTorch checkpoint (a zip holding data.pkl); finetune.load refuses to "
            "unpickle because unpickling can run arbitrary code. Save its state_dict with "
            "safetensors.torch.save_file and load that .safetensors file, or export the model "
            "to ONNX."
        )
    return (
        f"{name} is an .npz archive without a finetune structure entry; it was not written by "
        "finetune.save (read plain arrays with numpy.load)"
    )


# -- safetensors -----------------------------------------------------------------------------------

_FLAT_ONLY = (
    "a safetensors file holds a flat dict of str -> tensor (strings go in metadata=); save nested "
    "objects such as a checkpoint with optimizer state with finetune.serialization.save_structured"
    ", or under a name that does not end in .safetensors"
)


def save_file(
    tensors: Mapping[str, Tensor | np.ndarray],
    filename: str | os.PathLike,
    metadata: Mapping[str, str] | None = None,
) -> None:
    """Write a flat dict of str -> tensor to ``filename`` in the safetensors format, with optional
    str -> str ``metadata``, atomically: ``safetensors.torch.save_file`` for finetune tensors."""
    name = os.fspath(filename)
    if not isinstance(tensors, Mapping):
        raise CheckpointError(f"cannot save a {type(tensors).__name__} as {name}: {_FLAT_ONLY}")
    arrays: dict[str, np.ndarray] = {}
    for key, value in tensors.items():
        if not isinstance(key, str):
            raise CheckpointError(
                f"cannot save {name}: key {key!r} is a {type(key).__name__}; safetensors names "
                "tensors with strings"
            )
        where = f"obj[{key!r}]"
        if isinstance(value, Tensor):
            array = value._data
        elif isinstance(value, (np.ndarray, np.generic)):
            array = np.asarray(value)
        else:
            what = (
                f"a nested {type(value).__name__}"
                if isinstance(value, (Mapping, list, tuple))
                else f"a {type(value).__name__}, not a tensor"
            )
            raise CheckpointError(f"cannot save {where} to {name}: it is {what}; {_FLAT_ONLY}")
        arrays[key] = _safetensors_array(array, f"{where} to {name}")
    _write_safetensors(arrays, filename, _check_metadata(metadata, name))


def save_structured(
    obj: Any, filename: str | os.PathLike, metadata: Mapping[str, str] | None = None
) -> None:
    """Write a nested object (a training checkpoint) as one safetensors file, atomically.

    Each tensor and array is stored under its dotted path (``model.fc.weight``,
    ``optimizer.state.0.momentum_buffer``) so any safetensors reader sees the weights; the
    nesting and the plain values go to the metadata entry ``finetune.structure`` as the same JSON
    document an .npz checkpoint holds, and :func:`load` rebuilds ``obj`` from it.
    """
    name = os.fspath(filename)
    arrays: dict[str, np.ndarray] = {}
    root = _Encoder(arrays, named_for=name).encode(obj, "obj")
    document = {"format": FORMAT, "version": VERSION, "root": root}
    meta = _check_metadata(metadata, name) or {}
    meta[STRUCTURE_METADATA] = json.dumps(document, allow_nan=False)
    _write_safetensors(arrays, filename, meta)


def load_file(filename: str | os.PathLike) -> dict[str, Tensor]:
    """Every tensor of a safetensors file by its stored name, sorted by name, as
    ``safetensors.torch.load_file`` returns them (a checkpoint's nesting is not rebuilt)."""
    name = os.fspath(filename)
    with open(filename, "rb") as fh:
        data = fh.read()
    _safetensors_metadata(data, name)
    arrays = _safetensors_arrays(data, name)
    return {
        key: Tensor._from_array(_tensor_array(arrays[key], key, name)) for key in sorted(arrays)
    }


def read_metadata(f: str | os.PathLike | IO[bytes]) -> dict[str, str]:
    """The str -> str metadata of a safetensors file (``safe_open(f).metadata()``), reading only
    its header; an empty dict when it has none."""
    if isinstance(f, (str, os.PathLike)):
        with open(f, "rb") as fh:
            return _read_metadata_from(fh, os.fspath(f))
    return _read_metadata_from(f, _name_of(f))


def _read_metadata_from(fh: IO[bytes], name: str) -> dict[str, str]:
    head = fh.read(9)
    if not _looks_like_safetensors(head):
        raise CheckpointError(f"{name} is not a safetensors file, so it has no metadata")
    size = struct.unpack("<Q", head[:8])[0]
    return _safetensors_metadata(head + fh.read(max(min(size, _MAX_HEADER) - 1, 0)), name)


_MAX_HEADER = 100_000_000  # the safetensors package's own limit on a header's size


def _looks_like_safetensors(head: bytes) -> bool:
    """A little-endian u64 header size below 4 GiB, then the header's opening brace."""
    return len(head) >= 9 and head[4:8] == b"\0\0\0\0" and head[8:9] == b"{"


def _check_metadata(metadata: Mapping[str, str] | None, name: str) -> dict[str, str] | None:
    if metadata is None:
        return None
    if not isinstance(metadata, Mapping):
        raise CheckpointError(
            f"cannot save {name}: metadata must be a dict of str -> str, not "
            f"{type(metadata).__name__}"
        )
    for key, value in metadata.items():
        if not isinstance(key, str) or not isinstance(value, str):
            raise CheckpointError(
                f"cannot save {name}: metadata[{key!r}] = {value!r}; safetensors metadata maps "
                "str to str (json.dumps other values)"
            )
    if STRUCTURE_METADATA in metadata:
        raise CheckpointError(
            f"cannot save {name}: the metadata key {STRUCTURE_METADATA!r} is finetune's own"
        )
    return dict(metadata)


def _safetensors_array(array: np.ndarray, where: str) -> np.ndarray:
    """``array`` as safetensors stores it (C-contiguous), or a CheckpointError naming ``where``."""
    if array.dtype not in _SAVABLE_DTYPES:
        raise CheckpointError(
            f"cannot save {where}: safetensors has no {array.dtype} type (it stores bool, "
            "int8-64, uint8-64 and float16/32/64)"
        )
    return array if array.flags.c_contiguous else array.copy(order="C")  # 0-d stays 0-d


def _write_safetensors(
    arrays: dict[str, np.ndarray], filename: str | os.PathLike, metadata: dict[str, str] | None
) -> None:
    try:
        data = safetensors.numpy.save(arrays, metadata=metadata)
    except (safetensors.SafetensorError, TypeError, ValueError) as e:
        raise CheckpointError(f"cannot write {os.fspath(filename)}: {e}") from e
    with atomic_write(filename, "wb") as fh:
        fh.write(data)


def _safetensors_metadata(data: bytes, name: str) -> dict[str, str]:
    """The header's ``__metadata__``, checked; the header is parsed here (the package only
    hands out metadata for files it maps itself), which also gives the size errors a file name."""
    if len(data) < 8:
        raise CheckpointError(
            f"{name} is truncated or corrupt: {len(data)} bytes, not even a safetensors header"
        )
    (size,) = struct.unpack("<Q", data[:8])
    if size > len(data) - 8:
        raise CheckpointError(
            f"{name} is truncated or corrupt: its safetensors header should be {size:,} bytes "
            f"but {len(data) - 8:,} follow"
        )
    try:
        header = json.loads(data[8 : 8 + size])
    except (ValueError, RecursionError) as e:
        raise CheckpointError(
            f"{name} is not a safetensors file, or its header is corrupt ({e})"
        ) from e
    if not isinstance(header, dict):
        raise CheckpointError(f"{name} is corrupt: its safetensors header is not a JSON object")
    metadata = header.get("__metadata__") or {}
    if not isinstance(metadata, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in metadata.items()
    ):
        raise CheckpointError(f"{name} is corrupt: its __metadata__ is not a dict of str -> str")
    return metadata


def _safetensors_arrays(data: bytes, name: str) -> dict[str, np.ndarray]:
    """Every tensor as a numpy array of its stored dtype (BF16 widened exactly to float32); the
    package checks offsets, overlaps and sizes."""
    try:
        views = safetensors.deserialize(data)
    except safetensors.SafetensorError as e:
        raise CheckpointError(f"{name} is truncated or corrupt: {e}") from e
    arrays = {}
    for key, view in views:
        kind, shape, raw = view["dtype"], view["shape"], view["data"]
        try:
            if kind == "BF16":
                bits = np.frombuffer(raw, "<u2").astype(np.uint32) << 16
                array = bits.view(np.float32).reshape(shape)
            elif kind == "BOOL":
                array = (np.frombuffer(raw, np.uint8) != 0).reshape(shape)
            elif kind in _SAFETENSORS_DTYPES:
                stored = np.dtype(_SAFETENSORS_DTYPES[kind]).newbyteorder("<")
                array = np.frombuffer(raw, stored).astype(stored.newbyteorder("="), copy=False)
                array = array.reshape(shape)
            else:
                raise CheckpointError(
                    f"{name}: tensor {key!r} has dtype {kind}, which finetune cannot hold (it "
                    f"reads {', '.join(_SAFETENSORS_DTYPES)} and BF16)"
                )
        except ValueError as e:
            raise CheckpointError(f"{name}: tensor {key!r} is corrupt ({e})") from e
        arrays[key] = array
    return arrays


def _tensor_array(array: np.ndarray, key: str, name: str) -> np.ndarray:
    """``array`` in a dtype a finetune tensor holds: uint16/32/64 widen exactly to int64."""
    if array.dtype.kind != "u" or array.dtype == np.uint8:
        return array
    if array.dtype == np.uint64 and array.size and array.max() > np.iinfo(np.int64).max:
        raise CheckpointError(
            f"{name}: tensor {key!r} holds uint64 values beyond int64, the widest integer type "
            "finetune tensors have"
        )
    return array.astype(np.int64)


def _load_safetensors(data: bytes, name: str) -> Any:
    """A flat dict of tensors sorted by name, or the object ``save_structured`` wrote."""
    metadata = _safetensors_metadata(data, name)
    arrays = _safetensors_arrays(data, name)
    if STRUCTURE_METADATA not in metadata:
        return {k: Tensor._from_array(_tensor_array(arrays[k], k, name)) for k in sorted(arrays)}
    document = _document(metadata[STRUCTURE_METADATA], name)

    def entry(key: str) -> np.ndarray:
        if not isinstance(key, str) or key not in arrays:
            raise CheckpointError(f"{name}: its structure names a tensor {key!r} it does not hold")
        return arrays[key]

    try:
        return _Decoder(entry, name).decode(document["root"])
    except CheckpointError:
        raise
    except (KeyError, TypeError, ValueError, AttributeError) as e:
        raise CheckpointError(f"{name}: its {STRUCTURE_METADATA} metadata is corrupt ({e})") from e


# -- the object tree ---------------------------------------------------------------------------


class _Encoder:
    """Turns an object tree into JSON-able nodes, moving every array into ``arrays``.

    Entries are ``arr_<i>`` (.npz), or with ``named_for`` (the safetensors file's name, for
    messages) the dotted path of the value in the tree, in a dtype safetensors stores.
    """

    def __init__(self, arrays: dict[str, np.ndarray], named_for: str | None = None) -> None:
        self.arrays = arrays
        self.named_for = named_for
        self.seen: dict[int, str] = {}  # id(tensor or array) -> entry name, so sharing survives

    def _store(self, obj: Any, array: np.ndarray, where: str, path: tuple[str, ...]) -> str:
        if id(obj) in self.seen:
            return self.seen[id(obj)]
        if array.dtype.hasobject or array.dtype.kind == "V":
            raise CheckpointError(
                f"cannot save {where}: arrays of dtype {array.dtype} need pickling; "
                "only numeric, bool and string arrays are stored"
            )
        if self.named_for is None:
            key = f"arr_{len(self.seen)}"
        else:
            array = _safetensors_array(array, f"{where} to {self.named_for}")
            key = base = ".".join(path) or "obj"
            suffix = 1
            while key in self.arrays:  # {"a.b": x, "a": {"b": y}} share a dotted path
                key, suffix = f"{base}#{suffix}", suffix + 1
        self.seen[id(obj)] = key
        self.arrays[key] = array
        return key

    def encode(self, obj: Any, where: str, path: tuple[str, ...] = ()) -> Any:
        if obj is None or isinstance(obj, (bool, str)):
            return obj
        if isinstance(obj, int) and not isinstance(obj, bool):
            return int(obj)
        if isinstance(obj, float):
            return obj if math.isfinite(obj) else {"float": repr(float(obj))}
        if isinstance(obj, Tensor):
            return {
                "tensor": self._store(obj, obj._data, where, path),
                "requires_grad": obj.requires_grad,
            }
        if isinstance(obj, np.ndarray):
            return {"ndarray": self._store(obj, obj, where, path)}
        if isinstance(obj, np.generic):
            return {"scalar": self._store(obj, np.asarray(obj), where, path)}
        if isinstance(obj, dict):
            items = [
                [
                    self.encode(k, f"{where} key {k!r}", path),
                    self.encode(v, f"{where}[{k!r}]", (*path, str(k))),
                ]
                for k, v in obj.items()
            ]
            node: dict[str, Any] = {"dict": items}
            kind = type(obj).__name__
            if kind in _DICT_TYPES and isinstance(obj, _DICT_TYPES[kind]):
                node["type"] = kind
            return node
        if isinstance(obj, list):
            return [self.encode(v, f"{where}[{i}]", (*path, str(i))) for i, v in enumerate(obj)]
        if isinstance(obj, tuple):
            return {
                "tuple": [
                    self.encode(v, f"{where}[{i}]", (*path, str(i))) for i, v in enumerate(obj)
                ]
            }
        raise CheckpointError(
            f"cannot save {where}: {type(obj).__module__}.{type(obj).__qualname__} is not a "
            "tensor, numpy array, dict, list, tuple, int, float, str, bool or None"
        )


_HEADER_READERS = {
    (1, 0): np.lib.format.read_array_header_1_0,
    (2, 0): np.lib.format.read_array_header_2_0,
}


def _check_stored_size(archive: Any, key: str, name: str) -> None:
    """An entry's header must declare exactly the bytes the archive stores: numpy allocates what
    the header says before reading, so a hostile header could ask for terabytes."""
    member = f"{key}.npy"
    stored = archive.zip.getinfo(member).file_size
    with archive.zip.open(member) as fp:
        version = np.lib.format.read_magic(fp)
        if version not in _HEADER_READERS:
            raise CheckpointError(f"{name}: entry {key!r} has unsupported .npy version {version}")
        shape, _, dtype = _HEADER_READERS[version](fp)
        declared = math.prod(shape) * dtype.itemsize
        if declared != stored - fp.tell():
            raise CheckpointError(
                f"{name}: entry {key!r} declares shape {list(shape)} of {dtype} ({declared:,} "
                f"bytes) but stores {stored - fp.tell():,}; the file is corrupt or hostile"
            )


class _Decoder:
    """Rebuilds the object tree from JSON nodes and the arrays ``entry(key)`` returns."""

    def __init__(self, entry: Any, name: str) -> None:
        self.entry = entry
        self.name = name
        self.tensors: dict[str, Tensor] = {}
        self.arrays: dict[str, np.ndarray] = {}

    def _array(self, key: str) -> np.ndarray:
        if key not in self.arrays:
            self.arrays[key] = self.entry(key)
        return self.arrays[key]

    def decode(self, node: Any) -> Any:
        if node is None or isinstance(node, (bool, int, float, str)):
            return node
        if isinstance(node, list):
            return [self.decode(v) for v in node]
        if "tensor" in node:
            key = node["tensor"]
            if key not in self.tensors:
                array = _tensor_array(self._array(key), key, self.name)
                self.tensors[key] = Tensor._from_array(
                    array, requires_grad=bool(node["requires_grad"])
                )
            return self.tensors[key]
        if "ndarray" in node:
            return self._array(node["ndarray"])
        if "scalar" in node:
            return self._array(node["scalar"])[()]
        if "float" in node:
            return float(node["float"])
        if "tuple" in node:
            return tuple(self.decode(v) for v in node["tuple"])
        if "dict" in node:
            items = {_hashable(self.decode(k)): self.decode(v) for k, v in node["dict"]}
            cls = _DICT_TYPES.get(node.get("type"), dict)
            return items if cls is dict else cls(items)
        raise CheckpointError(f"{self.name}: unknown node {sorted(node)} in its structure entry")


def _hashable(key: Any) -> Any:
    """Dict keys were hashable when saved; lists only appear here from a hand-edited file."""
    if isinstance(key, list):
        raise CheckpointError(
            f"a dict key decoded as a list ({key!r}); the structure entry is corrupt"
        )
    return key


__all__ = ["load", "load_file", "read_metadata", "save", "save_file", "save_structured"]
