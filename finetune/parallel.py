"""Intra-op threads for the memory-bound kernels: im2col copies, padding, pooling, output copies.

numpy runs its matrix products on BLAS's own threads but every copy and ufunc on one core, so
on a 2-core machine half the machine idles during the third of a forward pass that is copies.
``split(fn, size, work)`` cuts ``range(size)`` into a few contiguous chunks per thread and runs
``fn(lo, hi)`` on each, every thread taking the next chunk when it is free (numpy releases the
GIL inside copies and ufuncs), when ``work`` elements are enough to pay for the hand-over; the
kernels split along channels, so chunks never write the same memory. The helpers sleep between
jobs, and on a virtual machine waking one takes ~30 us (a round trip of two locks: 56 us here):
the caller starts on the chunks at once, the helper joins when it wakes, and the caller waits
only for chunks a helper took (an idle split costs 7 us, against 61 when it waited for every
helper to check in).

OpenBLAS keeps its worker threads spinning for a while after every matrix product (2^28 cycles
by default), which takes the second core from these threads. Its ``OPENBLAS_THREAD_TIMEOUT``
setting shortens the spin; ``import finetune`` chooses 19 (2^19 cycles, ~0.2 ms at 2.6 GHz: long
enough to carry a worker across a batch-1 network's depthwise and elementwise kernels to its
next product, where waking it costs ~30 us on a virtual machine; short against the copies of a
larger batch, which need the second core) unless the user has chosen a value. OpenBLAS reads the
setting when it starts its workers, and no public call changes it afterwards (threadpoolctl
controls the thread count only), so the order of imports decides how: before numpy, the
environment variable is set and numpy's OpenBLAS reads it when it loads; after numpy, ``import
finetune`` sets it, makes OpenBLAS read its environment again (``openblas_read_env``) and stops
its workers (``blas_thread_shutdown_``, what OpenBLAS itself does in a forked child), which the
next product starts again with the short spin. Both are exported by every OpenBLAS built with
pthreads, numpy's included; where they are missing (another BLAS, OpenMP threads) nothing
changes. Stopping the workers must not race a product on another thread, so it happens once, at
import.

The thread count follows PyTorch's ``get_num_threads``/``set_num_threads``: one number for this
library's threads and BLAS's, applied to BLAS at run time with threadpoolctl. By default it is
``OMP_NUM_THREADS`` (or ``OPENBLAS_NUM_THREADS``) when set, else the cores this process may use,
and BLAS keeps its own default until ``set_num_threads`` is called.
This module does not import numpy: it must run before numpy is loaded.
"""

from __future__ import annotations

import contextlib
import contextvars
import os
import queue
import sys
import threading
from collections.abc import Callable

# log2 of the cycles an idle OpenBLAS worker spins before it sleeps
BLAS_THREAD_TIMEOUT = "19"

# below this many elements a kernel runs on the calling thread: the hand-over costs more
MIN_WORK_PER_THREAD = 1 << 16
# chunks per thread: enough for a thread slowed by the machine to hand work to the others
CHUNKS_PER_THREAD = 4
# compiled operations worth one element of work (one element a numpy pass moves), for the
# compiled kernels' passes, multiply-adds and comparisons. Alone, one thread wins up to a few
# million values (a bias and ReLU over 301k: 25 us, against 121 us shared out over two), but
# after a convolution's product, which leaves the output in both cores' caches, sharing wins:
# MNASNet 0.5 at batch 1 10.6-10.8 ms a forward with this ratio, 12.6-14.9 on one thread,
# 10.6-11.5 with 32
COMPILED_WORK_RATIO = 8
# multiply-adds worth one element of work for BLAS's products: BLAS makes ~50 G multiply-adds a
# second on one thread where numpy's copies move ~1 G elements
MACS_PER_ELEMENT = 64


