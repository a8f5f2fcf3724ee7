"""Reductions (sum, mean, max, var, norm, prod, logsumexp, cumsum) and softmax."""

from __future__ import annotations

import builtins

import numpy as np

from ..errors import ShapeError
from ..parallel import split
from . import jit, special
from .elementwise import _floating
from .function import Function
from .layout import is_channels_last
from .scratch import scratch

# -- reductions ---------------------------------------------------------------------------------


def _axes(dim, ndim: int):
    if dim is None:
        return None
    if isinstance(dim, (list, tuple)):
        return tuple(d % ndim if ndim else 0 for d in dim)
    return (dim % ndim,) if ndim else (0,)


class Cumsum(Function):
    """Running sum along ``dim``; its gradient is the reversed running sum of the gradient."""

    @staticmethod
    def forward(ctx, x, dim):
        ctx.axis = dim % x.ndim if x.ndim else 0
        out = np.cumsum(x, axis=ctx.axis) if x.ndim else x.copy()
        return out.astype(np.int64) if x.dtype.kind in "biu" else out

    @staticmethod
    def backward(ctx, grad):
        if not grad.ndim:
            return grad
        flipped = np.flip(grad, ctx.axis)
        return np.flip(np.cumsum(flipped, axis=ctx.axis), ctx.axis)


def _expand_back(grad: np.ndarray, shape: tuple, axes, keepdim: bool) -> np.ndarray:
    """Broadcast a reduced gradient back to the input's shape."""
    if axes is None:
        return np.broadcast_to(grad.reshape((1,) * len(shape)), shape)
    if not keepdim:
        grad = np.expand_dims(grad, axes)
    return np.broadcast_to(grad, shape)


class Sum(Function):
    @staticmethod
    def forward(ctx, x, dim=None, keepdim=False):
        ctx.shape = x.shape
        ctx.axes = _axes(dim, x.ndim)
        ctx.keepdim = keepdim
        if x.dtype.kind in "bui":
            x = x.astype(np.int64)
        return np.asarray(np.sum(x, axis=ctx.axes if x.ndim else None, keepdims=keepdim))

    @staticmethod
    def backward(ctx, grad):
        return _expand_back(grad, ctx.shape, ctx.axes, ctx.keepdim)


class SumDim(Sum):
    name = "SumBackward1"


_TORCH_DTYPE_NAMES = {
    "int64": "Long",
    "int32": "Int",
    "int16": "Short",
    "int8": "Char",
    "uint8": "Byte",
    "bool": "Bool",
}


class Mean(Function):
    @staticmethod
    def forward(ctx, x, dim=None, keepdim=False):
        if x.dtype.kind not in "fc":
            raise ShapeError(  # PyTorch raises RuntimeError; ShapeError is one (and a ValueError)
                f"mean(): could not infer output dtype. Input dtype must be either a floating "
                f"point or complex dtype. Got: {_TORCH_DTYPE_NAMES.get(x.dtype.name, x.dtype.name)}"
            )
        ctx.shape = x.shape
        ctx.axes = _axes(dim, x.ndim)
        ctx.keepdim = keepdim
        count = x.size if ctx.axes is None else int(np.prod([x.shape[a] for a in ctx.axes]))
        ctx.count = count
        fast = x.dtype in (np.float32, np.float64)  # float16: numpy's mean sums in float32
        if fast and ctx.axes == (2, 3) and x.size and is_channels_last(x):
            means = _pixel_means_last(x)
            return means.reshape(*means.shape, 1, 1) if keepdim else means
        return np.asarray(
            np.mean(x, axis=ctx.axes if x.ndim else None, keepdims=keepdim), dtype=x.dtype
        )

    @staticmethod
    def backward(ctx, grad):
        return _expand_back(grad / grad.dtype.type(ctx.count), ctx.shape, ctx.axes, ctx.keepdim)


