"""The fast elementwise, matmul and LayerNorm Functions (issue 18) against plain references:
``math.erf`` on a dense grid, numpy formulas in float64, per-row loops; their layout (channels
last stays channels last), their dtype, their gradients (gradcheck in float64) and their ONNX
export (onnxruntime runs what they emit)."""

from __future__ import annotations

import math
import warnings

import numpy as np
import onnxruntime as ort
import pytest

import finetune as ft
from finetune import nn
from finetune.autograd import jit, ops
from finetune.autograd.gradcheck import gradcheck
from finetune.autograd.special import erf
from finetune.nn import functional as F
from finetune.onnx.export import to_onnx


def rng(seed: int = 0) -> np.random.Generator:
    return np.random.default_rng(seed)


def channels_last(shape, dtype=np.float32, seed=0, scale=3.0) -> np.ndarray:
    """An ``n c h w`` array stored ``n h w c``."""
    n, c, h, w = shape
    a = (rng(seed).standard_normal((n, h, w, c)) * scale).astype(dtype)
    return a.transpose(0, 3, 1, 2)


def is_channels_last(a: np.ndarray) -> bool:
    return a.transpose(0, 2, 3, 1).flags.c_contiguous


def leaf(a: np.ndarray) -> ft.Tensor:
    return ft.from_numpy(np.array(a, dtype=np.float64)).requires_grad_()


def backward_of(f, x: np.ndarray, grad: np.ndarray) -> np.ndarray:
    t = ft.from_numpy(x.copy()).requires_grad_()
    f(t).backward(ft.from_numpy(grad))
    return t.grad.numpy()


def ulps(got: np.ndarray, want: np.ndarray) -> np.ndarray:
    """|got - want| in units of float32's spacing at ``want``."""
    spacing = np.spacing(np.abs(want).astype(np.float32)).astype(np.float64)
    return np.abs(got.astype(np.float64) - want) / spacing


# -- erf --------------------------------------------------------------------------------------


def test_float32_erf_is_within_a_few_ulps_of_math_erf_on_a_dense_grid():
    x = np.concatenate(
        [
            np.linspace(-6, 6, 240001, dtype=np.float32),
            np.geomspace(1e-37, 1e-2, 400).astype(np.float32),
            np.float32([3.8325, 3.8326, 3.9, 4.0, 5.0, 9.0, 1e10, 3e38]),
        ]
    )
    x = np.concatenate([x, -x])
    want = np.array([math.erf(float(v)) for v in x])
    got = erf(x)
    assert got.dtype == np.float32
    error = ulps(got, want)
    assert error.max() <= 8
    assert error.mean() <= 1
    assert np.abs(got).max() <= 1  # never past +-1


def test_float32_erf_special_values():
    x = np.float32([np.nan, 0.0, -0.0, np.inf, -np.inf, 1e-45, -1e-45, 1e-40])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        got = erf(x)
    assert np.isnan(got[0])
    np.testing.assert_array_equal(got[1:5], [0.0, -0.0, 1.0, -1.0])
    assert np.signbit(got[2]) and not np.signbit(got[1])
    # subnormals: 2/sqrt(pi) x, rounded to the subnormal grid
    want = np.float32([2 / math.sqrt(math.pi) * float(v) for v in x[5:]])
    np.testing.assert_array_equal(got[5:], want)


def test_float32_erf_keeps_the_layout_and_splits_like_the_whole():
    x = channels_last((2, 48, 40, 40))  # 153600 elements: several blocks, several threads
    got = erf(x)
    assert is_channels_last(got)
    np.testing.assert_array_equal(got, erf(np.ascontiguousarray(x)))
    strided = x[:, ::2, 1::3]  # gaps: one call on the whole array
    np.testing.assert_array_equal(erf(strided), got[:, ::2, 1::3])


def test_erf_of_float64_stays_exact_and_float16_goes_through_float32():
    x = np.linspace(-4, 4, 801)
    np.testing.assert_allclose(erf(x), [math.erf(v) for v in x], rtol=1e-15, atol=1e-300)
    half = np.float16([-2.0, -0.5, 0.25, 1.0])
    got = erf(half)
    assert got.dtype == np.float16
    np.testing.assert_array_equal(got, np.float16([math.erf(float(v)) for v in half]))


