"""Convolution kernels for 1, 2 or 3 spatial dimensions (NC[D]HW shapes); pooling is in
``pooling.py``.

Convolution copies the windows of the padded input once into a column matrix (im2col) and
contracts it with the weights in one float32 matmul per group; the weight gradient is one more
matmul, and the input gradient adds the column gradients back over the kernel offsets only.
Stride-1 3x3 convolutions with enough channels take Winograd's algorithm instead, forward and
backward (``winograd.py``; ``ConvPlan`` decides), and 2-d depthwise convolutions (one group per
input channel) no im2col at all: one contraction of each block of rows' strided windows with
the per-channel weights (``depthwise.py``). Grouped 3x3 convolutions with several channels per
group run their forward as compiled stencils over each channel's plane (``grouped.py``).
Ungrouped, depthwise and those grouped 2-d convolutions answer channels last (``layout.py``): an
ungrouped product is laid out pixels by channels, so it is the output with no copy, and a
channels-last input is gathered a whole channel vector at a time.

Padding is a tuple of ``(before, after)`` pairs, one per spatial dimension, so ONNX's asymmetric
pads need no special case; callers normalise their arguments into these tuples.

For inference, an elementwise activation can ride in the convolution's last pass over its
output (``epilogue``): applied to each chunk right after its bias, while the chunk is in cache,
where the same activation as a layer of its own allocates a new output and reads and writes the
whole of it once more.
"""

from __future__ import annotations

import itertools
import math
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import numpy as np

from ..errors import ShapeError
from ..parallel import elementwise, split, split_products
from ..tensor import Tensor
from . import depthwise, grouped, jit, piecewise, pool, winograd
from .engine import is_grad_enabled
from .function import Function
from .layout import as_nchw, channel_sums_last, is_channels_last, pad_last, pixels_by_channel
from .scratch import scratch

Pairs = tuple[tuple[int, int], ...]

_pending = threading.local()


@contextmanager
def epilogue(
    fn: Callable[[np.ndarray], None] | None, residual: np.ndarray | None = None
) -> Iterator[None]:
    """The next convolution this thread runs adds ``residual`` (an array of its output's shape
    and dtype: a skip connection's values) to its output after the bias, then applies
    ``fn(chunk)``, an elementwise function changing ``chunk`` in place, chunk by chunk. For
    inference: the convolution must record no gradient (``Convolution`` refuses otherwise), and
    the caller must run nothing else that convolves inside the block."""
    _pending.fn = fn, residual
    try:
        yield
    finally:
        _pending.fn = None


def _take_epilogue() -> tuple[Callable | None, np.ndarray | None]:
    taken = getattr(_pending, "fn", None)
    _pending.fn = None
    return taken or (None, None)


