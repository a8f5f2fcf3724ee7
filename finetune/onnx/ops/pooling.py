"""Pooling: MaxPool (with its Indices), AveragePool and LpPool (1-, 2- and 3-D, explicit or
automatic padding, ceil mode, dilations), their global forms, MaxUnpool, and the region pools
MaxRoiPool and RoiAlign."""

from __future__ import annotations

import itertools
import math

import numpy as np

from ... import functions as fn
from ...errors import OnnxImportError, ShapeError
from ...tensor import Tensor
from ..limits import check_shape
from ..registry import register
from ._common import ints, keep_dtype, wrap
from ._padding import check_padded, spatial_pads, window


def _window(op, x, kernel_shape, strides, dilations, auto_pad, pads):
    if x.ndim < 3:
        raise ShapeError(f"{op}: input must be (N, C, D1, ...), got shape {list(x.shape)}")
    kernel, strides, dilations = window(op, x.ndim - 2, kernel_shape, strides, dilations)
    padding = spatial_pads(op, auto_pad, pads, tuple(x.shape[2:]), kernel, strides, dilations)
    check_padded(tuple(x.shape), padding, op)
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
    from ...autograd import pooling as kernels

    kernel, strides, dilations, padding = _window(
        "MaxPool", x, kernel_shape, strides, dilations, auto_pad, pads
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
    from ...autograd import pooling as kernels

    kernel, strides, dilations, padding = _window(
        "AveragePool", x, kernel_shape, strides, dilations, auto_pad, pads
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

    sums, grown = _window_sums(x, kernel, strides, dilations, padding, ceil_mode)
    sizes, n = tuple(x.shape[2:]), len(kernel)
    mask = np.ones(sizes, dtype=x._data.dtype)
    if count_include_pad:
        mask = np.pad(mask, padding, constant_values=1)
        extra = [(0, g[1] - p[1]) for g, p in zip(grown, padding)]
    else:
        extra = grown
    mask = np.pad(mask, extra)[None, None]
    counts = kernels.conv(
        wrap(mask),
        wrap(np.ones((1, 1, *kernel), dtype=x._data.dtype)),
        None,
        stride=strides,
        padding=((0, 0),) * n,
        dilation=dilations,
        groups=1,
    )
    return fn.div(sums, Tensor._from_array(counts._data))


def _window_sums(x, kernel, strides, dilations, padding, ceil_mode):
    """The sum of every (dilated, zero-padded) window, a depthwise convolution with ones, and
    the pads grown to cover the last ceil-mode window."""
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
    return sums, grown


@register("GlobalAveragePool", 1, 22)
def global_average_pool(x: Tensor) -> Tensor:
    return fn.mean(x, dim=tuple(range(2, x.ndim)), keepdim=True)


@register("GlobalMaxPool", 1, 22)
def global_max_pool(x: Tensor) -> Tensor:
    n, c = x.shape[:2]
    flat = fn.reshape(x, (n, c, -1))
    return fn.reshape(fn.amax(flat, dim=-1, keepdim=True), (n, c) + (1,) * (x.ndim - 2))


@register("AveragePool", 1)
def average_pool_1(x: Tensor, *, kernel_shape, auto_pad="NOTSET", pads=None, strides=None):
    """Opset 1 has no ``count_include_pad``: padding is left out of the divisor."""
    return average_pool(x, kernel_shape=kernel_shape, auto_pad=auto_pad, pads=pads, strides=strides)


def _p_norms(x: Tensor, p, sums) -> Tensor:
    """``sums(|x| ** p) ** (1 / p)``; ``x * x`` for p = 2, smooth where x is 0."""
    p = float(p)
    if p <= 0:
        raise OnnxImportError(f"LpPool: p must be positive, got {p}")
    powered = fn.mul(x, x) if p == 2 else fn.pow(fn.abs(x), p)
    total = sums(powered)
    return fn.sqrt(total) if p == 2 else fn.pow(total, 1.0 / p)


@register("LpPool", 1, 2, 11, 18, 22)
def lp_pool(
    x: Tensor,
    *,
    kernel_shape,
    auto_pad="NOTSET",
    ceil_mode=0,
    dilations=None,
    p=2,
    pads=None,
    strides=None,
) -> Tensor:
    """The p-norm of every window (zero padding adds nothing); opset 1's ``p`` is a float."""
    kernel, strides, dilations, padding = _window(
        "LpPool", x, kernel_shape, strides, dilations, auto_pad, pads
    )

    def sums(powered):
        return _window_sums(powered, kernel, strides, dilations, padding, bool(ceil_mode))[0]

    return keep_dtype(_p_norms(x, p, sums), x._data.dtype)


@register("GlobalLpPool", 1, 2, 22)
def global_lp_pool(x: Tensor, *, p=2) -> Tensor:
    def sums(powered):
        return fn.sum(powered, dim=tuple(range(2, x.ndim)), keepdim=True)

    return keep_dtype(_p_norms(x, p, sums), x._data.dtype)


@register("MaxUnpool", 9, 11, 22)
def max_unpool(
    x: Tensor,
    indices: Tensor,
    output_shape: Tensor | None = None,
    *,
    kernel_shape,
    pads=None,
    strides=None,
) -> Tensor:
    """Zeros with ``x`` written at ``indices``, flat positions in the largest input the pool
    could have read (MaxPool's Indices); a larger ``output_shape`` gets that block at its start
    and zeros after, as the ONNX reference does."""
    from ...autograd.indexing import ScatterFlat

    n = x.ndim - 2
    kernel, strides, _ = window("MaxUnpool", n, kernel_shape, strides, None)
    padding = spatial_pads(
        "MaxUnpool", "NOTSET", pads, tuple(x.shape[2:]), kernel, strides, (1,) * n
    )
    inferred = (
        *x.shape[:2],
        *(
            (i - 1) * s + k - lo - hi
            for i, s, k, (lo, hi) in zip(x.shape[2:], strides, kernel, padding)
        ),
    )
    shape = ints(output_shape) or inferred
    if len(shape) != x.ndim or any(o < i for o, i in zip(shape, inferred)):
        raise ShapeError(
            f"MaxUnpool: output_shape {list(shape)} is smaller than {list(inferred)}, the "
            f"unpooled size of input {list(x.shape)}"
        )
    check_shape(list(shape), "MaxUnpool")
    flat = np.asarray(indices._data, dtype=np.int64)
    if flat.shape != tuple(x.shape):
        raise ShapeError(
            f"MaxUnpool: indices of shape {list(flat.shape)} for input {list(x.shape)}"
        )
    if flat.size and (flat.min() < 0 or flat.max() >= math.prod(inferred)):
        raise ShapeError(f"MaxUnpool: an index is outside the unpooled shape {list(inferred)}")
    zeros = Tensor._from_array(np.zeros(inferred, dtype=x._data.dtype))
    y = ScatterFlat.apply(zeros, x, flat)
    if tuple(shape) == tuple(inferred):
        return y
    return fn.pad(y, [p for o, i in zip(reversed(shape), reversed(inferred)) for p in (0, o - i)])


def _round_half_away(v: float) -> int:
    """C's ``round``: halves away from zero."""
    return int(math.floor(abs(v) + 0.5)) * (1 if v >= 0 else -1)


@register("MaxRoiPool", 1, 22)
def max_roi_pool(x: Tensor, rois: Tensor, *, pooled_shape, spatial_scale=1.0) -> Tensor:
    """The maximum of each of ``pooled_shape`` bins of every region ``rois`` (R, 5):
    ``(batch, x1, y1, x2, y2)`` scaled by ``spatial_scale`` and rounded, as Caffe's and
    onnxruntime's RoI pooling; an empty bin is 0. Gradients reach ``x`` at each bin's maximum."""
    from ...autograd.indexing import TakeFlat

    if x.ndim != 4 or rois.ndim != 2 or rois.shape[1] != 5 or len(pooled_shape) != 2:
        raise ShapeError(
            f"MaxRoiPool: input {list(x.shape)} and rois {list(rois.shape)} (expected 4-D "
            "input, rois (R, 5) and a 2-D pooled_shape)"
        )
    data, boxes = x._data, np.asarray(rois._data, dtype=np.float64)
    n, c, height, width = data.shape
    ph, pw = (int(v) for v in pooled_shape)
    check_shape([len(boxes), c, ph, pw], "MaxRoiPool")
    flat = np.zeros((len(boxes), c, ph, pw), dtype=np.int64)
    filled = np.zeros((len(boxes), 1, ph, pw), dtype=bool)
    for r, (b, *corners) in enumerate(boxes):
        if not 0 <= int(b) < n:
            raise ShapeError(f"MaxRoiPool: roi {r} names batch {int(b)} of {n}")
        # scaled in the input's type, as onnxruntime: 5 * 0.9 is 4.4999998 in float32
        scale = data.dtype.type(spatial_scale)
        x1, y1, x2, y2 = (_round_half_away(data.dtype.type(v) * scale) for v in corners)
        bin_h, bin_w = max(y2 - y1 + 1, 1) / ph, max(x2 - x1 + 1, 1) / pw
        for i, j in itertools.product(range(ph), range(pw)):
            h0 = min(max(math.floor(i * bin_h) + y1, 0), height)
            h1 = min(max(math.ceil((i + 1) * bin_h) + y1, 0), height)
            w0 = min(max(math.floor(j * bin_w) + x1, 0), width)
            w1 = min(max(math.ceil((j + 1) * bin_w) + x1, 0), width)
            if h1 <= h0 or w1 <= w0:
                continue
            region = data[int(b), :, h0:h1, w0:w1].reshape(c, -1)
            best = region.argmax(axis=1)
            rows, cols = np.divmod(best, w1 - w0)
            flat[r, :, i, j] = (
                ((int(b) * c + np.arange(c)) * height + h0 + rows) * width + w0 + cols
            )
            filled[r, 0, i, j] = True
    y = TakeFlat.apply(x, flat)
    if filled.all():
        return y
    return fn.mul(y, Tensor._from_array(filled.astype(data.dtype)))


def roi_align(
    x,
    rois,
    batch_indices,
    mode,
    output_height,
    output_width,
    sampling_ratio,
    spatial_scale,
    half_pixel,
) -> Tensor:
    """onnxruntime's RoiAlign: each bin of each region samples a grid of points bilinearly
    (points within a pixel of the image clamp to its edge, farther ones read 0) and averages
    them, or takes the largest weighted corner of any point (``max``, onnxruntime's rule).
    Differentiable in ``x`` and in the ``rois`` corners."""
    from ...autograd import sampling

    if mode not in ("avg", "max"):
        raise OnnxImportError(f"RoiAlign: unknown mode {mode!r}")
    batch = np.asarray(batch_indices._data, dtype=np.int64).reshape(-1)
    if x.ndim != 4 or rois.ndim != 2 or rois.shape[1] != 4 or len(batch) != rois.shape[0]:
        raise ShapeError(
            f"RoiAlign: input {list(x.shape)}, rois {list(rois.shape)} and batch_indices "
            f"{list(batch_indices.shape)} (expected 4-D input, rois (R, 4), R batch indices)"
        )
    if len(batch) and (batch.min() < 0 or batch.max() >= x.shape[0]):
        raise ShapeError(f"RoiAlign: a batch index is outside the input's {x.shape[0]} images")
    ph, pw = int(output_height), int(output_width)
    check_shape([rois.shape[0], x.shape[1], ph, pw], "RoiAlign")
    dtype = x._data.dtype
    boxes = np.asarray(rois._data, dtype=dtype)  # onnxruntime sizes the sampling grid in T
    offset = 0.5 if half_pixel else 0.0
    # (R, 4) x1 y1 x2 y2 -> starts (R, 2) and sizes (R, 2), both y, x
    corners = fn.sub(fn.mul(fn.cast(rois, dtype), float(spatial_scale)), offset)
    starts = fn.flip(fn.getitem(corners, (slice(None), slice(0, 2))), [-1])
    sizes = fn.sub(fn.flip(fn.getitem(corners, (slice(None), slice(2, 4))), [-1]), starts)
    if not half_pixel:
        sizes = fn.maximum(sizes, Tensor._from_array(np.ones((), dtype=dtype)))
    extent = (boxes[:, 2:] - boxes[:, :2])[:, ::-1] * dtype.type(spatial_scale)
    if not half_pixel:
        extent = np.maximum(extent, 1.0)
    if sampling_ratio > 0:
        grids = np.full((len(boxes), 2), int(sampling_ratio))
    else:
        grids = np.maximum(np.ceil(extent / np.array([ph, pw], dtype=dtype)), 1).astype(int)
    c, keep = x.shape[1], mode == "max"
    outputs, order = [], []
    for gh, gw in sorted({tuple(g) for g in grids.tolist()}):  # one read per grid size
        rows = np.flatnonzero((grids == (gh, gw)).all(axis=1))
        # fractions of the box: bin i, sample a -> (i + (a + 0.5) / g) / p; y: ph gh, x: pw gw
        fy = (np.arange(ph)[:, None] + (np.arange(gh) + 0.5)[None, :] / gh).reshape(-1) / ph
        fx = (np.arange(pw)[:, None] + (np.arange(gw) + 0.5)[None, :] / gw).reshape(-1) / pw
        grid = np.stack(np.meshgrid(fy, fx, indexing="ij"), axis=-1).reshape(1, -1, 2)
        picked = wrap(rows)
        points = fn.add(
            fn.unsqueeze(fn.index_select(starts, 0, picked), 1),
            fn.mul(fn.unsqueeze(fn.index_select(sizes, 0, picked), 1), wrap(grid.astype(dtype))),
        )
        values = sampling.sample(x, points, batch[rows], "linear", "roi", None, keep)
        r = len(rows)
        if keep:  # r c (ph gh pw gw) 4 -> r c ph pw (gh gw 4)
            values = fn.reshape(values, (r, c, ph, gh, pw, gw, 4))
            values = fn.reshape(fn.permute(values, (0, 1, 2, 4, 3, 5, 6)), (r, c, ph, pw, -1))
            outputs.append(fn.amax(values, dim=-1))
        else:
            outputs.append(fn.mean(fn.reshape(values, (r, c, ph, gh, pw, gw)), dim=(3, 5)))
        order.append(rows)
    if not outputs:
        return Tensor._from_array(np.zeros((0, c, ph, pw), dtype=dtype))
    y = outputs[0] if len(outputs) == 1 else fn.cat(outputs, dim=0)
    order = np.concatenate(order)
    if (order == np.arange(len(order))).all():
        return y
    return fn.index_select(y, 0, wrap(np.argsort(order)))


@register("RoiAlign", 10)
def roi_align_10(
    x: Tensor,
    rois: Tensor,
    batch_indices: Tensor,
    *,
    mode="avg",
    output_height=1,
    output_width=1,
    sampling_ratio=0,
    spatial_scale=1.0,
) -> Tensor:
    """Opset 10 samples without the half-pixel offset (``output_half_pixel``)."""
    return roi_align(
        x,
        rois,
        batch_indices,
        mode,
        output_height,
        output_width,
        sampling_ratio,
        spatial_scale,
        False,
    )


@register("RoiAlign", 16, 22)
def roi_align_16(
    x: Tensor,
    rois: Tensor,
    batch_indices: Tensor,
    *,
    coordinate_transformation_mode="half_pixel",
    mode="avg",
    output_height=1,
    output_width=1,
    sampling_ratio=0,
    spatial_scale=1.0,
) -> Tensor:
    if coordinate_transformation_mode not in ("half_pixel", "output_half_pixel"):
        raise OnnxImportError(
            f"RoiAlign: unknown coordinate_transformation_mode {coordinate_transformation_mode!r}"
        )
    return roi_align(
        x,
        rois,
        batch_indices,
        mode,
        output_height,
        output_width,
        sampling_ratio,
        spatial_scale,
        coordinate_transformation_mode == "half_pixel",
    )
