"""Elementwise ONNX ops (arithmetic, unary math, logic, casts) against onnxruntime and numpy;
their gradients by gradcheck in float64; broadcasting undone once in the engine."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper
from onnx_builders import make_model, run_onnxruntime, single_node, value_info

import finetune as ft
from finetune.autograd import Function, gradcheck, ops
from finetune.errors import OnnxImportError, ShapeError
from finetune.onnx import backend
from finetune.onnx.export_ops import emitter_for
from finetune.onnx.ops.elementwise import BINARY, UNARY

RNG = np.random.default_rng(0)


def _run(model: onnx.ModelProto, *inputs: np.ndarray) -> tuple:
    return backend.prepare(model).run(list(inputs))


def _graph(op, inputs: dict, opset: int, out_type=None, shape=None, **attributes):
    """One node over graph inputs named as ``inputs``; its output of type ``out_type`` (default:
    the first input's) and of ``shape`` (default: the inputs' broadcast shape)."""
    node = helper.make_node(op, list(inputs), ["out"], **attributes)
    types = [helper.np_dtype_to_tensor_dtype(v.dtype) for v in inputs.values()]
    ins = [value_info(k, list(v.shape), t) for (k, v), t in zip(inputs.items(), types)]
    if shape is None:
        shape = np.broadcast_shapes(*(v.shape for v in inputs.values()))
    out = helper.make_tensor_value_info("out", out_type or types[0], list(shape))
    return make_model([node], ins, [out], opset=opset, check=False)


# -- unary math: the table ----------------------------------------------------------------------

DOMAIN = {"Acosh": (1.1, 3.0), "Asin": (-0.9, 0.9), "Acos": (-0.9, 0.9), "Atanh": (-0.9, 0.9)}
DOMAIN |= {"Log": (0.1, 3.0), "Sqrt": (0.1, 3.0), "Reciprocal": (0.5, 3.0)}
CONVERTED = [row for row in UNARY if row.versions]


def _unary_input(op: str, dtype=np.float32, ties: bool = True) -> np.ndarray:
    lo, hi = DOMAIN.get(op, (-2.5, 2.5))
    x = RNG.uniform(lo, hi, (3, 4)).astype(dtype)
    if ties and op in ("Round", "Floor", "Ceil"):
        x[0, :3] = np.array([0.5, 1.5, -2.5], dtype)  # round's ties go to even
    return x


@pytest.mark.parametrize("row", CONVERTED, ids=lambda r: r.onnx)
def test_unary_op_matches_onnxruntime_at_its_newest_version(row):
    x = _unary_input(row.onnx)
    model = single_node(row.onnx, {"x": x}, opset=max(row.versions[-1], 13))
    (got,) = _run(model, x)
    (expected,) = run_onnxruntime(model, x)
    assert got.dtype == expected.dtype == np.float32
    np.testing.assert_allclose(got, expected, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("row", [r for r in CONVERTED if r.versions[0] == 1], ids=lambda r: r.onnx)
def test_opset_1_unary_op_accepts_consumed_inputs(row):
    """Files from old exporters carry the in-place hint; the values are opset 13's."""
    x = _unary_input(row.onnx)
    (got,) = _run(_graph(row.onnx, {"x": x}, 1, consumed_inputs=[0]), x)
    (expected,) = run_onnxruntime(single_node(row.onnx, {"x": x}, opset=13), x)
    assert got.shape == x.shape and got.dtype == np.float32
    np.testing.assert_allclose(got, expected, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("op", ["Sin", "Floor", "Sign", "Reciprocal", "Abs"])
def test_unary_op_keeps_float16(op):
    x = _unary_input(op, np.float16)
    (got,) = _run(single_node(op, {"x": x}, opset=13), x)
    assert got.dtype == np.float16


@pytest.mark.parametrize("op", ["Sign", "Abs", "Neg"])
def test_integer_unary_op_keeps_its_type(op):
    x = np.array([[-3, 0, 7]], dtype=np.int32)
    (got,) = _run(single_node(op, {"x": x}, opset=13), x)
    expected = {"Sign": np.sign, "Abs": np.abs, "Neg": np.negative}[op](x)
    assert got.dtype == np.int32
    np.testing.assert_array_equal(got, expected)


@pytest.mark.parametrize("row", CONVERTED, ids=lambda r: r.onnx)
def test_unary_gradients_pass_gradcheck(row):
    x = _unary_input(row.onnx, ties=False).astype(np.float64)
    model = ft.onnx.load(single_node(row.onnx, {"x": x.astype(np.float32)}), freeze=False)
    leaf = ft.tensor(x, requires_grad=True)
    assert gradcheck(lambda t: model.double()(t), (leaf,))


def test_step_functions_have_zero_gradient_as_in_pytorch():
    x = ft.tensor(np.array([0.3, -1.7, 2.5]), requires_grad=True)
    for function in (ops.Floor, ops.Ceil, ops.Round, ops.Sign):
        x.grad = None
        function.apply(x).sum().backward()
        np.testing.assert_array_equal(x.grad.numpy(), 0.0)


@pytest.mark.parametrize(
    ("name", "keeps_input"),
    [("exp", False), ("tanh", False), ("sqrt", False), ("tan", False), ("floor", False)]
    + [("sin", True), ("log", True), ("atan", True)],
)
def test_a_table_row_saves_only_what_its_derivative_reads_as_pytorch(name, keeps_input):
    """A row whose derivative is written in its result (exp, tanh) lets the input change in
    place before backward; one written in its input refuses, as PyTorch does."""
    leaf = ft.tensor(np.array([0.25, 0.5], np.float32), requires_grad=True)
    x = leaf * 1
    y = getattr(x, name)()
    x.add_(1)
    if keeps_input:
        with pytest.raises(ft.errors.AutogradError, match="modified by an inplace"):
            y.sum().backward()
    else:
        y.sum().backward()
        expected = {"exp": np.exp, "tanh": lambda v: 1 - np.tanh(v) ** 2}.get(name)
        if expected is not None:
            np.testing.assert_allclose(leaf.grad.numpy(), expected(leaf.detach().numpy()), 1e-6)


def test_every_table_row_exports_as_its_onnx_op(tmp_path):
    """Each row's emitter writes the row's op; onnxruntime runs it with the same values."""
    for row in UNARY:
        assert emitter_for(row.function) is not None, row.onnx
    for row in BINARY:
        assert emitter_for(row.function) is not None, row.onnx

    class Model(ft.nn.Module):
        def forward(self, x):
            return ops.Atan.apply(ops.Tan.apply(x)) + ops.Floor.apply(x) * ops.Sign.apply(x)

    x = ft.tensor(RNG.uniform(-1, 1, (2, 3)).astype(np.float32))
    path = tmp_path / "m.onnx"
    ft.onnx.export(Model(), x, str(path))
    model = onnx.load(str(path))
    assert {"Tan", "Atan", "Floor", "Sign"} <= {n.op_type for n in model.graph.node}
    (expected,) = run_onnxruntime(model, x.numpy())
    np.testing.assert_allclose(Model()(x).numpy(), expected, rtol=1e-6)


def test_remainders_export_and_run_in_onnxruntime(tmp_path):
    class Model(ft.nn.Module):
        def forward(self, x):
            return x % 0.7 + ft.functions.fmod(x, -0.4)

    x = ft.tensor(RNG.uniform(-3, 3, (2, 5)).astype(np.float32))
    path = tmp_path / "m.onnx"
    ft.onnx.export(Model(), x, str(path))
    (expected,) = run_onnxruntime(onnx.load(str(path)), x.numpy())
    reference = np.mod(x.numpy(), np.float32(0.7)) + np.fmod(x.numpy(), np.float32(-0.4))
    np.testing.assert_allclose(expected, reference, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("dim", [None, 1, (0, 2)])
def test_var_and_std_export_and_run_in_onnxruntime(tmp_path, dim):
    class Model(ft.nn.Module):
        def forward(self, x):
            spread = ft.functions.var(x, dim=dim, keepdim=True) + 1
            return ft.functions.std(x, dim=dim, unbiased=False) * spread.sum()

    x = ft.tensor(RNG.standard_normal((3, 4, 5)).astype(np.float32))
    path = tmp_path / "m.onnx"
    ft.onnx.export(Model(), x, str(path))
    (expected,) = run_onnxruntime(onnx.load(str(path)), x.numpy())
    axes = dim if dim is None or isinstance(dim, tuple) else (dim,)
    data = x.numpy().astype(np.float64)
    reference = data.std(axis=axes) * (data.var(axis=axes, ddof=1, keepdims=True) + 1).sum()
    np.testing.assert_allclose(expected, reference, rtol=1e-5)


def test_log1p_exports_as_log_of_one_plus(tmp_path):
    class Model(ft.nn.Module):
        def forward(self, x):
            return ops.Log1p.apply(x)

    x = ft.tensor(RNG.uniform(0, 2, (2, 3)).astype(np.float32))
    path = tmp_path / "m.onnx"
    ft.onnx.export(Model(), x, str(path))
    (expected,) = run_onnxruntime(onnx.load(str(path)), x.numpy())
    np.testing.assert_allclose(np.log1p(x.numpy()), expected, rtol=1e-6)


# -- binary arithmetic ----------------------------------------------------------------------------


def test_integer_div_truncates_toward_zero_exactly():
    a = np.array([7, -7, 7, -7, 2**62 + 1, -(2**62) - 1], dtype=np.int64)
    b = np.array([2, 2, -2, -2, 3, 3], dtype=np.int64)
    (got,) = _run(_graph("Div", {"a": a, "b": b}, 14), a, b)
    expected = [
        int(x / y) if abs(x) < 2**53 else -(-x // y) if x < 0 else x // y
        for x, y in zip(a.tolist(), b.tolist())
    ]
    assert got.dtype == np.int64
    assert got.tolist() == expected


@pytest.mark.parametrize("dtype", [np.int32, np.int8, np.uint8, np.float16, np.float64])
@pytest.mark.parametrize("op", ["Add", "Sub", "Mul", "Div"])
def test_arithmetic_keeps_the_element_type(op, dtype):
    a = np.array([[9, 4, 100]], dtype=dtype)
    b = np.array([2, 3, 7], dtype=dtype)
    model = _graph(op, {"a": a, "b": b}, 14)
    (got,) = _run(model, a, b)
    (expected,) = run_onnxruntime(model, a, b)
    assert got.dtype == expected.dtype == dtype
    np.testing.assert_allclose(got, expected, rtol=1e-3)


def test_pow_keeps_the_base_type():
    x = np.array([1, 2, 3], dtype=np.int32)
    y = np.array([2.0, 3.0, 1.0], dtype=np.float32)
    (got,) = _run(_graph("Pow", {"x": x, "y": y}, 15), x, y)
    assert got.dtype == np.int32 and got.tolist() == [1, 8, 3]
    base, exponent = np.array([2, -2, 1, -1], np.int32), np.array([-1, -1, -3, -3], np.int32)
    model = _graph("Pow", {"x": base, "y": exponent}, 15)
    (got,) = _run(model, base, exponent)
    np.testing.assert_array_equal(got, run_onnxruntime(model, base, exponent)[0])
    xf = np.array([1.5, 2.0], dtype=np.float16)
    (got,) = _run(
        _graph("Pow", {"x": xf, "y": np.array([2], np.int64)}, 15), xf, np.array([2], np.int64)
    )
    assert got.dtype == np.float16
    np.testing.assert_allclose(got, [2.25, 4.0])


@pytest.mark.parametrize("axis", [None, 1, 0])
def test_opset_6_broadcast_aligns_b_at_axis(axis):
    """Old exporters' Add with ``broadcast=1`` lines ``B`` up with ``A`` from ``axis``."""
    a = RNG.standard_normal((2, 3, 4)).astype(np.float32)
    b_shape = {None: (4,), 1: (3,), 0: (2, 3)}[axis]
    b = RNG.standard_normal(b_shape).astype(np.float32)
    attributes = {"broadcast": 1} if axis is None else {"broadcast": 1, "axis": axis}
    (got,) = _run(_graph("Add", {"a": a, "b": b}, 6, shape=a.shape, **attributes), a, b)
    expected = np.empty_like(a)
    for i, j, k in np.ndindex(a.shape):
        index = {None: (k,), 1: (j,), 0: (i, j)}[axis]
        expected[i, j, k] = a[i, j, k] + b[index]
    np.testing.assert_allclose(got, expected)


def test_opset_1_without_broadcast_refuses_different_shapes():
    a, b = np.ones((2, 3), np.float32), np.ones((3,), np.float32)
    with pytest.raises((ShapeError, OnnxImportError), match="Mul.*broadcast=0"):
        _run(_graph("Mul", {"a": a, "b": b}, 1, shape=a.shape), a, b)


def test_variadic_ops_at_opset_1():
    xs = [RNG.standard_normal((2, 3)).astype(np.float32) for _ in range(3)]
    inputs = dict(zip("abc", xs))
    for op, expected in {
        "Sum": sum(xs),
        "Mean": sum(xs) / 3,
        "Max": np.maximum.reduce(xs),
        "Min": np.minimum.reduce(xs),
    }.items():
        (got,) = _run(_graph(op, inputs, 1, consumed_inputs=[0]), *xs)
        np.testing.assert_allclose(got, expected, rtol=1e-6)


@pytest.mark.parametrize("fmod", [0, 1])
@pytest.mark.parametrize("dtype", [np.int32, np.int64, np.float32])
def test_mod_matches_onnxruntime(dtype, fmod):
    if dtype == np.float32 and not fmod:
        pytest.skip("onnxruntime refuses fmod=0 for floats")
    a = np.array([-7, 7, -7, 7, 5, -4, 0], dtype=dtype)
    b = np.array([3, -3, -3, 3, 5, 3, 2], dtype=dtype)
    model = _graph("Mod", {"a": a, "b": b}, 13, fmod=fmod)
    (got,) = _run(model, a, b)
    (expected,) = run_onnxruntime(model, a, b)
    assert got.dtype == dtype
    np.testing.assert_allclose(got, expected)


@pytest.mark.parametrize("fmod", [False, True])
def test_mod_gradients_pass_gradcheck(fmod):
    a = ft.tensor(RNG.uniform(-6, 6, (3, 4)), requires_grad=True)
    b = ft.tensor(RNG.uniform(1.2, 2.5, (4,)) * np.array([1, -1, 1, -1]), requires_grad=True)
    assert gradcheck(lambda a, b: ops.Mod.apply(a, b, fmod=fmod), (a, b))


@pytest.mark.parametrize("op", ["Add", "Sub", "Mul", "Div", "Pow"])
def test_broadcast_binary_gradients_pass_gradcheck(op):
    a = RNG.uniform(0.5, 2.0, (2, 3, 4))
    b = RNG.uniform(0.5, 2.0, (3, 1))
    model = ft.onnx.load(
        _graph(op, {"a": a.astype(np.float32), "b": b.astype(np.float32)}, 14), freeze=False
    ).double()
    leaves = (ft.tensor(a, requires_grad=True), ft.tensor(b, requires_grad=True))
    assert gradcheck(lambda a, b: model(a, b), leaves)


# -- logic ----------------------------------------------------------------------------------------

COMPARISONS = {
    "Equal": np.equal,
    "Less": np.less,
    "Greater": np.greater,
    "LessOrEqual": np.less_equal,
    "GreaterOrEqual": np.greater_equal,
}


@pytest.mark.parametrize("dtype", [np.float32, np.float16, np.int32, np.uint8])
@pytest.mark.parametrize("op", list(COMPARISONS))
def test_comparisons_give_bool_with_broadcasting(op, dtype):
    a = np.array([[1, 2, 3], [3, 2, 1]], dtype=dtype)
    b = np.array([2, 2, 2], dtype=dtype)
    model = _graph(op, {"a": a, "b": b}, 16, TensorProto.BOOL)
    (got,) = _run(model, a, b)
    assert got.dtype == np.bool_
    np.testing.assert_array_equal(got, COMPARISONS[op](a, b))


def test_equal_compares_strings():
    a = np.array(["cat", "dog", ""], dtype=object)
    b = np.array(["cat", "Dog", ""], dtype=object)
    node = helper.make_node("Equal", ["a", "b"], ["y"])
    model = make_model(
        [node],
        [value_info("a", [3], TensorProto.STRING), value_info("b", [3], TensorProto.STRING)],
        [value_info("y", [3], TensorProto.BOOL)],
        opset=19,
    )
    (got,) = _run(model, a, b)
    assert got.dtype == np.bool_ and got.tolist() == [True, False, True]


def test_a_comparison_output_carries_no_gradient():
    model = ft.onnx.load(
        _graph(
            "Less", {"a": np.ones(3, np.float32), "b": np.ones(3, np.float32)}, 13, TensorProto.BOOL
        ),
        freeze=False,
    )
    a = ft.tensor(np.array([1.0, 2.0, 3.0], np.float32), requires_grad=True)
    out = model(a, ft.tensor(np.full(3, 2.0, np.float32)))
    assert out.dtype == ft.bool
    assert not out.requires_grad


@pytest.mark.parametrize("op", ["And", "Or", "Xor"])
def test_boolean_ops_with_opset_1_broadcast(op):
    a = RNG.random((2, 3)) > 0.5
    b = RNG.random((3,)) > 0.5
    (got,) = _run(_graph(op, {"a": a, "b": b}, 1, broadcast=1), a, b)
    expected = {"And": np.logical_and, "Or": np.logical_or, "Xor": np.logical_xor}[op](a, b)
    np.testing.assert_array_equal(got, expected)
    (not_a,) = _run(_graph("Not", {"a": a}, 1), a)
    np.testing.assert_array_equal(not_a, ~a)


@pytest.mark.parametrize("dtype", [np.int8, np.int32, np.uint8, np.uint64])
@pytest.mark.parametrize("direction", ["LEFT", "RIGHT"])
def test_bit_shift_follows_opset_28_at_every_amount(direction, dtype):
    """Shifts by a negative amount or the width or more give the sign fill alone; a plain
    Python loop on unbounded ints is the reference."""
    bits = np.dtype(dtype).itemsize * 8
    info = np.iinfo(dtype)
    signed = info.min < 0
    values = np.array([info.min, -1 if signed else 1, 5, info.max], dtype=dtype)
    amounts = [s for s in (-1, 0, 1, 3, bits - 1, bits, bits + 3) if signed or s >= 0]
    amounts = np.array(amounts, dtype=dtype)
    x = np.repeat(values, len(amounts))
    y = np.tile(amounts, len(values))
    (got,) = _run(_graph("BitShift", {"x": x, "y": y}, 28, direction=direction), x, y)
    expected = []
    for v, s in zip(x.tolist(), y.tolist()):
        if s < 0 or s >= bits:
            expected.append(-1 if direction == "RIGHT" and v < 0 else 0)
            continue
        r = v << s if direction == "LEFT" else v >> s
        r &= (1 << bits) - 1
        expected.append(r - (1 << bits) if info.min < 0 and r >= 1 << (bits - 1) else r)
    assert got.dtype == dtype
    assert got.tolist() == expected


@pytest.mark.parametrize("op", ["BitwiseAnd", "BitwiseOr", "BitwiseXor"])
def test_bitwise_ops_keep_the_integer_type(op):
    a = np.array([[0b1100, 0b1010]], dtype=np.uint16)
    b = np.array([0b1010, 0b0110], dtype=np.uint16)
    (got,) = _run(_graph(op, {"a": a, "b": b}, 18), a, b)
    kernel = {
        "BitwiseAnd": np.bitwise_and,
        "BitwiseOr": np.bitwise_or,
        "BitwiseXor": np.bitwise_xor,
    }[op]
    assert got.dtype == np.uint16
    np.testing.assert_array_equal(got, kernel(a, b))
    (inverted,) = _run(_graph("BitwiseNot", {"a": a}, 18), a)
    np.testing.assert_array_equal(inverted, ~a)


def test_where_matches_onnxruntime_and_its_gradients_pass_gradcheck():
    cond = RNG.random((2, 1, 4)) > 0.5
    x = RNG.standard_normal((3, 4)).astype(np.float32)
    y = RNG.standard_normal((4,)).astype(np.float32)
    model = _graph("Where", {"c": cond, "x": x, "y": y}, 16, TensorProto.FLOAT)
    (got,) = _run(model, cond, x, y)
    (expected,) = run_onnxruntime(model, cond, x, y)
    assert got.shape == (2, 3, 4)
    np.testing.assert_array_equal(got, expected)
    loaded = ft.onnx.load(model, freeze=False).double()
    leaves = (
        ft.tensor(x.astype(np.float64), requires_grad=True),
        ft.tensor(y.astype(np.float64), requires_grad=True),
    )
    assert gradcheck(lambda a, b: loaded(ft.tensor(cond), a, b), leaves)


def test_isnan_and_isinf_detect_what_they_are_asked():
    x = np.array([np.nan, np.inf, -np.inf, 1.0], dtype=np.float16)
    (nan,) = _run(_graph("IsNaN", {"x": x}, 20, TensorProto.BOOL), x)
    assert nan.tolist() == [True, False, False, False]
    for negative, positive, expected in [
        (1, 1, [0, 1, 1, 0]),
        (0, 1, [0, 1, 0, 0]),
        (1, 0, [0, 0, 1, 0]),
    ]:
        model = _graph(
            "IsInf",
            {"x": x},
            20,
            TensorProto.BOOL,
            detect_negative=negative,
            detect_positive=positive,
        )
        (got,) = _run(model, x)
        assert got.dtype == np.bool_ and got.tolist() == [bool(v) for v in expected]


# -- casts ----------------------------------------------------------------------------------------


def test_opset_1_cast_names_its_target_type():
    x = np.array([1.7, -2.2], dtype=np.float32)
    (got,) = _run(_graph("Cast", {"x": x}, 1, TensorProto.INT32, to="INT32"), x)
    assert got.dtype == np.int32 and got.tolist() == [1, -2]


def test_cast_like_takes_the_type_of_its_second_input():
    x = np.array([1.25, 2.5], dtype=np.float32)
    target = np.zeros(1, dtype=np.float16)
    (got,) = _run(_graph("CastLike", {"x": x, "t": target}, 19, TensorProto.FLOAT16), x, target)
    assert got.dtype == np.float16 and got.tolist() == [1.25, 2.5]


def test_cast_between_floats_keeps_the_gradient():
    model = ft.onnx.load(
        _graph(
            "Cast", {"x": np.ones(3, np.float32)}, 13, TensorProto.FLOAT16, to=TensorProto.FLOAT16
        ),
        freeze=False,
    )
    x = ft.tensor(np.array([1.0, 2.0, 3.0], np.float32), requires_grad=True)
    (model(x).float() * 2).sum().backward()
    np.testing.assert_array_equal(x.grad.numpy(), [2.0, 2.0, 2.0])


def test_bitcast_reinterprets_bytes_and_refuses_other_widths():
    x = np.array([1.0, -2.0], dtype=np.float32)
    (got,) = _run(_graph("BitCast", {"x": x}, 26, TensorProto.INT32, to=TensorProto.INT32), x)
    np.testing.assert_array_equal(got, x.view(np.int32))
    with pytest.raises((ShapeError, OnnxImportError), match="BitCast.*widths"):
        _run(_graph("BitCast", {"x": x}, 26, TensorProto.INT64, to=TensorProto.INT64), x)


# -- the engine undoes broadcasting once ---------------------------------------------------------


class _Broadcasting(Function):
    """``x + 0`` whose backward returns the gradient in the broadcast shape, unsummed."""

    @staticmethod
    def forward(ctx, x, shape):
        return np.broadcast_to(x, shape).copy()

    @staticmethod
    def backward(ctx, grad):
        return grad, None


class _Wrong(_Broadcasting):
    @staticmethod
    def backward(ctx, grad):
        return grad[..., :1], None  # a shape that no broadcast explains


def test_engine_sums_a_broadcast_gradient_back_to_the_input_shape():
    x = ft.tensor(np.array([[1.0], [2.0]]), requires_grad=True)
    _Broadcasting.apply(x, (3, 2, 4)).sum().backward()
    np.testing.assert_array_equal(x.grad.numpy(), [[12.0], [12.0]])


def test_engine_refuses_a_gradient_of_an_unrelated_shape():
    x = ft.tensor(np.ones((2, 3)), requires_grad=True)
    with pytest.raises(ShapeError, match="invalid gradient"):
        _Wrong.apply(x, (2, 3)).sum().backward()


# -- the PyTorch surface over the same Functions --------------------------------------------------


def test_tensor_rounding_and_remainder_record_gradients_as_pytorch():
    """floor/ceil/round/sign pass a zero gradient (not a detached result); ``%`` and ``fmod``
    pass 1 to the dividend and minus the quotient to the divisor."""
    x = ft.tensor(np.array([1.5, -2.5, 0.3]), requires_grad=True)
    d = ft.tensor(np.array([0.7, 0.7, -0.4]), requires_grad=True)
    for step in (x.floor(), x.ceil(), x.round(), x.sign()):
        assert step.grad_fn is not None
    np.testing.assert_array_equal(x.round().detach().numpy(), [2.0, -2.0, 0.0])
    ((x % d) + ft.functions.fmod(x, d)).sum().backward()
    np.testing.assert_array_equal(x.grad.numpy(), [2.0, 2.0, 2.0])
    floor_q = np.floor(x.detach().numpy() / d.detach().numpy())
    trunc_q = np.trunc(x.detach().numpy() / d.detach().numpy())
    np.testing.assert_allclose(d.grad.numpy(), -(floor_q + trunc_q))
    np.testing.assert_array_equal((ft.tensor([7, -7]) % 3).numpy(), [1, 2])
    assert ft.tensor([3, -4], dtype=ft.int32).floor().dtype == ft.int32


@pytest.mark.parametrize("name", ["tan", "asin", "acos", "atan", "sinh", "cosh", "asinh", "atanh"])
def test_tensor_math_methods_match_numpy(name):
    x = RNG.uniform(-0.9, 0.9, (4,))
    got = getattr(ft.tensor(x), name)().numpy()
    reference = {
        "asin": "arcsin",
        "acos": "arccos",
        "atan": "arctan",
        "asinh": "arcsinh",
        "atanh": "arctanh",
    }.get(name, name)
    np.testing.assert_allclose(got, getattr(np, reference)(x), rtol=1e-12)
