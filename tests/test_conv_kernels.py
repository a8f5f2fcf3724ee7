"""The convolution and pooling kernels against direct numpy loops, gradcheck in float64, and the
float32 and frozen-layer contracts."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest

import finetune as torch
from finetune.autograd import conv as kernels
from finetune.autograd import gradcheck, pooling


def leaf(array, dtype=np.float64) -> torch.Tensor:
    return torch.tensor(np.asarray(array, dtype=dtype), requires_grad=True)


def const(array, dtype=np.float64) -> torch.Tensor:
    return torch.tensor(np.asarray(array, dtype=dtype))


# -- slow, obviously-correct references ------------------------------------------------------


def out_size(size, lo, hi, k, s, d, ceil=False):
    span = size + lo + hi - d * (k - 1) - 1
    o = (math.ceil(span / s) if ceil else span // s) + 1
    if ceil and (o - 1) * s >= size + lo:
        o -= 1
    return o


def conv_loop(x, w, b, stride, pads, dilation, groups):
    """Direct N-d convolution: one output element at a time, one tap at a time."""
    n, c = x.shape[:2]
    o, cg = w.shape[:2]
    kernel = w.shape[2:]
    xp = np.pad(x, ((0, 0), (0, 0), *pads))
    outs = [
        out_size(sz, lo, hi, k, s, d)
        for sz, (lo, hi), k, s, d in zip(x.shape[2:], pads, kernel, stride, dilation)
    ]
    per_group = o // groups
    out = np.zeros((n, o, *outs))
    for b_, oc in itertools.product(range(n), range(o)):
        g = oc // per_group
        for pos in itertools.product(*map(range, outs)):
            total = 0.0 if b is None else b[oc]
            for ci in range(cg):
                for tap in itertools.product(*map(range, kernel)):
                    at = tuple(p * s + t * d for p, s, t, d in zip(pos, stride, tap, dilation))
                    total += xp[(b_, g * cg + ci, *at)] * w[(oc, ci, *tap)]
            out[(b_, oc, *pos)] = total
    return out


def pool_windows(x, kernel, stride, pads, dilation, ceil):
    """Yield ``(position, [(input index or None for padding), ...])`` for every window."""
    sizes = x.shape[2:]
    outs = [
        out_size(sz, lo, hi, k, s, d, ceil)
        for sz, (lo, hi), k, s, d in zip(sizes, pads, kernel, stride, dilation)
    ]
    for pos in itertools.product(*map(range, outs)):
        taps = []
        for tap in itertools.product(*map(range, kernel)):
            at = tuple(
                p * s + t * d - lo for p, s, t, d, (lo, _) in zip(pos, stride, tap, dilation, pads)
            )
            inside = all(0 <= a < sz for a, sz in zip(at, sizes))
            taps.append(at if inside else None)
        yield pos, outs, taps


def max_pool_loop(x, kernel, stride, pads, dilation, ceil):
    out = None
    for pos, outs, taps in pool_windows(x, kernel, stride, pads, dilation, ceil):
        if out is None:
            out = np.empty(x.shape[:2] + tuple(outs))
        values = [x[(slice(None), slice(None), *t)] for t in taps if t is not None]
        out[(slice(None), slice(None), *pos)] = np.max(values, axis=0)
    return out


def avg_pool_loop(x, kernel, stride, pads, ceil, count_include_pad):
    """PyTorch's divisor: the window clipped to input + padding, or to the input alone."""
    ones = (1,) * len(kernel)
    sizes = x.shape[2:]
    out = None
    for pos, outs, taps in pool_windows(x, kernel, stride, pads, ones, ceil):
        if out is None:
            out = np.empty(x.shape[:2] + tuple(outs))
        total = sum(x[(slice(None), slice(None), *t)] for t in taps if t is not None)
        if count_include_pad:
            divisor = 1
            for p, s, k, sz, (lo, hi) in zip(pos, stride, kernel, sizes, pads):
                start = p * s - lo
                divisor *= min(start + k, sz + hi) - start
        else:
            divisor = sum(t is not None for t in taps)
        out[(slice(None), slice(None), *pos)] = total / divisor
    return out


# -- convolution -----------------------------------------------------------------------------

