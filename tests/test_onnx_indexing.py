"""Indexing and shape converters: Gather*/Scatter*, OneHot, NonZero, Compress, Unique, Trilu,
Expand, Tile, Range, EyeLike, Size, ReverseSequence, DepthToSpace, SpaceToDepth, CenterCropPad,
Det and the opset-1 schemas of Reshape, Concat, Split, Pad and Tile.

Values and dtypes against onnxruntime (or onnx.reference / numpy where onnxruntime has no
kernel), gradients by gradcheck in float64, the sort-based scatter-add and the SVD cofactors
against plain loops.
"""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper
from onnx.reference import ReferenceEvaluator
from onnx_builders import make_model, run_onnxruntime, value_info

import finetune as ft
from finetune.autograd.indexing import ScatterFlat, index_add
from finetune.autograd.linalg import cofactors
from finetune.errors import AutogradError, OnnxImportError
from finetune.onnx import registry
from finetune.onnx.export import to_onnx

RNG = np.random.default_rng(0)
I64 = np.int64


def f32(*shape):
    return RNG.standard_normal(shape).astype(np.float32)


def model_of(op, inputs: dict, opset=18, outputs=("y",), out=None, **attributes) -> onnx.ModelProto:
    """One node whose inputs are all graph inputs (fed at run time); a key starting with ``_``
    is an omitted optional input. ``out`` gives each output's ``(element type, rank)`` where
    shape inference cannot."""
    names = ["" if k.startswith("_") else k for k in inputs]
    node = helper.make_node(op, names, list(outputs), name=f"{op.lower()}_node", **attributes)
    graph_inputs = [
        value_info(k, list(v.shape), helper.np_dtype_to_tensor_dtype(v.dtype))
        for k, v in inputs.items()
        if not k.startswith("_")
    ]
    outs = [helper.make_empty_tensor_value_info(o) for o in outputs]
    if out is not None:
        outs = [value_info(o, [f"{o}{i}" for i in range(r)], t) for o, (t, r) in zip(outputs, out)]
    return make_model([node], graph_inputs, outs, opset=opset)


def run(model, inputs: dict) -> list[np.ndarray]:
    out = ft.onnx.load(model)(*(v for k, v in inputs.items() if not k.startswith("_")))
    return [o.numpy() for o in (out if isinstance(out, tuple) else (out,))]


def fed(inputs: dict) -> list[np.ndarray]:
    return [v for k, v in inputs.items() if not k.startswith("_")]


def assert_same(got: list, expected: list) -> None:
    assert len(got) == len(expected)
    for g, e in zip(got, expected):
        e = np.asarray(e)
        assert g.dtype == e.dtype, (g.dtype, e.dtype)
        assert g.shape == e.shape, (g.shape, e.shape)
        np.testing.assert_allclose(g, e, rtol=1e-6, atol=1e-6)


dup_rows = np.array([[1, 0, 2], [1, 2, 2], [0, 0, 2]], dtype=I64)  # repeats in every column
nd_dups = np.array([[0, 1], [2, 0], [0, 1], [2, 0], [1, 1]], dtype=I64)

