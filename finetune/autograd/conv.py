"""Convolution and pooling kernels for 1, 2 or 3 spatial dimensions (NC[D]HW shapes).

Convolution copies the windows of the padded input once into a column matrix (im2col) and
contracts it with the weights in one float32 matmul per group; the weight gradient is one more
matmul, and the input gradient adds the column gradients back over the kernel offsets only.
Stride-1 3x3 convolutions with enough channels take Winograd's algorithm instead, forward and
backward (``winograd.py``; ``_ConvPlan`` decides). Ungrouped 2-d convolutions answer channels
last (``layout.py``): their product is laid out pixels by channels, so it is the output with no
copy, and a channels-last input is gathered a whole channel vector at a time. Pooling regroups
the padded input by stride phase and reduces over the kernel offsets, one slice per offset, so
nothing the size of the windows is ever materialised; a channels-last input needs no
regrouping (``_LastTaps``).

Padding is a tuple of ``(before, after)`` pairs, one per spatial dimension, so ONNX's asymmetric
pads need no special case; callers normalise their arguments into these tuples.
"""

from __future__ import annotations

import itertools
import math

import numpy as np

from ..parallel import split
from ..tensor import Tensor
from . import pool, winograd
from .function import Function
from .layout import as_nchw, channel_sums_last, is_channels_last, pad_last, pixels_by_channel
from .scratch import scratch

Pairs = tuple[tuple[int, int], ...]


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


