"""Elementwise arithmetic: Add, Sub, Mul, Div, Pow (numpy broadcasting), the variadic Sum, Mean,
Max and Min, and unary math.

ONNX gives both operands of Add/Sub/Mul/Div one type; they differ only after a model was cast
(``.double()``) while constants computed in the graph stayed float32, and then the wider wins.
"""

from __future__ import annotations

import numpy as np

from ... import functions as fn
from ...autograd import ops
from ...tensor import Tensor
from ..limits import check_broadcast
from ..registry import register
from ._common import keep_dtype, wrap


@register("Add", 7, 13, 14)
def add(a: Tensor, b: Tensor) -> Tensor:
    check_broadcast("Add", a.shape, b.shape)
    return fn.add(a, b)


@register("Sub", 7, 13, 14)
def sub(a: Tensor, b: Tensor) -> Tensor:
    check_broadcast("Sub", a.shape, b.shape)
    return fn.sub(a, b)


@register("Mul", 7, 13, 14)
def mul(a: Tensor, b: Tensor) -> Tensor:
    check_broadcast("Mul", a.shape, b.shape)
    return fn.mul(a, b)


@register("Div", 7, 13, 14)
def div(a: Tensor, b: Tensor) -> Tensor:
    """Integer division truncates toward zero, as the ONNX reference does."""
    check_broadcast("Div", a.shape, b.shape)
    if a._data.dtype.kind in "iub":
        with np.errstate(divide="ignore", invalid="ignore"):
            return wrap(np.trunc(np.true_divide(a._data, b._data)).astype(a._data.dtype))
    return fn.div(a, b)


def _fold(what: str, inputs: tuple, combine):
    """Combine one or more inputs pairwise, left to right, with numpy broadcasting."""
    check_broadcast(what, *(x.shape for x in inputs))
    out = inputs[0]
    for x in inputs[1:]:
        out = combine(out, x)
    return out


@register("Sum", 6, 8, 13)
def sum_(*inputs: Tensor) -> Tensor:
    return _fold("Sum", inputs, fn.add)


@register("Mean", 6, 8, 13)
def mean(*inputs: Tensor) -> Tensor:
    return fn.div(_fold("Mean", inputs, fn.add), len(inputs))


@register("Max", 6, 8, 12, 13)
def max_(*inputs: Tensor) -> Tensor:
    return _fold("Max", inputs, fn.maximum)


@register("Min", 6, 8, 12, 13)
def min_(*inputs: Tensor) -> Tensor:
    return _fold("Min", inputs, fn.minimum)


@register("Pow", 7, 12, 13, 15)
def pow_(x: Tensor, y: Tensor) -> Tensor:
    """The result has the base's element type, whatever the exponent's."""
    check_broadcast("Pow", x.shape, y.shape)
    if x._data.dtype.kind in "iu":
        return wrap(np.power(x._data, y._data.astype(x._data.dtype)).astype(x._data.dtype))
    return keep_dtype(ops.PowTensor.apply(x, y), x._data.dtype)


@register("Sqrt", 6, 13)
def sqrt(x: Tensor) -> Tensor:
    return fn.sqrt(x)


@register("Exp", 6, 13)
def exp(x: Tensor) -> Tensor:
    return fn.exp(x)


@register("Erf", 9, 13)
def erf(x: Tensor) -> Tensor:
    return fn.erf(x)


@register("Log", 6, 13)
def log(x: Tensor) -> Tensor:
    return fn.log(x)


@register("Neg", 6, 13)
def neg(x: Tensor) -> Tensor:
    return fn.neg(x)


@register("Abs", 6, 13)
def abs_(x: Tensor) -> Tensor:
    return fn.abs(x)
