"""Indexing converters: Gather, GatherElements, GatherND, Scatter, ScatterElements, ScatterND,
TensorScatter, Compress, ReverseSequence, Unique, NonZero, OneHot, Range, and the matrix ops
Trilu, EyeLike and Det.

Gathers become one ``TakeAxis`` or ``TakeFlat`` over precomputed source positions, scatters one
``ScatterFlat`` over target positions, so every one of them has an exact gradient to its data
and updates. Index arrays are read at run time; an index out of range is a ShapeError naming
the op.
"""

from __future__ import annotations

import math

import numpy as np
import onnx

from ... import functions as fn
from ...autograd.indexing import ScatterFlat, TakeAxis, TakeFlat, last_writes
from ...autograd.linalg import Det
from ...errors import OnnxImportError, ShapeError
from ...tensor import Tensor
from ..export_ops import cannot_export, emits
from ..limits import check_shape
from ..registry import register
from ._common import axis_of, scalar, wrap


def _indices(indices: Tensor | np.ndarray, n: int, op: str, what: str = "") -> np.ndarray:
    """Integer indices into a dimension of size ``n``, negative ones counted from the end."""
    idx = np.asarray(indices._data if isinstance(indices, Tensor) else indices)
    if idx.dtype.kind not in "iu":
        raise ShapeError(f"{op}: indices must be integers, got {idx.dtype}")
    idx = idx.astype(np.int64)
    if idx.size and (idx.min() < -n or idx.max() >= n):
        bad = idx[(idx < -n) | (idx >= n)].reshape(-1)[0]
        raise ShapeError(f"{op}: index {bad} is out of range for {what}dimension of size {n}")
    return np.where(idx < 0, idx + n, idx)


def _strides(shape: tuple) -> np.ndarray:
    """Element strides of a C-ordered array of ``shape``."""
    return np.asarray([math.prod(shape[i + 1 :]) for i in range(len(shape))], dtype=np.int64)


def _elements_flat(shape: tuple, index: np.ndarray, axis: int) -> np.ndarray:
    """Flat positions in an array of ``shape`` of the elements ``(i0, .., index[i], .., ir)``:
    ``index`` replaces the coordinate along ``axis`` (GatherElements, ScatterElements)."""
    strides = _strides(shape)
    flat = index * strides[axis]
    for dim, coordinate in enumerate(np.indices(index.shape, sparse=True)):
        if dim != axis:
            flat = flat + coordinate * strides[dim]
    return flat


def _nd_flat(shape: tuple, indices: Tensor, batch_dims: int, op: str) -> np.ndarray:
    """Flat positions of the slices GatherND/ScatterND address: one row of ``indices``
    (last axis ``k``) picks ``data[batch..., i1, .., ik, :]``. Shape ``indices.shape[:-1] +
    shape[batch_dims + k:]``."""
    idx = np.asarray(indices._data)
    if idx.ndim < batch_dims + 1 or idx.shape[-1] > len(shape) - batch_dims:
        raise ShapeError(
            f"{op}: indices of shape {list(idx.shape)} address more than the {len(shape)} "
            f"dimensions of data {list(shape)} (batch_dims {batch_dims})"
        )
    if tuple(idx.shape[:batch_dims]) != tuple(shape[:batch_dims]):
        raise ShapeError(
            f"{op}: the first {batch_dims} (batch) dimensions of indices {list(idx.shape)} and "
            f"data {list(shape)} differ"
        )
    k = idx.shape[-1]
    strides = _strides(shape)
    base = np.zeros(idx.shape[:-1], dtype=np.int64)
    for j in range(k):
        dim = batch_dims + j
        base += _indices(idx[..., j], shape[dim], op, f"axis {dim}, ") * strides[dim]
    for dim, coordinate in enumerate(np.indices(idx.shape[:batch_dims], sparse=True)):
        base += (
            coordinate.reshape(coordinate.shape + (1,) * (base.ndim - batch_dims)) * strides[dim]
        )
    inner = np.arange(math.prod(shape[batch_dims + k :]), dtype=np.int64)
    flat = base[..., None] + inner
    return flat.reshape(idx.shape[:-1] + tuple(shape[batch_dims + k :]))