# (id, op, inputs, attributes, opset): onnxruntime is the reference
ORT_CASES = [
    (
        "gather_axis1_negative_int32",
        "Gather",
        {
            "x": np.arange(24, dtype=np.int32).reshape(2, 3, 4),
            "i": np.array([[-1, 0], [2, 2]], I64),
        },
        {"axis": 1},
        13,
    ),
    (
        "gather_scalar_index_float16",
        "Gather",
        {"x": f32(3, 4).astype(np.float16), "i": np.array(-2, I64)},
        {"axis": 0},
        13,
    ),
    (
        "gather_elements_last_axis_negative",
        "GatherElements",
        {"x": f32(3, 4), "i": np.array([[0, -1, 3], [1, 1, -4], [2, 0, 0]], I64)},
        {"axis": -1},
        13,
    ),
    (
        "gather_elements_smaller_indices",
        "GatherElements",
        {"x": f32(4, 5, 2), "i": RNG.integers(0, 4, (2, 3, 1))},
        {"axis": 0},
        13,
    ),
    (
        "gather_nd_slices_int64",
        "GatherND",
        {"x": np.arange(24, dtype=I64).reshape(2, 3, 4), "i": np.array([[1], [0], [-1]], I64)},
        {},
        13,
    ),
    (
        "gather_nd_batch_dims",
        "GatherND",
        {"x": f32(2, 3, 4, 5), "i": np.array([[[2, 1], [0, -1]], [[1, 3], [1, 0]]], I64)},
        {"batch_dims": 1},
        13,
    ),
    (
        "scatter_elements_none",
        "ScatterElements",
        {"x": f32(3, 4), "i": np.array([[0, 3, 1], [2, 0, 1]], I64), "u": f32(2, 3)},
        {"axis": 1},
        18,
    ),
    *[
        (
            f"scatter_elements_{r}_duplicates",
            "ScatterElements",
            {"x": f32(3, 3), "i": dup_rows, "u": f32(3, 3)},
            {"axis": 0, "reduction": r},
            18,
        )
        for r in ("add", "mul", "max", "min")
    ],
    (
        "scatter_9",
        "Scatter",
        {"x": f32(3, 3), "i": np.array([[1, 0, 2]], I64), "u": f32(1, 3)},
        {"axis": 0},
        10,
    ),
    (
        "scatter_nd_none_slices",
        "ScatterND",
        {"x": f32(4, 3), "i": np.array([[3], [0]], I64), "u": f32(2, 3)},
        {},
        13,
    ),
    *[
        (
            f"scatter_nd_{r}_duplicates",
            "ScatterND",
            {"x": f32(3, 2, 2), "i": nd_dups, "u": f32(5, 2)},
            {"reduction": r},
            18,
        )
        for r in ("add", "mul", "max", "min")
    ],
    (
        "one_hot_axis0_negative_out_of_range",
        "OneHot",
        {"i": np.array([[1, -1], [5, 0]], I64), "d": np.array(3, I64), "v": np.array([-2, 7], I64)},
        {"axis": 0},
        11,
    ),
    (
        "one_hot_float_indices",
        "OneHot",
        {
            "i": np.array([0.0, 2.7, -1.2], np.float32),
            "d": np.array([4.0], np.float32),
            "v": np.array([0.5, 1.5], np.float32),
        },
        {},
        11,
    ),
    ("nonzero_int", "NonZero", {"x": np.array([[0, 3, 0], [2, 0, 1]], np.int32)}, {}, 13),
    (
        "compress_axis",
        "Compress",
        {"x": f32(3, 4), "c": np.array([True, False, True], bool)},
        {"axis": 1},
        11,
    ),
    (
        "compress_flat",
        "Compress",
        {"x": f32(2, 3), "c": np.array([False, True, True, False, True], bool)},
        {},
        11,
    ),
    ("unique_sorted", "Unique", {"x": np.array([2, 1, 1, 3, 4, 3, -1], np.float32)}, {}, 11),
    (
        "unique_unsorted",
        "Unique",
        {"x": np.array([2.0, 1.0, 1.0, 3.0, 4.0, 3.0], np.float32)},
        {"sorted": 0},
        11,
    ),
    (
        "unique_axis0",
        "Unique",
        {"x": np.array([[1, 0, 0], [1, 0, 0], [2, 3, 4], [0, 1, 1]], np.float32)},
        {"axis": 0},
        11,
    ),
    ("trilu_upper_k_batched", "Trilu", {"x": f32(2, 3, 5), "k": np.array(1, I64)}, {}, 14),
    (
        "trilu_lower_negative_k",
        "Trilu",
        {"x": np.arange(20, dtype=np.int32).reshape(4, 5), "k": np.array(-1, I64)},
        {"upper": 0},
        14,
    ),
    ("trilu_lower_default_k", "Trilu", {"x": f32(4, 3)}, {"upper": 0}, 14),
    (
        "expand_both_ways_int32",
        "Expand",
        {"x": np.arange(3, dtype=np.int32).reshape(3, 1), "s": np.array([2, 1, 4], I64)},
        {},
        13,
    ),
    ("expand_shorter_shape", "Expand", {"x": f32(2, 1, 3), "s": np.array([5, 1], I64)}, {}, 8),
    ("tile", "Tile", {"x": f32(2, 3), "r": np.array([3, 2], I64)}, {}, 13),
    ("tile_zero", "Tile", {"x": f32(2, 3), "r": np.array([0, 2], I64)}, {}, 13),
    (
        "range_int32_negative_delta",
        "Range",
        {"a": np.array(10, np.int32), "b": np.array(-3, np.int32), "c": np.array(-3, np.int32)},
        {},
        11,
    ),
    (
        "range_float",
        "Range",
        {
            "a": np.array(1.5, np.float32),
            "b": np.array(4.0, np.float32),
            "c": np.array(0.7, np.float32),
        },
        {},
        11,
    ),
    (
        "range_empty",
        "Range",
        {"a": np.array(5, I64), "b": np.array(1, I64), "c": np.array(2, I64)},
        {},
        11,
    ),
    (
        "eye_like_dtype_k",
        "EyeLike",
        {"x": np.zeros((3, 5), np.int32)},
        {"dtype": TensorProto.FLOAT, "k": 2},
        9,
    ),
    ("eye_like_negative_k", "EyeLike", {"x": f32(4, 3)}, {"k": -1}, 9),
    ("size", "Size", {"x": f32(2, 3, 4)}, {}, 13),
    (
        "reverse_sequence_time_major",
        "ReverseSequence",
        {"x": f32(4, 3, 2), "l": np.array([4, 1, 3], I64)},
        {"time_axis": 0, "batch_axis": 1},
        10,
    ),
    (
        "reverse_sequence_batch_major",
        "ReverseSequence",
        {"x": f32(3, 5), "l": np.array([2, 5, 0], I64)},
        {"time_axis": 1, "batch_axis": 0},
        10,
    ),
    ("depth_to_space_dcr", "DepthToSpace", {"x": f32(2, 8, 2, 3)}, {"blocksize": 2}, 13),
    (
        "depth_to_space_crd",
        "DepthToSpace",
        {"x": f32(1, 18, 2, 2)},
        {"blocksize": 3, "mode": "CRD"},
        13,
    ),
    ("depth_to_space_1", "DepthToSpace", {"x": f32(1, 4, 2, 3)}, {"blocksize": 2}, 1),
    ("space_to_depth", "SpaceToDepth", {"x": f32(2, 3, 4, 6)}, {"blocksize": 2}, 13),
    (
        "center_crop_pad_mixed",
        "CenterCropPad",
        {"x": f32(5, 4, 3), "s": np.array([2, 7], I64)},
        {"axes": [0, -2]},
        18,
    ),
    ("det_batched", "Det", {"x": f32(2, 3, 3, 3)}, {}, 11),
]


