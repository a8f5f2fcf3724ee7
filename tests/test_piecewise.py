"""Piecewise-linear activations and a convolution's bias in one pass (``autograd/piecewise.py``):
compiled and numpy paths against plain numpy formulas written here, bit for bit, NaN, infinities
and signed zeros included; the Functions that use them by gradcheck."""

from __future__ import annotations

import numpy as np
import pytest

import finetune as ft
from finetune.autograd import gradcheck, jit, piecewise
from finetune.nn import functional as F


def _inputs(dtype, shape=(3, 5, 7, 11)):
    x = (np.random.default_rng(0).standard_normal(shape) * 4).astype(dtype)
    x.flat[:9] = [np.nan, -np.nan, np.inf, -np.inf, 0.0, -0.0, 6.0, -3.0, 3.0]
    return x


def _reference(activation, x):
    """The activation as PyTorch writes it, in float64 then rounded (exact for these ops)."""
    if activation.kind == piecewise.RELU:
        return np.where(x < 0, 0, x).astype(x.dtype)
    if activation.kind == piecewise.CLIP:
        lo = -np.inf if activation.lo is None else activation.lo
        hi = np.inf if activation.hi is None else activation.hi
        return np.where(x < lo, lo, np.where(x > hi, hi, x)).astype(x.dtype)
    t = x.dtype.type
    gate = x * t(1 / 6) + t(0.5)
    return (np.where(gate < 0, t(0), np.where(gate > 1, t(1), gate)) * x).astype(x.dtype)


ACTIVATIONS = {
    "relu": piecewise.relu(),
    "relu6": piecewise.clip(0.0, 6.0),
    "clip-lo": piecewise.clip(-1.5, None),
    "clip-hi": piecewise.clip(None, 2.5),
    "hardswish": piecewise.hardswish(),
}
PATHS = ["compiled", "numpy"]


@pytest.fixture(params=PATHS)
def path(request, monkeypatch):
    if request.param == "compiled":
        pytest.importorskip("numba")
    monkeypatch.setattr(jit, "ENABLED", request.param == "compiled")
    return request.param


@pytest.mark.filterwarnings("ignore:invalid value")  # inf * 0 in hard-swish's reference
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("name", ACTIVATIONS)
def test_activation_matches_its_formula(name, dtype, path):
    act = ACTIVATIONS[name]
    x = _inputs(dtype)
    want = _reference(act, x)
    out = np.empty_like(x)
    act.into(out, x)
    np.testing.assert_array_equal(out, want)
    inplace = x.copy()
    act(inplace)
    np.testing.assert_array_equal(inplace, want)
    # channels last and a view with gaps (the numpy path) give the same values
    last = np.ascontiguousarray(x.transpose(0, 2, 3, 1)).transpose(0, 3, 1, 2)
    out = np.empty_like(last)
    act.into(out, last)
    np.testing.assert_array_equal(out, want)
    gaps = x[:, ::2]
    out = np.empty_like(gaps)
    act.into(out, gaps)
    np.testing.assert_array_equal(out, want[:, ::2])


@pytest.mark.filterwarnings("ignore:invalid value")
@pytest.mark.parametrize("name", ACTIVATIONS)
def test_compiled_and_numpy_agree_bit_for_bit(name, monkeypatch):
    pytest.importorskip("numba")
    act = ACTIVATIONS[name]
    x = _inputs(np.float32, (4, 1000))
    outs = []
    for enabled in (True, False):
        monkeypatch.setattr(jit, "ENABLED", enabled)
        out = np.empty_like(x)
        act.into(out, x)
        outs.append(out)
    assert outs[0].tobytes() == outs[1].tobytes()  # signs of zeros and NaN payloads too


@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("name", [*ACTIVATIONS, None])
def test_bias_rows_adds_the_bias_then_activates(name, bias, monkeypatch):
    pytest.importorskip("numba")
    monkeypatch.setattr(jit, "ENABLED", True)
    rng = np.random.default_rng(1)
    rows = (rng.standard_normal((300, 24)) * 4).astype(np.float32)
    b = rng.standard_normal(24).astype(np.float32) if bias else None
    act = ACTIVATIONS.get(name)
    want = rows + b if bias else rows.copy()
    if act is not None:
        want = _reference(act, want)
    got = rows.copy()
    assert piecewise.bias_rows(got, b, act)
    np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("name", [*ACTIVATIONS, None])
def test_a_residual_is_added_after_the_bias_then_activated(name, bias, path):
    """``activation((rows + bias) + residual)``: compiled in one pass, or numpy's chunks (no
    compiled kernel, or a residual with gaps), the sums rounded in that order."""
    rng = np.random.default_rng(2)
    rows = (rng.standard_normal((300, 24)) * 4).astype(np.float32)
    b = rng.standard_normal(24).astype(np.float32) if bias else None
    residual = (rng.standard_normal((300, 48)) * 4).astype(np.float32)
    act = ACTIVATIONS.get(name)
    want = (rows + b if bias else rows) + residual[:, :24]
    if act is not None:
        want = _reference(act, want)
    for skip in (np.ascontiguousarray(residual[:, :24]), residual[:, :24]):
        got = rows.copy()
        piecewise.add_bias_rows(got, b, act, skip)
        np.testing.assert_array_equal(got, want)


