"""Grouped 3x3 convolutions with several input channels per group (RegNet's, ResNeXt's): the
forward, compiled.

im2col makes one product per group, ``(opg) x (ipg 3 3) @ (ipg 3 3) x (pixels)``; with RegNetY's
eight channels per group OpenBLAS ran those at 5-11 GMAC/s on two threads, and a compiled loop
over a group's eight output channels did no better (numba keeps LLVM's SLP vectoriser off, and
eight is too short a loop for the loop vectoriser). Here each output channel is a sum over its
group's input channels of a 3x3 stencil over that channel's plane. The input is laid out once
as zero-padded planes split by stride phase, ``c s s (n hq wq)``, the samples' planes end to end
(``_prepare``): every tap of every output pixel is then one contiguous run of a plane at a fixed
offset, and the loop over an output channel's pixels (all samples' rows laid end to end ``wq``
apart, the few columns past each row's end and the rows between samples computed and dropped)
multiplies and adds nine such runs, which LLVM vectorises: 22-30 GMAC/s on one thread. The rows
are then cropped into the channels-last output. Against im2col on two threads: 0.53-0.87x the
time for RegNetY's stride-1 layers at batch 1, 0.39-0.91x for all at batch 8; a strided layer
of one sample stays on im2col (its phase split of a channels-last input cost more than the
stencils saved: 0.98-1.27x). Only the forward: gradients keep the im2col path of ``conv.py``.
"""

from __future__ import annotations

import numpy as np

from ..parallel import COMPILED_WORK_RATIO, split
from . import jit, piecewise
from .layout import as_nchw
from .scratch import scratch

_STRIDES = (1, 2)


