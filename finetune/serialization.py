"""``finetune.save`` / ``finetune.load``: checkpoints in a format that can never run code.

A file is one ``.npz`` archive written and read with ``allow_pickle=False``: every tensor and
numpy array is an ``arr_<i>.npy`` entry, and a JSON document (entry ``__structure__``, a uint8
array) describes the nesting of dicts, lists and tuples and holds the plain values (ints, floats,
strings, bools, None). Dict keys keep their types, so an optimizer's integer-keyed state survives.
Loading a pickle, including PyTorch's ``.pt`` files, is refused before anything is unpickled.
"""

from __future__ import annotations

import collections
import json
import math
import os
import struct
import zipfile
import zlib
from typing import IO, Any

import numpy as np

from .errors import CheckpointError
from .tensor import Tensor
from .utils.atomic import atomic_write

FORMAT = "finetune.save"
VERSION = 1
_STRUCTURE = "__structure__"
_ZIP_MAGIC = (b"PK\x03\x04", b"PK\x05\x06")
_PICKLE_PROTO = b"\x80"

# dict subclasses that survive a round trip; any other mapping comes back as a plain dict
_DICT_TYPES: dict[str, type] = {
    "OrderedDict": collections.OrderedDict,
    "Counter": collections.Counter,
}


def save(obj: Any, f: str | os.PathLike | IO[bytes]) -> None:
    """Write ``obj`` (nested dicts/lists/tuples of tensors, arrays and plain values) to ``f``.

    A path is written atomically: a crash mid-write leaves any previous file intact.
    """
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
    return _load_from(f, getattr(f, "name", repr(f)))


def _load_from(fh: IO[bytes], name: str) -> Any:
    start = fh.tell()
    magic = fh.read(4)
    fh.seek(start)
    if magic.startswith(_PICKLE_PROTO):
        raise CheckpointError(
            f"{name} is a pickle file; finetune.load refuses to unpickle because unpickling can "
            "run arbitrary code. Re-save the weights with finetune.save (or as ONNX / .npz)."
        )
    if magic not in _ZIP_MAGIC:
        raise CheckpointError(
            f"{name} is not a checkpoint written by finetune.save (not an .npz archive)"
        )
    try:
        with np.load(fh, allow_pickle=False) as archive:
            if _STRUCTURE not in archive.files:
                raise CheckpointError(_foreign_archive_message(name, archive.zip.namelist()))
            _check_stored_size(archive, _STRUCTURE, name)
            document = json.loads(archive[_STRUCTURE].tobytes().decode("utf-8"))
            if not isinstance(document, dict) or document.get("format") != FORMAT:
                raise CheckpointError(
                    f"{name}: its structure entry is not a finetune.save document"
                )
            if document.get("version", math.inf) > VERSION:
                raise CheckpointError(
                    f"{name} was written by a newer finetune (format version "
                    f"{document.get('version')}; this one reads up to {VERSION})"
                )
            return _Decoder(archive, name).decode(document["root"])
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


def _foreign_archive_message(name: str, members: list[str]) -> str:
    if any(m == "data.pkl" or m.endswith("/data.pkl") for m in members):
        return (
            f"{name} is a PyTorch checkpoint (a zip holding data.pkl); finetune.load refuses to "
            "unpickle because unpickling can run arbitrary code. Export the model to ONNX, or save "
            "its state_dict as numpy arrays (numpy.savez), and load that instead."
        )
    return (
        f"{name} is an .npz archive without a finetune structure entry; it was not written by "
        "finetune.save (read plain arrays with numpy.load)"
    )


class _Encoder:
    """Turns an object tree into JSON-able nodes, moving every array into ``arrays``."""

    def __init__(self, arrays: dict[str, np.ndarray]) -> None:
        self.arrays = arrays
        self.seen: dict[int, str] = {}  # id(tensor or array) -> entry name, so sharing survives

    def _store(self, obj: Any, array: np.ndarray, where: str) -> str:
        if id(obj) in self.seen:
            return self.seen[id(obj)]
        if array.dtype.hasobject or array.dtype.kind == "V":
            raise CheckpointError(
                f"cannot save {where}: arrays of dtype {array.dtype} need pickling; "
                "only numeric, bool and string arrays are stored"
            )
        key = f"arr_{len(self.seen)}"
        self.seen[id(obj)] = key
        self.arrays[key] = array
        return key

    def encode(self, obj: Any, where: str) -> Any:
        if obj is None or isinstance(obj, (bool, str)):
            return obj
        if isinstance(obj, int) and not isinstance(obj, bool):
            return int(obj)
        if isinstance(obj, float):
            return obj if math.isfinite(obj) else {"float": repr(float(obj))}
        if isinstance(obj, Tensor):
            return {
                "tensor": self._store(obj, obj._data, where),
                "requires_grad": obj.requires_grad,
            }
        if isinstance(obj, np.ndarray):
            return {"ndarray": self._store(obj, obj, where)}
        if isinstance(obj, np.generic):
            return {"scalar": self._store(obj, np.asarray(obj), where)}
        if isinstance(obj, dict):
            items = [
                [self.encode(k, f"{where} key {k!r}"), self.encode(v, f"{where}[{k!r}]")]
                for k, v in obj.items()
            ]
            node: dict[str, Any] = {"dict": items}
            kind = type(obj).__name__
            if kind in _DICT_TYPES and isinstance(obj, _DICT_TYPES[kind]):
                node["type"] = kind
            return node
        if isinstance(obj, list):
            return [self.encode(v, f"{where}[{i}]") for i, v in enumerate(obj)]
        if isinstance(obj, tuple):
            return {"tuple": [self.encode(v, f"{where}[{i}]") for i, v in enumerate(obj)]}
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
    """Rebuilds the object tree from JSON nodes and the archive's arrays."""

    def __init__(self, archive: Any, name: str) -> None:
        self.archive = archive
        self.name = name
        self.tensors: dict[str, Tensor] = {}
        self.arrays: dict[str, np.ndarray] = {}

    def _array(self, key: str) -> np.ndarray:
        if key not in self.arrays:
            _check_stored_size(self.archive, key, self.name)
            self.arrays[key] = self.archive[key]
        return self.arrays[key]

    def decode(self, node: Any) -> Any:
        if node is None or isinstance(node, (bool, int, float, str)):
            return node
        if isinstance(node, list):
            return [self.decode(v) for v in node]
        if "tensor" in node:
            key = node["tensor"]
            if key not in self.tensors:
                self.tensors[key] = Tensor._from_array(
                    self._array(key), requires_grad=bool(node["requires_grad"])
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


__all__ = ["load", "save"]
