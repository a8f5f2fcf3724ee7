"""Quantization converters against onnxruntime (its numerics are the reference), the QDQ weight
fold, and the errors a user gets for types the library does not support."""

from __future__ import annotations

import numpy as np
import pytest
from onnx import TensorProto, helper
from onnx_builders import initializer, make_model, run_onnxruntime, single_node, value_info

import finetune as ft
from finetune.errors import AutogradError, OnnxImportError
from finetune.onnx.ops.quantize import fold_dequantized_weights


def _run(model, *inputs):
    out = ft.onnx.load(model)(*inputs)
    outs = out if isinstance(out, tuple) else (out,)
    return [np.asarray(o._data) for o in outs]


def _same_as_onnxruntime(model, *inputs):
    got, want = _run(model, *inputs), run_onnxruntime(model, *inputs)
    assert len(got) == len(want)
    for g, w in zip(got, want):
        assert g.dtype == w.dtype and g.shape == w.shape
        np.testing.assert_array_equal(g, w)


def _x(shape, spread=4.0, seed=0):
    """Floats that hit exact halves of the scale (round half to even) and saturate."""
    rng = np.random.default_rng(seed)
    x = (rng.integers(-60, 60, size=shape) * 0.25 * spread).astype(np.float32)
    x.reshape(-1)[:3] = [1000.0, -1000.0, 0.125]
    return x


QUANTIZE_CASES = {
    # name: (opset, x shape, scale, zero point, attributes)
    "per_tensor_uint8_v10": (10, (2, 6), np.float32(0.5), np.uint8(128), {}),
    "per_tensor_int8_no_zero_point": (13, (2, 6), np.float32(0.5), np.int8(0), {}),
    "default_uint8": (13, (2, 6), np.float32(0.25), None, {}),
    "per_axis_int8": (13, (2, 3, 4), np.float32([0.5, 1.0, 2.0]), np.int8([0, -3, 5]), {}),
    "per_axis_last": (
        19,
        (2, 3, 4),
        np.float32([0.5, 1, 2, 4]),
        np.uint8([1, 2, 3, 4]),
        {"axis": -1},
    ),
    "uint16": (21, (2, 6), np.float32(0.01), np.uint16(30000), {}),
    "int16": (21, (2, 6), np.float32(0.01), np.int16(-5), {}),
    "blocked": (
        21,
        (2, 6),
        np.float32([[0.5, 1.0], [0.25, 2.0]]),
        np.int8([[1, -1], [0, 3]]),
        {"axis": 1, "block_size": 3},
    ),
    "blocked_ragged": (
        21,
        (4, 5),
        np.float32([[0.5, 1.0, 2.0]] * 4),
        np.uint8([[1, 2, 3]] * 4),
        {"axis": 1, "block_size": 2},
    ),
    "output_dtype_int8": (21, (2, 6), np.float32(0.5), None, {"output_dtype": TensorProto.INT8}),
}


@pytest.mark.parametrize("name", QUANTIZE_CASES)
def test_quantize_linear_matches_onnxruntime(name):
    opset, shape, scale, zero_point, attributes = QUANTIZE_CASES[name]
    constants = {"scale": scale} if zero_point is None else {"scale": scale, "zp": zero_point}
    x = _x(shape)
    model = single_node("QuantizeLinear", {"x": x}, constants, opset=opset, **attributes)
    _same_as_onnxruntime(model, x)


def test_quantize_linear_rounds_half_to_even_and_saturates():
    x = np.float32([[0.5, 1.5, 2.5, -0.5, -1.5, 300.0, -300.0]])
    model = single_node("QuantizeLinear", {"x": x}, {"s": np.float32(1), "z": np.int8(0)})
    assert _run(model, x)[0].tolist() == [[0, 2, 2, 0, -2, 127, -128]]


def test_quantize_linear_of_float16_input():
    x = _x((3, 4)).astype(np.float16)
    scale = np.float16(0.3)
    model = single_node("QuantizeLinear", {"x": x}, {"s": scale, "z": np.uint8(7)}, opset=19)
    _same_as_onnxruntime(model, x)


