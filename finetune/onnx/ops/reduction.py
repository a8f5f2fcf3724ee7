"""Reductions and scans: ReduceSum, ReduceMean, ReduceMax, ReduceMin, ReduceProd, ReduceL1,
ReduceL2, ReduceLogSum, ReduceLogSumExp, ReduceSumSquare, ArgMax, ArgMin, CumSum, CumProd, TopK,
LpNormalization.

Reduce ops take ``axes`` as an attribute before opset 13 (ReduceSum) or 18 (the others) and as an
optional input from then on. No axes means all axes, unless ``noop_with_empty_axes``: then
nothing is reduced and only the op's elementwise part runs (``square`` for ReduceSumSquare,
``abs`` for ReduceL1/L2, ``log`` for ReduceLogSum), as in onnxruntime and the reference. A
reduction over an empty axis gives the identity (0, 1, -inf, +inf; an integer type's extreme),
as onnxruntime does. Float inputs go through the library's differentiable functions; integer
and bool inputs are computed in their own type, which ONNX keeps.
"""

from __future__ import annotations

import math

import numpy as np

from ... import functions as fn
from ...autograd import ops
from ...autograd.cumulative import Cumprod
from ...autograd.function import is_tracing
from ...errors import OnnxImportError, ShapeError
from ...tensor import Tensor
from ..export_ops import cannot_export, emits
from ..registry import register
from ._common import axis_of, ints, is_float, keep_dtype, scalar, wrap


def _reduced_axes(op: str, ndim: int, axes, noop: int) -> tuple[int, ...]:
    """The sorted axes to reduce; () when nothing is."""
    if not axes:
        return () if noop else tuple(range(ndim))
    out = set()
    for axis in axes:
        if not -ndim <= axis < max(ndim, 1):
            raise ShapeError(f"{op}: axis {axis} is out of range for a {ndim}-d input")
        out.add(axis_of(axis, ndim) if ndim else 0)
    return tuple(sorted(out)) if ndim else ()


def _reduce(op: str, data: Tensor, axes, keepdims: int, noop: int = 0) -> Tensor:
    axes = _reduced_axes(op, data.ndim, axes, noop)
    keep = bool(keepdims)
    array = data._data
    if any(array.shape[a] == 0 for a in axes):
        shape = tuple(
            1 if d in axes else s for d, s in enumerate(array.shape) if keep or d not in axes
        )
        return wrap(np.full(shape, _identity(op, array.dtype), dtype=array.dtype))
    if not is_float(data):
        return wrap(_reduce_array(op, array, axes, keep))
    if not axes:
        return _ELEMENTWISE[op](data)
    return _REDUCE[op](data, axes, keep)


def _identity(op: str, dtype: np.dtype):
    """What a reduction over no elements gives, in ``dtype``."""
    if op == "ReduceProd":
        return 1
    if op not in ("ReduceMax", "ReduceMin", "ReduceLogSum", "ReduceLogSumExp"):
        return 0
    lowest = op != "ReduceMin"  # max and the logs (log 0) start from the lowest value
    if dtype.kind == "f":
        return -np.inf if lowest else np.inf
    if dtype.kind == "b":
        return not lowest
    return np.iinfo(dtype).min if lowest else np.iinfo(dtype).max


def _reduce_array(op: str, a: np.ndarray, axes: tuple, keep: bool) -> np.ndarray:
    """Integer and bool inputs, computed in their own type (the reference's results)."""
    dtype = a.dtype
    if op == "ReduceMax":
        return np.max(a, axis=axes, keepdims=keep) if axes else a.copy()
    if op == "ReduceMin":
        return np.min(a, axis=axes, keepdims=keep) if axes else a.copy()
    if op == "ReduceMean":
        return np.asarray(np.mean(a, axis=axes, keepdims=keep)).astype(dtype)
    if op == "ReduceProd":
        return np.asarray(np.prod(a, axis=axes, keepdims=keep, dtype=dtype))
    mapped = {"ReduceL1": np.abs, "ReduceL2": np.square, "ReduceSumSquare": np.square}
    mapped = mapped.get(op, lambda v: v)(a)
    total = np.asarray(np.sum(mapped, axis=axes, keepdims=keep, dtype=dtype))
    with np.errstate(divide="ignore", invalid="ignore"):
        if op == "ReduceL2":
            return np.sqrt(total).astype(dtype)
        if op == "ReduceLogSum":
            return np.log(total).astype(dtype)
        if op == "ReduceLogSumExp":
            exps = np.sum(np.exp(a.astype(np.float64)), axis=axes, keepdims=keep)
            return np.asarray(np.log(exps)).astype(dtype)
    return total


