"""Small helpers the converters share: wrapping arrays, reading int inputs, keeping dtypes."""

from __future__ import annotations

import numpy as np

from ...autograd import ops
from ...tensor import Tensor


def wrap(array) -> Tensor:
    return Tensor._from_array(np.asarray(array))


def ints(value: Tensor | None) -> tuple[int, ...] | None:
    """An int64 input (shape, axes, pads, ...) as a tuple of Python ints; None stays None."""
    if value is None:
        return None
    return tuple(int(v) for v in np.asarray(value._data).reshape(-1))


def scalar(value: Tensor | None):
    """A one-element input as a Python number (None stays None)."""
    if value is None:
        return None
    return np.asarray(value._data).reshape(-1)[0].item()


def keep_dtype(out: Tensor, dtype: np.dtype) -> Tensor:
    """ONNX keeps its input's element type where PyTorch promotes; cast back when they differ."""
    if out._data.dtype == dtype:
        return out
    return ops.Cast.apply(out, dtype=np.dtype(dtype))


def is_float(x: Tensor) -> bool:
    return x._data.dtype.kind == "f"


def axis_of(axis: int, ndim: int) -> int:
    return axis + ndim if axis < 0 else axis