def _openblas_libraries() -> list:
    """The OpenBLAS libraries loaded in this process, as ctypes handles (via threadpoolctl)."""
    import threadpoolctl

    controller = threadpoolctl.ThreadpoolController().select(internal_api="openblas")
    return [lib.dynlib for lib in controller.lib_controllers]


def _shorten_blas_spin() -> bool:
    """Give OpenBLAS the short spin of ``BLAS_THREAD_TIMEOUT`` unless the user chose one. Before
    numpy loads, the environment is enough; after, OpenBLAS rereads it and restarts its workers.
    True when OpenBLAS runs (or will run) with this library's value."""
    if "OPENBLAS_THREAD_TIMEOUT" in os.environ:
        return os.environ["OPENBLAS_THREAD_TIMEOUT"] == BLAS_THREAD_TIMEOUT
    os.environ["OPENBLAS_THREAD_TIMEOUT"] = BLAS_THREAD_TIMEOUT
    if "numpy" not in sys.modules:
        return True
    done = False
    for lib in _openblas_libraries():
        if hasattr(lib, "openblas_read_env") and hasattr(lib, "blas_thread_shutdown_"):
            lib.openblas_read_env()
            lib.blas_thread_shutdown_()  # the next product starts the workers again
            done = True
    return done


blas_spin_shortened = _shorten_blas_spin()


def _default_threads() -> int:
    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        value = os.environ.get(var, "")
        if value.isdigit() and int(value) > 0:
            return int(value)
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


_threads = _default_threads()
_helpers: _Helpers | None = None
_helpers_lock = threading.Lock()
_inside = threading.local()


class _Job:
    """One ``split``: its chunks, each handed out once to whichever thread asks first, and how
    many are running. The caller runs chunks too, then waits only for the chunks a helper took:
    a helper that wakes after the caller took the last chunk finds nothing to do, and nobody
    waits for it (waking a sleeping thread takes ~30 us on a virtual machine, which a
    back-and-forth paid twice for every split, done or not). A helper runs its chunks in a copy
    of the caller's context, so numpy's error state (``np.errstate``, a context variable) is the
    caller's: an overflow the caller silences stays silent on every thread."""

    __slots__ = (
        "fn", "bounds", "lock", "taken", "running", "closed", "error", "finished", "context",
    )  # fmt: skip

    def __init__(self, fn: Callable[[int, int], None], bounds: list[int]) -> None:
        self.fn, self.bounds = fn, bounds
        self.lock = threading.Lock()
        self.taken = self.running = 0
        self.closed = False  # no chunk is handed out any more (all taken, or one failed)
        self.error: BaseException | None = None
        self.finished: threading.Lock | None = None  # released when the last running chunk ends
        self.context = contextvars.copy_context()

    def work(self) -> None:
        """A helper's turn: ``run_chunks`` in a copy of the caller's context."""
        self.context.copy().run(self.run_chunks)

    def run_chunks(self) -> None:
        """Run chunks until none is left or one failed (its error is kept for the caller)."""
        last = len(self.bounds) - 1
        while True:
            with self.lock:
                if self.closed or self.taken >= last:
                    self.closed = True
                    return
                k = self.taken
                self.taken += 1
                self.running += 1
            try:
                self.fn(self.bounds[k], self.bounds[k + 1])
            except BaseException as error:  # noqa: BLE001 - handed to the caller
                with self.lock:
                    self.error = self.error or error
                    self.closed = True
            finally:
                with self.lock:
                    self.running -= 1
                    if self.running == 0 and self.finished is not None:
                        self.finished.release()

    def wait(self) -> None:
        """Return once no chunk runs and none will start; raise the first chunk's error."""
        with self.lock:
            self.closed = True
            if self.running:
                self.finished = threading.Lock()
                self.finished.acquire()
        if self.finished is not None:
            self.finished.acquire()  # released by the thread ending the last running chunk
        if self.error is not None:
            raise self.error