def test_erf_function_gradient():
    assert gradcheck(lambda t: ops.Erf.apply(t), (leaf(rng(1).standard_normal((3, 5)) * 2),))


# -- gelu -------------------------------------------------------------------------------------


def _gelu64(x: np.ndarray) -> np.ndarray:
    return np.array([v * 0.5 * (1 + math.erf(v / math.sqrt(2))) for v in x.ravel()]).reshape(
        x.shape
    )


def _gelu_slope64(x: np.ndarray) -> np.ndarray:
    cdf = np.array([0.5 * (1 + math.erf(v / math.sqrt(2))) for v in x.ravel()])
    return (cdf + x.ravel() * np.exp(-0.5 * x.ravel() ** 2) / math.sqrt(2 * math.pi)).reshape(
        x.shape
    )


def test_float32_gelu_matches_the_float64_formula_forward_and_backward():
    x = np.concatenate([np.linspace(-12, 12, 48001), [0.0, -0.0]]).astype(np.float32)
    got = F.gelu(ft.from_numpy(x)).numpy()
    assert got.dtype == np.float32
    want = _gelu64(x.astype(np.float64))
    # float32's 1 + erf(x / sqrt 2) cancels for negative x (as in PyTorch's float32 GELU):
    # an absolute error of about |x| ulp(1) / 2 where the value is nearly 0
    np.testing.assert_allclose(got, want, rtol=2e-6, atol=1e-6)
    grad = rng(2).standard_normal(x.shape).astype(np.float32)
    gx = backward_of(F.gelu, x, grad)
    assert gx.dtype == np.float32
    want_gx = grad * _gelu_slope64(x.astype(np.float64))
    np.testing.assert_allclose(gx, want_gx, rtol=2e-6, atol=1e-6)


def test_gelu_keeps_channels_last_and_its_gradient_checks_in_float64():
    x = channels_last((1, 8, 5, 6), scale=2.0)
    assert is_channels_last(F.gelu(ft.from_numpy(x)).numpy())
    for approximate in ("none", "tanh"):
        x64 = leaf(rng(3).standard_normal((2, 3, 4)) * 2)
        assert gradcheck(lambda t, a=approximate: F.gelu(t, approximate=a), (x64,))


# -- sigmoid and silu -------------------------------------------------------------------------


def _sigmoid64(x: np.ndarray) -> np.ndarray:
    x = x.astype(np.float64)
    e = np.exp(-np.abs(x))
    return np.where(x >= 0, 1 / (1 + e), e / (1 + e))


def test_sigmoid_matches_float64_without_warnings_at_the_extremes():
    x = np.concatenate(
        [np.linspace(-87, 40, 20001), [-1e4, -100.0, -0.0, 0.0, 100.0, 1e4, np.inf, -np.inf]]
    ).astype(np.float32)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        got = ft.sigmoid(ft.from_numpy(x)).numpy()
        silu = F.silu(ft.from_numpy(x)).numpy()
    assert got.dtype == silu.dtype == np.float32
    want = _sigmoid64(x)
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-38)
    assert got[-2] == 1 and got[-1] == 0 and not np.isnan(got).any()
    np.testing.assert_allclose(silu[:-2], x[:-2] * want[:-2], rtol=1e-6, atol=1e-37)
    assert np.isnan(ft.sigmoid(ft.from_numpy(np.float32([np.nan]))).numpy()).all()


def test_sigmoid_and_silu_keep_channels_last_and_agree_with_the_contiguous_result():
    x = channels_last((2, 32, 36, 36))  # 82944 elements: split over the threads
    for f in (ft.sigmoid, F.silu):
        got = f(ft.from_numpy(x)).numpy()
        assert is_channels_last(got)
        np.testing.assert_array_equal(got, f(ft.from_numpy(np.ascontiguousarray(x))).numpy())


