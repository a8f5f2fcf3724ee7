"""Elementwise arithmetic and math: one table row per plain op drives its converter registration
and its export emitter; the variadic Sum, Mean, Max, Min and the Mod op follow.

ONNX gives both operands of Add/Sub/Mul/Div one type; they differ only after a model was cast
(``.double()``) while constants computed in the graph stayed float32, and then the wider wins.
Integer arithmetic keeps its type: Div truncates toward zero, Pow keeps the base's type.
Before opset 7 a binary op broadcast only with ``broadcast=1``, ``B`` aligned at ``axis`` of
``A``; the legacy converters rewrite that into numpy broadcasting.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from ... import functions as fn
from ...autograd import ops
from ...errors import ShapeError
from ...tensor import Tensor
from ..export_ops import cannot_export, emits
from ..limits import check_broadcast
from ..registry import register
from ._common import axis_of, keep_dtype, wrap


@dataclass(frozen=True)
class Row:
    """One plain elementwise op: its ``Function``, its ONNX name and the schema versions it is
    converted for (empty when another family's file holds the converter; the emitter is here)."""

    function: type
    onnx: str
    versions: tuple[int, ...]


# -- unary ----------------------------------------------------------------------------------------

UNARY = (
    Row(ops.Neg, "Neg", (1, 6, 13)),
    Row(ops.Abs, "Abs", (1, 6, 13)),
    Row(ops.Exp, "Exp", (1, 6, 13)),
    Row(ops.Log, "Log", (1, 6, 13)),
    Row(ops.Sqrt, "Sqrt", (1, 6, 13)),
    Row(ops.Reciprocal, "Reciprocal", (1, 6, 13)),
    Row(ops.Floor, "Floor", (1, 6, 13)),
    Row(ops.Ceil, "Ceil", (1, 6, 13)),
    Row(ops.Round, "Round", (11, 22)),
    Row(ops.Sign, "Sign", (9, 13)),
    Row(ops.Erf, "Erf", (9, 13)),
    Row(ops.Sin, "Sin", (7, 22)),
    Row(ops.Cos, "Cos", (7, 22)),
    Row(ops.Tan, "Tan", (7, 22)),
    Row(ops.Asin, "Asin", (7, 22)),
    Row(ops.Acos, "Acos", (7, 22)),
    Row(ops.Atan, "Atan", (7, 22)),
    Row(ops.Sinh, "Sinh", (9, 22)),
    Row(ops.Cosh, "Cosh", (9, 22)),
    Row(ops.Asinh, "Asinh", (9, 22)),
    Row(ops.Acosh, "Acosh", (9, 22)),
    Row(ops.Atanh, "Atanh", (9, 22)),
    # converters in activation.py (with their opset 1 and 6 versions)
    Row(ops.Relu, "Relu", ()),
    Row(ops.Sigmoid, "Sigmoid", ()),
    Row(ops.Tanh, "Tanh", ()),
)


def _unary_converter(function: type) -> Callable:
    def run(x: Tensor, *, consumed_inputs=None) -> Tensor:
        """``consumed_inputs`` (opset 1) was an in-place hint; it changes nothing."""
        return function.apply(x)

    run.__name__ = run.__qualname__ = function.__name__.lower()
    return run


def _unary_emitter(row: Row) -> Callable:
    def emit(b, call, outs):
        if row.versions and b.opset < row.versions[0]:
            raise cannot_export(call, f"{row.onnx} needs opset {row.versions[0]}, not {b.opset}")
        b.node(row.onnx, [b.operand(call.args[0], call.results[0]._data.dtype)], outs)

    return emit


for _row in UNARY:
    if _row.versions:
        register(_row.onnx, *_row.versions)(_unary_converter(_row.function))
    emits(_row.function)(_unary_emitter(_row))


# -- binary ---------------------------------------------------------------------------------------


def _int_div(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Integer division truncated toward zero (ONNX and C), exact for all of int64."""
    q = np.floor_divide(a, b)
    return (q + ((np.mod(a, b) != 0) & ((a < 0) != (b < 0)))).astype(a.dtype)


def _int_pow(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """An integer base keeps its type; a negative exponent truncates, as onnxruntime's
    ``static_cast(std::pow(...))`` does (numpy refuses it)."""
    if np.any(b < 0):
        return np.trunc(np.power(a.astype(np.float64), b.astype(np.float64))).astype(a.dtype)
    return np.power(a, b.astype(a.dtype))


def _float_pow(a: Tensor, b: Tensor) -> Tensor:
    """The result has the base's element type, whatever the exponent's."""
    return keep_dtype(ops.PowTensor.apply(a, b), a._data.dtype)


@dataclass(frozen=True)
class BinaryRow(Row):
    """A broadcasting binary op; ``integer`` computes it on integer arrays where the float
    ``Function`` would not keep ONNX's integer semantics; ``run`` replaces ``function.apply``."""

    integer: Callable | None = None
    run: Callable | None = None


BINARY = (
    BinaryRow(ops.Add, "Add", (1, 6, 7, 13, 14)),
    BinaryRow(ops.Sub, "Sub", (1, 6, 7, 13, 14)),
    BinaryRow(ops.Mul, "Mul", (1, 6, 7, 13, 14)),
    BinaryRow(ops.Div, "Div", (1, 6, 7, 13, 14), integer=_int_div),
    BinaryRow(ops.PowTensor, "Pow", (1, 7, 12, 13, 15), integer=_int_pow, run=_float_pow),
)


def _binary_kernel(row: BinaryRow) -> Callable:
    def run(a: Tensor, b: Tensor) -> Tensor:
        check_broadcast(row.onnx, a.shape, b.shape)
        if row.integer is not None and a._data.dtype.kind in "iub":
            with np.errstate(all="ignore"):
                return wrap(row.integer(a._data, b._data))
        return (row.run or row.function.apply)(a, b)

    return run


def legacy_broadcast(op: str, a: Tensor, b: Tensor, broadcast: int, axis: int | None) -> Tensor:
    """``b`` reshaped so numpy broadcasting does what opset 1-6 meant: without ``broadcast``
    the shapes must be equal; with it ``b``'s dims line up with ``a``'s from ``axis`` (default:
    the trailing dims)."""
    if not broadcast:
        if tuple(a.shape) != tuple(b.shape):
            raise ShapeError(
                f"{op}: shapes {list(a.shape)} and {list(b.shape)} differ and broadcast=0 "
                "(before opset 7 broadcasting needs broadcast=1)"
            )
        return b
    if axis is None or b.ndim == 0:
        return b
    start = axis_of(axis, a.ndim)
    if start + b.ndim > a.ndim:
        raise ShapeError(
            f"{op}: B of shape {list(b.shape)} does not fit into A of shape {list(a.shape)} "
            f"from axis {axis}"
        )
    return fn.reshape(b, tuple(b.shape) + (1,) * (a.ndim - start - b.ndim))


def _legacy_converter(row: BinaryRow, kernel: Callable) -> Callable:
    def run(a: Tensor, b: Tensor, *, axis=None, broadcast=0, consumed_inputs=None) -> Tensor:
        return kernel(a, legacy_broadcast(row.onnx, a, b, broadcast, axis))

    return run


def _binary_emitter(row: BinaryRow) -> Callable:
    def emit(b, call, outs):
        dtype = call.results[0]._data.dtype
        b.node(row.onnx, [b.operand(x, dtype) for x in call.args], outs)

    return emit


for _row in BINARY:
    _kernel = _binary_kernel(_row)
    _legacy = tuple(v for v in _row.versions if v < 7)
    if _legacy:
        register(_row.onnx, *_legacy)(_legacy_converter(_row, _kernel))
    register(_row.onnx, *(v for v in _row.versions if v >= 7))(_kernel)
    emits(_row.function)(_binary_emitter(_row))


def _mod_emitter(b, call, outs):
    """Mod; a float remainder with the divisor's sign as ``a - b * floor(a / b)``, since
    onnxruntime runs Mod on floats only with ``fmod=1``."""
    dtype = call.results[0]._data.dtype
    fmod = bool(call.kwargs.get("fmod", False))
    a, d = (b.operand(x, dtype) for x in call.args)
    if fmod or dtype.kind != "f":
        b.node("Mod", [a, d], outs, fmod=int(fmod))
        return
    quotient = b.node("Floor", b.node("Div", [a, d]))
    b.node("Sub", [a, b.node("Mul", [d, quotient[0]])[0]], outs)


emits(ops.Mod)(_mod_emitter)


@register("Mod", 10, 13, 28)
def mod(a: Tensor, b: Tensor, *, fmod=0) -> Tensor:
    """``fmod=0``: the remainder has the divisor's sign (integer or float); ``fmod=1``: the
    dividend's, as C's fmod. Integer division by zero gives 0, not a crash."""
    check_broadcast("Mod", a.shape, b.shape)
    if a._data.dtype.kind in "iu" and not fmod:
        with np.errstate(all="ignore"):
            return wrap(np.mod(a._data, b._data).astype(a._data.dtype))
    return ops.Mod.apply(a, b, fmod=bool(fmod))


# -- variadic -------------------------------------------------------------------------------------


def _fold(what: str, inputs: tuple, combine):
    """Combine one or more inputs pairwise, left to right, with numpy broadcasting."""
    check_broadcast(what, *(x.shape for x in inputs))
    out = inputs[0]
    for x in inputs[1:]:
        out = combine(out, x)
    return out


@register("Sum", 1, 6, 8, 13)
def sum_(*inputs: Tensor, consumed_inputs=None) -> Tensor:
    return _fold("Sum", inputs, fn.add)


@register("Mean", 1, 6, 8, 13)
def mean(*inputs: Tensor, consumed_inputs=None) -> Tensor:
    return fn.div(_fold("Mean", inputs, fn.add), len(inputs))


@register("Max", 1, 6, 8, 12, 13)
def max_(*inputs: Tensor, consumed_inputs=None) -> Tensor:
    return _fold("Max", inputs, fn.maximum)


@register("Min", 1, 6, 8, 12, 13)
def min_(*inputs: Tensor, consumed_inputs=None) -> Tensor:
    return _fold("Min", inputs, fn.minimum)
