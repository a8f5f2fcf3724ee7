"""Piecewise-linear activations (ReLU, clip such as ReLU6, hard-swish) in one compiled pass,
and a convolution's bias added in the same pass.

numpy is slow at exactly these: its ``maximum`` and ``clip`` against a scalar take a loop
without SIMD (a ReLU over 301k float32 values: 114 us, against 30 us for ``maximum`` of two
arrays and 27 us compiled), and a bias broadcast along a short last axis (a channels-last
activation with 24 channels) runs its inner loop 24 elements at a time (104 us for the bias
alone over the same array). Compiled by ``jit``, a bias and an activation together take one
pass: 150-420 us over 2.4M values, against 760-1120 us for numpy's bias alone. At batch 1 a
mobile network's 1x1 convolutions spent more time in these passes than in their products.

``Activation`` is what ``conv.epilogue`` takes and what ``Relu``/``Clamp`` compute. The
compiled loops run once numba is loaded for a kernel that needs it
(``jit.compiled_if_loaded``); otherwise (and without numba, or with ``FINETUNE_JIT=0``) numpy
runs the same formulas. Both compute the same float operations in the same order (numba
contracts no multiply-add), so the values are bit-identical. (numpy against blocks of bounds
instead of scalars was faster alone, 290 against 464 us over 1.2M values on one thread, but
slower inside ``Relu``: 550 against 341 us.)
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from ..parallel import COMPILED_WORK_RATIO, elementwise, split
from . import jit
from .special import flat_in_memory_order

IDENTITY, RELU, CLIP, HARDSWISH = 0, 1, 2, 3

_COMPILED_DTYPES = (np.float32, np.float64)  # numba has no float16


@dataclass(frozen=True)
class Activation:
    """An elementwise activation: ``RELU``, ``CLIP`` to ``[lo, hi]`` (either bound may be
    None), or ``HARDSWISH`` (``x clip(x / 6 + 1/2, 0, 1)``). Called on an array, it applies
    itself in place, as a convolution's epilogue does to each chunk of its output."""

    kind: int
    lo: float | None = None
    hi: float | None = None

    def __call__(self, block: np.ndarray) -> None:
        """In place, with numpy: a compiled loop reading and writing one block through two
        names cannot prove they do not overlap and stays scalar (97-223 us over 301k values
        against 32 out of place; numpy in place 55-168). With a bias, ``with_bias`` is one
        compiled pass."""
        self._numpy(block, block)

    def with_bias(self, rows: np.ndarray, bias: np.ndarray | None) -> bool:
        """``bias_rows(rows, bias, self)``: what a convolution's epilogue offers to do with
        the bias in the same pass."""
        return bias_rows(rows, bias, self)

    def into(self, out: np.ndarray, x: np.ndarray) -> None:
        """``out = activation(x)``, arrays of one shape and layout, ``out`` apart from ``x``."""
        kernel = jit.compiled_if_loaded(_activate)
        flat = None
        if kernel is not None and out.dtype == x.dtype in _COMPILED_DTYPES:
            flat = flat_in_memory_order((out, x))
        if flat is None:
            elementwise(self._numpy, out, x)  # numpy, split over flat chunks where it can
            return
        o, a = flat
        params = self._params(o.dtype)
        split(lambda lo, hi: kernel(a[lo:hi], o[lo:hi], self.kind, params), a.size, _work(a.size))

    def _numpy(self, out: np.ndarray, x: np.ndarray) -> None:
        t = out.dtype.type
        if self.kind == RELU:
            np.maximum(x, t(0), out=out)
        elif self.kind == CLIP:
            if self.lo is None and self.hi is None:
                np.copyto(out, x)
            else:
                np.clip(x, *(None if b is None else t(b) for b in (self.lo, self.hi)), out=out)
        elif self.kind == HARDSWISH:  # as ``nn_ops.hardswish_kernel``
            gate = np.multiply(x, t(1 / 6))  # a temporary: ``out`` may be ``x``
            gate += t(0.5)
            np.clip(gate, t(0), t(1), out=gate)
            np.multiply(gate, x, out=out)
        elif out is not x:
            np.copyto(out, x)

    def _params(self, dtype) -> np.ndarray:
        """The kernels' constants in the arrays' dtype (so every operation stays in it):
        ``lo, hi, 0, 1``; a missing bound is an infinity; hard-swish's slope and offset."""
        if self.kind == HARDSWISH:
            lo, hi = 1 / 6, 0.5
        else:
            lo = -np.inf if self.lo is None else self.lo
            hi = np.inf if self.hi is None else self.hi
        return np.array([lo, hi, 0, 1], dtype=dtype)


def relu() -> Activation:
    return Activation(RELU)


def clip(lo: float | None, hi: float | None) -> Activation:
    return Activation(CLIP, lo, hi)