def _merged(x: Tensor, axes: tuple, keep: bool, reduce_last) -> Tensor:
    """Reduce several axes with a one-axis reduction: move them last, merge them into one,
    reduce it, and restore the kept dims."""
    rest = [d for d in range(x.ndim) if d not in axes]
    order = rest + list(axes)
    moved = fn.permute(x, *order) if order != list(range(x.ndim)) else x
    sizes = [x.shape[d] for d in rest]
    out = reduce_last(fn.reshape(moved, (*sizes, math.prod(x.shape[a] for a in axes))))
    kept = [1 if d in axes else s for d, s in enumerate(x.shape)]
    return fn.reshape(out, kept if keep else sizes)


def _extreme(largest: bool):
    """Max or min; the gradient goes to the first extreme element (a subgradient)."""
    pick = fn.max if largest else fn.min

    def reduce(x: Tensor, axes: tuple, keep: bool) -> Tensor:
        if len(axes) == 1:
            return pick(x, axes[0], keep).values
        return _merged(x, axes, keep, lambda m: pick(m, m.ndim - 1).values)

    return reduce


def _product(x: Tensor, axes: tuple, keep: bool) -> Tensor:
    if len(axes) == 1:
        return fn.prod(x, axes[0], keep)
    return _merged(x, axes, keep, lambda m: fn.prod(m, m.ndim - 1))


def _sum(x: Tensor, axes: tuple, keep: bool) -> Tensor:
    return keep_dtype(fn.sum(x, dim=axes, keepdim=keep), x._data.dtype)


_REDUCE = {
    "ReduceSum": _sum,
    "ReduceMean": lambda x, axes, keep: fn.mean(x, dim=axes, keepdim=keep),
    "ReduceMax": _extreme(True),
    "ReduceMin": _extreme(False),
    "ReduceProd": _product,
    "ReduceL1": lambda x, axes, keep: ops.Norm.apply(x, p=1.0, dim=axes, keepdim=keep),
    "ReduceL2": lambda x, axes, keep: ops.Norm.apply(x, p=2.0, dim=axes, keepdim=keep),
    "ReduceSumSquare": lambda x, axes, keep: _sum(x * x, axes, keep),
    "ReduceLogSum": lambda x, axes, keep: fn.log(_sum(x, axes, keep)),
    "ReduceLogSumExp": lambda x, axes, keep: ops.LogSumExp.apply(x, dim=axes, keepdim=keep),
}

# A reduction over no axes (``noop_with_empty_axes``, or a 0-d input): only the elementwise part.
_ELEMENTWISE = {
    "ReduceSum": lambda x: x,
    "ReduceMean": lambda x: x,
    "ReduceMax": lambda x: x,
    "ReduceMin": lambda x: x,
    "ReduceProd": lambda x: x,
    "ReduceL1": fn.abs,
    "ReduceL2": fn.abs,
    "ReduceSumSquare": lambda x: x * x,
    "ReduceLogSum": fn.log,
    "ReduceLogSumExp": lambda x: x,
}


def _register_reduce(op: str, attribute_versions: tuple, input_versions: tuple) -> None:
    """One converter for the versions with an ``axes`` attribute, one for those with an input."""

    def with_attribute(data: Tensor, *, axes=None, keepdims=1) -> Tensor:
        return _reduce(op, data, axes, keepdims)

    def with_input(
        data: Tensor, axes: Tensor | None = None, *, keepdims=1, noop_with_empty_axes=0
    ) -> Tensor:
        return _reduce(op, data, ints(axes), keepdims, noop_with_empty_axes)

    with_attribute.__name__ = with_attribute.__qualname__ = f"{op}_axes_attribute"
    with_input.__name__ = with_input.__qualname__ = f"{op}_axes_input"
    with_attribute.__doc__ = f"{op} with ``axes`` an attribute."
    with_input.__doc__ = f"{op} with ``axes`` an optional input."
    register(op, *attribute_versions)(with_attribute)
    register(op, *input_versions)(with_input)


for _op, _attribute_versions, _input_versions in (
    ("ReduceSum", (1, 11), (13,)),
    ("ReduceMean", (1, 11, 13), (18,)),
    ("ReduceMax", (1, 11, 12, 13), (18, 20)),
    ("ReduceMin", (1, 11, 12, 13), (18, 20)),
    ("ReduceProd", (1, 11, 13), (18,)),
    ("ReduceL1", (1, 11, 13), (18,)),
    ("ReduceL2", (1, 11, 13), (18,)),
    ("ReduceSumSquare", (1, 11, 13), (18,)),
    ("ReduceLogSum", (1, 11, 13), (18, 28)),
    ("ReduceLogSumExp", (1, 11, 13), (18, 28)),
):
    _register_reduce(_op, _attribute_versions, _input_versions)