def test_bias_rows_declines_what_it_cannot_do(monkeypatch):
    rows = np.ones((6, 4), np.float32)
    bias = np.ones(4, np.float32)
    monkeypatch.setattr(jit, "ENABLED", False)
    assert not piecewise.bias_rows(rows, bias, None)  # no compiled kernel
    pytest.importorskip("numba")
    monkeypatch.setattr(jit, "ENABLED", True)
    assert not piecewise.bias_rows(rows[:, ::2], bias[:2], None)  # gaps
    assert not piecewise.bias_rows(np.ones((6, 4), np.int32), bias, None)
    assert not piecewise.bias_rows(rows, bias, None, np.ones((6, 8), np.float32)[:, ::2])  # gaps
    assert not piecewise.bias_rows(rows, bias, None, np.ones((6, 4), np.float64))
    assert not piecewise.bias_rows(rows, bias, None, np.ones((4,), np.float32))  # broadcast
    np.testing.assert_array_equal(rows, 1)  # nothing changed


@pytest.mark.filterwarnings("ignore:invalid value")
def test_relu_backward_is_the_gradient_masked_by_the_output(path):
    rng = np.random.default_rng(2)
    out = np.maximum(rng.standard_normal((5, 300)).astype(np.float32), 0)
    out.flat[:4] = [0.0, -0.0, np.nan, np.inf]
    grad = rng.standard_normal(out.shape).astype(np.float32)
    grad.flat[:8] = [np.nan, np.inf, 1.0, 1.0, np.nan, -np.inf, -2.0, 3.0]
    gx = np.empty_like(grad)
    piecewise.relu_backward(gx, grad, out)
    want = grad * (out > 0).astype(np.float32)  # NaN * 0 is NaN, as numpy's product
    assert gx.tobytes() == want.tobytes()


@pytest.mark.parametrize(
    "fn",
    [
        F.relu,
        F.relu6,
        F.hardswish,
        lambda x: ft.clamp(x, min=-0.5),
        lambda x: ft.clamp(x, max=0.7),
        lambda x: ft.clamp(x, -0.5, 0.7),
    ],
    ids=["relu", "relu6", "hardswish", "clamp-min", "clamp-max", "clamp"],
)
def test_functions_on_these_kernels_pass_gradcheck(fn, path):
    rng = np.random.default_rng(3)
    # away from the kinks, where the gradient is defined
    x = rng.uniform(-4, 4, (2, 3, 5, 4))
    x[np.abs(x) < 0.05] += 0.1
    for kink in (-3, -0.5, 0.7, 3, 6):
        x[np.abs(x - kink) < 0.05] += 0.1
    t = ft.tensor(x, dtype=ft.float64, requires_grad=True)
    assert gradcheck(fn, (t,))


def test_affine_rows_is_numpys_scale_then_shift(monkeypatch):
    pytest.importorskip("numba")
    monkeypatch.setattr(jit, "ENABLED", True)
    rng = np.random.default_rng(4)
    x = (rng.standard_normal((500, 40)) * 3).astype(np.float32)
    x.flat[:4] = [np.nan, np.inf, -np.inf, -0.0]
    scale, shift = rng.standard_normal((2, 40)).astype(np.float32)
    want = x * scale + shift
    out = np.empty_like(x)
    assert piecewise.affine_rows(out, x, scale, shift)
    np.testing.assert_array_equal(out, want)
    assert not piecewise.affine_rows(out[:, ::2], x[:, ::2], scale[:20], shift[:20])  # gaps


@pytest.mark.parametrize("path", PATHS, indirect=True)
def test_eval_batchnorm_of_a_channels_last_input(path):
    """Per channel ``(x - mean) / sqrt(var + eps) * weight + bias``, layout kept, on the
    compiled rows or numpy's flat rows."""
    rng = np.random.default_rng(5)
    x = rng.standard_normal((2, 6, 5, 4)).astype(np.float32)
    last = np.ascontiguousarray(x.transpose(0, 2, 3, 1)).transpose(0, 3, 1, 2)
    bn = ft.nn.BatchNorm2d(6).eval()
    with ft.no_grad():
        bn.running_mean.copy_(ft.tensor(rng.standard_normal(6).astype(np.float32)))
        bn.running_var.copy_(ft.tensor(rng.uniform(0.5, 2, 6).astype(np.float32)))
        bn.weight.copy_(ft.tensor(rng.standard_normal(6).astype(np.float32)))
        bn.bias.copy_(ft.tensor(rng.standard_normal(6).astype(np.float32)))
        got = bn(ft.from_numpy(last)).numpy()
    stats = [t.numpy().astype(np.float64) for t in (bn.running_mean, bn.running_var)]
    affine = [t.detach().numpy().astype(np.float64) for t in (bn.weight, bn.bias)]
    view = (1, -1, 1, 1)
    want = (x - stats[0].reshape(view)) / np.sqrt(stats[1].reshape(view) + 1e-5)
    want = want * affine[0].reshape(view) + affine[1].reshape(view)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
    assert got.transpose(0, 2, 3, 1).flags.c_contiguous  # still channels last
