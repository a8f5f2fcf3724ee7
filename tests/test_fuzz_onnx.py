"""Untrusted model files: mutated ONNX models either load and run or raise a FinetuneError.

Never another exception, never a hang (each case is bounded by an alarm), never an allocation
the file cannot justify (each case runs under a small size budget and its peak traced memory is
bounded). `make fuzz` runs many more examples (FINETUNE_FUZZ_EXAMPLES); FINETUNE_FUZZ_RANDOM=1
draws new cases instead of the fixed seed's.
"""

import os
import signal
import tracemalloc
from contextlib import contextmanager

import numpy as np
import onnx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from onnx import TensorProto, helper, numpy_helper

import finetune as ft
from finetune.errors import FinetuneError
from finetune.onnx import limits

EXAMPLES = int(os.environ.get("FINETUNE_FUZZ_EXAMPLES", "120"))
FIXED_SEED = not os.environ.get("FINETUNE_FUZZ_RANDOM")  # set it to explore new cases
SECONDS_PER_CASE = 10
BUDGET_ELEMENTS = 2**22  # 16 MiB of float32: the fuzz cases' size budget
PEAK_BYTES = 256 * 2**20  # no case may trace more than this at once


def _base_model() -> onnx.ModelProto:
    rng = np.random.default_rng(0)
    inits = [
        numpy_helper.from_array(rng.standard_normal((4, 3, 3, 3)).astype(np.float32), "w"),
        numpy_helper.from_array(rng.standard_normal(4).astype(np.float32), "b"),
        numpy_helper.from_array(rng.standard_normal((3, 16)).astype(np.float32), "fc_w"),
        numpy_helper.from_array(rng.standard_normal(3).astype(np.float32), "fc_b"),
        numpy_helper.from_array(np.array([0, -1], dtype=np.int64), "shape"),
    ]
    nodes = [
        helper.make_node(
            "Conv",
            ["x", "w", "b"],
            ["c"],
            name="conv",
            kernel_shape=[3, 3],
            pads=[1, 1, 1, 1],
            strides=[1, 1],
        ),
        helper.make_node("Relu", ["c"], ["r"], name="relu"),
        helper.make_node("MaxPool", ["r"], ["p"], name="pool", kernel_shape=[2, 2], strides=[2, 2]),
        helper.make_node("GlobalAveragePool", ["p"], ["g"], name="gap"),
        helper.make_node("Reshape", ["g", "shape"], ["f"], name="reshape"),
        helper.make_node("Concat", ["f", "f", "f", "f"], ["f4"], name="concat", axis=1),
        helper.make_node("Gemm", ["f4", "fc_w", "fc_b"], ["y"], name="fc", transB=1),
    ]
    graph = helper.make_graph(
        nodes,
        "fuzz",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 8, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 3])],
        inits,
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])


