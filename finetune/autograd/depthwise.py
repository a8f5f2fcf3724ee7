"""Depthwise 2-d convolution (``groups == in_channels``, any channel multiplier), channels last.

A depthwise convolution is a sum over its kernel taps of a shifted, strided slice of the padded
input times one weight per channel: no im2col and no matrix product. In channels-last memory
(``n h w c``) the windows of a block of output rows are one strided view, ``(rows, ow c, kh,
kw)`` (for a unit horizontal stride the ``ow c`` axes are one contiguous run) or ``(rows, ow, c,
kh, kw)``, and one ``einsum`` contracts it with the per-channel weights (repeated along a row,
``ow c``, so its inner loop runs the whole row): each output is read and written once per tap
in cache, with no temporary, where a multiply and an add per tap over whole arrays took twice
the time (ConvNeXt's 7x7 at batch 1: 4.3 against 2.1 ms). Blocks of rows are shared out over
threads (numpy's einsum releases the GIL).

The weight gradient is the same view contracted with the output gradient, per block, the
blocks' partial sums added in a fixed order (the result does not depend on the thread count).
The input gradient splits the input pixels by stride phase: each phase is a unit-stride
correlation of the padded output gradient with the taps that reach it, turned around (for a
stride of 1, the whole rotated kernel), by the same kind of ``einsum``, so it neither multiplies
zeros (as a zero-stuffed gradient would) nor adds tap by tap (a multiply and an add per tap over
whole arrays, twice the time). Outputs and input gradients are channels last, whatever the
input's layout; 1-d, 3-d and grouped convolutions with more than one channel per group keep the
im2col path of ``conv.py``.

With numba installed the forward runs compiled instead (``_correlate_compiled``, see ``jit``):
the same sum over taps as plain loops reading the unpadded channels-last input, 2-4x faster
and without the padded copy; so does a unit stride's input gradient (the same correlation
with the kernel turned around). The common kernels (3x3 and 5x5, horizontal stride 1 or 2, no
dilation or channel multiplier) have one compiled kernel each, four output pixels at a time
with the taps unrolled (``_blocked_rows``): 1.3-2.7x the kernel for any shape, the same values;
a ReLU or clip after the layer is applied as each block is written. On rows of 56 pixels or
more a 3x3 kernel of unit horizontal stride does four output rows at a time instead, one loop
along the rows' channels with the weights tiled along a row (``_four_rows``; a frozen weight
keeps them tiled, ``conv._kept_weights``).
Strided input gradients and the weight gradient keep the numpy kernels.
"""

from __future__ import annotations

import itertools
import math

import numpy as np

from ..parallel import COMPILED_WORK_RATIO, MIN_WORK_PER_THREAD, split
from . import jit, piecewise
from .layout import as_nchw, pad_last
from .scratch import scratch

# below this many channels a strided convolution pairs up input columns (see ``_correlate``)
_SUPER_PIXEL_CHANNELS = 128
# a 3x3 kernel of unit horizontal stride does four output rows at a time along whole rows
# (``_four_rows``) from this output width: alone, 0.46-0.78x the pixel blocks' time at 56 and
# 112 (16@112 the best), 0.9-1.1x at 28, up to 1.24x at 14 (240@14 at batch 1); a 5x5 kernel's
# 40 input streams ran 2-2.9x slower at every width
_FOUR_ROWS_WIDTH = 56
# output elements per block of rows: enough blocks for the threads to share, few enough that a
# block's Python overhead (~10 us) stays small against its work
_BLOCK_ELEMENTS = 1 << 15


