"""Pooling kernels for 1, 2 or 3 spatial dimensions (NC[D]HW shapes).

Pooling regroups the padded input by stride phase and reduces over the kernel offsets, one slice
per offset, so nothing the size of the windows is ever materialised; a channels-last input needs
no regrouping (``_LastTaps``). Padding is a tuple of ``(before, after)`` pairs per spatial
dimension, as for convolution, whose window helpers these kernels share.
"""

from __future__ import annotations

import itertools

import numpy as np

from ..parallel import COMPILED_WORK_RATIO, split
from ..tensor import Tensor
from . import jit
from .conv import Pairs, _interior, _out_size, _reach, _tap
from .function import Function
from .layout import as_nchw, is_channels_last, pad_last
from .scratch import scratch

# below this row length a row-major input is max-pooled channels last (``_separable_max``)
_SHORT_ROWS = 64


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
    riding along as the inner axis; its output is channels last too. So is a row-major 2-d
    input's with short rows (``_SHORT_ROWS``), copied to channels last first: numpy's loops
    along rows of 7-28 pixels cost more than the copy (GoogLeNet's 3x3 pools after its
    concatenations at batch 1: 192@28 559 -> 197 us, 480@14 734 -> 129; batch 8 192@28 3.6 ->
    2.5 ms), where along rows of 112 the copy is the larger cost (1.1 -> 1.4 ms)."""
    if x.ndim == 4 and x.shape[3] < _SHORT_ROWS and x.shape[1] > 1 and not is_channels_last(x):
        x = as_nchw(np.ascontiguousarray(x.transpose(0, 2, 3, 1)))
    compiled = _max_compiled(x, kernel, stride, padding, dilation, outs, lowest)
    if compiled is not None:
        return compiled
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


def _max_compiled(x, kernel, stride, padding, dilation, outs, lowest) -> np.ndarray | None:
    """``_separable_max`` of a 2-d channels-last float input by a compiled kernel (once numba
    is loaded; 2x2 and 3x3 windows without dilation, ``_MAX_KERNELS``), its output channels
    last; None for other inputs. ResNet's 3x3/2 pool of 64@112 at batch 1: ~350 us in
    numpy's passes."""
    if x.ndim != 4 or x.dtype not in (np.float32, np.float64) or not is_channels_last(x):
        return None
    found = _MAX_KERNELS.get(tuple(kernel)) if tuple(dilation) == (1, 1) else None
    kernel_fn = None if found is None else jit.compiled_if_loaded(found)
    if kernel_fn is None or 0 in outs:
        return None
    n, c = x.shape[:2]
    source = x.transpose(0, 2, 3, 1)  # n h w c, C-contiguous
    out = np.empty((n, *outs, c), dtype=x.dtype)
    geometry = (*stride, padding[0][0], padding[1][0], x.dtype.type(lowest))

    def rows(lo: int, hi: int) -> None:
        kernel_fn(source, out, lo, hi, *geometry)

    split(rows, n * outs[0], out.size * kernel[0] * kernel[1] // COMPILED_WORK_RATIO)
    return as_nchw(out)


@jit.helper
def _max_rows(x, out, start, stop, sh, sw, top, left, lowest, kh, kw) -> None:
    """The maximum of each ``kh kw`` window for output rows ``start:stop`` of all samples
    (row ``u`` is sample ``u // oh``, row ``u % oh``), ``x`` ``n h w c`` and ``out`` ``n oh ow
    c``; ``kh`` and ``kw`` are constants of the kernel calling this, so the taps unroll inside
    the loop over channels. Windows reaching past the input skip those taps (one tap at a time,
    ``lowest`` for a window with none). A NaN in a window gives NaN, as numpy's ``maximum``
    (inside, a flag beside a plain maximum: one max instruction a tap, where a NaN-keeping
    select took four, 163 against 95 us for ResNet's pool on one thread); among equal values
    the first tap's stays, as PyTorch's."""
    h, w = x.shape[1], x.shape[2]
    oh, ow = out.shape[1], out.shape[2]
    # the output columns whose windows lie inside the input's columns
    first = min(ow, max(0, -(-left // sw)))
    last = max(first, min(ow, (w - kw + left) // sw + 1))
    for unit in range(start, stop):
        sample, y = unit // oh, unit % oh
        image, row = x[sample], y * sh - top
        rows_inside = row >= 0 and row + kh <= h
        for col in range(ow):
            target, q = out[sample, y, col], col * sw - left
            if rows_inside and first <= col < last:
                for k in range(target.shape[0]):
                    m, nan = image[row, q, k], False
                    for i in range(kh):
                        for j in range(kw):
                            v = image[row + i, q + j, k]
                            m = v if v > m else m  # one max instruction
                            nan |= v != v
                    target[k] = np.nan if nan else m
                continue
            target[:] = lowest
            seen = False
            for i in range(kh):
                for j in range(kw):
                    r, p = row + i, q + j
                    if r < 0 or r >= h or p < 0 or p >= w:
                        continue
                    source = image[r, p]
                    for k in range(target.shape[0]):
                        m, v = target[k], source[k]
                        target[k] = v if not seen else (m if (m >= v) | (m != m) else v)
                    seen = True


def _max_2x2(x, out, start, stop, sh, sw, top, left, lowest) -> None:
    _max_rows(x, out, start, stop, sh, sw, top, left, lowest, 2, 2)


def _max_3x3(x, out, start, stop, sh, sw, top, left, lowest) -> None:
    _max_rows(x, out, start, stop, sh, sw, top, left, lowest, 3, 3)


# (kh, kw) -> its compiled max-pool kernel
_MAX_KERNELS = {(2, 2): _max_2x2, (3, 3): _max_3x3}


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

    def padded(self, x: np.ndarray, value) -> np.ndarray:
        """``x`` as ``n H W c`` padded with ``value``: a view of a channels-last ``x`` when there
        is nothing to pad (DenseNet's 2x2 transitions had copied their whole input first), else
        a copy in the scratch slot "pool padded"."""
        if is_channels_last(x) and not any(lo or hi for lo, hi in self.padding):
            return x.transpose(0, 2, 3, 1)
        padded = scratch("pool padded", self.padded_shape, x.dtype)
        pad_last(padded, x, self.padding, value)
        return padded

    def tap(self, padded: np.ndarray, t: int) -> np.ndarray:
        """Tap ``t`` of every window: ``n H W c -> n j k c``."""
        return padded[(slice(None), *self.taps[t])]

    def interior(self, padded: np.ndarray) -> np.ndarray:
        """The unpadded input inside ``padded``, as ``n c h w``."""
        return as_nchw(padded)[_interior(self.shape, self.padding)]

    def gradient(self, add_taps, dtype) -> np.ndarray:
        """The input gradient (``_Phases.gradient`` in this layout), from ``add_taps(part, lo,
        hi)`` adding the output gradient of samples ``lo:hi`` into ``part``, their zeroed
        padded gradient; split over samples, answered ``n c h w`` over channels-last memory."""
        padded = np.empty(self.padded_shape, dtype=dtype)

        def samples(lo: int, hi: int) -> None:
            part = padded[lo:hi]
            part[...] = 0
            add_taps(part, lo, hi)

        split(samples, len(padded), 2 * padded.size)
        return self.interior(padded)


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
            g = grad.transpose(0, 2, 3, 1)

            def add_samples(part: np.ndarray, lo: int, hi: int) -> None:
                tapped = [taps.tap(part, t) for t in range(len(taps.taps))]
                _add_to_winners(g[lo:hi], winner[lo:hi], tapped)

            return taps.gradient(add_samples, grad.dtype)

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
    padded = taps.padded(x, lowest)
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
    """``n c i... -> n c j...``: the mean of each window, with PyTorch's divisor. A 2-d
    channels-last input is pooled in its own layout (``_LastTaps``), its output channels last:
    through the phase planes it came out row-major, and every layer after it took row-major
    paths (DenseNet's transitions: its blocks at 28x28 and below ran row-major)."""

    name = "AvgPool2DBackward0"

    @staticmethod
    def forward(ctx, x, *, kernel_size, stride, padding, ceil_mode, count_include_pad):
        ones = (1,) * len(kernel_size)
        if len(kernel_size) == 2 and is_channels_last(x):
            taps = _LastTaps(x.shape, kernel_size, stride, padding, ones, ceil_mode)
            divisor = _avg_divisor(
                x.shape, taps.outs, kernel_size, stride, padding, count_include_pad, x.dtype
            )
            ctx.phases, ctx.divisor = taps, divisor
            return _avg_pool_last(x, taps, divisor)
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
        if isinstance(phases, _LastTaps):
            g = share.transpose(0, 2, 3, 1)

            def add_samples(part: np.ndarray, lo: int, hi: int) -> None:
                for t in range(len(phases.taps)):
                    phases.tap(part, t)[...] += g[lo:hi]

            return phases.gradient(add_samples, share.dtype)

        def add_taps(planes: np.ndarray, lo: int, hi: int) -> None:
            for t in range(len(phases.taps)):
                phases.tap(planes, t)[...] += share[:, lo:hi]

        return phases.gradient(add_taps, grad.dtype)


def _avg_pool_last(x: np.ndarray, taps: _LastTaps, divisor: np.ndarray) -> np.ndarray:
    """The mean of each window of a channels-last ``x``, channels last (the taps added in the
    phase planes' order, so the same values), split over output rows."""
    padded = taps.padded(x, 0)
    out = np.empty((x.shape[0], *taps.outs, x.shape[1]), dtype=x.dtype)
    per_pixel = divisor[..., None]  # j k -> j k 1, against n j k c

    def rows(lo: int, hi: int) -> None:
        part = out[:, lo:hi]
        np.copyto(part, taps.tap(padded, 0)[:, lo:hi])
        for t in range(1, len(taps.taps)):
            part += taps.tap(padded, t)[:, lo:hi]
        part /= per_pixel[lo:hi]

    split(rows, taps.outs[0], 2 * padded.size)
    return as_nchw(out)


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
