"""Shape and tensor manipulation: Flatten, Reshape, Transpose, Squeeze, Unsqueeze, Concat,
Split, Slice, Gather, Shape, Identity, Pad. Shape-like inputs are read at run time, so
``Shape → Gather → Concat → Reshape`` chains follow the batch size."""

from __future__ import annotations

import math

import numpy as np

from ... import functions as fn
from ...autograd import ops
from ...errors import OnnxImportError, ShapeError
from ...tensor import Tensor
from ..limits import check_shape
from ..registry import register
from ._common import axis_of, ints, scalar, wrap

_LATER = (13, 21, 23, 24, 25)


@register("Identity", 1, 13, 14, 16, 19, 21, 23, 24, 25)
def identity(x: Tensor) -> Tensor:
    return x


@register("Flatten", 1, 9, 11, *_LATER)
def flatten(x: Tensor, *, axis=1) -> Tensor:
    axis = axis_of(axis, x.ndim)
    shape = tuple(x.shape)
    return fn.reshape(x, (math.prod(shape[:axis]), math.prod(shape[axis:])))


@register("Reshape", 5, 13, 14, 19, 21, 23, 24, 25)
def reshape(data: Tensor, shape: Tensor, *, allowzero=0) -> Tensor:
    """0 copies the input's dimension (unless ``allowzero``), -1 is inferred."""
    target = list(ints(shape))
    if not allowzero:
        target = [data.shape[i] if s == 0 else s for i, s in enumerate(target)]
    return fn.reshape(data, tuple(target))


@register("Transpose", 1, *_LATER)
def transpose(data: Tensor, *, perm=None) -> Tensor:
    perm = tuple(reversed(range(data.ndim))) if perm is None else tuple(perm)
    return ops.Permute.apply(data, dims=perm)


def _squeeze(data, axes):
    if axes is None:
        axes = tuple(i for i, s in enumerate(data.shape) if s == 1)
    axes = tuple(sorted(axis_of(a, data.ndim) for a in axes))
    for a in axes:
        if data.shape[a] != 1:
            raise ShapeError(f"Squeeze: axis {a} of shape {list(data.shape)} is not 1")
    shape = tuple(s for i, s in enumerate(data.shape) if i not in axes)
    return fn.reshape(data, shape)


@register("Squeeze", 1, 11)
def squeeze_1(data: Tensor, *, axes=None) -> Tensor:
    return _squeeze(data, axes)


@register("Squeeze", *_LATER)
def squeeze(data: Tensor, axes: Tensor | None = None) -> Tensor:
    return _squeeze(data, ints(axes))


def _unsqueeze(data, axes):
    """``axes`` index the output, which has ``len(axes)`` more dimensions."""
    rank = data.ndim + len(axes)
    axes = sorted(axis_of(a, rank) for a in axes)
    shape = list(data.shape)
    for a in axes:
        shape.insert(a, 1)
    return fn.reshape(data, tuple(shape))


@register("Unsqueeze", 1, 11)
def unsqueeze_1(data: Tensor, *, axes) -> Tensor:
    return _unsqueeze(data, axes)


@register("Unsqueeze", *_LATER)
def unsqueeze(data: Tensor, axes: Tensor) -> Tensor:
    return _unsqueeze(data, ints(axes))


@register("Concat", 4, 11, 13)
def concat(*inputs: Tensor, axis) -> Tensor:
    axis = axis_of(axis, inputs[0].ndim)
    joined = sum(x.shape[axis] for x in inputs if x.ndim > axis)
    check_shape([*inputs[0].shape[:axis], joined, *inputs[0].shape[axis + 1 :]], "Concat")
    return ops.Cat.apply(*inputs, dim=axis)