@pytest.mark.parametrize("case", ORT_CASES, ids=lambda c: c[0])
def test_matches_onnxruntime(case):
    _, op, inputs, attributes, opset = case
    outputs = ("y", "i", "inv", "n") if op == "Unique" else ("y",)
    out = [(TensorProto.FLOAT, 3)] if op == "CenterCropPad" else None
    model = model_of(op, inputs, opset, outputs, out, **attributes)
    assert_same(run(model, inputs), run_onnxruntime(model, *fed(inputs)))


# (id, op, inputs, attributes, opset): onnx.reference, where onnxruntime has no kernel
REFERENCE_CASES = [
    (
        "space_to_depth_28_crd",
        "SpaceToDepth",
        {"x": f32(2, 3, 4, 6)},
        {"blocksize": 2, "mode": "CRD"},
        28,
    ),
    ("space_to_depth_28_dcr", "SpaceToDepth", {"x": f32(1, 2, 6, 3)}, {"blocksize": 3}, 28),
    (
        "center_crop_pad_odd_differences",
        "CenterCropPad",
        {"x": f32(6, 3, 2), "s": np.array([3, 6, 2], I64)},
        {},
        18,
    ),
    (
        "tensor_scatter_linear",
        "TensorScatter",
        {"c": f32(2, 3, 5, 2), "u": f32(2, 3, 2, 2), "w": np.array([3, 1], I64)},
        {"axis": -2},
        24,
    ),
    (
        "tensor_scatter_circular_wraps",
        "TensorScatter",
        {"c": f32(2, 3, 5, 2), "u": f32(2, 3, 3, 2), "w": np.array([4, 1], I64)},
        {"mode": "circular", "axis": 2},
        24,
    ),
    (
        "one_hot_uint8_indices_int32_values",
        "OneHot",
        {
            "i": np.array([[1, 0], [4, 2]], np.uint8),
            "d": np.array(3, np.int32),
            "v": np.array([-2, 7], np.int32),
        },
        {"axis": 1},
        11,
    ),
    (
        "tensor_scatter_no_write_indices",
        "TensorScatter",
        {"c": f32(2, 4, 3), "u": f32(2, 2, 3)},
        {"axis": 1},
        24,
    ),
    (
        "range_float16_stash_double",
        "Range",
        {
            "a": np.array(2000, np.float16),
            "b": np.array(2010, np.float16),
            "c": np.array(0.3, np.float16),
        },
        {"stash_type": 11},
        27,
    ),
]


