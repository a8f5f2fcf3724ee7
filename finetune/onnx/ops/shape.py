"""Shape and tensor manipulation: Flatten, Reshape, Transpose, Squeeze, Unsqueeze, Concat,
Split, Slice, Shape, Size, Identity, Pad, CenterCropPad, Expand, Tile, DepthToSpace and
SpaceToDepth. Shape-like inputs are read at run time, so ``Shape → Gather → Concat → Reshape``
chains follow the batch size. The differentiable ones compose reshape, permute, expand, slice and
pad, so their gradients come from those."""

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
    """``axis`` may be the rank itself (everything goes into the first dimension)."""
    if not -x.ndim <= axis <= x.ndim:
        raise ShapeError(f"Flatten: axis {axis} is out of range for a {x.ndim}-d input")
    axis = axis + x.ndim if axis < 0 else axis
    shape = tuple(x.shape)
    return fn.reshape(x, (math.prod(shape[:axis]), math.prod(shape[axis:])))


def _reshape(data, target, allowzero):
    """0 copies the input's dimension (unless ``allowzero``), -1 is inferred."""
    target = list(target)
    if not allowzero:
        target = [data.shape[i] if s == 0 and i < data.ndim else s for i, s in enumerate(target)]
    return fn.reshape(data, tuple(target))


@register("Reshape", 1)
def reshape_1(data: Tensor, *, shape=None, consumed_inputs=None) -> Tensor:
    """The first schema: the shape is an attribute; ``consumed_inputs`` is a legacy hint."""
    if shape is None:
        raise OnnxImportError("Reshape: opset 1 needs the 'shape' attribute")
    return _reshape(data, shape, 0)


@register("Reshape", 5, 13, 14, 19, 21, 23, 24, 25)
def reshape(data: Tensor, shape: Tensor, *, allowzero=0) -> Tensor:
    return _reshape(data, ints(shape), allowzero)


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
    if len(set(axes)) != len(axes):
        raise ShapeError(f"Unsqueeze: axes {list(axes)} repeat an axis")
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


@register("Concat", 1)
def concat_1(*inputs: Tensor, axis=1) -> Tensor:
    return concat(*inputs, axis=axis)


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


@register("Split", 1)
def split_1(
    x: Tensor, sizes: Tensor | None = None, *, axis=0, split=None, _outputs
) -> Tensor | tuple[Tensor, ...]:
    """The first schema: the sizes come from the optional second input (the spec calls it
    ``split`` too) or the attribute."""
    return _split(x, ints(sizes) if sizes is not None else split, axis, _outputs)


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


@register("Shape", 1, 13, differentiable=False)
def shape_1(data: Tensor) -> Tensor:
    return wrap(np.array(data.shape, dtype=np.int64))


@register("Shape", 15, 19, 21, 23, 24, 25, differentiable=False)
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


@register("Pad", 1)
def pad_1(data: Tensor, *, paddings, mode="constant", value=0.0) -> Tensor:
    return _pad(data, paddings, mode, value)


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
    """A ``constant_value`` that requires grad (a trainable imported scalar) gets its gradient:
    the sum of the output's gradient over the padded border."""
    if constant_value is not None and constant_value.requires_grad and mode == "constant":
        pads, axes = ints(pads), ints(axes)
        border = _pad(wrap(np.zeros(data.shape, data._data.dtype)), pads, mode, 1, axes)
        inner = _pad(data, pads, mode, 0, axes)
        return fn.add(inner, fn.mul(border, fn.reshape(constant_value, ())))
    value = scalar(constant_value)
    return _pad(data, ints(pads), mode, 0 if value is None else value, ints(axes))


@register("CenterCropPad", 18)
def center_crop_pad(input_data: Tensor, shape: Tensor, *, axes=None) -> Tensor:
    """Crop or zero-pad each of ``axes`` to ``shape`` around the centre; of an odd difference,
    the extra element is cropped or padded at the end, as the reference does."""
    target = ints(shape)
    axes = list(range(input_data.ndim)) if axes is None else axes
    if len(target) != len(axes):
        raise ShapeError(f"CenterCropPad: {len(target)} sizes {list(target)} for axes {axes}")
    pairs = [0] * (2 * input_data.ndim)
    for size, axis in zip(target, axes):
        axis = axis_of(axis, input_data.ndim)
        grow = size - input_data.shape[axis]
        lo = grow // 2 if grow >= 0 else -(-grow // 2)
        pairs[axis], pairs[axis + input_data.ndim] = lo, grow - lo
    return _pad(input_data, pairs, "constant", 0)