# -- gathers ------------------------------------------------------------------------------------


@register("Gather", 1, 11, 13)
def gather(data: Tensor, indices: Tensor, *, axis=0) -> Tensor:
    axis = axis_of(axis, data.ndim)
    idx = _indices(indices, data.shape[axis], "Gather", f"axis {axis}, ")
    check_shape([*data.shape[:axis], *idx.shape, *data.shape[axis + 1 :]], "Gather")
    return TakeAxis.apply(data, idx, axis=axis)


@register("GatherElements", 11, 13)
def gather_elements(data: Tensor, indices: Tensor, *, axis=0) -> Tensor:
    axis = axis_of(axis, data.ndim)
    idx = _indices(indices, data.shape[axis], "GatherElements", f"axis {axis}, ")
    if idx.ndim != data.ndim or any(
        i > d for a, (i, d) in enumerate(zip(idx.shape, data.shape)) if a != axis
    ):
        raise ShapeError(
            f"GatherElements: indices of shape {list(idx.shape)} do not fit data of shape "
            f"{list(data.shape)} (same rank, no larger outside axis {axis})"
        )
    return TakeFlat.apply(data, _elements_flat(tuple(data.shape), idx, axis))


@register("GatherND", 11, 12, 13)
def gather_nd(data: Tensor, indices: Tensor, *, batch_dims=0) -> Tensor:
    flat = _nd_flat(tuple(data.shape), indices, batch_dims, "GatherND")
    return TakeFlat.apply(data, flat)


@register("Compress", 9, 11, 28)
def compress(input: Tensor, condition: Tensor, *, axis=None) -> Tensor:  # noqa: A002
    """numpy.compress: keep the slices where ``condition`` holds; without ``axis``, elements of
    the flattened input. A condition longer than the axis may only add False entries."""
    x = fn.reshape(input, (-1,)) if axis is None else input
    axis = 0 if axis is None else axis_of(axis, x.ndim)
    keep = np.asarray(condition._data).astype(bool).reshape(-1)
    n = x.shape[axis]
    if keep.size > n and keep[n:].any():
        raise ShapeError(
            f"Compress: condition of length {keep.size} selects past dimension {axis} of size {n}"
        )
    return TakeAxis.apply(x, np.flatnonzero(keep[:n]), axis=axis)


@register("ReverseSequence", 10, 28)
def reverse_sequence(
    input: Tensor,  # noqa: A002
    sequence_lens: Tensor,
    *,
    batch_axis=1,
    time_axis=0,
) -> Tensor:
    """Reverse the first ``sequence_lens[b]`` steps along ``time_axis`` of each batch entry."""
    if {batch_axis, time_axis} != {0, 1} or input.ndim < 2:
        raise ShapeError(
            f"ReverseSequence: batch_axis {batch_axis} and time_axis {time_axis} must be 0 and 1 "
            f"of an input with at least 2 dimensions (got {list(input.shape)})"
        )
    steps, batch = input.shape[time_axis], input.shape[batch_axis]
    lens = np.asarray(sequence_lens._data).astype(np.int64).reshape(-1)
    if lens.size != batch or (lens.size and (lens.min() < 0 or lens.max() > steps)):
        raise ShapeError(
            f"ReverseSequence: sequence_lens {lens.tolist()} must hold one length in [0, {steps}] "
            f"per batch entry ({batch})"
        )
    t = np.arange(steps)[:, None]
    source = np.where(t < lens, lens - 1 - t, t)  # time, batch
    if time_axis == 1:
        source = source.T
    source = source.reshape(source.shape + (1,) * (input.ndim - 2))
    source = np.broadcast_to(source, input.shape)
    return TakeFlat.apply(input, _elements_flat(tuple(input.shape), source, time_axis))