def test_range_refuses_a_float16_stash_type_it_cannot_honour():
    inputs = {k: np.array(v, np.float16) for k, v in (("a", 0), ("b", 4), ("c", 1))}
    model = ft.onnx.load(model_of("Range", inputs, 27, stash_type=10))
    with pytest.raises(OnnxImportError, match="Range: stash_type 10"):
        model(*fed(inputs))


@pytest.mark.parametrize("case", REFERENCE_CASES, ids=lambda c: c[0])
def test_matches_the_onnx_reference(case):
    _, op, inputs, attributes, opset = case
    out = [(TensorProto.FLOAT, 3)] if op == "CenterCropPad" else None
    model = model_of(op, inputs, opset, out=out, **attributes)
    names = [k for k in inputs if not k.startswith("_")]
    expected = ReferenceEvaluator(model).run(None, dict(zip(names, fed(inputs))))
    assert_same(run(model, inputs), expected)


def test_tensor_scatter_linear_writes_after_each_write_index():
    cache, update = f32(2, 5, 2), f32(2, 2, 2)
    inputs = {"c": cache, "u": update, "w": np.array([3, 0], I64)}
    got = run(model_of("TensorScatter", inputs, 24, axis=1), inputs)[0]
    expected = cache.copy()
    expected[0, 3:5], expected[1, 0:2] = update[0], update[1]
    np.testing.assert_array_equal(got, expected)


# -- opset-1 schemas ------------------------------------------------------------------------------


def test_reshape_1_takes_its_shape_from_the_attribute():
    x = f32(2, 3, 4)
    model = model_of(
        "Reshape", {"x": x}, 1, out=[(TensorProto.FLOAT, 2)], shape=[0, -1], consumed_inputs=[0]
    )
    np.testing.assert_array_equal(run(model, {"x": x})[0], x.reshape(2, 12))


def test_concat_1_defaults_to_axis_1():
    a, b = f32(2, 3), f32(2, 1)
    model = model_of("Concat", {"a": a, "b": b}, 1, out=[(TensorProto.FLOAT, 2)])
    np.testing.assert_array_equal(run(model, {"a": a, "b": b})[0], np.concatenate([a, b], 1))


def test_split_1_sizes_from_the_attribute_or_the_second_input():
    x = f32(6, 2)
    by_attribute = model_of(
        "Split", {"x": x}, 1, ("p", "q"), [(TensorProto.FLOAT, 2)] * 2, split=[4, 2]
    )
    got = run(by_attribute, {"x": x})
    np.testing.assert_array_equal(got[0], x[:4])
    np.testing.assert_array_equal(got[1], x[4:])
    inputs = {"x": x, "s": np.array([1, 5], I64)}
    by_input = model_of("Split", inputs, 1, ("p", "q"), [(TensorProto.FLOAT, 2)] * 2)
    got = run(by_input, inputs)
    assert [g.shape for g in got] == [(1, 2), (5, 2)]


def test_pad_1_reads_paddings_begin_then_end():
    x = f32(2, 3)
    model = model_of(
        "Pad", {"x": x}, 1, out=[(TensorProto.FLOAT, 2)], paddings=[1, 0, 0, 2], value=1.5
    )
    expected = np.pad(x, [(1, 0), (0, 2)], constant_values=1.5)
    np.testing.assert_array_equal(run(model, {"x": x})[0], expected)


def test_tile_1_repeats_along_one_axis():
    inputs = {"x": f32(2, 3), "t": np.array(3, I64), "a": np.array(1, I64)}
    got = run(model_of("Tile", inputs, 1, out=[(TensorProto.FLOAT, 2)]), inputs)[0]
    np.testing.assert_array_equal(got, np.tile(inputs["x"], (1, 3)))


# -- gradients ------------------------------------------------------------------------------------


def gradcheck_model(op, inputs: dict, wrt: tuple[str, ...], opset=18, out=None, **attrs):
    """gradcheck in float64 of every float output with respect to the inputs named in ``wrt``."""
    model = ft.onnx.load(model_of(op, inputs, opset, out=out, **attrs), freeze=False).double()
    tensors = [
        ft.tensor(v.astype(np.float64), requires_grad=k in wrt) if k in wrt else ft.from_numpy(v)
        for k, v in inputs.items()
        if not k.startswith("_")
    ]

    def forward(*_):
        out = model(*tensors)
        outs = out if isinstance(out, tuple) else (out,)
        return tuple(o for o in outs if o.dtype.is_floating_point)

    assert ft.autograd.gradcheck(forward, [t for t in tensors if t.requires_grad])


