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

_compiled: dict[tuple[Callable, frozenset], Callable | None] = {}


def compiled(fn: Callable, fastmath: frozenset[str] = frozenset()) -> Callable | None:
    """``fn`` compiled by numba (``nogil``, cached on disk), or None without numba or when
    ``ENABLED`` is false. numba is imported on the first call, not with ``finetune``.
    ``fastmath`` names the LLVM fast-math flags a kernel allows, none by default: ``reassoc``
    lets a running sum be added in any order (which it needs to vectorise), ``contract`` fuses
    a multiply and an add into one rounding; never the flags that assume no NaN or infinity.
    Each function is compiled with one set: numba's disk cache does not tell compilations of
    one function apart by their options."""
    if not ENABLED:
        return None
    key = (fn, frozenset(fastmath))
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
        kernel = numba.njit(
            nogil=True,
            cache=True,
            boundscheck=False,
            error_model="numpy",
            fastmath=set(fastmath) or False,
        )(fn)
    return _compiled.setdefault(key, kernel)