def _wide_model() -> onnx.ModelProto:
    """Many more converters in one graph, for the value mutations (attributes, int inputs)."""
    rng = np.random.default_rng(1)

    def floats(*shape):
        return rng.standard_normal(shape).astype(np.float32)

    def int64s(*values):
        return np.array(values, dtype=np.int64)

    constants = {
        "bn_scale": floats(3), "bn_bias": floats(3), "bn_mean": floats(3),
        "bn_var": np.abs(floats(3)) + 0.5, "pads": int64s(0, 0, 1, 1, 0, 0, 1, 1),
        "starts": int64s(1), "ends": int64s(7), "axes2": int64s(2), "steps": int64s(1),
        "split": int64s(1, 2), "axes1": int64s(1), "lo": np.array(-0.5, np.float32),
        "hi": np.array(0.5, np.float32), "idx": int64s(0, 2, 4), "two": np.array(2, np.float32),
    }  # fmt: skip
    nodes = [
        ("BatchNormalization", ["x", "bn_scale", "bn_bias", "bn_mean", "bn_var"], ["bn"],
         {"epsilon": 1e-5}),
        ("Pad", ["bn", "pads"], ["pd"], {"mode": "reflect"}),
        ("AveragePool", ["pd"], ["ap"], {"kernel_shape": [3, 3], "strides": [1, 1]}),
        ("Transpose", ["ap"], ["tp"], {"perm": [0, 1, 3, 2]}),
        ("Slice", ["tp", "starts", "ends", "axes2", "steps"], ["sl"], {}),
        ("Split", ["sl", "split"], ["s1", "s2"], {"axis": 1}),
        ("Concat", ["s2", "s1"], ["cc"], {"axis": 1}),
        ("ReduceMean", ["cc"], ["rm"], {"axes": [2], "keepdims": 1}),
        ("Squeeze", ["rm", "axes2"], ["sq"], {}),
        ("Unsqueeze", ["sq", "axes1"], ["us"], {}),
        ("Flatten", ["us"], ["fl"], {"axis": 1}),
        ("Softmax", ["fl"], ["sm"], {"axis": 1}),
        ("Clip", ["sm", "lo", "hi"], ["cl"], {}),
        ("Gather", ["cl", "idx"], ["ga"], {"axis": 1}),
        ("LeakyRelu", ["ga"], ["lr"], {"alpha": 0.1}),
        ("Pow", ["lr", "two"], ["pw"], {}),
        ("Sqrt", ["pw"], ["sr"], {}),
        ("Cast", ["sr"], ["ct"], {"to": TensorProto.DOUBLE}),
        ("Cast", ["ct"], ["y"], {"to": TensorProto.FLOAT}),
    ]  # fmt: skip
    graph = helper.make_graph(
        [
            helper.make_node(op, inputs, outputs, name=f"n{i}_{op}", **attributes)
            for i, (op, inputs, outputs, attributes) in enumerate(nodes)
        ],
        "wide",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 8, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 3])],
        [numpy_helper.from_array(v, k) for k, v in constants.items()],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])


BASE = _base_model()
BASE_BYTES = BASE.SerializeToString()
WIDE = _wide_model()


@pytest.mark.parametrize("base", [BASE, WIDE], ids=["base", "wide"])
def test_base_models_load_and_run_like_onnxruntime(base):
    import onnxruntime as ort

    x = np.random.default_rng(2).standard_normal((2, 3, 8, 8)).astype(np.float32)
    out = ft.onnx.load(base.SerializeToString())(ft.from_numpy(x)).numpy()
    session = ort.InferenceSession(base.SerializeToString(), providers=["CPUExecutionProvider"])
    np.testing.assert_allclose(out, session.run(None, {"x": x})[0], rtol=1e-5, atol=1e-6)


@contextmanager
def _time_limit(seconds: int):
    def _raise(*_):
        raise TimeoutError(f"a fuzz case took more than {seconds} s")

    previous = signal.signal(signal.SIGALRM, _raise)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