def f64(*shape):
    return RNG.standard_normal(shape)


GRADIENT_CASES = [
    (
        "gather_repeated_indices",
        "Gather",
        {"x": f64(4, 3), "i": np.array([[3, 0], [3, 3]], I64)},
        ("x",),
        {"axis": 0},
    ),
    (
        "gather_elements",
        "GatherElements",
        {"x": f64(3, 4), "i": np.array([[0, 0, 3], [1, 1, 1]], I64)},
        ("x",),
        {"axis": 1},
    ),
    (
        "gather_nd_batch_dims",
        "GatherND",
        {"x": f64(2, 3, 2), "i": np.array([[[1], [1]], [[0], [2]]], I64)},
        ("x",),
        {"batch_dims": 1},
    ),
    *[
        (
            f"scatter_elements_{r}",
            "ScatterElements",
            {"x": f64(3, 3), "i": dup_rows, "u": f64(3, 3)},
            ("x", "u"),
            {"reduction": r},
        )
        for r in ("none", "add", "mul", "max", "min")
    ],
    *[
        (
            f"scatter_nd_{r}",
            "ScatterND",
            {"x": f64(3, 2, 2), "i": nd_dups, "u": f64(5, 2)},
            ("x", "u"),
            {"reduction": r},
        )
        for r in ("none", "add", "mul", "max", "min")
    ],
    (
        "scatter_nd_mul_zero_updates",
        "ScatterND",
        {
            "x": f64(3),
            "i": np.array([[0], [0], [1], [1], [1], [2]], I64),
            "u": np.array([0.0, 1.5, 0.0, 0.0, 2.0, 0.0]),
        },
        ("x", "u"),
        {"reduction": "mul"},
    ),
    (
        "scatter_9",
        "Scatter",
        {"x": f64(3, 2), "i": np.array([[2, 0]], I64), "u": f64(1, 2)},
        ("x", "u"),
        {},
    ),
    (
        "tensor_scatter",
        "TensorScatter",
        {"c": f64(2, 4, 2), "u": f64(2, 3, 2), "w": np.array([2, 0], I64)},
        ("c", "u"),
        {"axis": 1, "mode": "circular"},
    ),
    (
        "one_hot_values",
        "OneHot",
        {"i": np.array([0, 2, -1], I64), "d": np.array(3, I64), "v": np.array([0.3, -1.2])},
        ("v",),
        {},
    ),
    (
        "compress",
        "Compress",
        {"x": f64(3, 4), "c": np.array([1, 0, 1, 1], bool)},
        ("x",),
        {"axis": 1},
    ),
    ("trilu", "Trilu", {"x": f64(2, 3, 4), "k": np.array(-1, I64)}, ("x",), {}),
    ("expand", "Expand", {"x": f64(3, 1), "s": np.array([2, 3, 4], I64)}, ("x",), {}),
    ("tile", "Tile", {"x": f64(2, 3), "r": np.array([2, 3], I64)}, ("x",), {}),
    (
        "reverse_sequence",
        "ReverseSequence",
        {"x": f64(4, 2, 2), "l": np.array([3, 1], I64)},
        ("x",),
        {},
    ),
    (
        "depth_to_space_crd",
        "DepthToSpace",
        {"x": f64(1, 8, 2, 2)},
        ("x",),
        {"blocksize": 2, "mode": "CRD"},
    ),
    ("space_to_depth", "SpaceToDepth", {"x": f64(1, 2, 4, 2)}, ("x",), {"blocksize": 2}),
    (
        "center_crop_pad",
        "CenterCropPad",
        {"x": f64(5, 2, 3), "s": np.array([2, 4], I64)},
        ("x",),
        {"axes": [0, 2]},
    ),
    ("det", "Det", {"x": f64(2, 3, 3)}, ("x",), {}),
    (
        "det_singular",
        "Det",
        {"x": np.array([[1.0, 2.0, 3.0], [2.0, 4.0, 6.0], [0.5, -1.0, 2.0]])},
        ("x",),
        {},
    ),
]


