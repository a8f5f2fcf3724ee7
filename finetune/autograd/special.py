"""Special functions numpy lacks, computed elementwise in float64: ``erf``.

erf(x), for ``|x| < 2.5``, sums the series

    erf(x) = 2x/sqrt(pi) * exp(-x^2) * sum_n (2x^2)^n / (1 * 3 * ... * (2n+1))

whose terms are all positive (no cancellation); 48 terms leave the remainder below 1e-17 of the
sum at ``|x| = 2.5``. Beyond, it is ``1 - erfc(x)`` with the classical continued fraction

    erfc(x) = exp(-x^2)/sqrt(pi) / (x + (1/2)/(x + 1/(x + (3/2)/(x + 2/(x + ...)))))

evaluated bottom-up to a fixed depth, which converges faster the larger ``x`` is. Both agree
with ``math.erf`` to a few units in the last place of float64 (tested on a dense grid).
"""

from __future__ import annotations

import math

import numpy as np

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


def erf(x: np.ndarray) -> np.ndarray:
    """The error function of every element, in ``x``'s floating dtype (float64 inside)."""
    x = np.asarray(x)
    dtype = x.dtype if x.dtype.kind == "f" else np.dtype(np.float32)
    values = x.astype(np.float64)
    a = np.abs(values)
    out = np.empty_like(values)
    near = a < _SERIES_BELOW  # NaN is neither near nor far: it stays NaN below
    far = a >= _SERIES_BELOW
    out[near] = _erf_series(a[near])
    out[far] = 1.0 - _erfc_fraction(a[far])
    out[np.isnan(values)] = np.nan
    return np.copysign(out, values).astype(dtype, copy=False)