DEQUANTIZE_CASES = {
    "uint8_v10": (10, np.uint8, np.float32(0.5), np.uint8(128), {}),
    "int8_per_axis": (13, np.int8, np.float32([0.5, 1.0, 2.0]), np.int8([0, -3, 5]), {}),
    "int32_no_zero_point": (13, np.int32, np.float32(0.001), None, {}),
    "uint16": (21, np.uint16, np.float32(0.01), np.uint16(30000), {}),
    "int16_float16_scale": (21, np.int16, np.float16(0.01), np.int16(-5), {}),
    "blocked": (
        21,
        np.int8,
        np.float32([[[0.5, 1.0], [0.25, 2.0], [1, 1]]] * 2),
        np.int8([[[1, -1], [0, 3], [0, 0]]] * 2),
        {"axis": 2, "block_size": 2},
    ),
}


@pytest.mark.parametrize("name", DEQUANTIZE_CASES)
def test_dequantize_linear_matches_onnxruntime(name):
    opset, dtype, scale, zero_point, attributes = DEQUANTIZE_CASES[name]
    info = np.iinfo(dtype)
    rng = np.random.default_rng(1)
    low, high = max(info.min, -(2**20)), min(info.max, 2**20)
    x = rng.integers(low, high, size=(2, 3, 4), endpoint=True).astype(dtype)
    constants = {"scale": scale} if zero_point is None else {"scale": scale, "zp": zero_point}
    model = single_node("DequantizeLinear", {"x": x}, constants, opset=opset, **attributes)
    _same_as_onnxruntime(model, x)


def test_dynamic_quantize_linear_matches_onnxruntime():
    for seed, shift in ((0, 0.0), (1, 5.0), (2, -5.0)):
        x = (np.random.default_rng(seed).standard_normal((3, 5)) + shift).astype(np.float32)
        model = single_node(
            "DynamicQuantizeLinear", {"x": x}, outputs=("y", "scale", "zp"), opset=11
        )
        _same_as_onnxruntime(model, x)


def test_dynamic_quantize_linear_has_no_gradient():
    x = np.random.default_rng(0).standard_normal((3, 5)).astype(np.float32)
    model = single_node("DynamicQuantizeLinear", {"x": x}, outputs=("y", "scale", "zp"), opset=11)
    _, scale, _ = ft.onnx.load(model)(ft.tensor(x, requires_grad=True))
    with pytest.raises(AutogradError, match="DynamicQuantizeLinear"):
        scale.sum().backward()


@pytest.mark.parametrize("dtype", [np.uint8, np.int8])
@pytest.mark.parametrize("opset", [10, 21])
def test_qlinear_matmul_matches_onnxruntime(dtype, opset):
    rng = np.random.default_rng(2)
    info = np.iinfo(dtype)
    a = rng.integers(info.min, info.max, size=(2, 4, 5), endpoint=True).astype(dtype)
    b = rng.integers(info.min, info.max, size=(5, 3), endpoint=True).astype(dtype)
    constants = {
        "a_scale": np.float32(0.02),
        "a_zp": dtype(3),
        "b": b,
        "b_scale": np.float32([0.01, 0.03, 0.05]),  # per column
        "b_zp": np.array([1, 2, 3], dtype=dtype),
        "y_scale": np.float32(0.4),
        "y_zp": dtype(9),
    }
    model = single_node("QLinearMatMul", {"a": a}, constants, opset=opset)
    _same_as_onnxruntime(model, a)


def test_matmul_integer_matches_onnxruntime():
    rng = np.random.default_rng(3)
    a = rng.integers(0, 255, size=(3, 4, 6), endpoint=True).astype(np.uint8)
    b = rng.integers(-128, 127, size=(6, 5), endpoint=True).astype(np.int8)
    constants = {"b": b, "a_zp": np.uint8(12), "b_zp": np.int8([1, -2, 3, 0, 5])}
    model = single_node("MatMulInteger", {"a": a}, constants, opset=10)
    _same_as_onnxruntime(model, a)