class _Helpers:
    """``count`` daemon threads taking jobs from one queue; each runs a job's chunks with
    nested splits serial (``_inside``). ``stop`` lets them end after the jobs queued before."""

    def __init__(self, count: int) -> None:
        self.count = count
        self.queue: queue.SimpleQueue = queue.SimpleQueue()
        for i in range(count):
            name = f"finetune-kernel_{i}"
            threading.Thread(target=self._serve, name=name, daemon=True).start()

    def _serve(self) -> None:
        _inside.active = True
        while (job := self.queue.get()) is not None:
            job.work()

    def stop(self) -> None:
        for _ in range(self.count):
            self.queue.put(None)


def _forget_helpers_after_fork() -> None:
    """A forked child has none of the parent's helper threads: work queued for them would
    wait forever, so the child starts its own on first use. A stretch of one-thread BLAS
    (``split_products``) that another of the parent's threads was in ends in the child."""
    global _helpers, _helpers_lock, _alone_lock, _alone_users
    _helpers, _helpers_lock = None, threading.Lock()
    _alone_lock = threading.Lock()
    if _alone_users:
        for (_, set_count), count in zip(_setters, _alone_counts):
            set_count(count)
        _alone_users = 0


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_helpers_after_fork)


def get_num_threads() -> int:
    """The number of threads the library's own kernels use."""
    return _threads


def set_num_threads(n: int) -> None:
    """Use ``n`` threads for the library's own kernels and for BLAS's matrix products (every
    BLAS threadpoolctl finds in the process), as PyTorch's ``set_num_threads`` does."""
    global _threads, _helpers
    if not isinstance(n, int) or isinstance(n, bool) or n < 1:
        raise ValueError(f"set_num_threads expects a positive integer, got {n!r}")
    import threadpoolctl

    threadpoolctl.threadpool_limits(limits=n, user_api="blas")
    with _helpers_lock:
        _threads = n
        if _helpers is not None:
            _helpers.stop()
            _helpers = None


def _queue() -> queue.SimpleQueue:
    global _helpers
    with _helpers_lock:
        if _helpers is None:
            _helpers = _Helpers(_threads - 1)
        return _helpers.queue


