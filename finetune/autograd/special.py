"""Special functions numpy lacks (``erf``), a float32 exp for compiled kernels (``exp_parts``:
numba's own exp is scalar), and ``blockwise``, the driver that runs a chain of ufuncs over
cache-sized blocks of an array on all threads.

float32 erf is the rational approximation of Eigen (``generic_fast_erf_float`` in
``SpecialFunctionsImpl.h``, the 2024 version with a degree-9 numerator and degree-12
denominator), ``x P(x^2) / Q(x^2)`` for ``|x| < c = erfinv(1 - 2^-23)`` and ``+-1`` beyond. The
rational is within 0.9 ulp of erf; evaluated in float32 without fused multiply-adds, as numpy
does, it is within 6 ulp (about 0.6 ulp on average), at 25 passes over the data instead of the
float64 series' 150.

float64 erf (gradcheck, and float64 models), for ``|x| < 2.5``, sums the series

    erf(x) = 2x/sqrt(pi) * exp(-x^2) * sum_n (2x^2)^n / (1 * 3 * ... * (2n+1))

whose terms are all positive (no cancellation); 48 terms leave the remainder below 1e-17 of the
sum at ``|x| = 2.5``. Beyond, it is ``1 - erfc(x)`` with the classical continued fraction

    erfc(x) = exp(-x^2)/sqrt(pi) / (x + (1/2)/(x + 1/(x + (3/2)/(x + 2/(x + ...)))))

evaluated bottom-up to a fixed depth, which converges faster the larger ``x`` is. Both agree
with ``math.erf`` to a few units in the last place of float64 (tested on a dense grid).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np

from ..parallel import MIN_WORK_PER_THREAD, split
from . import jit
from .scratch import scratch

# -- blocks ----------------------------------------------------------------------------------

# bytes of one temporary per block: a chain's few temporaries stay in the core's L2 cache
# (measured on the 2-core EPYC: GELU 3.6 ms at 2^17, 3.1 at 2^18, 3.2 at 2^19)
BLOCK_BYTES = 1 << 18


def flat_in_memory_order(arrays: tuple) -> list | None:
    """1-d views of arrays of one shape and one memory layout without gaps (C order, channels
    last, any order of the axes; the strides of size-1 axes do not count), each element at the
    same index in all; None otherwise."""
    first = arrays[0]
    if any(a.shape != first.shape for a in arrays):
        return None
    ones = tuple(axis for axis, size in enumerate(first.shape) if size == 1)
    squeezed = [np.squeeze(a, axis=ones) for a in arrays]
    if any(a.strides != squeezed[0].strides for a in squeezed):
        return None
    order = sorted(range(squeezed[0].ndim), key=lambda axis: -squeezed[0].strides[axis])
    moved = [a.transpose(order) for a in squeezed]
    if not moved[0].flags.c_contiguous:
        return None
    return [a.reshape(-1) for a in moved]


def _in_layout_of(out: np.ndarray, a: np.ndarray) -> np.ndarray:
    """``a`` itself when laid out as ``out``, else a copy of it in ``out``'s layout."""
    if a.shape == out.shape and flat_in_memory_order((out, a)) is not None:
        return a
    copy = np.empty_like(out, dtype=a.dtype)
    np.copyto(copy, a)
    return copy


def empty_like_dense(x: np.ndarray, dtype=None) -> np.ndarray:
    """An uninitialised array of ``x``'s shape laid out as ``x`` is (channels last stays channels
    last) without gaps."""
    return np.empty_like(x, dtype=dtype, order="K")


