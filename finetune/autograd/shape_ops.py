"""Shape and indexing primitives: view, permute, expand, squeeze, index, cat, split, pad,
gather, topk."""

from __future__ import annotations

import builtins

import numpy as np

from ..errors import ShapeError
from .broadcast import sum_to_shape
from .function import Function
from .indexing import index_add, scatter_add

# -- shape ----------------------------------------------------------------------------------------


class View(Function):
    @staticmethod
    def forward(ctx, x, shape):
        ctx.shape = x.shape
        try:
            return x.reshape(shape)
        except ValueError:
            raise ShapeError(
                f"shape '{list(shape)}' is invalid for input of size {x.size} "
                f"(input shape {list(x.shape)})"
            ) from None

    @staticmethod
    def backward(ctx, grad):
        return grad.reshape(ctx.shape)


class Permute(Function):
    @staticmethod
    def forward(ctx, x, dims):
        if sorted(d % builtins.max(x.ndim, 1) for d in dims) != list(range(x.ndim)):
            raise ShapeError(
                f"permute(): number of dims don't match or repeat: input has {x.ndim} dims, "
                f"got {list(dims)}"
            )
        ctx.dims = tuple(d % x.ndim for d in dims)
        return np.transpose(x, ctx.dims)

    @staticmethod
    def backward(ctx, grad):
        return np.transpose(grad, np.argsort(ctx.dims))


class Transpose(Function):
    @staticmethod
    def forward(ctx, x, dim0, dim1):
        ctx.dims = (dim0, dim1)
        return np.swapaxes(x, dim0, dim1) if x.ndim else x

    @staticmethod
    def backward(ctx, grad):
        return np.swapaxes(grad, *ctx.dims) if grad.ndim else grad


class T(Function):
    @staticmethod
    def forward(ctx, x):
        if x.ndim > 2:
            raise ShapeError(f"t() expects a tensor with <= 2 dimensions, but self is {x.ndim}D")
        return x.T

    @staticmethod
    def backward(ctx, grad):
        return grad.T


class Expand(Function):
    @staticmethod
    def forward(ctx, x, shape):
        lead = len(shape) - x.ndim
        if lead < 0:
            raise ShapeError(
                f"expand: the number of sizes provided ({len(shape)}) must be greater or equal "
                f"to the number of dimensions in the tensor ({x.ndim})"
            )
        target = tuple(x.shape[i - lead] if s == -1 else s for i, s in enumerate(shape))
        ctx.shape = x.shape
        try:
            return np.broadcast_to(x, target)
        except ValueError:
            raise ShapeError(
                f"The expanded size of the tensor ({list(target)}) must match the existing size "
                f"({list(x.shape)}) at non-singleton dimensions"
            ) from None

    @staticmethod
    def backward(ctx, grad):
        return sum_to_shape(grad, ctx.shape)


class Squeeze(Function):
    @staticmethod
    def forward(ctx, x, dim=None):
        ctx.shape = x.shape
        if dim is None:
            return np.squeeze(x)
        axes = tuple(d % x.ndim for d in (dim if isinstance(dim, (tuple, list)) else (dim,)))
        axes = tuple(a for a in axes if x.shape[a] == 1)
        return np.squeeze(x, axis=axes) if axes else x.view()

    @staticmethod
    def backward(ctx, grad):
        return grad.reshape(ctx.shape)


class SqueezeDim(Squeeze):
    name = "SqueezeBackward1"


class Unsqueeze(Function):
    @staticmethod
    def forward(ctx, x, dim):
        ctx.shape = x.shape
        return np.expand_dims(x, dim % (x.ndim + 1))

    @staticmethod
    def backward(ctx, grad):
        return grad.reshape(ctx.shape)


class Index(Function):
    """``x[index]``; named Select/Slice/Index as PyTorch names the same operation."""

    @staticmethod
    def forward(ctx, x, index):
        ctx.shape, ctx.index = x.shape, index
        ctx.advanced = _is_advanced(index)
        try:
            out = x[index]
        except IndexError as e:
            raise IndexError(f"{e} (indexing a tensor of shape {list(x.shape)})") from None
        return np.asarray(out) if not isinstance(out, np.ndarray) else out

    @staticmethod
    def backward(ctx, grad):
        if ctx.advanced:  # repeated positions add up: scatter-add by flat position
            return scatter_add(ctx.shape, _flat_positions(ctx.shape)[ctx.index], grad)
        out = np.zeros(ctx.shape, dtype=grad.dtype)
        out[ctx.index] = grad
        return out


class Select(Index):
    name = "SelectBackward0"


class Slice(Index):
    name = "SliceBackward0"


class IndexUnsqueeze(Index):
    """Basic indexing whose last non-trivial step inserts an axis (``x[..., None]``)."""

    name = "UnsqueezeBackward0"


def _is_advanced(index) -> bool:
    parts = index if isinstance(index, tuple) else (index,)
    return any(isinstance(p, (list, np.ndarray)) and np.asarray(p).dtype.kind != "b" for p in parts)


class IndexPut(Function):
    """``x[index] = value`` out of place (what an in-place assignment records)."""

    @staticmethod
    def forward(ctx, x, index, value):
        ctx.index = index
        out = x.copy()
        out[index] = value
        return out

    @staticmethod
    def backward(ctx, grad):
        gx = gv = None
        if ctx.needs_input_grad[0]:
            gx = grad.copy()
            gx[ctx.index] = 0
        if ctx.needs_input_grad[2]:
            gv = np.asarray(grad[ctx.index])  # the engine sums it to the value's shape
        return gx, None, gv