def _mutate_proto(kind: str, data) -> bytes:
    m = onnx.ModelProto()
    m.CopyFrom(BASE)
    g = m.graph
    node = g.node[data.draw(st.integers(0, len(g.node) - 1))]
    if kind == "initializer_size":
        init = g.initializer[data.draw(st.integers(0, len(g.initializer) - 1))]
        arr = numpy_helper.to_array(init)
        cut = data.draw(st.integers(0, max(arr.nbytes - 1, 0)))
        init.ClearField("float_data")
        init.ClearField("int64_data")
        init.raw_data = arr.tobytes()[:cut]
    elif kind == "huge_dims":
        init = g.initializer[data.draw(st.integers(0, len(g.initializer) - 1))]
        del init.dims[:]
        init.dims.extend([10**6, 10**6])
    elif kind == "dangling":
        node.input[data.draw(st.integers(0, len(node.input) - 1))] = "nowhere"
    elif kind == "duplicate_output":
        other = g.node[data.draw(st.integers(0, len(g.node) - 1))]
        node.output[0] = other.output[0]
    elif kind == "cycle":
        later = g.node[-1]
        node.input[0] = later.output[0]
    elif kind == "missing_input":
        del g.input[:]
    elif kind == "unknown_op":
        node.op_type = data.draw(st.sampled_from(["FancyConv", "Relu2", ""]))
    elif kind == "unknown_domain":
        node.domain = data.draw(st.sampled_from(["com.example", "ai.onnx.ml.bad"]))
    elif kind == "attribute_type":
        if node.attribute:
            attr = node.attribute[0]
            name = attr.name
            node.attribute.remove(attr)
            node.attribute.append(
                data.draw(
                    st.sampled_from(
                        [
                            helper.make_attribute(name, 1.5),
                            helper.make_attribute(name, "text"),
                            helper.make_attribute(name, [0.5, 2.5]),
                        ]
                    )
                )
            )
    elif kind == "strides":
        conv = g.node[0]
        for a in conv.attribute:
            if a.name == "strides":
                del a.ints[:]
                a.ints.extend(data.draw(st.sampled_from([[0, 0], [-1, 1], [1], [1, 1, 1]])))
    elif kind == "kernel_too_large":
        conv = g.node[0]
        for a in conv.attribute:
            if a.name == "kernel_shape":
                del a.ints[:]
                a.ints.extend([30, 30])
        g.initializer[0].CopyFrom(
            numpy_helper.from_array(np.zeros((4, 3, 30, 30), np.float32), "w")
        )
    elif kind == "reshape_absurd":
        g.initializer[4].CopyFrom(
            numpy_helper.from_array(np.array([10**6, 10**6], np.int64), "shape")
        )
    elif kind == "opset":
        m.opset_import[0].version = data.draw(st.sampled_from([0, 1, 6, 99, -3]))
    elif kind == "input_rank":
        dims = g.input[0].type.tensor_type.shape.dim
        del dims[-1]
    elif kind == "constant_of_shape_absurd":
        shape = data.draw(st.sampled_from([[10**6, 10**6], [2**40], [-1, 3], [1, 3], [0, 3]]))
        g.initializer.append(numpy_helper.from_array(np.array(shape, np.int64), "cos_shape"))
        g.node.append(helper.make_node("ConstantOfShape", ["cos_shape"], ["z"], name="cos"))
        g.node.append(helper.make_node("Add", ["y", "z"], ["yz"], name="add_z"))
        g.output[0].name = "yz"
    elif kind == "pad_absurd":
        end = data.draw(st.sampled_from([10**6, 3000, -20, -8, 1]))
        pads = np.array([0, 0, 0, 0, 0, 0, end, end], np.int64)
        g.initializer.append(numpy_helper.from_array(pads, "pads"))
        g.node.insert(0, helper.make_node("Pad", ["x", "pads"], ["xp"], name="pad"))
        g.node[1].input[0] = "xp"
    elif kind == "conv_pads_absurd":
        pad = data.draw(st.sampled_from([10**5, 3000, 2]))
        for a in g.node[0].attribute:
            if a.name == "pads":
                del a.ints[:]
                a.ints.extend([pad] * 4)
    elif kind == "concat_doubling":
        count = data.draw(st.sampled_from([45, 3]))
        previous = "y"
        for i in range(count):
            g.node.append(
                helper.make_node("Concat", [previous] * 2, [f"d{i}"], name=f"d{i}", axis=0)
            )
            previous = f"d{i}"
        g.output[0].name = previous
    elif kind in ("broadcast_outer", "matmul_outer"):
        n = data.draw(st.sampled_from([2**21, 4]))
        for name, shape in (("col", [n, 1]), ("row", [1, n])):
            g.initializer.append(numpy_helper.from_array(np.array(shape, np.int64), f"{name}_s"))
            g.node.append(helper.make_node("ConstantOfShape", [f"{name}_s"], [name], name=name))
        op = "Add" if kind == "broadcast_outer" else "MatMul"
        g.node.append(helper.make_node(op, ["col", "row"], ["outer"], name="outer"))
        g.output.append(helper.make_tensor_value_info("outer", TensorProto.FLOAT, ["a", "b"]))
    return m.SerializeToString()


MUTATIONS = [
    "bytes_flip",
    "truncate",
    "initializer_size",
    "huge_dims",
    "dangling",
    "duplicate_output",
    "cycle",
    "missing_input",
    "unknown_op",
    "unknown_domain",
    "attribute_type",
    "strides",
    "kernel_too_large",
    "reshape_absurd",
    "opset",
    "input_rank",
    "constant_of_shape_absurd",
    "pad_absurd",
    "conv_pads_absurd",
    "concat_doubling",
    "broadcast_outer",
    "matmul_outer",
    "attribute_value",
    "int_constant",
]


