"""Grouped 3x3 convolutions with several channels per group (``finetune/autograd/grouped.py``):
the compiled forward against a plain loop over every output element (``conv_loop``), over
strides, pads, channels per group, batches, layouts and dtypes; the gradients, which keep the
im2col path, by gradcheck through a forward that took the compiled one."""

from __future__ import annotations

import numpy as np
import pytest
from test_conv_kernels import conv_loop

import finetune as ft
from finetune.autograd import conv as kernels
from finetune.autograd import gradcheck, grouped, jit
from finetune.autograd.layout import is_channels_last

pytest.importorskip("numba")

# name: (batch, groups, in per group, out per group, (h, w), stride, pads)
CASES = {
    "regnet": (1, 3, 8, 8, (9, 10), 1, ((1, 1), (1, 1))),
    "regnet-stride2": (2, 2, 8, 8, (9, 8), 2, ((1, 1), (1, 1))),
    "more-out-than-in": (1, 2, 2, 4, (6, 7), 1, ((1, 1), (1, 1))),
    "no-pad": (3, 2, 4, 4, (5, 6), 1, ((0, 0), (0, 0))),
    "asymmetric-stride2": (2, 2, 3, 2, (8, 7), 2, ((0, 1), (2, 0))),
    "pads-beyond-kernel": (2, 2, 2, 2, (4, 5), 1, ((3, 0), (0, 4))),
    "odd-stride2": (3, 3, 2, 2, (7, 9), 2, ((1, 1), (1, 1))),
}


def _case(name, dtype=np.float64, seed=0):
    n, g, ipg, opg, (h, w), s, pads = CASES[name]
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, g * ipg, h, w)).astype(dtype)
    weight = rng.standard_normal((g * opg, ipg, 3, 3)).astype(dtype)
    bias = rng.standard_normal(g * opg).astype(dtype)
    return x, weight, bias, dict(stride=(s, s), padding=pads, dilation=(1, 1), groups=g)


def _last(a: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(a.transpose(0, 2, 3, 1)).transpose(0, 3, 1, 2)


@pytest.fixture
def compiled(monkeypatch) -> list:
    """The grouped forwards that ran compiled (``GroupedPlan.forward`` answering)."""
    monkeypatch.setattr(jit, "ENABLED", True)
    ran, forward = [], grouped.GroupedPlan.forward

    def counted(self, *args, **kwargs):
        out = forward(self, *args, **kwargs)
        ran.append(out is not None)
        return out

    monkeypatch.setattr(grouped.GroupedPlan, "forward", counted)
    return ran


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("layout", ["nchw", "channels-last"])
@pytest.mark.parametrize("name", CASES)
def test_forward_matches_the_loop(name, layout, dtype, compiled):
    x, weight, bias, opts = _case(name, dtype)
    want = conv_loop(x, weight, bias, opts["stride"], opts["padding"], (1, 1), opts["groups"])
    data = _last(x) if layout == "channels-last" else x
    for b in (bias, None):
        with ft.no_grad():
            got = kernels.conv(
                ft.tensor(data), ft.tensor(weight), b if b is None else ft.tensor(b), **opts
            )
        assert got.dtype == ft.tensor(x).dtype and is_channels_last(got.numpy())
        tolerance = 1e-10 if dtype == np.float64 else 1e-4
        expected = want if b is not None else want - bias[:, None, None]
        np.testing.assert_allclose(got.numpy(), expected, rtol=tolerance, atol=tolerance)
    assert compiled == [True, True]


def test_batch_one_strided_keeps_im2col(compiled):
    """A strided layer of one sample: the phase split costs more than it saves."""
    x, weight, bias, opts = _case("regnet-stride2")
    plan = kernels.ConvPlan(x[:1].shape, weight.shape, **opts)
    assert plan.grouped is None
    assert kernels.ConvPlan(x.shape, weight.shape, **opts).grouped is not None


@pytest.mark.parametrize("name", ["regnet", "asymmetric-stride2"])
def test_gradients_through_a_compiled_forward(name, compiled):
    x, weight, bias, opts = _case(name)
    args = [ft.tensor(a[:2] if a is x else a, requires_grad=True) for a in (x, weight, bias)]
    assert gradcheck(lambda *t: kernels.conv(*t, **opts), args)
    assert all(compiled)


def test_an_epilogue_and_a_residual_ride_after_the_sum(compiled):
    from finetune.autograd import piecewise

    x, weight, bias, opts = _case("regnet", np.float32)
    want = conv_loop(x, weight, bias, opts["stride"], opts["padding"], (1, 1), opts["groups"])
    skip = np.random.default_rng(3).standard_normal(want.shape).astype(np.float32)
    with ft.no_grad(), kernels.epilogue(piecewise.relu(), _last(skip)):
        got = kernels.conv(ft.tensor(_last(x)), ft.tensor(weight), ft.tensor(bias), **opts)
    np.testing.assert_allclose(got.numpy(), np.maximum(want + skip, 0), rtol=1e-4, atol=1e-4)
    assert compiled == [True]


def test_without_numba_the_forward_is_im2col(monkeypatch):
    monkeypatch.setattr(jit, "ENABLED", False)
    x, weight, bias, opts = _case("regnet")
    plan = kernels.ConvPlan(x.shape, weight.shape, **opts)
    assert plan.grouped.forward(x, weight, bias) is None
    with ft.no_grad():
        got = kernels.conv(ft.tensor(x), ft.tensor(weight), ft.tensor(bias), **opts).numpy()
    want = conv_loop(x, weight, bias, opts["stride"], opts["padding"], (1, 1), opts["groups"])
    np.testing.assert_allclose(got, want, rtol=1e-10, atol=1e-10)