def hardswish() -> Activation:
    return Activation(HARDSWISH)


def bias_rows(
    rows: np.ndarray,
    bias: np.ndarray | None,
    activation: Activation | None,
    residual: np.ndarray | None = None,
) -> bool:
    """``rows += bias``, then ``rows += residual`` (rows of the same shape: a skip connection's
    values), then ``activation`` in place, for C-contiguous ``(pixels, channels)`` rows, in one
    compiled pass split over the threads. False (nothing done) without the compiled kernel or
    for other arrays: the caller then takes its numpy passes."""
    kernel = jit.compiled_if_loaded(_bias_activate if residual is None else _residual_activate)
    if kernel is None or rows.ndim != 2 or rows.dtype not in _COMPILED_DTYPES:
        return False
    if not rows.flags.c_contiguous:
        return False
    if residual is not None and not (
        residual.shape == rows.shape
        and residual.dtype == rows.dtype
        and residual.flags.c_contiguous
    ):
        return False
    activation = activation or Activation(IDENTITY)
    if bias is None:
        bias = np.zeros(rows.shape[1], rows.dtype)
    bias = np.ascontiguousarray(bias, dtype=rows.dtype)
    params = activation._params(rows.dtype)
    kind = activation.kind

    def run(lo: int, hi: int) -> None:
        if residual is None:
            kernel(rows[lo:hi], bias, kind, params)
        else:
            kernel(rows[lo:hi], bias, residual[lo:hi], kind, params)

    split(run, len(rows), _work(rows.size if residual is None else 2 * rows.size))
    return True


def add_bias_rows(
    rows: np.ndarray,
    bias: np.ndarray | None,
    fn: Callable | None,
    residual: np.ndarray | None = None,
) -> None:
    """``rows += bias``, then ``rows += residual`` (same shape), then ``fn(rows)`` (an in-place
    epilogue, ``conv.epilogue``), for ``(pixels, channels)`` rows: by ``fn.with_bias`` when the
    epilogue has one and there is no residual (``Activation``: one compiled pass), else one
    chunk of rows per thread turn (all on a chunk before the next: the chunk is still in cache).
    Smaller blocks were slower: numpy's ~2-5 us a call outweighed what the cache saved.
    Convolutions' and depthwise convolutions' outputs take it."""
    if bias is None and fn is None and residual is None:
        return
    if fn is None or (residual is not None and isinstance(fn, Activation)):
        if bias_rows(rows, bias, fn, residual):
            return  # one compiled pass
    elif residual is None and hasattr(fn, "with_bias") and fn.with_bias(rows, bias):
        return  # the epilogue's own pass (or passes) with the bias

    def chunk(lo: int, hi: int) -> None:
        block = rows[lo:hi]
        if bias is not None:
            np.add(block, bias, out=block)
        if residual is not None:
            np.add(block, residual[lo:hi], out=block)
        if fn is not None:
            fn(block)

    split(chunk, len(rows), rows.size)


def affine_rows(
    out: np.ndarray, x: np.ndarray, scale: np.ndarray, shift: np.ndarray, fn=None
) -> bool:
    """``out = x * scale + shift`` for C-contiguous ``(pixels, channels)`` rows and
    per-channel ``scale`` and ``shift``, in one compiled pass split over the threads, in
    numpy's order of operations (so its values): an eval BatchNorm on a channels-last
    activation; then ``fn(rows)`` in place on each thread turn's rows, while in cache. ``out``
    must not overlap ``x`` (in place the loop cannot vectorise: 2-4x slower). False (nothing
    done) without the compiled kernel or for other arrays. Loads numba when it is not yet (an
    eval BatchNorm that no convolution precedes has no fast numpy form: two or three passes;
    DenseNet-121's frozen-backbone step at batch 8 603-649 -> 437-510 ms, its peak 358 -> 421
    MB against PyTorch's 630). A BatchNorm that folds into its convolution never gets here."""
    kernel = jit.compiled(_affine)
    if kernel is None or x.ndim != 2 or x.dtype not in _COMPILED_DTYPES or out.dtype != x.dtype:
        return False
    if not (x.flags.c_contiguous and out.flags.c_contiguous and out.shape == x.shape):
        return False
    scale = np.ascontiguousarray(scale, dtype=x.dtype)
    shift = np.ascontiguousarray(shift, dtype=x.dtype)

    def rows(lo: int, hi: int) -> None:
        kernel(x[lo:hi], out[lo:hi], scale, shift)
        if fn is not None:
            fn(out[lo:hi])

    split(rows, len(x), _work(2 * x.size))
    return True


