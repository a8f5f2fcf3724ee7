"""Convolution and pooling kernels for 1, 2 or 3 spatial dimensions (NC[D]HW layout).

Convolution pads the input once, takes a strided window view of it without copying, and
contracts the windows with the weights in one float32 matmul per group. The input gradient
loops over the kernel offsets only, adding into slices of a padded buffer; the weight gradient
is one matmul. Pooling reduces over the kernel offsets of a padded input, one strided slice per
offset, so nothing the size of the windows is ever materialised.

Padding is a tuple of ``(before, after)`` pairs, one per spatial dimension, so ONNX's asymmetric
pads need no special case; callers normalise their arguments into these tuples.
"""

from __future__ import annotations

import itertools
import math

import numpy as np

from ..tensor import Tensor
from .function import Function

Pairs = tuple[tuple[int, int], ...]


def _out_size(size: int, pad: tuple[int, int], k: int, s: int, d: int, ceil: bool) -> int:
    """Output length along one axis (PyTorch's rule: a ceil-mode window must start in the input
    or its leading padding, never in the trailing padding)."""
    span = size + pad[0] + pad[1] - d * (k - 1) - 1
    out = (-(-span // s) if ceil else span // s) + 1
    if ceil and (out - 1) * s >= size + pad[0]:
        out -= 1
    return out


def _padded(x: np.ndarray, pads: Pairs, value: float = 0.0) -> np.ndarray:
    """``x`` with its spatial axes padded by ``pads``, in a freshly allocated buffer."""
    if not any(lo or hi for lo, hi in pads):
        return x
    shape = x.shape[:2] + tuple(s + lo + hi for s, (lo, hi) in zip(x.shape[2:], pads))
    out = np.full(shape, value, dtype=x.dtype) if value else np.zeros(shape, dtype=x.dtype)
    out[_interior(x.shape, pads)] = x
    return out


def _interior(shape: tuple, pads: Pairs) -> tuple:
    """The index of the unpadded input inside its padded buffer."""
    return (slice(None), slice(None)) + tuple(
        slice(lo, lo + s) for s, (lo, _) in zip(shape[2:], pads)
    )


def _reach(outs, kernel, stride, dilation) -> tuple:
    """How far the windows reach along each spatial axis of the padded input."""
    return tuple(
        (o - 1) * s + (k - 1) * d + 1 for o, k, s, d in zip(outs, kernel, stride, dilation)
    )


def _tap(offset, outs, stride, dilation) -> tuple:
    """The strided index picking kernel tap ``offset`` of every window: ``n c o... -> one tap``."""
    return (slice(None), slice(None)) + tuple(
        slice(i * d, i * d + (o - 1) * s + 1, s)
        for i, o, s, d in zip(offset, outs, stride, dilation)
    )


def _windows(xp: np.ndarray, kernel, outs, stride, dilation) -> np.ndarray:
    """A read-only view ``n c o... k...`` of every window of the padded input (no copy)."""
    n, c = xp.shape[:2]
    strides = xp.strides
    view_shape = (n, c, *outs, *kernel)
    view_strides = (
        strides[0],
        strides[1],
        *(st * s for st, s in zip(strides[2:], stride)),
        *(st * d for st, d in zip(strides[2:], dilation)),
    )
    return np.lib.stride_tricks.as_strided(xp, view_shape, view_strides, writeable=False)


# -- convolution -----------------------------------------------------------------------------


class Convolution(Function):
    """``n c i..., o c/g k... -> n o j...``: N-d convolution with bias, stride, asymmetric
    padding, dilation and groups."""

    name = "ConvolutionBackward0"

    @staticmethod
    def forward(ctx, x, weight, bias=None, *, stride, padding, dilation, groups):
        dtype = np.result_type(x, weight)
        x, weight = x.astype(dtype, copy=False), weight.astype(dtype, copy=False)
        kernel = weight.shape[2:]
        outs = tuple(
            _out_size(s, p, k, st, d, False)
            for s, p, k, st, d in zip(x.shape[2:], padding, kernel, stride, dilation)
        )
        xp = _padded(x, padding)
        cols = _columns(xp, kernel, outs, stride, dilation, groups)
        w = weight.reshape(groups, weight.shape[0] // groups, -1)
        # g (n j...) (c k...), g o (c k...) -> g (n j...) o
        out = np.matmul(cols, w.transpose(0, 2, 1))
        n = x.shape[0]
        out = out.reshape(groups, n, math.prod(outs), -1).transpose(1, 0, 3, 2)
        out = out.reshape(n, weight.shape[0], *outs)
        if bias is not None:
            out += bias.astype(dtype, copy=False).reshape(-1, *([1] * len(outs)))
        needs = ctx.needs_input_grad
        ctx.geometry = (x.shape, weight.shape, outs, stride, padding, dilation, groups)
        ctx.dtypes = (x.dtype, weight.dtype, None if bias is None else bias.dtype)
        ctx.save_for_backward(
            x if len(needs) > 1 and needs[1] else None,
            weight if needs[0] else None,
        )
        return np.ascontiguousarray(out)

    @staticmethod
    def backward(ctx, grad):
        x, weight = ctx.saved_tensors
        x_shape, w_shape, outs, stride, padding, dilation, groups = ctx.geometry
        needs = ctx.needs_input_grad
        n, o = grad.shape[:2]
        # n (g o) j... -> g o (n j...)
        g = grad.reshape(n, groups, o // groups, -1).transpose(1, 2, 0, 3)
        g = g.reshape(groups, o // groups, -1)
        grad_x = grad_w = grad_b = None
        if needs[0]:
            grad_x = _conv_input_grad(g, weight, x_shape, outs, stride, padding, dilation, groups)
        if len(needs) > 1 and needs[1]:
            cols = _columns(_padded(x, padding), w_shape[2:], outs, stride, dilation, groups)
            grad_w = np.matmul(g, cols).reshape(w_shape).astype(ctx.dtypes[1], copy=False)
        if len(needs) > 2 and needs[2]:
            grad_b = grad.sum(axis=(0, *range(2, grad.ndim))).astype(ctx.dtypes[2], copy=False)
        return (grad_x, grad_w, grad_b)[: len(needs)]


def _columns(xp, kernel, outs, stride, dilation, groups) -> np.ndarray:
    """im2col: ``n (g c) j... k... -> g (n j...) (c k...)``, one copy of the window view."""
    n, c = xp.shape[:2]
    win = _windows(xp, kernel, outs, stride, dilation)
    nd = len(outs)
    win = win.reshape(n, groups, c // groups, *outs, *kernel)
    # n g c j... k... -> g n j... c k...
    order = (1, 0, *range(3, 3 + nd), 2, *range(3 + nd, 3 + 2 * nd))
    return win.transpose(order).reshape(groups, n * math.prod(outs), -1)


def _conv_input_grad(g, weight, x_shape, outs, stride, padding, dilation, groups) -> np.ndarray:
    """col2im: ``g o (n j...)`` times the weights, scattered back over the kernel offsets only."""
    kernel = weight.shape[2:]
    n, c = x_shape[:2]
    w = weight.reshape(groups, weight.shape[0] // groups, -1)
    gcols = np.matmul(w.transpose(0, 2, 1), g)  # g (c k...) (n j...)
    gcols = gcols.reshape(groups, c // groups, *kernel, n, *outs)
    padded_shape = (n, c) + tuple(s + lo + hi for s, (lo, hi) in zip(x_shape[2:], padding))
    gxp = np.zeros(padded_shape, dtype=g.dtype)
    for offset in itertools.product(*(range(k) for k in kernel)):
        tap = gcols[(slice(None), slice(None), *offset)]  # g c n j...
        tap = tap.reshape(c, n, *outs).swapaxes(0, 1)
        gxp[_tap(offset, outs, stride, dilation)] += tap
    return gxp[_interior(x_shape, padding)]


def conv(
    x: Tensor,
    weight: Tensor,
    bias: Tensor | None = None,
    stride: tuple[int, ...] = (1, 1),
    padding: Pairs = ((0, 0), (0, 0)),
    dilation: tuple[int, ...] = (1, 1),
    groups: int = 1,
) -> Tensor:
    """Convolve ``x`` (N, C, *spatial) with ``weight`` (O, C/groups, *kernel); the per-axis
    arguments must have one entry per spatial dimension."""
    args = (x, weight) if bias is None else (x, weight, bias)
    return Convolution.apply(
        *args,
        stride=tuple(stride),
        padding=tuple(tuple(p) for p in padding),
        dilation=tuple(dilation),
        groups=groups,
    )


# -- pooling ---------------------------------------------------------------------------------


def _pool_geometry(shape, kernel, stride, padding, dilation, ceil_mode):
    """Output sizes, and pads grown so the last ceil-mode window fits inside the buffer."""
    outs = tuple(
        _out_size(s, p, k, st, d, ceil_mode)
        for s, p, k, st, d in zip(shape[2:], padding, kernel, stride, dilation)
    )
    reach = _reach(outs, kernel, stride, dilation)
    grown = tuple((lo, max(hi, r - s - lo)) for s, (lo, hi), r in zip(shape[2:], padding, reach))
    return outs, grown


class MaxPool(Function):
    """``n c i... -> n c j...``: the maximum of each window; padding is -inf and never wins."""

    name = "MaxPool2DWithIndicesBackward0"

    @staticmethod
    def forward(ctx, x, *, kernel_size, stride, padding, dilation, ceil_mode):
        outs, grown = _pool_geometry(x.shape, kernel_size, stride, padding, dilation, ceil_mode)
        lowest = -np.inf if x.dtype.kind == "f" else np.iinfo(x.dtype).min
        xp = _padded(x, grown, lowest)
        taps = list(itertools.product(*(range(k) for k in kernel_size)))
        out = xp[_tap(taps[0], outs, stride, dilation)].copy()
        for offset in taps[1:]:
            np.maximum(out, xp[_tap(offset, outs, stride, dilation)], out=out)
        if ctx.needs_input_grad[0]:
            # which tap holds each window's maximum (the first one, as PyTorch picks)
            argmax = np.full(out.shape, len(taps) - 1, dtype=np.min_scalar_type(len(taps)))
            for t in range(len(taps) - 2, -1, -1):
                argmax[xp[_tap(taps[t], outs, stride, dilation)] == out] = t
            ctx.save_for_backward(argmax)
            ctx.geometry = (x.shape, taps, outs, stride, grown, dilation)
        return out

    @staticmethod
    def backward(ctx, grad):
        (argmax,) = ctx.saved_tensors
        shape, taps, outs, stride, grown, dilation = ctx.geometry
        gxp = np.zeros(
            shape[:2] + tuple(s + lo + hi for s, (lo, hi) in zip(shape[2:], grown)),
            dtype=grad.dtype,
        )
        for t, offset in enumerate(taps):
            gxp[_tap(offset, outs, stride, dilation)] += np.where(argmax == t, grad, 0)
        return gxp[_interior(shape, grown)]


class MaxPool1D(MaxPool):
    name = "MaxPool1DWithIndicesBackward0"


class MaxPool3D(MaxPool):
    name = "MaxPool3DWithIndicesBackward0"


def max_pool(
    x: Tensor,
    kernel_size: tuple[int, ...],
    stride: tuple[int, ...],
    padding: Pairs,
    dilation: tuple[int, ...] | None = None,
    ceil_mode: bool = False,
) -> Tensor:
    """Max-pool ``x`` (N, C, *spatial) over windows of ``kernel_size``."""
    nd = len(kernel_size)
    function = {1: MaxPool1D, 2: MaxPool, 3: MaxPool3D}[nd]
    return function.apply(
        x,
        kernel_size=tuple(kernel_size),
        stride=tuple(stride),
        padding=tuple(tuple(p) for p in padding),
        dilation=tuple(dilation) if dilation is not None else (1,) * nd,
        ceil_mode=bool(ceil_mode),
    )


def _avg_divisor(shape, outs, kernel, stride, padding, count_include_pad, dtype) -> np.ndarray:
    """PyTorch's divisor for each window, ``j...``: the window clipped to input plus padding,
    or to the input alone without ``count_include_pad``. It factorises over the axes."""
    divisor = np.ones((), dtype=dtype)
    for size, o, k, s, (lo, hi) in zip(shape[2:], outs, kernel, stride, padding):
        start = np.arange(o) * s - lo
        end = np.minimum(start + k, size + hi)
        if count_include_pad:
            count = end - start
        else:
            count = np.minimum(end, size) - np.maximum(start, 0)
        divisor = np.multiply.outer(divisor, count.astype(dtype))
    return divisor


class AvgPool(Function):
    """``n c i... -> n c j...``: the mean of each window, with PyTorch's divisor."""

    name = "AvgPool2DBackward0"

    @staticmethod
    def forward(ctx, x, *, kernel_size, stride, padding, ceil_mode, count_include_pad):
        ones = (1,) * len(kernel_size)
        outs, grown = _pool_geometry(x.shape, kernel_size, stride, padding, ones, ceil_mode)
        xp = _padded(x, grown)
        taps = list(itertools.product(*(range(k) for k in kernel_size)))
        out = xp[_tap(taps[0], outs, stride, ones)].copy()
        for offset in taps[1:]:
            out += xp[_tap(offset, outs, stride, ones)]
        divisor = _avg_divisor(
            x.shape, outs, kernel_size, stride, padding, count_include_pad, x.dtype
        )
        out /= divisor
        ctx.geometry = (x.shape, taps, outs, stride, grown, divisor)
        return out

    @staticmethod
    def backward(ctx, grad):
        shape, taps, outs, stride, grown, divisor = ctx.geometry
        ones = (1,) * len(outs)
        g = grad / divisor
        gxp = np.zeros(
            shape[:2] + tuple(s + lo + hi for s, (lo, hi) in zip(shape[2:], grown)),
            dtype=grad.dtype,
        )
        for offset in taps:
            gxp[_tap(offset, outs, stride, ones)] += g
        return gxp[_interior(shape, grown)]


class AvgPool1D(AvgPool):
    name = "AvgPool1DBackward0"


class AvgPool3D(AvgPool):
    name = "AvgPool3DBackward0"


def avg_pool(
    x: Tensor,
    kernel_size: tuple[int, ...],
    stride: tuple[int, ...],
    padding: Pairs,
    ceil_mode: bool = False,
    count_include_pad: bool = True,
) -> Tensor:
    """Average-pool ``x`` (N, C, *spatial) over windows of ``kernel_size``."""
    function = {1: AvgPool1D, 2: AvgPool, 3: AvgPool3D}[len(kernel_size)]
    return function.apply(
        x,
        kernel_size=tuple(kernel_size),
        stride=tuple(stride),
        padding=tuple(tuple(p) for p in padding),
        ceil_mode=bool(ceil_mode),
        count_include_pad=bool(count_include_pad),
    )