# -- scatters -----------------------------------------------------------------------------------


def _scatter_elements(data, indices, updates, axis, reduction):
    axis = axis_of(axis, data.ndim)
    idx = _indices(indices, data.shape[axis], "ScatterElements", f"axis {axis}, ")
    if idx.shape != tuple(updates.shape) or idx.ndim != data.ndim:
        raise ShapeError(
            f"ScatterElements: indices {list(idx.shape)} and updates {list(updates.shape)} must "
            f"have one shape, of the rank of data {list(data.shape)}"
        )
    flat = _elements_flat(tuple(data.shape), idx, axis)
    return ScatterFlat.apply(data, updates, flat, reduction=reduction)


@register("Scatter", 9, 11)
def scatter(data: Tensor, indices: Tensor, updates: Tensor, *, axis=0) -> Tensor:
    """The deprecated name of ScatterElements."""
    return _scatter_elements(data, indices, updates, axis, "none")


@register("ScatterElements", 11, 13, 16, 18)
def scatter_elements(
    data: Tensor, indices: Tensor, updates: Tensor, *, axis=0, reduction="none"
) -> Tensor:
    return _scatter_elements(data, indices, updates, axis, reduction)


@register("ScatterND", 11, 13, 16, 18)
def scatter_nd(data: Tensor, indices: Tensor, updates: Tensor, *, reduction="none") -> Tensor:
    flat = _nd_flat(tuple(data.shape), indices, 0, "ScatterND")
    if flat.shape != tuple(updates.shape):
        raise ShapeError(
            f"ScatterND: updates of shape {list(updates.shape)}, expected {list(flat.shape)} for "
            f"indices {list(indices.shape)} into data {list(data.shape)}"
        )
    return ScatterFlat.apply(data, updates, flat, reduction=reduction)


@register("TensorScatter", 24)
def tensor_scatter(
    past_cache: Tensor,
    update: Tensor,
    write_indices: Tensor | None = None,
    *,
    axis=-2,
    mode="linear",
) -> Tensor:
    """Write ``update`` into the cache along ``axis`` from each batch entry's write index
    (wrapping round in ``circular`` mode): a KV-cache append."""
    rank = past_cache.ndim
    axis = axis_of(axis, rank)
    cache, new = tuple(past_cache.shape), tuple(update.shape)
    if (
        axis == 0
        or len(new) != rank
        or any(c != u for i, (c, u) in enumerate(zip(cache, new)) if i != axis)
        or new[axis] > cache[axis]
    ):
        raise ShapeError(
            f"TensorScatter: update {list(new)} does not fit cache {list(cache)} along axis "
            f"{axis} (which cannot be the batch axis 0)"
        )
    if mode not in ("linear", "circular"):
        raise OnnxImportError(f"TensorScatter: mode {mode!r} is not linear or circular")
    length = cache[axis]
    starts = np.zeros(cache[0], dtype=np.int64)
    if write_indices is not None:
        starts = np.asarray(write_indices._data).astype(np.int64).reshape(-1)
    if starts.size != cache[0]:
        raise ShapeError(f"TensorScatter: {starts.size} write indices for batch {cache[0]}")
    # batch, sequence -> position along axis
    target = starts[:, None] + np.arange(new[axis])
    if mode == "circular":
        target %= max(length, 1)
    elif target.size and (target.min() < 0 or target.max() >= length):
        raise ShapeError(
            f"TensorScatter: write indices {starts.tolist()} + {new[axis]} steps run past the "
            f"cache length {length} (linear mode)"
        )
    shape = [1] * rank
    shape[0], shape[axis] = cache[0], new[axis]
    target = np.broadcast_to(target.reshape(shape), new)
    return ScatterFlat.apply(past_cache, update, _elements_flat(cache, target, axis))


# -- value queries --------------------------------------------------------------------------------