PADS_3D = ((0, 0), (1, 1), (0, 1))
CONV_CASES = {
    # name: (batch, channels, spatial, out channels, kernel, stride, pads, dilation, groups, bias)
    "1d-plain": (2, 3, (7,), 4, (3,), (1,), ((0, 0),), (1,), 1, True),
    "1d-stride-asym-pad": (1, 2, (8,), 3, (3,), (2,), ((2, 1),), (1,), 1, False),
    "1d-dilated-grouped": (3, 4, (9,), 6, (2,), (1,), ((1, 0),), (3,), 2, True),
    "2d-plain": (2, 3, (5, 6), 4, (3, 3), (1, 1), ((1, 1), (1, 1)), (1, 1), 1, True),
    "2d-stride2": (1, 2, (7, 6), 3, (3, 3), (2, 2), ((1, 1), (1, 1)), (1, 1), 1, False),
    "2d-asymmetric": (2, 2, (5, 5), 2, (2, 3), (1, 2), ((0, 2), (1, 0)), (1, 1), 1, True),
    "2d-dilated": (1, 2, (7, 7), 2, (3, 2), (1, 1), ((2, 2), (0, 1)), (2, 3), 1, True),
    "2d-grouped": (2, 4, (4, 5), 6, (3, 3), (1, 1), ((1, 1), (1, 1)), (1, 1), 2, True),
    "2d-depthwise": (3, 3, (5, 5), 3, (3, 3), (2, 1), ((1, 1), (1, 1)), (1, 1), 3, False),
    "2d-depthwise-multiplier": (1, 2, (4, 4), 4, (3, 3), (1, 1), ((1, 1), (1, 1)), (1, 1), 2, True),
    "2d-1x1": (2, 3, (4, 3), 5, (1, 1), (1, 1), ((0, 0), (0, 0)), (1, 1), 1, True),
    "2d-1x1-stride2": (1, 3, (5, 4), 2, (1, 1), (2, 2), ((0, 0), (0, 0)), (1, 1), 1, False),
    "2d-7x7-stride2": (1, 2, (9, 8), 2, (7, 7), (2, 2), ((3, 3), (3, 3)), (1, 1), 1, False),
    "2d-kernel-fills-padded": (2, 2, (3, 2), 3, (5, 4), (1, 1), ((1, 1), (1, 1)), (1, 1), 1, True),
    "3d-plain": (1, 2, (3, 4, 3), 2, (2, 3, 2), (1, 1, 1), PADS_3D, (1, 1, 1), 1, True),
    "3d-grouped": (2, 2, (4, 3, 4), 2, (2, 2, 2), (2, 1, 2), ((1, 0),) * 3, (1, 2, 1), 2, False),
}