_ODD_INTS = [-(2**40), -100, -3, -1, 0, 1, 2, 3, 99, 2**40]


def _mutate_values(kind: str, data) -> bytes:
    """Change one attribute's value (keeping its type) or one int64 constant input."""
    m = onnx.ModelProto()
    m.CopyFrom(data.draw(st.sampled_from([BASE, WIDE])))
    g = m.graph
    if kind == "attribute_value":
        node = data.draw(st.sampled_from([n for n in g.node if n.attribute]))
        attr = data.draw(st.sampled_from(list(node.attribute)))
        if attr.type == onnx.AttributeProto.INT:
            attr.i = data.draw(st.sampled_from(_ODD_INTS))
        elif attr.type == onnx.AttributeProto.INTS:
            del attr.ints[:]
            attr.ints.extend(data.draw(st.lists(st.sampled_from(_ODD_INTS), max_size=5)))
        elif attr.type == onnx.AttributeProto.FLOAT:
            attr.f = data.draw(st.sampled_from([float("nan"), float("inf"), -1.0, 0.0, 1e30]))
        elif attr.type == onnx.AttributeProto.STRING:
            attr.s = data.draw(st.sampled_from([b"", b"bogus", b"edge", b"wrap", b"constant"]))
    else:
        ints = [t for t in g.initializer if t.data_type == TensorProto.INT64]
        tensor = data.draw(st.sampled_from(ints))
        values = data.draw(st.lists(st.sampled_from(_ODD_INTS), max_size=8))
        tensor.CopyFrom(numpy_helper.from_array(np.array(values, np.int64), tensor.name))
    return m.SerializeToString()


def _mutated_bytes(kind: str, data) -> bytes:
    if kind in ("attribute_value", "int_constant"):
        return _mutate_values(kind, data)
    if kind == "bytes_flip":
        raw = bytearray(BASE_BYTES)
        for _ in range(data.draw(st.integers(1, 8))):
            pos = data.draw(st.integers(0, len(raw) - 1))
            raw[pos] ^= data.draw(st.integers(1, 255))
        return bytes(raw)
    if kind == "truncate":
        return BASE_BYTES[: data.draw(st.integers(0, len(BASE_BYTES) - 1))]
    return _mutate_proto(kind, data)


@contextmanager
def _small_budget():
    """Run under the fuzz budget and fail if the case traced more than PEAK_BYTES at once."""
    saved, limits.MAX_ELEMENTS = limits.MAX_ELEMENTS, BUDGET_ELEMENTS
    tracemalloc.start()
    try:
        yield
        _, peak = tracemalloc.get_traced_memory()
        assert peak < PEAK_BYTES, f"a fuzz case allocated {peak:,} bytes at once"
    finally:
        tracemalloc.stop()
        limits.MAX_ELEMENTS = saved


def _check_case(payload: bytes, batch: int) -> None:
    with _time_limit(SECONDS_PER_CASE), _small_budget():
        try:
            model = ft.onnx.load(payload)
            out = model(ft.ones(batch, 3, 8, 8))
            assert isinstance(out, ft.Tensor) or isinstance(out, tuple)
        except FinetuneError:
            pass