@register("Size", 1, 13, 19, 21, 23, 24, 25, differentiable=False)
def size(data: Tensor) -> Tensor:
    return wrap(np.array(math.prod(data.shape), dtype=np.int64))


@register("Expand", 8, 13)
def expand(input: Tensor, shape: Tensor) -> Tensor:  # noqa: A002
    """Broadcast ``input`` with ``shape`` (both ways: a 1 in ``shape`` keeps the input's size)."""
    try:
        target = np.broadcast_shapes(tuple(input.shape), ints(shape))
    except ValueError:
        raise ShapeError(
            f"Expand: input of shape {list(input.shape)} does not broadcast with "
            f"{list(ints(shape))}"
        ) from None
    check_shape(target, "Expand")
    return ops.Expand.apply(input, shape=target)


def _tile(x, repeats):
    """``np.tile`` as one expand: x (d0, d1, ..) viewed as (1, d0, 1, d1, ..), expanded to
    (r0, d0, r1, d1, ..) and merged; its gradient is the expand's sum."""
    if len(repeats) != x.ndim or any(r < 0 for r in repeats):
        raise ShapeError(
            f"Tile: repeats {list(repeats)} must be {x.ndim} non-negative counts for input "
            f"{list(x.shape)}"
        )
    final = check_shape([r * d for r, d in zip(repeats, x.shape)], "Tile")
    pairs = [v for d in x.shape for v in (1, d)]
    grown = [v for r, d in zip(repeats, x.shape) for v in (r, d)]
    return fn.reshape(ops.Expand.apply(fn.reshape(x, tuple(pairs)), shape=tuple(grown)), final)


@register("Tile", 1)
def tile_1(input: Tensor, tiles: Tensor, axis: Tensor) -> Tensor:  # noqa: A002
    """The first schema: ``tiles`` copies along the one ``axis``."""
    repeats = [1] * input.ndim
    repeats[axis_of(int(scalar(axis)), input.ndim)] = int(scalar(tiles))
    return _tile(input, repeats)


@register("Tile", 6, 13)
def tile(input: Tensor, repeats: Tensor) -> Tensor:  # noqa: A002
    return _tile(input, ints(repeats))


def _blocks(x, blocksize, op):
    if x.ndim != 4 or blocksize < 1:
        raise ShapeError(f"{op}: needs a 4-D input and blocksize >= 1, got {list(x.shape)}")
    return x.shape


@register("DepthToSpace", 1, 11, 13, 28)
def depth_to_space(input: Tensor, *, blocksize, mode="DCR") -> Tensor:  # noqa: A002
    n, c, h, w = _blocks(input, blocksize, "DepthToSpace")
    b = blocksize
    if c % (b * b):
        raise ShapeError(f"DepthToSpace: {c} channels do not divide by blocksize² {b * b}")
    if mode == "DCR":  # n (b1 b2 c) h w -> n c (h b1) (w b2)
        x = fn.reshape(input, (n, b, b, c // (b * b), h, w))
        x = ops.Permute.apply(x, dims=(0, 3, 4, 1, 5, 2))
    elif mode == "CRD":  # n (c b1 b2) h w -> n c (h b1) (w b2)
        x = fn.reshape(input, (n, c // (b * b), b, b, h, w))
        x = ops.Permute.apply(x, dims=(0, 1, 4, 2, 5, 3))
    else:
        raise OnnxImportError(f"DepthToSpace: mode {mode!r} is not DCR or CRD")
    return fn.reshape(x, (n, c // (b * b), h * b, w * b))


@register("SpaceToDepth", 1, 13, 28)
def space_to_depth(input: Tensor, *, blocksize, mode="DCR") -> Tensor:  # noqa: A002
    n, c, h, w = _blocks(input, blocksize, "SpaceToDepth")
    b = blocksize
    if h % b or w % b:
        raise ShapeError(f"SpaceToDepth: spatial size {h}x{w} does not divide by blocksize {b}")
    x = fn.reshape(input, (n, c, h // b, b, w // b, b))
    if mode == "DCR":  # n c (h b1) (w b2) -> n (b1 b2 c) h w
        x = ops.Permute.apply(x, dims=(0, 3, 5, 1, 2, 4))
    elif mode == "CRD":  # n c (h b1) (w b2) -> n (c b1 b2) h w
        x = ops.Permute.apply(x, dims=(0, 1, 3, 5, 2, 4))
    else:
        raise OnnxImportError(f"SpaceToDepth: mode {mode!r} is not DCR or CRD")
    return fn.reshape(x, (n, c * b * b, h // b, w // b))
