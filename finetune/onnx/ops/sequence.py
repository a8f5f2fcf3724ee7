"""Sequences and optionals. A sequence is a Python list of tensors, an optional is None when
empty and its value otherwise; both flow through the walk like tensors. Every op here builds
new lists (a sequence value may be read by several nodes) and moves tensors with the library's
own ops, so gradients reach the tensors a sequence was built from."""

from __future__ import annotations

import numpy as np

from ... import functions as fn
from ...autograd import ops
from ...errors import ShapeError
from ...tensor import Tensor
from ..registry import register
from ._common import axis_of, ints, scalar, wrap


def _position(position: Tensor | None, length: int, default: int, op: str, end: bool) -> int:
    """A position in ``[-length, length)`` (``length`` included when ``end``), made positive."""
    p = default if position is None else int(scalar(position))
    high = length if end else length - 1
    if not -length <= p <= high:
        raise ShapeError(f"{op}: position {p} is outside [{-length}, {high}] for {length} tensors")
    return p + length if p < 0 else p


@register("SequenceConstruct", 11)
def sequence_construct(*inputs: Tensor) -> list:
    dtypes = {x._data.dtype for x in inputs}
    if len(dtypes) > 1:
        names = sorted(map(str, dtypes))
        raise ShapeError(f"SequenceConstruct: the tensors have different types {names}")
    return list(inputs)


@register("SequenceEmpty", 11)
def sequence_empty(*, dtype=1) -> list:
    return []


@register("SequenceAt", 11)
def sequence_at(input_sequence: list, position: Tensor) -> Tensor:
    n = len(input_sequence)
    return input_sequence[_position(position, n, 0, "SequenceAt", end=False)]


@register("SequenceInsert", 11)
def sequence_insert(input_sequence: list, tensor: Tensor, position: Tensor | None = None) -> list:
    """``tensor`` inserted before ``position`` (at the end by default)."""
    n = len(input_sequence)
    if input_sequence and input_sequence[0]._data.dtype != tensor._data.dtype:
        raise ShapeError(
            f"SequenceInsert: a {tensor._data.dtype} tensor into a sequence of "
            f"{input_sequence[0]._data.dtype}"
        )
    p = _position(position, n, n, "SequenceInsert", end=True)
    return [*input_sequence[:p], tensor, *input_sequence[p:]]


@register("SequenceErase", 11)
def sequence_erase(input_sequence: list, position: Tensor | None = None) -> list:
    """The sequence without the tensor at ``position`` (the last by default)."""
    n = len(input_sequence)
    p = _position(position, n, -1, "SequenceErase", end=False)
    return [*input_sequence[:p], *input_sequence[p + 1 :]]


@register("SequenceLength", 11, differentiable=False)
def sequence_length(input_sequence: list) -> Tensor:
    return wrap(np.array(len(input_sequence), dtype=np.int64))


@register("SplitToSequence", 11, 24)
def split_to_sequence(input: Tensor, split: Tensor | None = None, *, axis=0, keepdims=1) -> list:  # noqa: A002
    """Without ``split``, slices of size 1 (squeezed unless ``keepdims``); a scalar ``split``
    cuts chunks of that size (the last may be shorter); a 1-D one gives each size."""
    axis = axis_of(axis, input.ndim)
    n = input.shape[axis]
    if split is None:
        pieces = _split(input, [1] * n, axis)
        if keepdims:
            return pieces
        shape = tuple(s for i, s in enumerate(input.shape) if i != axis)
        return [fn.reshape(p, shape) for p in pieces]
    sizes = list(ints(split))
    if split.ndim == 0:
        step = sizes[0]
        if step <= 0:
            raise ShapeError(f"SplitToSequence: split size {step} must be positive")
        sizes = [min(step, n - i) for i in range(0, n, step)]
    elif sum(sizes) != n or any(s < 0 for s in sizes):
        raise ShapeError(
            f"SplitToSequence: sizes {sizes} do not add up to dimension {axis} of shape "
            f"{list(input.shape)}"
        )
    return _split(input, sizes, axis)


def _split(x: Tensor, sizes: list[int], axis: int) -> list[Tensor]:
    if len(sizes) <= 1:
        return [x] * len(sizes)
    return list(ops.Split.apply(x, sizes=sizes, dim=axis))


@register("ConcatFromSequence", 11)
def concat_from_sequence(input_sequence: list, *, axis, new_axis=0) -> Tensor:
    """The tensors joined along ``axis``, or stacked along a new one when ``new_axis``."""
    if not input_sequence:
        raise ShapeError("ConcatFromSequence: the sequence is empty")
    rank = input_sequence[0].ndim
    if new_axis:
        return ops.Stack.apply(*input_sequence, dim=axis_of(axis, rank + 1))
    return ops.Cat.apply(*input_sequence, dim=axis_of(axis, rank))


@register("Optional", 15, 28)
def optional(input=None, *, type=None):  # noqa: A002
    """An optional holding ``input``, or an empty one (None) of the declared ``type``."""
    return input


@register("OptionalHasElement", 15, 18, 28, differentiable=False)
def optional_has_element(input=None) -> Tensor:  # noqa: A002
    return wrap(np.array(input is not None))


@register("OptionalGetElement", 15, 18, 28)
def optional_get_element(input):  # noqa: A002
    """The optional's value (from opset 18 a plain tensor or sequence passes through)."""
    if input is None:
        raise ShapeError("OptionalGetElement: the optional is empty")
    return input
