"""Constants and casts: Constant, ConstantOfShape, Cast."""

from __future__ import annotations

import numpy as np
import onnx

from ...autograd import ops
from ...errors import OnnxImportError
from ...tensor import Tensor
from ..limits import check_shape
from ..registry import register
from ._common import ints, wrap


@register("Constant", 1, 9, 11, 12, 13, 19, 21, 23, 24, 25)
def constant(
    *,
    value=None,
    value_float=None,
    value_floats=None,
    value_int=None,
    value_ints=None,
    value_string=None,
    value_strings=None,
    sparse_value=None,
) -> Tensor:
    """Exactly one attribute holds the value; ints are int64, floats float32."""
    if value is not None:
        return wrap(np.array(value))
    if value_float is not None:
        return wrap(np.array(value_float, dtype=np.float32))
    if value_floats is not None:
        return wrap(np.array(value_floats, dtype=np.float32))
    if value_int is not None:
        return wrap(np.array(value_int, dtype=np.int64))
    if value_ints is not None:
        return wrap(np.array(value_ints, dtype=np.int64))
    if value_string is not None:
        return wrap(np.array(value_string, dtype=object))
    if value_strings is not None:
        return wrap(np.array(value_strings, dtype=object))
    if sparse_value is not None:
        return wrap(onnx.numpy_helper.to_array(onnx.helper.get_attribute_value(sparse_value)))
    raise OnnxImportError("Constant node has no value attribute")


@register("ConstantOfShape", 9, 20, 21, 23, 24, 25)
def constant_of_shape(input: Tensor, *, value=None) -> Tensor:
    """A tensor of ``input``'s shape filled with ``value`` (float32 zero by default)."""
    fill = np.zeros(1, dtype=np.float32) if value is None else np.asarray(value).reshape(-1)
    return wrap(np.full(check_shape(ints(input), "ConstantOfShape"), fill[0], dtype=fill.dtype))


def _cast(x, to: int):
    try:
        dtype = np.dtype(onnx.helper.tensor_dtype_to_np_dtype(to))
    except (KeyError, TypeError, ValueError):
        raise OnnxImportError(f"Cast: to={to} is not an ONNX element type") from None
    source = x._data.dtype
    if source.kind == "f" and dtype.kind == "f":
        return ops.Cast.apply(x, dtype=dtype)
    if dtype.kind == "O" or dtype.kind == "U":
        return wrap(x._data.astype(str).astype(object))
    if source.kind in "OU":
        return wrap(x._data.astype(np.float64).astype(dtype))
    with np.errstate(invalid="ignore", over="ignore"):
        return wrap(x._data.astype(dtype))


@register("Cast", 6, 9, 13)
def cast(input: Tensor, *, to) -> Tensor:
    return _cast(input, to)


@register("Cast", 19, 21, 23)
def cast_19(input: Tensor, *, to, saturate=1) -> Tensor:
    """``saturate`` only concerns float8 targets, which the library does not have."""
    return _cast(input, to)


@register("Cast", 24, 25, 28)
def cast_25(input: Tensor, *, to, saturate=1, round_mode="up") -> Tensor:
    """``round_mode`` only concerns float8/float4 targets, which the library does not have."""
    return _cast(input, to)
