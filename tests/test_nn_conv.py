"""Convolution and pooling layers against direct numpy loops, and gradcheck in float64."""

from __future__ import annotations

import math

import numpy as np
import pytest

import finetune as torch
import finetune.nn.functional as F
from finetune import nn
from finetune.autograd import gradcheck
from finetune.errors import ShapeError


def leaf(array) -> torch.Tensor:
    return torch.tensor(np.asarray(array, dtype=np.float64), requires_grad=True)


def rng(seed: int = 0) -> np.random.Generator:
    return np.random.default_rng(seed)


def conv_loop(x, w, b, stride, pads, dilation, groups):
    """Direct 2-D convolution: one output element at a time."""
    n, _, h, wd = x.shape
    o, cg, kh, kw = w.shape
    xp = np.pad(x, ((0, 0), (0, 0), pads[0], pads[1]))
    oh = (h + sum(pads[0]) - dilation[0] * (kh - 1) - 1) // stride[0] + 1
    ow = (wd + sum(pads[1]) - dilation[1] * (kw - 1) - 1) // stride[1] + 1
    per_group = o // groups
    out = np.zeros((n, o, oh, ow))
    for b_ in range(n):
        for oc in range(o):
            g = oc // per_group
            for i in range(oh):
                for j in range(ow):
                    total = 0.0 if b is None else b[oc]
                    for ci in range(cg):
                        for ki in range(kh):
                            for kj in range(kw):
                                total += (
                                    xp[
                                        b_,
                                        g * cg + ci,
                                        i * stride[0] + ki * dilation[0],
                                        j * stride[1] + kj * dilation[1],
                                    ]
                                    * w[oc, ci, ki, kj]
                                )
                    out[b_, oc, i, j] = total
    return out


CONV_CASES = {
    "plain": dict(),
    "stride2-pad1": dict(stride=2, padding=1),
    "tuple-args": dict(stride=(1, 2), padding=(2, 1), dilation=(1, 2)),
    "dilated": dict(dilation=2, padding=2),
    "grouped": dict(groups=2, padding=1),
    "depthwise": dict(groups=4, out=4, padding=1),
    "same-even-kernel": dict(padding="same", kernel=(2, 3)),
    "valid": dict(padding="valid"),
    "no-bias": dict(bias=False, stride=2),
    "1x1": dict(kernel=(1, 1), out=3),
}


@pytest.mark.parametrize("name", list(CONV_CASES))
def test_conv2d_matches_direct_loop_and_gradcheck(name):
    case = dict(CONV_CASES[name])
    kernel = case.pop("kernel", (3, 3))
    out_channels = case.pop("out", 6)
    bias = case.pop("bias", True)
    torch.manual_seed(0)
    layer = nn.Conv2d(4, out_channels, kernel, bias=bias, **case).double()
    x = rng(1).standard_normal((2, 4, 5, 6))
    pads = F._conv_padding(layer.padding, layer.kernel_size, layer.dilation, layer.stride)
    w = layer.weight.detach().numpy()
    b = None if layer.bias is None else layer.bias.detach().numpy()
    expected = conv_loop(x, w, b, layer.stride, pads, layer.dilation, layer.groups)
    out = layer(torch.from_numpy(x))
    assert out.shape == expected.shape
    assert np.allclose(out.detach().numpy(), expected, atol=1e-10)
    small = leaf(x[:1, :, :4, :5])
    params = [layer.weight] + ([layer.bias] if bias else [])
    assert gradcheck(lambda t, *p: layer(t), (small, *params))


def test_conv2d_float32_end_to_end():
    layer = nn.Conv2d(3, 4, 3, padding=1)
    x = torch.randn(2, 3, 5, 5, requires_grad=True)
    out = layer(x)
    assert out.dtype == torch.float32
    out.sum().backward()
    assert x.grad.dtype == torch.float32 and layer.weight.grad.dtype == torch.float32