def blockwise(kernel: Callable, out: np.ndarray, *inputs: np.ndarray, temps: int = 0) -> None:
    """``kernel(out, *inputs, *temporaries)`` over blocks of ``BLOCK_BYTES`` of arrays of one
    shape, split over the threads, with ``temps`` scratch arrays of ``out``'s dtype per block.
    Inputs laid out differently from ``out`` are first copied into its layout; an ``out`` with
    gaps takes one call over the whole arrays, with fresh temporaries. The kernel writes only
    through ``out=`` and in place, so every block's result lands where the whole array's
    would."""
    # arrays too small to share out run whole, as they are laid out (a batch-1 graph's small
    # activations would spend more on the layout checks than on the chain)
    small = out.size * (1 + len(inputs) + temps) < 2 * MIN_WORK_PER_THREAD and all(
        a.shape == out.shape for a in inputs
    )
    flat = None if small else flat_in_memory_order((out, *inputs))
    if flat is None and not small and flat_in_memory_order((out,)) is not None:
        # inputs in another layout (a channels-last activation, a row-major gradient): one
        # transposing copy each, where every pass of the chain would read across the layout
        inputs = tuple(_in_layout_of(out, a) for a in inputs)
        flat = flat_in_memory_order((out, *inputs))
    if flat is None:
        kernel(out, *inputs, *(np.empty(out.shape, out.dtype) for _ in range(temps)))
        return
    size, dtype = out.size, out.dtype
    block = max(BLOCK_BYTES // dtype.itemsize, 1)

    def run(lo: int, hi: int) -> None:
        work = [scratch(f"blockwise{i}", (min(block, hi - lo),), dtype) for i in range(temps)]
        for start in range(lo, hi, block):
            stop = min(start + block, hi)
            n = stop - start
            kernel(*(a[start:stop] for a in flat), *(w[:n] for w in work))

    split(run, size, size * (len(flat) + temps))


# -- erf in float32 --------------------------------------------------------------------------

# erf(x) = x P(x^2) / Q(x^2), highest power first (Eigen's alpha_9..alpha_1, beta_12..beta_0)
_ERF_P = (
    0.00022905065861350646,
    0.0034082910107109506,
    0.050955695062380861,
    0.18520832239976145,
    1.128379143519084,
)
_ERF_Q = (
    -1.1791602954361697e-7,
    0.000023547966471313185,
    0.0010179625278914885,
    0.014070470171167667,
    0.11098505178285362,
    0.49746925110067538,
    1.0,
)
# erfinv(1 - 2^-23): beyond it erf is +-1 in float32
_ERF_SATURATES = 3.832506856900711


def _horner(out: np.ndarray, s: np.ndarray, coefficients, scale: float) -> None:
    """``out = scale * poly(s)``, ``coefficients`` highest power first, in ``out``'s dtype."""
    t = out.dtype.type
    np.multiply(s, t(coefficients[0] * scale), out=out)
    for c in coefficients[1:-1]:
        out += t(c * scale)
        out *= s
    out += t(coefficients[-1] * scale)


def erf_rational(t: np.ndarray, out: np.ndarray, s: np.ndarray, q: np.ndarray, scale=1.0):
    """``out = scale * erf(t)`` for ``t`` already clipped to ``+-_ERF_SATURATES`` (it may be
    ``out``'s memory only if not ``s`` or ``q``); ``s`` and ``q`` are temporaries, and ``s``
    holds ``t^2`` on return."""
    np.multiply(t, t, out=s)
    _horner(q, s, _ERF_Q, 1.0)
    if out is t:
        np.divide(t, q, out=q)  # t / Q, so out can take P
        _horner(out, s, _ERF_P, scale)
        out *= q
    else:
        _horner(out, s, _ERF_P, scale)
        out *= t
        out /= q
    np.clip(out, -scale, scale, out=out)  # the rational passes 1 a little before c


def _erf_kernel(out, x, s, q):
    np.clip(x, -_ERF_SATURATES, _ERF_SATURATES, out=out)
    erf_rational(out, out, s, q)


def erf_float32(x: np.ndarray) -> np.ndarray:
    """erf of a float32 array, in its layout, to a few float32 ulp."""
    out = empty_like_dense(x)
    blockwise(_erf_kernel, out, x, temps=2)
    return out


# -- erf in float64 --------------------------------------------------------------------------

_SERIES_BELOW = 2.5
_SERIES_TERMS = 48
_FRACTION_DEPTH = 96
_TWO_OVER_SQRT_PI = 2.0 / math.sqrt(math.pi)


def _erf_series(a: np.ndarray) -> np.ndarray:
    """erf for ``0 <= a < 2.5``."""
    twice_square = 2.0 * a * a
    term = np.ones_like(a)
    total = np.ones_like(a)
    for n in range(1, _SERIES_TERMS):
        term *= twice_square / (2 * n + 1)
        total += term
    return _TWO_OVER_SQRT_PI * a * np.exp(-a * a) * total


def _erfc_fraction(a: np.ndarray) -> np.ndarray:
    """erfc for ``a >= 2.5`` (``inf`` included)."""
    with np.errstate(invalid="ignore", divide="ignore", over="ignore"):
        tail = a.copy()
        for k in range(_FRACTION_DEPTH, 0, -1):
            tail = a + (k / 2.0) / tail
        out = np.exp(-a * a) / (math.sqrt(math.pi) * tail)
    out[np.isinf(a)] = 0.0
    return out


def erf_float64(x: np.ndarray) -> np.ndarray:
    """erf of every element in float64, to a few float64 ulp."""
    values = np.asarray(x, dtype=np.float64)
    a = np.abs(values)
    out = np.empty_like(values)
    near = a < _SERIES_BELOW  # NaN is neither near nor far: it stays NaN below
    far = a >= _SERIES_BELOW
    out[near] = _erf_series(a[near])
    out[far] = 1.0 - _erfc_fraction(a[far])
    out[np.isnan(values)] = np.nan
    return np.copysign(out, values)


def erf(x: np.ndarray) -> np.ndarray:
    """The error function of every element, in ``x``'s floating dtype (integers give float32):
    float64 exactly, float32 (and narrower, through float32) by the rational."""
    x = np.asarray(x)
    if x.dtype == np.float64:
        return erf_float64(x)
    if x.dtype.kind == "f" and x.dtype.itemsize > 8:
        return erf_float64(x).astype(x.dtype)
    if x.dtype == np.float32:
        return erf_float32(x)
    out = erf_float32(x.astype(np.float32))
    return out.astype(x.dtype, copy=False) if x.dtype.kind == "f" else out


# Cephes' float32 exp (``expf``): its argument's range, ln2 in two parts, the polynomial
_EXP_LOW, _EXP_HIGH = np.float32(-104.0), np.float32(89.5)  # exp is 0 below, inf above
_LOG2E, _ROUND = np.float32(1.44269504088896341), np.float32(12582912.0)  # 1.5 * 2^23
_LN2_HIGH, _LN2_LOW = np.float32(0.693359375), np.float32(-2.12194440e-4)
_EXP_POLYNOMIAL = tuple(
    np.float32(c)
    for c in (1.9875691500e-4, 1.3981999507e-3, 8.3334519073e-3, 4.1665795894e-2)
    + (1.6666665459e-1, 5.0000001201e-1)
)
ONE = np.float32(1.0)


@jit.helper
def exp_parts(x):
    """``exp(x) = p 2^a 2^b`` for a float32 ``x``, returned as ``p`` and the float32 bit
    patterns of ``2^a`` and ``2^b`` (int32): Cephes' ``expf``, ``x = n ln2 + r`` with ``|r| <=
    ln2 / 2`` and a degree-5 polynomial for ``exp(r)``; ``2^n`` as two powers of two, so that
    ``n`` up to 129 (``exp(88.5)`` is finite) and down to -150 (zero) need no special case.
    ``x`` is clamped to ``[-104, 89.5]``, beyond which the exp is 0 or inf, as it should be; a
    NaN comes out as 0 (callers keep it). A kernel stores the bits and multiplies ``p`` by them
    read back as float32 in a second loop (numba has no bit cast): both loops vectorise."""
    x = x if x > _EXP_LOW else _EXP_LOW
    x = x if x < _EXP_HIGH else _EXP_HIGH
    n = (x * _LOG2E + _ROUND) - _ROUND  # rounded to the nearest integer
    r = x - n * _LN2_HIGH
    r = r - n * _LN2_LOW
    c0, c1, c2, c3, c4, c5 = _EXP_POLYNOMIAL
    q = ((((c0 * r + c1) * r + c2) * r + c3) * r + c4) * r + c5
    k = np.int32(n)
    half = k >> 1
    return (q * (r * r) + r) + ONE, (half + 127) << 23, (k - half + 127) << 23