def relu_backward(gx: np.ndarray, grad: np.ndarray, out: np.ndarray) -> None:
    """``gx = grad * (out > 0)`` from the ReLU's output ``out``: one compiled pass when it can
    (numpy's takes two and a boolean temporary)."""
    kernel = jit.compiled_if_loaded(_relu_gradient)
    flat = None
    if kernel is not None and gx.dtype == grad.dtype == out.dtype in _COMPILED_DTYPES:
        flat = flat_in_memory_order((gx, grad, out))
    if flat is None:
        elementwise(lambda gx_, g, o: np.multiply(g, o > 0, out=gx_), gx, grad, out)
        return
    g_, g, o = flat
    ones = np.array([0, 1], dtype=g_.dtype)
    split(lambda lo, hi: kernel(g[lo:hi], o[lo:hi], g_[lo:hi], ones), g.size, _work(3 * g.size))


def _work(elements: int) -> int:
    return elements // COMPILED_WORK_RATIO


# -- compiled by ``jit`` ---------------------------------------------------------------------
# One loop per kind, each with its branch outside: a branch on ``kind`` inside the inner loop
# kept it from vectorising (2-5x slower). The selects are written so that NaN passes through
# as in numpy's ``maximum`` and ``clip``.


def _activate(x, out, kind, params) -> None:
    """``out = activation(x)`` over 1-d arrays, ``out`` apart from ``x``."""
    lo, hi, zero, one = params[0], params[1], params[2], params[3]
    if kind == RELU:
        for i in range(x.shape[0]):
            v = x[i]
            out[i] = zero if v <= zero else v  # -0.0 gives 0.0, as numpy's maximum
    elif kind == CLIP:
        for i in range(x.shape[0]):
            v = x[i]
            v = lo if v < lo else v
            out[i] = hi if v > hi else v
    elif kind == HARDSWISH:
        for i in range(x.shape[0]):
            v = x[i]
            g = v * lo + hi
            g = zero if g < zero else g
            g = one if g > one else g
            out[i] = g * v
    else:
        for i in range(x.shape[0]):
            out[i] = x[i]


def _affine(x, out, scale, shift) -> None:
    """``out = x * scale + shift`` over ``(pixels, channels)`` rows, ``out`` apart from ``x``."""
    for p in range(x.shape[0]):
        row, target = x[p], out[p]
        for c in range(row.shape[0]):
            target[c] = row[c] * scale[c] + shift[c]


def _bias_activate(rows, bias, kind, params) -> None:
    """``rows = activation(rows + bias)`` in place, ``rows`` ``(pixels, channels)``."""
    lo, hi, zero, one = params[0], params[1], params[2], params[3]
    for p in range(rows.shape[0]):
        row = rows[p]
        if kind == RELU:
            for c in range(row.shape[0]):
                v = row[c] + bias[c]
                row[c] = zero if v <= zero else v
        elif kind == CLIP:
            for c in range(row.shape[0]):
                v = row[c] + bias[c]
                v = lo if v < lo else v
                row[c] = hi if v > hi else v
        elif kind == HARDSWISH:
            for c in range(row.shape[0]):
                v = row[c] + bias[c]
                g = v * lo + hi
                g = zero if g < zero else g
                g = one if g > one else g
                row[c] = g * v
        else:
            for c in range(row.shape[0]):
                row[c] = row[c] + bias[c]


def _residual_activate(rows, bias, residual, kind, params) -> None:
    """``rows = activation(rows + bias + residual)`` in place (added left to right), all three
    ``(pixels, channels)`` but ``bias``: a convolution, its skip connection and the activation
    after the sum, one pass."""
    lo, hi, zero, one = params[0], params[1], params[2], params[3]
    for p in range(rows.shape[0]):
        row, extra = rows[p], residual[p]
        if kind == RELU:
            for c in range(row.shape[0]):
                v = row[c] + bias[c] + extra[c]
                row[c] = zero if v <= zero else v
        elif kind == CLIP:
            for c in range(row.shape[0]):
                v = row[c] + bias[c] + extra[c]
                v = lo if v < lo else v
                row[c] = hi if v > hi else v
        elif kind == HARDSWISH:
            for c in range(row.shape[0]):
                v = row[c] + bias[c] + extra[c]
                g = v * lo + hi
                g = zero if g < zero else g
                g = one if g > one else g
                row[c] = g * v
        else:
            for c in range(row.shape[0]):
                row[c] = row[c] + bias[c] + extra[c]


def _relu_gradient(grad, out, gx, ones) -> None:
    """``gx = grad * (out > 0)``, the mask as 0 or 1 in the gradient's dtype (``ones``), so a
    NaN or infinite gradient where the unit is off gives NaN, as numpy's product does."""
    zero, one = ones[0], ones[1]
    for i in range(grad.shape[0]):
        gx[i] = grad[i] * (one if out[i] > zero else zero)