# -- ArgMax / ArgMin ------------------------------------------------------------------------------


def _arg(data: Tensor, axis: int, keepdims: int, select_last_index: int, largest: bool):
    a, op = data._data, "ArgMax" if largest else "ArgMin"
    if not -a.ndim <= axis < max(a.ndim, 1):
        raise ShapeError(f"{op}: axis {axis} is out of range for a {a.ndim}-d input")
    axis = axis_of(axis, a.ndim) if a.ndim else 0
    if a.ndim and a.shape[axis] == 0:
        raise ShapeError(
            f"{op}: axis {axis} of input {list(a.shape)} is empty; it has no {op.lower()}"
        )
    pick = np.argmax if largest else np.argmin
    if not a.ndim:
        index = np.zeros((), np.int64)
    elif select_last_index:
        index = a.shape[axis] - 1 - pick(np.flip(a, axis), axis=axis)
    else:
        index = pick(a, axis=axis)
    if keepdims and a.ndim:
        index = np.expand_dims(index, axis)
    return wrap(np.asarray(index, dtype=np.int64))


@register("ArgMax", 1, 11, differentiable=False)
def arg_max_1(data: Tensor, *, axis=0, keepdims=1) -> Tensor:
    return _arg(data, axis, keepdims, 0, True)


@register("ArgMax", 12, 13, differentiable=False)
def arg_max(data: Tensor, *, axis=0, keepdims=1, select_last_index=0) -> Tensor:
    """The index (int64) of the first largest element, or of the last with
    ``select_last_index``."""
    return _arg(data, axis, keepdims, select_last_index, True)


@register("ArgMin", 1, 11, differentiable=False)
def arg_min_1(data: Tensor, *, axis=0, keepdims=1) -> Tensor:
    return _arg(data, axis, keepdims, 0, False)


@register("ArgMin", 12, 13, differentiable=False)
def arg_min(data: Tensor, *, axis=0, keepdims=1, select_last_index=0) -> Tensor:
    return _arg(data, axis, keepdims, select_last_index, False)


# -- CumSum / CumProd -----------------------------------------------------------------------------


def _scan(op: str, x: Tensor, axis: Tensor, exclusive: int, reverse: int) -> Tensor:
    """A running sum or product; ``exclusive`` shifts in the identity so element ``i`` leaves
    itself out, ``reverse`` runs from the end. Integers run in their own type."""
    if x.ndim == 0:
        raise ShapeError(f"{op}: the input must have at least one dimension")
    where = scalar(axis)
    if not -x.ndim <= where < x.ndim:
        raise ShapeError(f"{op}: axis {where} is out of range for a {x.ndim}-d input")
    dim = axis_of(int(where), x.ndim)
    identity = 0 if op == "CumSum" else 1
    if not is_float(x):
        a = np.flip(x._data, dim) if reverse else x._data
        if exclusive and a.shape[dim]:
            head = np.full_like(np.take(a, [0], axis=dim), identity)
            a = np.concatenate([head, np.take(a, np.arange(a.shape[dim] - 1), axis=dim)], dim)
        running = np.cumsum if op == "CumSum" else np.cumprod
        out = running(a, axis=dim, dtype=a.dtype)
        return wrap(np.flip(out, dim) if reverse else out)
    y = fn.flip(x, dim) if reverse else x
    if exclusive and y.shape[dim]:  # shift in the identity, drop the last: one Pad
        pads = tuple((1, -1) if d == dim else (0, 0) for d in range(y.ndim))
        y = ops.Pad.apply(y, pads=pads, mode="constant", value=identity)
    y = ops.Cumsum.apply(y, dim=dim) if op == "CumSum" else Cumprod.apply(y, dim=dim)
    return fn.flip(y, dim) if reverse else y


@register("CumSum", 11, 14)
def cum_sum(x: Tensor, axis: Tensor, *, exclusive=0, reverse=0) -> Tensor:
    return _scan("CumSum", x, axis, exclusive, reverse)


@register("CumProd", 26)
def cum_prod(x: Tensor, axis: Tensor, *, exclusive=0, reverse=0) -> Tensor:
    return _scan("CumProd", x, axis, exclusive, reverse)


