"""The intra-op threads: chunking, errors, nesting, the thread-count API, and the threaded
convolution and pooling kernels giving exactly the single-thread results."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
import warnings

import numpy as np
import pytest
import threadpoolctl

import finetune as torch
from finetune import parallel
from finetune.autograd import conv as kernels
from finetune.autograd.matmul import stacked_matmul


@pytest.fixture
def restore_threads():
    """Put the library's and BLAS's thread counts back as they were after the test."""
    before = parallel.get_num_threads()
    with threadpoolctl.threadpool_limits(limits=None, user_api="blas"):
        yield
        parallel.set_num_threads(before)


@pytest.fixture
def threads(monkeypatch, restore_threads):
    """Run the library's kernels on ``n`` threads, every kernel split however small. BLAS keeps
    its thread count: these tests compare the library's kernels, and BLAS rounds the last bits
    differently with another count."""
    monkeypatch.setattr(parallel, "MIN_WORK_PER_THREAD", 1)
    blas = {
        i["prefix"]: i["num_threads"]
        for i in threadpoolctl.threadpool_info()
        if i["user_api"] == "blas"
    }

    def use(n: int) -> None:
        parallel.set_num_threads(n)
        threadpoolctl.threadpool_limits(limits=blas)

    return use


def _blas_threads() -> set[int]:
    """The thread counts threadpoolctl reports for the BLAS libraries loaded here."""
    found = {i["num_threads"] for i in threadpoolctl.threadpool_info() if i["user_api"] == "blas"}
    if not found:
        pytest.skip("threadpoolctl finds no BLAS in this numpy")
    return found


def _covers_once(chunks, size):
    """The chunks tile ``range(size)``: contiguous, disjoint, nothing left out."""
    chunks = sorted(chunks)
    return (
        chunks[0][0] == 0
        and chunks[-1][1] == size
        and all(a[1] == b[0] and a[0] < a[1] for a, b in zip(chunks, chunks[1:]))
    )


def test_split_covers_the_range_once_in_chunks_taken_by_every_thread(threads):
    threads(3)
    seen, callers = [], set()
    lock = threading.Lock()
    release = threading.Barrier(3, timeout=10)

    def chunk(lo, hi):
        with lock:
            seen.append((lo, hi))
            first = threading.get_ident() not in callers
            callers.add(threading.get_ident())
        if first:  # every thread waits here once, so all three must have taken a chunk
            release.wait()

    parallel.split(chunk, 40, work=10**6)
    assert _covers_once(seen, 40)
    assert len(seen) == 3 * parallel.CHUNKS_PER_THREAD
    assert threading.get_ident() in callers and len(callers) == 3


def test_a_slow_thread_takes_fewer_chunks(threads):
    threads(2)
    taken = {}
    lock = threading.Lock()

    def chunk(lo, hi):
        if lo == 0:
            time.sleep(0.2)  # whichever thread takes the first chunk stalls on it
        with lock:
            taken.setdefault(threading.get_ident(), []).append((lo, hi))

    parallel.split(chunk, 8, work=10**6)
    assert _covers_once([c for cs in taken.values() for c in cs], 8)
    (slow,) = [cs for cs in taken.values() if (0, 1) in cs]
    assert len(slow) < 8 - len(slow)  # the other thread did most of the work meanwhile


def test_split_runs_small_work_on_the_calling_thread(threads):
    threads(4)
    parallel.MIN_WORK_PER_THREAD = 100
    seen = []
    parallel.split(lambda lo, hi: seen.append((lo, hi, threading.get_ident())), 8, work=150)
    assert seen == [(0, 8, threading.get_ident())]


def test_split_never_makes_more_chunks_than_items(threads):
    threads(8)
    seen = []
    parallel.split(lambda lo, hi: seen.append((lo, hi)), 2, work=10**6)
    assert sorted(seen) == [(0, 1), (1, 2)]


def test_split_propagates_a_chunk_error_after_every_thread_stopped(threads):
    threads(2)
    finished = []

    def chunk(lo, hi):
        if lo > 0:
            raise ValueError("a chunk failed")
        finished.append(lo)

    with pytest.raises(ValueError, match="a chunk failed"):
        parallel.split(chunk, 4, work=10**6)
    assert finished == [0]


def test_split_does_not_wait_for_a_helper_that_took_no_chunk(threads):
    """The caller runs every chunk itself while the helper is busy elsewhere, and returns
    without waiting for it (waking a thread costs tens of microseconds)."""
    threads(2)
    busy, release = threading.Event(), threading.Event()

    class Blocking:  # a job that holds the helper until released
        def work(self):
            busy.set()
            release.wait(10)

    parallel._queue().put(Blocking())
    try:
        assert busy.wait(10)
        seen = []
        parallel.split(lambda lo, hi: seen.append((lo, hi, threading.get_ident())), 8, 10**6)
        assert not release.is_set()  # returned while the helper was still held
        assert _covers_once([(lo, hi) for lo, hi, _ in seen], 8)
        assert {who for _, _, who in seen} == {threading.get_ident()}
    finally:
        release.set()


def test_nested_split_inside_a_worker_runs_serially(threads):
    threads(2)
    inner = []
    lock = threading.Lock()

    def outer(lo, hi):
        nested = parallel._inside.__dict__.get("active", False)

        def record(a, b):
            with lock:
                inner.append((lo, nested, a, b))

        parallel.split(record, 6, work=10**6)

    parallel.split(outer, 2, work=10**6)
    for lo in (0, 1):
        pieces = [(a, b) for o, nested, a, b in inner if o == lo]
        assert _covers_once(pieces, 6)
        if any(nested for o, nested, _, _ in inner if o == lo):  # ran on a pool worker
            assert pieces == [(0, 6)]


@pytest.mark.parametrize("setting", ["ignore", "raise"])
def test_helpers_run_chunks_under_the_callers_numpy_error_state(threads, setting):
    """An overflow the caller silences is silent on the helper too (a warning there would reach
    the user from a library op that silences its own), and one it makes raise, raises."""
    threads(2)
    callers = set()
    both = threading.Barrier(2, timeout=10)
    big = np.full(4, 1e30, dtype=np.float32)

    def chunk(lo, hi):
        if threading.get_ident() not in callers:
            callers.add(threading.get_ident())
            both.wait()  # each thread runs a chunk
        np.multiply(big, big)  # overflows to inf

    with warnings.catch_warnings(), np.errstate(over=setting):
        warnings.simplefilter("error")
        if setting == "ignore":
            parallel.split(chunk, 4, work=10**6)
        else:
            with pytest.raises(FloatingPointError):
                parallel.split(chunk, 4, work=10**6)
    assert len(callers) == 2


@pytest.mark.parametrize("bad", [0, -1, 1.5, True, "2"])
def test_set_num_threads_refuses_what_is_not_a_positive_integer(bad):
    before = _blas_threads(), torch.get_num_threads()
    with pytest.raises(ValueError, match="positive integer"):
        torch.set_num_threads(bad)
    assert (_blas_threads(), torch.get_num_threads()) == before  # nothing changed


def test_set_num_threads_sets_blas_threads_as_pytorch_does(restore_threads):
    torch.set_num_threads(1)
    assert _blas_threads() == {1} and torch.get_num_threads() == 1
    a = np.random.default_rng(0).standard_normal((200, 200))
    one = a @ a
    torch.set_num_threads(2)
    assert _blas_threads() == {2} and torch.get_num_threads() == 2
    np.testing.assert_allclose(a @ a, one, rtol=1e-12)


# what OpenBLAS will use for its workers' spin (log2 cycles), as it read it from the environment
_OPENBLAS_SPIN = """
import threadpoolctl
libs = threadpoolctl.ThreadpoolController().select(internal_api="openblas").lib_controllers
spins = [lib.dynlib.openblas_thread_timeout() for lib in libs
         if hasattr(lib.dynlib, "openblas_thread_timeout")]
