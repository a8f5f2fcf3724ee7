"""Winograd F(2x2, 3x3) and F(4x4, 3x3): against a direct convolution written as a loop over the
nine taps, gradcheck in float64, float32 rounding at ResNet-18's shapes, which convolutions take
the path, and the transformed weights kept on frozen tensors."""

from __future__ import annotations

import numpy as np
import pytest

import finetune as torch
from finetune.autograd import conv as kernels
from finetune.autograd import gradcheck, jit, winograd, winograd_compiled


def direct(x, w, b, pads):
    """Stride-1 3x3 convolution, one tap at a time, in float64."""
    n, _, h, wd = x.shape
    xp = np.pad(x.astype(np.float64), ((0, 0), (0, 0), *pads))
    oh, ow = xp.shape[2] - 2, xp.shape[3] - 2
    out = np.zeros((n, w.shape[0], oh, ow))
    for i in range(3):
        for j in range(3):
            window = xp[:, :, i : i + oh, j : j + ow]
            out += np.einsum("nchw,oc->nohw", window, w[:, :, i, j].astype(np.float64))
    if b is not None:
        out += b.reshape(-1, 1, 1)
    return out


@pytest.fixture(autouse=True, params=["compiled", "numpy"])
def transforms(request, monkeypatch):
    """Every test twice: the input and output transforms compiled (``winograd_compiled``, once
    numba is loaded) and as numpy's Kronecker products."""
    if request.param == "compiled":
        pytest.importorskip("numba")
        monkeypatch.setattr(jit, "ENABLED", True)
        jit.load()
        assert winograd._compiled(winograd_compiled.tile_transforms, np.float32) is not None
    else:
        monkeypatch.setattr(jit, "ENABLED", False)
    return request.param


@pytest.fixture
def everywhere(monkeypatch):
    """Winograd for any channel count and size; ``everywhere(m)`` picks the tile side."""

    def use(m: int) -> None:
        monkeypatch.setattr(winograd, "MIN_CHANNELS", 1)
        monkeypatch.setattr(winograd, "MIN_CHANNELS_COMPILED", 1)
        monkeypatch.setattr(winograd, "MIN_SIZE", 1)
        monkeypatch.setattr(winograd, "MIN_SIZE_FOR_4", 1 if m == 4 else 10**9)

    return use


PADS = [((1, 1), (1, 1)), ((0, 0), (0, 0)), ((0, 2), (2, 1)), ((2, 2), (1, 0))]


@pytest.mark.parametrize("m", [2, 4])
@pytest.mark.parametrize("pads", PADS)
@pytest.mark.parametrize("size", [(7, 7), (9, 6), (5, 12)])
def test_convolve_equals_the_direct_convolution(m, pads, size):
    rng = np.random.default_rng(m * 100 + size[0])
    x = rng.standard_normal((2, 3, *size))
    w = rng.standard_normal((5, 3, 3, 3))
    b = rng.standard_normal(5)
    transformed = winograd.transform_weights(w, m)
    for bias in (None, b):
        got = winograd.convolve(x, transformed, pads, m, bias)
        np.testing.assert_allclose(got, direct(x, w, bias, pads), rtol=1e-11, atol=1e-11)


@pytest.mark.parametrize(
    ("channels", "size", "m"), [(64, 56, 4), (128, 28, 4), (256, 14, 2), (512, 7, 2)]
)
def test_float32_rounding_at_resnet18_shapes(channels, size, m):
    rng = np.random.default_rng(channels)
    x = rng.standard_normal((1, channels, size, size), dtype=np.float32)
    w = (rng.standard_normal((channels, channels, 3, 3)) * np.sqrt(2 / (9 * channels))).astype(
        np.float32
    )
    pads = ((1, 1), (1, 1))
    plan = kernels.ConvPlan(x.shape, w.shape, (1, 1), pads, (1, 1), 1)
    assert plan.winograd == m and plan.winograd_grad == m
    y = kernels.conv(torch.tensor(x), torch.tensor(w), None, (1, 1), pads)
    assert y.dtype == torch.float32
    want = direct(x, w, None, pads)
    # the 4x4 transform loses about two decimal digits of float32, the 2x2 less than one
    tolerance = 5e-5 if m == 4 else 5e-6
    assert np.abs(y.numpy() - want).max() <= tolerance * np.abs(want).max()


