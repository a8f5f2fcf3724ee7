"""Reductions: ReduceMean and ReduceSum, with axes as an attribute (before opset 13/18) or an
input (from then on, where an empty ``axes`` means all axes unless ``noop_with_empty_axes``)."""

from __future__ import annotations

import numpy as np

from ... import functions as fn
from ...tensor import Tensor
from ..registry import register
from ._common import axis_of, ints, keep_dtype, wrap


def _reduce(kind: str, data, axes, keepdims: int, noop: int = 0):
    if not axes:
        if noop:
            return data
        axes = tuple(range(data.ndim))
    axes = tuple(sorted(axis_of(a, data.ndim) for a in axes))
    keep = bool(keepdims)
    array = data._data
    if array.dtype.kind != "f":
        reduce = np.sum if kind == "sum" else np.mean
        return wrap(reduce(array, axis=axes, keepdims=keep).astype(array.dtype))
    if kind == "sum":
        return keep_dtype(fn.sum(data, dim=axes, keepdim=keep), array.dtype)
    return fn.mean(data, dim=axes, keepdim=keep)


@register("ReduceMean", 1, 11, 13)
def reduce_mean_1(data: Tensor, *, axes=None, keepdims=1) -> Tensor:
    return _reduce("mean", data, axes, keepdims)


@register("ReduceMean", 18)
def reduce_mean(
    data: Tensor, axes: Tensor | None = None, *, keepdims=1, noop_with_empty_axes=0
) -> Tensor:
    return _reduce("mean", data, ints(axes), keepdims, noop_with_empty_axes)


@register("ReduceSum", 1, 11)
def reduce_sum_1(data: Tensor, *, axes=None, keepdims=1) -> Tensor:
    return _reduce("sum", data, axes, keepdims)


@register("ReduceSum", 13)
def reduce_sum(
    data: Tensor, axes: Tensor | None = None, *, keepdims=1, noop_with_empty_axes=0
) -> Tensor:
    return _reduce("sum", data, ints(axes), keepdims, noop_with_empty_axes)