@register("NonZero", 9, 13, differentiable=False)
def nonzero(X: Tensor) -> Tensor:  # noqa: N803 - the spec's name
    """Coordinates of the non-zero elements, one row per dimension (int64, rank x count)."""
    x = np.asarray(X._data)
    x = x.reshape(1) if x.ndim == 0 else x
    return wrap(np.array(np.nonzero(x), dtype=np.int64).reshape(x.ndim, -1))


@register("Unique", 11, 28)
def unique(X: Tensor, *, axis=None, sorted=1) -> tuple[Tensor, ...]:  # noqa: N803, A002
    """``(Y, indices, inverse_indices, counts)`` as numpy.unique, or in order of first
    occurrence when not ``sorted``. ``Y`` is a gather of ``X``, so it carries a gradient."""
    x = fn.reshape(X, (-1,)) if axis is None else X
    axis = 0 if axis is None else axis_of(axis, x.ndim)
    values = np.asarray(x._data)
    _, first, inverse, counts = np.unique(
        values, return_index=True, return_inverse=True, return_counts=True, axis=axis
    )
    inverse = inverse.reshape(-1)
    if not sorted:
        order = np.argsort(first, kind="stable")
        rank = np.empty_like(order)
        rank[order] = np.arange(order.size)
        first, counts, inverse = first[order], counts[order], rank[inverse]
    y = TakeAxis.apply(x, first.astype(np.int64), axis=axis)
    return (
        y,
        wrap(first.astype(np.int64)),
        wrap(inverse.astype(np.int64)),
        wrap(counts.astype(np.int64)),
    )


@register("OneHot", 9, 11, 28)
def one_hot(indices: Tensor, depth: Tensor, values: Tensor, *, axis=-1) -> Tensor:
    """``values[1]`` where the new axis equals the index (negative counts from ``depth``),
    ``values[0]`` elsewhere and for indices out of range; differentiable in ``values``."""
    n = int(scalar(depth))
    check_shape([*indices.shape, n], "OneHot")
    idx = np.asarray(indices._data)
    idx = idx.astype(np.int64) if idx.dtype.kind in "iub" else np.trunc(idx).astype(np.int64)
    idx = np.where(idx < 0, idx + n, idx)
    axis = axis_of(axis, idx.ndim + 1)
    shape = [1] * (idx.ndim + 1)
    shape[axis] = n
    hot = np.expand_dims(idx, axis) == np.arange(n).reshape(shape)
    if values._data.size != 2:
        raise ShapeError(f"OneHot: values must hold [off, on], got shape {list(values.shape)}")
    pair = fn.reshape(values, (2,))
    return fn.where(hot, pair[1], pair[0])


