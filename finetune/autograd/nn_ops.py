"""Fused primitives for layers and losses: linear, batch norm, dropout, nll, mse, bce-with-logits.

Each is one ``Function`` (one graph node, PyTorch's grad_fn name) with its forward next to its
backward. A fused node saves only what its backward needs for the inputs that need a gradient:
a frozen ``Linear`` keeps no copy of its input, an eval-mode BatchNorm with frozen affine
parameters keeps nothing at all.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from ..errors import ShapeError
from ..parallel import COMPILED_WORK_RATIO, split
from . import jit, piecewise, special
from .elementwise import sigmoid_into
from .function import Function
from .indexing import index_add
from .layout import (
    along_row,
    as_nchw,
    channel_sums_last,
    is_channels_last,
    pixel_rows,
    sum_rows,
)
from .matmul import as_rows
from .scratch import scratch
from .special import blockwise, empty_like_dense


def _as_float(x: np.ndarray) -> np.ndarray:
    """``x`` itself when floating, else as float32 (an activation of integers)."""
    return x if x.dtype.kind == "f" else x.astype(np.float32)


# -- linear ----------------------------------------------------------------------------------------


# a product with at most this many rows and a weight of at least this many values is asked of
# BLAS the other way round (see ``_rows_times_transposed``)
_FEW_ROWS, _LARGE_WEIGHT = 64, 1 << 16


def _rows_times_transposed(rows: np.ndarray, weight: np.ndarray) -> np.ndarray:
    """``rows @ weight.T``, C-contiguous. For a few rows against a large row-major weight, as
    ``(weight @ rows.T).T``: OpenBLAS runs a product with a handful of rows against a transposed
    operand 1.2-2.9x slower than the same product turned around (a batch-8 classifier head,
    1280 -> 1000: 445 against 246 us; 64 rows still 1.2x; 256 rows the other way). A weight
    stored transposed (an imported MatMul's) is no transposed operand: within 0.84-1.36x
    either way, left as it is."""
    few = len(rows) <= _FEW_ROWS and weight.size >= _LARGE_WEIGHT
    if few and weight.flags.c_contiguous:
        return np.ascontiguousarray((weight @ rows.T).T)
    return rows @ weight.T


class Linear(Function):
    """``x @ weight.T + bias``: x (..., in), weight (out, in), bias (out) -> (..., out).

    Every row of an N-d ``x`` goes through one 2-D product: numpy's ``matmul`` would broadcast
    the weight and call BLAS once per leading index (ConvNeXt's channels-last MLP, 56 calls
    per layer, 10-100x slower on a busy machine)."""

    name = "AddmmBackward0"

    @staticmethod
    def forward(ctx, x, weight, bias=None):
        ctx.save_for_backward(
            x if ctx.needs_input_grad[1] else None, weight if ctx.needs_input_grad[0] else None
        )
        out = _rows_times_transposed(as_rows(x), weight).reshape(x.shape[:-1] + weight.shape[:1])
        if bias is not None:
            out += bias
        return out

    @staticmethod
    def backward(ctx, grad):
        x, weight = ctx.saved_tensors
        needs = ctx.needs_input_grad
        g = as_rows(grad)
        gx = (g @ weight).reshape(grad.shape[:-1] + weight.shape[1:]) if needs[0] else None
        gw = np.matmul(g.T, as_rows(x)) if needs[1] else None
        gb = g.sum(axis=0) if len(needs) > 2 and needs[2] else None
        return gx, gw, gb


class LinearNoBias(Linear):
    name = "MmBackward0"


class LinearNd(Linear):
    """Linear on input with more than two dimensions (PyTorch reshapes after addmm)."""

    name = "ViewBackward0"


class LinearNdNoBias(Linear):
    name = "UnsafeViewBackward0"


class Embedding(Function):
    """``weight[indices]``: rows of ``weight`` (num, dim) picked by an integer tensor. The weight's
    gradient adds each output row's gradient into the row it came from (dense, also for
    ``sparse=True``), except ``padding_idx``; ``scale_grad_by_freq`` divides by how often each
    row was picked in the batch."""

    name = "EmbeddingBackward0"

    @staticmethod
    def forward(ctx, weight, indices, *, padding_idx, scale_grad_by_freq):
        ctx.indices, ctx.num = indices, weight.shape[0]
        ctx.padding_idx, ctx.scale_grad_by_freq = padding_idx, scale_grad_by_freq
        return weight[indices]

    @staticmethod
    def backward(ctx, grad):
        flat = ctx.indices.reshape(-1)
        rows = grad.reshape(flat.size, -1)
        if ctx.scale_grad_by_freq:
            counts = np.bincount(flat, minlength=ctx.num)
            rows = rows / counts[flat, None].astype(rows.dtype)
        gw = index_add(ctx.num, flat, rows)
        if ctx.padding_idx is not None:
            gw[ctx.padding_idx] = 0
        return gw, None


# -- batch norm ------------------------------------------------------------------------------------


def _channel_view(ndim: int) -> tuple:
    """Shape that broadcasts a per-channel vector over ``(N, C, *spatial)``."""
    return (1, -1) + (1,) * (ndim - 2)


def _reduce_axes(ndim: int) -> tuple:
    return (0,) + tuple(range(2, ndim))


def _channel_sums(a: np.ndarray) -> np.ndarray:
    """``(N, C, *) -> (C,)``: each channel's sum, added in an order that does not depend on how
    many channels ``a`` holds, so a block of channels sums exactly as the whole tensor does.
    Half precision adds in float32 (as ``np.mean`` does)."""
    dtype = np.float32 if a.dtype == np.float16 else None
    if a.ndim > 2:
        a = a.sum(axis=tuple(range(2, a.ndim)), dtype=dtype)
    return a.sum(axis=0, dtype=dtype)


def _channel_dots(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """``(N, C, *), (N, C, *) -> (C,)``: each channel's sum of ``a * b``, in one pass without a
    temporary for the products; a block of channels sums exactly as the whole tensor does.
    Half precision accumulates in float32."""
    dtype = np.float32 if a.dtype == np.float16 else None
    n, c = a.shape[:2]
    return np.einsum("ncs,ncs->c", a.reshape(n, c, -1), b.reshape(n, c, -1), dtype=dtype)


def _channel_stats_last(x: np.ndarray, out: np.ndarray, count: int):
    """Mean and biased variance per channel of a channels-last ``x``, leaving the centred input
    in ``out``, its ``(n h) (w c)`` rows. Sums go along each image row, then over the rows
    pairwise (``channel_sums_last``), so the result does not depend on the split into chunks."""
    rows = pixel_rows(x)
    p, w, c = rows.shape
    flat = rows.reshape(p, w * c)
    mean = channel_sums_last(x) / count
    mean_row = along_row(mean, w)
    partial = np.empty((p, c), dtype=x.dtype)

    def centre(lo: int, hi: int) -> None:
        np.subtract(flat[lo:hi], mean_row, out=out[lo:hi])
        part = out[lo:hi].reshape(hi - lo, w, c)
        np.einsum("pwc,pwc->pc", part, part, out=partial[lo:hi])

    split(centre, p, 2 * x.size)
    return mean, sum_rows(partial) / count


def _channels_last(x: np.ndarray) -> bool:
    """Whether BatchNorm takes its channels-last path (float32 and float64 only; half precision
    keeps the channel-blocked path, which accumulates in float32)."""
    return is_channels_last(x) and x.dtype in (np.float32, np.float64)


def _train_forward(x, weight, bias, eps, count):
    """Training-mode BatchNorm on blocks of channels: ``(out, mean, var, invstd)``."""
    view = _channel_view(x.ndim)
    channels = x.shape[1]
    mean, var, invstd = (np.empty(channels, dtype=x.dtype) for _ in range(3))
    out = np.empty_like(x)

    def block(lo: int, hi: int) -> None:
        xs, o = x[:, lo:hi], out[:, lo:hi]
        mean[lo:hi] = _channel_sums(xs) / count
        np.subtract(xs, mean[lo:hi].reshape(view), out=o)  # centred, before o is the output
        var[lo:hi] = _channel_dots(o, o) / count
        invstd[lo:hi] = 1.0 / np.sqrt(var[lo:hi] + eps)
        scale = invstd[lo:hi] if weight is None else invstd[lo:hi] * weight[lo:hi]
        np.multiply(o, scale.reshape(view), out=o)
        if bias is not None:
            o += bias[lo:hi].reshape(view)

    split(block, channels, 4 * x.size)
    return out, mean, var, invstd


def _train_forward_last(x, weight, bias, eps, count):
    """``_train_forward`` for a channels-last ``x``: three passes over blocks of image rows
    (sums; centre and squares; scale and shift), each channel a lane of the inner axis."""
    n, c, h, w = x.shape
    out = np.empty((n, h, w, c), dtype=x.dtype)
    centred = out.reshape(n * h, w * c)
    mean, var = _channel_stats_last(x, centred, count)
    invstd = 1.0 / np.sqrt(var + eps)
    scale = along_row(invstd if weight is None else invstd * weight, w)
    shift = None if bias is None else along_row(bias, w)

    def finish(lo: int, hi: int) -> None:
        np.multiply(centred[lo:hi], scale, out=centred[lo:hi])
        if shift is not None:
            centred[lo:hi] += shift

    split(finish, len(centred), 2 * x.size)
    return as_nchw(out), mean, var, invstd


class BatchNormTrain(Function):
    """Normalise with batch statistics and update the running averages in place.

    x (N, C, *), weight and bias (C) or None, running_mean and running_var (C) or None.
    The biased batch variance normalises; the unbiased one feeds ``running_var``.
    Both directions work on blocks of channels (every statistic is per channel), or of image
    rows for a channels-last input (``_train_forward_last``), in place into their outputs, the
    blocks shared out among the threads. Backward keeps the input and two numbers per channel,
    as PyTorch does, not a normalised copy: the row-major forward makes five passes over each
    block of channels (sum, centre, sum of squares, scale, shift), not seven.
    """

    name = "NativeBatchNormBackward0"

    @staticmethod
    def forward(ctx, x, weight, bias, running_mean, running_var, momentum, eps):
        count = x.size // x.shape[1]
        if count <= 1:
            raise ShapeError(
                f"Expected more than 1 value per channel when training, got input size "
                f"{list(x.shape)}"
            )
        if _channels_last(x):
            out, mean, var, invstd = _train_forward_last(x, weight, bias, eps, count)
        else:
            out, mean, var, invstd = _train_forward(x, weight, bias, eps, count)
        if running_mean is not None:
            running_mean *= 1 - momentum
            running_mean += momentum * mean.astype(running_mean.dtype)
        if running_var is not None:
            running_var *= 1 - momentum
            running_var += momentum * (var * (count / (count - 1))).astype(running_var.dtype)
        ctx.save_for_backward(x, mean, invstd, weight)
        return out

    @staticmethod
    def backward(ctx, grad):
        x, mean, invstd, weight = ctx.saved_tensors
        needs = ctx.needs_input_grad
        count = grad.size // grad.shape[1]
        scale = invstd if weight is None else weight * invstd
        backward = (
            _train_backward_last if _channels_last(x) and _channels_last(grad) else _train_backward
        )
        gx, sum_g, sum_g_xhat = backward(x, grad, mean, invstd, scale, count, needs[0])
        gw = sum_g_xhat if needs[1] else None
        gb = sum_g if needs[2] else None
        return gx, gw, gb, None, None


def _train_backward(x, grad, mean, invstd, scale, count, wants_input):
    """Training-mode BatchNorm's backward on blocks of channels: ``(grad_x or None, sum of
    grad, sum of grad * x_hat)``, the last two the bias's and the weight's gradients."""
    view = _channel_view(grad.ndim)
    channels = grad.shape[1]
    sum_g = np.empty(channels, dtype=grad.dtype)
    sum_g_xhat = np.empty(channels, dtype=grad.dtype)
    gx = np.empty_like(grad)  # the centred input first, then the gradient

    def block(lo: int, hi: int) -> None:
        g, gxs = grad[:, lo:hi], gx[:, lo:hi]
        sum_g[lo:hi] = _channel_sums(g)
        np.subtract(x[:, lo:hi], mean[lo:hi].reshape(view), out=gxs)
        # x_hat = (x - mean) * invstd
        sum_g_xhat[lo:hi] = _channel_dots(g, gxs) * invstd[lo:hi]
        if not wants_input:
            return
        # scale / count * (count * grad - sum_g - x_hat * sum_g_xhat)
        k = scale[lo:hi] / count
        np.multiply(gxs, (-k * sum_g_xhat[lo:hi] * invstd[lo:hi]).reshape(view), out=gxs)
        gxs -= (k * sum_g[lo:hi]).reshape(view)
        gxs += g * scale[lo:hi].reshape(view)

    split(block, channels, 5 * grad.size)
    return (gx if wants_input else None), sum_g, sum_g_xhat


def _train_backward_last(x, grad, mean, invstd, scale, count, wants_input):
    """``_train_backward`` for channels-last ``x`` and ``grad``: two passes over blocks of
    image rows, the sums (summed as in ``_channel_stats_last``), then the gradient."""
    n, c, h, w = grad.shape
    g, xs = pixel_rows(grad), pixel_rows(x)
    gx = np.empty((n, h, w, c), dtype=grad.dtype)
    centred = gx.reshape(n * h, w, c)  # the centred input first, then the gradient
    partial_g, partial_dot = (np.empty((n * h, c), dtype=grad.dtype) for _ in range(2))
    mean_row = along_row(mean, w)

    def sums(lo: int, hi: int) -> None:
        np.einsum("pwc->pc", g[lo:hi], out=partial_g[lo:hi])
        np.subtract(
            xs[lo:hi].reshape(hi - lo, -1), mean_row, out=centred[lo:hi].reshape(hi - lo, -1)
        )
        np.einsum("pwc,pwc->pc", g[lo:hi], centred[lo:hi], out=partial_dot[lo:hi])

    split(sums, len(g), 3 * grad.size)
    sum_g, sum_g_xhat = sum_rows(partial_g), sum_rows(partial_dot) * invstd
    if not wants_input:
        return None, sum_g, sum_g_xhat
    k = scale / count
    centred_scale = along_row(-k * sum_g_xhat * invstd, w)
    shift, grad_scale = along_row(k * sum_g, w), along_row(scale, w)

    def finish(lo: int, hi: int) -> None:
        part = centred[lo:hi].reshape(hi - lo, -1)
        np.multiply(part, centred_scale, out=part)
        part -= shift
        part += g[lo:hi].reshape(hi - lo, -1) * grad_scale

    split(finish, len(g), 3 * grad.size)
    return as_nchw(gx), sum_g, sum_g_xhat


class BatchNormEval(Function):
    """Normalise with running statistics: a per-channel ``x * scale + shift``.

    It saves the normalised input only when the weight needs a gradient and the scale only when
    the input does, so a frozen BatchNorm in eval mode keeps nothing for backward.
    """

    name = "NativeBatchNormBackward0"

    @staticmethod
    def forward(ctx, x, weight, bias, running_mean, running_var, eps):
        view = _channel_view(x.ndim)
        scale, shift, invstd = eval_affine(weight, bias, running_mean, running_var, eps, x.dtype)
        out = affine_channels(x, scale, shift)
        needs = ctx.needs_input_grad
        x_hat = (x - running_mean.reshape(view)) * invstd.reshape(view) if needs[1] else None
        ctx.save_for_backward(x_hat, scale if needs[0] else None)
        return out.astype(x.dtype, copy=False)

    @staticmethod
    def backward(ctx, grad):
        x_hat, scale = ctx.saved_tensors
        axes, view = _reduce_axes(grad.ndim), _channel_view(grad.ndim)
        needs = ctx.needs_input_grad
        gx = grad * scale.reshape(view) if needs[0] else None
        gw = (grad * x_hat).sum(axis=axes) if needs[1] else None
        gb = grad.sum(axis=axes) if needs[2] else None
        return gx, gw, gb, None, None


def eval_affine(weight, bias, running_mean, running_var, eps: float, dtype) -> tuple:
    """An eval BatchNorm's per-channel ``scale`` and ``shift`` (it computes ``x * scale +
    shift``) and ``invstd``, from its arrays (weight and bias may be None)."""
    invstd = (1.0 / np.sqrt(running_var + eps)).astype(dtype, copy=False)
    scale = invstd if weight is None else weight * invstd
    shift = -running_mean * scale if bias is None else bias - running_mean * scale
    return scale, shift, invstd


def affine_channels(x: np.ndarray, scale, shift, fn=None) -> np.ndarray:
    """``x * scale + shift`` per channel (axis 1) into a new array in ``x``'s layout, split
    over threads; ``fn``, an in-place ``epilogue``, on each block right after it (while it is in
    cache: an eval BatchNorm and the ReLU after it in one pass over memory)."""
    view = _channel_view(x.ndim)
    out = np.empty_like(x)  # x's layout
    if not _affine_channels_last(out, x, scale, shift, fn):

        def block(lo: int, hi: int) -> None:
            np.multiply(x[:, lo:hi], scale[lo:hi].reshape(view), out=out[:, lo:hi])
            out[:, lo:hi] += shift[lo:hi].reshape(view)
            if fn is not None:
                fn(out[:, lo:hi])

        split(block, x.shape[1], 2 * x.size)
    return out


def _affine_channels_last(out, x, scale, shift, fn=None) -> bool:
    """``out = x * scale + shift`` per channel for a channels-last 4-d ``x`` (``out`` alike),
    over rows of pixels, then ``fn`` on each chunk: one compiled pass
    (``piecewise.affine_rows``), else numpy over flat ``(n h) (w c)`` rows with the scale and
    shift repeated along them. Slicing channels of such an array, as the row-major path does,
    leaves a few strided channels per inner loop: 7-21 ms against ~1 ms for DenseNet's
    BatchNorms at 56x56, batch 8. False for other layouts."""
    if x.ndim != 4 or x.flags.c_contiguous or not is_channels_last(x):
        return False
    c, w = x.shape[1], x.shape[3]
    rows, target = pixel_rows(x), pixel_rows(out)
    if piecewise.affine_rows(target.reshape(-1, c), rows.reshape(-1, c), scale, shift, fn):
        return True
    rows, target = rows.reshape(len(rows), -1), target.reshape(len(target), -1)
    s, b = along_row(scale, w), along_row(shift, w)

    def block(lo: int, hi: int) -> None:
        np.multiply(rows[lo:hi], s, out=target[lo:hi])
        target[lo:hi] += b
        if fn is not None:
            fn(target[lo:hi])

    split(block, len(rows), 2 * x.size)
    return True


# -- activations with a parameter ------------------------------------------------------------------


class Gelu(Function):
    """``x * Phi(x)``, Phi the standard normal CDF; with ``approximate="tanh"`` PyTorch's
    ``0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3)))``. A Function, not a composition, for
    speed: the exact float32 form runs as one chain over cache-sized blocks (the erf rational
    with the 1/2 folded into its numerator), 28 passes where the composition made five arrays."""

    @staticmethod
    def forward(ctx, x, approximate):
        x = _as_float(x)
        ctx.save_for_backward(x)
        ctx.approximate = approximate
        if approximate == "tanh":
            inner = _SQRT_2_OVER_PI * (x + _GELU_CUBIC * x * x * x)
            return (0.5 * x * (1 + np.tanh(inner))).astype(x.dtype, copy=False)
        if x.dtype == np.float32:
            return gelu_float32(x)
        return (0.5 * x * (1 + special.erf(x * _SQRT_HALF))).astype(x.dtype, copy=False)

    @staticmethod
    def backward(ctx, grad):
        (x,) = ctx.saved_tensors
        if ctx.approximate == "tanh":
            inner = _SQRT_2_OVER_PI * (x + _GELU_CUBIC * x * x * x)
            t = np.tanh(inner)
            d_inner = _SQRT_2_OVER_PI * (1 + 3 * _GELU_CUBIC * x * x)
            slope = 0.5 * (1 + t) + 0.5 * x * (1 - t * t) * d_inner
        elif x.dtype == np.float32 and grad.dtype == np.float32:
            return _gelu_backward_float32(grad, x)
        else:
            cdf = 0.5 * (1 + special.erf(x * _SQRT_HALF))
            slope = cdf + x * np.exp(-0.5 * x * x) * _INV_SQRT_2PI
        return (grad * slope).astype(grad.dtype, copy=False)


def gelu_float32(x: np.ndarray) -> np.ndarray:
    """The exact GELU of a float32 array, in its layout: compiled (``_gelu_loop``, one pass)
    when ``jit`` can, else a chain of numpy passes over cache-sized blocks (``_gelu_kernel``);
    the same float32 operations in the same order either way."""
    out = empty_like_dense(x)
    kernel = jit.compiled(_gelu_loop)
    flat = special.flat_in_memory_order((out, x)) if kernel is not None else None
    if flat is None:
        blockwise(_gelu_kernel, out, x, temps=2)
        return out
    o, a = flat
    split(lambda lo, hi: kernel(a[lo:hi], o[lo:hi], _GELU_CONSTANTS), a.size, a.size)
    return out


def _gelu_loop(x, out, constants) -> None:
    """``_gelu_kernel`` one element at a time, compiled by ``jit`` (ConvNeXt-T's 18 GELUs at
    batch 8 took 227 of its 794 ms as numpy passes). ``constants``: ``_GELU_CONSTANTS``, float32,
    so every operation stays float32; the clamps are written as selects so that the loop
    vectorises."""
    sqrt_half, saturates, half = constants[0], constants[1], constants[2]
    p0, p1, p2, p3, p4 = constants[3], constants[4], constants[5], constants[6], constants[7]
    q0, q1, q2, q3 = constants[8], constants[9], constants[10], constants[11]
    q4, q5, q6 = constants[12], constants[13], constants[14]
    for i in range(x.shape[0]):
        t = x[i] * sqrt_half
        t = t if t > -saturates else -saturates  # (a NaN x gives NaN: the last product)
        t = t if t < saturates else saturates
        s = t * t
        ratio = t / ((((((s * q0 + q1) * s + q2) * s + q3) * s + q4) * s + q5) * s + q6)
        e = ((((s * p0 + p1) * s + p2) * s + p3) * s + p4) * ratio  # erf(x / sqrt 2) / 2
        e = e if e > -half else -half
        e = e if e < half else half
        out[i] = (e + half) * x[i]


def _gelu_backward_float32(grad: np.ndarray, x: np.ndarray) -> np.ndarray:
    """``_gelu_backward_kernel``'s values in ``grad``'s layout. Compiled when ``jit`` can: per
    block of ``BLOCK_BYTES`` one pass computes ``Phi(x)`` (as ``_gelu_loop``) and writes
    ``-x^2 / 2`` aside, numpy's SIMD exp runs on that (numba's exp is scalar), one pass
    combines; the same float32 operations in the same order as the numpy chain (35 passes)."""
    gx = empty_like_dense(grad)
    first, second = jit.compiled(_gelu_slope_first), jit.compiled(_gelu_slope_second)
    flat = None
    if first is not None and second is not None:
        flat = special.flat_in_memory_order((gx, grad, x))
    if flat is None:
        blockwise(_gelu_backward_kernel, gx, grad, x, temps=2)
        return gx
    g_, g, a = flat
    block = special.BLOCK_BYTES // a.itemsize

    def run(lo: int, hi: int) -> None:
        t = scratch("gelu", (min(block, hi - lo),), a.dtype)
        for start in range(lo, hi, block):
            stop = min(start + block, hi)
            e = t[: stop - start]
            first(a[start:stop], g_[start:stop], e, _GELU_CONSTANTS)
            np.exp(e, out=e)
            second(a[start:stop], g[start:stop], g_[start:stop], e, _GELU_CONSTANTS)

    split(run, a.size, 3 * a.size // COMPILED_WORK_RATIO)
    return gx


def _gelu_slope_first(x, cdf, e, constants) -> None:
    """``cdf = Phi(x)`` (``_gelu_loop``'s erf), ``e = -x^2 / 2`` (compiled by ``jit``)."""
    sqrt_half, saturates, half = constants[0], constants[1], constants[2]
    p0, p1, p2, p3, p4 = constants[3], constants[4], constants[5], constants[6], constants[7]
    q0, q1, q2, q3 = constants[8], constants[9], constants[10], constants[11]
    q4, q5, q6 = constants[12], constants[13], constants[14]
    for i in range(x.shape[0]):
        v = x[i]
        t = v * sqrt_half
        t = t if t > -saturates else -saturates
        t = t if t < saturates else saturates
        s = t * t
        ratio = t / ((((((s * q0 + q1) * s + q2) * s + q3) * s + q4) * s + q5) * s + q6)
        h = ((((s * p0 + p1) * s + p2) * s + p3) * s + p4) * ratio
        h = h if h > -half else -half
        h = h if h < half else half
        cdf[i] = h + half
        e[i] = (v * v) * -half


def _gelu_slope_second(x, grad, gx, e, constants) -> None:
    """``gx = (gx + e x / sqrt(2 pi)) grad``, ``gx`` holding ``Phi(x)`` and ``e`` ``exp(-x^2 /
    2)`` (compiled by ``jit``)."""
    inv_sqrt_2pi = constants[15]
    for i in range(x.shape[0]):
        gx[i] = (gx[i] + (e[i] * x[i]) * inv_sqrt_2pi) * grad[i]


def _half_erf_of_scaled(out, x, s, q) -> None:
    """``out = erf(x / sqrt 2) / 2``."""
    np.multiply(x, np.float32(_SQRT_HALF), out=out)
    np.clip(out, -special._ERF_SATURATES, special._ERF_SATURATES, out=out)
    special.erf_rational(out, out, s, q, scale=0.5)


def _gelu_kernel(out, x, s, q) -> None:
    """``out = x (1/2 + erf(x / sqrt 2) / 2)``."""
    _half_erf_of_scaled(out, x, s, q)
    out += np.float32(0.5)
    out *= x


def _gelu_backward_kernel(gx, grad, x, s, q) -> None:
    """``gx = grad (Phi(x) + x exp(-x^2 / 2) / sqrt(2 pi))``."""
    _half_erf_of_scaled(gx, x, s, q)
    gx += np.float32(0.5)
    np.multiply(x, x, out=s)
    s *= np.float32(-0.5)
    np.exp(s, out=s)
    s *= x
    s *= np.float32(_INV_SQRT_2PI)
    gx += s
    gx *= grad


_SQRT_HALF = float(np.sqrt(0.5))
_INV_SQRT_2PI = float(1 / np.sqrt(2 * np.pi))
# _gelu_loop's constants, each rounded to float32 as _gelu_kernel rounds it: sqrt(1/2), erf's
# saturation point, 1/2, erf's numerator halved (highest power first), its denominator; then
# the backward's 1/sqrt(2 pi)
_GELU_CONSTANTS = np.array(
    [_SQRT_HALF, special._ERF_SATURATES, 0.5]
    + [c * 0.5 for c in special._ERF_P]
    + list(special._ERF_Q)
    + [_INV_SQRT_2PI],
    dtype=np.float32,
)
_SQRT_2_OVER_PI = float(np.sqrt(2 / np.pi))
_GELU_CUBIC = 0.044715


class _SelfGated(Function):
    """``x * gate(x)`` as one Function: ``kernel(out, x)`` forward and ``backward_kernel(gx,
    grad, x, temporary)`` backward, each one pass chain over cache-sized blocks; the backward
    recomputes the gate from the saved input (as PyTorch does) instead of keeping a second
    activation-sized array."""

    kernel: staticmethod
    backward_kernel: staticmethod
    activation: piecewise.Activation | None = None  # computes ``kernel``'s values in one pass

    @classmethod
    def forward(cls, ctx, x):
        x = _as_float(x)
        out = empty_like_dense(x)
        if cls.activation is not None:
            cls.activation.into(out, x)
        else:
            blockwise(cls.kernel, out, x)
        ctx.save_for_backward(x if ctx.needs_input_grad[0] else None)
        return out

    @classmethod
    def backward(cls, ctx, grad):
        (x,) = ctx.saved_tensors
        gx = empty_like_dense(grad, dtype=np.result_type(grad, x))
        blockwise(cls.backward_kernel, gx, grad, x, temps=1)
        return gx


def silu_kernel(out, x) -> None:
    sigmoid_into(out, x)
    out *= x


def _silu_backward_kernel(gx, grad, x, s) -> None:
    """``gx = grad s (1 + x (1 - s))``, ``s = sigmoid(x)``."""
    sigmoid_into(s, x)
    np.subtract(1, s, out=gx)
    gx *= x
    gx += 1
    gx *= s
    gx *= grad


class Silu(_SelfGated):
    """``x * sigmoid(x)`` (swish)."""

    kernel = staticmethod(silu_kernel)
    backward_kernel = staticmethod(_silu_backward_kernel)


# values per block of ``_silu_rows``: its scratch stays in the first-level cache
_SILU_BLOCK = 2048


class Epilogue:
    """An elementwise ``kernel(out, x)`` that may write over its input (``sigmoid_into``,
    ``hardsigmoid_into``) as a convolution's epilogue, in place on each block: the node's own
    kernel, so the node's values."""

    __slots__ = ("kernel",)

    def __init__(self, kernel: Callable) -> None:
        self.kernel = kernel

    def __call__(self, block: np.ndarray) -> None:
        self.kernel(block, block)


class SiluEpilogue:
    """SiLU as a convolution's epilogue (``conv.epilogue``): ``silu_kernel``'s values, in place
    on a block; with the convolution's bias, on whole ``(pixels, channels)`` rows in cache-sized
    blocks (``with_bias``). EfficientNet-B0's first expansion at batch 8 (9.6M values) spent 15
    of its 17.7 ms in six numpy passes over blocks of 1.2 MB after its product."""

    def __call__(self, block: np.ndarray) -> None:
        out = np.empty_like(block)  # silu_kernel reads its input after writing its output
        silu_kernel(out, block)
        np.copyto(block, out)

    def with_bias(self, rows: np.ndarray, bias: np.ndarray | None) -> bool:
        """``rows = silu(rows + bias)`` in place, split over the threads. float32: one compiled
        pass per block of rows with its own exp (``_silu_rows``); float64: per block of
        ``BLOCK_BYTES``, a compiled pass adds the bias and writes ``-x`` aside, numpy's exp runs
        on that, a compiled pass combines (``silu_kernel``'s operations in its order). False
        (nothing done) without the compiled kernels or for other arrays."""
        if rows.ndim != 2 or not rows.flags.c_contiguous:
            return False
        if rows.dtype not in (np.float32, np.float64):
            return False
        width = rows.shape[1]
        kernel = (
            jit.compiled(_silu_rows, jit.FUSED_MULTIPLY_ADD) if rows.dtype == np.float32 else None
        )
        if kernel is not None:
            # no bias: none added (-0.0 + 0.0 would be +0.0)
            values = np.zeros(0, rows.dtype) if bias is None else bias.astype(rows.dtype)

            block = max(width, _SILU_BLOCK)

            def rows_of(lo: int, hi: int) -> None:
                p = scratch("silu polynomial", (block,), np.float32)
                bits = scratch("silu scale", (2, block), np.int32)
                kernel(rows[lo:hi].reshape(-1), width, values, p, bits, bits.view(np.float32))

            split(rows_of, len(rows), rows.size * 4 // COMPILED_WORK_RATIO)
            return True
        negate, combine = jit.compiled(_bias_negated), jit.compiled(_silu_combine)
        if negate is None or combine is None:
            return False
        bias = np.zeros(width, rows.dtype) if bias is None else bias.astype(rows.dtype, copy=False)
        step = max(1, special.BLOCK_BYTES // (rows.itemsize * width))
        ones = np.ones(1, rows.dtype)

        def chunk(lo: int, hi: int) -> None:
            t = scratch("silu", (min(step, hi - lo), width), rows.dtype)
            for start in range(lo, hi, step):
                block = rows[start : min(start + step, hi)]
                e = t[: len(block)]
                negate(block, bias, e)
                with np.errstate(over="ignore"):  # exp(-x) is inf below -88: the SiLU is -0
                    np.exp(e, out=e)
                combine(block, e, ones)

        split(chunk, len(rows), rows.size * 4 // COMPILED_WORK_RATIO)
        return True


def _silu_rows(values, width, bias, p, bits, scale) -> None:
    """``v = v / (1 + exp(-v))``, ``v = values + bias``, in place over rows of ``width`` laid
    end to end in ``values`` (float32; ``bias`` a row's values, or none), compiled by ``jit``
    with ``contract`` (fused multiply-adds), the exp by ``special.exp_parts`` (numba's own is
    scalar; the three passes around numpy's exp took 1.5-1.8x this pass's time). Whole rows a
    block at a time, as many as ``p`` (``bits``: int32, two such; ``scale`` their float32
    view) holds: a depthwise layer's 32-channel rows one by one spent more in entering the
    loops than in them (12544 such rows on one thread: 530 against 232 us). A NaN ``v`` stays
    NaN through the division."""
    first, second, scale_first, scale_second = bits[0], bits[1], scale[0], scale[1]
    step = max(1, p.shape[0] // width) * width
    for start in range(0, values.shape[0], step):
        block = values[start : min(start + step, values.shape[0])]
        if bias.shape[0]:
            for r in range(0, block.shape[0], width):
                row = block[r : r + width]
                for c in range(width):
                    row[c] += bias[c]
        for c in range(block.shape[0]):
            p[c], first[c], second[c] = special.exp_parts(-block[c])
        for c in range(block.shape[0]):
            e = (p[c] * scale_first[c]) * scale_second[c]
            block[c] = block[c] / (e + special.ONE)


def _bias_negated(rows, bias, negated) -> None:
    """``rows += bias; negated = -rows`` (compiled by ``jit``)."""
    for p in range(rows.shape[0]):
        row, out = rows[p], negated[p]
        for c in range(row.shape[0]):
            v = row[c] + bias[c]
            row[c] = v
            out[c] = -v


def _silu_combine(rows, e, ones) -> None:
    """``rows = rows * (1 / (1 + e))``, ``e = exp(-rows)``: the operations of ``silu_kernel``
    in its order (compiled by ``jit``); ``ones`` holds 1 in the rows' dtype, so that every
    operation stays in it."""
    one = ones[0]
    for p in range(rows.shape[0]):
        row, ep = rows[p], e[p]
        for c in range(row.shape[0]):
            row[c] = row[c] * (one / (ep[c] + one))


class HardSigmoid(Function):
    """``clamp(alpha x + beta, 0, 1)``: PyTorch's ``hardsigmoid`` with ``alpha = 1/6``,
    ``beta = 1/2``, ONNX's HardSigmoid with any. The gradient, ``alpha`` where the output is
    strictly between 0 and 1, is read from the saved output."""

    @staticmethod
    def forward(ctx, x, *, alpha=1 / 6, beta=0.5):
        x = _as_float(x)
        out = empty_like_dense(x)
        blockwise(lambda o, a: hardsigmoid_into(o, a, alpha, beta), out, x)
        ctx.save_for_backward(out if ctx.needs_input_grad[0] else None)
        ctx.alpha = alpha
        return out

    @staticmethod
    def backward(ctx, grad):
        (y,) = ctx.saved_tensors
        gx = empty_like_dense(grad)
        alpha = grad.dtype.type(ctx.alpha)

        def kernel(g_, g, y_):
            np.multiply(g, (y_ > 0) & (y_ < 1), out=g_)
            g_ *= alpha

        blockwise(kernel, gx, grad, y)
        return gx


def hardsigmoid_into(out, x, alpha: float, beta: float) -> None:
    """``out = clamp(alpha x + beta, 0, 1)`` in ``out``'s dtype."""
    t = out.dtype.type
    np.multiply(x, t(alpha), out=out)
    out += t(beta)
    np.clip(out, t(0), t(1), out=out)


def hardswish_kernel(out, x) -> None:
    hardsigmoid_into(out, x, 1 / 6, 0.5)
    out *= x


def _hardswish_backward_kernel(gx, grad, x, s) -> None:
    t = gx.dtype.type
    np.multiply(x, t(1 / 3), out=gx)
    gx += t(0.5)
    np.abs(x, out=s)
    gx *= s <= 3
    gx += x > 3
    gx *= grad


class HardSwish(_SelfGated):
    """``x * clamp(x / 6 + 1/2, 0, 1)`` (MobileNetV3) in four passes; the gradient is 0 below
    -3, ``x / 3 + 1/2`` up to 3 (inclusive at both ends, as PyTorch) and 1 above."""

    kernel = staticmethod(hardswish_kernel)
    backward_kernel = staticmethod(_hardswish_backward_kernel)
    activation = piecewise.hardswish()


# -- layer norm ------------------------------------------------------------------------------------


def _contiguous_rows(x: np.ndarray, width: int, slot: str) -> np.ndarray:
    """``x`` as ``(rows, width)``: a view of a C-contiguous ``x``, else a copy in this thread's
    ``slot`` scratch buffer (a fresh copy page-faults: 0.7 against 0.15 ms at ConvNeXt's
    ``(1, 56, 56, 96)``, whose input is a transposed view of the convolution's output)."""
    if x.flags.c_contiguous:
        return x.reshape(-1, width)
    rows = scratch(slot, (x.size // width, width), x.dtype)
    np.copyto(rows.reshape(x.shape), x)
    return rows


def _layer_norm_rows(rows, weight, bias, out, mean, invstd, eps):
    """``out = (rows - mean) invstd weight + bias`` row by row, compiled by ``jit`` with
    ``reassoc``: the mean and variance of a row summed in float64 in whatever order
    vectorises (eight running sums in an array, the order fixed, ran 3x slower: ViT-S's 197
    rows of 384 took 78 us, now 29-33), then one pass out with the same float32 steps as the numpy
    blocks, each a product or sum of two operands (nothing to reorder). ``weight`` and ``bias``
    have a row's width of values, or none."""
    n, d = rows.shape
    for r in range(n):
        row = rows[r]
        total = 0.0
        for k in range(d):
            total += row[k]
        m = total / d
        total = 0.0
        for k in range(d):
            t = row[k] - m
            total += t * t
        mean[r] = m
        invstd[r] = 1.0 / np.sqrt(total / d + eps)
        m32, inv32 = mean[r], invstd[r]  # in the rows' dtype, as the numpy blocks use them
        o = out[r]
        for k in range(d):
            o[k] = (row[k] - m32) * inv32
        if weight.shape[0]:
            for k in range(d):
                o[k] *= weight[k]
        if bias.shape[0]:
            for k in range(d):
                o[k] += bias[k]


class LayerNorm(Function):
    """Normalise each row of ``x`` over its last ``dims`` axes (biased variance), then scale
    and shift: x (..., *shape), weight and bias ``shape`` or None. One Function for the
    composition's nine nodes: the forward is four passes over blocks of rows (sum, centre,
    sum of squares, scale with the affine folded in), split over the threads, or with numba
    one compiled pass per row (``_layer_norm_rows``: ViT-S's (1576, 384) rows 0.91 -> 0.26 ms);
    it saves the input and two numbers per row, as PyTorch does."""

    name = "NativeLayerNormBackward0"

    @staticmethod
    def forward(ctx, x, weight, bias, *, dims, eps):
        width = int(np.prod(x.shape[x.ndim - dims :], dtype=np.int64))
        rows = _contiguous_rows(x, width, "layer_norm_rows")
        w = None if weight is None else weight.reshape(width)
        b = None if bias is None else bias.reshape(width)
        out = np.empty_like(rows)
        mean = np.empty(len(rows), dtype=x.dtype)
        invstd = np.empty(len(rows), dtype=x.dtype)
        kernel = jit.compiled(_layer_norm_rows, jit.SUMS_IN_ANY_ORDER)
        if kernel is not None:
            empty = np.zeros(0, x.dtype)
            affine = [empty if v is None else np.ascontiguousarray(v, x.dtype) for v in (w, b)]

        def block(lo: int, hi: int) -> None:
            if kernel is not None:
                kernel(rows[lo:hi], *affine, out[lo:hi], mean[lo:hi], invstd[lo:hi], eps)
                return
            r, o = rows[lo:hi], out[lo:hi]
            np.sum(r, axis=1, out=mean[lo:hi])
            mean[lo:hi] /= width
            np.subtract(r, mean[lo:hi, None], out=o)
            var = np.einsum("rd,rd->r", o, o) / width
            invstd[lo:hi] = 1 / np.sqrt(var + eps)
            o *= invstd[lo:hi, None]
            if w is not None:
                o *= w
            if b is not None:
                o += b

        split(block, len(rows), 4 * rows.size)
        needs = ctx.needs_input_grad
        ctx.save_for_backward(x if any(needs) else None, mean, invstd, w)
        ctx.shapes = (x.shape, None if weight is None else weight.shape)
        return out.reshape(x.shape)

    @staticmethod
    def backward(ctx, grad):
        x, mean, invstd, w = ctx.saved_tensors
        x_shape, w_shape = ctx.shapes
        needs = ctx.needs_input_grad
        width = x.size // len(mean)
        rows = _contiguous_rows(x, width, "layer_norm_rows")
        g = _contiguous_rows(grad, width, "layer_norm_grad_rows")
        gx = np.empty_like(g) if needs[0] else None
        wants_w, wants_b = len(needs) > 1 and needs[1], len(needs) > 2 and needs[2]
        partial_w, partial_b = {}, {}  # per block of rows, keyed by its first row

        def block(lo: int, hi: int) -> None:
            # x_hat = (x - mean) invstd; g_hat = g w;
            # gx = invstd (g_hat - mean(g_hat) - x_hat mean(g_hat x_hat))
            x_hat = rows[lo:hi] - mean[lo:hi, None]
            x_hat *= invstd[lo:hi, None]
            if wants_w:
                partial_w[lo] = np.einsum("rd,rd->d", g[lo:hi], x_hat)
            if wants_b:
                partial_b[lo] = g[lo:hi].sum(axis=0)
            if gx is None:
                return
            g_hat = g[lo:hi] if w is None else g[lo:hi] * w
            mean_g = g_hat.sum(axis=1) / width
            mean_gx = np.einsum("rd,rd->r", g_hat, x_hat) / width
            o = gx[lo:hi]
            np.multiply(x_hat, mean_gx[:, None], out=o)
            np.subtract(g_hat, o, out=o)
            o -= mean_g[:, None]
            o *= invstd[lo:hi, None]

        split(block, len(rows), 5 * rows.size)
        gw = _sum_blocks(partial_w, w_shape) if wants_w else None
        gb = _sum_blocks(partial_b, w_shape) if wants_b else None
        return (None if gx is None else gx.reshape(x_shape)), gw, gb


def _sum_blocks(partials: dict, shape: tuple) -> np.ndarray:
    """The blocks' partial sums added in row order, so the threads' split does not matter
    beyond the block boundaries."""
    return np.sum([partials[lo] for lo in sorted(partials)], axis=0).reshape(shape)


class Hardtanh(Function):
    """Clip to ``[min_val, max_val]``; ``relu6`` is ``Hardtanh(0, 6)`` as in PyTorch."""

    @staticmethod
    def forward(ctx, x, min_val, max_val):
        ctx.save_for_backward((x > min_val) & (x < max_val))
        return np.clip(x, min_val, max_val).astype(x.dtype, copy=False)

    @staticmethod
    def backward(ctx, grad):
        (inside,) = ctx.saved_tensors
        return grad * inside


class LeakyRelu(Function):
    @staticmethod
    def forward(ctx, x, negative_slope):
        positive = x > 0
        ctx.save_for_backward(positive)
        ctx.negative_slope = negative_slope
        return np.where(positive, x, x * negative_slope).astype(x.dtype, copy=False)

    @staticmethod
    def backward(ctx, grad):
        (positive,) = ctx.saved_tensors
        return np.where(positive, grad, grad * ctx.negative_slope).astype(grad.dtype, copy=False)


# -- dropout ---------------------------------------------------------------------------------------


class Dropout(Function):
    """Multiply by a saved mask of 0 and ``1 / (1 - p)``: x * mask, mask drawn by the caller."""

    name = "NativeDropoutBackward0"

    @staticmethod
    def forward(ctx, x, mask):
        ctx.save_for_backward(mask)
        return x * mask

    @staticmethod
    def backward(ctx, grad):
        (mask,) = ctx.saved_tensors
        return grad * mask, None


# -- losses ----------------------------------------------------------------------------------------


def _reduce(loss: np.ndarray, reduction: str, denominator=None) -> np.ndarray:
    if reduction == "none":
        return loss
    total = loss.sum()
    if reduction == "sum":
        return np.asarray(total, dtype=loss.dtype)
    count = loss.size if denominator is None else denominator
    return np.asarray(total / count, dtype=loss.dtype)


def _grad_scale(grad: np.ndarray, shape: tuple, reduction: str, denominator) -> np.ndarray:
    """The incoming gradient spread back over the unreduced loss of ``shape``."""
    if reduction == "none":
        return grad
    if reduction == "sum":
        return np.broadcast_to(grad, shape)
    return np.broadcast_to(grad / denominator, shape)


class NllLoss(Function):
    """Negative log-likelihood: log_probs (N, C, *) or (C,), class indices (N, *) or ()."""

    name = "NllLossBackward0"

    @staticmethod
    def forward(ctx, log_probs, target, weight, reduction, ignore_index):
        n_classes = log_probs.shape[1] if log_probs.ndim > 1 else log_probs.shape[0]
        batched = log_probs.ndim > 1
        lp = log_probs if batched else log_probs[None]
        tgt = target if batched else target[None]
        valid = tgt != ignore_index
        bad = valid & ((tgt < 0) | (tgt >= n_classes))
        if bad.any():
            raise ShapeError(
                f"Target {int(tgt[bad].flat[0])} is out of bounds: the input of shape "
                f"{list(log_probs.shape)} has {n_classes} classes"
            )
        safe = np.where(valid, tgt, 0)[:, None]
        picked = np.take_along_axis(lp, safe, axis=1)[:, 0]
        w = valid.astype(lp.dtype) if weight is None else np.where(valid, weight[safe[:, 0]], 0)
        w = w.astype(lp.dtype, copy=False)
        loss = -picked * w
        denominator = w.sum() if reduction == "mean" else None
        ctx.save_for_backward(safe, w)
        ctx.meta = (lp.shape, batched, reduction, denominator)
        out = _reduce(loss, reduction, denominator)
        return out if batched or reduction != "none" else out[0]

    @staticmethod
    def backward(ctx, grad):
        safe, w = ctx.saved_tensors
        shape, batched, reduction, denominator = ctx.meta
        if not ctx.needs_input_grad[0]:
            return None, None, None
        g = grad if batched or reduction != "none" else grad[None]
        per_item = -_grad_scale(g, w.shape, reduction, denominator) * w
        out = np.zeros(shape, dtype=w.dtype)
        np.put_along_axis(out, safe, per_item[:, None].astype(w.dtype), axis=1)
        return (out if batched else out[0]), None, None


class MseLoss(Function):
    """Mean (or summed) squared error; the target broadcasts against the input."""

    name = "MseLossBackward0"

    @staticmethod
    def forward(ctx, x, target, reduction):
        diff = x - target
        ctx.save_for_backward(diff)
        ctx.shapes = (x.shape, target.shape, reduction)
        return _reduce(diff * diff, reduction)

    @staticmethod
    def backward(ctx, grad):
        from .ops import sum_to_shape

        (diff,) = ctx.saved_tensors
        x_shape, t_shape, reduction = ctx.shapes
        g = 2 * diff * _grad_scale(grad, diff.shape, reduction, diff.size)
        gx = sum_to_shape(g, x_shape) if ctx.needs_input_grad[0] else None
        gt = sum_to_shape(-g, t_shape) if ctx.needs_input_grad[1] else None
        return gx, gt


def _softplus_neg(x: np.ndarray) -> np.ndarray:
    """``log(1 + exp(-x))`` without overflow."""
    return np.logaddexp(0, -x)


class BinaryCrossEntropyWithLogits(Function):
    """``-w [pw y log s(x) + (1 - y) log(1 - s(x))]`` computed stably from logits."""

    name = "BinaryCrossEntropyWithLogitsBackward0"

    @staticmethod
    def forward(ctx, x, target, weight, pos_weight, reduction):
        soft = _softplus_neg(x)
        log_weight = 1 if pos_weight is None else 1 + (pos_weight - 1) * target
        loss = (1 - target) * x + log_weight * soft
        if weight is not None:
            loss = loss * weight
        ctx.save_for_backward(x, target, weight, pos_weight)
        ctx.meta = (loss.shape, reduction)
        return _reduce(np.asarray(loss, dtype=x.dtype), reduction)

    @staticmethod
    def backward(ctx, grad):
        from .ops import sum_to_shape

        x, target, weight, pos_weight = ctx.saved_tensors
        shape, reduction = ctx.meta
        g = _grad_scale(grad, shape, reduction, int(np.prod(shape)))
        if weight is not None:
            g = g * weight
        log_weight = 1 if pos_weight is None else 1 + (pos_weight - 1) * target
        sig_neg = np.exp(-np.logaddexp(0, x))  # sigmoid(-x)
        gx = gt = None
        if ctx.needs_input_grad[0]:
            gx = sum_to_shape(g * ((1 - target) - log_weight * sig_neg), x.shape)
        if ctx.needs_input_grad[1]:
            d_target = -x if pos_weight is None else -x + (pos_weight - 1) * _softplus_neg(x)
            gt = sum_to_shape(g * d_target, target.shape)
        return gx, gt, None, None
