"""Channels-last activations: 2-d convolutions return ``n c h w`` views of ``n h w c`` memory,
and every kernel that meets one (the convolutions again, BatchNorm, max-pool, ReLU) reads it in
its own layout. Values and gradients must not depend on the layout: each path is checked
against the plain loops of test_conv_kernels, gradcheck, or the same kernel on a row-major copy.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from test_conv_kernels import CONV_CASES, conv_inputs, conv_loop, max_pool_loop

import finetune as torch
import finetune.nn.functional as F
from finetune.autograd import conv as kernels
from finetune.autograd import gradcheck, grouped, jit, winograd
from finetune.autograd.layout import is_channels_last
from finetune.errors import ShapeError
from finetune.parallel import elementwise


def channels_last(a: np.ndarray) -> np.ndarray:
    """The same values as ``a``, stored ``n h w c``."""
    return np.ascontiguousarray(a.transpose(0, 2, 3, 1)).transpose(0, 3, 1, 2)


def leaf(a: np.ndarray) -> torch.Tensor:
    return torch.tensor(a, requires_grad=True)


TWO_D = [name for name in CONV_CASES if name.startswith("2d")]


@pytest.fixture(params=["windows", "per-sample"])
def im2col(request, monkeypatch):
    """The two im2col layouts a channels-last plan can take: batch-wide or one sample at a time."""
    monkeypatch.setattr(kernels, "_MAX_SHIFTED_WASTE", 0.0)
    monkeypatch.setattr(
        kernels, "_PER_SAMPLE_PIXELS", 0 if request.param == "per-sample" else math.inf
    )
    return request.param


@pytest.mark.parametrize("name", TWO_D)
@pytest.mark.parametrize("layout", ["nchw", "channels-last"])
def test_conv_output_layout_and_values(name, layout, im2col):
    x, w, b, opts = conv_inputs(CONV_CASES[name])
    if layout == "channels-last":
        x = channels_last(x)
    got = kernels.conv(
        torch.tensor(x), torch.tensor(w), None if b is None else torch.tensor(b), **opts
    )
    expected = conv_loop(x, w, b, opts["stride"], opts["padding"], opts["dilation"], opts["groups"])
    np.testing.assert_allclose(got.numpy(), expected, rtol=1e-10, atol=1e-10)
    # ungrouped, depthwise and compiled grouped 3x3 convolutions answer channels last, whatever
    # their input's layout
    plan = kernels.ConvPlan(x.shape, w.shape, **opts)
    compiled = plan.grouped is not None and jit.compiled(grouped._grouped_3x3) is not None
    answers_last = (opts["groups"] in (1, x.shape[1]) or compiled) and got.shape[1] > 1
    assert is_channels_last(got.numpy()) == answers_last


@pytest.mark.parametrize(
    "name", ["2d-stride2", "2d-asymmetric", "2d-dilated", "2d-1x1", "2d-1x1-stride2"]
)
def test_frozen_weights_keep_their_taps_first_matrix_until_they_change(name):
    """Inference keeps a frozen weight's ``(k k c) o`` matrix for a channels-last input, and
    makes it again once the weight changes in place or is replaced."""
    x, w, b, opts = conv_inputs(CONV_CASES[name])
    x = channels_last(x)
    weight = torch.tensor(w)
    bias = None if b is None else b
    plan = kernels.ConvPlan(x.shape, w.shape, **opts)
    assert plan.channels_last and not (plan.winograd or plan.shifted or plan.per_sample)

    def check():
        expected = conv_loop(
            x, weight.numpy(), b, opts["stride"], opts["padding"], opts["dilation"], 1
        )
        got = kernels.infer(plan, x, weight, bias)
        np.testing.assert_allclose(got, expected, rtol=1e-10, atol=1e-10)
        return weight.__dict__["_kept"][1]

    kept = check()
    assert kept.flags.c_contiguous and kept.shape == (w[0].size, w.shape[0])
    assert check() is kept  # reused, not made again
    weight.mul_(-2)  # in place: a new version
    assert check() is not kept
    weight.data = torch.tensor(np.flip(w, axis=1).copy())  # a new array, same version
    check()
    trainable = torch.tensor(w, requires_grad=True)
    kernels.infer(plan, x, trainable, bias)
    assert "_kept" not in trainable.__dict__  # reordered per call, nothing held


@pytest.mark.parametrize(
    "name", ["2d-plain", "2d-stride2", "2d-asymmetric", "2d-1x1-stride2", "2d-7x7-stride2"]
)
def test_stacked_convs_gradcheck(name, im2col):
    """The second convolution reads the first's channels-last output, and hands back a
    channels-last input gradient to the first's backward."""
    x, w, b, opts = conv_inputs(CONV_CASES[name], seed=2)
    o = w.shape[0]
    w2 = np.random.default_rng(3).standard_normal((3, o, 3, 3))
    second = dict(stride=(1, 1), padding=((1, 1), (1, 1)), dilation=(1, 1), groups=1)

    def fn(x, w, w2, *bias):
        return kernels.conv(kernels.conv(x, w, *bias, **opts), w2, None, **second)

    inputs = [leaf(x), leaf(w), leaf(w2)] + ([] if b is None else [leaf(b)])
    assert gradcheck(fn, inputs)
    # and the same gradients from a channels-last input
    inputs_last = [leaf(channels_last(x))] + [leaf(t.detach().numpy()) for t in inputs[1:]]
    for ts in (inputs, inputs_last):
        fn(*ts).sum().backward()
    for a, b_ in zip(inputs, inputs_last):
        np.testing.assert_allclose(a.grad.numpy(), b_.grad.numpy(), rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("m", [2, 4])
@pytest.mark.parametrize("pads", [((1, 1), (1, 1)), ((0, 2), (2, 1))])
def test_winograd_reads_either_layout(m, pads):
    rng = np.random.default_rng(m)
    x = rng.standard_normal((2, 3, 9, 7))
    w = rng.standard_normal((4, 3, 3, 3))
    transformed = winograd.transform_weights(w, m)
    plain = winograd.convolve(x, transformed, pads, m, None)
    last = winograd.convolve(channels_last(x), transformed, pads, m, None)
    assert is_channels_last(plain) and is_channels_last(last)
    np.testing.assert_allclose(plain, last, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(
        plain, conv_loop(x, w, None, (1, 1), pads, (1, 1), 1), rtol=1e-11, atol=1e-11
    )


def test_winograd_weight_gradient_from_a_row_major_gradient():
    """The output gradient may reach the weight gradient in either layout."""
    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, 3, 8, 8))
    g = rng.standard_normal((2, 4, 8, 8))
    pads = ((1, 1), (1, 1))
    tiles = winograd.transformed_tiles(x, pads, 4).copy()
    np.testing.assert_allclose(
        winograd.weight_gradient(tiles, g, 4),
        winograd.weight_gradient(tiles, channels_last(g), 4),
        rtol=1e-12,
        atol=1e-12,
    )


