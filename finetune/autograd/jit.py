"""Compiled kernels, when numba is installed (``pip install 'finetune[fast]'``).

A few kernels have no fast numpy formulation. A depthwise convolution is a handful of
multiply-adds per output with nothing for BLAS to do: numpy's ``einsum`` runs it at 2-6 GMAC/s
and the padded copy it needs costs as much again, where the same loops compiled run at 8-12
GMAC/s per thread straight from the unpadded input. GELU's float32 erf is a rational function:
28 numpy passes over each block, or one compiled pass (5x faster).

Such a kernel is written as a plain Python loop beside its numpy sibling; ``compiled(fn)`` returns
it compiled by numba on first use (cached on disk, so later processes load it in milliseconds),
with the GIL released so that ``parallel.split`` shares its blocks over threads. Without numba, or
with ``FINETUNE_JIT=0`` in the environment, ``compiled`` returns None and the caller keeps its
numpy path; the tests run both.
"""

from __future__ import annotations

import os
from collections.abc import Callable

# False: every caller takes its numpy path (FINETUNE_JIT=0; tests switch it per test)
ENABLED = os.environ.get("FINETUNE_JIT", "1") != "0"

_compiled: dict[tuple[Callable, bool], Callable | None] = {}


def compiled(fn: Callable, reassociate: bool = False) -> Callable | None:
    """``fn`` compiled by numba (``nogil``, cached on disk), or None without numba or when
    ``ENABLED`` is false. numba is imported on the first call, not with ``finetune``.
    ``reassociate`` lets LLVM add a running sum in any order (fastmath's ``reassoc`` flag alone:
    no contraction into fused multiply-adds, no assumptions about NaN or infinities), which a
    sum needs to vectorise; for a kernel whose other expressions have two operands each, where
    there is nothing to reorder. Each function is compiled with one choice: numba's disk cache
    does not tell compilations of one function apart by their options."""
    if not ENABLED:
        return None
    key = (fn, reassociate)
    try:
        return _compiled[key]
    except KeyError:
        pass
    try:
        import numba
    except ImportError:
        kernel = None
    else:
        # numpy's error model: a float division by zero gives inf or nan, as in numpy, with no
        # check (a ZeroDivisionError check in a loop stops it from vectorising)
        fastmath = {"reassoc"} if reassociate else False
        kernel = numba.njit(
            nogil=True, cache=True, boundscheck=False, error_model="numpy", fastmath=fastmath
        )(fn)
    return _compiled.setdefault(key, kernel)
