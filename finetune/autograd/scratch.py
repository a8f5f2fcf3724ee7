"""Per-thread buffers reused across kernel calls, for temporaries that never leave a kernel
(im2col columns, padded inputs, pooling phases, Winograd tiles).

First touches of fresh buffers this size cost page faults: 130 ms for conv1's 59 MB of columns
on this VM, against 7 ms to fill them. ``scratch(slot, shape, dtype)`` hands out a view of the
slot's buffer, grown when a call needs more; a later call for the same slot on the same thread
overwrites it, so a kernel must be done with a slot's contents before asking for it again.
"""

from __future__ import annotations

import math
import threading

import numpy as np

_space = threading.local()


def scratch(slot: str, shape: tuple, dtype: np.dtype) -> np.ndarray:
    """An uninitialised ``shape`` array of ``dtype`` in this thread's buffer for ``slot``."""
    nbytes = math.prod(shape) * np.dtype(dtype).itemsize
    buffers = _space.__dict__
    buffer = buffers.get(slot)
    if buffer is None or buffer.nbytes < nbytes:
        buffer = buffers[slot] = np.empty(nbytes, dtype=np.uint8)
    return buffer[:nbytes].view(dtype).reshape(shape)
