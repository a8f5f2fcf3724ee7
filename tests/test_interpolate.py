"""``F.interpolate`` and ``nn.Upsample`` against PyTorch's rules written out as loops, and
gradcheck."""

from __future__ import annotations

import math

import numpy as np
import pytest

import finetune as torch
from finetune import nn
from finetune.autograd import gradcheck
from finetune.errors import ShapeError
from finetune.nn import functional as F


def source(d, size_in, size_out, scale, mode, align_corners):
    """PyTorch's source coordinate of output index ``d`` (area_pixel_compute_source_index)."""
    step = scale if scale is not None else size_in / size_out
    if mode == "nearest":
        return min(math.floor(d * step), size_in - 1)
    if align_corners:
        return d * (size_in - 1) / (size_out - 1) if size_out > 1 else 0.0
    return max(step * (d + 0.5) - 0.5, 0.0)


def taps(d, size_in, size_out, scale, mode, align_corners):
    """[(input index, weight)] for output index ``d`` along one axis."""
    src = source(d, size_in, size_out, scale, mode, align_corners)
    if mode == "nearest":
        return [(src, 1.0)]
    low = min(math.floor(src), size_in - 1)
    high = min(low + 1, size_in - 1)
    return [(low, 1 - (src - low)), (high, src - low)]


def reference_2d(x, out_size, scales, mode, align_corners):
    n, c, h, w = x.shape
    oh, ow = out_size
    out = np.zeros((n, c, oh, ow))
    for i in range(oh):
        for j in range(ow):
            for hi, wh in taps(i, h, oh, scales[0], mode, align_corners):
                for wj, ww in taps(j, w, ow, scales[1], mode, align_corners):
                    out[:, :, i, j] += wh * ww * x[:, :, hi, wj]
    return out


CASES = [
    # kwargs, expected output size, the scales PyTorch uses (None: in/out)
    (dict(scale_factor=2, mode="nearest"), (8, 10), (0.5, 0.5)),
    (dict(size=(7, 3), mode="nearest"), (7, 3), (None, None)),
    (dict(scale_factor=2, mode="bilinear", align_corners=False), (8, 10), (0.5, 0.5)),
    (dict(scale_factor=(1.5, 0.6), mode="bilinear"), (6, 3), (1 / 1.5, 1 / 0.6)),
    (dict(size=(9, 4), mode="bilinear", align_corners=True), (9, 4), (None, None)),
    (dict(size=(2, 2), mode="bilinear", align_corners=False), (2, 2), (None, None)),
    (
        dict(scale_factor=1.7, mode="bilinear", recompute_scale_factor=True),
        (6, 8),
        (None, None),
    ),
]


@pytest.mark.parametrize("kwargs, size, scales", CASES)
def test_interpolate_2d_matches_pytorch_rules(kwargs, size, scales):
    x = np.random.default_rng(0).standard_normal((2, 3, 4, 5))
    got = F.interpolate(torch.tensor(x, dtype=torch.float64), **kwargs)
    assert tuple(got.shape) == (2, 3, *size)
    mode = kwargs["mode"]
    want = reference_2d(x, size, scales, mode, bool(kwargs.get("align_corners")))
    np.testing.assert_allclose(got.numpy(), want, rtol=1e-12, atol=1e-12)
    name = "UpsampleNearest2DBackward0" if mode == "nearest" else "UpsampleBilinear2DBackward0"
    leaf = torch.tensor(x, dtype=torch.float64, requires_grad=True)
    assert F.interpolate(leaf, **kwargs).grad_fn.name() == name
    assert gradcheck(lambda t: F.interpolate(t, **kwargs), (leaf,))


@pytest.mark.parametrize("mode, shape", [("nearest", (1, 2, 5)), ("linear", (1, 2, 5))])
def test_interpolate_1d_and_3d(mode, shape):
    x = torch.tensor(np.random.default_rng(1).standard_normal(shape), requires_grad=True)
    assert gradcheck(lambda t: F.interpolate(t, size=8, mode=mode), (x,))
    cube = torch.tensor(np.random.default_rng(2).standard_normal((1, 1, 2, 3, 2)))
    out = F.interpolate(cube, scale_factor=2, mode="trilinear", align_corners=True)
    assert tuple(out.shape) == (1, 1, 4, 6, 4)
    # align_corners keeps the corners exactly
    np.testing.assert_allclose(out.numpy()[..., 0, 0, 0], cube.numpy()[..., 0, 0, 0])
    np.testing.assert_allclose(out.numpy()[..., -1, -1, -1], cube.numpy()[..., -1, -1, -1])


def test_float32_stays_float32_and_upsample_module_reads_like_pytorch():
    x = torch.randn(1, 2, 3, 3)
    up = nn.Upsample(scale_factor=2, mode="bilinear", align_corners=False)
    assert repr(up) == "Upsample(scale_factor=2.0, mode='bilinear')"
    assert repr(nn.Upsample(size=(5, 5))) == "Upsample(size=(5, 5), mode='nearest')"
    assert up(x).dtype == torch.float32 and tuple(up(x).shape) == (1, 2, 6, 6)


def test_interpolate_refuses_what_pytorch_refuses():
    x = torch.randn(1, 2, 3, 3)
    with pytest.raises(ValueError, match="only one of size or scale_factor"):
        F.interpolate(x)
    with pytest.raises(ValueError, match="align_corners option can only be set"):
        F.interpolate(x, scale_factor=2, align_corners=True)
    with pytest.raises(NotImplementedError, match="bilinear mode needs 4D input"):
        F.interpolate(torch.randn(1, 2, 3), scale_factor=2, mode="bilinear")
    with pytest.raises(NotImplementedError, match="bicubic"):
        F.interpolate(x, scale_factor=2, mode="bicubic")
    with pytest.raises(ShapeError, match="must be positive"):
        F.interpolate(x, scale_factor=0.2)
    with pytest.raises(ShapeError, match="3-D, 4-D or 5-D"):
        F.interpolate(torch.randn(3, 3), size=4)