@pytest.mark.parametrize("case", GRADIENT_CASES, ids=lambda c: c[0])
def test_gradients_pass_gradcheck(case):
    _, op, inputs, wrt, attributes = case
    opset = {"Scatter": 10, "OneHot": 11, "Det": 11, "TensorScatter": 24}.get(op, 18)
    out = [(TensorProto.DOUBLE, 3)] if op == "CenterCropPad" else None
    gradcheck_model(op, inputs, wrt, opset, out, **attributes)


def test_unique_values_carry_the_gradient_of_the_first_occurrence():
    """Y is a gather of X at the first occurrences; later duplicates get no gradient."""
    values = np.array([2.0, 1.0, 2.0, 3.0])
    x = ft.tensor(values, requires_grad=True)
    model = ft.onnx.load(model_of("Unique", {"x": values}, 11, ("y", "i", "inv", "n")))
    y = model(x)[0]
    (y * ft.tensor(np.array([1.0, 10.0, 100.0]))).sum().backward()
    np.testing.assert_array_equal(x.grad.numpy(), [10.0, 1.0, 0.0, 100.0])


@pytest.mark.parametrize("op", ["NonZero", "Range", "EyeLike", "Size", "Shape"])
def test_ops_without_a_gradient_are_registered_so(op):
    assert all(c.differentiable is False for (_, o, _), c in registry._REGISTRY.items() if o == op)


def test_a_backward_through_range_raises_instead_of_a_silent_zero():
    inputs = {"a": np.array(0.5), "b": np.array(3.0), "c": np.array(1.0)}
    model = ft.onnx.load(model_of("Range", inputs, 11)).double()
    start = ft.tensor(np.array(0.5), requires_grad=True)
    out = model(start, ft.tensor(np.array(3.0)), ft.tensor(np.array(1.0)))
    with pytest.raises(AutogradError, match="Range has no gradient"):
        out.sum().backward()


# -- fast paths against plain loops -------------------------------------------------------------


@pytest.mark.parametrize("row", [(), (3,)], ids=["elements", "rows"])
def test_index_add_equals_np_add_at(row):
    index = RNG.integers(0, 7, 200)
    values = RNG.standard_normal((200, *row))
    expected = np.zeros((9, *row))
    np.add.at(expected, index, values)
    np.testing.assert_allclose(index_add(9, index, values), expected, rtol=1e-12, atol=1e-12)
    assert index_add(4, np.zeros(0, I64), np.zeros((0, *row))).shape == (4, *row)


@pytest.mark.parametrize("reduction", ["none", "add", "mul", "max", "min"])
def test_scatter_follows_the_sequential_loop_of_the_spec(reduction):
    data = RNG.standard_normal(6)
    pos = RNG.integers(0, 6, 25)
    updates = RNG.standard_normal(25)
    expected = data.copy()
    for p, u in zip(pos, updates):
        combine = {
            "none": lambda a, b: b,
            "add": np.add,
            "mul": np.multiply,
            "max": np.maximum,
            "min": np.minimum,
        }[reduction]
        expected[p] = combine(expected[p], u)
    got = ScatterFlat.apply(ft.tensor(data), ft.tensor(updates), pos, reduction=reduction)
    np.testing.assert_array_equal(got.numpy(), expected)


def test_scatter_max_shares_the_gradient_between_ties():
    data = ft.tensor(np.array([1.0, 5.0]), requires_grad=True)
    updates = ft.tensor(np.array([1.0, 0.0, 5.0]), requires_grad=True)
    out = ScatterFlat.apply(data, updates, np.array([0, 0, 1]), reduction="max")
    out.sum().backward()
    np.testing.assert_array_equal(data.grad.numpy(), [0.5, 0.5])
    np.testing.assert_array_equal(updates.grad.numpy(), [0.5, 0.0, 0.5])


def test_cofactors_equal_the_signed_minors():
    """The SVD form against the textbook definition, for an invertible and a singular matrix."""
    for a in (RNG.standard_normal((4, 4)), np.outer([1.0, 2.0, 0.5, -1.0], [3.0, 1.0, 0.0, 2.0])):
        expected = np.empty_like(a)
        for i in range(4):
            for j in range(4):
                minor = np.delete(np.delete(a, i, 0), j, 1)
                expected[i, j] = (-1) ** (i + j) * np.linalg.det(minor)
        np.testing.assert_allclose(cofactors(a), expected, atol=1e-10)


