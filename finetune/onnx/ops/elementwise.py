"""Elementwise arithmetic: Add, Sub, Mul, Div, Pow (numpy broadcasting) and unary math."""

from __future__ import annotations

import numpy as np

from ... import functions as fn
from ...autograd import ops
from ..registry import register
from ._common import keep_dtype, wrap


@register("Add", 7, 13, 14)
def add(a, b):
    return keep_dtype(fn.add(a, b), a._data.dtype)


@register("Sub", 7, 13, 14)
def sub(a, b):
    return keep_dtype(fn.sub(a, b), a._data.dtype)


@register("Mul", 7, 13, 14)
def mul(a, b):
    return keep_dtype(fn.mul(a, b), a._data.dtype)


@register("Div", 7, 13, 14)
def div(a, b):
    """Integer division truncates toward zero, as the ONNX reference does."""
    if a._data.dtype.kind in "iub":
        with np.errstate(divide="ignore", invalid="ignore"):
            return wrap(np.trunc(np.true_divide(a._data, b._data)).astype(a._data.dtype))
    return keep_dtype(fn.div(a, b), a._data.dtype)


@register("Pow", 7, 12, 13, 15)
def pow_(x, y):
    """The result has the base's element type, whatever the exponent's."""
    if x._data.dtype.kind in "iu":
        return wrap(np.power(x._data, y._data.astype(x._data.dtype)).astype(x._data.dtype))
    return keep_dtype(ops.PowTensor.apply(x, y), x._data.dtype)


@register("Sqrt", 6, 13)
def sqrt(x):
    return fn.sqrt(x)


@register("Exp", 6, 13)
def exp(x):
    return fn.exp(x)


@register("Log", 6, 13)
def log(x):
    return fn.log(x)


@register("Neg", 6, 13)
def neg(x):
    return fn.neg(x)


@register("Abs", 6, 13)
def abs_(x):
    return fn.abs(x)
