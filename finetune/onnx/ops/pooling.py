"""Pooling: MaxPool, AveragePool (1-, 2- and 3-D, explicit or automatic padding, ceil mode,
dilations), GlobalAveragePool and GlobalMaxPool."""

from __future__ import annotations

from ... import functions as fn
from ...errors import OnnxImportError
from ..registry import register
from ._padding import spatial_pads


def _window(x, kernel_shape, strides, dilations, auto_pad, pads):
    n = len(kernel_shape)
    kernel = tuple(kernel_shape)
    strides = tuple(strides) if strides else (1,) * n
    dilations = tuple(dilations) if dilations else (1,) * n
    padding = spatial_pads(auto_pad, pads, tuple(x.shape[2:]), kernel, strides, dilations)
    return kernel, strides, dilations, padding


@register("MaxPool", 1, 8, 10, 11, 12, 22)
def max_pool(
    x,
    *,
    kernel_shape,
    auto_pad="NOTSET",
    ceil_mode=0,
    dilations=None,
    pads=None,
    storage_order=0,
    strides=None,
    _outputs=1,
):
    from ...autograd import conv as kernels

    if _outputs > 1:
        raise OnnxImportError("MaxPool's Indices output is not supported")
    kernel, strides, dilations, padding = _window(
        x, kernel_shape, strides, dilations, auto_pad, pads
    )
    return kernels.max_pool(
        x,
        kernel_size=kernel,
        stride=strides,
        padding=padding,
        dilation=dilations,
        ceil_mode=bool(ceil_mode),
    )


@register("AveragePool", 7, 10, 11, 19, 22)
def average_pool(
    x,
    *,
    kernel_shape,
    auto_pad="NOTSET",
    ceil_mode=0,
    count_include_pad=0,
    dilations=None,
    pads=None,
    strides=None,
):
    from ...autograd import conv as kernels

    kernel, strides, dilations, padding = _window(
        x, kernel_shape, strides, dilations, auto_pad, pads
    )
    if any(d != 1 for d in dilations):
        raise OnnxImportError(f"AveragePool with dilations {list(dilations)} is not supported")
    return kernels.avg_pool(
        x,
        kernel_size=kernel,
        stride=strides,
        padding=padding,
        ceil_mode=bool(ceil_mode),
        count_include_pad=bool(count_include_pad),
    )


@register("GlobalAveragePool", 1, 22)
def global_average_pool(x):
    return fn.mean(x, dim=tuple(range(2, x.ndim)), keepdim=True)


@register("GlobalMaxPool", 1, 22)
def global_max_pool(x):
    n, c = x.shape[:2]
    flat = fn.reshape(x, (n, c, -1))
    return fn.reshape(fn.amax(flat, dim=-1, keepdim=True), (n, c) + (1,) * (x.ndim - 2))