def batch_norm_train(x, weight, bias):
    return F.batch_norm(x, None, None, weight, bias, training=True)


def test_batch_norm_train_channels_last_matches_row_major():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((3, 5, 4, 6)) * 3 + 1
    g = rng.standard_normal(x.shape)
    results = []
    for layout in (np.ascontiguousarray, channels_last):
        xt, w, b = leaf(layout(x)), leaf(np.linspace(0.5, 2, 5)), leaf(np.linspace(-1, 1, 5))
        mean, var = torch.zeros(5, dtype=torch.float64), torch.ones(5, dtype=torch.float64)
        y = F.batch_norm(xt, mean, var, w, b, training=True, momentum=0.5)
        y.backward(torch.tensor(layout(g)))
        results.append(
            [
                y.detach().numpy(),
                xt.grad.numpy(),
                w.grad.numpy(),
                b.grad.numpy(),
                mean.numpy(),
                var.numpy(),
            ]
        )
        assert is_channels_last(y.detach().numpy()) == (layout is channels_last)
    for a, b_ in zip(*results):
        np.testing.assert_allclose(a, b_, rtol=1e-12, atol=1e-12)


def test_batch_norm_train_channels_last_gradcheck():
    rng = np.random.default_rng(1)
    inputs = [
        leaf(channels_last(rng.standard_normal((2, 3, 3, 4)))),
        leaf(rng.standard_normal(3)),
        leaf(rng.standard_normal(3)),
    ]
    assert gradcheck(batch_norm_train, inputs)


def test_batch_norm_channels_last_float32_sums_stay_accurate():
    """10^5 pixels a channel: the channels-last statistics are summed along image rows, then
    pairwise, about as accurate as the row-major path (a plain float32 sum over the rows,
    numpy's order for the leading axis, lands about 100x further off)."""
    rng = np.random.default_rng(2)
    x = (rng.standard_normal((8, 4, 112, 112)) + 3).astype(np.float32)
    x64 = x.astype(np.float64)
    mean, var = x64.mean(axis=(0, 2, 3), keepdims=True), x64.var(axis=(0, 2, 3), keepdims=True)
    exact = (x64 - mean) / np.sqrt(var + 1e-5)
    errors = [
        np.abs(batch_norm_train(torch.tensor(layout(x)), None, None).numpy() - exact).max()
        for layout in (np.ascontiguousarray, channels_last)
    ]
    assert errors[1] < 2 * max(errors[0], 1e-6), errors