def _pixel_means_last(x: np.ndarray) -> np.ndarray:
    """``n c h w -> n c``: each sample's channel means of a channels-last array (a global
    average pool), as the product of a row of ones with its ``(h w) c`` pixel rows: BLAS's
    product ran 3-10x faster than numpy's mean over the pixel axes here (EfficientNet-B0's
    squeeze-and-excitation pools: 32@112 206 -> 24 us, 96@56 62 -> 20) and closer to the
    float64 mean (1.2e-6 against 3.1e-6 at most, relative, for 112x112 pixels)."""
    n, c, h, w = x.shape
    rows = x.transpose(0, 2, 3, 1).reshape(n, h * w, c)
    sums = np.ones(h * w, dtype=x.dtype) @ rows
    return sums / x.dtype.type(h * w)


class MeanDim(Mean):
    name = "MeanBackward1"


class MaxAll(Function):
    """``max()`` / ``min()`` of everything: the gradient is shared evenly among ties."""

    name = "MaxBackward1"

    @staticmethod
    def forward(ctx, x, largest=True):
        if x.size == 0:
            raise ShapeError("max(): Expected reduction dim to be specified for input.numel() == 0")
        out = np.asarray(x.max() if largest else x.min())
        ctx.save_for_backward(x, out)
        return out

    @staticmethod
    def backward(ctx, grad):
        x, out = ctx.saved_tensors
        mask = x == out
        return mask * (grad / mask.sum()).astype(x.dtype)


class MinAll(MaxAll):
    name = "MinBackward1"


class MaxDim(Function):
    """``max(dim)`` / ``min(dim)``: values and indices; the gradient goes to the index."""

    name = "MaxBackward0"

    @staticmethod
    def forward(ctx, x, dim, keepdim=False, largest=True):
        axis = dim % x.ndim if x.ndim else 0
        fn = np.argmax if largest else np.argmin
        idx = np.expand_dims(fn(x, axis=axis), axis) if x.ndim else np.asarray(0)
        values = np.take_along_axis(x, idx, axis) if x.ndim else x.copy()
        ctx.save_for_backward(idx)
        ctx.axis, ctx.shape, ctx.keepdim = axis, x.shape, keepdim
        if not keepdim and x.ndim:
            values, idx = values.squeeze(axis), idx.squeeze(axis)
        return values, idx.astype(np.int64)

    @staticmethod
    def backward(ctx, grad, _grad_idx):
        (idx,) = ctx.saved_tensors
        if not ctx.shape:
            return grad
        if not ctx.keepdim:
            grad = np.expand_dims(grad, ctx.axis)
        out = np.zeros(ctx.shape, dtype=grad.dtype)
        np.put_along_axis(out, idx, grad, ctx.axis)
        return out


class MinDim(MaxDim):
    name = "MinBackward0"


class Var(Function):
    @staticmethod
    def forward(ctx, x, dim=None, correction=1, keepdim=False):
        axes = _axes(dim, x.ndim)
        n = x.size if axes is None else int(np.prod([x.shape[a] for a in axes]))
        mean = np.mean(x, axis=axes, keepdims=True)
        centered = x - mean
        ctx.save_for_backward(centered)
        ctx.axes, ctx.keepdim, ctx.denom = axes, keepdim, builtins.max(n - correction, 0)
        out = np.sum(centered * centered, axis=axes, keepdims=keepdim) / x.dtype.type(ctx.denom)
        return np.asarray(out, dtype=x.dtype)

    @staticmethod
    def backward(ctx, grad):
        (centered,) = ctx.saved_tensors
        g = _expand_back(grad, centered.shape, ctx.axes, ctx.keepdim)
        return g * centered * centered.dtype.type(2.0 / ctx.denom)


class Std(Var):
    """The square root of ``Var``, recorded as one node as PyTorch does (``StdBackward0``)."""

    @staticmethod
    def forward(ctx, x, dim=None, correction=1, keepdim=False):
        out = np.sqrt(Var.forward(ctx, x, dim, correction, keepdim))
        ctx.out = out
        return out

    @staticmethod
    def backward(ctx, grad):
        return Var.backward(ctx, grad / (2 * ctx.out))


