"""Transposed convolution, the other pools and the spatial samplers: ConvTranspose (kernel,
``nn.ConvTranspose*``, ONNX), LpPool, GlobalLpPool, MaxUnpool, MaxRoiPool, RoiAlign, GridSample,
AffineGrid, DeformConv, Col2Im and the opset 1-6 forms of Gemm, AveragePool and Upsample.

Forward values against onnxruntime or a plain numpy loop, gradients by gradcheck in float64."""

from __future__ import annotations

import glob
import itertools
import re
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import helper, numpy_helper
from onnx_builders import make_model, run_onnxruntime, value_info

import finetune as ft
from finetune.autograd import conv as kernels
from finetune.autograd import sampling
from finetune.errors import OnnxImportError, ShapeError


def _model(op, inputs, constants=None, opset=19, outputs=("y",), out_rank=None, **attrs):
    """One ``op`` node: ``inputs`` graph inputs (name -> array), ``constants`` initializers;
    ``out_rank`` declares the outputs (free dimensions) where shape inference cannot."""
    constants = constants or {}
    node = helper.make_node(op, [*inputs, *constants], list(outputs), name=f"{op}_node", **attrs)
    # every dimension of a graph input free, so gradcheck may feed smaller arrays
    graph_inputs = [
        value_info(k, [f"{k}{i}" for i in range(v.ndim)], helper.np_dtype_to_tensor_dtype(v.dtype))
        for k, v in inputs.items()
    ]
    inits = [numpy_helper.from_array(v, k) for k, v in constants.items()]
    outs = [
        helper.make_empty_tensor_value_info(o)
        if out_rank is None
        else value_info(o, [f"{o}{i}" for i in range(out_rank)])
        for o in outputs
    ]
    return make_model([node], graph_inputs, outs, inits, opset=opset)


def _matches_onnxruntime(model, *inputs, atol=1e-5, rtol=1e-4):
    expected = run_onnxruntime(model, *inputs)
    got = ft.onnx.load(model)(*(ft.from_numpy(x) for x in inputs))
    got = got if isinstance(got, tuple) else (got,)
    for g, e in zip(got, expected):
        assert g.numpy().dtype == e.dtype
        assert g.shape == e.shape
        np.testing.assert_allclose(g.numpy(), e, atol=atol, rtol=rtol)


def _gradcheck_model(model, *inputs, fixed=()):
    """gradcheck through the imported model in float64, in its inputs and its parameters;
    the graph's last inputs, ``fixed``, are held constant."""
    module = ft.onnx.load(model, freeze=False).double()
    tensors = [ft.tensor(np.asarray(x, dtype=np.float64), requires_grad=True) for x in inputs]
    constants = [ft.tensor(np.asarray(x)) for x in fixed]
    params = list(module.parameters())
    n = len(tensors)
    assert ft.autograd.gradcheck(lambda *a: module(*a[:n], *constants), (*tensors, *params))


def _rng(seed=0):
    return np.random.default_rng(seed)


# -- transposed convolution: kernel ---------------------------------------------------------------


def _transpose_loop(x, w, stride, pads, dilation, groups=1):
    """The obvious transposed convolution: every input pixel adds its weighted kernel into the
    full output, which ``pads`` then crops (a negative pad adds zeros)."""
    n, c = x.shape[:2]
    k, co = w.shape[2:], w.shape[1] * groups
    full_shape = [
        (i - 1) * s + (kk - 1) * d + 1 for i, s, kk, d in zip(x.shape[2:], stride, k, dilation)
    ]
    full = np.zeros((n, co, *full_shape))
    per_in, per_out = c // groups, co // groups
    for ci in range(c):
        g = ci // per_in
        for pos in itertools.product(*map(range, x.shape[2:])):
            for tap in itertools.product(*map(range, k)):
                at = tuple(p * s + t * d for p, s, t, d in zip(pos, stride, tap, dilation))
                for oj in range(per_out):
                    full[(slice(None), g * per_out + oj, *at)] += (
                        x[(slice(None), ci, *pos)] * w[(ci, oj, *tap)]
                    )
    sizes = [f - lo - hi for f, (lo, hi) in zip(full_shape, pads)]
    out = np.zeros((n, co, *sizes))
    for pos in itertools.product(*map(range, sizes)):
        src = tuple(p + lo for p, (lo, _) in zip(pos, pads))
        if all(0 <= s < f for s, f in zip(src, full_shape)):
            out[(slice(None), slice(None), *pos)] = full[(slice(None), slice(None), *src)]
    return out


