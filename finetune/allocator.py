"""Freed memory kept for reuse by glibc's malloc, so that new activations do not page-fault.

A forward pass allocates and frees arrays of the same large sizes over and over. By default
glibc serves a request above its mmap threshold (128 KB, raised as large blocks are freed, up
to 32 MB) with fresh pages from the kernel and gives them back on ``free``, and it trims the
heap's free top above 128 KB: every new activation then costs a page fault per 4 KB page, the
kernel zeroing each. Measured (2 cores, one forward in eval under ``no_grad``): MobileNetV2 at
batch 8 made 1,619 page faults and spent 28 ms in the kernel per 109 ms forward, ResNet-50
3,814 faults and 42-54 ms. With the mmap threshold at 256 MB and the trim threshold at 512 MB
freed blocks are reused instead: 3 faults per forward, 2 and 9 ms in the kernel, MobileNetV2 75
ms a forward; peak memory (VmHWM) changed by -5% to +7% over six models.

Like OpenBLAS's thread setting (``parallel.py``) the setting is the process's: ``import
finetune`` makes it with glibc's ``mallopt``, unless ``FINETUNE_MALLOC=0`` or the user has set
glibc's own ``MALLOC_MMAP_THRESHOLD_`` or ``MALLOC_TRIM_THRESHOLD_``. What it changes for the rest
of the program: up to 512 MB of freed memory at the heap's top stays with the process for reuse
instead of going back to the system at once (it does when more is freed, and at exit). Other C
libraries (musl, macOS) are left alone.
"""

from __future__ import annotations

import ctypes
import os

M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3  # glibc's malloc.h
MMAP_THRESHOLD = 256 << 20  # requests below this come from the heap, and are reused
TRIM_THRESHOLD = 512 << 20  # free memory at the heap's top kept up to this much


def keep_freed_memory() -> bool:
    """Set glibc's thresholds as the module docstring says; True when they are this library's
    (set now, or earlier), False when the user chose otherwise or there is no glibc."""
    if os.environ.get("FINETUNE_MALLOC", "1") == "0":
        return False
    if any(v in os.environ for v in ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_")):
        return False
    if not _glibc():
        return False
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = (ctypes.c_int, ctypes.c_int), ctypes.c_int
    # the mmap threshold first: setting either turns glibc's dynamic threshold off, and a trim
    # threshold alone would leave every request above 128 KB to mmap (27,000 faults a forward)
    if not mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD):
        return False
    return bool(mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD))


def _glibc() -> bool:
    try:
        return os.confstr("CS_GNU_LIBC_VERSION").startswith("glibc")
    except (ValueError, OSError, AttributeError):  # not a GNU system
        return False


freed_memory_kept = keep_freed_memory()