def conv_inputs(case, seed=0):
    n, c, spatial, o, kernel, stride, pads, dilation, groups, has_bias = case
    r = np.random.default_rng(seed)
    x = r.standard_normal((n, c, *spatial))
    w = r.standard_normal((o, c // groups, *kernel))
    b = r.standard_normal(o) if has_bias else None
    return x, w, b, dict(stride=stride, padding=pads, dilation=dilation, groups=groups)


@pytest.fixture(params=["shifted", "windows", "per-sample"])
def layout(request, monkeypatch):
    """Run a convolution through each im2col layout: stride 1 through the shifted flat rows
    (whatever the wasted columns cost) or the copied window view; the window view batch-wide
    or one sample at a time, whatever the output's size."""
    waste = math.inf if request.param == "shifted" else 0.0
    monkeypatch.setattr(kernels, "_MAX_SHIFTED_WASTE", waste)
    monkeypatch.setattr(
        kernels, "_PER_SAMPLE_PIXELS", 0 if request.param == "per-sample" else math.inf
    )
    return request.param


@pytest.mark.parametrize("name", CONV_CASES)
def test_conv_matches_direct_loop(name, layout):
    x, w, b, opts = conv_inputs(CONV_CASES[name])
    got = kernels.conv(const(x), const(w), None if b is None else const(b), **opts)
    expected = conv_loop(x, w, b, opts["stride"], opts["padding"], opts["dilation"], opts["groups"])
    assert got.shape == expected.shape
    np.testing.assert_allclose(got.numpy(), expected, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("name", CONV_CASES)
def test_conv_gradcheck(name, layout):
    x, w, b, opts = conv_inputs(CONV_CASES[name], seed=1)
    inputs = [leaf(x), leaf(w)] + ([] if b is None else [leaf(b)])
    assert gradcheck(lambda *t: kernels.conv(*t, **opts), inputs)


def test_conv_grad_fn_name():
    x, w, b, opts = conv_inputs(CONV_CASES["2d-plain"])
    y = kernels.conv(leaf(x), leaf(w), leaf(b), **opts)
    assert y.grad_fn.name() == "ConvolutionBackward0"


def test_conv_gradients_only_where_needed():
    """A first layer (input without grad) and a frozen weight each get exactly what they need."""
    x, w, b, opts = conv_inputs(CONV_CASES["2d-grouped"])
    xt, wt, bt = const(x), leaf(w), const(b)
    kernels.conv(xt, wt, bt, **opts).sum().backward()
    assert xt.grad is None and bt.grad is None and wt.grad is not None
    xt, wt = leaf(x), const(w)
    kernels.conv(xt, wt, None, **opts).sum().backward()
    assert wt.grad is None and xt.grad.shape == x.shape


def test_frozen_conv_records_no_graph():
    x, w, b, opts = conv_inputs(CONV_CASES["2d-plain"])
    y = kernels.conv(const(x), const(w), const(b), **opts)
    assert y.grad_fn is None and not y.requires_grad
    with torch.no_grad():
        y = kernels.conv(leaf(x), leaf(w), leaf(b), **opts)
    assert y.grad_fn is None


@pytest.mark.parametrize("name", ["2d-plain", "2d-stride2", "2d-1x1", "2d-depthwise", "1d-plain"])
def test_conv_float32_in_float32_out(name, layout):
    x, w, b, opts = conv_inputs(CONV_CASES[name])
    xt, wt = leaf(x, np.float32), leaf(w, np.float32)
    bt = None if b is None else leaf(b, np.float32)
    y = kernels.conv(xt, wt, bt, **opts)
    assert y.dtype == torch.float32
    y.sum().backward()
    assert xt.grad.dtype == torch.float32 and wt.grad.dtype == torch.float32
    expected = conv_loop(x, w, b, opts["stride"], opts["padding"], opts["dilation"], opts["groups"])
    np.testing.assert_allclose(y.detach().numpy(), expected, rtol=1e-5, atol=1e-5)


# -- pooling ---------------------------------------------------------------------------------

POOL_CASES = {
    # name: (shape, kernel, stride, pads, dilation, ceil_mode)
    "1d": ((2, 2, 7), (3,), (2,), ((1, 1),), (1,), False),
    "1d-ceil": ((1, 2, 8), (3,), (2,), ((0, 0),), (1,), True),
    "2d-resnet": ((2, 2, 7, 7), (3, 3), (2, 2), ((1, 1), (1, 1)), (1, 1), False),
    "2d-no-pad": ((1, 3, 6, 5), (2, 2), (2, 2), ((0, 0), (0, 0)), (1, 1), False),
    "2d-ceil": ((3, 1, 6, 7), (3, 2), (2, 2), ((1, 1), (0, 0)), (1, 1), True),
    "2d-ceil-drops-pad-window": ((1, 2, 5, 5), (2, 2), (2, 2), ((1, 1), (1, 1)), (1, 1), True),
    "2d-asymmetric": ((2, 1, 5, 6), (3, 3), (1, 2), ((0, 1), (1, 0)), (1, 1), False),
    "2d-stride-exceeds-kernel": ((1, 2, 7, 8), (2, 2), (3, 3), ((0, 0), (1, 0)), (1, 1), True),
    "2d-overlap": ((1, 2, 5, 5), (3, 3), (1, 1), ((1, 1), (1, 1)), (1, 1), False),
    "2d-kernel-fills-padded": ((1, 1, 3, 4), (5, 6), (1, 1), ((1, 1), (1, 1)), (1, 1), False),
    "3d": ((1, 2, 4, 5, 4), (2, 3, 2), (2, 1, 2), ((1, 0), (1, 1), (0, 1)), (1, 1, 1), True),
}

DILATED_POOL_CASES = {
    "2d-dilated": ((2, 1, 7, 7), (2, 3), (1, 2), ((1, 1), (2, 2)), (2, 2), False),
    "2d-dilated-ceil": ((1, 2, 8, 7), (3, 2), (2, 2), ((1, 1), (0, 1)), (2, 3), True),
}


def distinct_values(shape, seed=0):
    """A permutation, so every window has one maximum and the gradient is differentiable."""
    r = np.random.default_rng(seed)
    return r.permutation(math.prod(shape)).reshape(shape) / 7.0 - 3.0


@pytest.mark.parametrize("name", {**POOL_CASES, **DILATED_POOL_CASES})
@pytest.mark.parametrize("layout", ["row-major", "channels-last"])
def test_max_pool_matches_direct_loop_and_gradcheck(name, layout):
    shape, kernel, stride, pads, dilation, ceil = {**POOL_CASES, **DILATED_POOL_CASES}[name]
    x = distinct_values(shape)
    if layout == "channels-last" and x.ndim == 4:  # pooled in its own layout, unpadded in place
        x = np.ascontiguousarray(x.transpose(0, 2, 3, 1)).transpose(0, 3, 1, 2)
    opts = dict(kernel_size=kernel, stride=stride, padding=pads, dilation=dilation, ceil_mode=ceil)
    want = max_pool_loop(x, kernel, stride, pads, dilation, ceil)
    # without a gradient the maximum is separable (one axis at a time); with one, by tap
    np.testing.assert_array_equal(kernels.max_pool(const(x), **opts).numpy(), want)
    np.testing.assert_array_equal(kernels.max_pool(leaf(x), **opts).detach().numpy(), want)
    assert gradcheck(lambda t: kernels.max_pool(t, **opts), [leaf(x)])


@pytest.mark.parametrize("wide", [False, True])
@pytest.mark.parametrize("name", ["2d-resnet", "2d-ceil", "2d-dilated-ceil", "3d"])
def test_max_pool_without_gradient_blocks_channels_and_keeps_nan_and_ints(name, wide):
    """More than one 64-channel block per sample, NaN and infinities where they win or lose,
    and integer inputs whose padding is the type's minimum; short rows (pooled channels last)
    and rows long enough to be pooled in their own row-major layout."""
    shape, kernel, stride, pads, dilation, ceil = {**POOL_CASES, **DILATED_POOL_CASES}[name]
    opts = dict(kernel_size=kernel, stride=stride, padding=pads, dilation=dilation, ceil_mode=ceil)
    spatial = (*shape[2:-1], pooling._SHORT_ROWS + 3) if wide else shape[2:]
    x = np.random.default_rng(5).standard_normal((2, 130, *spatial))
    flat = x.reshape(-1)
    flat[::17], flat[5::23], flat[7::29] = np.nan, np.inf, -np.inf
    want = max_pool_loop(x, kernel, stride, pads, dilation, ceil)
    for dtype in (np.float32, np.float64):
        got = kernels.max_pool(const(x, dtype), **opts).numpy()
        np.testing.assert_array_equal(got, want.astype(dtype))
    ints = np.random.default_rng(6).integers(-100, 100, x.shape).astype(np.int32)
    got = kernels.max_pool(torch.tensor(ints), **opts).numpy()
    assert got.dtype == np.int32
    np.testing.assert_array_equal(got, max_pool_loop(ints, kernel, stride, pads, dilation, ceil))


@pytest.mark.parametrize("layout", ["channels_last", "short rows"])
@pytest.mark.parametrize(
    "name",
    [
        "2d-resnet",
        "2d-no-pad",
        "2d-ceil-drops-pad-window",
        "2d-overlap",
        "2d-stride-exceeds-kernel",
    ],
)
def test_compiled_max_pool_matches_the_loop(name, layout, monkeypatch):
    """The compiled 2x2 and 3x3 kernels (``pooling._MAX_KERNELS``) of a channels-last input, or
    a row-major one with short rows (copied channels last): windows inside and across the
    borders, NaN and infinities where they win or lose, ties (the first tap's value stays)."""
    pytest.importorskip("numba")
    from finetune.autograd import jit
    from finetune.autograd.layout import as_nchw

    monkeypatch.setattr(jit, "ENABLED", True)
    jit.load()
    shape, kernel, stride, pads, dilation, ceil = POOL_CASES[name]
    opts = dict(kernel_size=kernel, stride=stride, padding=pads, dilation=dilation, ceil_mode=ceil)
    n, _, *spatial = shape
    x = np.random.default_rng(7).standard_normal((n, 37, *spatial)).round(1)  # ties
    flat = x.reshape(-1)
    flat[::17], flat[5::23], flat[7::29] = np.nan, np.inf, -np.inf
    want = max_pool_loop(x, kernel, stride, pads, dilation, ceil)
    ran, original = [], pooling._max_compiled

    def compiled(*args):
        out = original(*args)
        ran.append(out is not None)
        return out

    monkeypatch.setattr(pooling, "_max_compiled", compiled)
    for dtype in (np.float32, np.float64):
        data = x.astype(dtype)
        if layout == "channels_last":
            data = as_nchw(np.ascontiguousarray(data.transpose(0, 2, 3, 1)))
        got = kernels.max_pool(torch.tensor(data), **opts).numpy()
        np.testing.assert_array_equal(got, want.astype(dtype))
    assert ran == [True, True]


def test_max_pool_gradient_goes_to_first_maximum():
    """Ties send the whole gradient to one element (the first in the window), as PyTorch does."""
    x = leaf(np.ones((1, 1, 2, 2)))
    kernels.max_pool(x, (2, 2), (2, 2), ((0, 0), (0, 0))).sum().backward()
    np.testing.assert_array_equal(x.grad.numpy(), [[[[1.0, 0.0], [0.0, 0.0]]]])


def test_max_pool_grad_fn_name_and_float32():
    x = leaf(distinct_values((1, 2, 6, 6)), np.float32)
    y = kernels.max_pool(x, (3, 3), (2, 2), ((1, 1), (1, 1)))
    assert y.grad_fn.name() == "MaxPool2DWithIndicesBackward0"
    assert y.dtype == torch.float32
    y.sum().backward()
    assert x.grad.dtype == torch.float32


def _avg_pool_options(name: str, count_include_pad: bool) -> dict:
    _, kernel, stride, pads, _, ceil = POOL_CASES[name]
    return dict(
        kernel_size=kernel,
        stride=stride,
        padding=pads,
        ceil_mode=ceil,
        count_include_pad=count_include_pad,
    )


@pytest.mark.parametrize("count_include_pad", [True, False])
@pytest.mark.parametrize("name", POOL_CASES)
@pytest.mark.parametrize("layout", ["row-major", "channels-last"])
def test_avg_pool_matches_direct_loop_and_gradcheck(name, count_include_pad, layout):
    shape, kernel, stride, pads, _, ceil = POOL_CASES[name]
    x = np.random.default_rng(2).standard_normal(shape)
    if layout == "channels-last" and x.ndim == 4:  # pooled in its own layout, unpadded in place
        x = np.ascontiguousarray(x.transpose(0, 2, 3, 1)).transpose(0, 3, 1, 2)
    opts = _avg_pool_options(name, count_include_pad)
    got = kernels.avg_pool(const(x), **opts)
    expected = avg_pool_loop(x, kernel, stride, pads, ceil, count_include_pad)
    np.testing.assert_allclose(got.numpy(), expected, rtol=1e-12, atol=1e-12)
    assert gradcheck(lambda t: kernels.avg_pool(t, **opts), [leaf(x)])


def test_avg_pool_grad_fn_name_and_float32():
    x = leaf(np.random.default_rng(3).standard_normal((1, 2, 6, 6)), np.float32)
    y = kernels.avg_pool(x, (3, 3), (2, 2), ((1, 1), (1, 1)), ceil_mode=True)
    assert y.grad_fn.name() == "AvgPool2DBackward0"
    assert y.dtype == torch.float32
    y.sum().backward()
    assert x.grad.dtype == torch.float32


def test_frozen_pools_record_nothing():
    x = const(distinct_values((1, 1, 4, 4)))
    assert kernels.max_pool(x, (2, 2), (2, 2), ((0, 0), (0, 0))).grad_fn is None
    assert kernels.avg_pool(x, (2, 2), (2, 2), ((0, 0), (0, 0))).grad_fn is None


def test_resnet_shapes_take_the_fast_layouts():
    """Stride-1 3x3 convolutions read shifted rows, 1x1 ones the input itself (the benchmark's
    figures depend on it)."""

    def plan(c, size, k, s, p):
        return kernels.ConvPlan((8, c, size, size), (c, c, k, k), (s, s), ((p, p),) * 2, (1, 1), 1)

    assert plan(64, 56, 3, 1, 1).shifted
    assert plan(256, 14, 3, 1, 1).shifted
    assert plan(64, 56, 1, 2, 0).pointwise
    assert not plan(3, 224, 7, 2, 3).shifted
    assert plan(3, 224, 7, 2, 3).per_sample
    assert not plan(64, 56, 3, 2, 1).per_sample


@pytest.mark.parametrize("name", ["2d-plain", "2d-stride2", "2d-1x1", "2d-grouped"])
def test_conv_of_a_permuted_view(name):
    """Inputs that are views (a channels-last array seen as NCHW) give the same result."""
    x, w, b, opts = conv_inputs(CONV_CASES[name])
    for batch in (x, x[:1]):
        view = torch.tensor(np.ascontiguousarray(batch.transpose(0, 2, 3, 1))).permute(0, 3, 1, 2)
        got = kernels.conv(view, const(w), const(b) if b is not None else None, **opts)
        expected = conv_loop(
            batch, w, b, opts["stride"], opts["padding"], opts["dilation"], opts["groups"]
        )
        np.testing.assert_allclose(got.numpy(), expected, rtol=1e-10, atol=1e-10)


def test_empty_batch():
    """A batch of zero images gives empty outputs and gradients of the right shapes."""
    x = leaf(np.zeros((0, 3, 5, 5)))
    w = leaf(np.ones((4, 3, 3, 3)))
    y = kernels.conv(x, w, None, (2, 2), ((1, 1), (1, 1)), (1, 1), 1)
    assert y.shape == (0, 4, 3, 3)
    y.sum().backward()
    assert x.grad.shape == (0, 3, 5, 5)
    np.testing.assert_array_equal(w.grad.numpy(), np.zeros((4, 3, 3, 3)))
    for pool in (kernels.max_pool, kernels.avg_pool):
        assert pool(x, (2, 2), (2, 2), ((0, 0), (0, 0))).shape == (0, 3, 2, 2)


def test_conv_saves_only_what_backward_needs():
    """The input gradient needs the weight, the weight gradient needs the input: a frozen weight
    keeps the input out of memory, and a first layer keeps the weight out of the saved set."""
    x, w, b, opts = conv_inputs(CONV_CASES["2d-plain"])
    saved_x, saved_w = kernels.conv(leaf(x), const(w), None, **opts).grad_fn.saved_tensors
    assert saved_x is None and saved_w is not None
    saved_x, saved_w = kernels.conv(const(x), leaf(w), None, **opts).grad_fn.saved_tensors
    assert saved_x is not None and saved_w is None


@pytest.mark.parametrize("count_include_pad", [True, False])
@pytest.mark.parametrize("name", [n for n in POOL_CASES if n.startswith("2d")])
def test_avg_pool_of_a_channels_last_input(name, count_include_pad):
    """Pooled in its own layout (the output channels last too), with the direct loop's values;
    its gradient by gradcheck on a channels-last leaf."""
    shape, kernel, stride, pads, _, ceil = POOL_CASES[name]
    r = np.random.default_rng(3)
    x = np.ascontiguousarray(r.standard_normal((shape[0], 3, *shape[2:])).transpose(0, 2, 3, 1))
    x = x.transpose(0, 3, 1, 2)  # n c h w values, n h w c memory, three channels
    opts = _avg_pool_options(name, count_include_pad)
    got = kernels.avg_pool(torch.from_numpy(x), **opts).numpy()
    expected = avg_pool_loop(x, kernel, stride, pads, ceil, count_include_pad)
    np.testing.assert_allclose(got, expected, rtol=1e-12, atol=1e-12)
    assert got.transpose(0, 2, 3, 1).flags.c_contiguous
    t = torch.from_numpy(x.copy(order="K")).requires_grad_()
    assert gradcheck(lambda a: kernels.avg_pool(a, **opts), [t])


def test_numba_is_loaded_for_inference_and_training_not_for_a_frozen_layer(monkeypatch):
    """``conv._load_compiled``: a convolution loads the compiled kernels (``jit.load``) with
    gradients off or when its weight trains; a frozen layer under a trainable head does not,
    so that a frozen-backbone step keeps its memory."""
    from finetune.autograd import jit

    loads = []
    monkeypatch.setattr(jit, "load", lambda: loads.append(1))
    x, w, b, opts = conv_inputs(CONV_CASES["2d-plain"])
    frozen = torch.tensor(w)
    kernels.conv(leaf(x), frozen, None, **opts)  # the input needs a gradient, the weight not
    assert loads == []
    with torch.no_grad():
        kernels.conv(const(x), frozen, None, **opts)
    assert loads == [1]
    kernels.conv(const(x), leaf(w), None, **opts)
    assert loads == [1, 1]