CONV_CASES = {
    "plain": ({}, 1),
    "pads_strides": ({"pads": [1, 0, 2, 1], "strides": [2, 1]}, 1),
    "same_upper": ({"auto_pad": "SAME_UPPER"}, 1),
    "dilated": ({"dilations": [2, 2], "pads": [2, 1, 0, 1]}, 1),
    "grouped": ({"group": 2, "pads": [1, 1, 1, 1]}, 2),
}


def _conv_data(group, seed=4):
    rng = np.random.default_rng(seed)
    x = rng.integers(0, 255, size=(2, 4, 7, 6), endpoint=True).astype(np.uint8)
    w = rng.integers(-128, 127, size=(6, 4 // group, 3, 3), endpoint=True).astype(np.int8)
    return x, w


@pytest.mark.parametrize("name", CONV_CASES)
def test_qlinear_conv_matches_onnxruntime(name):
    attributes, group = CONV_CASES[name]
    x, w = _conv_data(group)
    rng = np.random.default_rng(5)
    constants = {
        "x_scale": np.float32(0.05),
        "x_zp": np.uint8(120),
        "w": w,
        "w_scale": (rng.random(6) * 0.02 + 0.001).astype(np.float32),  # per output channel
        "w_zp": np.zeros(6, np.int8),
        "y_scale": np.float32(0.3),
        "y_zp": np.uint8(100),
        "b": rng.integers(-2000, 2000, size=6).astype(np.int32),
    }
    model = single_node("QLinearConv", {"x": x}, constants, opset=10, **attributes)
    _same_as_onnxruntime(model, x)


@pytest.mark.parametrize("name", CONV_CASES)
def test_conv_integer_matches_onnxruntime(name):
    attributes, group = CONV_CASES[name]
    x, w = _conv_data(group)
    w = (w.astype(np.int16) + 128).astype(np.uint8)  # onnxruntime's ConvInteger takes uint8 w
    constants = {"w": w, "x_zp": np.uint8(120), "w_zp": np.uint8(128)}
    model = single_node("ConvInteger", {"x": x}, constants, opset=10, **attributes)
    _same_as_onnxruntime(model, x)


def test_conv_integer_equals_a_plain_loop():
    """The float64-kernel fast path against the definition, with a per-channel w zero point."""
    x, w = _conv_data(1, seed=6)
    w_zp = np.int8([0, 1, -1, 2, -2, 3])
    model = single_node("ConvInteger", {"x": x}, {"w": w, "x_zp": np.uint8(7), "w_zp": w_zp})
    got = _run(model, x)[0]
    xs, ws = x.astype(np.int64) - 7, w.astype(np.int64) - w_zp[:, None, None, None]
    want = np.zeros((2, 6, 5, 4), np.int64)
    for n in range(2):
        for o in range(6):
            for i in range(5):
                for j in range(4):
                    want[n, o, i, j] = (xs[n, :, i : i + 3, j : j + 3] * ws[o]).sum()
    assert got.dtype == np.int32
    np.testing.assert_array_equal(got, want)


def _qdq_conv_model(rng):
    """x → QuantizeLinear → DequantizeLinear → Conv(DequantizeLinear(w), DequantizeLinear(b)):
    the layout of a statically quantized model."""
    w_q = rng.integers(-127, 127, size=(4, 3, 3, 3), endpoint=True).astype(np.int8)
    w_scale = (rng.random(4) * 0.01 + 0.002).astype(np.float32)
    b_q = rng.integers(-500, 500, size=4).astype(np.int32)
    nodes = [
        helper.make_node("QuantizeLinear", ["x", "x_scale", "x_zp"], ["xq"], name="q_x"),
        helper.make_node("DequantizeLinear", ["xq", "x_scale", "x_zp"], ["xd"], name="dq_x"),
        helper.make_node(
            "DequantizeLinear", ["w_q", "w_scale", "w_zp"], ["w"], name="dq_w", axis=0
        ),
        helper.make_node("DequantizeLinear", ["b_q", "b_scale"], ["b"], name="dq_b"),
        helper.make_node("Conv", ["xd", "w", "b"], ["y"], name="conv", pads=[1, 1, 1, 1]),
    ]
    inits = {
        "x_scale": np.float32(0.02),
        "x_zp": np.uint8(128),
        "w_q": w_q,
        "w_scale": w_scale,
        "w_zp": np.zeros(4, np.int8),
        "b_q": b_q,
        "b_scale": np.float32(0.0004),
    }
    return make_model(
        nodes,
        [value_info("x", ["N", 3, 6, 6])],
        [value_info("y", ["N", 4, 6, 6])],
        [initializer(k, v) for k, v in inits.items()],
        opset=13,
    ), inits


def test_qdq_model_imports_with_float_weights_that_train():
    rng = np.random.default_rng(8)
    model, inits = _qdq_conv_model(rng)
    x = rng.standard_normal((2, 3, 6, 6)).astype(np.float32)
    want = run_onnxruntime(model, x)[0]
    net = ft.onnx.load(model, freeze=False)
    np.testing.assert_allclose(np.asarray(net(x)._data), want, rtol=1e-5, atol=1e-5)
    convs = [m for m in net.modules() if isinstance(m, ft.nn.Conv2d)]
    assert len(convs) == 1
    weight = convs[0].weight
    expected = inits["w_q"].astype(np.float32) * inits["w_scale"][:, None, None, None]
    assert weight._data.dtype == np.float32
    np.testing.assert_array_equal(weight._data, expected)
    np.testing.assert_array_equal(
        convs[0].bias._data, inits["b_q"].astype(np.float32) * np.float32(0.0004)
    )
    net(x).sum().backward()
    assert weight.grad is not None and np.abs(weight.grad._data).sum() > 0


def test_fold_dequantized_weights_keeps_activation_nodes():
    model, inits = _qdq_conv_model(np.random.default_rng(9))
    kept, folded = fold_dequantized_weights(list(model.graph.node), inits, 13)
    assert [n.name for n in kept] == ["q_x", "dq_x", "conv"]
    assert sorted(folded) == ["b", "w"]
    assert folded["w"].dtype == np.float32 and folded["w"].shape == (4, 3, 3, 3)
    dq_w = single_node(
        "DequantizeLinear",
        {"w_q": inits["w_q"]},
        {"w_scale": inits["w_scale"], "w_zp": inits["w_zp"]},
        axis=0,
        free_batch=False,
    )
    np.testing.assert_array_equal(folded["w"], run_onnxruntime(dq_w, inits["w_q"])[0])


def test_unsupported_types_are_refused_at_import():
    x = np.zeros((2, 3), np.float32)
    float8 = single_node(
        "QuantizeLinear",
        {"x": x},
        {"s": np.float32(1)},
        opset=21,
        output_dtype=TensorProto.FLOAT8E4M3FN,
    )
    with pytest.raises(OnnxImportError, match="QuantizeLinear.*FLOAT8E4M3FN"):
        ft.onnx.load(float8)


def test_a_scale_of_the_wrong_length_names_the_op():
    x = np.zeros((2, 3), np.float32)
    model = single_node(
        "QuantizeLinear", {"x": x}, {"s": np.float32([1, 2]), "z": np.uint8([0, 0])}
    )
    with pytest.raises(
        OnnxImportError, match="QuantizeLinear.*per-axis scale must be 1-D of length 3"
    ):
        ft.onnx.load(model)(x)


@pytest.mark.parametrize(
    "scale, attributes",
    [
        (np.float32(0.3), {}),
        (np.float32([0.5, 1.0, 2.0]), {}),
        (np.float32([[[0.5, 1.0], [0.25, 2.0], [1.5, 3.0]]] * 2), {"block_size": 2, "axis": 2}),
    ],
    ids=["per_tensor", "per_axis", "blocked"],
)
def test_dequantize_linear_gradient_reaches_its_scale(scale, attributes):
    x = np.random.default_rng(10).integers(-128, 127, size=(2, 3, 4)).astype(np.int8)
    model = single_node(
        "DequantizeLinear",
        {"x": x},
        {"scale": scale, "zp": np.zeros_like(scale, np.int8)},
        opset=21,
        **attributes,
    )
    net = ft.onnx.load(model, freeze=False).double()
    params = list(net.parameters())
    assert len(params) == 1 and params[0].shape == scale.shape
    assert ft.autograd.gradcheck(lambda s: net(x), tuple(params))


def test_quantize_dequantize_passes_the_gradient_straight_through():
    """Gradient 1 where x is inside the quantized range, 0 where it saturates (PyTorch's
    fake-quantize rule); the values stay onnxruntime's."""
    x = np.float32([[-3.0, -0.26, 0.0, 0.74, 1.2, 2.6, 9.0]])
    nodes = [
        helper.make_node("QuantizeLinear", ["x", "s", "z"], ["q"]),
        helper.make_node("DequantizeLinear", ["q", "s", "z"], ["y"]),
    ]
    model = make_model(
        nodes,
        [value_info("x", [1, 7])],
        [value_info("y", [1, 7])],
        [initializer("s", np.float32(0.02)), initializer("z", np.int8(-20))],
    )
    leaf = ft.tensor(x, requires_grad=True)
    y = ft.onnx.load(model)(leaf)
    np.testing.assert_array_equal(y._data, run_onnxruntime(model, x)[0])
    y.sum().backward()
    # int8 with zero point -20 holds -2.16 .. 2.94
    np.testing.assert_array_equal(leaf.grad._data, [[0, 1, 1, 1, 1, 1, 0]])


def test_every_layer_of_a_qdq_model_trains():
    """conv1 → Q → DQ → conv2 (quantized weights): conv1's weight gets the gradient of the float
    model, through the straight-through activation quantizer."""
    rng = np.random.default_rng(12)
    w1 = (rng.standard_normal((4, 3, 3, 3)) * 0.1).astype(np.float32)
    w2_q = rng.integers(-127, 127, size=(2, 4, 1, 1)).astype(np.int8)
    nodes = [
        helper.make_node("Conv", ["x", "w1"], ["h"], name="conv1"),
        helper.make_node("QuantizeLinear", ["h", "s", "z"], ["hq"]),
        helper.make_node("DequantizeLinear", ["hq", "s", "z"], ["hd"]),
        helper.make_node("DequantizeLinear", ["w2_q", "w2_s"], ["w2"]),
        helper.make_node("Conv", ["hd", "w2"], ["y"], name="conv2"),
    ]
    inits = {"w1": w1, "s": np.float32(0.05), "z": np.uint8(128), "w2_q": w2_q}
    inits["w2_s"] = np.float32(0.01)
    model = make_model(
        nodes,
        [value_info("x", ["N", 3, 5, 5])],
        [value_info("y", ["N", 2, 3, 3])],
        [initializer(k, v) for k, v in inits.items()],
    )
    x = rng.standard_normal((2, 3, 5, 5)).astype(np.float32)
    net = ft.onnx.load(model, freeze=False)
    out = net(x)
    np.testing.assert_allclose(out._data, run_onnxruntime(model, x)[0], rtol=1e-5, atol=1e-6)
    out.sum().backward()
    w2 = w2_q.astype(np.float32) * np.float32(0.01)
    float_model = make_model(
        [nodes[0], helper.make_node("Conv", ["h", "w2"], ["y"], name="conv2")],
        [value_info("x", ["N", 3, 5, 5])],
        [value_info("y", ["N", 2, 3, 3])],
        [initializer("w1", w1), initializer("w2", w2)],
    )
    reference = ft.onnx.load(float_model, freeze=False)
    reference(x).sum().backward()
    (conv1, reference_conv1) = (
        [m for m in n.modules() if isinstance(m, ft.nn.Conv2d)][0] for n in (net, reference)
    )
    assert conv1.weight.grad is not None
    np.testing.assert_allclose(
        conv1.weight.grad._data, reference_conv1.weight.grad._data, rtol=1e-5, atol=1e-5
    )