def test_which_convolutions_take_winograd(transforms):
    def tile(x_shape, w_shape, stride=(1, 1), pads=((1, 1), (1, 1)), dilation=(1, 1), groups=1):
        return kernels.ConvPlan(x_shape, w_shape, stride, pads, dilation, groups).winograd

    # 4x4 tiles from 28x28 outputs on, 2x2 below
    assert tile((8, 64, 56, 56), (64, 64, 3, 3)) == 4
    assert tile((8, 128, 28, 28), (128, 128, 3, 3)) == 4
    assert tile((8, 256, 14, 14), (256, 256, 3, 3)) == 2
    assert tile((8, 512, 7, 7), (512, 512, 3, 3)) == 2
    assert tile((8, 64, 56, 56), (64, 64, 3, 3), stride=(2, 2)) is None
    assert tile((8, 64, 56, 56), (64, 64, 3, 3), dilation=(2, 2)) is None
    assert tile((8, 64, 56, 56), (64, 32, 3, 3), groups=2) is None
    assert tile((8, 128, 56, 56), (32, 128, 3, 3)) == 4  # DenseNet's growth layers pay
    assert tile((8, 32, 28, 28), (16, 32, 3, 3)) == 4
    if transforms == "compiled":  # cheap transforms: from 16 channels each way
        assert tile((8, 16, 56, 56), (64, 16, 3, 3)) == 4
        assert tile((8, 32, 56, 56), (128, 32, 3, 3)) == 4
        assert tile((8, 8, 56, 56), (64, 8, 3, 3)) is None
    else:
        assert tile((8, 16, 56, 56), (64, 16, 3, 3)) is None  # too few channels to pay
        assert tile((8, 32, 56, 56), (128, 32, 3, 3)) is None  # an output over twice the input
    assert tile((8, 64, 56, 56), (64, 64, 1, 1), pads=((0, 0), (0, 0))) is None
    assert tile((8, 64, 56, 56), (64, 64, 5, 5)) is None
    assert tile((8, 64, 2, 2), (64, 64, 3, 3)) is None  # outputs too small to tile
    assert tile((8, 64, 56), (64, 64, 3), stride=(1,), pads=((1, 1),), dilation=(1,)) is None
    # the input gradient's own padding (2 - pad) must not be negative
    plan = kernels.ConvPlan((8, 64, 56, 56), (64, 64, 3, 3), (1, 1), ((3, 3), (1, 1)), (1, 1), 1)
    assert plan.winograd == 4 and plan.winograd_grad is None


@pytest.mark.parametrize("m", [2, 4])
@pytest.mark.parametrize("pads", [((1, 1), (1, 1)), ((0, 2), (2, 0))])
def test_gradcheck(everywhere, m, pads):
    everywhere(m)
    rng = np.random.default_rng(m)
    x = torch.tensor(rng.standard_normal((2, 3, 6, 5)), requires_grad=True)
    w = torch.tensor(rng.standard_normal((4, 3, 3, 3)), requires_grad=True)
    b = torch.tensor(rng.standard_normal(4), requires_grad=True)
    y = kernels.conv(x, w, b, (1, 1), pads)
    assert y.grad_fn.plan.winograd == m and y.grad_fn.plan.winograd_grad == m
    assert gradcheck(lambda x, w, b: kernels.conv(x, w, b, (1, 1), pads), (x, w, b))


@pytest.mark.parametrize("channels, size", [(64, 16), (64, 9)])
def test_input_gradient_equals_the_column_path(monkeypatch, channels, size):
    rng = np.random.default_rng(size)
    x = rng.standard_normal((2, channels, size, size), dtype=np.float32)
    w = rng.standard_normal((channels, channels, 3, 3), dtype=np.float32) * 0.05
    g = rng.standard_normal((2, channels, size, size), dtype=np.float32)

    def gradients():
        xt, wt = torch.tensor(x, requires_grad=True), torch.tensor(w, requires_grad=True)
        kernels.conv(xt, wt, None, (1, 1), ((1, 1), (1, 1))).backward(torch.tensor(g))
        return xt.grad.numpy(), wt.grad.numpy()

    fast = gradients()
    monkeypatch.setattr(winograd, "MIN_CHANNELS", 10**9)
    monkeypatch.setattr(winograd, "MIN_CHANNELS_COMPILED", 10**9)
    slow = gradients()
    for got, want in zip(fast, slow):
        assert got.dtype == np.float32
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4 * np.abs(want).max())


def test_frozen_weights_keep_their_transform_until_they_change(everywhere):
    everywhere(4)
    rng = np.random.default_rng(0)
    x = torch.tensor(rng.standard_normal((1, 2, 6, 6)))
    w = torch.tensor(rng.standard_normal((3, 2, 3, 3)))
    pads = ((1, 1), (1, 1))

    def check():
        y = kernels.conv(x, w, None, (1, 1), pads)
        np.testing.assert_allclose(y.numpy(), direct(x.numpy(), w.numpy(), None, pads), 1e-10)

    check()
    kept = w.__dict__["_kept"][1]
    check()
    assert w.__dict__["_kept"][1] is kept  # reused, not recomputed
    w.mul_(2)  # in place: a new version
    check()
    assert w.__dict__["_kept"][1] is not kept
    w.data = torch.tensor(rng.standard_normal((3, 2, 3, 3)))  # a new array, same version
    check()

    trainable = torch.tensor(w.numpy(), requires_grad=True)
    kernels.conv(x, trainable, None, (1, 1), pads)
    assert "_kept" not in trainable.__dict__  # transformed per call, nothing held