@pytest.mark.parametrize("axis", [0, 2], ids=["rows", "elements"])
def test_gather_backward_sums_repeated_indices_like_a_loop(axis):
    values = RNG.standard_normal((5, 2, 5))
    x = ft.tensor(values, requires_grad=True)
    index = np.array([[4, 0, 4], [1, 4, 0]], dtype=I64)
    inputs = {"x": values, "i": index}
    model = ft.onnx.load(model_of("Gather", inputs, 13, axis=axis)).double()
    out = model(x, ft.from_numpy(index))
    weights = RNG.standard_normal(out.shape)
    (out * ft.tensor(weights)).sum().backward()
    expected = np.zeros((5, 2, 5))
    moved = np.moveaxis(expected, axis, 0)  # a view: writes land in expected
    w = np.moveaxis(weights, (axis, axis + 1), (0, 1))
    for a in range(2):
        for b in range(3):
            moved[index[a, b]] += w[a, b]
    np.testing.assert_allclose(x.grad.numpy(), expected, rtol=1e-12)


def _loop_scatter(shape, pairs):
    """Zeros of ``shape`` with each ``(position, value)`` added in turn: the obvious reference."""
    out = np.zeros(shape)
    for position, value in pairs:
        out[position] += value
    return out


def test_tensor_gather_backwards_add_repeated_positions_like_a_loop():
    """Advanced indexing, torch-style gather, embedding and reflect padding scatter their
    gradient through one sort instead of ``np.add.at``; repeats must still add up."""
    values = RNG.standard_normal((4, 5))
    x = ft.tensor(values, requires_grad=True)
    rows, cols = np.array([0, 3, 0, 3, 1]), np.array([2, 4, 2, 4, -1])
    weights = RNG.standard_normal(5)
    (x[rows, cols] * ft.tensor(weights)).sum().backward()
    pairs = [((r, c), w) for r, c, w in zip(rows, cols, weights)]
    np.testing.assert_allclose(x.grad.numpy(), _loop_scatter((4, 5), pairs), rtol=1e-12)

    x.grad = None
    index = np.array([[1, 1, 4], [0, 0, 0], [2, 3, 2], [-1, 4, 4]])
    weights = RNG.standard_normal(index.shape)
    (ft.gather(x, 1, ft.tensor(index)) * ft.tensor(weights)).sum().backward()
    pairs = [((i, index[i, j]), weights[i, j]) for i in range(4) for j in range(3)]
    np.testing.assert_allclose(x.grad.numpy(), _loop_scatter((4, 5), pairs), rtol=1e-12)

    table = ft.tensor(RNG.standard_normal((6, 3)), requires_grad=True)
    ids = np.array([[1, 5, 1], [1, 0, 2]])
    weights = RNG.standard_normal((2, 3, 3))
    (ft.nn.functional.embedding(ft.tensor(ids), table) * ft.tensor(weights)).sum().backward()
    pairs = [(ids[i, j], weights[i, j]) for i in range(2) for j in range(3)]
    np.testing.assert_allclose(table.grad.numpy(), _loop_scatter((6, 3), pairs), rtol=1e-12)

    row = ft.tensor(RNG.standard_normal((1, 1, 4)), requires_grad=True)
    weights = RNG.standard_normal((1, 1, 9))
    padded = ft.nn.functional.pad(row, [3, 2], mode="reflect")  # 3 2 1 | 0 1 2 3 | 2 1
    (padded * ft.tensor(weights)).sum().backward()
    source = [3, 2, 1, 0, 1, 2, 3, 2, 1]
    pairs = [((0, 0, s), w) for s, w in zip(source, weights[0, 0])]
    np.testing.assert_allclose(row.grad.numpy(), _loop_scatter((1, 1, 4), pairs), rtol=1e-12)


# -- bad input ------------------------------------------------------------------------------------