def test_sigmoid_and_silu_gradients():
    x = channels_last((1, 4, 3, 5), scale=4.0)
    grad = rng(4).standard_normal(x.shape).astype(np.float32)
    s = _sigmoid64(x)
    # 1 - s cancels where s is near 1 (PyTorch's formula too): an absolute ulp(1) bound
    got = backward_of(ft.sigmoid, x, grad)
    np.testing.assert_allclose(got, grad * s * (1 - s), rtol=1e-5, atol=3e-7)
    silu_slope = s * (1 + x * (1 - s))
    got = backward_of(F.silu, x, grad)
    np.testing.assert_allclose(got, grad * silu_slope, rtol=1e-5, atol=1e-6)
    for f in (ft.sigmoid, F.silu):
        assert gradcheck(f, (leaf(rng(5).standard_normal((2, 3, 4)) * 3),))


def test_silu_is_one_node_and_inplace_still_works():
    x = ft.from_numpy(rng(6).standard_normal((2, 3)).astype(np.float32)).requires_grad_()
    assert type(F.silu(x)).__name__ == "Tensor"
    assert F.silu(x).grad_fn.name() == "SiluBackward0"
    y = ft.from_numpy(np.float32([-1.0, 0.0, 2.0]))
    F.silu(y, inplace=True)
    np.testing.assert_allclose(y.numpy(), [-1 / (1 + math.e), 0.0, 2 / (1 + math.exp(-2))], 1e-6)


# -- hardsigmoid, hardswish, clamp --------------------------------------------------------------


def _hard_sigmoid_loop(x, alpha=1 / 6, beta=0.5):
    return np.array([min(max(alpha * v + beta, 0.0), 1.0) for v in x.ravel()]).reshape(x.shape)


def _hard_swish_slope_loop(x):
    """PyTorch's rule: 0 below -3, x/3 + 1/2 up to 3 inclusive, 1 above."""
    return np.array(
        [0.0 if v < -3 else (v / 3 + 0.5 if v <= 3 else 1.0) for v in x.ravel()]
    ).reshape(x.shape)


def test_hardsigmoid_and_hardswish_against_loops():
    x = np.concatenate([np.linspace(-5, 5, 1001), [-3.0, 3.0, -0.0]]).astype(np.float32)
    hs = F.hardsigmoid(ft.from_numpy(x)).numpy()
    hw = F.hardswish(ft.from_numpy(x)).numpy()
    assert hs.dtype == hw.dtype == np.float32
    want = _hard_sigmoid_loop(x.astype(np.float64))
    np.testing.assert_allclose(hs, want, atol=1e-7)
    np.testing.assert_allclose(hw, x * want, atol=1e-6)
    grad = rng(7).standard_normal(x.shape).astype(np.float32)
    inside = (x > -3) & (x < 3)
    np.testing.assert_allclose(backward_of(F.hardsigmoid, x, grad), grad * inside / 6, atol=1e-7)
    slope = _hard_swish_slope_loop(x.astype(np.float64))
    np.testing.assert_allclose(backward_of(F.hardswish, x, grad), grad * slope, atol=1e-6)


def test_onnx_hard_sigmoid_parameters_and_gradchecks():
    from finetune.onnx.ops.activation import hard_sigmoid

    x = np.linspace(-4, 4, 41).astype(np.float32)
    got = hard_sigmoid(ft.from_numpy(x), alpha=0.2, beta=0.5).numpy()
    np.testing.assert_allclose(got, _hard_sigmoid_loop(x.astype(np.float64), 0.2, 0.5), atol=1e-7)
    points = leaf(np.array([-2.5, -1.0, 0.3, 1.7, 2.5]))  # away from the kinks at +-3
    assert gradcheck(F.hardsigmoid, (points,))
    assert gradcheck(F.hardswish, (points,))
    assert gradcheck(F.hardswish, (leaf(np.array([-4.0, 3.5])),))


def test_clamp_is_one_pass_in_the_input_layout_with_the_clamp_gradient():
    x = channels_last((1, 16, 9, 9), scale=4.0)
    t = ft.from_numpy(x).requires_grad_()
    out = ops.Clamp.apply(t, min=0.0, max=6.0)
    values = out.detach().numpy()
    assert is_channels_last(values) and values.dtype == np.float32
    np.testing.assert_array_equal(values, np.clip(x, 0, 6))
    grad = rng(8).standard_normal(x.shape).astype(np.float32)
    out.backward(ft.from_numpy(grad))
    np.testing.assert_array_equal(t.grad.numpy(), grad * ((x >= 0) & (x <= 6)))
    ints = ops.Clamp.apply(ft.from_numpy(np.arange(-3, 4)), min=-1, max=2).numpy()
    assert ints.dtype == np.arange(1).dtype
    np.testing.assert_array_equal(ints, np.clip(np.arange(-3, 4), -1, 2))
    only_max = ops.Clamp.apply(ft.from_numpy(np.float32([-1, 5, 9])), max=6.0).numpy()
    np.testing.assert_array_equal(only_max, [-1, 5, 6])