class Norm(Function):
    """The vector p-norm over all elements or the given dims (``LinalgVectorNormBackward0``)."""

    name = "LinalgVectorNormBackward0"

    @staticmethod
    def forward(ctx, x, p=2.0, dim=None, keepdim=False):
        x = _floating(x)
        axes = _axes(dim, x.ndim)
        if p == 2:
            out = np.sqrt(np.sum(x * x, axis=axes, keepdims=keepdim))
        elif p == float("inf"):
            out = np.max(np.abs(x), axis=axes, keepdims=keepdim)
        elif p == 1:
            out = np.sum(np.abs(x), axis=axes, keepdims=keepdim)
        else:
            out = np.sum(np.abs(x) ** p, axis=axes, keepdims=keepdim) ** (1.0 / p)
        out = np.asarray(out, dtype=x.dtype)
        ctx.save_for_backward(x, out)
        ctx.p, ctx.axes, ctx.keepdim = p, axes, keepdim
        return out

    @staticmethod
    def backward(ctx, grad):
        x, out = ctx.saved_tensors
        p, axes, keepdim = ctx.p, ctx.axes, ctx.keepdim
        g = _expand_back(grad, x.shape, axes, keepdim)
        n = _expand_back(out, x.shape, axes, keepdim)
        if p == 2:
            local = np.where(n == 0, 0, x / n)
        elif p == 1:
            local = np.sign(x)
        elif p == float("inf"):
            mask = np.abs(x) == n
            count = _expand_back(np.sum(mask, axis=axes, keepdims=keepdim), x.shape, axes, keepdim)
            local = np.sign(x) * mask / count
        else:
            local = np.where(n == 0, 0, np.sign(x) * np.abs(x) ** (p - 1) / n ** (p - 1))
        return (g * local).astype(x.dtype)


class Prod(Function):
    """Product over all elements or one dim; the gradient is the product of the *other* elements,
    computed with exclusive cumulative products so zeros in the input are handled exactly."""

    @staticmethod
    def forward(ctx, x, dim=None, keepdim=False):
        ctx.save_for_backward(x)
        ctx.dim, ctx.keepdim = dim, keepdim
        return np.asarray(np.prod(x, axis=dim, keepdims=keepdim))

    @staticmethod
    def backward(ctx, grad):
        (x,) = ctx.saved_tensors
        axis = -1 if ctx.dim is None else ctx.dim
        moved = x.reshape(-1) if ctx.dim is None else np.moveaxis(x, axis, -1)
        ones = np.ones(moved.shape[:-1] + (1,), dtype=x.dtype)
        before = np.cumprod(np.concatenate([ones, moved[..., :-1]], axis=-1), axis=-1)
        after = np.cumprod(np.concatenate([ones, moved[..., :0:-1]], axis=-1), axis=-1)[..., ::-1]
        others = before * after
        others = others.reshape(x.shape) if ctx.dim is None else np.moveaxis(others, -1, axis)
        axes = None if ctx.dim is None else (ctx.dim % x.ndim,)
        return _expand_back(grad, x.shape, axes, ctx.keepdim) * others


class ProdDim(Prod):
    name = "ProdBackward1"


class LogSumExp(Function):
    @staticmethod
    def forward(ctx, x, dim, keepdim=False):
        axes = _axes(dim, x.ndim)
        m = np.max(x, axis=axes, keepdims=True)
        m = np.where(np.isfinite(m), m, 0)
        out = np.log(np.sum(np.exp(x - m), axis=axes, keepdims=True)) + m
        ctx.save_for_backward(x, out)
        ctx.axes = axes
        ctx.keepdim = keepdim
        return out if keepdim else np.squeeze(out, axis=axes)

    @staticmethod
    def backward(ctx, grad):
        x, out = ctx.saved_tensors
        if not ctx.keepdim:
            grad = np.expand_dims(grad, ctx.axes)
        return grad * np.exp(x - out)


# -- softmax ------------------------------------------------------------------------------------