class Cat(Function):
    @staticmethod
    def forward(ctx, *xs, dim=0):
        ctx.sizes = [x.shape[dim] for x in xs]
        ctx.dim = dim
        try:
            return np.concatenate(xs, axis=dim)
        except ValueError:
            raise ShapeError(
                f"cat(): tensors must have the same shape except in dimension {dim}; got "
                f"{[list(x.shape) for x in xs]}"
            ) from None

    @staticmethod
    def backward(ctx, grad):
        splits = np.cumsum(ctx.sizes)[:-1]
        return tuple(np.split(grad, splits, axis=ctx.dim))


class Stack(Function):
    @staticmethod
    def forward(ctx, *xs, dim=0):
        ctx.dim = dim
        try:
            return np.stack(xs, axis=dim)
        except ValueError:
            raise ShapeError(
                f"stack expects each tensor to be equal size, but got {[list(x.shape) for x in xs]}"
            ) from None

    @staticmethod
    def backward(ctx, grad):
        return tuple(np.moveaxis(grad, ctx.dim, 0))


class Split(Function):
    name = "SplitWithSizesBackward0"

    @staticmethod
    def forward(ctx, x, sizes, dim=0):
        ctx.dim, ctx.shape = dim, x.shape
        bounds = np.cumsum(sizes)[:-1]
        return tuple(np.split(x, bounds, axis=dim))

    @staticmethod
    def backward(ctx, *grads):
        return np.concatenate(grads, axis=ctx.dim)


class SplitEqual(Split):
    """``split(x, int)`` and ``chunk``: equal pieces, the last possibly shorter."""

    name = "SplitBackward0"


class Pad(Function):
    """Constant, reflect, replicate (edge) or circular (wrap) padding; ``pads`` per axis (lo, hi).

    Negative pads crop, as ONNX allows.
    """

    name = "ConstantPadNdBackward0"

    @staticmethod
    def forward(ctx, x, pads, mode="constant", value=0.0):
        ctx.shape, ctx.pads, ctx.mode = x.shape, pads, mode
        crop = tuple(
            slice(builtins.max(-lo, 0), n - builtins.max(-hi, 0))
            for (lo, hi), n in zip(pads, x.shape)
        )
        x = x[crop]
        grow = [(builtins.max(lo, 0), builtins.max(hi, 0)) for lo, hi in pads]
        if mode == "constant":
            return np.pad(x, grow, mode="constant", constant_values=value)
        if mode == "reflect":
            return np.pad(x, grow, mode="reflect")
        if mode in ("replicate", "edge"):
            return np.pad(x, grow, mode="edge")
        if mode in ("circular", "wrap"):
            return np.pad(x, grow, mode="wrap")
        raise ValueError(f"unknown padding mode {mode!r}")

    @staticmethod
    def backward(ctx, grad):
        shape, pads, mode = ctx.shape, ctx.pads, ctx.mode
        grow = [(builtins.max(lo, 0), builtins.max(hi, 0)) for lo, hi in pads]
        if mode == "constant":
            inner = grad[tuple(slice(lo, g - hi) for (lo, hi), g in zip(grow, grad.shape))]
        else:
            inner = _pad_backward_by_index(grad, grow, mode, shape, pads)
        out = np.zeros(shape, dtype=grad.dtype)
        crop = tuple(
            slice(builtins.max(-lo, 0), n - builtins.max(-hi, 0))
            for (lo, hi), n in zip(pads, shape)
        )
        out[crop] = inner
        return out


def _pad_backward_by_index(grad, grow, mode, shape, pads):
    """Scatter-add the padded gradient back along each axis through the source indices."""
    np_mode = {"reflect": "reflect", "replicate": "edge", "edge": "edge"}.get(mode, "wrap")
    for axis, (lo, hi) in enumerate(grow):
        if lo == 0 and hi == 0:
            continue
        n = grad.shape[axis] - lo - hi
        src = np.pad(np.arange(n), (lo, hi), mode=np_mode)
        grad = np.moveaxis(index_add(n, src, np.moveaxis(grad, axis, 0)), 0, axis)
    return grad


class Gather(Function):
    """``torch.gather``: pick along ``dim`` at ``index``."""

    @staticmethod
    def forward(ctx, x, dim, index):
        ctx.shape, ctx.dim = x.shape, dim
        ctx.save_for_backward(index)
        return np.take_along_axis(x, index, axis=dim)

    @staticmethod
    def backward(ctx, grad):
        (index,) = ctx.saved_tensors
        positions = np.take_along_axis(_flat_positions(ctx.shape), index, axis=ctx.dim)
        return scatter_add(ctx.shape, positions, grad), None, None


def _flat_positions(shape: tuple) -> np.ndarray:
    """Each element's flat position in an array of ``shape``: indexed as the forward indexed
    its input, it says where each output element came from."""
    return np.arange(int(np.prod(shape)), dtype=np.int64).reshape(shape)


class TopK(Function):
    @staticmethod
    def forward(ctx, x, k, dim=-1, largest=True):
        dim = dim % x.ndim
        order = np.argsort(-x if largest else x, axis=dim, kind="stable")
        idx = np.take(order, np.arange(k), axis=dim)
        ctx.save_for_backward(idx)
        ctx.shape, ctx.dim = x.shape, dim
        return np.take_along_axis(x, idx, axis=dim), idx.astype(np.int64)

    @staticmethod
    def backward(ctx, grad, _grad_idx):
        (idx,) = ctx.saved_tensors
        out = np.zeros(ctx.shape, dtype=grad.dtype)
        np.put_along_axis(out, idx, grad, ctx.dim)
        return out


class Sort(TopK):
    name = "SortBackward0"