def test_conv2d_reflect_padding_mode():
    layer = nn.Conv2d(2, 3, 3, padding=1, padding_mode="reflect").double()
    x = rng(2).standard_normal((1, 2, 4, 4))
    padded = np.pad(x, ((0, 0), (0, 0), (1, 1), (1, 1)), mode="reflect")
    expected = conv_loop(
        padded,
        layer.weight.detach().numpy(),
        layer.bias.detach().numpy(),
        (1, 1),
        ((0, 0), (0, 0)),
        (1, 1),
        1,
    )
    assert np.allclose(layer(torch.from_numpy(x)).detach().numpy(), expected)
    assert "padding_mode=reflect" in repr(layer)


def test_asymmetric_padding_through_functional_pad():
    x = rng(3).standard_normal((1, 2, 4, 5))
    w = rng(4).standard_normal((3, 2, 2, 2))
    expected = conv_loop(x, w, None, (1, 1), ((0, 1), (2, 1)), (1, 1), 1)
    out = F.conv2d(F.pad(torch.from_numpy(x), (2, 1, 0, 1)), torch.from_numpy(w))
    assert np.allclose(out.numpy(), expected)


def test_conv1d_matches_the_2d_loop():
    layer = nn.Conv1d(3, 4, 3, stride=2, padding=1).double()
    x = rng(5).standard_normal((2, 3, 7))
    w = layer.weight.detach().numpy()[:, :, None, :]
    expected = conv_loop(
        x[:, :, None, :], w, layer.bias.detach().numpy(), (1, 2), ((0, 0), (1, 1)), (1, 1), 1
    )[:, :, 0]
    assert np.allclose(layer(torch.from_numpy(x)).detach().numpy(), expected)
    assert gradcheck(lambda t: layer(t), (leaf(x[:1]),))
    assert repr(layer) == "Conv1d(3, 4, kernel_size=(3,), stride=(2,), padding=(1,))"


def test_conv_shape_mistakes_name_layer_and_shapes():
    layer = nn.Conv2d(3, 8, 3)
    with pytest.raises(ShapeError) as info:
        layer(torch.zeros(3, 8, 8))
    assert "Conv2d(3, 8, kernel_size=(3, 3)" in str(info.value)
    assert "[3, 8, 8]" in str(info.value) and "unsqueeze(0)" in str(info.value)
    with pytest.raises(ShapeError, match=r"3 channels.*\[1, 4, 8, 8\]"):
        layer(torch.zeros(1, 4, 8, 8))
    with pytest.raises(ShapeError, match=r"Kernel size can't be greater than actual input size"):
        layer(torch.zeros(1, 3, 2, 2))
    with pytest.raises(ShapeError, match=r"expected input\[1, 4, 8, 8\] to have 3 channels"):
        F.conv2d(torch.zeros(1, 4, 8, 8), torch.zeros(8, 3, 3, 3))
    with pytest.raises(ValueError, match="strided"):
        nn.Conv2d(3, 8, 3, stride=2, padding="same")


# -- pooling ----------------------------------------------------------------------------------