BAD_CASES = [
    ("Gather", {"x": f32(3, 2), "i": np.array([3], I64)}, {}, "out of range"),
    ("GatherElements", {"x": f32(3, 2), "i": np.array([[0], [-4]], I64)}, {}, "out of range"),
    ("GatherND", {"x": f32(2, 3), "i": np.array([[0, 1, 0]], I64)}, {}, "address more"),
    ("ScatterND", {"x": f32(4, 3), "i": np.array([[1]], I64), "u": f32(1, 2)}, {}, "updates"),
    (
        "TensorScatter",
        {"c": f32(2, 4, 3), "u": f32(2, 2, 3), "w": np.array([3, 0], I64)},
        {"axis": 1},
        "past the cache",
    ),
    (
        "Range",
        {"a": np.array(1, I64), "b": np.array(5, I64), "c": np.array(0, I64)},
        {},
        "delta cannot be 0",
    ),
    (
        "Range",
        {
            "a": np.array(0.0, np.float32),
            "b": np.array(np.inf, np.float32),
            "c": np.array(1.0, np.float32),
        },
        {},
        "must be finite",
    ),
    ("Tile", {"x": f32(2, 3), "r": np.array([2**20, 2**20], I64)}, {}, "budget"),
    ("DepthToSpace", {"x": f32(1, 6, 2, 2)}, {"blocksize": 2}, "do not divide"),
    ("Expand", {"x": f32(2, 3), "s": np.array([4, 3], I64)}, {}, "does not broadcast"),
    # an axis out of range is refused, not wrapped, clamped or appended
    ("Flatten", {"x": f32(2, 3)}, {"axis": 3}, "axis 3 is out of range"),
    ("Squeeze", {"x": f32(2, 1), "a": np.array([4], I64)}, {}, "axis 4 is out of range"),
    ("Unsqueeze", {"x": f32(2, 3), "a": np.array([5], I64)}, {}, "axis 5 is out of range"),
    ("Unsqueeze", {"x": f32(2, 3), "a": np.array([1, -3], I64)}, {}, "repeat an axis"),
    ("Concat", {"x": f32(2, 3), "z": f32(2, 3)}, {"axis": -3}, "axis -3 is out of range"),
]


@pytest.mark.parametrize("case", BAD_CASES, ids=lambda c: c[0])
def test_bad_input_names_the_op_and_the_problem(case):
    op, inputs, attributes, message = case
    opset = 24 if op == "TensorScatter" else 18
    refused = ("GatherND", "Flatten", "Squeeze", "Unsqueeze", "Concat")  # inference refuses them
    out = [(TensorProto.FLOAT, 1)] if op in refused else None
    model = ft.onnx.load(model_of(op, inputs, opset, out=out, **attributes))
    with pytest.raises(OnnxImportError, match=message) as error:
        model(*fed(inputs))
    assert op in str(error.value)


# -- export ---------------------------------------------------------------------------------------

EXPORT_CASES = [
    ("Gather", {"i": np.array([[2, 0], [2, 1]], I64)}, {"axis": 1}),
    ("GatherElements", {"i": np.array([[[0, 2, 2]], [[1, 1, 0]]], I64)}, {"axis": 2}),
    ("GatherND", {"i": np.array([[1, 0], [0, 2]], I64)}, {"batch_dims": 0}),
    ("ScatterND", {"i": np.array([[1, 0], [1, 0]], I64), "u": f32(2, 3)}, {"reduction": "add"}),
    ("ScatterElements", {"i": np.array([[[0, 0, 1]]], I64), "u": f32(1, 1, 3)}, {"axis": 1}),
    ("Det", {}, {}),
]


@pytest.mark.parametrize("case", EXPORT_CASES, ids=lambda c: c[0])
def test_an_imported_op_exports_and_runs_the_same_in_onnxruntime(case):
    """Import, export the module again, and run the written file in onnxruntime."""
    from onnx_builders import single_node

    op, constants, attributes = case
    x = f32(2, 3, 3)
    model = single_node(op, {"x": x}, constants, opset=18, free_batch=False, **attributes)
    module = ft.onnx.load(model)
    written = to_onnx(module, ft.tensor(x), opset_version=18, dynamic_batch=False)
    expected = run_onnxruntime(model, x)[0]
    np.testing.assert_allclose(run_onnxruntime(written, x)[0], expected, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(module(ft.tensor(x)).numpy(), expected, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("axis", [0, 1, -1])
def test_gather_of_one_index_is_a_view_with_the_right_values_and_gradient(axis):
    """A 0-d index selects without copying (the attention blocks' ``qkv[0]``), from any
    layout; values as numpy's take, gradients by gradcheck."""
    from finetune.autograd import gradcheck
    from finetune.autograd.indexing import TakeAxis

    base = np.random.default_rng(3).standard_normal((3, 4, 5))
    x = base.transpose(2, 0, 1)  # not contiguous
    index = np.array(2, dtype=np.int64)
    t = ft.from_numpy(x)
    got = TakeAxis.apply(t, index, axis=axis % 3).numpy()
    np.testing.assert_array_equal(got, np.take(x, 2, axis=axis))
    assert np.shares_memory(got, x)
    xt = ft.tensor(np.ascontiguousarray(x), requires_grad=True)
    assert gradcheck(lambda a: TakeAxis.apply(a, index, axis=axis % 3), (xt,))
