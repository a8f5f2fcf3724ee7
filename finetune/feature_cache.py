"""The on-disk cache of backbone features, under ``$FINETUNE_HOME/features``.

A frozen backbone maps the same image through the same transform to the same features, so a
second run over the same files (another learning rate, more epochs, a new head) skips the
backbone entirely. An entry is keyed by the backbone (its weights and structure, the head left
out), the file list (paths, sizes, modification times, labels) and the transform; touching or
replacing an image changes the key. Data sets without files (a ``TensorDataset``) are not cached
on disk: there is nothing cheap to key them by. ``FINETUNE_FEATURE_CACHE=0`` turns the cache off;
it keeps at most ``FINETUNE_FEATURE_CACHE_GB`` (default 10) gigabytes, dropping the entries used
least recently.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import os
from collections.abc import Callable
from pathlib import Path

import numpy as np

from .errors import CheckpointError

FORMAT_VERSION = 1

Features = tuple[np.ndarray, np.ndarray, np.ndarray]  # features, labels, readable mask


def features_dir() -> Path:
    """``$FINETUNE_HOME/features`` (default ``~/.cache/finetune/features``)."""
    from .models.cache import cache_dir

    return cache_dir() / "features"


def file_samples(dataset) -> tuple[list[tuple[str, int]], object] | None:
    """``(path, label)`` of every sample in dataset order, and the file-backed data set they come
    from (an ``ImageFolder``, through any chain of ``Subset``s); ``None`` for other data sets."""
    indices = None
    while not hasattr(dataset, "samples"):
        inner = getattr(dataset, "__dict__", {}).get("dataset")
        sub = getattr(dataset, "__dict__", {}).get("indices")
        if inner is None or sub is None:
            return None
        indices = list(sub) if indices is None else [sub[i] for i in indices]
        dataset = inner
    samples = list(dataset.samples)
    if indices is not None:
        samples = [samples[i] for i in indices]
    if not all(isinstance(s, tuple) and len(s) == 2 for s in samples):
        return None
    return samples, dataset


def _callable_id(fn) -> str:
    """A stable name for a step's function (a ``partial`` with its keyword arguments)."""
    if isinstance(fn, functools.partial):
        args = ", ".join(_value_id(a) for a in fn.args)
        kwargs = ", ".join(f"{k}={_value_id(v)}" for k, v in sorted(fn.keywords.items()))
        return f"{_callable_id(fn.func)}({args}; {kwargs})"
    return f"{getattr(fn, '__module__', '?')}.{getattr(fn, '__qualname__', type(fn).__name__)}"


def _value_id(value) -> str:
    if isinstance(value, np.ndarray):
        return f"array{value.shape}{value.dtype}:{hashlib.sha256(value.tobytes()).hexdigest()}"
    if callable(value):
        return _callable_id(value)
    return repr(value)


def model_fingerprint(model, head) -> str:
    """sha256 of everything before the head: weights, buffers, module types and, for imported
    graphs, the walk of ONNX nodes. The head is left out: features are its input."""
    head_modules = {id(m) for m in head.modules()}
    prefixes = tuple(f"{name}." for name, m in model.named_modules() if m is head)
    digest = hashlib.sha256(f"finetune-features-v{FORMAT_VERSION}".encode())
    for name, module in model.named_modules():
        if id(module) in head_modules:
            continue
        digest.update(f"module {name} {type(module).__qualname__} {module.extra_repr()}".encode())
        for step in getattr(module, "steps", ()):
            digest.update(
                f"step {step.op_type} {step.inputs} {step.outputs} {step.module} "
                f"{_callable_id(step.run)}".encode()
            )
    for name, tensor in model.state_dict().items():
        if name.startswith(prefixes):
            continue
        data = np.ascontiguousarray(tensor._data)
        digest.update(f"tensor {name} {data.dtype} {data.shape}".encode())
        digest.update(data.tobytes())
    return digest.hexdigest()