@settings(
    max_examples=EXAMPLES,
    deadline=None,
    derandomize=FIXED_SEED,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(kind=st.sampled_from(MUTATIONS), batch=st.integers(1, 3), data=st.data())
def test_mutated_models_load_and_run_or_raise_finetune_errors(kind, batch, data):
    _check_case(_mutated_bytes(kind, data), batch)


@pytest.mark.parametrize(
    "kind",
    [
        "huge_dims",
        "reshape_absurd",
        "constant_of_shape_absurd",
        "pad_absurd",
        "conv_pads_absurd",
        "concat_doubling",
        "broadcast_outer",
        "matmul_outer",
    ],
)
def test_absurd_sizes_are_refused_not_allocated(kind):
    """The first choice of each mutation asks for 10^12 elements or more (a doubling Concat
    chain, an outer product of two in-budget tensors); it is refused with an error naming the
    tensor or the budget, within the fuzz budget's memory."""
    payload = _mutate_proto(kind, _FirstChoice())
    with _small_budget(), pytest.raises(FinetuneError, match=r"name: w\b|reshape|budget"):
        model = ft.onnx.load(payload)
        model(ft.ones(1, 3, 8, 8))


def test_budget_errors_name_the_node_and_the_shape():
    payload = _mutate_proto("constant_of_shape_absurd", _FirstChoice())
    model = ft.onnx.load(payload)
    with pytest.raises(FinetuneError) as caught:
        model(ft.ones(1, 3, 8, 8))
    message = str(caught.value)
    assert "'cos' (ConstantOfShape)" in message and "[1000000, 1000000]" in message
    assert "FINETUNE_ONNX_MAX_ELEMENTS" in message


class _FirstChoice:
    """A stand-in for hypothesis' data object: the first initializer/node, or the first of a
    ``sampled_from``'s values."""

    def draw(self, strategy):
        elements = getattr(strategy, "elements", None)
        return elements[0] if elements else 0


def _name_graph(m):
    m.graph.name = "fuzzname"


def _name_node(m):
    m.graph.node[1].name = "fuzzname"


@pytest.mark.parametrize(
    "base, rename", [(WIDE, _name_graph), (BASE, _name_node)], ids=["graph", "node"]
)
def test_invalid_utf8_in_a_name_is_an_import_error(base, rename):
    """protobuf hands back an invalid UTF-8 string as bytes, or raises when it is copied; a
    flipped byte in a name escaped as UnicodeDecodeError, and as TypeError in the naming of
    submodules (both found by `make fuzz`)."""
    m = onnx.ModelProto()
    m.CopyFrom(base)
    rename(m)
    raw = m.SerializeToString().replace(b"fuzzname", b"\xe6uzzname")
    with pytest.raises(FinetuneError, match="not valid UTF-8"):
        ft.onnx.load(raw)


def _with_node_changed(change) -> bytes:
    m = onnx.ModelProto()
    m.CopyFrom(WIDE)
    change(m.graph)
    return m.SerializeToString()


def _set_attribute(graph, op_type, name, value):
    node = next(n for n in graph.node if n.op_type == op_type)
    attr = next(a for a in node.attribute if a.name == name)
    attr.CopyFrom(helper.make_attribute(name, value))


def _set_initializer(graph, name, values):
    tensor = next(t for t in graph.initializer if t.name == name)
    tensor.CopyFrom(numpy_helper.from_array(np.array(values, np.int64), name))


@pytest.mark.parametrize(
    "change, message",
    [
        (lambda g: _set_attribute(g, "Pad", "mode", ""), "Pad: mode '' is not"),
        (lambda g: _set_attribute(g, "Cast", "to", -(2**40)), "not an ONNX element type"),
        (lambda g: _set_initializer(g, "split", []), "Split: 0 sizes"),
        (
            lambda g: _set_initializer(g, "pads", [2**40, 99, 0, -(2**40), 3, 2, -100, 2]),
            "Pad: shape .* negative dimension",
        ),
    ],
    ids=["pad_mode", "cast_to", "split_sizes", "pad_aborts_shape_inference"],
)
def test_value_mutations_found_by_make_fuzz_are_import_errors(change, message):
    """Found by `make fuzz` with value mutations: the first three escaped as KeyError; the
    last made onnx's C++ shape inference abort the whole process (now run in a child)."""
    model = ft.onnx.load(_with_node_changed(change))
    with pytest.raises(FinetuneError, match=message):
        model(ft.ones(1, 3, 8, 8))


def test_an_unknown_element_type_is_an_import_error():
    """data_type 29 is no ONNX type; onnx's own lookup raised KeyError (found with
    FINETUNE_FUZZ_RANDOM=1)."""
    m = onnx.ModelProto()
    m.CopyFrom(BASE)
    m.graph.initializer[4].data_type = 29
    with pytest.raises(FinetuneError, match="unknown element type 29"):
        ft.onnx.load(m.SerializeToString())