def test_onnx_clip_with_constant_bounds_is_one_clamp_and_with_trainable_bounds_is_not():
    from finetune.onnx.ops.activation import clip

    x = ft.from_numpy(np.float32([-2, 0.5, 7])).requires_grad_()
    lo, hi = (ft.from_numpy(np.array(v, dtype=np.float32)) for v in (0, 6))
    out = clip(x, lo, hi)
    assert out.grad_fn.name() == "ClampBackward1"
    np.testing.assert_array_equal(out.detach().numpy(), [0, 0.5, 6])
    trainable = ft.from_numpy(np.array(6, dtype=np.float32)).requires_grad_()
    out = clip(x, lo, trainable)
    out.sum().backward()
    assert trainable.grad.numpy() == 1  # the clipped element's gradient reaches the bound


# -- matmul -------------------------------------------------------------------------------------


def _matmul_loop(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Every row of ``a`` times the matrix ``b``, one dot product at a time."""
    rows = a.reshape(-1, a.shape[-1]).astype(np.float64)
    m = b.reshape(b.shape[-2:]).astype(np.float64)
    out = np.array([[row @ m[:, j] for j in range(m.shape[1])] for row in rows])
    return out.reshape(a.shape[:-1] + m.shape[1:])


@pytest.mark.parametrize(
    "a_shape, b_shape, transposed",
    [
        ((2, 3, 4, 5), (5, 6), False),
        ((1, 7, 7, 5), (5, 3), True),  # a strided (channels-last) view: one copy, one product
        ((2, 4, 5), (1, 5, 3), False),  # b with a leading 1
    ],
)
def test_nd_times_matrix_is_one_product_forward_and_backward(a_shape, b_shape, transposed):
    a = rng(9).standard_normal(a_shape).astype(np.float32)
    if transposed:
        a = np.ascontiguousarray(a.transpose(0, 3, 1, 2)).transpose(0, 2, 3, 1)
    b = rng(10).standard_normal(b_shape).astype(np.float32)
    ta, tb = ft.from_numpy(a).requires_grad_(), ft.from_numpy(b).requires_grad_()
    out = ta @ tb
    values = out.detach().numpy()
    assert values.shape == np.matmul(a, b).shape and values.dtype == np.float32
    np.testing.assert_allclose(values, _matmul_loop(a, b), rtol=1e-5, atol=1e-5)
    grad = rng(11).standard_normal(out.shape).astype(np.float32)
    out.backward(ft.from_numpy(grad))
    m = b.reshape(b.shape[-2:]).astype(np.float64)
    want_ga = np.einsum("...n,kn->...k", grad.astype(np.float64), m)
    rows_a, rows_g = a.reshape(-1, a.shape[-1]), grad.reshape(-1, grad.shape[-1])
    want_gb = sum(np.outer(ra, rg) for ra, rg in zip(rows_a.astype(np.float64), rows_g))
    np.testing.assert_allclose(ta.grad.numpy(), want_ga, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(tb.grad.numpy(), want_gb.reshape(b.shape), rtol=1e-5, atol=1e-4)
    assert gradcheck(lambda p, q: p @ q, (leaf(a[:1, :2]), leaf(b)))


def test_batched_matmul_of_attention_shapes_still_batches():
    q = rng(12).standard_normal((2, 3, 4, 5))
    k = rng(13).standard_normal((2, 3, 5, 4))
    np.testing.assert_allclose((ft.from_numpy(q) @ ft.from_numpy(k)).numpy(), q @ k, rtol=1e-12)
    assert gradcheck(lambda p, r: p @ r, (leaf(q[:1, :2]), leaf(k[:1, :2])))


# -- layer norm ---------------------------------------------------------------------------------


def _layer_norm_loop(x, dims, weight, bias, eps):
    rows = x.reshape(-1, int(np.prod(x.shape[x.ndim - dims :]))).astype(np.float64)
    out = []
    for row in rows:
        mean = sum(row) / len(row)
        var = sum((v - mean) ** 2 for v in row) / len(row)
        out.append([(v - mean) / math.sqrt(var + eps) for v in row])
    out = np.array(out).reshape(x.shape)
    if weight is not None:
        out = out * weight
    return out if bias is None else out + bias


@pytest.mark.parametrize("compiled", [True, False])
@pytest.mark.parametrize(
    "shape, normalized", [((2, 5, 7, 12), (12,)), ((3, 4, 6), (4, 6)), ((2, 3, 21), (21,))]
)
@pytest.mark.parametrize("affine", [True, False])
def test_layer_norm_function_against_a_row_loop(shape, normalized, affine, compiled, monkeypatch):
    if compiled:
        pytest.importorskip("numba")
    monkeypatch.setattr(jit, "ENABLED", compiled)  # the compiled rows or the numpy blocks
    x = (rng(14).standard_normal(shape) * 3 + 1).astype(np.float32)
    w = rng(15).standard_normal(normalized).astype(np.float32) if affine else None
    b = rng(16).standard_normal(normalized).astype(np.float32) if affine else None
    out = F.layer_norm(
        ft.from_numpy(x),
        normalized,
        None if w is None else ft.from_numpy(w),
        None if b is None else ft.from_numpy(b),
        eps=1e-5,
    )
    assert out.numpy().dtype == np.float32
    want = _layer_norm_loop(x, len(normalized), w, b, 1e-5)
    np.testing.assert_allclose(out.numpy(), want, rtol=1e-5, atol=1e-5)


def test_layer_norm_gradients_and_node():
    x = leaf(rng(17).standard_normal((2, 3, 5)))
    w, b = leaf(rng(18).standard_normal(5)), leaf(rng(19).standard_normal(5))
    assert F.layer_norm(x, (5,), w, b).grad_fn.name() == "NativeLayerNormBackward0"
    assert gradcheck(lambda t, p, q: F.layer_norm(t, (5,), p, q), (x, w, b))
    assert gradcheck(lambda t: F.layer_norm(t, (3, 5)), (x,))
    assert gradcheck(lambda p: F.layer_norm(x.detach(), (5,), p, None), (w,))


def test_layer_norm_on_many_rows_splits_like_one_block():
    x = (rng(20).standard_normal((4, 28, 28, 96)) * 2).astype(np.float32)  # 301056 elements
    whole = F.layer_norm(ft.from_numpy(x), (96,)).numpy()
    for part in (slice(0, 1), slice(3, 4)):
        got = F.layer_norm(ft.from_numpy(np.ascontiguousarray(x[part])), (96,)).numpy()
        np.testing.assert_array_equal(got, whole[part])


def _run_exported(module, x: np.ndarray, opset: int) -> np.ndarray:
    proto = to_onnx(module, ft.from_numpy(x), opset_version=opset)
    session = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(None, {session.get_inputs()[0].name: x})[0]


class _Block(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(6)

    def forward(self, x):
        y = self.norm(x)
        return F.hardswish(F.silu(y)) + F.hardsigmoid(y) + F.gelu(y)


@pytest.mark.parametrize("opset", [13, 17, 24])
def test_export_of_the_fused_functions_runs_in_onnxruntime(opset):
    module = _Block()
    module.norm.weight.data = rng(21).standard_normal(6).astype(np.float32)
    module.norm.bias.data = rng(22).standard_normal(6).astype(np.float32)
    x = rng(23).standard_normal((2, 3, 6)).astype(np.float32)
    with ft.no_grad():
        want = module(ft.from_numpy(x)).numpy()
    np.testing.assert_allclose(_run_exported(module, x, opset), want, rtol=1e-5, atol=1e-5)


def test_layer_norm_function_is_used_for_imported_layer_normalization():
    from finetune.onnx.ops.normalization import layer_normalization

    x = ft.from_numpy(rng(24).standard_normal((2, 3, 4)).astype(np.float32))
    scale = ft.from_numpy(np.ones(4, np.float32))
    assert layer_normalization(x, scale).grad_fn is None  # no grad: no node, still the values
    x.requires_grad_()
    out = layer_normalization(x, scale, axis=-1)
    assert out.grad_fn.name() == "NativeLayerNormBackward0"
    composed = layer_normalization(x, scale, axis=-1, _outputs=3)  # Mean and InvStdDev too
    assert composed[0].grad_fn.name() != "NativeLayerNormBackward0"
    np.testing.assert_allclose(
        composed[0].detach().numpy(), out.detach().numpy(), rtol=1e-6, atol=1e-6
    )


# -- softmax and linear -------------------------------------------------------------------------


def _softmax_loop(x: np.ndarray, axis: int) -> np.ndarray:
    moved = np.moveaxis(x.astype(np.float64), axis, -1)
    rows = moved.reshape(-1, moved.shape[-1])
    out = []
    for row in rows:
        e = [math.exp(v - max(row)) for v in row]
        out.append([v / sum(e) for v in e])
    return np.moveaxis(np.array(out).reshape(moved.shape), -1, axis)


@pytest.mark.parametrize("compiled", [True, False])
@pytest.mark.parametrize("dim", [-1, 1])
def test_softmax_against_a_row_loop_and_gradcheck(dim, compiled, monkeypatch):
    if compiled:  # the last axis of a float32 input runs compiled once numba is loaded
        pytest.importorskip("numba")
    monkeypatch.setattr(jit, "ENABLED", compiled)
    x = (rng(25).standard_normal((2, 3, 40, 41)) * 4).astype(np.float32)  # rows split on threads
    x[0, 0, 0, :3] = [90.0, -90.0, 0.0]  # exp's range at both ends within one row
    got = ops.Softmax.apply(ft.from_numpy(x), dim=dim).numpy()
    assert got.dtype == np.float32
    np.testing.assert_allclose(got, _softmax_loop(x, dim), rtol=1e-5, atol=1e-7)
    assert gradcheck(lambda t: ops.Softmax.apply(t, dim=dim), (leaf(x[:1, :2, :3, :4]),))


@pytest.mark.filterwarnings("ignore:invalid value")
@pytest.mark.parametrize("compiled", [True, False])
def test_softmax_rows_with_nan_or_infinities_are_numpys(compiled, monkeypatch):
    if compiled:
        pytest.importorskip("numba")
    monkeypatch.setattr(jit, "ENABLED", compiled)
    x = rng(29).standard_normal((6, 9)).astype(np.float32)
    x[0, 3] = np.nan  # the row is NaN
    x[1, 5] = np.inf  # inf - inf: NaN
    x[2, :] = -np.inf  # -inf - -inf: NaN
    x[3, 7] = -np.inf  # that entry is 0
    x[4, :] = -np.inf
    x[4, 2] = 1.0  # one finite entry: 1 there, 0 elsewhere
    got = ops.Softmax.apply(ft.from_numpy(x), dim=-1).numpy()
    with np.errstate(invalid="ignore"):
        shifted = x.astype(np.float64) - x.max(axis=1, keepdims=True)
        want = np.exp(shifted) / np.exp(shifted).sum(axis=1, keepdims=True)
    np.testing.assert_array_equal(np.isnan(got), np.isnan(want))
    np.testing.assert_allclose(got[~np.isnan(want)], want[~np.isnan(want)], rtol=1e-6, atol=1e-8)
    assert got[3, 7] == 0 and got[4, 2] == 1


def test_linear_on_an_nd_input_is_one_product_forward_and_backward():
    x = rng(26).standard_normal((2, 5, 5, 6)).astype(np.float32)
    w = rng(27).standard_normal((4, 6)).astype(np.float32)
    b = rng(28).standard_normal(4).astype(np.float32)
    out = F.linear(ft.from_numpy(x), ft.from_numpy(w), ft.from_numpy(b)).numpy()
    np.testing.assert_allclose(out, _matmul_loop(x, w.T) + b, rtol=1e-5, atol=1e-5)
    assert gradcheck(
        lambda t, p, q: F.linear(t, p, q),
        (leaf(x[:1, :2]), leaf(w), leaf(b)),
    )