@emits(ops.Prod)
def _emit_prod(b, call, outs):
    """Prod over everything or one dim (ProdDim) as ReduceProd, axes an attribute before opset
    18 and an input from then on (the builder's ``reduce`` knows which)."""
    x = call.args[0]
    dim = call.kwargs.get("dim")
    axes = None if dim is None else [dim % max(len(x.shape), 1)]
    b.reduce("ReduceProd", b.name_of(x), axes, bool(call.kwargs.get("keepdim", False)), outs)


@emits(ops.Cumsum, Cumprod)
def _emit_scan(b, call, outs):
    """A plain running sum (opset 11) or product (opset 26) along one axis, given as a 0-d
    input."""
    op, since = ("CumSum", 11) if issubclass(call.function, ops.Cumsum) else ("CumProd", 26)
    if b.opset < since:
        raise cannot_export(call, f"{op} needs opset {since}, not {b.opset}")
    x = call.args[0]
    axis = b.constant(np.asarray(call.kwargs["dim"] % max(len(x.shape), 1), dtype=np.int64))
    b.node(op, [b.operand(x, _dtype_of(call)), axis], outs)


def _dtype_of(call) -> np.dtype:
    return call.results[0]._data.dtype


# -- TopK ---------------------------------------------------------------------------------------


def _top_k(x: Tensor, k: int, axis: int, largest: int) -> tuple[Tensor, Tensor]:
    """The ``k`` largest (or smallest) elements along ``axis`` in order, and their int64
    indices; equal elements come in index order, as the spec asks."""
    a = x._data
    if not -a.ndim <= axis < a.ndim:
        raise ShapeError(f"TopK: axis {axis} is out of range for a {a.ndim}-d input")
    axis = axis_of(axis, a.ndim)
    n = a.shape[axis]
    if not 0 <= k <= n:
        raise ShapeError(f"TopK: k={k} is outside [0, {n}], the size of axis {axis}")
    if is_float(x):  # one Function: a gradient to the picked elements, and an emitter
        return ops.TopK.apply(x, k=k, dim=axis, largest=bool(largest))
    if largest:
        # a stable ascending sort of the reversed axis, read backwards: no negation, which
        # would wrap unsigned integers
        order = n - 1 - np.flip(np.argsort(np.flip(a, axis), axis=axis, kind="stable"), axis)
    else:
        order = np.argsort(a, axis=axis, kind="stable")
    index = np.take(order, np.arange(k), axis=axis).astype(np.int64)
    return wrap(np.take_along_axis(a, index, axis=axis)), wrap(index)


@register("TopK", 1)
def top_k_1(x: Tensor, *, axis=-1, k=None) -> tuple[Tensor, Tensor]:
    if k is None:
        raise OnnxImportError("TopK (opset 1) needs its k attribute")
    return _top_k(x, int(k), axis, 1)


@register("TopK", 10)
def top_k_10(x: Tensor, k: Tensor, *, axis=-1) -> tuple[Tensor, Tensor]:
    return _top_k(x, int(scalar(k)), axis, 1)


@register("TopK", 11, 24)
def top_k(x: Tensor, k: Tensor, *, axis=-1, largest=1, sorted=1) -> tuple[Tensor, Tensor]:  # noqa: A002
    """``sorted=0`` leaves the order to the implementation; it is sorted here too."""
    return _top_k(x, int(scalar(k)), axis, largest)


# -- LpNormalization ------------------------------------------------------------------------------


@register("LpNormalization", 1, 22)
def lp_normalization(x: Tensor, *, axis=-1, p=2) -> Tensor:
    """``x`` divided by its ``p``-norm (p = 1 or 2) along ``axis``; a zero vector stays zero,
    as in onnxruntime. It is divided by 1, so its gradient stays finite (the divisor clamped to
    the smallest float gives 0 / tiny^2 = NaN); an export trace keeps the clamp, which holds for
    any input where the data-dependent choice would not."""
    if p not in (1, 2):
        raise OnnxImportError(f"LpNormalization: p must be 1 or 2, got {p}")
    if not -x.ndim <= axis < x.ndim:
        raise ShapeError(f"LpNormalization: axis {axis} is out of range for a {x.ndim}-d input")
    norm = ops.Norm.apply(x, p=float(p), dim=axis_of(axis, x.ndim), keepdim=True)
    zero = norm._data == 0
    if zero.any() and not is_tracing():
        return x / fn.where(wrap(zero), wrap(np.ones((), norm._data.dtype)), norm)
    return x / fn.clamp(norm, min=float(np.finfo(norm._data.dtype).tiny))
