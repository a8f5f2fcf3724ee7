"""Buffers a forward keeps for its backward, reused from one training step to the next.

An array a node saves lives from the forward to the node's release after backward; allocated
fresh, each one costs page faults on every step once glibc has handed the last step's memory
back to the system (a fresh 14 MB array is ~3,500 faults). ``take(shape, dtype)`` hands out an
array from an idle buffer of the same size when there is one; a node lists what it took in
``ctx.pooled``, and its ``release()`` gives those back (``give``) for the next step. A node that
is never released (a graph dropped without backward) just lets its arrays be collected.

Idle buffers are kept up to ``MAX_IDLE_BYTES`` in all; ``clear()`` drops them.
"""

from __future__ import annotations

import math
import threading

import numpy as np

MAX_IDLE_BYTES = 512 * 2**20

_lock = threading.Lock()
_idle: dict[int, list[np.ndarray]] = {}  # size in bytes -> idle uint8 buffers of that size
_idle_bytes = 0


def take(shape: tuple, dtype) -> np.ndarray:
    """An uninitialised ``shape`` array of ``dtype``, in an idle buffer when one fits exactly."""
    global _idle_bytes
    nbytes = math.prod(shape) * np.dtype(dtype).itemsize
    with _lock:
        buffers = _idle.get(nbytes)
        buffer = buffers.pop() if buffers else None
        if buffer is not None:
            _idle_bytes -= nbytes
    if buffer is None:
        buffer = np.empty(nbytes, dtype=np.uint8)
    return buffer.view(dtype).reshape(shape)


def give(array: np.ndarray) -> None:
    """Return an array from ``take``; nothing may use it afterwards."""
    global _idle_bytes
    buffer = array.base
    if buffer is None or buffer.dtype != np.uint8 or buffer.nbytes != array.nbytes:
        raise ValueError("pool.give takes back only arrays that pool.take handed out")
    with _lock:
        if _idle_bytes + buffer.nbytes <= MAX_IDLE_BYTES:
            _idle.setdefault(buffer.nbytes, []).append(buffer)
            _idle_bytes += buffer.nbytes


def clear() -> None:
    """Drop every idle buffer."""
    global _idle_bytes
    with _lock:
        _idle.clear()
        _idle_bytes = 0


def idle_bytes() -> int:
    return _idle_bytes