def _transpose_taps(x, w, stride, pads, dilation):
    """The same, one strided slice per kernel tap (fast enough for the large kernel paths)."""
    k = w.shape[2:]
    full_shape = [
        (i - 1) * s + (kk - 1) * d + 1 for i, s, kk, d in zip(x.shape[2:], stride, k, dilation)
    ]
    full = np.zeros((x.shape[0], w.shape[1], *full_shape))
    for tap in itertools.product(*map(range, k)):
        at = tuple(
            slice(t * d, t * d + (i - 1) * s + 1, s)
            for t, d, i, s in zip(tap, dilation, x.shape[2:], stride)
        )
        full[(slice(None), slice(None), *at)] += np.einsum(
            "nc...,co->no...", x, w[(slice(None), slice(None), *tap)]
        )
    return full[
        (slice(None), slice(None), *(slice(lo, f - hi) for f, (lo, hi) in zip(full_shape, pads)))
    ]


LOOP_CASES = [
    # x spatial, c, out, kernel, stride, pads, dilation, groups
    ((5, 6), 4, 6, (3, 3), (2, 2), ((1, 1), (0, 1)), (1, 1), 2),
    ((4, 5), 3, 2, (3, 2), (1, 1), ((1, 1), (1, 0)), (2, 1), 1),
    ((7,), 3, 2, (4,), (3,), ((2, -1),), (2,), 1),
    ((3, 4, 2), 2, 3, (2, 3, 1), (2, 1, 2), ((0, 0), (1, 0), (0, -2)), (1, 2, 1), 1),
    ((5, 5), 3, 4, (1, 1), (2, 2), ((0, 0), (0, 0)), (1, 1), 1),
    ((4, 4), 2, 2, (1, 1), (1, 1), ((0, 0), (0, 0)), (1, 1), 1),
]