class _ConvPlan:
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
        self.winograd, self.winograd_grad = _winograd_tiles(
            self.x_shape, self.w_shape, stride, padding, dilation, groups
        )
        self.taps = list(itertools.product(*(range(k) for k in self.kernel)))
        self.pointwise = all(k == 1 for k in self.kernel) and not any(map(any, padding))
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

    def forward(self, x: np.ndarray, weight: np.ndarray, bias: np.ndarray | None) -> np.ndarray:
        """The im2col convolution. ``g o (c k...) @ g (c k...) (n l)``, one product per group,
        copied out to NC[D]HW with the bias; a channels-last plan multiplies the other way
        round, ``(n l) (c k...) @ (c k...) o``, and its product is the ``n j... o`` output with
        no copy (the bias is one pass in place). A channels-last input is gathered as
        ``(n l) (k... c)`` against the weights with their taps first."""
        o, g = self.w_shape[0], self.groups
        if not self.channels_last:
            w = weight.reshape(g, o // g, -1)
            cols = self.columns(x)
            product = scratch("product", (g, o // g, cols.shape[2]), x.dtype)
            np.matmul(w, cols, out=product)  # g o (c k...), g (c k...) (n l) -> g o (n l)
            return self.output(product, bias)
        out = np.empty((x.shape[0], *self.outs, o), dtype=x.dtype)
        rows = out.reshape(-1, o)
        if is_channels_last(x):
            np.matmul(self.columns_last(x), taps_first(weight).T, out=rows)
        else:
            np.matmul(self.columns(x)[0].T, weight.reshape(o, -1).T, out=rows)
        if bias is not None:
            split(lambda lo, hi: np.add(rows[lo:hi], bias, out=rows[lo:hi]), len(rows), rows.size)
        return as_nchw(out)

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
    ) -> np.ndarray:
        """The convolution, one sample's columns and product at a time; a bias rides in the
        product as one more column of weights against a row of ones (a separate pass over
        the output cost conv1 2 of its 27 ms). Channels-last plans multiply ``l (c k...) @
        (c k...) o`` straight into the sample's ``j... o`` output. ``keep``: an array of
        ``sample_columns_shape`` to build the columns in, for the weight gradient to reuse."""
        n, (o, g) = x.shape[0], (self.w_shape[0], self.groups)
        w = weight.reshape(g, o // g, -1)
        ones = bias is not None
        if ones:
            w = np.concatenate([w, bias.reshape(g, o // g, 1)], axis=2)
        xp = self._padded(x)

        def columns(s: int) -> np.ndarray:
            return self._sample_columns(xp, s, ones, None if keep is None else keep[s])

        if self.channels_last:
            out = np.empty((n, *self.outs, o), dtype=x.dtype)
            for s in range(n):
                np.matmul(columns(s)[0].T, w[0].T, out=out[s].reshape(self.length, o))
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


class Convolution(Function):
    """``n c i..., o c/g k... -> n o j...``: N-d convolution with bias, stride, asymmetric
    padding, dilation and groups."""

    name = "ConvolutionBackward0"

    @staticmethod
    def forward(ctx, x, weight, bias=None, *, stride, padding, dilation, groups, transformed=None):
        """``transformed``: the Winograd transform of ``weight`` when the caller keeps one."""
        dtype = np.result_type(x, weight)
        ctx.dtypes = (x.dtype, weight.dtype, None if bias is None else bias.dtype)
        x, weight = x.astype(dtype, copy=False), weight.astype(dtype, copy=False)
        bias = None if bias is None else bias.astype(dtype, copy=False)
        plan = _ConvPlan(x.shape, weight.shape, stride, padding, dilation, groups)
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
        if plan.winograd:
            if transformed is None or transformed.dtype != dtype:
                transformed = _transformed_weights(weight, plan.winograd)
            out = winograd.convolve(x, transformed, padding, plan.winograd, bias, kept)
        elif plan.per_sample:
            out = plan.forward_per_sample(x, weight, bias, kept)
        else:
            out = plan.forward(x, weight, bias)
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


def _input_gradient(plan: _ConvPlan, weight: np.ndarray, grad: np.ndarray) -> np.ndarray:
    """The input gradient: for a stride-1 3x3 convolution, the Winograd convolution of the
    output gradient with the rotated kernel (padded by ``2 - pad``); else the columns'
    gradient added back over the taps (col2im), channels last for a channels-last plan."""
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


def _weight_gradient(plan: _ConvPlan, x, grad: np.ndarray, kept) -> np.ndarray:
    """The weight gradient, in the weight's own ``o c/g k...`` layout, from what the forward
    ``kept`` (Winograd's transformed tiles, per-sample columns) or the columns of ``x``."""
    if plan.winograd:
        return winograd.weight_gradient(kept, grad, plan.winograd)
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


def _kept_transform(weight: Tensor, m: int) -> np.ndarray | None:
    """The Winograd weights of a weight that needs no gradient (a frozen layer, or one folded
    with its BatchNorm), kept on the tensor while its array and version stay the same: inference
    and frozen backbones transform each weight once. Trainable weights change every step and
    are transformed per call instead, so they hold no extra memory."""
    if weight.requires_grad:
        return None
    data = weight._data
    key = (data, weight._version.value, m)
    kept = weight.__dict__.get("_winograd")
    if kept is not None and kept[0][0] is data and kept[0][1:] == key[1:]:
        return kept[1]
    # contiguous: the product reads the transposed view 5-10% slower on layers 3-4
    transformed = np.ascontiguousarray(winograd.transform_weights(data, m))
    weight.__dict__["_winograd"] = (key, transformed)
    return transformed


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


# -- pooling ---------------------------------------------------------------------------------


def _pool_windows(sizes, kernel, stride, padding, dilation, ceil_mode) -> tuple:
    """A pool's output size and how far its windows reach into the padded input, per axis."""
    outs = tuple(
        _out_size(s, p, k, st, d, ceil_mode)
        for s, p, k, st, d in zip(sizes, padding, kernel, stride, dilation)
    )
    return outs, _reach(outs, kernel, stride, dilation)


class _Phases:
    """A pool's padded input regrouped by stride phase, ``n c i... -> n c s... q...``, so each
    kernel tap of every window is one slice with contiguous rows: numpy's ufuncs run without
    SIMD on a stride-2 last axis (the nine maxima of a 3x3/2 pool take 25 ms strided, 7 ms here).
    """

    def __init__(self, shape, kernel, stride, padding, dilation, ceil_mode) -> None:
        self.shape, self.stride = tuple(shape), tuple(stride)
        sizes = self.shape[2:]
        self.outs, reach = _pool_windows(sizes, kernel, stride, padding, dilation, ceil_mode)
        # pads grown so the last (ceil-mode) window fits and each axis splits evenly by stride
        self.blocks = tuple(
            -(-max(s + lo + hi, r) // st)
            for s, (lo, hi), r, st in zip(sizes, padding, reach, stride)
        )
        self.padding = tuple(
            (lo, q * st - s - lo) for s, (lo, _), q, st in zip(sizes, padding, self.blocks, stride)
        )
        self.taps = [
            tuple(
                itertools.chain(
                    (t * d % st for t, d, st in zip(tap, dilation, stride)),
                    (
                        slice(t * d // st, t * d // st + o)
                        for t, d, st, o in zip(tap, dilation, stride, self.outs)
                    ),
                )
            )
            for tap in itertools.product(*(range(k) for k in kernel))
        ]
        # where each phase's share of the input sits: x[..., a::s] is planes[..., p, b:b+count]
        # (padded position q * s + p holds input position q * s + p - lo)
        self.pieces = []
        for phase in itertools.product(*(range(st) for st in stride)):
            x_index, plane_index = [], []
            for p, size, st, (lo, _) in zip(phase, sizes, stride, self.padding):
                first = (p - lo) % st
                count = len(range(first, size, st))
                x_index.append(slice(first, None, st))
                plane_index.append(slice((first + lo - p) // st, (first + lo - p) // st + count))
            self.pieces.append(((..., *x_index), (slice(None), slice(None), *phase, *plane_index)))

    @property
    def planes_shape(self) -> tuple:
        return (*self.shape[:2], *self.stride, *self.blocks)

    def fill(self, planes: np.ndarray, x: np.ndarray, value: float) -> None:
        """Write ``x`` padded with ``value`` and regrouped into ``planes`` (both may be slices
        of the same channels)."""
        planes.fill(value)
        for x_index, plane_index in self.pieces:
            planes[plane_index] = x[x_index]

    def tap(self, planes: np.ndarray, t: int) -> np.ndarray:
        """Tap ``t`` of every window: ``n c s... q... -> n c j...``."""
        return planes[(slice(None), slice(None), *self.taps[t])]

    def merge(self, planes: np.ndarray, out: np.ndarray) -> None:
        """The inverse of ``fill`` for a gradient: ``n c s... q... -> n c i...``."""
        for x_index, plane_index in self.pieces:
            out[x_index] = planes[plane_index]

    def gradient(self, add_taps, dtype) -> np.ndarray:
        """The input gradient, from ``add_taps(planes, lo, hi)`` adding each tap's share of
        channels ``lo:hi`` into their zeroed phase planes; split over channels."""
        grad = np.empty(self.shape, dtype=dtype)
        planes = np.empty(self.planes_shape, dtype=dtype)

        def channels(lo: int, hi: int) -> None:
            part = planes[:, lo:hi]
            part[...] = 0
            add_taps(part, lo, hi)
            self.merge(part, grad[:, lo:hi])

        split(channels, self.shape[1], 2 * planes.size)
        return grad


def _axis_taps(size: int, out: int, kernel: int, stride: int, dilation: int, low: int) -> list:
    """A pool's taps along one axis, as ``(input slice, output slice, every window)`` covering
    only the windows where the tap falls inside the input (output ``j`` reads
    ``j * stride + offset``); the taps that every window reaches come first."""
    taps = []
    for t in range(kernel):
        offset = t * dilation - low
        first = max(0, -(offset // stride))
        last = min(out - 1, (size - 1 - offset) // stride)
        if last >= first:
            source = slice(first * stride + offset, last * stride + offset + 1, stride)
            taps.append((source, slice(first, last + 1), first == 0 and last == out - 1))
    return sorted(taps, key=lambda tap: not tap[2])


def _separable_max(x, kernel, stride, padding, dilation, outs, lowest) -> np.ndarray:
    """Max-pool without indices, one axis at a time: a window's maximum is the maximum over
    its rows of the maximum along each row. A 3x3 window takes 2 + 2 passes over shrinking
    arrays instead of 9 over the output, and the strided last axis goes last, when the array
    is smallest. Each block (one sample, up to 64 channels) stays in cache; split over blocks.
    A channels-last input is pooled in its own layout, a sample per block, the channels
    riding along as the inner axis; its output is channels last too."""
    n, c = x.shape[:2]
    axes = [
        _axis_taps(size, o, k, s, d, lo)
        for size, o, k, s, d, (lo, _) in zip(x.shape[2:], outs, kernel, stride, dilation, padding)
    ]
    if is_channels_last(x):
        source, out = x.transpose(0, 2, 3, 1), np.empty((n, *outs, c), dtype=x.dtype)
        width, first_axis = c, 0
    else:
        source, out = x, np.empty((n, c, *outs), dtype=x.dtype)
        width, first_axis = 64, 1
    per_sample = -(-c // width)

    def reduce(source: np.ndarray, target: np.ndarray, axis: int, taps: list) -> None:
        def at(index: slice) -> tuple:
            return (slice(None),) * axis + (index,)

        full = sum(whole for _, _, whole in taps)
        if full >= 2:
            np.maximum(source[at(taps[0][0])], source[at(taps[1][0])], out=target)
        elif full == 1:
            np.copyto(target, source[at(taps[0][0])])
        else:
            target.fill(lowest)
        for read, reach, _ in taps[min(full, 2) :]:
            part = target[at(reach)]
            np.maximum(part, source[at(read)], out=part)

    def blocks(lo: int, hi: int) -> None:
        for block in range(lo, hi):
            sample, first = divmod(block, per_sample)
            channels = slice(first * width, (first + 1) * width)
            current = source[sample, channels] if first_axis else source[sample]
            for axis, taps in enumerate(axes):
                position = first_axis + axis
                if axis == len(axes) - 1:
                    target = out[sample, channels] if first_axis else out[sample]
                else:
                    shape = list(current.shape)
                    shape[position] = outs[axis]
                    target = np.empty(shape, dtype=x.dtype)
                reduce(current, target, position, taps)
                current = target

    split(blocks, n * per_sample, 2 * x.size)
    return out if first_axis else as_nchw(out)


class _LastTaps:
    """A 2-d pool's taps over its channels-last padded input ``n H W c``: tap ``t`` of every
    window is one strided slice ``n j k c`` whose inner axis is the contiguous channels, so the
    ufuncs keep their SIMD loops without regrouping the input into phase planes (``_Phases``,
    for the ``n c h w`` layout, where the strided axis is the inner one)."""

    def __init__(self, shape, kernel, stride, padding, dilation, ceil_mode) -> None:
        self.shape = tuple(shape)
        sizes = self.shape[2:]
        self.outs, reach = _pool_windows(sizes, kernel, stride, padding, dilation, ceil_mode)
        # pads grown so the last (ceil-mode) window fits
        self.padding = tuple(
            (lo, max(hi, r - s - lo)) for s, (lo, hi), r in zip(sizes, padding, reach)
        )
        n, c = self.shape[:2]
        self.padded_shape = (n, *(s + lo + hi for s, (lo, hi) in zip(sizes, self.padding)), c)
        self.taps = [
            _tap(tap, self.outs, stride, dilation)[2:]
            for tap in itertools.product(*(range(k) for k in kernel))
        ]

    def tap(self, padded: np.ndarray, t: int) -> np.ndarray:
        """Tap ``t`` of every window: ``n H W c -> n j k c``."""
        return padded[(slice(None), *self.taps[t])]

    def interior(self, padded: np.ndarray) -> np.ndarray:
        """The unpadded input inside ``padded``, as ``n c h w``."""
        return as_nchw(padded)[_interior(self.shape, self.padding)]


def _max_and_winner(best: np.ndarray, won: np.ndarray, taps: list) -> None:
    """The maximum over ``taps`` (views shaped like ``best``) into ``best``, and into the
    zeroed ``won`` the index of the first tap that reaches it."""
    np.copyto(best, taps[0])
    wins = np.empty(best.shape, dtype=bool)
    index = np.empty_like(won)
    for t in range(1, len(taps)):
        np.greater(taps[t], best, out=wins)
        np.maximum(best, taps[t], out=best)
        np.multiply(wins, won.dtype.type(t), out=index)
        np.maximum(won, index, out=won)


def _add_to_winners(grad: np.ndarray, won: np.ndarray, taps: list) -> None:
    """Add ``grad`` into the tap (a view of a gradient buffer) that won each window."""
    hit = np.empty(won.shape, dtype=bool)
    share = np.empty(grad.shape, dtype=grad.dtype)
    for t, tap in enumerate(taps):
        np.equal(won, t, out=hit)
        np.multiply(grad, hit, out=share)
        tap += share


class MaxPool(Function):
    """``n c i... -> n c j...``: the maximum of each window; padding is -inf and never wins.

    For backward it keeps only which tap won each window (one byte per output, the first
    maximum as PyTorch picks), found branch-free while the maximum is taken: a tap wins where it
    is strictly greater than the running maximum, so the winner is the largest such tap index.
    Without a gradient the maximum is taken one axis at a time (``_separable_max``). A 2-d
    channels-last input is pooled in its own layout (``_LastTaps``), its output channels last.
    """

    name = "MaxPool2DWithIndicesBackward0"

    @staticmethod
    def forward(ctx, x, *, kernel_size, stride, padding, dilation, ceil_mode):
        lowest = -np.inf if x.dtype.kind == "f" else np.iinfo(x.dtype).min
        args = (x.shape, kernel_size, stride, padding, dilation, ceil_mode)
        last = len(kernel_size) == 2 and is_channels_last(x)
        taps = _LastTaps(*args) if last else _Phases(*args)
        if not ctx.needs_input_grad[0]:
            return _separable_max(x, kernel_size, stride, padding, dilation, taps.outs, lowest)
        out, winner = (_max_pool_last if last else _max_pool_phases)(x, taps, lowest)
        ctx.save_for_backward(winner)
        ctx.taps = taps
        return out

    @staticmethod
    def backward(ctx, grad):
        (winner,) = ctx.saved_tensors
        taps = ctx.taps
        if isinstance(taps, _LastTaps):
            gxp = np.empty(taps.padded_shape, dtype=grad.dtype)
            g = grad.transpose(0, 2, 3, 1)

            def samples(lo: int, hi: int) -> None:
                part = gxp[lo:hi]
                part[...] = 0
                _add_to_winners(
                    g[lo:hi], winner[lo:hi], [taps.tap(part, t) for t in range(len(taps.taps))]
                )

            split(samples, len(gxp), 2 * gxp.size)
            return taps.interior(gxp)

        def add_taps(planes: np.ndarray, lo: int, hi: int) -> None:
            tapped = [taps.tap(planes, t) for t in range(len(taps.taps))]
            _add_to_winners(grad[:, lo:hi], winner[:, lo:hi], tapped)

        return taps.gradient(add_taps, grad.dtype)


def _max_pool_phases(x: np.ndarray, phases: _Phases, lowest) -> tuple[np.ndarray, np.ndarray]:
    """The maximum of each window and the tap that won it, ``n c j...``, split over channels."""
    planes = scratch("pool phases", phases.planes_shape, x.dtype)
    out = np.empty((*x.shape[:2], *phases.outs), dtype=x.dtype)
    winner = np.zeros(out.shape, dtype=np.min_scalar_type(len(phases.taps) - 1))

    def channels(lo: int, hi: int) -> None:
        part = planes[:, lo:hi]
        phases.fill(part, x[:, lo:hi], lowest)
        tapped = [phases.tap(part, t) for t in range(len(phases.taps))]
        _max_and_winner(out[:, lo:hi], winner[:, lo:hi], tapped)

    split(channels, x.shape[1], planes.size)
    return out, winner


def _max_pool_last(x: np.ndarray, taps: _LastTaps, lowest) -> tuple[np.ndarray, np.ndarray]:
    """``_max_pool_phases`` for a channels-last ``x``: the output channels last, the winners
    ``n j k c``; split over output rows."""
    padded = scratch("pool padded", taps.padded_shape, x.dtype)
    pad_last(padded, x, taps.padding, lowest)
    out = np.empty((x.shape[0], *taps.outs, x.shape[1]), dtype=x.dtype)
    winner = np.zeros(out.shape, dtype=np.min_scalar_type(len(taps.taps) - 1))

    def rows(lo: int, hi: int) -> None:
        tapped = [taps.tap(padded, t)[:, lo:hi] for t in range(len(taps.taps))]
        _max_and_winner(out[:, lo:hi], winner[:, lo:hi], tapped)

    split(rows, taps.outs[0], 2 * padded.size)
    return as_nchw(out), winner


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
        phases = _Phases(x.shape, kernel_size, stride, padding, ones, ceil_mode)
        planes = scratch("pool phases", phases.planes_shape, x.dtype)
        phases.fill(planes, x, 0)
        out = phases.tap(planes, 0).copy()
        for t in range(1, len(phases.taps)):
            out += phases.tap(planes, t)
        divisor = _avg_divisor(
            x.shape, phases.outs, kernel_size, stride, padding, count_include_pad, x.dtype
        )
        out /= divisor
        ctx.phases, ctx.divisor = phases, divisor
        return out

    @staticmethod
    def backward(ctx, grad):
        phases = ctx.phases
        share = grad / ctx.divisor

        def add_taps(planes: np.ndarray, lo: int, hi: int) -> None:
            for t in range(len(phases.taps)):
                phases.tap(planes, t)[...] += share[:, lo:hi]

        return phases.gradient(add_taps, grad.dtype)


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
