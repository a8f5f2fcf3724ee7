"""The optional compiled kernels (``finetune.autograd.jit``): used when numba is there and
allowed, never required. Their values are checked with the kernels' own tests (for the
depthwise forward: tests/test_grouped_conv.py runs every case compiled and with numpy)."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest

from finetune.autograd import conv, depthwise, jit


def _loop(x):
    return x


def test_disabled_gives_no_kernel(monkeypatch):
    monkeypatch.setattr(jit, "ENABLED", False)
    assert jit.compiled(_loop) is None


def test_without_numba_gives_no_kernel(monkeypatch):
    monkeypatch.setattr(jit, "ENABLED", True)
    monkeypatch.setattr(jit, "_compiled", {})
    monkeypatch.setitem(sys.modules, "numba", None)  # import numba raises ImportError
    assert jit.compiled(_loop) is None


def test_environment_variable_turns_it_off():
    env = {**os.environ, "FINETUNE_JIT": "0"}
    code = "from finetune.autograd import jit; print(jit.ENABLED)"
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert out.stdout.strip() == "False", out.stderr


def _depthwise_forward():
    r = np.random.default_rng(0)
    x = r.standard_normal((2, 3, 6, 5)).astype(np.float32)
    w = r.standard_normal((3, 1, 3, 3)).astype(np.float32)
    plan = conv.ConvPlan(x.shape, w.shape, (1, 1), ((1, 1), (1, 1)), (1, 1), 3).depthwise
    return plan.forward(x, w, None)


def _fail(*args, **kwargs):
    raise AssertionError("this path should not run")


def test_depthwise_forward_runs_compiled_when_numba_is_there(monkeypatch):
    pytest.importorskip("numba")
    monkeypatch.setattr(jit, "ENABLED", True)
    monkeypatch.setattr(depthwise, "_correlate", _fail)
    assert jit.compiled(depthwise._correlate_rows) is not None
    assert _depthwise_forward().shape == (2, 3, 6, 5)


def test_depthwise_forward_runs_numpy_when_disabled(monkeypatch):
    monkeypatch.setattr(jit, "ENABLED", False)
    monkeypatch.setattr(depthwise, "_correlate_compiled", _fail)
    assert _depthwise_forward().shape == (2, 3, 6, 5)


def _gelu_inputs():
    r = np.random.default_rng(1)
    x = (r.standard_normal((3, 17, 5, 7)) * 4).astype(np.float32)
    x.flat[:10] = [np.inf, -np.inf, np.nan, 0.0, -0.0, 1e-40, -1e-40, 40.0, -40.0, 3.5]
    return x


@pytest.mark.filterwarnings("ignore:invalid value")  # inf * 0 in the chain, as intended
def test_gelu_compiled_matches_its_numpy_chain(monkeypatch):
    pytest.importorskip("numba")
    from finetune.autograd import nn_ops

    x = _gelu_inputs()
    for layout in (x, np.ascontiguousarray(x.transpose(0, 2, 3, 1)).transpose(0, 3, 1, 2)):
        monkeypatch.setattr(jit, "ENABLED", False)
        want = nn_ops.gelu_float32(layout)
        monkeypatch.setattr(jit, "ENABLED", True)
        monkeypatch.setattr(nn_ops, "_gelu_kernel", _fail)  # the compiled loop must run
        got = nn_ops.gelu_float32(layout)
        monkeypatch.undo()
        # the same float32 operations in the same order: equal to the last ulp or two
        np.testing.assert_allclose(got, want, rtol=3e-7, atol=1e-45)
        assert got.strides == want.strides  # the input's layout kept


@pytest.mark.filterwarnings("ignore:invalid value")
def test_gelu_of_a_strided_view_takes_the_numpy_chain(monkeypatch):
    pytest.importorskip("numba")
    from finetune.autograd import nn_ops

    monkeypatch.setattr(jit, "ENABLED", True)
    x = _gelu_inputs()[:, ::2]  # gaps in memory: no flat view for the loop
    got = nn_ops.gelu_float32(x)
    monkeypatch.setattr(jit, "ENABLED", False)
    np.testing.assert_array_equal(got, nn_ops.gelu_float32(np.ascontiguousarray(x)))


@pytest.mark.filterwarnings("ignore:overflow")
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("width", [24, 2500])  # rows shorter and longer than a block's values
def test_silu_epilogue_with_bias_matches_the_numpy_chain(bias, dtype, width, monkeypatch):
    pytest.importorskip("numba")
    from finetune.autograd import nn_ops

    monkeypatch.setattr(jit, "ENABLED", True)
    r = np.random.default_rng(4)
    # several blocks (with rows split across none of them), both threads
    rows = (r.standard_normal((72_000 // width, width)) * 8).astype(dtype)
    rows.flat[:10] = [np.inf, -np.inf, np.nan, 0.0, -0.0, -100.0, 100.0, -88.5, -89.0, 104.0]
    b = r.standard_normal(width).astype(dtype) if bias else None
    if bias:
        b[:10] = 0  # the special values reach the activation as they are
    x = rows + b if bias else rows.copy()
    want = np.empty_like(x)
    with np.errstate(over="ignore", invalid="ignore"):
        nn_ops.silu_kernel(want, x)  # the numpy chain the plan ran before
    got = rows.copy()
    assert nn_ops.SiluEpilogue().with_bias(got, b)
    if dtype == np.float64:
        np.testing.assert_array_equal(got, want)  # the same operations in the same order
    else:  # its own exp: within a few ulp, and the same NaN, infinities and signed zeros
        np.testing.assert_array_equal(np.isnan(got), np.isnan(want))
        finite = np.isfinite(want)
        np.testing.assert_array_equal(
            got[~finite & ~np.isnan(want)], want[~finite & ~np.isnan(want)]
        )
        np.testing.assert_array_max_ulp(got[finite], want[finite], maxulp=8)
        zero = want == 0
        np.testing.assert_array_equal(np.signbit(got[zero]), np.signbit(want[zero]))
    # and the formula itself, in float64
    x64 = x.astype(np.float64)
    with np.errstate(over="ignore", invalid="ignore"):
        exact = x64 / (1 + np.exp(-x64))
    finite = np.isfinite(x)
    np.testing.assert_allclose(got[finite], exact[finite], rtol=1e-6, atol=1e-30)


def test_the_compiled_silu_follows_the_formula_over_the_whole_float32_range(monkeypatch):
    """``_silu_rows``' own exp, on a dense grid through every regime: exp(-v) overflowing
    (v < -88.7: the SiLU is -0), finite but past 2^127 (v near -88.5), denormal and zero."""
    pytest.importorskip("numba")
    from finetune.autograd import nn_ops

    monkeypatch.setattr(jit, "ENABLED", True)
    v = np.linspace(-120, 120, 480_001, dtype=np.float32).reshape(-1, 1)
    got = v.copy()
    assert nn_ops.SiluEpilogue().with_bias(got, None)
    v64 = v.astype(np.float64)
    with np.errstate(over="ignore"):
        exact = v64 / (1 + np.exp(-v64))
    # where exp(-v) is a finite float32 and the SiLU a normal one: a few ulp
    normal = (v > -88.7) & (np.abs(exact) >= np.finfo(np.float32).tiny)
    spacing = np.spacing(np.abs(exact[normal]).astype(np.float32)).astype(np.float64)
    assert (np.abs(got[normal] - exact[normal]) / spacing).max() <= 4
    # past it (exp(-v) overflows as numpy's does: -0) and below the normals: within 1e-36 of
    # the true value (under 3e-37 there), with v's sign
    rest = ~normal
    np.testing.assert_allclose(got[rest], exact[rest], rtol=4 * 2.0**-23, atol=1e-36)
    assert np.all(np.signbit(got[rest]) == np.signbit(v[rest]))


def test_silu_epilogue_declines_what_it_cannot_do(monkeypatch):
    from finetune.autograd import nn_ops

    rows = np.ones((6, 4), np.float32)
    monkeypatch.setattr(jit, "ENABLED", False)
    assert not nn_ops.SiluEpilogue().with_bias(rows, None)
    pytest.importorskip("numba")
    monkeypatch.setattr(jit, "ENABLED", True)
    assert not nn_ops.SiluEpilogue().with_bias(rows[:, ::2], None)
    assert not nn_ops.SiluEpilogue().with_bias(np.ones((6, 4), np.float16), None)
    np.testing.assert_array_equal(rows, 1)


@pytest.mark.filterwarnings("ignore:invalid value", "ignore:overflow")
def test_gelu_backward_compiled_matches_its_numpy_chain(monkeypatch):
    pytest.importorskip("numba")
    from finetune.autograd import nn_ops

    x = _gelu_inputs()
    grad = np.random.default_rng(5).standard_normal(x.shape).astype(np.float32)
    for layout in (x, np.ascontiguousarray(x.transpose(0, 2, 3, 1)).transpose(0, 3, 1, 2)):
        g = np.empty_like(layout)
        np.copyto(g, grad)
        monkeypatch.setattr(jit, "ENABLED", False)
        want = nn_ops._gelu_backward_float32(g, layout)
        monkeypatch.setattr(jit, "ENABLED", True)
        monkeypatch.setattr(nn_ops, "_gelu_backward_kernel", _fail)  # the compiled passes
        got = nn_ops._gelu_backward_float32(g, layout)
        monkeypatch.undo()
        np.testing.assert_array_equal(got, want)  # the same operations in the same order
        assert got.strides == want.strides
    # and the derivative itself, in float64, away from the saturated tails
    x64 = x.astype(np.float64)
    with np.errstate(invalid="ignore", over="ignore"):
        import math

        phi = 0.5 * (1 + np.vectorize(math.erf)(x64 / math.sqrt(2)))
        exact = grad * (phi + x64 * np.exp(-0.5 * x64 * x64) / math.sqrt(2 * math.pi))
    finite = np.isfinite(x) & (np.abs(x) < 20)
    np.testing.assert_allclose(got[finite], exact[finite], rtol=2e-5, atol=1e-6)