@pytest.mark.parametrize("case", LOOP_CASES, ids=lambda c: f"{len(c[0])}d-{c[4]}-{c[7]}")
def test_conv_transpose_matches_a_plain_loop_and_passes_gradcheck(case):
    shape, c, co, k, stride, pads, dilation, groups = case
    rng = _rng(1)
    x = rng.standard_normal((2, c, *shape))
    w = rng.standard_normal((c, co // groups, *k))
    b = rng.standard_normal(co)
    got = kernels.conv_transpose(
        ft.tensor(x.astype(np.float32)),
        ft.tensor(w.astype(np.float32)),
        ft.tensor(b.astype(np.float32)),
        stride,
        pads,
        dilation,
        groups,
    ).numpy()
    expected = _transpose_loop(x, w, stride, pads, dilation, groups) + b.reshape(-1, *[1] * len(k))
    assert got.dtype == np.float32
    np.testing.assert_allclose(got, expected, atol=1e-5, rtol=1e-5)
    inputs = [ft.tensor(a, requires_grad=True) for a in (x, w, b)]
    assert ft.autograd.gradcheck(
        lambda x, w, b: kernels.conv_transpose(x, w, b, stride, pads, dilation, groups), inputs
    )


@pytest.mark.parametrize(
    "c, size, stride, pad, k, path",
    [
        (64, 8, 1, 1, 3, "winograd"),
        (64, 8, 1, 2, 3, "winograd, im2col input gradient"),
        (8, 80, 2, 1, 3, "per sample"),
        (3, 66, 1, 0, 5, "shifted"),
    ],
)
def test_conv_transpose_fast_paths_match_the_tap_loop(c, size, stride, pad, k, path):
    """Each layout the convolution's plan picks (Winograd, per-sample columns, the shifted
    layout) gives the tap loop's output, and gradients whose directional derivative matches
    the loop's finite difference."""
    rng = _rng(2)
    x = rng.standard_normal((2, c, size, size))
    w = rng.standard_normal((c, c, k, k)) * 0.1
    pads = ((pad, pad),) * 2
    plan, _ = kernels._transpose_plan(x.shape, w.shape, (stride,) * 2, pads, (1, 1), 1)
    assert bool(plan.winograd) == path.startswith("winograd")
    assert plan.per_sample == (path == "per sample")
    assert plan.shifted == (path == "shifted")

    def loop(x, w):
        return _transpose_taps(x, w, (stride,) * 2, pads, (1, 1))

    expected = loop(x, w)
    got32 = kernels.conv_transpose(
        ft.tensor(x.astype(np.float32)), ft.tensor(w.astype(np.float32)), None, (stride,) * 2, pads
    ).numpy()
    np.testing.assert_allclose(got32, expected, atol=1e-4, rtol=1e-4)
    fx, fw = ft.tensor(x, requires_grad=True), ft.tensor(w, requires_grad=True)
    y = kernels.conv_transpose(fx, fw, None, (stride,) * 2, pads)
    np.testing.assert_allclose(y.detach().numpy(), expected, atol=1e-10)
    g = rng.standard_normal(y.shape)
    y.backward(ft.tensor(g))
    vx, vw, eps = rng.standard_normal(x.shape), rng.standard_normal(w.shape), 1e-4
    along_x = ((loop(x + eps * vx, w) - loop(x - eps * vx, w)) * g).sum() / (2 * eps)
    along_w = ((loop(x, w + eps * vw) - loop(x, w - eps * vw)) * g).sum() / (2 * eps)
    np.testing.assert_allclose((fx.grad.numpy() * vx).sum(), along_x, rtol=1e-6)
    np.testing.assert_allclose((fw.grad.numpy() * vw).sum(), along_w, rtol=1e-6)


def test_conv_transpose_output_is_not_a_reused_buffer():
    """A 1x1 transposed convolution of one sample must not hand out the column scratch buffer,
    which the next convolution overwrites."""
    rng = _rng(3)
    x = ft.tensor(rng.standard_normal((1, 3, 4, 4)).astype(np.float32))
    w = ft.tensor(rng.standard_normal((3, 2, 1, 1)).astype(np.float32))
    first = kernels.conv_transpose(x, w, None, (1, 1), ((0, 0), (0, 0)))
    kept = first.numpy().copy()
    kernels.conv_transpose(x * 2, w, None, (1, 1), ((0, 0), (0, 0)))
    np.testing.assert_array_equal(first.numpy(), kept)


# -- nn.ConvTranspose ----------------------------------------------------------------------------


def test_conv_transpose2d_module_has_pytorchs_parameters_and_output_size():
    layer = ft.nn.ConvTranspose2d(4, 6, 3, stride=2, padding=1, output_padding=1, groups=2)
    assert layer.weight.shape == (4, 3, 3, 3)
    assert layer.bias.shape == (6,)
    assert repr(layer) == (
        "ConvTranspose2d(4, 6, kernel_size=(3, 3), stride=(2, 2), padding=(1, 1), "
        "output_padding=(1, 1), groups=2)"
    )
    x = ft.randn(2, 4, 5, 5)
    assert layer(x).shape == (2, 6, 10, 10)
    assert layer(x, output_size=(9, 10)).shape == (2, 6, 9, 10)
    with pytest.raises(ShapeError, match="output size"):
        layer(x, output_size=(12, 12))
    with pytest.raises(ShapeError, match="output padding"):
        ft.nn.functional.conv_transpose2d(x, layer.weight, stride=1, output_padding=1)
    line = ft.nn.ConvTranspose1d(2, 3, 4, stride=3, bias=False)
    assert line(ft.randn(1, 2, 7)).shape == (1, 3, 22)
    assert line.bias is None


def test_conv_transpose2d_module_trains_its_weight():
    rng = _rng(4)
    layer = ft.nn.ConvTranspose2d(2, 3, 3, stride=2, padding=1)
    x = ft.tensor(rng.standard_normal((2, 2, 4, 4)).astype(np.float32))
    layer(x).sum().backward()
    assert layer.weight.grad is not None and layer.weight.grad.shape == layer.weight.shape
    np.testing.assert_allclose(layer.bias.grad.numpy(), np.full(3, 2 * 7 * 7), rtol=1e-6)


def test_conv_transpose_module_names_itself_when_the_input_does_not_fit():
    layer = ft.nn.ConvTranspose2d(4, 6, 3, groups=2)
    with pytest.raises(ShapeError, match=r"ConvTranspose2d\(4, 6.*expected input with 4 channels"):
        layer(ft.randn(1, 3, 5, 5))
    with pytest.raises(ShapeError, match=r"expected 4D input .*x\.unsqueeze\(0\)"):
        layer(ft.randn(4, 5, 5))
    with pytest.raises(ValueError, match="out_channels must be divisible by groups"):
        ft.nn.ConvTranspose1d(4, 5, 3, groups=2)
    assert ft.nn.ConvTranspose1d(4, 6, 3, groups=2).weight.shape == (4, 3, 3)
    assert ft.nn.Conv1d(4, 6, 3, groups=2).weight.shape == (6, 2, 3)


# -- ConvTranspose through ONNX -------------------------------------------------------------------

ONNX_TRANSPOSE = [
    ("stride_pads", (3, 5, 5), (3, 4, 3, 3), dict(strides=[2, 2], pads=[1, 0, 1, 1])),
    ("output_padding", (2, 4, 4), (2, 3, 3, 3), dict(strides=[2, 2], output_padding=[1, 1])),
    ("group_dilation", (4, 5, 4), (4, 1, 2, 3), dict(group=2, dilations=[2, 1], pads=[1, 1, 0, 0])),
    ("same_upper", (2, 5, 4), (2, 2, 3, 3), dict(strides=[2, 2], auto_pad="SAME_UPPER")),
    ("same_lower", (2, 5, 4), (2, 2, 4, 4), dict(strides=[2, 3], auto_pad="SAME_LOWER")),
    ("output_shape", (2, 3, 3), (2, 2, 3, 3), dict(strides=[3, 2], output_shape=[10, 8])),
    ("1d", (3, 6), (3, 2, 4), dict(strides=[2], pads=[1, 2])),
    ("3d", (2, 3, 2, 3), (2, 2, 2, 2, 3), dict(strides=[1, 2, 1], pads=[0, 1, 1, 0, 0, 1])),
]


@pytest.mark.parametrize("case", ONNX_TRANSPOSE, ids=lambda c: c[0])
def test_conv_transpose_node_matches_onnxruntime_and_passes_gradcheck(case):
    _, shape, w_shape, attrs = case
    rng = _rng(5)
    x = rng.standard_normal((2, *shape)).astype(np.float32)
    w = rng.standard_normal(w_shape).astype(np.float32)
    b = rng.standard_normal(w_shape[1] * attrs.get("group", 1)).astype(np.float32)
    model = _model("ConvTranspose", {"x": x}, {"w": w, "b": b}, opset=11, **attrs)
    _matches_onnxruntime(model, x)
    _gradcheck_model(model, x[:1])


def test_conv_transpose_with_a_constant_weight_becomes_a_trainable_module():
    rng = _rng(6)
    x = rng.standard_normal((1, 3, 4, 4)).astype(np.float32)
    w = rng.standard_normal((3, 2, 3, 3)).astype(np.float32)
    b = np.zeros(2, np.float32)
    model = _model(
        "ConvTranspose",
        {"x": x},
        {"w": w, "b": b},
        opset=22,
        strides=[2, 2],
        pads=[1, 1, 1, 1],
        output_padding=[1, 1],
    )
    module = ft.onnx.load(model, freeze=False)
    layers = [m for m in module.modules() if isinstance(m, ft.nn.ConvTranspose2d)]
    assert len(layers) == 1
    assert layers[0].output_padding == (1, 1) and layers[0].padding == (1, 1)
    np.testing.assert_array_equal(layers[0].weight.detach().numpy(), w)
    module(ft.from_numpy(x)).sum().backward()
    assert layers[0].weight.grad is not None


def test_conv_transpose_exports_and_runs_in_onnxruntime(tmp_path):
    rng = _rng(7)
    layer = ft.nn.ConvTranspose2d(3, 2, 3, stride=2, padding=1, output_padding=1)
    x = ft.tensor(rng.standard_normal((1, 3, 4, 4)).astype(np.float32))
    model = ft.onnx.export(layer, x, tmp_path / "t.onnx")
    assert [n.op_type for n in model.graph.node] == ["ConvTranspose"]
    (expected,) = run_onnxruntime(model, x.numpy())
    np.testing.assert_allclose(layer(x).detach().numpy(), expected, atol=1e-5)


def test_conv_transpose_refuses_a_weight_that_does_not_fit():
    x = np.zeros((1, 3, 4, 4), np.float32)
    w = np.zeros((2, 2, 3, 3), np.float32)
    model = _model("ConvTranspose", {"x": x, "w": w}, opset=11, out_rank=4)
    with pytest.raises((ShapeError, OnnxImportError), match="ConvTranspose"):
        ft.onnx.load(model)(ft.from_numpy(x), ft.zeros(2, 2, 3, 3))


@pytest.mark.parametrize(
    "op, attrs, message",
    [
        ("Conv", {"strides": [1]}, "Conv: strides [1] must have 2"),
        ("Conv", {"pads": [1, 1]}, "Conv: pads [1, 1] must have 4"),
        ("ConvTranspose", {"auto_pad": "SAME"}, "ConvTranspose: unknown auto_pad 'SAME'"),
        ("ConvTranspose", {"dilations": [1, 0]}, "ConvTranspose: dilations [1, 0]"),
        ("MaxPool", {"kernel_shape": [2]}, "MaxPool: kernel_shape [2] must have 2"),
        ("AveragePool", {"kernel_shape": [2, 2], "auto_pad": "SAME"}, "AveragePool: unknown"),
        ("LpPool", {"kernel_shape": [2, 2], "pads": [1, 1]}, "LpPool: pads [1, 1]"),
    ],
)
def test_a_bad_window_attribute_names_the_op(op, attrs, message):
    """Window and padding attributes are checked once for every op that has them; an unknown
    ``auto_pad`` is refused, never read as NOTSET."""
    x = np.zeros((1, 2, 5, 5), np.float32)
    constants = {"w": np.zeros((2, 2, 3, 3), np.float32)} if "Conv" in op else {}
    for weights_constant in (True, False) if constants else (False,):
        inputs = {"x": x} if weights_constant else {"x": x, **constants}
        model = _model(op, inputs, constants if weights_constant else None, 19, out_rank=4, **attrs)
        with pytest.raises(OnnxImportError, match=re.escape(message)):
            ft.onnx.load(model)(*(ft.from_numpy(v) for v in inputs.values()))


# -- LpPool, GlobalLpPool -------------------------------------------------------------------------


@pytest.mark.parametrize(
    "opset, attrs",
    [
        (11, dict(kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 0, 1], p=3)),
        (18, dict(kernel_shape=[2, 2], dilations=[2, 1], ceil_mode=1, strides=[2, 2])),
        (22, dict(kernel_shape=[3, 2], auto_pad="SAME_UPPER", p=1)),
    ],
)
def test_lp_pool_matches_onnxruntime_and_passes_gradcheck(opset, attrs):
    x = _rng(8).standard_normal((2, 3, 7, 6)).astype(np.float32)
    model = _model("LpPool", {"x": x}, opset=opset, **attrs)
    _matches_onnxruntime(model, x)
    if attrs.get("p", 2) != 1:  # |x| has a kink at 0 that no input reaches but gradcheck's
        _gradcheck_model(model, x[:1, :1])


def test_global_lp_pool_matches_onnxruntime_and_passes_gradcheck():
    x = _rng(9).standard_normal((2, 3, 4, 5)).astype(np.float32)
    for p in (2, 3):
        model = _model("GlobalLpPool", {"x": x}, opset=2, p=p)
        _matches_onnxruntime(model, x)
        _gradcheck_model(model, x[:1])


# -- MaxUnpool ------------------------------------------------------------------------------------


def test_max_unpool_puts_maxpool_values_back_and_routes_gradients():
    x = _rng(10).standard_normal((2, 3, 6, 6)).astype(np.float32)
    pool = helper.make_node("MaxPool", ["x"], ["p", "i"], kernel_shape=[2, 2], strides=[2, 2])
    unpool = helper.make_node("MaxUnpool", ["p", "i"], ["y"], kernel_shape=[2, 2], strides=[2, 2])
    model = make_model(
        [pool, unpool],
        [value_info("x", ["N", "C", 6, 6])],
        [helper.make_empty_tensor_value_info("y")],
        opset=11,
    )
    _matches_onnxruntime(model, x)
    got = ft.onnx.load(model)(ft.from_numpy(x)).numpy()
    # every window keeps its maximum where it was, zeros elsewhere
    blocks = x.reshape(2, 3, 3, 2, 3, 2)
    is_max = blocks == blocks.max(axis=(3, 5), keepdims=True)
    np.testing.assert_array_equal(got, np.where(is_max, blocks, 0).reshape(x.shape))
    _gradcheck_model(model, x[:1, :1])


def test_max_unpool_refuses_an_index_outside_its_output():
    x = np.ones((1, 1, 2, 2), np.float32)
    model = _model(
        "MaxUnpool",
        {"x": x},
        {"i": np.full((1, 1, 2, 2), 99, np.int64)},
        opset=11,
        kernel_shape=[2, 2],
        strides=[2, 2],
    )
    with pytest.raises((OnnxImportError, ShapeError), match="outside"):
        ft.onnx.load(model)(ft.from_numpy(x))


# -- MaxRoiPool, RoiAlign -------------------------------------------------------------------------

ROIS = np.array([[0, 0.4, 1.2, 6.6, 5.1], [1, 2.5, 0.5, 4.4, 7.9], [0, 5, 5, 5, 5]], np.float32)


def test_max_roi_pool_matches_onnxruntime_and_routes_gradients_to_the_maxima():
    x = _rng(11).standard_normal((2, 3, 8, 8)).astype(np.float32)
    model = _model(
        "MaxRoiPool", {"x": x, "rois": ROIS}, opset=1, pooled_shape=[2, 3], spatial_scale=0.9
    )
    _matches_onnxruntime(model, x, ROIS)
    # the boxes are rounded to pixels: no gradient (the third sits on a rounding edge)
    _gradcheck_model(model, x, fixed=[ROIS])


@pytest.mark.parametrize("mode", ["avg", "max"])
@pytest.mark.parametrize("transform, ratio", [("half_pixel", 0), ("output_half_pixel", 2)])
def test_roi_align_matches_onnxruntime(mode, transform, ratio):
    x = _rng(12).standard_normal((2, 3, 9, 8)).astype(np.float32)
    rois = np.array([[0.5, 1, 7.2, 6.1], [2.3, -1.5, 9.5, 4.4], [3, 3, 3.5, 3.2]], np.float32)
    batch = np.array([0, 1, 1], np.int64)
    model = _model(
        "RoiAlign",
        {"x": x, "rois": rois},
        {"batch": batch},
        opset=16,
        mode=mode,
        coordinate_transformation_mode=transform,
        output_height=3,
        output_width=2,
        sampling_ratio=ratio,
        spatial_scale=0.8,
    )
    _matches_onnxruntime(model, x, rois)


def test_roi_align_passes_gradcheck_in_input_and_boxes():
    x = _rng(13).standard_normal((2, 2, 6, 6))
    rois = np.array([[0.7, 1.3, 4.2, 3.9], [1.1, 0.2, 3.3, 5.4]])
    batch = np.array([1, 0], np.int64)
    model = _model(
        "RoiAlign",
        {"x": x.astype(np.float32), "rois": rois.astype(np.float32)},
        {"batch": batch},
        opset=16,
        output_height=2,
        output_width=2,
        sampling_ratio=2,
    )
    _gradcheck_model(model, x, rois)


# -- GridSample, AffineGrid -----------------------------------------------------------------------


@pytest.mark.parametrize("align", [0, 1])
@pytest.mark.parametrize("padding", ["zeros", "border", "reflection"])
@pytest.mark.parametrize("mode", ["linear", "nearest", "cubic"])
def test_grid_sample_matches_onnxruntime(mode, padding, align):
    rng = _rng(14)
    x = rng.standard_normal((2, 3, 5, 6)).astype(np.float32)
    grid = rng.uniform(-1.6, 1.6, (2, 4, 7, 2)).astype(np.float32)
    model = _model(
        "GridSample",
        {"x": x, "grid": grid},
        opset=20,
        mode=mode,
        padding_mode=padding,
        align_corners=align,
    )
    _matches_onnxruntime(model, x, grid)


def test_grid_sample_16_takes_the_old_mode_names():
    rng = _rng(15)
    x = rng.standard_normal((1, 2, 4, 4)).astype(np.float32)
    grid = rng.uniform(-1, 1, (1, 3, 3, 2)).astype(np.float32)
    for mode in ("bilinear", "bicubic", "nearest"):
        _matches_onnxruntime(
            _model("GridSample", {"x": x, "grid": grid}, opset=16, mode=mode), x, grid
        )


def test_grid_sample_3d_matches_the_onnx_reference():
    from onnx.reference import ReferenceEvaluator

    rng = _rng(16)
    x = rng.standard_normal((1, 2, 3, 4, 5)).astype(np.float32)
    grid = rng.uniform(-1.2, 1.2, (1, 2, 3, 4, 3)).astype(np.float32)
    for padding in ("zeros", "border", "reflection"):
        model = _model("GridSample", {"x": x, "grid": grid}, opset=20, padding_mode=padding)
        (expected,) = ReferenceEvaluator(model).run(None, {"x": x, "grid": grid})
        got = ft.onnx.load(model)(ft.from_numpy(x), ft.from_numpy(grid)).numpy()
        np.testing.assert_allclose(got, expected, atol=1e-5)


@pytest.mark.parametrize(
    "mode, padding",
    [("linear", "zeros"), ("cubic", "reflection"), ("linear", "border"), ("nearest", "zeros")],
)
def test_grid_sample_passes_gradcheck_in_input_and_grid(mode, padding):
    rng = _rng(17)
    x = rng.standard_normal((1, 2, 4, 5))
    grid = rng.uniform(-1.3, 1.3, (1, 3, 2, 2))
    model = _model(
        "GridSample",
        {"x": x.astype(np.float32), "grid": grid.astype(np.float32)},
        opset=20,
        mode=mode,
        padding_mode=padding,
    )
    _gradcheck_model(model, x, grid)


@pytest.mark.parametrize("size", [(2, 3, 4, 5), (2, 1, 3, 2, 4)])
@pytest.mark.parametrize("align", [0, 1])
def test_affine_grid_matches_onnxruntime_and_passes_gradcheck(size, align):
    nd = len(size) - 2
    theta = _rng(18).standard_normal((2, nd, nd + 1)).astype(np.float32)
    model = _model(
        "AffineGrid",
        {"theta": theta},
        {"size": np.array(size, np.int64)},
        opset=20,
        align_corners=align,
    )
    _matches_onnxruntime(model, theta)
    _gradcheck_model(model, theta)


# -- DeformConv, Col2Im ---------------------------------------------------------------------------


def _deform_inputs(rng, offset_group=2, group=1):
    x = rng.standard_normal((1, 4, 5, 5))
    w = rng.standard_normal((2, 4 // group, 2, 2))
    offset = rng.uniform(-1.5, 1.5, (1, offset_group * 2 * 2 * 2, 4, 3))
    b = rng.standard_normal(2)
    mask = rng.uniform(0, 1, (1, offset_group * 4, 4, 3))
    return x, w, offset, b, mask


def test_deform_conv_matches_onnxruntime():
    rng = _rng(19)
    arrays = [a.astype(np.float32) for a in _deform_inputs(rng, offset_group=2, group=2)]
    names = ["x", "w", "offset", "b", "mask"]
    model = _model(
        "DeformConv",
        dict(zip(names, arrays)),
        opset=19,
        out_rank=4,
        group=2,
        offset_group=2,
        strides=[1, 2],
        pads=[0, 1, 0, 0],
        kernel_shape=[2, 2],
    )
    _matches_onnxruntime(model, *arrays)


def test_deform_conv_with_zero_offsets_is_a_convolution():
    rng = _rng(20)
    x, w, offset, b, _ = (a.astype(np.float32) for a in _deform_inputs(rng, offset_group=1))
    offset = np.zeros_like(offset)
    deform = _model(
        "DeformConv",
        {"x": x, "w": w, "offset": offset, "b": b},
        opset=19,
        out_rank=4,
        strides=[1, 2],
        pads=[0, 1, 0, 0],
    )
    conv = _model(
        "Conv", {"x": x, "w": w, "b": b}, opset=19, out_rank=4, strides=[1, 2], pads=[0, 1, 0, 0]
    )
    (expected,) = run_onnxruntime(conv, x, w, b)
    got = ft.onnx.load(deform)(*map(ft.from_numpy, (x, w, offset, b)))
    np.testing.assert_allclose(got.numpy(), expected, atol=1e-5)


def test_deform_conv_passes_gradcheck_in_every_input():
    rng = _rng(21)
    arrays = _deform_inputs(rng, offset_group=2)
    names = ["x", "w", "offset", "b", "mask"]
    model = _model(
        "DeformConv",
        {k: a.astype(np.float32) for k, a in zip(names, arrays)},
        opset=19,
        out_rank=4,
        offset_group=2,
        strides=[1, 2],
        pads=[0, 1, 0, 0],
    )
    _gradcheck_model(model, *arrays)


def test_col2im_matches_onnxruntime_and_passes_gradcheck():
    rng = _rng(22)
    image, block = np.array([5, 6], np.int64), np.array([2, 3], np.int64)
    attrs = dict(strides=[2, 1], pads=[1, 0, 0, 1], dilations=[1, 2])
    # outs: (5 + 1 - 2) // 2 + 1 = 3 rows, (6 + 1 - 5) // 1 + 1 = 3 columns
    x = rng.standard_normal((2, 3 * 6, 9)).astype(np.float32)
    model = _model("Col2Im", {"x": x}, {"image": image, "block": block}, opset=18, **attrs)
    _matches_onnxruntime(model, x)
    _gradcheck_model(model, x[:1])


# -- opset 1-6 forms ------------------------------------------------------------------------------


def test_gemm_6_broadcasts_only_when_told():
    rng = _rng(23)
    a = rng.standard_normal((3, 4)).astype(np.float32)
    b = rng.standard_normal((5, 4)).astype(np.float32)
    c = rng.standard_normal(5).astype(np.float32)
    model = _model("Gemm", {"a": a}, {"b": b, "c": c}, opset=6, broadcast=1, transB=1, alpha=0.5)
    got = ft.onnx.load(model)(ft.from_numpy(a)).numpy()
    np.testing.assert_allclose(got, 0.5 * a @ b.T + c, atol=1e-5)
    unbroadcast = _model("Gemm", {"a": a, "b": b, "c": c}, opset=6, transB=1)
    with pytest.raises((OnnxImportError, ShapeError), match="broadcast"):
        ft.onnx.load(unbroadcast)(*map(ft.from_numpy, (a, b, c)))


def test_average_pool_1_leaves_padding_out_of_the_mean():
    x = np.arange(16, dtype=np.float32).reshape(1, 1, 4, 4)
    model = _model("AveragePool", {"x": x}, opset=1, kernel_shape=[2, 2], pads=[1, 1, 0, 0])
    got = ft.onnx.load(model)(ft.from_numpy(x)).numpy()
    assert got[0, 0, 0, 0] == 0.0  # the corner window holds x[0, 0] alone
    assert got[0, 0, 1, 1] == (0 + 1 + 4 + 5) / 4


def test_upsample_1_scales_the_last_two_axes():
    x = np.arange(4, dtype=np.float32).reshape(1, 1, 2, 2)
    node = helper.make_node("Upsample", ["x"], ["y"], height_scale=2.0, width_scale=3.0)
    model = make_model([node], [value_info("x", x.shape)], [value_info("y", [1, 1, 4, 6])], opset=1)
    got = ft.onnx.load(model)(ft.from_numpy(x)).numpy()
    np.testing.assert_array_equal(got, x.repeat(2, axis=2).repeat(3, axis=3))


OLD_FILES = Path(onnx.__file__).parent / "backend" / "test" / "data"
SPATIAL_FILES = sorted(
    p
    for kind in ("pytorch-converted", "pytorch-operator")
    for p in glob.glob(str(OLD_FILES / kind / "*"))
    if any(
        name in Path(p).name for name in ("Conv", "Pool", "pool", "Linear", "Upsample", "Unpool")
    )
)


@pytest.mark.parametrize("folder", SPATIAL_FILES, ids=lambda p: Path(p).name)
def test_old_exporter_files_match_their_outputs(folder):
    """PyTorch's early exporter files (opsets 6-9) with convolutions, pools and linear layers."""
    model = onnx.load(f"{folder}/model.onnx")
    module = ft.onnx.load(model)
    for data_set in sorted(glob.glob(f"{folder}/test_data_set_*")):
        inputs = [
            numpy_helper.to_array(onnx.load_tensor(f))
            for f in sorted(glob.glob(f"{data_set}/input_*.pb"))
        ]
        outputs = [
            numpy_helper.to_array(onnx.load_tensor(f))
            for f in sorted(glob.glob(f"{data_set}/output_*.pb"))
        ]
        got = module(*map(ft.from_numpy, inputs))
        got = got if isinstance(got, tuple) else (got,)
        for g, e in zip(got, outputs):
            assert g.shape == e.shape
            np.testing.assert_allclose(g.numpy(), e, rtol=1e-3, atol=1e-7)


# -- the sampler and the pooling module -----------------------------------------------------------


def test_sampler_linear_taps_match_a_plain_loop():
    rng = _rng(24)
    x = rng.standard_normal((2, 3, 4, 5))
    points = rng.uniform(-1.5, 5.5, (2, 6, 2))
    got = sampling.sample(ft.tensor(x), ft.tensor(points), mode="linear", padding="zeros").numpy()
    expected = np.zeros((2, 3, 6))
    for n, p in itertools.product(range(2), range(6)):
        y, xx = points[n, p]
        y0, x0 = int(np.floor(y)), int(np.floor(xx))
        for yy, wy in ((y0, 1 - (y - y0)), (y0 + 1, y - y0)):
            for xc, wx in ((x0, 1 - (xx - x0)), (x0 + 1, xx - x0)):
                if 0 <= yy < 4 and 0 <= xc < 5:
                    expected[n, :, p] += wy * wx * x[n, :, yy, xc]
    np.testing.assert_allclose(got, expected, atol=1e-12)


def test_pooling_kernels_keep_their_old_import_path():
    from finetune.autograd import pooling

    assert kernels.MaxPool is pooling.MaxPool
    assert kernels.avg_pool is pooling.avg_pool


def test_unknown_grid_sample_mode_is_refused():
    x = np.zeros((1, 1, 2, 2), np.float32)
    grid = np.zeros((1, 1, 1, 2), np.float32)
    model = _model("GridSample", {"x": x, "grid": grid}, opset=20, mode="linear")
    model.graph.node[0].attribute[0].s = b"quadratic"
    with pytest.raises(OnnxImportError, match="quadratic"):
        ft.onnx.load(model)(ft.from_numpy(x), ft.from_numpy(grid))


def test_deform_conv_refuses_offsets_of_the_wrong_shape():
    rng = _rng(25)
    x, w, offset, b, _ = (a.astype(np.float32) for a in _deform_inputs(rng, offset_group=1))
    model = _model("DeformConv", {"x": x, "w": w, "offset": offset[:, :4]}, opset=19, out_rank=4)
    with pytest.raises((OnnxImportError, ShapeError), match="DeformConv.*expected offset"):
        ft.onnx.load(model)(*map(ft.from_numpy, (x, w, offset[:, :4])))
