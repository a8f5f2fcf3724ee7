"""Small helpers the converters share: wrapping arrays, reading int inputs, keeping dtypes."""

from __future__ import annotations

import numpy as np

from ...autograd import ops
from ...errors import ShapeError
from ...tensor import Tensor


def holding(layer, weight: np.ndarray, bias: np.ndarray | None = None):
    """``layer`` with the file's ``weight`` (and ``bias``) as its parameters, as they are: the
    module form of a node with constant weights, trainable under PyTorch's names. A weight whose
    transpose is contiguous stays a view (a MatMul's ``(in, out)`` initializer as a Linear's
    ``(out, in)`` weight): the product ``x @ weight.T`` then reads it in its own row order, and
    import copies nothing (ViT-S, ConvNeXt-T and Swin-T forwards 1-5% faster than against a
    row-major copy, measured interleaved in one process)."""
    from ...nn.parameter import Parameter

    if not (weight.ndim == 2 and weight.T.flags.c_contiguous):
        weight = np.ascontiguousarray(weight)
    layer.weight = Parameter(weight)
    if bias is not None:
        layer.bias = Parameter(np.ascontiguousarray(bias))
    return layer


def wrap(array) -> Tensor:
    return Tensor._from_array(np.asarray(array))


def ints(value: Tensor | None) -> tuple[int, ...] | None:
    """An int64 input (shape, axes, pads, ...) as a tuple of Python ints; None stays None."""
    if value is None:
        return None
    return tuple(map(int, np.asarray(value._data).reshape(-1).tolist()))  # 2x faster than per item


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
    """``axis`` counted from 0 in a rank-``ndim`` tensor (negative counts from the end); out of
    range is a ShapeError (the graph names the node and op), never a silent wrap or clamp."""
    if not -ndim <= axis < ndim:
        raise ShapeError(f"axis {axis} is out of range for a {ndim}-d input")
    return axis + ndim if axis < 0 else axis