def dataset_fingerprint(dataset) -> str | None:
    """sha256 of the file list (paths, sizes, mtimes, labels) and the transforms, or ``None`` when
    the data set has no files to key it by."""
    found = file_samples(dataset)
    if found is None:
        return None
    samples, base = found
    digest = hashlib.sha256()
    digest.update(f"transform {getattr(base, 'transform', None)!r}".encode())
    digest.update(f"target_transform {getattr(base, 'target_transform', None)!r}".encode())
    digest.update(f"loader {_callable_id(getattr(base, 'loader', None))}".encode())
    for path, label in samples:
        try:
            st = os.stat(path)
            stamp = f"{st.st_size} {st.st_mtime_ns}"
        except OSError:
            stamp = "missing"
        digest.update(f"{os.path.abspath(path)}\0{label}\0{stamp}\n".encode())
    return digest.hexdigest()


def enabled() -> bool:
    return os.environ.get("FINETUNE_FEATURE_CACHE", "1") != "0"


def cache_path(model, head, dataset) -> Path | None:
    """Where this backbone's features of this data set live, or ``None`` if not cacheable."""
    if not enabled():
        return None
    data_key = dataset_fingerprint(dataset)
    if data_key is None:
        return None
    key = hashlib.sha256(f"{model_fingerprint(model, head)} {data_key}".encode()).hexdigest()
    return features_dir() / f"{key[:40]}.npz"


def load(path: Path) -> Features | None:
    """The cached ``(features, labels, valid)`` at ``path``, or ``None`` if absent or unreadable
    (a damaged entry is recomputed, never trusted)."""
    try:
        with np.load(path, allow_pickle=False) as archive:
            entry = (archive["features"], archive["labels"], archive["valid"])
    except (OSError, KeyError, ValueError, EOFError):
        return None
    features, labels, valid = entry
    if not (len(features) == len(labels) == len(valid)) or valid.dtype != np.bool_:
        return None
    return entry


def save(path: Path, entry: Features) -> None:
    """Write an entry atomically; a full disk or read-only cache is reported, not fatal."""
    from .utils.atomic import atomic_write

    features, labels, valid = entry
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_write(path, "wb") as f:
            np.savez(f, features=features, labels=labels, valid=valid)
    except OSError as error:
        raise CheckpointError(
            f"cannot write the feature cache {path} ({error}); set FINETUNE_HOME to a writable "
            "folder"
        ) from error
    prune(path.parent, keep=path)


def prune(folder: Path, keep: Path | None = None) -> list[Path]:
    """Delete the least recently used entries until the cache fits ``FINETUNE_FEATURE_CACHE_GB``;
    returns the files removed."""
    try:
        limit = float(os.environ.get("FINETUNE_FEATURE_CACHE_GB", "10")) * 1e9
    except ValueError:
        limit = 10e9
    entries = []
    for entry in folder.glob("*.npz"):
        try:
            st = entry.stat()
        except OSError:
            continue
        entries.append((st.st_mtime_ns, st.st_size, entry))
    total = sum(size for _, size, _ in entries)
    removed = []
    for _, size, entry in sorted(entries, key=lambda e: e[0]):
        if total <= limit:
            break
        if entry == keep:
            continue
        entry.unlink(missing_ok=True)
        total -= size
        removed.append(entry)
    return removed


def cached_features(
    model, head, loader, extract: Callable, log: Callable[[str], None] | None = None
) -> Features:
    """``extract(model, head, loader)``, or its earlier result for the same backbone, files and
    transform, read from ``$FINETUNE_HOME/features``."""
    path = cache_path(model, head, loader.dataset)
    if path is not None:
        entry = load(path)
        if entry is not None:
            with contextlib.suppress(OSError):
                os.utime(path)  # most recently used: pruned last
            if log:
                log(f"read backbone features of {int(entry[2].sum())} samples from cache {path}")
            return entry
    entry = extract(model, head, loader)
    if path is not None:
        try:
            save(path, entry)
        except CheckpointError as error:
            if log:
                log(f"warning: {error}")
    return entry