@register("Range", 11, 27, differentiable=False)
def range_(start: Tensor, limit: Tensor, delta: Tensor, *, stash_type=1) -> Tensor:
    """``start + i * delta`` for ``i < ceil((limit - start) / delta)``, in ``start``'s type
    (float16 computed in float32 or wider, as ``stash_type`` asks)."""
    dtype = start._data.dtype
    first, last, step = (np.asarray(v._data).reshape(-1)[0] for v in (start, limit, delta))
    if step == 0:
        raise ShapeError("Range: delta cannot be 0")
    if dtype.kind in "iu":
        first, last, step = int(first), int(last), int(step)
        count = max(-((first - last) // step), 0)
        check_shape([count], "Range")
        return wrap((first + np.arange(count, dtype=np.int64) * step).astype(dtype))
    work = np.float64 if dtype == np.float64 else np.float32
    if dtype == np.float16:  # stash_type matters only here: FLOAT (1) or DOUBLE (11)
        if stash_type not in (1, 11):
            raise OnnxImportError(
                f"Range: stash_type {stash_type} is not 1 (float) or 11 (double) for float16"
            )
        work = np.float64 if stash_type == 11 else np.float32
    first, last, step = work(first), work(last), work(step)
    if not np.isfinite([first, last, step]).all():
        raise ShapeError(f"Range: start {first}, limit {last} and delta {step} must be finite")
    count = max(int(np.ceil((last - first) / step)), 0)
    check_shape([count], "Range")
    return wrap((first + np.arange(count, dtype=work) * step).astype(dtype))


# -- matrices -------------------------------------------------------------------------------------


@register("Trilu", 14)
def trilu(input: Tensor, k: Tensor | None = None, *, upper=1) -> Tensor:  # noqa: A002
    """Keep the upper (``j - i >= k``) or lower (``j - i <= k``) triangle of the last two axes."""
    if input.ndim < 2:
        raise ShapeError(f"Trilu: needs at least 2 dimensions, got {list(input.shape)}")
    n, m = input.shape[-2:]
    offset = 0 if k is None else min(max(int(scalar(k)), -n - 1), m + 1)  # beyond: all or none
    keep = ~np.tri(n, m, offset - 1, dtype=bool) if upper else np.tri(n, m, offset, dtype=bool)
    return fn.where(keep, input, np.zeros((), dtype=input._data.dtype))


@register("EyeLike", 9, 22, differentiable=False)
def eye_like(input: Tensor, *, dtype=None, k=0) -> Tensor:  # noqa: A002
    """Ones on the ``k``-th diagonal of a matrix shaped as ``input``, of ``dtype`` or its type."""
    if input.ndim != 2:
        raise ShapeError(f"EyeLike: needs a 2-D input, got {list(input.shape)}")
    out_type = input._data.dtype
    if dtype is not None:
        out_type = np.dtype(onnx.helper.tensor_dtype_to_np_dtype(dtype))
    return wrap(np.eye(*input.shape, k=k, dtype=out_type))


@register("Det", 11, 22)
def det(X: Tensor) -> Tensor:  # noqa: N803 - the spec's name
    return Det.apply(X)


# -- export -------------------------------------------------------------------------------------


@emits(TakeAxis)
def _emit_take_axis(b, call, outs):
    x, index = call.args
    b.node("Gather", [b.name_of(x), b.constant(index)], outs, axis=int(call.kwargs["axis"]))


@emits(TakeFlat)
def _emit_take_flat(b, call, outs):
    """The flat gather over the flattened input (the positions hold the traced shapes)."""
    x, flat = call.args
    (flat_x,) = b.node("Reshape", [b.name_of(x), b.ints([-1])])
    b.node("Gather", [flat_x, b.constant(flat)], outs, axis=0)


_SCATTER_OPSET = {"none": 11, "add": 16, "mul": 16, "max": 18, "min": 18}


@emits(ScatterFlat)
def _emit_scatter_flat(b, call, outs):
    """ScatterElements on the flattened data; for ``none`` only the winning writes, so the
    file does not depend on the order a runtime applies repeated indices in."""
    data, updates, flat = call.args
    reduction = call.kwargs.get("reduction", "none")
    if b.opset < _SCATTER_OPSET[reduction]:
        raise cannot_export(
            call, f"reduction {reduction!r} needs opset {_SCATTER_OPSET[reduction]}"
        )
    pos = np.asarray(flat).reshape(-1)
    (flat_data,) = b.node("Reshape", [b.name_of(data), b.ints([-1])])
    (flat_updates,) = b.node("Reshape", [b.name_of(updates), b.ints([-1])])
    attributes = {"axis": 0}
    if reduction == "none":
        winners = last_writes(pos)
        (flat_updates,) = b.node("Gather", [flat_updates, b.constant(winners)], axis=0)
        pos = pos[winners]
    else:
        attributes["reduction"] = reduction
    (scattered,) = b.node(
        "ScatterElements", [flat_data, b.constant(pos), flat_updates], **attributes
    )
    b.node("Reshape", [scattered, b.ints(list(np.shape(data._data)))], outs)


@emits(Det)
def _emit_det(b, call, outs):
    b.node("Det", [b.name_of(call.args[0])], outs)