"""


def _run(code: str, **env) -> list[str]:
    environ = {k: v for k, v in os.environ.items() if k != "OPENBLAS_THREAD_TIMEOUT"}
    environ.update(env)
    out = subprocess.run([sys.executable, "-c", code], env=environ, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    return out.stdout.split()


def test_thread_count_follows_the_environment():
    code = "import finetune; print(finetune.get_num_threads())"
    assert _run(code, OMP_NUM_THREADS="3") == ["3"]


@pytest.mark.parametrize("first", ["finetune", "numpy"])
def test_blas_spins_briefly_whichever_is_imported_first(first):
    """Both orders leave OpenBLAS with the short spin, and numpy still multiplies correctly
    after its workers were restarted."""
    code = (
        f"import {first}\n"
        "import numpy as np\n"
        "a = np.random.default_rng(0).standard_normal((300, 300)); want = a @ a\n"
        "import finetune\n" + _OPENBLAS_SPIN + "np.testing.assert_allclose(a @ a, want)\n"
        "print(finetune.parallel.blas_spin_shortened, *spins or ['none'])\n"
    )
    shortened, *spins = _run(code)
    if spins == ["none"]:
        pytest.skip("numpy's BLAS is not an OpenBLAS that reports its spin")
    assert shortened == "True"
    assert spins == [parallel.BLAS_THREAD_TIMEOUT] * len(spins)


@pytest.mark.parametrize("first", ["finetune", "numpy"])
def test_a_spin_the_user_chose_is_kept(first):
    code = (
        f"import {first}, os\nimport finetune\n" + _OPENBLAS_SPIN + "print(finetune.parallel."
        "blas_spin_shortened, os.environ['OPENBLAS_THREAD_TIMEOUT'], *spins or ['none'])\n"
    )
    shortened, value, *spins = _run(code, OPENBLAS_THREAD_TIMEOUT="10")
    assert (shortened, value) == ("False", "10")
    assert spins in (["none"], ["10"] * len(spins))


def test_set_num_threads_sets_blas_threads_when_numpy_came_first():
    code = (
        "import numpy as np, threadpoolctl\nimport finetune\n"
        "finetune.set_num_threads(1)\n"
        "info = threadpoolctl.threadpool_info()\n"
        "print(finetune.get_num_threads(), *[i['num_threads'] for i in info "
        "if i['user_api'] == 'blas'])\n"
    )
    out = _run(code, OMP_NUM_THREADS="2")
    assert out[0] == "1" and len(out) > 1 and set(out[1:]) == {"1"}


# -- the threaded kernels give the single-thread results exactly ------------------------------

CONVS = [
    # x shape, w shape, stride, padding, dilation, groups
    ((2, 5, 9, 9), (4, 5, 3, 3), (1, 1), ((1, 1), (1, 1)), (1, 1), 1),  # shifted layout
    ((2, 6, 9, 8), (6, 3, 3, 3), (2, 2), ((1, 0), (2, 1)), (1, 1), 2),  # windows, grouped
    ((3, 4, 6, 6), (5, 4, 1, 1), (2, 2), ((0, 0), (0, 0)), (1, 1), 1),  # pointwise, strided
    ((2, 3, 7), (4, 3, 3), (1,), ((2, 1),), (2,), 1),  # 1-d, dilated
    ((2, 64, 28, 27), (64, 64, 3, 3), (1, 1), ((1, 1), (1, 1)), (1, 1), 1),  # Winograd 4x4
    ((4, 64, 12, 12), (64, 64, 3, 3), (1, 1), ((1, 1), (1, 1)), (1, 1), 1),  # Winograd 2x2
    ((2, 3, 134, 134), (4, 3, 7, 7), (2, 2), ((3, 3), (3, 3)), (1, 1), 1),  # per sample, 67x67
    ((2, 6, 9, 8), (5, 6, 3, 3), (2, 2), ((1, 1), (1, 1)), (1, 1), 1),  # windows
]


def _laid_out(a: np.ndarray, layout: str) -> np.ndarray:
    """``a`` stored channels last when asked and 4-d, else as it is."""
    if layout == "channels-last" and a.ndim == 4:
        return np.ascontiguousarray(a.transpose(0, 2, 3, 1)).transpose(0, 3, 1, 2)
    return a


def _conv_results(case, layout, seed=0):
    x_shape, w_shape, stride, padding, dilation, groups = case
    rng = np.random.default_rng(seed)
    x = torch.tensor(_laid_out(rng.standard_normal(x_shape, dtype=np.float32), layout))
    x.requires_grad_(True)
    w = torch.tensor(rng.standard_normal(w_shape, dtype=np.float32), requires_grad=True)
    b = torch.tensor(rng.standard_normal(w_shape[0], dtype=np.float32), requires_grad=True)
    y = kernels.conv(x, w, b, stride, padding, dilation, groups)
    grad = _laid_out(rng.standard_normal(y.shape, dtype=np.float32), layout)
    y.backward(torch.tensor(grad))
    return [t.detach().numpy().copy() for t in (y, x.grad, w.grad, b.grad)]


@pytest.mark.parametrize("case", CONVS)
@pytest.mark.parametrize("layout", ["row-major", "channels-last"])
def test_threaded_convolution_equals_one_thread(threads, case, layout):
    threads(1)
    serial = _conv_results(case, layout)
    threads(3)
    for got, want in zip(_conv_results(case, layout), serial):
        np.testing.assert_array_equal(got, want)


POOLS = [
    # x shape, kernel, stride, padding, ceil_mode
    ((2, 5, 9, 9), (3, 3), (2, 2), ((1, 1), (1, 1)), False),
    ((2, 3, 8, 7), (2, 3), (2, 1), ((0, 0), (1, 1)), True),
]


@pytest.mark.parametrize("case", POOLS)
@pytest.mark.parametrize("kind", ["max", "avg"])
@pytest.mark.parametrize("layout", ["row-major", "channels-last"])
def test_threaded_pooling_equals_one_thread(threads, case, kind, layout):
    x_shape, kernel, stride, padding, ceil = case

    def results():
        rng = np.random.default_rng(1)
        # ties on purpose: the first maximum must win in every chunk
        data = rng.integers(-3, 3, x_shape).astype(np.float32)
        x = torch.tensor(_laid_out(data, layout), requires_grad=True)
        if kind == "max":
            y = kernels.max_pool(x, kernel, stride, padding, ceil_mode=ceil)
        else:
            y = kernels.avg_pool(x, kernel, stride, padding, ceil_mode=ceil)
        y.backward(torch.tensor(rng.standard_normal(y.shape, dtype=np.float32)))
        with torch.no_grad():
            frozen = kernels.max_pool(x, kernel, stride, padding, ceil_mode=ceil)
        return [y.detach().numpy().copy(), x.grad.numpy().copy(), frozen.numpy().copy()]

    threads(1)
    serial = results()
    threads(3)
    for got, want in zip(results(), serial):
        np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("training", [True, False])
@pytest.mark.parametrize("affine", [True, False])
@pytest.mark.parametrize("shape", [(4, 5, 3, 3), (6, 7)])
@pytest.mark.parametrize("layout", ["row-major", "channels-last"])
def test_threaded_batch_norm_equals_one_thread(threads, training, affine, shape, layout):
    from finetune.nn import functional as F

    def results():
        rng = np.random.default_rng(2)
        c = shape[1]
        x = torch.tensor(_laid_out(rng.standard_normal(shape, dtype=np.float32), layout))
        x.requires_grad_(True)
        w = torch.tensor(rng.standard_normal(c, dtype=np.float32), requires_grad=True)
        b = torch.tensor(rng.standard_normal(c, dtype=np.float32), requires_grad=True)
        mean = torch.tensor(rng.standard_normal(c, dtype=np.float32))
        var = torch.tensor(rng.random(c, dtype=np.float32) + 0.5)
        y = F.batch_norm(
            x, mean, var, w if affine else None, b if affine else None, training=training
        )
        y.backward(torch.tensor(_laid_out(rng.standard_normal(shape, dtype=np.float32), layout)))
        grads = [x.grad] + ([w.grad, b.grad] if affine else [])
        return [t.detach().numpy().copy() for t in (y, mean, var, *grads)]

    threads(1)
    serial = results()
    threads(3)
    for got, want in zip(results(), serial):
        np.testing.assert_array_equal(got, want)


def test_elementwise_splits_contiguous_arrays_and_takes_others_whole(threads):
    threads(3)
    calls = []

    def fn(out, a):
        calls.append(out.shape)
        np.add(a, 1, out=out)

    a = np.arange(10, dtype=np.float32)
    out = np.empty_like(a)
    parallel.elementwise(fn, out, a)
    np.testing.assert_array_equal(out, a + 1)
    assert sum(n for (n,) in calls) == 10 and len(calls) == 10  # 3 threads x 4 chunks, at most 10
    calls.clear()
    strided = np.arange(20, dtype=np.float32)[::2]
    parallel.elementwise(fn, out, strided)
    np.testing.assert_array_equal(out, strided + 1)
    assert calls == [(10,)]


@pytest.mark.parametrize("inplace", [False, True])
def test_threaded_relu_equals_one_thread(threads, inplace):
    from finetune.nn import functional as F

    def results():
        rng = np.random.default_rng(3)
        x = torch.tensor(rng.standard_normal((3, 4, 5), dtype=np.float32), requires_grad=True)
        y = F.relu(x * 1.0, inplace=inplace)
        y.backward(torch.tensor(rng.standard_normal(y.shape, dtype=np.float32)))
        with torch.no_grad():
            z = F.relu(x * 1.0, inplace=inplace)
        return [t.detach().numpy().copy() for t in (y, x.grad, z)]

    threads(1)
    serial = results()
    threads(3)
    for got, want in zip(results(), serial):
        np.testing.assert_array_equal(got, want)


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_a_forked_child_gets_its_own_pool(threads):
    threads(2)
    parallel.split(lambda lo, hi: None, 4, work=10**6)  # the parent's pool exists now
    pid = os.fork()
    if pid == 0:  # the child: split must finish, not wait on the parent's threads
        try:
            signal.alarm(20)  # a hang ends the child by SIGALRM, failing the test
            seen = []
            parallel.split(lambda lo, hi: seen.append((lo, hi)), 4, work=10**6)
            os._exit(0 if _covers_once(seen, 4) else 1)
        finally:
            os._exit(2)
    _, status = os.waitpid(pid, 0)
    assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0


def _blas_counts_inside(size: int) -> tuple[list, set]:
    """Run ``split_products`` over ``size`` items; the chunks seen and the BLAS thread counts
    each chunk saw."""
    seen, counts = [], set()
    lock = threading.Lock()

    def chunk(lo, hi):
        with lock:
            seen.append((lo, hi))
            counts.update(i["num_threads"] for i in threadpoolctl.threadpool_info()
                          if i["user_api"] == "blas")  # fmt: skip

    parallel.split_products(chunk, size, macs=10**8)
    return seen, counts


def test_split_products_runs_blas_on_one_thread_and_restores_it(threads):
    if not parallel._blas_setters():
        pytest.skip("numpy's BLAS is not an OpenBLAS with pthreads")
    threads(2)
    threadpoolctl.threadpool_limits(limits=2, user_api="blas")
    seen, counts = _blas_counts_inside(6)
    assert _covers_once(seen, 6) and len(seen) > 1
    assert counts == {1}
    assert _blas_threads() == {2}


def test_split_products_restores_blas_after_a_failed_chunk(threads):
    if not parallel._blas_setters():
        pytest.skip("numpy's BLAS is not an OpenBLAS with pthreads")
    threads(2)
    threadpoolctl.threadpool_limits(limits=2, user_api="blas")

    def chunk(lo, hi):
        raise ValueError("a product failed")

    with pytest.raises(ValueError, match="a product failed"):
        parallel.split_products(chunk, 4, macs=10**8)
    assert _blas_threads() == {2}


def test_split_products_from_two_threads_restores_blas_once_both_left(threads):
    """Stretches on one thread per caller overlap: BLAS stays on one thread until the last
    one leaves, then gets its count back."""
    if not parallel._blas_setters():
        pytest.skip("numpy's BLAS is not an OpenBLAS with pthreads")
    threads(2)
    threadpoolctl.threadpool_limits(limits=2, user_api="blas")
    inside, results = threading.Barrier(2, timeout=10), []

    def caller():
        def chunk(lo, hi):
            if lo == 0:
                inside.wait()  # both callers are inside their stretch here
            results.append(parallel._alone_users)

        parallel.split_products(chunk, 2, macs=10**8)

    callers = [threading.Thread(target=caller) for _ in range(2)]
    for t in callers:
        t.start()
    for t in callers:
        t.join(20)
    assert max(results) == 2
    assert _blas_threads() == {2} and parallel._alone_users == 0


def test_split_products_runs_small_work_whole_with_blas_as_it_is(threads):
    threads(2)
    blas = _blas_threads()
    parallel.MIN_WORK_PER_THREAD = 10**7  # 10**8 multiply-adds are ~1.6 * 10**6 elements
    seen, counts = _blas_counts_inside(8)
    assert seen == [(0, 8)] and counts == blas


STACKS = [
    ((8, 6, 17, 8), (8, 6, 8, 17)),  # attention's scores: samples, heads
    ((1, 6, 17, 17), (1, 6, 17, 8)),  # one sample: the heads are split
    ((5, 1, 4, 3), (1, 7, 3, 6)),  # both stacks broadcast
    ((9, 4, 3), (3, 5)),  # a stack times one matrix
    ((4, 3), (2, 3, 5)),  # one matrix times a stack
    ((1, 1, 4, 3), (1, 1, 3, 2)),  # a single matrix
]


@pytest.mark.parametrize(("sa", "sb"), STACKS)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_threaded_stacked_matmul_equals_a_float64_reference(threads, sa, sb, dtype):
    rng = np.random.default_rng(4)
    a, b = rng.standard_normal(sa).astype(dtype), rng.standard_normal(sb).astype(dtype)
    threads(3)
    got = stacked_matmul(a, b)
    want = np.einsum("...ik,...kj->...ij", a.astype(np.float64), b.astype(np.float64))
    assert got.dtype == dtype and got.shape == want.shape
    np.testing.assert_allclose(got, want, rtol=1e-5 if dtype == np.float32 else 1e-12, atol=1e-5)


def test_threaded_attention_products_pass_gradcheck(threads):
    threads(2)
    rng = np.random.default_rng(5)
    q, k = (torch.tensor(rng.standard_normal((2, 3, 5, 4)), requires_grad=True) for _ in range(2))
    assert torch.autograd.gradcheck(lambda q, k: q @ k.transpose(-1, -2), (q, k))


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_a_child_forked_during_a_one_thread_blas_stretch_gets_blas_back(threads):
    if not parallel._blas_setters():
        pytest.skip("numpy's BLAS is not an OpenBLAS with pthreads")
    threads(2)
    threadpoolctl.threadpool_limits(limits=2, user_api="blas")
    with parallel._blas_alone():  # as another thread's split_products would be
        pid = os.fork()
        if pid == 0:
            try:
                restored = _blas_threads() == {2} and parallel._alone_users == 0
                os._exit(0 if restored else 1)
            finally:
                os._exit(2)
    _, status = os.waitpid(pid, 0)
    assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0
    assert _blas_threads() == {2}
