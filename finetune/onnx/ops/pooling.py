"""Pooling: MaxPool, AveragePool (1-, 2- and 3-D, explicit or automatic padding, ceil mode,
dilations), GlobalAveragePool and GlobalMaxPool."""

from __future__ import annotations

import itertools
import math

import numpy as np

from ... import functions as fn
from ...tensor import Tensor
from ..registry import register
from ._common import wrap
from ._padding import check_padded, spatial_pads, window


def _window(x, kernel_shape, strides, dilations, auto_pad, pads):
    kernel, strides, dilations = window(x.ndim - 2, kernel_shape, strides, dilations)
    padding = spatial_pads(auto_pad, pads, tuple(x.shape[2:]), kernel, strides, dilations)
    check_padded(tuple(x.shape), padding, "pooling")
    return kernel, strides, dilations, padding


@register("MaxPool", 1, 8, 10, 11, 12, 22)
def max_pool(
    x: Tensor,
    *,
    kernel_shape,
    auto_pad="NOTSET",
    ceil_mode=0,
    dilations=None,
    pads=None,
    storage_order=0,
    strides=None,
    _outputs=1,
) -> Tensor | tuple[Tensor, ...]:
    from ...autograd import conv as kernels

    kernel, strides, dilations, padding = _window(
        x, kernel_shape, strides, dilations, auto_pad, pads
    )
    y = kernels.max_pool(
        x,
        kernel_size=kernel,
        stride=strides,
        padding=padding,
        dilation=dilations,
        ceil_mode=bool(ceil_mode),
    )
    if _outputs == 1:
        return y
    indices = _argmax_indices(
        x._data, tuple(y.shape[2:]), kernel, strides, dilations, padding, storage_order
    )
    return y, wrap(indices)


def _grown_pads(sizes, outs, kernel, strides, dilations, padding):
    """Pads that also cover the last (ceil-mode) window, which may reach past the declared ones."""
    return [
        (lo, max(hi, (o - 1) * s + (k - 1) * d + 1 - size - lo))
        for size, o, k, s, d, (lo, hi) in zip(sizes, outs, kernel, strides, dilations, padding)
    ]


def _window_slices(outs, kernel, strides, dilations):
    """For each kernel offset, the strided slices that pick that tap of every window."""
    for offsets in itertools.product(*(range(k) for k in kernel)):
        yield (slice(None), slice(None)) + tuple(
            slice(i * d, i * d + s * (o - 1) + 1, s)
            for i, d, s, o in zip(offsets, dilations, strides, outs)
        )


def _argmax_indices(x, outs, kernel, strides, dilations, padding, storage_order):
    """MaxPool's ``Indices``: each maximum's flat position in ``x`` (row-major, or column-major
    over the spatial axes when ``storage_order`` is 1); the first maximum wins."""
    spatial = x.shape[2:]
    flat = np.arange(math.prod(spatial), dtype=np.int64)
    if storage_order:
        flat = flat.reshape(spatial[::-1]).transpose(tuple(reversed(range(len(spatial)))))
    base = np.arange(x.shape[0] * x.shape[1], dtype=np.int64) * math.prod(spatial)
    positions = base.reshape(x.shape[:2] + (1,) * len(spatial)) + flat.reshape(spatial)
    pads = [(0, 0), (0, 0), *_grown_pads(spatial, outs, kernel, strides, dilations, padding)]
    lowest = -np.inf if x.dtype.kind == "f" else np.iinfo(x.dtype).min
    values = np.pad(x, pads, constant_values=lowest)
    positions = np.pad(positions, pads, constant_values=-1)
    best = best_at = None
    for index in _window_slices(outs, kernel, strides, dilations):
        v, at = values[index], positions[index]
        if best is None:
            best, best_at = v.copy(), at.copy()
        else:
            better = v > best
            best[better], best_at[better] = v[better], at[better]
    return best_at


@register("AveragePool", 7, 10, 11, 19, 22)
def average_pool(
    x: Tensor,
    *,
    kernel_shape,
    auto_pad="NOTSET",
    ceil_mode=0,
    count_include_pad=0,
    dilations=None,
    pads=None,
    strides=None,
) -> Tensor:
    from ...autograd import conv as kernels

    kernel, strides, dilations, padding = _window(
        x, kernel_shape, strides, dilations, auto_pad, pads
    )
    if any(d != 1 for d in dilations):
        return _dilated_average(
            x, kernel, strides, dilations, padding, bool(ceil_mode), bool(count_include_pad)
        )
    return kernels.avg_pool(
        x,
        kernel_size=kernel,
        stride=strides,
        padding=padding,
        ceil_mode=bool(ceil_mode),
        count_include_pad=bool(count_include_pad),
    )


def _dilated_average(x, kernel, strides, dilations, padding, ceil_mode, count_include_pad):
    """Dilated windows, which the pooling kernel lacks: a depthwise convolution with ones sums
    each window, and the same convolution of a mask counts the pixels that take part."""
    from ...autograd import conv as kernels

    n, channels, sizes = len(kernel), x.shape[1], tuple(x.shape[2:])
    outs = []
    for size, k, s, d, (lo, hi) in zip(sizes, kernel, strides, dilations, padding):
        span = size + lo + hi - (k - 1) * d - 1
        o = (-(-span // s) if ceil_mode else span // s) + 1
        outs.append(o - 1 if ceil_mode and (o - 1) * s >= size + lo else o)
    grown = _grown_pads(sizes, outs, kernel, strides, dilations, padding)
    padded = fn.pad(x, [p for pair in reversed(grown) for p in pair])
    ones = np.ones((channels, 1, *kernel), dtype=x._data.dtype)
    valid = ((0, 0),) * n
    sums = kernels.conv(
        padded, wrap(ones), None, stride=strides, padding=valid, dilation=dilations, groups=channels
    )
    mask = np.ones(sizes, dtype=x._data.dtype)
    if count_include_pad:
        mask = np.pad(mask, padding, constant_values=1)
        extra = [(0, g[1] - p[1]) for g, p in zip(grown, padding)]
    else:
        extra = grown
    mask = np.pad(mask, extra)[None, None]
    counts = kernels.conv(
        wrap(mask),
        wrap(ones[:1]),
        None,
        stride=strides,
        padding=valid,
        dilation=dilations,
        groups=1,
    )
    return fn.div(sums, Tensor._from_array(counts._data))


@register("GlobalAveragePool", 1, 22)
def global_average_pool(x: Tensor) -> Tensor:
    return fn.mean(x, dim=tuple(range(2, x.ndim)), keepdim=True)


@register("GlobalMaxPool", 1, 22)
def global_max_pool(x: Tensor) -> Tensor:
    n, c = x.shape[:2]
    flat = fn.reshape(x, (n, c, -1))
    return fn.reshape(fn.amax(flat, dim=-1, keepdim=True), (n, c) + (1,) * (x.ndim - 2))
