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
import sys
import types
from collections.abc import Callable

# False: every caller takes its numpy path (FINETUNE_JIT=0; tests switch it per test)
ENABLED = os.environ.get("FINETUNE_JIT", "1") != "0"

# the fast-math flags a kernel may ask for (``compiled``)
SUMS_IN_ANY_ORDER = frozenset({"reassoc"})
FUSED_MULTIPLY_ADD = frozenset({"contract"})

# the run-time overlap checks LLVM may add to vectorise a loop (``_allow_memory_checks``)
_MEMORY_CHECKS = "-vectorize-memory-check-threshold=1024"
_checks_allowed = False
_loaded = False  # ``load`` has run

_compiled: dict[tuple[Callable, frozenset], Callable | None] = {}
_registered: set[Callable] = set()


def helper(fn: Callable) -> Callable:
    """Mark ``fn`` as callable from compiled kernels: when a kernel that calls it is first
    compiled, numba's ``register_jitable`` takes it (inlined into the kernel, so its loops still
    vectorise). In Python it stays the plain function, and numba is not imported here."""
    fn.kernel_helper = True
    return fn


def _register_helpers(fn: Callable, numba) -> None:
    """The ``helper`` functions ``fn`` calls (and theirs), registered with numba once."""
    names = fn.__code__.co_names
    found = [fn.__globals__.get(name) for name in names]
    # and ``module.helper(...)``: the attribute's name is among the names too
    found += [
        getattr(module, name, None)
        for module in found
        if isinstance(module, types.ModuleType)
        for name in names
    ]
    for value in found:
        if getattr(value, "kernel_helper", False) and value not in _registered:
            _registered.add(value)
            numba.extending.register_jitable(inline="always")(value)
            _register_helpers(value, numba)


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
        import numba.extending

        _allow_memory_checks()
        _register_helpers(fn, numba)
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


def _allow_memory_checks() -> None:
    """Let LLVM vectorise loops that need many run-time checks that their arrays do not
    overlap (numba cannot tell it that they never do). A depthwise block's loop over channels
    (``depthwise._blocked_rows``) reads 25-100 input and weight addresses and writes four: 256
    to 512 checks, over LLVM's default limit of 128, and left scalar it ran at a third of the
    speed. The checks run once per entry to such a loop, not per element. LLVM's options are
    global to the process: set once, before the first compilation here."""
    global _checks_allowed
    if not _checks_allowed:
        import llvmlite.binding

        llvmlite.binding.set_option("finetune", _MEMORY_CHECKS)
        _checks_allowed = True


def load() -> None:
    """Import numba now, when it is installed and ``ENABLED``: from here on the kernels of
    ``compiled_if_loaded`` (Winograd's transforms, an eval BatchNorm's pass, activations after
    a bias, softmax) run compiled. Called for inference (by an imported graph's plan and by
    any convolution, with gradients off) and by a convolution whose weight trains: at batch 1
    DenseNet-121 10-13% faster, ResNet-50, RegNetY and GoogLeNet 4-6% for the passes alone,
    for numba's ~60 MB and ~0.3 s once (~110 MB with its kernels loaded). Not for a frozen
    backbone's step (``conv._load_compiled``): its peak memory would go over PyTorch's."""
    global _loaded
    if _loaded or not ENABLED:
        return
    _loaded = True
    try:
        import numba  # noqa: F401
    except ImportError:
        pass


def compiled_if_loaded(fn: Callable, fastmath: frozenset[str] = frozenset()) -> Callable | None:
    """``compiled(fn, fastmath)`` once numba is loaded (by a kernel that has no fast numpy form:
    a depthwise convolution, GELU, LayerNorm), else None. Loading numba and LLVM costs ~100 MB
    of memory and ~0.3 s, more than a pass with a numpy form saves in a network that needs
    nothing else compiled (ResNet-18's frozen step peaked at 480 MB instead of 370)."""
    return compiled(fn, fastmath) if "numba" in sys.modules else None
