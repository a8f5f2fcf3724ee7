"""Constants and casts: Constant, ConstantOfShape, Cast, CastLike, BitCast."""

from __future__ import annotations

import numpy as np
import onnx

from ...autograd import ops
from ...errors import OnnxImportError, ShapeError
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


def onnx_dtype(to, op: str) -> np.dtype:
    """The numpy dtype of an ONNX element type: an int, or opset 1's name such as ``"FLOAT"``."""
    try:
        if isinstance(to, (str, bytes)):
            to = onnx.TensorProto.DataType.Value(to.decode() if isinstance(to, bytes) else to)
        return np.dtype(onnx.helper.tensor_dtype_to_np_dtype(to))
    except (KeyError, TypeError, ValueError):
        raise OnnxImportError(f"{op}: to={to!r} is not an ONNX element type") from None


def _cast(x: Tensor, dtype: np.dtype) -> Tensor:
    """Float to float keeps the gradient; strings parse and print as numbers."""
    source = x._data.dtype
    if source.kind == "f" and dtype.kind == "f":
        return ops.Cast.apply(x, dtype=dtype)
    if dtype.kind in "OU":
        return wrap(x._data.astype(str).astype(object))
    if source.kind in "OU":
        return wrap(x._data.astype(np.float64).astype(dtype))
    with np.errstate(invalid="ignore", over="ignore"):
        return wrap(x._data.astype(dtype))


@register("Cast", 1)
def cast_1(input: Tensor, *, to) -> Tensor:
    """Opset 1 names the type (``to="FLOAT"``); later opsets give its number."""
    return _cast(input, onnx_dtype(to, "Cast"))


@register("Cast", 6, 9, 13)
def cast(input: Tensor, *, to) -> Tensor:
    return _cast(input, onnx_dtype(to, "Cast"))


@register("Cast", 19, 21, 23)
def cast_19(input: Tensor, *, to, saturate=1) -> Tensor:
    """``saturate`` only concerns float8 targets, which the library does not have."""
    return _cast(input, onnx_dtype(to, "Cast"))


@register("Cast", 24, 25, 28)
def cast_25(input: Tensor, *, to, saturate=1, round_mode="up") -> Tensor:
    """``round_mode`` only concerns float8/float4 targets, which the library does not have."""
    return _cast(input, onnx_dtype(to, "Cast"))


@register("CastLike", 15)
def cast_like(input: Tensor, target_type: Tensor) -> Tensor:
    """Cast to the element type of ``target_type`` (its values are not read)."""
    return _cast(input, target_type._data.dtype)


@register("CastLike", 19, 21, 23)
def cast_like_19(input: Tensor, target_type: Tensor, *, saturate=1) -> Tensor:
    return _cast(input, target_type._data.dtype)


@register("CastLike", 24, 25)
def cast_like_25(input: Tensor, target_type: Tensor, *, saturate=1, round_mode="up") -> Tensor:
    return _cast(input, target_type._data.dtype)


@register("BitCast", 26, differentiable=False)
def bit_cast(input: Tensor, *, to) -> Tensor:
    """The same bytes read as another type of the same width (little endian, as numpy here)."""
    dtype = onnx_dtype(to, "BitCast")
    data = input._data if input._data.flags.c_contiguous else input._data.copy()
    if data.dtype.kind in "OU" or data.dtype.itemsize != dtype.itemsize:
        raise ShapeError(
            f"BitCast: cannot reinterpret {data.dtype} as {dtype}: the widths must be equal"
        )
    return wrap(data.view(dtype))