@pytest.mark.parametrize(
    ("kernel", "stride", "pads", "ceil"),
    [((3, 3), (2, 2), ((1, 1), (1, 1)), False), ((2, 3), (2, 1), ((0, 0), (1, 1)), True)],
)
def test_max_pool_channels_last(kernel, stride, pads, ceil):
    rng = np.random.default_rng(0)
    x = rng.permutation(2 * 4 * 9 * 8).reshape(2, 4, 9, 8).astype(np.float64)
    args = (kernel, stride, pads)
    expected = max_pool_loop(x, kernel, stride, pads, (1, 1), ceil)
    with torch.no_grad():
        got = kernels.max_pool(torch.tensor(channels_last(x)), *args, ceil_mode=ceil).numpy()
    assert is_channels_last(got)
    np.testing.assert_array_equal(got, expected)
    # with a gradient: same values, and gradcheck
    xt = leaf(channels_last(x))
    got = kernels.max_pool(xt, *args, ceil_mode=ceil).detach().numpy()
    assert is_channels_last(got)
    np.testing.assert_array_equal(got, expected)
    assert gradcheck(lambda t: kernels.max_pool(t, *args, ceil_mode=ceil), [xt])


def test_relu_keeps_the_layout_and_splits_it():
    x = channels_last(np.random.default_rng(0).standard_normal((2, 64, 32, 32)))
    t = leaf(x)
    y = torch.relu(t)
    assert is_channels_last(y.detach().numpy())
    np.testing.assert_array_equal(y.detach().numpy(), np.maximum(x, 0))
    y.backward(torch.tensor(channels_last(np.ones(x.shape))))
    assert is_channels_last(t.grad.numpy())
    np.testing.assert_array_equal(t.grad.numpy(), (x > 0).astype(float))


def test_elementwise_splits_any_dense_layout_and_falls_back_otherwise():
    calls = []

    def add(o, a, b):
        calls.append(o.shape)
        np.add(a, b, out=o)

    a = channels_last(np.arange(2 * 64 * 32 * 32, dtype=float).reshape(2, 64, 32, 32))
    out = np.empty_like(a)
    elementwise(add, out, a, a)
    np.testing.assert_array_equal(out, 2 * a)
    assert all(len(shape) == 1 for shape in calls)  # flat chunks of the memory
    calls.clear()
    mixed = np.empty(a.shape)
    elementwise(add, mixed, a, a)
    np.testing.assert_array_equal(mixed, 2 * a)
    assert calls == [a.shape]  # different layouts: one call on the whole arrays


def test_memory_formats_as_in_pytorch():
    x = torch.randn(2, 3, 4, 5)
    assert x.is_contiguous() and not x.is_contiguous(memory_format=torch.channels_last)
    last = x.contiguous(memory_format=torch.channels_last)
    assert last.shape == x.shape and last.stride() == (60, 1, 15, 3) and last.stride(1) == 1
    assert not last.is_contiguous() and last.is_contiguous(memory_format=torch.channels_last)
    assert last.contiguous(memory_format=torch.channels_last) is last
    assert torch.equal(last, x) and torch.equal(last.contiguous(), x)
    assert last.contiguous().stride() == (60, 20, 5, 1)
    assert x.to(memory_format=torch.channels_last).is_contiguous(memory_format=torch.channels_last)
    # clone keeps the layout unless told otherwise; the copies are differentiable
    assert last.clone().is_contiguous(memory_format=torch.channels_last)
    assert last.clone(memory_format=torch.contiguous_format).is_contiguous()
    leaf_ = torch.randn(1, 2, 3, 3, requires_grad=True)
    leaf_.contiguous(memory_format=torch.channels_last).sum().backward()
    assert torch.equal(leaf_.grad, torch.ones(1, 2, 3, 3))
    with pytest.raises(ShapeError, match="rank 4"):
        torch.randn(2, 3).is_contiguous(memory_format=torch.channels_last)


def test_conv_output_is_channels_last_and_contiguous_gives_row_major():
    """Unlike PyTorch, whose CPU convolution answers in its input's layout, a 2-d convolution
    here always answers channels last; ``.contiguous()`` gives the row-major copy."""
    conv = torch.nn.Conv2d(3, 8, 3, padding=1)
    y = conv(torch.randn(2, 3, 6, 6))
    assert y.is_contiguous(memory_format=torch.channels_last) and not y.is_contiguous()
    assert y.contiguous().is_contiguous()
    assert y.view(2, -1).shape == (2, 8 * 36)  # view copies where the strides do not allow