def _out_size(size: int, pad: tuple[int, int], k: int, s: int, d: int, ceil: bool) -> int:
    """Output length along one axis (PyTorch's rule: a ceil-mode window must start in the input
    or its leading padding, never in the trailing padding)."""
    span = size + pad[0] + pad[1] - d * (k - 1) - 1
    out = (-(-span // s) if ceil else span // s) + 1
    if ceil and (out - 1) * s >= size + pad[0]:
        out -= 1
    return out


def _pad_into(out: np.ndarray, x: np.ndarray, pads: Pairs, value: float = 0.0) -> None:
    """Write ``x`` padded with ``value`` into ``out``, touching the border only once."""
    out[_interior(x.shape, pads)] = x
    for axis, (size, (lo, hi)) in enumerate(zip(x.shape[2:], pads)):
        prefix = (slice(None),) * (axis + 2)
        if lo:
            out[(*prefix, slice(0, lo))] = value
        if hi:
            out[(*prefix, slice(lo + size, None))] = value


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


# the shifted layout multiplies a few wasted columns per row; past this ratio the copy of the
# windows is cheaper
_MAX_SHIFTED_WASTE = 1.2
# outputs of at least this many pixels per sample (conv1's 112x112) go one sample at a time:
# a sample's columns stay in cache, and its product is already that sample's NC[D]HW output
_PER_SAMPLE_PIXELS = 4096


def _winograd_tiles(x_shape, w_shape, stride, padding, dilation, groups) -> tuple:
    """Winograd tile sides for the forward (and the weight gradient) and for the input
    gradient (None: im2col); the input gradient's own padding, ``2 - pad``, must not be
    negative."""
    if tuple(w_shape[2:]) != (3, 3) or stride != (1, 1) or dilation != (1, 1) or groups != 1:
        return None, None
    c, o, spatial = x_shape[1], w_shape[0], tuple(x_shape[2:])
    outs = tuple(_out_size(s, p, 3, 1, 1, False) for s, p in zip(spatial, padding))
    grad = None
    if all(lo <= 2 and hi <= 2 for lo, hi in padding):
        grad = winograd.tile_size(o, c, spatial)
    return winograd.tile_size(c, o, outs), grad


class ConvPlan:
    """The shapes of one convolution and the im2col layout chosen for them.

    Columns are laid out ``g (c k...) (n l)``: the batch joins the pixels, so each group is one
    large matmul with the ``g o (c k...)`` weights (per-sample matmuls starve BLAS on the small
    late layers: 7x7 pixels), and its ``o (n l)`` product is transposed to NC[D]HW in the same
    copy that adds the bias. Three layouts for ``l``:
    - pointwise (1x1, no padding): the (strided) input pixels;
    - shifted (stride 1): the padded input flattened per channel, where each kernel tap is one
      contiguous range starting at ``offsets[t]``; ``l`` runs over whole padded rows, and the few
      columns past each row's end are cropped from the output;
    - windows (anything else): a copy of the strided window view, ``l`` the output pixels.

    Windows with large outputs (``per_sample``) skip the batch-wide columns: each sample's
    ``g (c k...) l`` columns are built and multiplied in turn, the product written straight
    into the output (conv1 of a ResNet at batch 8: 15.5 against 20.5 ms, 7 MB of columns, not 59).

    ``channels_last`` plans (2-d, ungrouped, not shifted) multiply the other way round,
    ``(n l) (c k...) @ (c k...) o``: the product is the channels-last output itself. A
    channels-last input is gathered as ``(n l) (k k c)`` instead (``columns_last``), against
    the weights with their taps first, and its gradient is added back in the same layout.
    """

    def __init__(self, x_shape, w_shape, stride, padding, dilation, groups) -> None:
        self.x_shape, self.w_shape = tuple(x_shape), tuple(w_shape)
        self.stride, self.padding, self.dilation, self.groups = stride, padding, dilation, groups
        self.kernel = self.w_shape[2:]
        spatial = self.x_shape[2:]
        self.outs = tuple(
            _out_size(s, p, k, st, d, False)
            for s, p, k, st, d in zip(spatial, padding, self.kernel, stride, dilation)
        )
        self.padded = tuple(s + lo + hi for s, (lo, hi) in zip(spatial, padding))
        self.pointwise = all(k == 1 for k in self.kernel) and not any(map(any, padding))
        # 2-d depthwise convolutions run on their own kernels, forward and backward, and need
        # none of the im2col layouts below (worked out per call: ~25 us of a small layer's 60)
        self.depthwise = depthwise.plan(
            self.x_shape, self.w_shape, stride, padding, dilation, groups, self.outs
        )
        if self.depthwise:
            self.winograd = self.winograd_grad = self.grouped = None
            self.shifted = self.per_sample = self.channels_last = False
            return
        # grouped 3x3 convolutions with several channels per group: a compiled forward
        self.grouped = grouped.plan(
            self.x_shape, self.w_shape, stride, padding, dilation, groups, self.outs
        )
        self.winograd, self.winograd_grad = _winograd_tiles(
            self.x_shape, self.w_shape, stride, padding, dilation, groups
        )
        self.taps = list(itertools.product(*(range(k) for k in self.kernel)))
        extended = self.outs[0] * math.prod(self.padded[1:])
        self.shifted = (
            not self.pointwise
            and all(s == 1 for s in stride)
            and extended <= _MAX_SHIFTED_WASTE * math.prod(self.outs)
        )
        if self.shifted:
            pitch = [math.prod(self.padded[i + 1 :]) for i in range(len(spatial))]
            self.offsets = [
                sum(t * d * p for t, d, p in zip(tap, dilation, pitch)) for tap in self.taps
            ]
            self.length = extended
            self.flat = max(math.prod(self.padded), self.offsets[-1] + extended)
        else:
            self.length = math.prod(self.outs)
        self.per_sample = not (self.pointwise or self.shifted) and self.length >= _PER_SAMPLE_PIXELS
        # 2-d products come out as (n l) o, channels last (see ``forward``)
        self.channels_last = len(self.outs) == 2 and groups == 1 and not self.shifted

    def columns(self, x: np.ndarray) -> np.ndarray:
        """im2col into a reused scratch buffer: ``n (g c) i... -> g (c k...) (n l)``."""
        n, c = self.x_shape[:2]
        shape = (self.groups, c // self.groups * len(self.taps), n * self.length)
        work = math.prod(shape)
        if self.pointwise:
            picked = x[(slice(None), slice(None), *(slice(None, None, s) for s in self.stride))]
            if n == 1 and picked.flags.c_contiguous:
                return picked.reshape(shape)
            cols = scratch("columns", (c, n, *self.outs), x.dtype)
            source = picked.swapaxes(0, 1)
            split(lambda lo, hi: np.copyto(cols[lo:hi], source[lo:hi]), c, work)
            return cols.reshape(shape)
        cols = scratch("columns", (c, len(self.taps), n, self.length), x.dtype)
        if self.shifted:
            flat = scratch("padded", (n, c, self.flat), x.dtype)
            size = math.prod(self.padded)

            def channels(lo: int, hi: int) -> None:
                part = flat[:, lo:hi]
                _pad_into(
                    part[..., :size].reshape(n, hi - lo, *self.padded), x[:, lo:hi], self.padding
                )
                part[..., size:] = 0
                for t, offset in enumerate(self.offsets):
                    cols[lo:hi, t] = part[..., offset : offset + self.length].swapaxes(0, 1)
        else:
            xp = scratch("padded", (n, c, *self.padded), x.dtype)
            win = _windows(xp, self.kernel, self.outs, self.stride, self.dilation)
            nd = len(self.outs)
            # n c j... k... -> c k... n j...
            source = win.transpose((1, *range(2 + nd, 2 + 2 * nd), 0, *range(2, 2 + nd)))
            target = cols.reshape(c, *self.kernel, n, *self.outs)

            def channels(lo: int, hi: int) -> None:
                _pad_into(xp[:, lo:hi], x[:, lo:hi], self.padding)
                np.copyto(target[lo:hi], source[lo:hi])

        split(channels, c, work)
        return cols.reshape(shape)

    def columns_last(self, x: np.ndarray) -> np.ndarray:
        """im2col of a channels-last input, ``n c i j -> (n l) (k k c)``: every run the copy
        moves is a whole channel vector. 2-d, ungrouped, not shifted."""
        n, c = self.x_shape[:2]
        if self.pointwise:
            picked = x.transpose(0, 2, 3, 1)[:, :: self.stride[0], :: self.stride[1]]
            if picked.flags.c_contiguous:
                return picked.reshape(-1, c)
            cols = scratch("columns", picked.shape, x.dtype)
            split(lambda lo, hi: np.copyto(cols[:, lo:hi], picked[:, lo:hi]), len(cols[0]), x.size)
            return cols.reshape(-1, c)
        xp = scratch("padded", (n, *self.padded, c), x.dtype)
        pad_last(xp, x, self.padding)
        sn, sh, sw, sc = xp.strides
        (s0, s1), (d0, d1) = self.stride, self.dilation
        windows = np.lib.stride_tricks.as_strided(
            xp,
            (n, *self.outs, *self.kernel, c),
            (sn, s0 * sh, s1 * sw, d0 * sh, d1 * sw, sc),
            writeable=False,
        )
        cols = scratch("columns", windows.shape, x.dtype)
        split(lambda lo, hi: np.copyto(cols[:, lo:hi], windows[:, lo:hi]), self.outs[0], cols.size)
        return cols.reshape(n * self.length, len(self.taps) * c)

    def forward(
        self,
        x: np.ndarray,
        weight: np.ndarray,
        bias: np.ndarray | None,
        epilogue: Callable | None = None,
        taps: np.ndarray | None = None,
        residual: np.ndarray | None = None,
    ) -> np.ndarray:
        """The im2col convolution. ``g o (c k...) @ g (c k...) (n l)``, one product per group,
        copied out to NC[D]HW with the bias; a channels-last plan multiplies the other way
        round, ``(n l) (c k...) @ (c k...) o``, and its product is the ``n j... o`` output with
        no copy (the bias is one pass in place). A channels-last input is gathered as
        ``(n l) (k... c)`` against the weights with their taps first (``taps``, that
        ``(k... c) o`` matrix when the caller keeps it; for a depthwise plan, its weights along
        a row, ``row_weights``). ``epilogue`` and ``residual``: see ``epilogue``."""
        o, g = self.w_shape[0], self.groups
        if self.depthwise:
            if residual is None:
                return self.depthwise.forward(x, weight, bias, epilogue, taps)
            return _finish(self.depthwise.forward(x, weight, bias, None, taps), residual, epilogue)
        if not self.channels_last:
            w = weight.reshape(g, o // g, -1)
            cols = self.columns(x)
            product = scratch("product", (g, o // g, cols.shape[2]), x.dtype)
            np.matmul(w, cols, out=product)  # g o (c k...), g (c k...) (n l) -> g o (n l)
            return _finish(self.output(product, bias), residual, epilogue)  # a pass of its own
        out = np.empty((x.shape[0], *self.outs, o), dtype=x.dtype)
        rows = out.reshape(-1, o)
        if is_channels_last(x):
            if taps is None:
                taps = taps_first(weight).T
            np.matmul(self.columns_last(x), taps, out=rows)
        else:
            np.matmul(self.columns(x)[0].T, weight.reshape(o, -1).T, out=rows)
        return output_pass(as_nchw(out), bias, epilogue, residual)

    def _padded(self, x: np.ndarray) -> np.ndarray:
        """``x`` padded, in a reused scratch buffer; split over samples."""
        xp = scratch("padded", (x.shape[0], x.shape[1], *self.padded), x.dtype)
        split(lambda lo, hi: _pad_into(xp[lo:hi], x[lo:hi], self.padding), x.shape[0], xp.size)
        return xp

    def sample_columns_shape(self, ones: bool = False) -> tuple:
        """The shape of every sample's ``_sample_columns``, ``n g (c k... [+1]) l``."""
        c, g = self.x_shape[1], self.groups
        rows = c // g * math.prod(self.kernel) + ones
        return (self.x_shape[0], g, rows, self.length)

    def _sample_columns(
        self, xp: np.ndarray, s: int, ones: bool = False, out: np.ndarray | None = None
    ) -> np.ndarray:
        """im2col of sample ``s`` of the padded input, ``c i... -> g (c k...) l``, split over
        channels and the first kernel axis (conv1 has only three channels), into ``out``
        (default: the scratch slot "columns"). ``ones`` appends a row of ones to each group's
        columns, for a bias carried in the product."""
        (c, g), k0, nd = (self.x_shape[1], self.groups), self.kernel[0], len(self.outs)
        win = _windows(xp[s : s + 1], self.kernel, self.outs, self.stride, self.dilation)[0]
        source = win.transpose((0, *range(1 + nd, 1 + 2 * nd), *range(1, 1 + nd)))
        rows_per_group = c // g * math.prod(self.kernel)
        cols = out
        if cols is None:
            cols = scratch("columns", (g, rows_per_group + ones, self.length), xp.dtype)
        if ones:
            cols[:, -1] = 1
        # g (c k...) l as g c k... j...; setting the shape raises rather than copy
        target = cols[:, :rows_per_group].view()
        target.shape = (g, c // g, *self.kernel, *self.outs)

        def rows(lo: int, hi: int) -> None:
            for row in range(lo, hi):
                channel, tap = divmod(row, k0)
                np.copyto(target[(*divmod(channel, c // g), tap)], source[channel, tap])

        split(rows, c * k0, target.size)
        return cols

    def forward_per_sample(
        self,
        x: np.ndarray,
        weight: np.ndarray,
        bias: np.ndarray | None,
        keep: np.ndarray | None = None,
        fn: Callable | None = None,
    ) -> np.ndarray:
        """The convolution, one sample's columns and product at a time; a bias rides in the
        product as one more column of weights against a row of ones (a separate pass over
        the output cost conv1 2 of its 27 ms). Channels-last plans multiply ``l (c k...) @
        (c k...) o`` straight into the sample's ``j... o`` output. ``keep``: an array of
        ``sample_columns_shape`` to build the columns in, for the weight gradient to reuse.
        ``fn``, an ``epilogue`` (channels-last plans only): each sample's bias and ``fn`` in
        one pass after its product, while it is in cache (a 3->16 stem with a ReLU at batch 1:
        575 -> 510-550 us; the ReLU had been a numpy pass of its own, ~100 us)."""
        n, (o, g) = x.shape[0], (self.w_shape[0], self.groups)
        w = weight.reshape(g, o // g, -1)
        ones = bias is not None and fn is None
        if ones:
            w = np.concatenate([w, bias.reshape(g, o // g, 1)], axis=2)
        xp = self._padded(x)

        def columns(s: int) -> np.ndarray:
            return self._sample_columns(xp, s, ones, None if keep is None else keep[s])

        if self.channels_last:
            out = np.empty((n, *self.outs, o), dtype=x.dtype)

            def samples(lo: int, hi: int) -> None:  # each thread its samples, start to end
                for s in range(lo, hi):
                    rows = out[s].reshape(self.length, o)
                    np.matmul(columns(s)[0].T, w[0].T, out=rows)
                    if fn is not None:
                        piecewise.add_bias_rows(rows, bias, fn)

            split_products(samples, n, n * self.length * w.shape[2] * o)
            return as_nchw(out)
        out = np.empty((n, o, *self.outs), dtype=x.dtype)
        for s in range(n):
            np.matmul(w, columns(s), out=out[s].reshape(g, o // g, self.length))
        return out

    def weight_grad_per_sample(self, x, grad: np.ndarray, kept=None) -> np.ndarray:
        """The weight gradient, summed over samples: ``g o l @ g l (c k...)`` each, from the
        forward's ``kept`` columns or, without them, the input's columns built again."""
        o, g = self.w_shape[0], self.groups
        rows_per_group = math.prod(self.w_shape[1:])
        total = np.zeros((g, o // g, rows_per_group), dtype=grad.dtype)
        part = np.empty_like(total)
        xp = self._padded(x) if kept is None else None
        for s in range(grad.shape[0]):
            rows = grad[s].reshape(g, o // g, self.length)
            if kept is None:
                columns = self._sample_columns(xp, s)
            else:
                columns = kept[s][:, :rows_per_group]  # without a bias's row of ones
            np.matmul(rows, columns.transpose(0, 2, 1), out=part)
            total += part
        return total.reshape(self.w_shape)

    def _pixels(self, rows: np.ndarray) -> np.ndarray:
        """``o n l -> o n j...``: the output pixels of the (possibly extended) layout."""
        o, n = rows.shape[:2]
        if not self.shifted:
            return rows.reshape(o, n, *self.outs)
        rows = rows.reshape(o, n, self.outs[0], *self.padded[1:])
        return rows[(slice(None), slice(None), slice(None), *(slice(k) for k in self.outs[1:]))]

    def output(self, product: np.ndarray, bias: np.ndarray | None) -> np.ndarray:
        """``o (n l) -> n o j...`` plus bias, in one copy."""
        o, n = self.w_shape[0], self.x_shape[0]
        pixels = self._pixels(product.reshape(o, n, self.length)).swapaxes(0, 1)
        out = np.empty((n, o, *self.outs), dtype=product.dtype)
        if bias is not None:
            bias = bias.reshape(-1, *([1] * len(self.outs)))

        def channels(lo: int, hi: int) -> None:
            if bias is None:
                np.copyto(out[:, lo:hi], pixels[:, lo:hi])
            else:
                np.add(pixels[:, lo:hi], bias[lo:hi], out=out[:, lo:hi])

        split(channels, o, out.size)
        return out

    def output_grad(self, grad: np.ndarray) -> np.ndarray:
        """``n o j... -> g o (n l)``: the output gradient in the columns' layout (zeros where
        the extended layout has columns past a row's end)."""
        n, o = grad.shape[:2]
        rows = np.empty((o, n, self.length), dtype=grad.dtype)
        pixels, source = self._pixels(rows), grad.swapaxes(0, 1)

        def channels(lo: int, hi: int) -> None:
            if self.shifted:
                rows[lo:hi] = 0
            pixels[lo:hi] = source[lo:hi]

        split(channels, o, rows.size)
        return rows.reshape(self.groups, o // self.groups, n * self.length)

    def scatter(self, gcols: np.ndarray) -> np.ndarray:
        """col2im, ``g (c k...) (n l) -> n c i...``: add each tap back where it was read."""
        n, c = self.x_shape[:2]
        if self.pointwise:
            gx = gcols.reshape(c, n, *self.outs).swapaxes(0, 1)
            if all(s == 1 for s in self.stride):
                return np.ascontiguousarray(gx)
            full = np.zeros(self.x_shape, dtype=gcols.dtype)
            full[(slice(None), slice(None), *(slice(None, None, s) for s in self.stride))] = gx
            return full
        gcols = gcols.reshape(c, len(self.taps), n, self.length)
        if self.shifted:
            flat = np.empty((n, c, self.flat), dtype=gcols.dtype)

            def channels(lo: int, hi: int) -> None:
                part = flat[:, lo:hi]
                part[...] = 0
                for t, offset in enumerate(self.offsets):
                    part[..., offset : offset + self.length] += gcols[lo:hi, t].swapaxes(0, 1)

            gxp = flat[..., : math.prod(self.padded)].reshape(n, c, *self.padded)
        else:
            gxp = np.empty((n, c, *self.padded), dtype=gcols.dtype)
            taps = [_tap(tap, self.outs, self.stride, self.dilation) for tap in self.taps]

            def channels(lo: int, hi: int) -> None:
                part = gxp[:, lo:hi]
                part[...] = 0
                for t, tap in enumerate(taps):
                    part[tap] += gcols[lo:hi, t].reshape(hi - lo, n, *self.outs).swapaxes(0, 1)

        split(channels, c, gcols.size)
        return gxp[_interior(self.x_shape, self.padding)]

    def scatter_last(self, gcols: np.ndarray) -> np.ndarray:
        """col2im for channels-last columns, ``(n l) (k k c) -> n c i j`` stored channels
        last: add each tap back where it was read, split over samples."""
        n, c = self.x_shape[:2]
        if self.pointwise:
            gx = gcols.reshape(n, *self.outs, c)
            if self.stride != (1, 1):
                full = np.zeros((n, *self.x_shape[2:], c), dtype=gcols.dtype)
                full[:, :: self.stride[0], :: self.stride[1]] = gx
                gx = full
            return as_nchw(gx)
        gxp = np.empty((n, *self.padded, c), dtype=gcols.dtype)
        gcols = gcols.reshape(n, *self.outs, *self.kernel, c)
        # the taps' index into the padded input, without the n c leading axes of ``_tap``
        taps = [_tap(tap, self.outs, self.stride, self.dilation)[2:] for tap in self.taps]

        def samples(lo: int, hi: int) -> None:
            part = gxp[lo:hi]
            part[...] = 0
            for tap, index in zip(self.taps, taps):
                part[(slice(None), *index)] += gcols[
                    (slice(lo, hi), slice(None), slice(None), *tap)
                ]

        split(samples, n, gcols.size)
        return as_nchw(gxp)[_interior(self.x_shape, self.padding)]


def _convolve(plan, x, weight, bias, prepared, kept, fn, residual=None) -> np.ndarray:
    """The convolution of ``plan`` on arrays of one dtype, by the plan's layout: Winograd, per-
    sample columns or im2col, with the weights ``prepared`` as the product reads them when the
    caller keeps them (``_kept_weights``); ``kept`` is what the weight gradient will reuse (see
    ``Convolution``), ``fn`` and ``residual`` an ``epilogue``'s."""
    if prepared is not None and prepared.dtype != x.dtype:
        prepared = None
    if plan.grouped is not None and kept is None:
        out = plan.grouped.forward(x, weight, bias, fn if residual is None else None)
        if out is not None:
            return out if residual is None else _finish(out, residual, fn)
    if plan.winograd:
        if prepared is None:
            prepared = _transformed_weights(weight, plan.winograd)
        if residual is not None:  # the bias with the residual and the activation: one pass
            out = winograd.convolve(x, prepared, plan.padding, plan.winograd, None, kept)
            return output_pass(out, bias, fn, residual)
        out = winograd.convolve(x, prepared, plan.padding, plan.winograd, bias, kept)
    elif plan.per_sample and plan.channels_last and kept is None and residual is None:
        return plan.forward_per_sample(x, weight, bias, None, fn)
    elif plan.per_sample:
        out = plan.forward_per_sample(x, weight, bias, kept)
    else:
        # the epilogue in the plan's own output pass
        return plan.forward(x, weight, bias, fn, prepared, residual)
    return _finish(out, residual, fn)


def _rows(a: np.ndarray) -> np.ndarray | None:
    """``n c h w`` stored channels last as its ``(n h w) c`` rows (a view), else None."""
    if a.ndim != 4:
        return None
    last = a.transpose(0, 2, 3, 1)
    return last.reshape(-1, a.shape[1]) if last.flags.c_contiguous else None


def output_pass(
    out: np.ndarray, bias: np.ndarray | None, fn: Callable | None, residual: np.ndarray | None
) -> np.ndarray:
    """``out += bias``, ``out += residual``, then ``fn(out)``, in place, for an ``n o h w``
    output stored channels last: one pass over its rows (numpy adds a residual of another
    layout)."""
    rows = _rows(out)
    skip = None if residual is None else _rows(residual)
    if residual is not None and skip is None:
        piecewise.add_bias_rows(rows, bias, None)
        return _finish(out, residual, fn)
    piecewise.add_bias_rows(rows, bias, fn, skip)
    return out


def _finish(out: np.ndarray, residual: np.ndarray | None, fn: Callable | None) -> np.ndarray:
    """``out += residual`` (of ``out``'s shape, any layout), then ``fn(out)``, in place: an
    ``epilogue``'s work where the output's last pass could not take it."""
    if residual is not None:
        rows, skip = _rows(out), _rows(residual)
        if rows is not None and skip is not None:
            piecewise.add_bias_rows(rows, None, fn, skip)
            return out
        np.add(out, residual, out=out)
    if fn is not None:
        elementwise(fn, out)
    return out


def infer(
    plan: ConvPlan,
    x: np.ndarray,
    weight: Tensor,
    bias: np.ndarray | None,
    fn=None,
    residual: np.ndarray | None = None,
) -> np.ndarray:
    """What ``Convolution`` computes when nothing needs a gradient, straight on the kernels
    (no graph, no argument checks: the caller's are done), ``fn`` and ``residual`` an
    ``epilogue``'s. ``plan`` is for ``x``'s shape and the weight's; ``x``, the weight's array,
    ``bias`` and ``residual`` share one dtype. A frozen model's layers call this at batch 1,
    where the checks and the graph machinery around a small product cost as much as it."""
    _load_compiled(weight)
    prepared = _kept_weights(weight, plan, x)
    return _convolve(plan, x, weight._data, bias, prepared, None, fn, residual)


def _load_compiled(weight: Tensor) -> None:
    """``jit.load`` for inference (gradients off) and for a convolution that trains: its
    Winograd transforms, the passes around its products and its activations then run compiled
    (ResNet-18 at batch 8: the forward 0.82x, the full training step 0.89x). A frozen
    backbone's step (gradients on, this weight frozen) keeps numpy's: numba's ~110 MB would
    take its peak memory over PyTorch's (ResNet-18: 375 + 110 against 467 MB)."""
    if weight.requires_grad or not is_grad_enabled():
        jit.load()


class Convolution(Function):
    """``n c i..., o c/g k... -> n o j...``: N-d convolution with bias, stride, asymmetric
    padding, dilation and groups."""

    name = "ConvolutionBackward0"

    @staticmethod
    def forward(ctx, x, weight, bias=None, *, stride, padding, dilation, groups, transformed=None):
        """``transformed``: the Winograd transform of ``weight`` when the caller keeps one
        (``_kept_transform``)."""
        dtype = np.result_type(x, weight)
        fn, residual = _take_epilogue()
        if (fn is not None or residual is not None) and any(ctx.needs_input_grad):
            raise RuntimeError(
                "a convolution epilogue is for inference: nothing may need a gradient"
            )
        ctx.dtypes = (x.dtype, weight.dtype, None if bias is None else bias.dtype)
        x, weight = x.astype(dtype, copy=False), weight.astype(dtype, copy=False)
        bias = None if bias is None else bias.astype(dtype, copy=False)
        plan = ConvPlan(x.shape, weight.shape, stride, padding, dilation, groups)
        if residual is not None and residual.shape != (x.shape[0], weight.shape[0], *plan.outs):
            raise ShapeError(
                f"a convolution's residual has shape {list(residual.shape)}, its output "
                f"{[x.shape[0], weight.shape[0], *plan.outs]}"
            )
        needs = ctx.needs_input_grad
        wants_weight = len(needs) > 1 and needs[1]
        # the weight gradient reuses the forward's transformed input tiles (Winograd) or
        # per-sample columns, kept in the pool; other layouts keep the input instead
        kept = None
        if wants_weight and plan.winograd:
            kept = pool.take(winograd.tiles_shape(x.shape, padding, plan.winograd), dtype)
        elif wants_weight and plan.per_sample:
            kept = pool.take(plan.sample_columns_shape(bias is not None), dtype)
        if kept is not None:
            ctx.pooled = (kept,)
        ctx.kept = kept
        if residual is not None:
            residual = residual.astype(dtype, copy=False)
        out = _convolve(plan, x, weight, bias, transformed, kept, fn, residual)
        ctx.plan = plan
        ctx.save_for_backward(
            x if wants_weight and kept is None else None,
            weight if needs[0] else None,
        )
        return out

    @staticmethod
    def backward(ctx, grad):
        x, weight = ctx.saved_tensors
        plan = ctx.plan
        needs = ctx.needs_input_grad
        wants_weight = len(needs) > 1 and needs[1]
        grad_x = grad_w = grad_b = None
        if needs[0]:
            grad_x = _input_gradient(plan, weight, grad).astype(ctx.dtypes[0], copy=False)
        if wants_weight:
            grad_w = _weight_gradient(plan, x, grad, ctx.kept).astype(ctx.dtypes[1], copy=False)
        if len(needs) > 2 and needs[2]:
            if is_channels_last(grad):
                grad_b = channel_sums_last(grad)
            else:
                grad_b = grad.sum(axis=(0, *range(2, grad.ndim)))
            grad_b = grad_b.astype(ctx.dtypes[2], copy=False)
        return (grad_x, grad_w, grad_b)[: len(needs)]


def _input_gradient(plan: ConvPlan, weight: np.ndarray, grad: np.ndarray) -> np.ndarray:
    """The input gradient: for a stride-1 3x3 convolution, the Winograd convolution of the
    output gradient with the rotated kernel (padded by ``2 - pad``); else the columns'
    gradient added back over the taps (col2im), channels last for a channels-last plan."""
    if plan.depthwise:
        return plan.depthwise.input_gradient(weight, grad.astype(weight.dtype, copy=False))
    m = plan.winograd_grad
    if m:
        rotated = _transformed_weights(weight, m, rotated=True)
        pads = tuple((2 - lo, 2 - hi) for lo, hi in plan.padding)
        return winograd.convolve(grad.astype(weight.dtype, copy=False), rotated, pads, m, None)
    if plan.channels_last:
        # (n l) o @ o (k k c) -> (n l) (k k c)
        return plan.scatter_last(np.matmul(pixels_by_channel(grad), taps_first(weight)))
    g = plan.output_grad(grad)
    w = weight.reshape(plan.groups, weight.shape[0] // plan.groups, -1)
    gcols = scratch("column grads", (plan.groups, w.shape[2], g.shape[2]), g.dtype)
    np.matmul(w.transpose(0, 2, 1), g, out=gcols)  # g (c k...) o, g o (n l)
    return plan.scatter(gcols)


def _weight_gradient(plan: ConvPlan, x, grad: np.ndarray, kept) -> np.ndarray:
    """The weight gradient, in the weight's own ``o c/g k...`` layout, from what the forward
    ``kept`` (Winograd's transformed tiles, per-sample columns) or the columns of ``x``."""
    if plan.winograd:
        return winograd.weight_gradient(kept, grad, plan.winograd)
    if plan.depthwise:
        return plan.depthwise.weight_gradient(x, grad.astype(x.dtype, copy=False))
    if plan.per_sample:
        return plan.weight_grad_per_sample(x, grad, kept)
    if plan.channels_last and is_channels_last(x):
        # o (n l) @ (n l) (k k c) -> o k k c, back to o c k k
        dw = np.matmul(pixels_by_channel(grad).T, plan.columns_last(x))
        return np.ascontiguousarray(
            dw.reshape(plan.w_shape[0], *plan.kernel, -1).transpose(0, 3, 1, 2)
        )
    # g o (n l), g (n l) (c k...) -> g o (c k...)
    dw = np.matmul(plan.output_grad(grad), plan.columns(x).transpose(0, 2, 1))
    return dw.reshape(plan.w_shape)


def taps_first(weight: np.ndarray) -> np.ndarray:
    """``o c kh kw -> o (kh kw c)``, the weights against channels-last columns (a copy unless
    the kernel is 1x1)."""
    return weight.transpose(0, 2, 3, 1).reshape(weight.shape[0], -1)


def _transformed_weights(weight: np.ndarray, m: int, rotated: bool = False) -> np.ndarray:
    """Winograd weights for one call, in a reused buffer."""
    buffer = scratch("winograd weights", ((m + 2) ** 2, *weight.shape[:2]), weight.dtype)
    return winograd.transform_weights(weight, m, buffer, rotated=rotated)


def _kept_weights(weight: Tensor, plan: ConvPlan, x: np.ndarray) -> np.ndarray | None:
    """The weights as ``plan``'s product reads them for input ``x``, kept (``_kept``) where
    the plan would otherwise make them on every call: Winograd's transform, or a channels-
    last plan's ``(k... c) o`` matrix for a channels-last input, contiguous (a 3x3 512 -> 512
    layer at batch 1: 3.5 ms with the 9 MB reordered per call, ~1.7 with it kept). A 1x1
    layer's matrix is a transposed view of the weight, but OpenBLAS multiplies a few rows by
    a transposed right operand slowly: 49 pixels 192 -> 1152 195 against 132 us contiguous.
    A depthwise plan's weights along a row, for its four-row kernel (``row_weights``)."""
    if plan.winograd:
        return _kept_transform(weight, plan.winograd)
    if plan.depthwise and plan.depthwise.along_rows:
        return _kept(weight, ("rows", plan.outs[1]), plan.depthwise.row_weights)
    if plan.channels_last and not plan.per_sample and is_channels_last(x):
        return _kept(weight, "taps", _taps_matrix)
    return None


def _taps_matrix(weight: np.ndarray) -> np.ndarray:
    """``taps_first(weight).T``, ``(kh kw c) o``, contiguous, in one copy."""
    return np.ascontiguousarray(weight.transpose(2, 3, 1, 0)).reshape(-1, weight.shape[0])


def _kept_transform(weight: Tensor, m: int) -> np.ndarray | None:
    """The Winograd weights of a weight that needs no gradient, kept (``_kept``)."""
    # contiguous: the product reads the transposed view 5-10% slower on layers 3-4
    return _kept(
        weight, ("winograd", m), lambda w: np.ascontiguousarray(winograd.transform_weights(w, m))
    )


def _kept(weight: Tensor, form, make: Callable) -> np.ndarray | None:
    """``make(weight's array)`` for a weight that needs no gradient (a frozen layer, or one
    folded with its BatchNorm), kept on the tensor while its array and version stay the same:
    inference and frozen backbones prepare each weight once. Trainable weights change every
    step and are prepared per call instead, so they hold no extra memory. ``form`` names what
    is kept; the tensor keeps the last one made."""
    if weight.requires_grad:
        return None
    data = weight._data
    key = (data, weight._version.value, form)
    kept = weight.__dict__.get("_kept")
    if kept is not None and kept[0][0] is data and kept[0][1:] == key[1:]:
        return kept[1]
    prepared = make(data)
    weight.__dict__["_kept"] = (key, prepared)
    return prepared


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
    stride, dilation = tuple(stride), tuple(dilation)
    padding = tuple(tuple(p) for p in padding)
    _load_compiled(weight)
    tile = _winograd_tiles(x.shape, weight.shape, stride, padding, dilation, groups)[0]
    transformed = _kept_transform(weight, tile) if tile else None
    return Convolution.apply(
        *args,
        stride=stride,
        padding=padding,
        dilation=dilation,
        groups=groups,
        transformed=transformed,
    )


# -- transposed convolution ------------------------------------------------------------------


class ConvolutionTranspose(Function):
    """``n c i..., c o/g k... -> n o j...``: the transposed convolution, which is the input
    gradient of the convolution with the same weight. A Function of its own rather than a
    convolution of the zero-stuffed input (which multiplies stride-squared zeros): it runs on
    the convolution's plan, forward as its col2im, its input gradient as that convolution's
    forward and its weight gradient as that convolution's with input and output gradient
    swapped. ``padding`` crops the output (a negative pad adds zeros there instead)."""

    name = "ConvolutionTransposeBackward0"

    @staticmethod
    def forward(ctx, x, weight, bias=None, *, stride, padding, dilation, groups):
        dtype = np.result_type(x, weight)
        ctx.dtypes = (x.dtype, weight.dtype, None if bias is None else bias.dtype)
        x, weight = x.astype(dtype, copy=False), weight.astype(dtype, copy=False)
        plan, extra = _transpose_plan(x.shape, weight.shape, stride, padding, dilation, groups)
        out = _input_gradient(plan, weight, x)
        if out.base is not None and plan.pointwise:  # a view of the column scratch buffer
            out = out.copy()
        if any(map(any, extra)):
            out = np.pad(out, ((0, 0), (0, 0), *extra))
        if bias is not None:
            out += bias.astype(dtype, copy=False).reshape(-1, *([1] * (x.ndim - 2)))
        needs = ctx.needs_input_grad
        ctx.plan, ctx.extra, ctx.dtype = plan, extra, dtype
        ctx.save_for_backward(
            x if len(needs) > 1 and needs[1] else None, weight if needs[0] else None
        )
        return out

    @staticmethod
    def backward(ctx, grad):
        x, weight = ctx.saved_tensors
        plan, needs = ctx.plan, ctx.needs_input_grad
        grad_b = None
        if len(needs) > 2 and needs[2]:
            grad_b = grad.sum(axis=(0, *range(2, grad.ndim))).astype(ctx.dtypes[2], copy=False)
        # the gradient inside the output the plan computes (outside it the output is zeros)
        inner = (slice(None), slice(None)) + tuple(
            slice(lo, lo + size) for (lo, _), size in zip(ctx.extra, plan.x_shape[2:])
        )
        grad = np.ascontiguousarray(grad[inner], dtype=ctx.dtype)
        grad_x = grad_w = None
        m, kept = plan.winograd, None
        wants_weight = len(needs) > 1 and needs[1]
        if m and wants_weight:
            kept = pool.take(winograd.tiles_shape(grad.shape, plan.padding, m), grad.dtype)
        if needs[0]:
            # the convolution of the output gradient with the same weight
            if m:
                transformed = _transformed_weights(weight, m)
                grad_x = winograd.convolve(grad, transformed, plan.padding, m, None, kept)
            elif plan.per_sample:
                grad_x = plan.forward_per_sample(grad, weight, None)
            else:
                grad_x = plan.forward(grad, weight, None)
            grad_x = grad_x.astype(ctx.dtypes[0], copy=False)
        if wants_weight:
            if m:
                if not needs[0]:
                    winograd.transformed_tiles(grad, plan.padding, m, kept)
                grad_w = winograd.weight_gradient(kept, x, m)
                pool.give(kept)
            else:
                # the convolution's weight gradient: its input is ``grad``, its output's is ``x``
                grad_w = _weight_gradient(plan, grad, x, None)
            grad_w = grad_w.astype(ctx.dtypes[1], copy=False)
        return (grad_x, grad_w, grad_b)[: len(needs)]


def _transpose_plan(x_shape, w_shape, stride, padding, dilation, groups) -> tuple:
    """The plan of the convolution whose input gradient the transposed convolution is, and the
    zeros to add around its result where ``padding`` is negative."""
    natural = [
        (i - 1) * s + (k - 1) * d + 1
        for i, s, k, d in zip(x_shape[2:], stride, w_shape[2:], dilation)
    ]
    crop = tuple((max(lo, 0), max(hi, 0)) for lo, hi in padding)
    extra = tuple((max(-lo, 0), max(-hi, 0)) for lo, hi in padding)
    sizes = [size - lo - hi for size, (lo, hi) in zip(natural, crop)]
    if any(size < 1 for size in sizes):
        raise ShapeError(
            f"conv_transpose: padding {list(padding)} crops the whole output of input "
            f"{list(x_shape)} with weight {list(w_shape)}"
        )
    shape = (x_shape[0], w_shape[1] * groups, *sizes)
    plan = ConvPlan(shape, (x_shape[1], *w_shape[1:]), stride, crop, dilation, groups)
    return plan, extra


def conv_transpose(
    x: Tensor,
    weight: Tensor,
    bias: Tensor | None = None,
    stride: tuple[int, ...] = (1, 1),
    padding: Pairs = ((0, 0), (0, 0)),
    dilation: tuple[int, ...] = (1, 1),
    groups: int = 1,
) -> Tensor:
    """The transposed convolution of ``x`` (N, C, *spatial) with ``weight`` (C, O/groups,
    *kernel): output size ``(i - 1) * stride + (k - 1) * dilation + 1 - before - after`` per
    axis, ``padding`` one ``(before, after)`` pair per axis (output padding is a smaller
    ``after``)."""
    args = (x, weight) if bias is None else (x, weight, bias)
    return ConvolutionTranspose.apply(
        *args,
        stride=tuple(stride),
        padding=tuple(tuple(p) for p in padding),
        dilation=tuple(dilation),
        groups=groups,
    )


# pooling lives in pooling.py; its kernels stay importable from here, their old home (looked
# up on use: pooling.py imports this module's window helpers, so either may load first)
_POOLING = frozenset(
    {
        "AvgPool",
        "AvgPool1D",
        "AvgPool3D",
        "MaxPool",
        "MaxPool1D",
        "MaxPool3D",
        "avg_pool",
        "max_pool",
    }
)


def __getattr__(name: str):
    if name in _POOLING:
        from . import pooling

        return getattr(pooling, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