def _rows_per_block(rows: int, row_elements: int, samples: int, work: int) -> int:
    """Rows per block: about ``_BLOCK_ELEMENTS`` elements, and at least four blocks in all when
    the ``work`` is worth threads and the rows allow, so that two threads can balance (a small
    layer is one block per sample: each block costs an ``einsum`` call)."""
    step = max(1, _BLOCK_ELEMENTS // row_elements)
    if samples < 4 and work >= 2 * MIN_WORK_PER_THREAD:
        step = min(step, max(1, -(-rows * samples // 4)))
    return step


def _windows(xp: np.ndarray, sample: int, r0: int, r1: int, outs, kernel, stride, dilation, flat):
    """The windows of output rows ``r0:r1`` in the padded ``n H W o`` input, a read-only view:
    ``(rows, ow o, kh, kw)`` when ``flat`` (the horizontal stride must be 1), else ``(rows, ow,
    o, kh, kw)``."""
    (sh, sw), (dh, dw), ow = stride, dilation, outs[1]
    base = xp[sample, r0 * sh :]
    s_row, s_col, s_chan = base.strides
    if flat:
        shape = (r1 - r0, ow * xp.shape[3], *kernel)
        strides = (sh * s_row, s_chan, dh * s_row, dw * s_col)
    else:
        shape = (r1 - r0, ow, xp.shape[3], *kernel)
        strides = (sh * s_row, sw * s_col, s_chan, dh * s_row, dw * s_col)
    return np.lib.stride_tricks.as_strided(base, shape, strides, writeable=False)


def _super_pixels(xp, weights, stride, dilation) -> tuple:
    """A horizontal stride ``s`` as a unit stride over super-pixels of ``s`` input columns:
    ``n H W o -> n H (W/s) (s o)``, the tap at column ``s X + j d`` being part ``(j d) % s`` of
    super-pixel ``X + (j d) // s``; the weights ``kh kw o -> kh Q (s o)``, zero where no tap
    falls. Each output then sums ``s`` parts of one flat correlation: a few more products (4
    instead of 3 per row of a 3x3 kernel), but numpy's inner loops run whole rows, not ``o``
    channels (MobileNet's 24-channel stride-2 layers: 0.45 against 1.2 ms at batch 8)."""
    n, hp, wp, o = xp.shape
    kh, kw = weights.shape[:2]
    s, d = stride[1], dilation[1]
    parts = np.zeros((kh, (kw - 1) * d // s + 1, s, o), dtype=weights.dtype)
    for j in range(kw):
        parts[:, j * d // s, j * d % s] = weights[:, j]
    return xp.reshape(n, hp, wp // s, s * o), parts.reshape(*parts.shape[:2], s * o)


def _rows_of(out: np.ndarray, lo: int, hi: int, blocks: int, step: int) -> np.ndarray:
    """The output rows of units ``lo:hi`` (unit = sample, block of ``step`` rows), one
    contiguous ``rows ow o`` view of the ``n oh ow o`` output."""
    n, oh = out.shape[:2]
    rows = out.reshape(n * oh, *out.shape[2:])
    first = (lo // blocks) * oh + (lo % blocks) * step
    last = ((hi - 1) // blocks) * oh + min(oh, ((hi - 1) % blocks + 1) * step)
    return rows[first:last]


def _correlate(xp, weights, out, stride, dilation, bias=None, epilogue=None) -> None:
    """``out[n, y, x, o] = sum_ij xp[n, y s + i d, x s + j d, o] w[i, j, o] (+ bias[o])``:
    ``xp`` padded ``n H W o``, ``weights`` ``kh kw o``, ``out`` ``n oh ow o`` (C-contiguous);
    ``epilogue(rows)`` then changes each thread turn's rows in place while they are in cache."""
    n, oh, ow, o = out.shape
    work = out.size * math.prod(weights.shape[:2])
    parts = 1
    if stride[1] > 1 and o < _SUPER_PIXEL_CHANNELS and xp.shape[2] % stride[1] == 0:
        parts = stride[1]
        xp, weights = _super_pixels(xp, weights, stride, dilation)
        stride, dilation = (stride[0], 1), (dilation[0], 1)
    kernel = weights.shape[:2]
    flat = stride[1] == 1
    if flat:
        weights = np.tile(weights, (1, 1, ow))  # kh kw (ow o)
        spec = "rkij,ijk->rk"
    else:
        spec = "rwcij,ijc->rwc"
    step = _rows_per_block(oh, ow * o, n, work)
    blocks = -(-oh // step)

    def run(lo: int, hi: int) -> None:
        for unit in range(lo, hi):
            sample, block = divmod(unit, blocks)
            r0, r1 = block * step, min(oh, (block + 1) * step)
            target = out[sample, r0:r1]
            view = _windows(xp, sample, r0, r1, (oh, ow), kernel, stride, dilation, flat)
            if parts > 1:
                summed = scratch("super pixels", (r1 - r0, ow, parts, o), out.dtype)
                np.einsum(spec, view, weights, out=summed.reshape(r1 - r0, -1))
                np.add(summed[:, :, 0], summed[:, :, 1], out=target)
                for part in range(2, parts):
                    np.add(target, summed[:, :, part], out=target)
            else:
                if flat:
                    target = target.reshape(r1 - r0, ow * o)
                np.einsum(spec, view, weights, out=target)
            if bias is not None:
                np.add(target.reshape(-1, o), bias, out=target.reshape(-1, o))
        if epilogue is not None:
            epilogue(_rows_of(out, lo, hi, blocks, step))

    split(run, n * blocks, work)


def _correlate_rows(x, weights, bias, out, r0, r1, sh, sw, dh, dw, top, left, multiplier):
    """Output rows ``r0:r1`` of one sample, compiled by ``jit``: ``out[y, x, o] = sum_ij
    x[y sh + i dh - top, x sw + j dw - left, o // multiplier] w[i, j, o] (+ bias[o])``, taps
    outside the input skipped (no padded copy). ``x`` ``h w c`` and ``out`` ``oh ow o``,
    C-contiguous; ``bias`` is one output row's, ``ow o`` values (each pixel's ``o`` in turn),
    or none. ``weights`` is ``kh kw (ow o)`` (each tap's ``o`` weights repeated along a row)
    for a unit horizontal stride and multiplier, where a tap is one multiply-add over a
    contiguous run of the row, ``ow o`` long (per pixel, 32 channels were 3.4 GMAC/s), and up
    to three taps of a kernel row share one pass over the columns they all reach (the output
    row is then read and written once per three taps: MobileNetV2's 3x3 144@56 at batch 8 3.0
    -> 2.3 ms, a pass per tap of all nine taps measured no better, too many streams); else ``kh
    kw o``, one pixel at a time. Every output adds its taps in the same order (kernel rows,
    then columns) either way."""
    kh, kw = weights.shape[:2]
    h, w = x.shape[0], x.shape[1]
    ow, o = out.shape[1], out.shape[2]
    flat_in, flat_out = x.reshape(h, -1), out.reshape(out.shape[0], -1)
    rows_of_taps = sw == 1 and multiplier == 1
    for y in range(r0, r1):
        target = flat_out[y]
        if bias.shape[0]:
            target[:] = bias
        else:
            target[:] = 0
        for i in range(kh):
            row = y * sh + i * dh - top
            if row < 0 or row >= h:
                continue
            source = flat_in[row]
            if rows_of_taps:
                # slices, so that every index below is a loop counter from 0: numba then
                # drops its negative-index checks and the loops vectorise
                for j0 in range(0, kw, 3):
                    taps = min(3, kw - j0)
                    # the output columns that all the group's taps reach: one pass
                    lo = max(0, left - j0 * dw)
                    hi = min(ow, w + left - (j0 + taps - 1) * dw)
                    if lo < hi:
                        a, b = lo * o, hi * o
                        into = target[a:b]
                        s = (j0 * dw - left) * o
                        s0, w0 = source[a + s : b + s], weights[i, j0, a:b]
                        if taps == 1:
                            for t in range(into.shape[0]):
                                into[t] += s0[t] * w0[t]
                        else:
                            s += dw * o
                            s1, w1 = source[a + s : b + s], weights[i, j0 + 1, a:b]
                            if taps == 2:
                                for t in range(into.shape[0]):
                                    into[t] = (into[t] + s0[t] * w0[t]) + s1[t] * w1[t]
                            else:
                                s += dw * o
                                s2, w2 = source[a + s : b + s], weights[i, j0 + 2, a:b]
                                for t in range(into.shape[0]):
                                    v = (into[t] + s0[t] * w0[t]) + s1[t] * w1[t]
                                    into[t] = v + s2[t] * w2[t]
                    else:
                        lo = hi = ow
                    # the columns only some of them reach: tap by tap, in order
                    for j in range(j0, j0 + taps):
                        first = max(0, left - j * dw)
                        last = min(ow, w + left - j * dw)
                        shift = (j * dw - left) * o
                        for c0, c1 in ((first, min(lo, last)), (max(hi, first), last)):
                            if c0 >= c1:
                                continue
                            into = target[c0 * o : c1 * o]
                            src = source[c0 * o + shift : c1 * o + shift]
                            tap = weights[i, j, c0 * o : c1 * o]
                            for t in range(into.shape[0]):
                                into[t] += src[t] * tap[t]
                continue
            for j in range(kw):
                # the output columns whose tap j falls inside the input
                first = max(0, -((j * dw - left) // sw))
                last = min(ow, (w - 1 - j * dw + left) // sw + 1)
                if first >= last:
                    continue
                tap = weights[i, j]
                for col in range(first, last):
                    at = (col * sw + j * dw - left) * (o // multiplier)
                    into = target[col * o : (col + 1) * o]
                    src = source[at : at + o // multiplier]
                    if multiplier == 1:
                        for k in range(o):
                            into[k] += src[k] * tap[k]
                    else:
                        for k in range(o):
                            into[k] += src[k // multiplier] * tap[k]


@jit.helper
def _blocked_rows(
    x, weights, bias, out, r0, r1, sh, top, left, bounds, kh, kw, sw, tiled, rows_bias
):
    """Output rows ``r0:r1`` of one sample, as ``_correlate_rows`` computes them for a unit
    dilation and channel multiplier, ``x`` ``h w c``, ``weights`` ``kh kw c``, ``bias`` ``c``
    (zeros for none), all C-contiguous; ``kh``, ``kw`` and ``sw`` are constants of the kernel
    calling this (``_BLOCKED``), so the loops over the taps unroll. Four neighbouring output
    pixels at a time, the channels innermost: each channel's four sums stay in registers over
    all the taps, and each input vector loaded serves up to four of them (2-3x the per-tap
    passes of ``_correlate_rows``, which load and store the sums at every tap). Pixels with a
    tap outside the input are summed one at a time, those taps skipped. With ``tiled``, the
    weights along a whole output row (``kh kw (ow c)``, a unit horizontal stride only; empty
    for none) and ``rows_bias`` the bias so (``ow c``), four output rows whose taps all fall
    inside the input are done at once by ``_four_rows`` instead. Each output adds its taps in
    ``_correlate_rows``' order, so all give the same values. The pixels are then held within
    ``bounds``, ``(lo, hi, inclusive)``, while in cache: a ReLU or a clip after the convolution
    (NaN kept; at ``lo`` itself ``lo`` when ``inclusive``, as a ReLU turns -0.0 into 0.0 like
    numpy's maximum); infinite bounds for none, and no pass."""
    h, w = x.shape[0], x.shape[1]
    ow = out.shape[1]
    # the output columns whose taps all fall inside the input; four at a time from ``first``
    first = min(ow, max(0, -(-left // sw)))
    last = max(first, min(ow, (w - kw + left) // sw + 1))
    blocked = first + (last - first) // 4 * 4
    y = r0
    while y < r1:
        base = y * sh - top
        if tiled.shape[0] and y + 4 <= r1 and base >= 0 and base + 3 * sh + kh <= h:
            _four_rows(x, tiled, rows_bias, out, y, base, sh, left, kh, kw, first, last)
            rows, done, end = 4, first, last
        else:
            rows, done, end = 1, 0, 0
            if base >= 0 and base + kh <= h:
                done, end = first, blocked
            for col in range(done, end, 4):
                s = col * sw - left
                o0, o1, o2, o3 = out[y, col], out[y, col + 1], out[y, col + 2], out[y, col + 3]
                for k in range(out.shape[2]):
                    a0 = a1 = a2 = a3 = bias[k]
                    for i in range(kh):
                        for j in range(kw):
                            t = weights[i, j, k]
                            a0 += x[base + i, s + j, k] * t
                            a1 += x[base + i, s + sw + j, k] * t
                            a2 += x[base + i, s + 2 * sw + j, k] * t
                            a3 += x[base + i, s + 3 * sw + j, k] * t
                    o0[k], o1[k], o2[k], o3[k] = a0, a1, a2, a3
        # the other columns of the rows, one pixel at a time: one call site, as numba inlines it
        others = ow - (end - done)
        for e in range(rows * others):
            q, col = e // others, e % others
            col = col if col < done else col + end - done
            s = col * sw - left
            _checked_pixel(x, weights, bias, out[y + q, col], base + q * sh, s, kh, kw)
        _hold(out[y : y + rows].reshape(-1), bounds)  # the rows just written, in cache
        y += rows


@jit.helper
def _four_rows(x, tiled, rows_bias, out, y, base, sh, left, kh, kw, first, last):
    """Output rows ``y:y+4`` of one sample (input rows from ``base``, all inside), columns
    ``first:last`` (all taps inside), for a unit horizontal stride: one loop over the rows'
    ``(column, channel)`` values, the four rows' sums in registers over all the taps, weights
    and bias tiled along the row (``_blocked_rows``). Few channels leave the four-pixel blocks
    short loops that cost more to enter than to run (16 channels at 112x112: 0.46-0.62x their
    time), and whole rows stream in from memory where the blocks hop along three rows.
    Indices are unsigned: numba then adds no negative-index checks, and the loop vectorises."""
    h, c = x.shape[0], x.shape[2]
    flat_in, flat_out = x.reshape(h, -1), out.reshape(out.shape[0], -1)
    start, stop = first * c, last * c
    row, step, channels = np.uint64(base), np.uint64(sh), np.uint64(c)
    shift = np.uint64(start - left * c)  # the first input value tap (0, 0) reads
    o0, o1 = flat_out[y, start:stop], flat_out[y + 1, start:stop]
    o2, o3 = flat_out[y + 2, start:stop], flat_out[y + 3, start:stop]
    b = rows_bias[start:stop]
    for m in range(stop - start):
        v = np.uint64(m)
        a0 = a1 = a2 = a3 = b[v]
        for i in range(kh):
            r = row + np.uint64(i)
            for j in range(kw):
                t = tiled[np.uint64(i), np.uint64(j), np.uint64(start) + v]
                at = shift + v + np.uint64(j) * channels
                a0 += flat_in[r, at] * t
                a1 += flat_in[r + step, at] * t
                a2 += flat_in[r + np.uint64(2) * step, at] * t
                a3 += flat_in[r + np.uint64(3) * step, at] * t
        o0[v], o1[v], o2[v], o3[v] = a0, a1, a2, a3


@jit.helper
def _hold(values, bounds) -> None:
    """``values`` held within ``bounds`` (``_blocked_rows``), in place; nothing when infinite."""
    lo, hi, inclusive = bounds[0], bounds[1], bounds[2] != 0
    if lo > -np.inf or hi < np.inf:
        for k in range(values.shape[0]):
            v = values[k]
            held = hi if v > hi else v
            values[k] = lo if (v < lo) | (inclusive & (v == lo)) else held


@jit.helper
def _blocked_units(
    x, weights, bias, out, start, stop, blocks, step, sh, top, left, bounds, tiled, rows_bias,
    kh, kw, sw,
):  # fmt: skip
    """``_blocked_rows`` for units ``start:stop`` of ``(sample, block of step rows)``,
    ``blocks`` a sample, of ``x`` ``n h w c`` into ``out`` ``n oh ow o``: one call per thread
    turn (a call per block cost ~1-2 us of numba's argument handling each, ~10% of a layer)."""
    oh = out.shape[1]
    for unit in range(start, stop):
        sample, block = unit // blocks, unit % blocks
        r0 = block * step
        r1 = min(oh, r0 + step)
        _blocked_rows(
            x[sample], weights, bias, out[sample], r0, r1, sh, top, left, bounds, kh, kw, sw,
            tiled, rows_bias,
        )  # fmt: skip


@jit.helper
def _checked_pixel(x, weights, bias, target, row, col, kh, kw):
    """One output pixel of ``_blocked_rows`` whose window starts at input ``(row, col)``, taps
    outside the input skipped. Every load is clamped inside and its product added only where
    the tap is inside: the tests do not depend on the channel, so the loop over channels still
    vectorises."""
    h, w = x.shape[0], x.shape[1]
    for k in range(target.shape[0]):
        acc = bias[k]
        for i in range(kh):
            for j in range(kw):
                r, c = row + i, col + j
                product = x[min(max(r, 0), h - 1), min(max(c, 0), w - 1), k] * weights[i, j, k]
                inside = r >= 0 and r < h and c >= 0 and c < w
                acc = acc + product if inside else acc
        target[k] = acc


# one compiled kernel per kernel size and horizontal stride, constants for ``_blocked_rows``;
# ``b``, ``t`` and ``tb`` its ``bias``, ``tiled`` and ``rows_bias``
def _blocked_3x3_s1(x, w, b, out, start, stop, blocks, step, sh, top, left, bounds, t, tb):
    _blocked_units(x, w, b, out, start, stop, blocks, step, sh, top, left, bounds, t, tb, 3, 3, 1)


def _blocked_3x3_s2(x, w, b, out, start, stop, blocks, step, sh, top, left, bounds, t, tb):
    _blocked_units(x, w, b, out, start, stop, blocks, step, sh, top, left, bounds, t, tb, 3, 3, 2)


def _blocked_5x5_s1(x, w, b, out, start, stop, blocks, step, sh, top, left, bounds, t, tb):
    _blocked_units(x, w, b, out, start, stop, blocks, step, sh, top, left, bounds, t, tb, 5, 5, 1)


def _blocked_5x5_s2(x, w, b, out, start, stop, blocks, step, sh, top, left, bounds, t, tb):
    _blocked_units(x, w, b, out, start, stop, blocks, step, sh, top, left, bounds, t, tb, 5, 5, 2)


# (kh, kw, horizontal stride) -> its ``_blocked_rows`` kernel
_BLOCKED = {
    (3, 3, 1): _blocked_3x3_s1,
    (3, 3, 2): _blocked_3x3_s2,
    (5, 5, 1): _blocked_5x5_s1,
    (5, 5, 2): _blocked_5x5_s2,
}


def _compiled_blocks(out_shape, kernel, stride, dilation, multiplier) -> tuple[int, int, bool]:
    """``_correlate_compiled``'s work (``split``'s unit) and rows per block for an ``n oh ow o``
    output, and whether the blocked kernel does four rows at a time (``_four_rows``: a 3x3
    kernel, unit horizontal stride, no dilation or channel multiplier, rows of
    ``_FOUR_ROWS_WIDTH`` pixels or more; blocks of whole fours)."""
    n, oh, ow, o = out_shape
    work = n * oh * ow * o * math.prod(kernel) // COMPILED_WORK_RATIO
    step = _rows_per_block(oh, ow * o, n, work)
    four_rows = (
        tuple(kernel) == (3, 3)
        and stride[1] == 1
        and tuple(dilation) == (1, 1)
        and multiplier == 1
        and ow >= _FOUR_ROWS_WIDTH
        and oh >= 4
    )
    return work, (max(4, step // 4 * 4) if four_rows else step), four_rows


def _correlate_compiled(
    kernel, x, weights, bias, out, stride, dilation, padding, multiplier, epilogue=None,
    tiled=None,
):  # fmt: skip
    """``_correlate_rows`` over blocks of rows of every sample, shared out over threads. An
    ``epilogue`` with a compiled pass of its own for the bias (``with_bias``, as ReLU, clip,
    hard-swish and SiLU have) runs it over the whole output afterwards (a numpy ReLU on each
    thread turn's rows took 35-120 us of MobileNet-sized layers at batch 1, the compiled pass
    ~10); any other runs on each thread turn's rows in place, while they are in cache. The
    blocked kernels hold their sums within a ReLU's or a clip's bounds as they store them
    (``_bounds``), with no pass of its own. ``tiled``: the weights along an output row, ``kh kw
    (ow o)``, when the caller keeps them for the four-row kernel (``row_weights``)."""
    n, oh, ow, o = out.shape
    blocked = bounds = None
    if multiplier == 1 and tuple(dilation) == (1, 1):
        blocked = _BLOCKED.get((*weights.shape[:2], stride[1]))
    if blocked is not None:
        bounds = _bounds(epilogue, out.dtype)
        if bounds is not None:
            epilogue = None  # in the kernel's stores
        else:  # stores as they are; the epilogue runs on each thread turn's rows
            bounds = _bounds(None, out.dtype)
    if epilogue is not None and getattr(epilogue, "with_bias", None) is not None:
        _correlate_compiled(
            kernel, x, weights, None, out, stride, dilation, padding, multiplier, None, tiled
        )
        piecewise.add_bias_rows(out.reshape(-1, o), bias, epilogue)
        return
    x = np.ascontiguousarray(x.transpose(0, 2, 3, 1))  # n h w c: no copy when channels last
    shapes = (out.shape, weights.shape[:2], stride, dilation, multiplier)
    work, step, four_rows = _compiled_blocks(*shapes)
    four_rows = four_rows and blocked is not None
    if blocked is not None:
        kernel = jit.compiled(blocked)
        weights = np.ascontiguousarray(weights)
        bias = np.zeros(o, out.dtype) if bias is None else np.ascontiguousarray(bias, out.dtype)
        if four_rows:  # weights and bias along a whole output row
            tiled = np.tile(weights, (1, 1, ow)) if tiled is None else tiled
            rows_bias = np.tile(bias, ow)
        else:
            tiled, rows_bias = np.zeros((0, 0, 0), out.dtype), bias[:0]
        args = (stride[0], padding[0][0], padding[1][0], bounds, tiled, rows_bias)
    else:
        # the bias along a whole output row, ``ow o``: one copy starts each row (a copy per
        # pixel took longer than the taps: 125 of 281 us for 48 channels at 56x56)
        bias = np.zeros(0, out.dtype) if bias is None else np.tile(bias.astype(out.dtype), ow)
        if stride[1] == 1 and multiplier == 1:
            weights = np.tile(weights, (1, 1, ow))  # kh kw (ow o)
        args = (*stride, *dilation, padding[0][0], padding[1][0], multiplier)
    blocks = -(-oh // step)

    def run(lo: int, hi: int) -> None:
        if blocked is not None:
            kernel(x, weights, bias, out, lo, hi, blocks, step, *args)
        else:
            for unit in range(lo, hi):
                sample, block = divmod(unit, blocks)
                r0, r1 = block * step, min(oh, (block + 1) * step)
                kernel(x[sample], weights, bias, out[sample], r0, r1, *args)
        if epilogue is not None:
            epilogue(_rows_of(out, lo, hi, blocks, step))

    split(run, n * blocks, work)


def _bounds(epilogue, dtype) -> np.ndarray | None:
    """``(lo, hi, inclusive)`` for ``_blocked_rows`` to hold its sums within, in ``dtype``:
    infinite without an epilogue, a ReLU's (``0``, inclusive: -0.0 gives 0.0) or a clip's;
    None for any other epilogue (it then runs as before)."""
    lo, hi, inclusive = -np.inf, np.inf, 0
    if isinstance(epilogue, piecewise.Activation) and epilogue.kind == piecewise.RELU:
        lo, inclusive = 0, 1
    elif isinstance(epilogue, piecewise.Activation) and epilogue.kind == piecewise.CLIP:
        lo = -np.inf if epilogue.lo is None else epilogue.lo
        hi = np.inf if epilogue.hi is None else epilogue.hi
    elif epilogue is not None:
        return None
    return np.array([lo, hi, inclusive], dtype=dtype)


def _phases(size: int, k: int, s: int, d: int, pad: int, out: int) -> tuple:
    """Along one axis of the input gradient: for each stride phase ``p`` (input pixels ``p + s
    Y``), the taps that read it, latest first, the padded output-gradient index of their window
    at ``Y = 0`` and the window's dilation; and the ``(before, after)`` zeros the output
    gradient needs for every window to stay inside it."""
    step = d // math.gcd(s, d)  # output pixels between successive taps of one phase
    phases, low, high = [], 0, 0
    for p in range(min(s, size)):
        taps = [i for i in range(k) if (p + pad - i * d) % s == 0][::-1]
        first = (p + pad - taps[0] * d) // s if taps else 0
        count = len(range(p, size, s))
        if taps:
            low = max(low, -first)
            high = max(high, count - 1 + first + (len(taps) - 1) * step - (out - 1))
        phases.append((p, taps, first, step))
    return [(p, taps, first + low, step) for p, taps, first, step in phases], (low, high)


class DepthwisePlan:
    """The shapes of one 2-d depthwise convolution, ``n c h w, (c m) 1 kh kw -> n (c m) oh ow``,
    and its three kernels. ``padding`` is ``((top, bottom), (left, right))``; ``outs`` the output
    size (the caller's rule)."""

    def __init__(self, x_shape, w_shape, stride, padding, dilation, outs) -> None:
        self.x_shape, self.w_shape = tuple(x_shape), tuple(w_shape)
        self.stride, self.padding, self.dilation, self.outs = stride, padding, dilation, outs
        n, c, h, w = self.x_shape
        self.multiplier = self.w_shape[0] // c
        self.kernel = self.w_shape[2:]
        self.padded = (h + sum(padding[0]), w + sum(padding[1]))
        # whether the compiled forward does four rows at a time (``_four_rows``)
        out_shape = (n, *outs, self.w_shape[0])
        args = (self.kernel, stride, dilation, self.multiplier)
        self.along_rows = _compiled_blocks(out_shape, *args)[2]

    def _padded(self, x: np.ndarray) -> np.ndarray:
        """``x`` padded, channels last, each channel repeated ``multiplier`` times:
        ``n c h w -> n H W (c m)``; the width rounded up to whole strides with zeros (for
        ``_super_pixels``)."""
        n, c = self.x_shape[:2]
        width = -(-self.padded[1] // self.stride[1]) * self.stride[1]
        xp = scratch("padded", (n, self.padded[0], width, c), x.dtype)
        pad_last(xp, x, self.padding)
        if self.multiplier > 1:
            xp = np.repeat(xp, self.multiplier, axis=3)
        return xp

    def _tap_weights(self, weight: np.ndarray) -> np.ndarray:
        """``o 1 kh kw -> kh kw o``."""
        return np.ascontiguousarray(weight.reshape(self.w_shape[0], -1).T).reshape(*self.kernel, -1)

    def row_weights(self, weight: np.ndarray) -> np.ndarray:
        """The weights along an output row, ``kh kw (ow o)``, as the four-row kernel reads them
        (a caller keeps them for a frozen weight: 9 x 56 x 72 values took ~30 us a call)."""
        return np.tile(self._tap_weights(weight), (1, 1, self.outs[1]))

    def forward(
        self,
        x: np.ndarray,
        weight: np.ndarray,
        bias: np.ndarray | None,
        epilogue=None,
        tiled: np.ndarray | None = None,
    ) -> np.ndarray:
        """``n c h w -> n o oh ow``, stored channels last; ``epilogue``: see ``conv.epilogue``;
        ``tiled``: ``row_weights(weight)`` when the caller keeps them."""
        n, o = self.x_shape[0], self.w_shape[0]
        out = np.empty((n, *self.outs, o), dtype=x.dtype)
        weights = self._tap_weights(weight)
        kernel = jit.compiled(_correlate_rows)
        if kernel is not None:
            _correlate_compiled(
                kernel, x, weights, bias, out, self.stride, self.dilation, self.padding,
                self.multiplier, epilogue, tiled,
            )  # fmt: skip
        else:
            _correlate(self._padded(x), weights, out, self.stride, self.dilation, bias, epilogue)
        return as_nchw(out)

    def input_gradient(self, weight: np.ndarray, grad: np.ndarray) -> np.ndarray:
        """``n o oh ow -> n c h w``, stored channels last. Input pixels of one stride phase
        (row ``py + sh Y``, column ``px + sw X``) are read by the taps ``i`` with ``py + top - i
        dh`` a multiple of ``sh`` (and likewise for columns), from output row ``Y + (py + top -
        i dh) / sh``: each phase is a unit-stride correlation of the padded output gradient with
        those taps, turned around (for a stride of 1, the one phase is the whole rotated
        kernel), written straight into the phase's pixels of the input gradient."""
        n, c, h, w = self.x_shape
        o, (sh, sw) = self.w_shape[0], self.stride
        kernel = jit.compiled(_correlate_rows)
        if kernel is not None and self.stride == (1, 1) and self.multiplier == 1:
            return self._input_gradient_compiled(kernel, weight, grad)
        axes = [
            _phases(size, k, s, d, lo, out)
            for size, k, s, d, (lo, _), out in zip(
                (h, w), self.kernel, self.stride, self.dilation, self.padding, self.outs
            )
        ]
        (rows, row_pads), (cols, col_pads) = axes
        gp = scratch(
            "padded",
            (n, self.outs[0] + sum(row_pads), self.outs[1] + sum(col_pads), o),
            grad.dtype,
        )
        pad_last(gp, grad, (row_pads, col_pads))
        weights = self._tap_weights(weight)  # kh kw o
        gx = np.empty((n, h, w, o), dtype=grad.dtype)
        flat = sw == 1
        jobs = []  # (row phase, column phase, window start, window dilation, weights or None)
        for row, col in itertools.product(rows, cols):
            (py, row_taps, row_start, row_step), (px, col_taps, col_start, col_step) = row, col
            sub = None
            if row_taps and col_taps:
                sub = np.ascontiguousarray(weights[np.ix_(row_taps, col_taps)])
                if flat:
                    sub = np.tile(sub, (1, 1, w))
            jobs.append((py, px, (row_start, col_start), (row_step, col_step), sub))
        phase_rows = -(-h // sh)  # rows of the largest phase
        work = gx.size * math.prod(self.kernel)
        step = _rows_per_block(phase_rows, w * o, n * len(jobs), work)
        blocks = -(-phase_rows // step)

        def run(lo: int, hi: int) -> None:
            for unit in range(lo, hi):
                sample, rest = divmod(unit, len(jobs) * blocks)
                job, block = divmod(rest, blocks)
                py, px, start, dilation, sub = jobs[job]
                r0, r1 = block * step, min(len(range(py, h, sh)), (block + 1) * step)
                if r0 >= r1:
                    continue
                target = gx[sample, py + r0 * sh : py + (r1 - 1) * sh + 1 : sh, px::sw]
                if sub is None:
                    target[...] = 0
                    continue
                base = gp[sample, start[0] + r0 :, start[1] :]
                outs = (r1 - r0, target.shape[1])
                view = _windows(
                    base[None], 0, 0, outs[0], outs, sub.shape[:2], (1, 1), dilation, flat
                )
                if flat:
                    np.einsum("rkij,ijk->rk", view, sub, out=target.reshape(outs[0], -1))
                else:
                    np.einsum("rwcij,ijc->rwc", view, sub, out=target)

        split(run, n * len(jobs) * blocks, work)
        if self.multiplier > 1:
            gx = gx.reshape(n, h, w, c, self.multiplier).sum(axis=4)
        return as_nchw(gx)

    def _input_gradient_compiled(self, kernel, weight: np.ndarray, grad: np.ndarray):
        """A unit stride's input gradient is the output gradient correlated with the kernel
        turned around, padded by ``(k - 1) d - pad`` on each side: the forward's compiled
        kernel on ``grad`` (a negative pad just skips more taps)."""
        n, c, h, w = self.x_shape
        (kh, kw), (dh, dw) = self.kernel, self.dilation
        turned = self._tap_weights(weight)[::-1, ::-1]
        gx = np.empty((n, h, w, c), dtype=grad.dtype)
        padding = tuple(
            ((k - 1) * d - lo, 0) for k, d, (lo, _) in zip((kh, kw), (dh, dw), self.padding)
        )
        _correlate_compiled(kernel, grad, turned, None, gx, (1, 1), self.dilation, padding, 1)
        return as_nchw(gx)

    def weight_gradient(self, x: np.ndarray, grad: np.ndarray) -> np.ndarray:
        """``o 1 kh kw``: the windows of each block of output rows contracted with its output
        gradient, the blocks' partial sums added in a fixed order."""
        n, o, (oh, ow) = self.x_shape[0], self.w_shape[0], self.outs
        xp = self._padded(x)
        g = np.ascontiguousarray(grad.transpose(0, 2, 3, 1))  # n oh ow o
        work = 2 * g.size * math.prod(self.kernel)
        step = _rows_per_block(oh, ow * o, n, work)
        blocks = -(-oh // step)
        partial = np.empty((n * blocks, *self.kernel, o), dtype=grad.dtype)
        flat = self.stride[1] == 1

        def run(lo: int, hi: int) -> None:
            for unit in range(lo, hi):
                sample, block = divmod(unit, blocks)
                r0, r1 = block * step, min(oh, (block + 1) * step)
                view = _windows(
                    xp, sample, r0, r1, self.outs, self.kernel, self.stride, self.dilation, flat
                )
                rows = g[sample, r0:r1]
                if flat:
                    sums = scratch("tap sums", (*self.kernel, ow * o), grad.dtype)
                    np.einsum("rkij,rk->ijk", view, rows.reshape(r1 - r0, -1), out=sums)
                    sums.reshape(*self.kernel, ow, o).sum(axis=2, out=partial[unit])
                else:
                    np.einsum("rwcij,rwc->ijc", view, rows, out=partial[unit])

        split(run, n * blocks, work)
        dw = partial.sum(axis=0)  # kh kw o
        return np.ascontiguousarray(dw.transpose(2, 0, 1)).reshape(self.w_shape)


def is_depthwise(x_shape, w_shape, groups: int) -> bool:
    """Whether a convolution is 2-d with one group per input channel (and more than one)."""
    return len(x_shape) == 4 and groups > 1 and groups == x_shape[1] and w_shape[1] == 1


def plan(x_shape, w_shape, stride, padding, dilation, groups, outs) -> DepthwisePlan | None:
    """The depthwise plan of a convolution, or None when it is not one."""
    if not is_depthwise(x_shape, w_shape, groups) or math.prod(outs) == 0:
        return None
    return DepthwisePlan(x_shape, w_shape, stride, padding, dilation, outs)