def _split(x, sizes, axis, count):
    axis = axis_of(axis, x.ndim)
    if sizes is None:
        n = x.shape[axis]
        if n % count:
            raise ShapeError(
                f"Split: dimension {axis} of shape {list(x.shape)} does not split into {count} "
                "equal parts"
            )
        sizes = [n // count] * count
    if len(sizes) != count:
        raise ShapeError(f"Split: {len(sizes)} sizes {list(sizes)} for {count} outputs")
    return tuple(ops.Split.apply(x, sizes=list(sizes), dim=axis)) if len(sizes) > 1 else (x,)


@register("Split", 2, 11)
def split_2(x: Tensor, *, axis=0, split=None, _outputs) -> Tensor | tuple[Tensor, ...]:
    return _split(x, split, axis, _outputs)


@register("Split", 13)
def split_13(
    x: Tensor, split: Tensor | None = None, *, axis=0, _outputs
) -> Tensor | tuple[Tensor, ...]:
    return _split(x, ints(split), axis, _outputs)


@register("Split", 18)
def split(
    x: Tensor, split: Tensor | None = None, *, axis=0, num_outputs=None, _outputs
) -> Tensor | tuple[Tensor, ...]:
    """``num_outputs`` chunks of ceil(n / num_outputs), the last one smaller."""
    sizes = ints(split)
    if sizes is None and num_outputs is not None:
        n = x.shape[axis_of(axis, x.ndim)]
        chunk = -(-n // num_outputs)
        sizes = [min(chunk, n - i * chunk) for i in range(num_outputs)]
    return _split(x, sizes, axis, _outputs)


def _slice(data, starts, ends, axes, steps):
    """ONNX clamps starts and ends into range; a negative step walks backwards."""
    axes = range(len(starts)) if axes is None else axes
    steps = [1] * len(starts) if steps is None else steps
    index = [slice(None)] * data.ndim
    for start, end, axis, step in zip(starts, ends, axes, steps):
        if step == 0:
            raise ShapeError("Slice: steps cannot be 0")
        axis = axis_of(axis, data.ndim)
        n = data.shape[axis]
        start = start + n if start < 0 else start
        end = end + n if end < 0 else end
        if step > 0:
            start, end = min(max(start, 0), n), min(max(end, 0), n)
        else:
            start, end = min(max(start, 0), n - 1), min(max(end, -1), n - 1)
        index[axis] = slice(start, None if end < 0 else end, step)
    return ops.Slice.apply(data, index=tuple(index))


@register("Slice", 1)
def slice_1(data: Tensor, *, starts, ends, axes=None) -> Tensor:
    return _slice(data, starts, ends, axes, None)


@register("Slice", 10, 11, 13)
def slice_(
    data: Tensor,
    starts: Tensor,
    ends: Tensor,
    axes: Tensor | None = None,
    steps: Tensor | None = None,
) -> Tensor:
    return _slice(data, ints(starts), ints(ends), ints(axes), ints(steps))


@register("Gather", 1, 11, 13)
def gather(data: Tensor, indices: Tensor, *, axis=0) -> Tensor:
    axis = axis_of(axis, data.ndim)
    idx = np.asarray(indices._data).astype(np.int64)
    n = data.shape[axis]
    if idx.size and (idx.min() < -n or idx.max() >= n):
        raise IndexError(f"Gather: indices out of range for dimension {axis} of size {n}")
    index = (slice(None),) * axis + (idx,)
    return ops.Index.apply(data, index=index)


@register("Shape", 1, 13)
def shape_1(data: Tensor) -> Tensor:
    return wrap(np.array(data.shape, dtype=np.int64))


@register("Shape", 15, 19, 21, 23, 24, 25)
def shape(data: Tensor, *, start=0, end=None) -> Tensor:
    return wrap(np.array(data.shape[slice(start, end)], dtype=np.int64))


def _pad(x, pads, mode, value, axes=None):
    rank = x.ndim
    axes = list(range(rank)) if axes is None else [axis_of(a, rank) for a in axes]
    if len(pads) != 2 * len(axes):
        raise ShapeError(f"Pad: {len(pads)} pads for {len(axes)} axes of shape {list(x.shape)}")
    pairs = [(0, 0)] * rank
    for i, axis in enumerate(axes):
        pairs[axis] = (pads[i], pads[i + len(axes)])
    check_shape([n + lo + hi for n, (lo, hi) in zip(x.shape, pairs)], "Pad")
    if mode not in ("constant", "reflect", "edge", "wrap"):
        raise OnnxImportError(f"Pad: mode {mode!r} is not constant, reflect, edge or wrap")
    return ops.Pad.apply(x, pads=tuple(pairs), mode=mode, value=value)


@register("Pad", 2)
def pad_2(data: Tensor, *, pads, mode="constant", value=0.0) -> Tensor:
    return _pad(data, pads, mode, value)


@register("Pad", 11, 13, 18, 19, 21, 23, 24, 25)
def pad(
    data: Tensor,
    pads: Tensor,
    constant_value: Tensor | None = None,
    axes: Tensor | None = None,
    *,
    mode="constant",
) -> Tensor:
    value = scalar(constant_value)
    return _pad(data, ints(pads), mode, 0 if value is None else value, ints(axes))