def split(fn: Callable[[int, int], None], size: int, work: int) -> None:
    """Run ``fn(lo, hi)`` over contiguous chunks covering ``range(size)`` on all threads, when
    the ``work`` (elements touched in all) is large enough. There are ``CHUNKS_PER_THREAD``
    chunks per thread, taken in turn by whichever thread is free (the calling thread included),
    so one slow core does not hold the others up. Chunks must write disjoint memory. The first
    error from any chunk propagates once no chunk runs any more (later chunks are not started)."""
    threads = min(_threads, size, work // MIN_WORK_PER_THREAD)
    if threads < 2 or getattr(_inside, "active", False):
        fn(0, size)
        return
    _share(fn, size, threads, min(size, threads * CHUNKS_PER_THREAD, work // MIN_WORK_PER_THREAD))


def _share(fn: Callable[[int, int], None], size: int, threads: int, chunks: int) -> None:
    """``fn`` over ``chunks`` chunks of ``range(size)``, taken by ``threads`` threads."""
    job = _Job(fn, [size * i // chunks for i in range(chunks + 1)])
    helpers = _queue()
    for _ in range(threads - 1):
        helpers.put(job)
    job.run_chunks()
    job.wait()


def elementwise(fn: Callable[..., None], out, *inputs) -> None:
    """``fn(out_chunk, *input_chunks)`` over matching chunks of arrays of one shape, split like
    ``split`` when all are laid out alike with no gaps (C-contiguous, or channels last, or any
    one order of the axes), else one call on the whole arrays."""
    arrays = (out, *inputs)
    if out.size * len(arrays) < 2 * MIN_WORK_PER_THREAD or any(
        a.shape != out.shape or a.strides != out.strides for a in arrays
    ):
        fn(out, *inputs)  # too small to share out (split would run it whole), or gaps
        return
    # the axes in memory order: the arrays are then C-contiguous, or have gaps
    order = sorted(range(out.ndim), key=lambda axis: -out.strides[axis])
    arrays = [a.transpose(order) for a in arrays]
    if not arrays[0].flags.c_contiguous:
        fn(out, *inputs)
        return
    flat = [a.reshape(-1) for a in arrays]
    split(lambda lo, hi: fn(*(a[lo:hi] for a in flat)), out.size, out.size * len(flat))


def split_products(fn: Callable[[int, int], None], size: int, macs: int) -> None:
    """``split`` for chunks that are BLAS products of their own (a stack of matrices, split
    along the stack), with BLAS on one thread while they run: each of the library's threads
    then multiplies whole matrices, where numpy would hand BLAS one small product at a time and
    wait for its threads to split each (ViT-S's 48 attention products of 197x64x197 at batch 8:
    2.49 -> 1.79 ms). Runs ``fn(0, size)`` as it is when the work would not be shared out, or
    when the BLAS in this process cannot be set to one thread around the chunks (not an
    OpenBLAS with its own pthreads: its chunks would then compete for the cores). A chunk's own
    splits run on its thread: the chunks already keep the threads busy. ``macs``: the
    multiply-adds of all the products."""
    threads = min(_threads, size, macs // MACS_PER_ELEMENT // MIN_WORK_PER_THREAD)
    if threads < 2 or getattr(_inside, "active", False) or not _blas_setters():
        fn(0, size)
        return
    with _blas_alone():
        _inside.active = True  # the caller's chunks run serially too, as a helper's do
        try:  # every chunk a few whole products: as many chunks as ``split`` makes at most
            _share(fn, size, threads, min(size, threads * CHUNKS_PER_THREAD))
        finally:
            _inside.active = False


_setters: list | None = None  # (get, set) thread-count functions of each OpenBLAS, or []
_alone_lock = threading.Lock()
_alone_users = 0  # calls inside ``_blas_alone``; the first sets one thread, the last restores
_alone_counts: list[int] = []


def _blas_setters() -> list:
    """The ``(get, set)`` thread-count functions of every BLAS threadpoolctl finds, when all are
    OpenBLAS built with pthreads (their count is one number for the process, set in ~0.3 us);
    [] otherwise."""
    global _setters
    if _setters is None:
        import threadpoolctl

        found = []
        for lib in threadpoolctl.ThreadpoolController().select(user_api="blas").lib_controllers:
            pair = [
                _openblas_function(lib.dynlib, f"openblas_{verb}_num_threads")
                for verb in ("get", "set")
            ]
            if lib.internal_api != "openblas" or lib.threading_layer != "pthreads" or None in pair:
                found = []
                break
            found.append(tuple(pair))
        _setters = found
    return _setters


def _openblas_function(dynlib, name: str):
    """OpenBLAS's function ``name`` under whichever prefix and suffix its build gave the symbols
    (numpy's scipy-openblas: ``scipy_openblas_set_num_threads64_``), or None."""
    for prefix in ("", "scipy_"):
        for suffix in ("", "64_"):
            function = getattr(dynlib, f"{prefix}{name}{suffix}", None)
            if function is not None:
                return function
    return None


@contextlib.contextmanager
def _blas_alone():
    """A stretch where BLAS runs each product on its calling thread alone. Stretches on several
    threads overlap: the first to enter saves the counts, the last to leave restores them."""
    global _alone_users, _alone_counts
    with _alone_lock:
        _alone_users += 1
        if _alone_users == 1:
            _alone_counts = [get() for get, _ in _setters]
            for _, set_count in _setters:
                set_count(1)
    try:
        yield
    finally:
        with _alone_lock:
            _alone_users -= 1
            if _alone_users == 0:
                for (_, set_count), count in zip(_setters, _alone_counts):
                    set_count(count)
