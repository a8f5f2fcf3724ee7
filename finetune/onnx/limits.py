"""The size budget for tensors an ONNX file makes the library create from numbers in the file.

A shape read from a file (an initializer's ``dims``, ``ConstantOfShape``'s input, ``Pad``'s
pads, a convolution's padding) costs the file a few bytes but can ask for terabytes, and ops
whose output outgrows their inputs (broadcasting, ``MatMul``, ``Concat``) multiply what is
already there. Every such shape is checked here before anything is allocated: no dimension may
be negative and a tensor may hold at most ``MAX_ELEMENTS`` elements (default 2**30, 4 GiB of
float32, several times the largest activation of a ResNet-50 at batch 256). Set
``FINETUNE_ONNX_MAX_ELEMENTS`` to change it.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence

import numpy as np

from ..errors import ShapeError

MAX_ELEMENTS = int(os.environ.get("FINETUNE_ONNX_MAX_ELEMENTS", 2**30))


def check_shape(shape: Sequence[int], what: str) -> tuple[int, ...]:
    """``shape`` as a tuple of ints, or ShapeError naming ``what`` when a dimension is negative
    or the tensor would exceed the budget."""
    dims = tuple(int(d) for d in shape)
    if any(d < 0 for d in dims):
        raise ShapeError(f"{what}: shape {list(dims)} has a negative dimension")
    count = math.prod(dims)
    if count > MAX_ELEMENTS:
        raise ShapeError(
            f"{what}: shape {list(dims)} asks for {count:,} elements, more than the budget of "
            f"{MAX_ELEMENTS:,} (FINETUNE_ONNX_MAX_ELEMENTS); the file is corrupt or hostile"
        )
    return dims


def check_broadcast(what: str, *shapes: Sequence[int]) -> None:
    """Refuse a broadcast whose result would exceed the budget: two tensors within it can ask
    for the product of their sizes. Shapes that do not broadcast are left to the op's error."""
    try:
        shape = np.broadcast_shapes(*(tuple(s) for s in shapes))
    except ValueError:
        return
    check_shape(shape, what)
