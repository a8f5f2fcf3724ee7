"""Comparisons, boolean and bitwise logic, Where, IsNaN and IsInf.

Everything here but Where has no gradient (``differentiable=False``): comparisons and tests give
bool tensors, bitwise ops work on integers. Where passes gradients to its two value inputs.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from ... import functions as fn
from ...errors import OnnxImportError
from ...tensor import Tensor
from ..limits import check_broadcast
from ..registry import register
from ._common import wrap
from .elementwise import legacy_broadcast


def _binary(op: str, kernel: Callable, dtype=None) -> Callable:
    """A broadcasting numpy ``kernel`` on the operands' arrays; the result in ``dtype`` (bool for
    comparisons) or the first operand's type."""

    def run(a: Tensor, b: Tensor) -> Tensor:
        check_broadcast(op, a.shape, b.shape)
        out = np.asarray(kernel(a._data, b._data))
        return wrap(out.astype(dtype or a._data.dtype, copy=False))

    return run


def _legacy(op: str, kernel: Callable) -> Callable:
    """Opset 1's form of a comparison or boolean op, with ``broadcast`` and ``axis``."""

    def run(a: Tensor, b: Tensor, *, axis=None, broadcast=0) -> Tensor:
        return kernel(a, legacy_broadcast(op, a, b, broadcast, axis))

    return run


def _equal(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Elementwise ``==`` (strings included: object arrays compare their items)."""
    return np.equal(a, b) if a.dtype.kind not in "OU" else (a == b)


_COMPARISONS = {
    # op: (kernel, schema versions, opset 1 with broadcast/axis)
    "Equal": (_equal, (7, 11, 13, 19), True),
    "Less": (np.less, (7, 9, 13), True),
    "Greater": (np.greater, (7, 9, 13), True),
    "LessOrEqual": (np.less_equal, (12, 16), False),
    "GreaterOrEqual": (np.greater_equal, (12, 16), False),
    "And": (np.logical_and, (7,), True),
    "Or": (np.logical_or, (7,), True),
    "Xor": (np.logical_xor, (7,), True),
}

for _op, (_kernel, _versions, _has_legacy) in _COMPARISONS.items():
    _run = _binary(_op, _kernel, np.bool_)
    register(_op, *_versions, differentiable=False)(_run)
    if _has_legacy:
        register(_op, 1, differentiable=False)(_legacy(_op, _run))

for _op, _kernel in {
    "BitwiseAnd": np.bitwise_and,
    "BitwiseOr": np.bitwise_or,
    "BitwiseXor": np.bitwise_xor,
}.items():
    register(_op, 18, differentiable=False)(_binary(_op, _kernel))


@register("Not", 1, differentiable=False)
def not_(x: Tensor) -> Tensor:
    return wrap(np.logical_not(x._data))


@register("BitwiseNot", 18, differentiable=False)
def bitwise_not(x: Tensor) -> Tensor:
    return wrap(np.invert(x._data))


@register("BitShift", 11, 28, differentiable=False)
def bit_shift(x: Tensor, y: Tensor, *, direction) -> Tensor:
    """A shift by a negative amount or by the type's width or more gives what the sign fill
    alone gives (opset 28's rule; numpy, as C, leaves it undefined): -1 for a right shift of a
    negative value, else 0."""
    if direction not in ("LEFT", "RIGHT"):
        raise OnnxImportError(f"BitShift: direction must be LEFT or RIGHT, not {direction!r}")
    check_broadcast("BitShift", x.shape, y.shape)
    a, s = x._data, y._data
    valid = (s >= 0) & (s < a.dtype.itemsize * 8)
    amount = np.where(valid, s, 0).astype(a.dtype)
    if direction == "LEFT":
        out, fill = np.left_shift(a, amount), np.zeros((), a.dtype)
    else:
        negative = a < 0 if a.dtype.kind == "i" else np.zeros(a.shape, bool)
        out, fill = np.right_shift(a, amount), np.where(negative, -1, 0).astype(a.dtype)
    return wrap(np.where(valid, out, fill).astype(a.dtype))


@register("Where", 9, 16)
def where(condition: Tensor, x: Tensor, y: Tensor) -> Tensor:
    """Gradients go to ``x`` where the condition holds and to ``y`` elsewhere."""
    check_broadcast("Where", condition.shape, x.shape, y.shape)
    return fn.where(condition, x, y)


@register("IsNaN", 9, 13, 20, differentiable=False)
def is_nan(x: Tensor) -> Tensor:
    return wrap(np.isnan(x._data))


@register("IsInf", 10, 20, differentiable=False)
def is_inf(x: Tensor, *, detect_negative=1, detect_positive=1) -> Tensor:
    data = x._data
    found = np.zeros(data.shape, dtype=bool)
    if detect_positive:
        found |= np.isposinf(data)
    if detect_negative:
        found |= np.isneginf(data)
    return wrap(found)