class GroupedPlan:
    """The geometry of one grouped 3x3 convolution: the stride ``s``, the phase planes' rows
    ``hq`` and columns ``wq`` (enough for the last output pixel's taps), and the pads."""

    def __init__(self, x_shape, w_shape, stride, padding, outs) -> None:
        self.x_shape, self.w_shape, self.outs = tuple(x_shape), tuple(w_shape), tuple(outs)
        self.s = stride[0]
        (self.top, _), (self.left, _) = padding
        reach = 2 // self.s  # the phase rows (and columns) a window spans past its first
        self.hq, self.wq = outs[0] + reach, outs[1] + reach
        self.plane = self.hq * self.wq  # one sample's; the samples' planes follow each other
        n = self.x_shape[0]
        # the rows of all samples, one run: each sample's output rows start a plane apart
        self.length = (n - 1) * self.plane + outs[0] * self.wq

    def forward(self, x, weight, bias, epilogue=None) -> np.ndarray | None:
        """``n c h w -> n o oh ow`` stored channels last, with the bias and then ``epilogue``
        (``conv.epilogue``); None without the compiled kernel."""
        kernel = jit.compiled(_grouped_3x3)
        if kernel is None or x.dtype not in (np.float32, np.float64):
            return None
        n, c = self.x_shape[:2]
        o, ipg = self.w_shape[:2]
        oh, ow = self.outs
        opg = o // (c // ipg)
        weight = np.ascontiguousarray(weight, dtype=x.dtype)
        bias = np.zeros(o, x.dtype) if bias is None else np.ascontiguousarray(bias, x.dtype)
        # the last tap's run reads a little past the last sample's plane: zeros
        flat = scratch("grouped planes", (c, self.s, self.s, n * self.plane + 2), x.dtype)
        flat[..., n * self.plane :] = 0
        planes = flat[..., : n * self.plane].reshape(c, self.s, self.s, n, self.plane)
        rows = scratch("grouped rows", (o, n * self.plane), x.dtype)
        out = np.empty((n, oh, ow, o), dtype=x.dtype)

        def prepare(lo: int, hi: int) -> None:
            for sample, first, last in _rows_of_samples(lo, hi, self.hq):
                self._prepare(planes[:, :, :, sample], x[sample], first, last)

        def convolve(lo: int, hi: int) -> None:
            kernel(flat, weight, bias, rows, self.length, lo, hi, self.wq, self.s, ipg, opg)

        def crop(lo: int, hi: int) -> None:
            for sample, first, last in _rows_of_samples(lo, hi, oh):
                grid = rows[:, sample * self.plane :][:, : oh * self.wq].reshape(o, oh, self.wq)
                source = grid[:, first:last, :ow].transpose(1, 2, 0)
                np.copyto(out[sample, first:last], source)

        split(prepare, n * self.hq, planes.size)
        split(convolve, o, self.length * o * ipg * 9 // COMPILED_WORK_RATIO)
        split(crop, n * oh, out.size)
        if epilogue is not None:
            piecewise.add_bias_rows(out.reshape(-1, o), None, epilogue)
        return as_nchw(out)

    def _prepare(self, planes: np.ndarray, x: np.ndarray, lo: int, hi: int) -> None:
        """Rows ``lo:hi`` of one sample's phase planes (``c s s (hq wq)``) from its ``c h w``
        input: plane ``(a, b)`` holds the padded input's pixels ``(r s + a, q s + b)`` at
        ``r wq + q``, zeros where that is padding. Split by rows, not channels: a channels-last
        input's pixels are then read by one thread only (by channels both threads pulled every
        pixel: 964 against 417 us for 48@112 on one thread)."""
        s, h, w = self.s, x.shape[1], x.shape[2]
        for a in range(s):
            # phase rows r0:r1 (columns q0:q1) fall inside the input, from input row r0 s + a - top
            r0 = min(hi, max(lo, -(-(self.top - a) // s)))
            r1 = max(r0, min(hi, (h - 1 + self.top - a) // s + 1))
            for b in range(s):
                q0 = min(self.wq, max(0, -(-(self.left - b) // s)))
                q1 = max(q0, min(self.wq, (w - 1 + self.left - b) // s + 1))
                grid = planes[:, a, b].view()
                grid.shape = (len(grid), self.hq, self.wq)  # raises rather than copy
                grid[:, lo:r0] = 0
                grid[:, r1:hi] = 0
                grid[:, r0:r1, :q0] = 0
                grid[:, r0:r1, q1:] = 0
                if r1 > r0 and q1 > q0:
                    y0, x0 = r0 * s + a - self.top, q0 * s + b - self.left
                    rows = x[:, y0 : y0 + (r1 - r0 - 1) * s + 1 : s]
                    grid[:, r0:r1, q0:q1] = rows[:, :, x0 : x0 + (q1 - q0 - 1) * s + 1 : s]


def _rows_of_samples(lo: int, hi: int, per_sample: int):
    """``(sample, first, last)`` for rows ``lo:hi`` counted over all samples' ``per_sample``."""
    while lo < hi:
        sample, first = divmod(lo, per_sample)
        last = min(per_sample, first + hi - lo)
        yield sample, first, last
        lo += last - first


def _grouped_3x3(planes, weight, bias, rows, length, lo, hi, wq, s, ipg, opg) -> None:
    """Output channels ``lo:hi`` of all samples as rows ``wq`` apart: the first ``length`` of
    each of ``rows`` ``o (n plane)`` (C-contiguous, the samples a plane apart), from the phase
    planes ``c s s (n plane + 2)`` and the ``o ipg 3 3`` weights: the bias, then for each of the
    group's input channels in turn the nine taps' runs times their weights (compiled by
    ``jit``). Each run is a slice of its plane, indexed by the loop counter alone: an offset
    added to the index inside the loop kept LLVM from vectorising (3.4 against 34 GMAC/s for
    one plane's stencil)."""
    for o in range(lo, hi):
        first = (o // opg) * ipg
        target = rows[o]
        for d in range(ipg):
            phases = planes[first + d]
            a00 = phases[0, 0][:length]
            a01 = phases[0, 1 % s][1 // s : 1 // s + length]
            a02 = phases[0, 2 % s][2 // s : 2 // s + length]
            row1, row2 = (1 // s) * wq, (2 // s) * wq
            a10 = phases[1 % s, 0][row1 : row1 + length]
            a11 = phases[1 % s, 1 % s][row1 + 1 // s : row1 + 1 // s + length]
            a12 = phases[1 % s, 2 % s][row1 + 2 // s : row1 + 2 // s + length]
            a20 = phases[2 % s, 0][row2 : row2 + length]
            a21 = phases[2 % s, 1 % s][row2 + 1 // s : row2 + 1 // s + length]
            a22 = phases[2 % s, 2 % s][row2 + 2 // s : row2 + 2 // s + length]
            k = weight[o, d]
            w00, w01, w02 = k[0, 0], k[0, 1], k[0, 2]
            w10, w11, w12 = k[1, 0], k[1, 1], k[1, 2]
            w20, w21, w22 = k[2, 0], k[2, 1], k[2, 2]
            if d == 0:
                b = bias[o]
                for q in range(length):
                    target[q] = b + (
                        a00[q] * w00 + a01[q] * w01 + a02[q] * w02
                        + a10[q] * w10 + a11[q] * w11 + a12[q] * w12
                        + a20[q] * w20 + a21[q] * w21 + a22[q] * w22
                    )  # fmt: skip
            else:
                for q in range(length):
                    target[q] += (
                        a00[q] * w00 + a01[q] * w01 + a02[q] * w02
                        + a10[q] * w10 + a11[q] * w11 + a12[q] * w12
                        + a20[q] * w20 + a21[q] * w21 + a22[q] * w22
                    )  # fmt: skip


def plan(x_shape, w_shape, stride, padding, dilation, groups, outs) -> GroupedPlan | None:
    """The grouped plan of a convolution: 2-d, grouped with several input channels per group,
    a 3x3 kernel, stride 1 (or 2 both ways for more than one sample), no dilation; None for
    any other."""
    if len(x_shape) != 4 or groups == 1 or w_shape[1] == 1 or tuple(w_shape[2:]) != (3, 3):
        return None
    if tuple(dilation) != (1, 1) or stride[0] != stride[1] or stride[0] not in _STRIDES:
        return None
    if stride[0] > 1 and x_shape[0] == 1:
        return None  # the phase split of one sample costs more than it saves (see module)
    if 0 in outs or 0 in x_shape:
        return None
    return GroupedPlan(x_shape, w_shape, stride, padding, outs)
