"""Depthwise convolutions (``finetune/autograd/depthwise.py``): forward against a slow numpy loop
and against onnxruntime running the same single Conv node, gradients against gradcheck in
float64, over strides, kernels, asymmetric pads, dilation, channel multipliers, batches, dtypes
and both input layouts; the output stays channels last and float32 stays float32."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

import finetune as torch
from finetune.autograd import conv as kernels
from finetune.autograd import depthwise, gradcheck, jit, piecewise
from finetune.autograd.layout import is_channels_last
from finetune.parallel import get_num_threads, set_num_threads


def depthwise_loop(x, w, b, stride, pads, dilation):
    """Direct depthwise convolution: one output pixel and one tap at a time, all samples and
    channels at once; output channel ``o`` reads input channel ``o // multiplier``."""
    n, c, h, wd = x.shape
    o, _, kh, kw = w.shape
    xp = np.pad(x, ((0, 0), (0, 0), *pads))[:, np.arange(o) // (o // c)]
    (sh, sw), (dh, dw) = stride, dilation
    oh = (xp.shape[2] - (kh - 1) * dh - 1) // sh + 1
    ow = (xp.shape[3] - (kw - 1) * dw - 1) // sw + 1
    out = np.zeros((n, o, oh, ow))
    for y, x_, i, j in itertools.product(range(oh), range(ow), range(kh), range(kw)):
        out[:, :, y, x_] += xp[:, :, y * sh + i * dh, x_ * sw + j * dw] * w[:, 0, i, j]
    if b is not None:
        out += b[:, None, None]
    return out


def channels_last(a: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(a.transpose(0, 2, 3, 1)).transpose(0, 3, 1, 2)


# name: (batch, channels, (h, w), multiplier, kernel, stride, pads, dilation, bias)
CASES = {
    "3x3": (1, 4, (7, 6), 1, (3, 3), (1, 1), ((1, 1), (1, 1)), (1, 1), True),
    "3x3-stride2": (3, 2, (7, 8), 1, (3, 3), (2, 2), ((1, 1), (1, 1)), (1, 1), False),
    "5x5-stride2-asymmetric": (1, 5, (11, 9), 1, (5, 5), (2, 2), ((1, 2), (2, 0)), (1, 1), True),
    "7x7-pad3": (1, 3, (7, 8), 1, (7, 7), (1, 1), ((3, 3), (3, 3)), (1, 1), True),
    "dilated": (1, 3, (9, 9), 1, (3, 3), (1, 1), ((2, 2), (2, 2)), (2, 2), False),
    "dilated-stride-mixed": (3, 2, (8, 7), 1, (3, 2), (2, 1), ((1, 2), (2, 0)), (2, 3), True),
    "multiplier2": (3, 2, (5, 6), 2, (3, 3), (1, 1), ((1, 1), (1, 1)), (1, 1), True),
    "multiplier2-stride2": (1, 2, (8, 8), 2, (5, 5), (2, 2), ((2, 2), (2, 2)), (1, 1), False),
    "pads-beyond-kernel": (1, 3, (5, 5), 1, (3, 3), (1, 1), ((3, 0), (0, 4)), (1, 1), True),
    # wide enough for the compiled kernel's blocks of four pixels, and some pixels after them
    "3x3-wide": (2, 3, (6, 15), 1, (3, 3), (1, 1), ((1, 1), (1, 1)), (1, 1), True),
    "3x3-stride2-wide": (1, 3, (7, 19), 1, (3, 3), (2, 2), ((1, 1), (0, 1)), (1, 1), True),
    "5x5-wide": (1, 4, (9, 14), 1, (5, 5), (1, 1), ((2, 2), (2, 2)), (1, 1), False),
    "kernel-narrower-than-stride": (
        3,
        2,
        (7, 8),
        1,
        (1, 2),
        (2, 3),
        ((0, 1), (1, 0)),
        (1, 1),
        True,
    ),
}


def case_inputs(name, dtype=np.float64, seed=0):
    n, c, spatial, m, kernel, stride, pads, dilation, has_bias = CASES[name]
    r = np.random.default_rng(seed)
    x = r.standard_normal((n, c, *spatial)).astype(dtype)
    w = r.standard_normal((c * m, 1, *kernel)).astype(dtype)
    b = r.standard_normal(c * m).astype(dtype) if has_bias else None
    return x, w, b, dict(stride=stride, padding=pads, dilation=dilation, groups=c)


@pytest.fixture(autouse=True, params=["compiled", "numpy"])
def kernel(request, monkeypatch):
    """Every test twice: with the compiled kernels (``jit``: the forward, a unit stride's input
    gradient) and with numpy's."""
    if request.param == "compiled":
        pytest.importorskip("numba")
        monkeypatch.setattr(jit, "ENABLED", True)
    else:
        monkeypatch.setattr(jit, "ENABLED", False)
    return request.param


@pytest.fixture(params=["default-blocks", "one-row-blocks"])
def blocks(request, monkeypatch):
    """The kernels' default blocks of rows, and one row per block (every block edge)."""
    if request.param == "one-row-blocks":
        monkeypatch.setattr(depthwise, "_BLOCK_ELEMENTS", 1)
    return request.param


@pytest.fixture(params=["pixel-blocks", "four-rows"])
def rows(request, monkeypatch):
    """The compiled 3x3 kernels of unit horizontal stride both ways: four pixels at a time, and
    four rows at a time along whole rows (``_four_rows``, else only from 56 pixels wide)."""
    width = 1 if request.param == "four-rows" else 1 << 30
    monkeypatch.setattr(depthwise, "_FOUR_ROWS_WIDTH", width)
    return request.param


@pytest.fixture(params=["super-pixels", "per-channel"])
def strided(request, monkeypatch):
    """Both ways to run a horizontal stride: columns paired into super-pixels (few channels) and
    one window per output pixel (many channels)."""
    if request.param == "per-channel":
        monkeypatch.setattr(depthwise, "_SUPER_PIXEL_CHANNELS", 0)
    return request.param


def run(x, w, b, opts, requires_grad=False):
    args = [torch.tensor(a, requires_grad=requires_grad) for a in (x, w)]
    bias = None if b is None else torch.tensor(b, requires_grad=requires_grad)
    return kernels.conv(*args, bias, **opts), args, bias


@pytest.mark.parametrize("name", CASES)
@pytest.mark.parametrize("layout", ["nchw", "channels-last"])
def test_forward_matches_loop(name, layout, blocks, strided, rows):
    x, w, b, opts = case_inputs(name)
    assert depthwise.plan(x.shape, w.shape, **opts, outs=(1, 1)) is not None
    y, _, _ = run(channels_last(x) if layout == "channels-last" else x, w, b, opts)
    expected = depthwise_loop(x, w, b, opts["stride"], opts["padding"], opts["dilation"])
    np.testing.assert_allclose(y.numpy(), expected, rtol=1e-10, atol=1e-10)
    # the next layer (usually a 1x1 convolution) reads the channels-last output with no copy
    assert is_channels_last(y.numpy())


@pytest.mark.parametrize("name", CASES)
def test_float32_stays_float32(name):
    x, w, b, opts = case_inputs(name, np.float32)
    y, (xt, wt), bt = run(x, w, b, opts, requires_grad=True)
    assert y.dtype == torch.float32
    y.sum().backward()
    assert xt.grad.dtype == wt.grad.dtype == torch.float32
    expected = depthwise_loop(x, w, b, opts["stride"], opts["padding"], opts["dilation"])
    np.testing.assert_allclose(y.detach().numpy(), expected, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("name", CASES)
def test_gradients_gradcheck(name, blocks, rows):
    x, w, b, opts = case_inputs(name)
    _, args, bias = run(x, w, b, opts, requires_grad=True)
    inputs = args if bias is None else [*args, bias]
    assert gradcheck(lambda *t: kernels.conv(*t[:2], t[2] if len(t) > 2 else None, **opts), inputs)


@pytest.mark.parametrize("name", ["3x3", "multiplier2-stride2"])
def test_gradients_from_channels_last_input_and_gradient(name):
    """The backward reads a channels-last input and output gradient as it reads row-major ones."""
    x, w, b, opts = case_inputs(name)
    grads = []
    for convert in (lambda a: a, channels_last):
        y, (xt, wt), _ = run(convert(x), w, b, opts, requires_grad=True)
        g = np.random.default_rng(1).standard_normal(y.shape)
        y.backward(torch.tensor(convert(g)))
        grads.append((xt.grad.numpy(), wt.grad.numpy()))
    for plain, last in zip(*grads):
        np.testing.assert_allclose(plain, last, rtol=1e-12, atol=1e-12)


def test_frozen_layer_records_nothing_and_skips_the_weight_gradient():
    x, w, b, opts = case_inputs("7x7-pad3")
    y, _, _ = run(x, w, b, opts)
    assert y.grad_fn is None
    xt = torch.tensor(x, requires_grad=True)
    wt = torch.tensor(w)  # frozen
    y = kernels.conv(xt, wt, None, **opts)
    y.sum().backward()
    assert wt.grad is None and xt.grad.shape == x.shape


def test_threads_give_the_same_bits():
    """Blocks of rows shared over threads: the forward and both gradients do not depend on the
    thread count (the weight gradient's block sums are added in a fixed order)."""
    r = np.random.default_rng(2)
    x = r.standard_normal((2, 24, 40, 36)).astype(np.float32)
    w = r.standard_normal((24, 1, 5, 5)).astype(np.float32)
    g = r.standard_normal((2, 24, 20, 18)).astype(np.float32)
    opts = dict(stride=(2, 2), padding=((2, 2), (2, 2)), dilation=(1, 1), groups=24)
    before = get_num_threads()
    results = []
    try:
        for threads in (1, 2):
            set_num_threads(threads)
            y, (xt, wt), _ = run(x, w, None, opts, requires_grad=True)
            y.backward(torch.tensor(g))
            results.append((y.detach().numpy(), xt.grad.numpy(), wt.grad.numpy()))
    finally:
        set_num_threads(before)
    for one, two in zip(*results):
        np.testing.assert_array_equal(one, two)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("kh, kw, stride", list(depthwise._BLOCKED))
def test_blocked_kernels_give_the_per_tap_kernels_bits(kh, kw, stride, dtype, kernel):
    """``_blocked_rows`` (four pixels at a time, the common kernels; for a unit horizontal
    stride also four rows at a time, ``_four_rows``) against the kernel that adds one tap at a
    time over whole rows: the same sums in the same order, so the same values, NaN and
    infinities included, for every padding (a negative one, as the input gradient passes,
    skips taps), height and width around the blocks' edges; and a ReLU or a clip in the
    kernel's stores gives what numpy's pass after it gives, signs of zeros included."""
    if kernel == "numpy":
        pytest.skip("compiled kernels only")
    per_tap = jit.compiled(depthwise._correlate_rows)
    blocked = jit.compiled(depthwise._BLOCKED[(kh, kw, stride)])
    r = np.random.default_rng(3)
    shapes = itertools.product((1, 4, 9, 12), (1, 3, 8, 13), (-1, 0, 1, 3), (1, 2), (1, 17))
    for h, w, pad, sh, c in shapes:
        oh, ow = (h + 2 * pad - kh) // sh + 1, (w + 2 * pad - kw) // stride + 1
        if oh <= 0 or ow <= 0:
            continue
        x = r.standard_normal((h, w, c)).astype(dtype)
        x.flat[r.integers(x.size, size=2)] = np.inf, np.nan
        weights = r.standard_normal((kh, kw, c)).astype(dtype)
        bias = r.standard_normal(c).astype(dtype)
        expected = np.empty((oh, ow, c), dtype)
        tiled = np.tile(weights, (1, 1, ow)) if stride == 1 else weights
        per_tap(x, tiled, np.tile(bias, ow), expected, 0, oh, sh, stride, 1, 1, pad, pad, 1)
        rows = [(np.zeros((0, 0, 0), dtype), bias[:0])]  # four pixels at a time only
        if stride == 1:
            rows.append((tiled, np.tile(bias, ow)))  # and four rows at a time
        cases = itertools.product((None, piecewise.relu(), piecewise.clip(-0.5, 1.0)), rows)
        for activation, (along_rows, rows_bias) in cases:
            got = np.full_like(expected, 7)
            bounds = depthwise._bounds(activation, dtype)
            blocked(
                x[None], weights, bias, got[None], 0, 1, 1, oh, sh, pad, pad, bounds,
                along_rows, rows_bias,
            )  # fmt: skip
            want = expected.copy()
            if activation is not None:
                activation(want)  # numpy's maximum or clip, after the per-tap kernel
            message = f"{h}x{w} pad {pad} stride {sh} {activation} rows {len(along_rows)}"
            np.testing.assert_array_equal(got, want, err_msg=message)
            assert np.array_equal(np.signbit(got), np.signbit(want)), message  # -0.0 too


def test_frozen_inference_keeps_the_row_weights_until_the_weight_changes(kernel):
    """A frozen 3x3 layer wide enough for the four-row kernel keeps its weights tiled along a
    row on the weight (``conv._kept``) and gives the loop's values; an in-place change of the
    weight is seen on the next call, not served from what was kept."""
    r = np.random.default_rng(5)
    x = channels_last(r.standard_normal((2, 5, 9, 60)))
    w, b = r.standard_normal((5, 1, 3, 3)), r.standard_normal(5)
    pads = ((1, 1), (1, 1))
    weight = torch.tensor(w)
    plan = kernels.ConvPlan(x.shape, w.shape, (1, 1), pads, (1, 1), 5)
    relu = piecewise.relu()
    with torch.no_grad():
        for scale in (1.0, 1.0, -2.0):
            if scale != 1.0:
                weight.mul_(scale)
                w = w * scale
            y = kernels.infer(plan, x, weight, b, relu)
            expected = np.maximum(depthwise_loop(x, w, b, (1, 1), pads, (1, 1)), 0)
            np.testing.assert_allclose(y, expected, rtol=1e-12, atol=1e-12)
    if kernel == "compiled":
        key, kept = weight.__dict__["_kept"]
        assert key[2] == ("rows", 60) and kept.shape == (3, 3, 60 * 5)


def test_other_convolutions_keep_the_generic_path():
    assert depthwise.plan((1, 4, 5), (4, 1, 3), (1,), ((1, 1),), (1,), 4, (5,)) is None  # 1-d
    assert (
        depthwise.plan((1, 4, 5, 5), (4, 2, 3, 3), (1, 1), ((1, 1),) * 2, (1, 1), 2, (5, 5)) is None
    )
    assert (
        depthwise.plan((1, 1, 5, 5), (3, 1, 3, 3), (1, 1), ((1, 1),) * 2, (1, 1), 1, (5, 5)) is None
    )


# -- onnxruntime: the same single Conv node ----------------------------------------------------


def onnxruntime_conv(x, w, b, opts, transpose=False):
    pytest.importorskip("onnx")
    ort = pytest.importorskip("onnxruntime")
    from onnx import helper, numpy_helper

    pads = [lo for lo, _ in opts["padding"]] + [hi for _, hi in opts["padding"]]
    names = ["x", "w"] + ([] if b is None else ["b"])
    node = helper.make_node(
        "ConvTranspose" if transpose else "Conv",
        names,
        ["y"],
        group=opts["groups"],
        strides=list(opts["stride"]),
        pads=pads,
        dilations=list(opts["dilation"]),
    )
    elem = helper.np_dtype_to_tensor_dtype(x.dtype)
    inits = [numpy_helper.from_array(w, "w")] + (
        [] if b is None else [numpy_helper.from_array(b, "b")]
    )
    graph = helper.make_graph(
        [node],
        "conv",
        [helper.make_tensor_value_info("x", elem, x.shape)],
        [helper.make_tensor_value_info("y", elem, None)],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    session = ort.InferenceSession(
        model.SerializeToString(), options, providers=["CPUExecutionProvider"]
    )
    return session.run(None, {"x": x})[0]


@pytest.mark.parametrize("name", CASES)
@pytest.mark.parametrize("layout", ["nchw", "channels-last"])
def test_forward_matches_onnxruntime(name, layout):
    """float32 (onnxruntime's CPU Conv has no float64 kernel; float64 is checked against the
    loop above)."""
    x, w, b, opts = case_inputs(name, np.float32, seed=3)
    y, _, _ = run(channels_last(x) if layout == "channels-last" else x, w, b, opts)
    expected = onnxruntime_conv(x, w, b, opts)
    np.testing.assert_allclose(y.numpy(), expected, rtol=1e-4, atol=1e-4)
    assert y.numpy().dtype == np.float32


@pytest.mark.parametrize(
    "shape, kernel, stride, pad",
    [
        ((1, 96, 14, 14), 7, 1, 3),  # ConvNeXt's 7x7
        ((3, 32, 23, 23), 3, 2, 1),  # MobileNetV2's stride-2 3x3
        ((2, 40, 13, 13), 5, 1, 2),  # EfficientNet's 5x5
    ],
)
def test_network_shapes_match_onnxruntime(shape, kernel, stride, pad):
    r = np.random.default_rng(4)
    x = r.standard_normal(shape).astype(np.float32)
    w = r.standard_normal((shape[1], 1, kernel, kernel)).astype(np.float32)
    b = r.standard_normal(shape[1]).astype(np.float32)
    opts = dict(stride=(stride,) * 2, padding=((pad, pad),) * 2, dilation=(1, 1), groups=shape[1])
    y, _, _ = run(channels_last(x), w, b, opts)
    np.testing.assert_allclose(y.numpy(), onnxruntime_conv(x, w, b, opts), rtol=1e-4, atol=1e-4)


def test_depthwise_transposed_convolution_matches_onnxruntime():
    """ConvTranspose with one group per channel runs on the depthwise input gradient."""
    r = np.random.default_rng(5)
    x = r.standard_normal((2, 6, 5, 4))
    w = r.standard_normal((6, 1, 3, 3))
    b = r.standard_normal(6)
    opts = dict(stride=(2, 2), padding=((1, 1), (1, 0)), dilation=(1, 1), groups=6)
    single = [a.astype(np.float32) for a in (x, w, b)]
    y = kernels.conv_transpose(*map(torch.tensor, single), **opts)
    expected = onnxruntime_conv(*single, opts, transpose=True)
    np.testing.assert_allclose(y.numpy(), expected, rtol=1e-4, atol=1e-4)
    inputs = [torch.tensor(a, requires_grad=True) for a in (x, w, b)]
    assert gradcheck(lambda *t: kernels.conv_transpose(*t, **opts), inputs)