def pool_out_size(size, k, s, p, d, ceil_mode):
    span = size + 2 * p - d * (k - 1) - 1
    out = (-(-span // s) if ceil_mode else span // s) + 1
    if ceil_mode and (out - 1) * s >= size + p:
        out -= 1
    return out


def max_pool_loop(x, k, s, p, d, ceil_mode):
    n, c, h, w = x.shape
    oh, ow = pool_out_size(h, k, s, p, d, ceil_mode), pool_out_size(w, k, s, p, d, ceil_mode)
    out = np.full((n, c, oh, ow), -np.inf)
    for i in range(oh):
        for j in range(ow):
            for ki in range(k):
                for kj in range(k):
                    r, q = i * s - p + ki * d, j * s - p + kj * d
                    if 0 <= r < h and 0 <= q < w:
                        out[:, :, i, j] = np.maximum(out[:, :, i, j], x[:, :, r, q])
    return out


def avg_pool_loop(x, k, s, p, ceil_mode, count_include_pad):
    n, c, h, w = x.shape
    oh, ow = pool_out_size(h, k, s, p, 1, ceil_mode), pool_out_size(w, k, s, p, 1, ceil_mode)
    out = np.zeros((n, c, oh, ow))
    for i in range(oh):
        for j in range(ow):
            r0, q0 = i * s - p, j * s - p
            r1, q1 = min(r0 + k, h + p), min(q0 + k, w + p)
            pool_size = (r1 - r0) * (q1 - q0)
            r0, q0, r1, q1 = max(r0, 0), max(q0, 0), min(r1, h), min(q1, w)
            window = x[:, :, r0:r1, q0:q1]
            divisor = pool_size if count_include_pad else (r1 - r0) * (q1 - q0)
            out[:, :, i, j] = window.sum(axis=(2, 3)) / divisor
    return out


MAX_CASES = [
    (2, None, 0, 1, False),
    (3, 2, 1, 1, False),
    (3, 2, 1, 1, True),
    (2, 2, 0, 1, True),
    (2, 1, 1, 2, False),
    (3, 2, 0, 1, True),
]


@pytest.mark.parametrize("k,s,p,d,ceil_mode", MAX_CASES)
def test_max_pool_matches_loop_and_gradcheck(k, s, p, d, ceil_mode):
    x = rng(6).permutation(2 * 2 * 7 * 6).reshape(2, 2, 7, 6) / 10.0  # no ties
    layer = nn.MaxPool2d(k, s, p, d, ceil_mode=ceil_mode)
    expected = max_pool_loop(x, k, s or k, p, d, ceil_mode)
    out = layer(torch.from_numpy(x))
    assert out.shape == expected.shape
    assert np.array_equal(out.numpy(), expected)
    assert gradcheck(lambda t: layer(t), (leaf(x[:1, :1]),))


AVG_CASES = [
    (2, None, 0, False, True),
    (3, 2, 1, False, True),
    (3, 2, 1, False, False),
    (3, 2, 1, True, True),
    (3, 2, 1, True, False),
    (2, 2, 0, True, True),
]


@pytest.mark.parametrize("k,s,p,ceil_mode,count_include_pad", AVG_CASES)
def test_avg_pool_matches_loop_and_gradcheck(k, s, p, ceil_mode, count_include_pad):
    x = rng(7).standard_normal((2, 2, 7, 6))
    layer = nn.AvgPool2d(k, s, p, ceil_mode=ceil_mode, count_include_pad=count_include_pad)
    expected = avg_pool_loop(x, k, s or k, p, ceil_mode, count_include_pad)
    out = layer(torch.from_numpy(x))
    assert out.shape == expected.shape
    assert np.allclose(out.numpy(), expected)
    assert gradcheck(lambda t: layer(t), (leaf(x[:1, :1]),))


def test_pool_mistakes_are_explained():
    with pytest.raises(ShapeError, match="pad should be at most half"):
        F.max_pool2d(torch.zeros(1, 1, 4, 4), 2, padding=2)
    with pytest.raises(ShapeError, match=r"4-D input.*\[4, 4\]"):
        nn.MaxPool2d(2)(torch.zeros(4, 4))


def test_resnet_stem_shapes():
    stem = nn.Sequential(
        nn.Conv2d(3, 4, kernel_size=7, stride=2, padding=3, bias=False),
        nn.BatchNorm2d(4),
        nn.ReLU(inplace=True),
        nn.MaxPool2d(kernel_size=3, stride=2, padding=1),
    )
    out = stem(torch.randn(1, 3, 32, 32))
    assert out.shape == torch.Size([1, 4, 8, 8])
    assert math.isfinite(out.sum().item())