class Softmax(Function):
    """``exp(x - max) / sum`` along ``dim`` into one output array (the composition made four);
    along the last axis of a contiguous input (attention scores) blocks of rows are shared out
    among the threads."""

    @staticmethod
    def forward(ctx, x, dim):
        x = _floating(x)
        out = np.empty_like(x)
        last = x.ndim >= 2 and x.size and dim % x.ndim == x.ndim - 1
        if last and x.flags.c_contiguous:
            rows, flat = x.reshape(-1, x.shape[-1]), out.reshape(-1, x.shape[-1])
            kernel = None
            if x.dtype == np.float32:
                kernel = jit.compiled_if_loaded(_softmax_rows, jit.FUSED_MULTIPLY_ADD)
            if kernel is not None:

                def block(lo: int, hi: int) -> None:
                    bits = scratch("softmax scale", (2, rows.shape[1]), np.int32)
                    kernel(rows[lo:hi], flat[lo:hi], bits, bits.view(np.float32))

                split(block, len(rows), x.size)
            else:
                split(
                    lambda lo, hi: _softmax_into(flat[lo:hi], rows[lo:hi], 1), len(rows), 3 * x.size
                )
        else:
            _softmax_into(out, x, dim)
        ctx.save_for_backward(out)
        ctx.dim = dim
        return out

    @staticmethod
    def backward(ctx, grad):
        (out,) = ctx.saved_tensors
        gx = np.multiply(grad, out)
        total = np.sum(gx, axis=ctx.dim, keepdims=True)
        gx -= out * total
        return gx


def _softmax_into(out: np.ndarray, x: np.ndarray, dim: int) -> None:
    np.subtract(x, np.max(x, axis=dim, keepdims=True), out=out)
    np.exp(out, out=out)
    out /= np.sum(out, axis=dim, keepdims=True)


def _softmax_rows(rows, out, bits, scale) -> None:
    """``out = exp(rows - max) / sum`` row by row, float32, compiled by ``jit`` with
    ``contract``: the exp by ``special.exp_parts`` (numpy's five passes took 1.4x this at
    ViT-S's 1182 rows of 197 on one thread), the sum in float64. A NaN anywhere in a row makes
    the whole row NaN, as numpy's NaN maximum does; so does an infinity (inf - inf). ``bits``
    (int32, two rows) is a row's scratch, ``scale`` its float32 view."""
    first, second, scale_first, scale_second = bits[0], bits[1], scale[0], scale[1]
    width = rows.shape[1]
    whole = width - width % 4
    for i in range(rows.shape[0]):
        row, o = rows[i], out[i]
        # four running maxima and sums: one chain would wait on each step
        t0 = t1 = t2 = t3 = row[0]
        for c in range(0, whole, 4):
            t0 = row[c] if row[c] > t0 else t0  # NaN never wins: it reaches the sum instead
            t1 = row[c + 1] if row[c + 1] > t1 else t1
            t2 = row[c + 2] if row[c + 2] > t2 else t2
            t3 = row[c + 3] if row[c + 3] > t3 else t3
        for c in range(whole, width):
            t0 = row[c] if row[c] > t0 else t0
        t0 = t1 if t1 > t0 else t0
        t2 = t3 if t3 > t2 else t2
        top = t2 if t2 > t0 else t0
        for c in range(width):
            d = row[c] - top
            p, first[c], second[c] = special.exp_parts(d)
            o[c] = p if d == d else d  # NaN stays NaN
        s0 = s1 = s2 = s3 = 0.0
        for c in range(width):
            o[c] = (o[c] * scale_first[c]) * scale_second[c]
        for c in range(0, whole, 4):
            s0 += o[c]
            s1 += o[c + 1]
            s2 += o[c + 2]
            s3 += o[c + 3]
        for c in range(whole, width):
            s0 += o[c]
        norm = o.dtype.type((s0 + s1) + (s2 + s3))
        for c in range(width):
            o[c] = o[c] / norm


class LogSoftmax(Function):
    @staticmethod
    def forward(ctx, x, dim):
        x = _floating(x)
        shifted = x - np.max(x, axis=dim, keepdims=True)
        out = shifted - np.log(np.sum(np.exp(shifted), axis=dim, keepdims=True))
        ctx.save_for_backward(out)
        ctx.dim = dim
        return out

    @staticmethod
    def backward(ctx, grad):
        (out,) = ctx.saved_tensors
        return grad - np.exp(out) * np.sum(grad, axis=ctx.dim, keepdims=True)
