"""Control flow, sequences and optionals: If, Loop, Scan and SequenceMap bodies imported as child
modules that read the enclosing scope by name; sequence (list) and optional (None) values
through the walk and the backend. Values are checked against onnxruntime or numpy, gradients
with gradcheck in float64."""

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper
from onnx_builders import initializer, make_model, run_onnxruntime, value_info

import finetune as ft
from finetune.errors import OnnxImportError
from finetune.onnx import backend
from finetune.onnx.ops import control_flow

FLOAT, INT64, BOOL = TensorProto.FLOAT, TensorProto.INT64, TensorProto.BOOL


def _weights(seed: int, *shape: int) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal(shape).astype(np.float32)


def _scalar(name: str, elem_type: int) -> onnx.ValueInfoProto:
    return helper.make_tensor_value_info(name, elem_type, [])


def _gradcheck(model: onnx.ModelProto, *arrays: np.ndarray) -> bool:
    """gradcheck of the imported model in float64 with respect to its float inputs and every
    parameter (those inside bodies too)."""
    module = ft.onnx.load(model, freeze=False).double()
    leaves = [
        ft.tensor(a.astype(np.float64), requires_grad=True) if a.dtype.kind == "f" else ft.tensor(a)
        for a in arrays
    ]
    params = list(module.parameters())
    count = len(leaves)

    def run(*tensors):
        return module(*tensors[:count])

    return ft.autograd.gradcheck(run, (*leaves, *params))


# -- If ---------------------------------------------------------------------------------------


def _if_model() -> onnx.ModelProto:
    """then: x * w (w an outer initializer); else: relu(x) + b (b the branch's own weight). x is
    read by the first node and then only inside the branches."""
    then_body = helper.make_graph(
        [helper.make_node("Mul", ["x", "w"], ["t"])], "then", [], [value_info("t", [2, 3])]
    )
    else_body = helper.make_graph(
        [
            helper.make_node("Relu", ["x"], ["r"]),
            helper.make_node("Add", ["r", "b"], ["e"], name="add_b"),
        ],
        "else",
        [],
        [value_info("e", [2, 3])],
        [initializer("b", _weights(1, 3))],
    )
    nodes = [
        helper.make_node("Neg", ["x"], ["unused"]),
        helper.make_node(
            "If", ["cond"], ["y"], name="branch", then_branch=then_body, else_branch=else_body
        ),
    ]
    return make_model(
        nodes,
        [_scalar("cond", BOOL), value_info("x", [2, 3])],
        [value_info("y", [2, 3])],
        [initializer("w", _weights(2, 2, 3))],
    )


@pytest.mark.parametrize("taken", [True, False])
def test_if_runs_the_branch_taken_like_onnxruntime(taken):
    model, x = _if_model(), _weights(3, 2, 3)
    cond = np.array(taken)
    got = ft.onnx.load(model)(ft.tensor(cond), ft.tensor(x)).numpy()
    np.testing.assert_allclose(got, run_onnxruntime(model, cond, x)[0], rtol=1e-6)


def test_a_branch_weight_is_a_parameter_of_the_branch_frozen_with_the_model():
    frozen = ft.onnx.load(_if_model())
    names = dict(frozen.named_parameters())
    assert {"w", "branch.else_branch.b"} <= set(names)
    assert not any(p.requires_grad for p in names.values())
    trainable = ft.onnx.load(_if_model(), freeze=False)
    assert all(p.requires_grad for p in trainable.parameters())
    assert "branch.else_branch.b" in trainable.state_dict()


@pytest.mark.parametrize("taken", [True, False])
def test_gradients_flow_through_the_branch_taken(taken):
    assert _gradcheck(_if_model(), np.array(taken), _weights(3, 2, 3))
    module = ft.onnx.load(_if_model(), freeze=False)
    module(ft.tensor(np.array(taken)), ft.tensor(_weights(3, 2, 3))).sum().backward()
    w, b = module.w, module.branch.else_branch.b
    assert (w.grad is not None) == taken and (b.grad is not None) == (not taken)


# -- Loop -------------------------------------------------------------------------------------


def _loop_model(
    with_trip: bool = True, with_cond: bool = True, limit: float = 12.0
) -> onnx.ModelProto:
    """y <- y * w + x + i while sum(y) < limit, at most M times; each y is also a scan output."""
    body = helper.make_graph(
        [
            helper.make_node("Mul", ["y_in", "w"], ["yw"]),
            helper.make_node("Add", ["yw", "x"], ["ywx"]),
            helper.make_node("Cast", ["i"], ["i_float"], to=FLOAT),
            helper.make_node("Add", ["ywx", "i_float"], ["y_out"]),
            helper.make_node("ReduceSum", ["y_out"], ["total"], keepdims=0),
            helper.make_node("Less", ["total", "limit"], ["cond_out"]),
            helper.make_node("Identity", ["y_out"], ["scanned"]),
        ],
        "body",
        [_scalar("i", INT64), _scalar("cond_in", BOOL), value_info("y_in", [3])],
        [_scalar("cond_out", BOOL), value_info("y_out", [3]), value_info("scanned", [3])],
    )
    node = helper.make_node(
        "Loop",
        ["M" if with_trip else "", "cond" if with_cond else "", "y0"],
        ["y", "ys"],
        name="loop",
        body=body,
    )
    inputs = [value_info("x", [3]), value_info("y0", [3])]
    if with_trip:
        inputs.insert(0, _scalar("M", INT64))
    if with_cond:
        inputs.insert(1 if with_trip else 0, _scalar("cond", BOOL))
    return make_model(
        [node],
        inputs,
        [value_info("y", [3]), value_info("ys", ["n", 3])],
        [
            initializer("w", np.array([0.5, -1.0, 1.5], np.float32)),
            initializer("limit", np.array(limit, np.float32)),
        ],
    )


@pytest.mark.parametrize("trip", [0, 1, 3, 50])
def test_loop_matches_onnxruntime_for_trip_counts_and_an_early_stop(trip):
    model = _loop_model()
    inputs = (np.array(trip, np.int64), np.array(True), _weights(4, 3), _weights(5, 3))
    got = ft.onnx.load(model)(*map(ft.tensor, inputs))
    expected = run_onnxruntime(model, *inputs)
    for g, e in zip(got, expected):
        assert g.numpy().dtype == e.dtype and g.shape == e.shape
        np.testing.assert_allclose(g.numpy(), e, rtol=1e-5, atol=1e-6)


def test_a_loop_without_a_condition_input_ignores_the_body_condition():
    """The spec's for-loop: ``cond = ...; // ignored``. onnxruntime 1.32 stops when the body's
    condition turns false even then; the spec is explicit, so a numpy loop is the reference."""
    model = _loop_model(with_cond=False)
    inputs = (np.array(6, np.int64), _weights(4, 3), _weights(5, 3))
    y, ys = ft.onnx.load(model)(*map(ft.tensor, inputs))
    w, state, steps = np.array([0.5, -1.0, 1.5], np.float32), inputs[2], []
    for i in range(6):
        state = state * w + inputs[1] + i
        steps.append(state)
    np.testing.assert_allclose(ys.numpy(), np.stack(steps), rtol=1e-5)
    np.testing.assert_allclose(y.numpy(), steps[-1], rtol=1e-5)


def test_a_while_loop_without_a_trip_count_runs_until_its_condition_fails():
    model = _loop_model(with_trip=False)
    inputs = (np.array(True), np.ones(3, np.float32), np.zeros(3, np.float32))
    y, ys = ft.onnx.load(model)(*map(ft.tensor, inputs))
    expected = run_onnxruntime(model, *inputs)
    np.testing.assert_allclose(ys.numpy(), expected[1], rtol=1e-6)
    assert float(y.numpy().sum()) >= 12.0


def test_a_loop_that_never_stops_is_capped_with_a_message_naming_the_node(monkeypatch):
    monkeypatch.setattr(control_flow, "MAX_LOOP_ITERATIONS", 40)
    module = ft.onnx.load(_loop_model(with_trip=False, limit=np.inf))
    stuck = (np.array(True), np.zeros(3, np.float32), np.zeros(3, np.float32))
    with pytest.raises(OnnxImportError, match="FINETUNE_ONNX_MAX_LOOP_ITERATIONS") as error:
        module(*map(ft.tensor, stuck))
    assert "'loop'" in str(error.value) and "after 40 iterations" in str(error.value)


def test_the_cap_spares_a_trip_count_within_it_and_stops_one_beyond(monkeypatch):
    """PyTorch writes a while loop as Loop(M=INT64_MAX, cond): a trip count above the cap does
    not bound it in practice."""
    monkeypatch.setattr(control_flow, "MAX_LOOP_ITERATIONS", 8)
    module = ft.onnx.load(_loop_model(with_cond=False))
    zeros = ft.tensor(np.zeros(3, np.float32))
    _, ys = module(ft.tensor(np.array(8, np.int64)), zeros, zeros)
    assert ys.shape == (8, 3)
    with pytest.raises(OnnxImportError, match="after 8 iterations"):
        module(ft.tensor(np.array(2**63 - 1, np.int64)), zeros, zeros)


def test_gradients_flow_through_every_iteration_that_ran():
    model = _loop_model()
    inputs = (np.array(3, np.int64), np.array(True), _weights(4, 3), _weights(5, 3))
    assert _gradcheck(model, *inputs)


# -- Scan -------------------------------------------------------------------------------------


def _scan_body() -> onnx.GraphProto:
    """state <- tanh(state * x_t + v_t); outputs the state and state * 2."""
    return helper.make_graph(
        [
            helper.make_node("Mul", ["s_in", "x_t"], ["sx"]),
            helper.make_node("Add", ["sx", "v_t"], ["pre"]),
            helper.make_node("Tanh", ["pre"], ["s_out"]),
            helper.make_node("Add", ["s_out", "s_out"], ["doubled"]),
        ],
        "scan_body",
        [value_info("s_in", [2]), value_info("x_t", [2]), value_info("v_t", [2])],
        [value_info("s_out", [2]), value_info("doubled", [2])],
    )


def _scan_9_model() -> onnx.ModelProto:
    """x scanned along axis 1 in reverse, v along axis 0; the output stacked along axis 1 and
    reversed."""
    node = helper.make_node(
        "Scan",
        ["s0", "x", "v"],
        ["s", "out"],
        body=_scan_body(),
        num_scan_inputs=2,
        scan_input_axes=[1, 0],
        scan_input_directions=[1, 0],
        scan_output_axes=[-1],
        scan_output_directions=[1],
    )
    return make_model(
        [node],
        [value_info("s0", [2]), value_info("x", [2, 4]), value_info("v", [4, 2])],
        [value_info("s", [2]), value_info("out", [2, 4])],
        opset=16,
    )


def test_scan_follows_its_axes_and_directions_like_onnxruntime():
    model = _scan_9_model()
    inputs = (_weights(6, 2), _weights(7, 2, 4), _weights(8, 4, 2))
    got = ft.onnx.load(model)(*map(ft.tensor, inputs))
    for g, e in zip(got, run_onnxruntime(model, *inputs)):
        assert g.shape == e.shape
        np.testing.assert_allclose(g.numpy(), e, rtol=1e-5, atol=1e-6)


def test_scan_gradients_pass_gradcheck():
    assert _gradcheck(_scan_9_model(), _weights(6, 2), _weights(7, 2, 4), _weights(8, 4, 2))


def _scan_8_model() -> onnx.ModelProto:
    node = helper.make_node(
        "Scan",
        ["lens", "s0", "x", "v"],
        ["s", "out"],
        body=_scan_body(),
        num_scan_inputs=2,
        directions=[0, 1],
    )
    return make_model(
        [node],
        [
            value_info("lens", [2], INT64),
            value_info("s0", [2, 2]),
            value_info("x", [2, 3, 2]),
            value_info("v", [2, 3, 2]),
        ],
        [value_info("s", [2, 2]), value_info("out", [2, 3, 2])],
        opset=8,
    )


def _scan_8_loop(lens, s0, x, v):
    """Scan 8 by hand: per batch entry, lens[b] steps, v read backwards, outputs zero-padded."""
    states, outs = np.empty_like(s0), np.zeros_like(x)
    for b in range(len(lens)):
        s = s0[b]
        for t in range(lens[b]):
            s = np.tanh(s * x[b, t] + v[b, lens[b] - 1 - t])
            outs[b, t] = 2 * s
        states[b] = s
    return states, outs


def test_scan_8_runs_each_batch_entry_for_its_sequence_length():
    inputs = (np.array([3, 1], np.int64), _weights(9, 2, 2), _weights(10, 2, 3, 2))
    inputs += (_weights(11, 2, 3, 2),)
    model = _scan_8_model()
    got = ft.onnx.load(model)(*map(ft.tensor, inputs))
    for g, loop, ort in zip(got, _scan_8_loop(*inputs), run_onnxruntime(model, *inputs)):
        np.testing.assert_allclose(g.numpy(), loop, rtol=1e-5, atol=1e-7)
        np.testing.assert_allclose(g.numpy(), ort, rtol=1e-5, atol=1e-6)
    assert _gradcheck(model, *inputs)


# -- nesting and outer scope ------------------------------------------------------------------


def _nested_model() -> onnx.ModelProto:
    """A Loop whose body holds an If; the If's branches read a graph input (x), an outer
    initializer (w) and a loop-body value (acc_in) by name."""
    then_body = helper.make_graph(
        [helper.make_node("Mul", ["acc_in", "w"], ["t"])], "then", [], [value_info("t", [2])]
    )
    else_body = helper.make_graph(
        [helper.make_node("Add", ["acc_in", "x"], ["e"])], "else", [], [value_info("e", [2])]
    )
    body = helper.make_graph(
        [
            helper.make_node("Cast", ["i"], ["i_float"], to=FLOAT),
            helper.make_node("Less", ["i_float", "half"], ["early"]),
            helper.make_node(
                "If", ["early"], ["acc_out"], then_branch=then_body, else_branch=else_body
            ),
            helper.make_node("Identity", ["cond_in"], ["cond_out"]),
        ],
        "body",
        [_scalar("i", INT64), _scalar("cond_in", BOOL), value_info("acc_in", [2])],
        [_scalar("cond_out", BOOL), value_info("acc_out", [2])],
    )
    nodes = [
        helper.make_node("Constant", [], ["M"], value=helper.make_tensor("M", INT64, [], [4])),
        helper.make_node("Loop", ["M", "", "x"], ["y"], name="outer_loop", body=body),
    ]
    return make_model(
        nodes,
        [value_info("x", [2])],
        [value_info("y", [2])],
        [initializer("w", _weights(12, 2)), initializer("half", np.array(1.5, np.float32))],
    )


def test_nested_bodies_read_values_of_every_enclosing_scope():
    model, x = _nested_model(), _weights(13, 2)
    got = ft.onnx.load(model)(ft.tensor(x)).numpy()
    np.testing.assert_allclose(got, run_onnxruntime(model, x)[0], rtol=1e-6)
    w = onnx.numpy_helper.to_array(model.graph.initializer[0])
    np.testing.assert_allclose(got, x * w * w + x + x, rtol=1e-6)


def test_gradients_flow_through_nested_bodies_to_outer_weights():
    assert _gradcheck(_nested_model(), _weights(13, 2))


def test_a_gemm_with_weights_inside_a_body_becomes_a_linear_layer_of_the_body():
    body = helper.make_graph(
        [
            helper.make_node("Gemm", ["h_in", "W", "b"], ["g"], transB=1, name="/cell/Gemm"),
            helper.make_node("Tanh", ["g"], ["h_out"]),
            helper.make_node("Identity", ["cond_in"], ["cond_out"]),
        ],
        "body",
        [_scalar("i", INT64), _scalar("cond_in", BOOL), value_info("h_in", [1, 3])],
        [_scalar("cond_out", BOOL), value_info("h_out", [1, 3])],
        [initializer("W", _weights(20, 3, 3)), initializer("b", _weights(21, 3))],
    )
    node = helper.make_node("Loop", ["M", "", "h0"], ["h"], name="rnn", body=body)
    model = make_model(
        [node], [_scalar("M", INT64), value_info("h0", [1, 3])], [value_info("h", [1, 3])]
    )
    module = ft.onnx.load(model)
    assert isinstance(module.rnn.body.cell, ft.nn.Linear)
    assert "rnn.body.cell.weight" in module.state_dict()
    inputs = (np.array(3, np.int64), _weights(22, 1, 3))
    got = module(*map(ft.tensor, inputs)).numpy()
    np.testing.assert_allclose(got, run_onnxruntime(model, *inputs)[0], rtol=1e-5, atol=1e-6)
    assert _gradcheck(model, *inputs)


def test_a_matmul_a_body_reads_is_not_fused_away():
    """MatMul + Add with constant weights fuse into one Linear, unless a subgraph reads the
    MatMul's own output."""
    then_body = helper.make_graph(
        [helper.make_node("Neg", ["mm"], ["t"])], "then", [], [value_info("t", [2, 2])]
    )
    else_body = helper.make_graph(
        [helper.make_node("Add", ["mm", "y"], ["e"])], "else", [], [value_info("e", [2, 2])]
    )
    nodes = [
        helper.make_node("MatMul", ["x", "W"], ["mm"]),
        helper.make_node("Add", ["mm", "b"], ["y"]),
        helper.make_node("If", ["cond"], ["z"], then_branch=then_body, else_branch=else_body),
    ]
    model = make_model(
        nodes,
        [_scalar("cond", BOOL), value_info("x", [2, 3])],
        [value_info("z", [2, 2])],
        [initializer("W", _weights(23, 3, 2)), initializer("b", _weights(24, 2))],
    )
    module = ft.onnx.load(model)
    for taken in (True, False):
        inputs = (np.array(taken), _weights(25, 2, 3))
        got = module(*map(ft.tensor, inputs)).numpy()
        np.testing.assert_allclose(got, run_onnxruntime(model, *inputs)[0], rtol=1e-5)


# -- sequences --------------------------------------------------------------------------------


def _sequence_model() -> onnx.ModelProto:
    """Split x into a sequence, insert w at the front, erase the last, read one, count them,
    then concatenate and stack what is left."""
    nodes = [
        helper.make_node("SplitToSequence", ["x", "two"], ["parts"], axis=1),
        helper.make_node("SequenceInsert", ["parts", "w", "zero"], ["with_w"]),
        helper.make_node("SequenceErase", ["with_w"], ["trimmed"]),
        helper.make_node("SequenceAt", ["trimmed", "minus_one"], ["last"]),
        helper.make_node("SequenceLength", ["trimmed"], ["count"]),
        helper.make_node("ConcatFromSequence", ["trimmed"], ["joined"], axis=1),
        helper.make_node("ConcatFromSequence", ["trimmed"], ["stacked"], axis=-1, new_axis=1),
    ]
    return make_model(
        nodes,
        [value_info("x", [3, 5])],
        [
            value_info("last", [3, 2]),
            _scalar("count", INT64),
            value_info("joined", [3, 4]),
            value_info("stacked", [3, 2, 2]),
        ],
        [
            initializer("w", _weights(14, 3, 2)),
            initializer("two", np.array(2, np.int64)),
            initializer("zero", np.array(0, np.int64)),
            initializer("minus_one", np.array(-1, np.int64)),
        ],
    )


def test_sequence_ops_match_onnxruntime():
    model, x = _sequence_model(), _weights(15, 3, 5)
    got = ft.onnx.load(model)(ft.tensor(x))
    for g, e in zip(got, run_onnxruntime(model, x)):
        assert g.numpy().dtype == e.dtype and g.shape == e.shape
        np.testing.assert_allclose(g.numpy(), e, rtol=1e-6)


def test_gradients_reach_the_tensors_a_sequence_was_built_from():
    model = _sequence_model()
    del model.graph.output[1]  # SequenceLength has no gradient
    assert _gradcheck(model, _weights(15, 3, 5))


def test_split_to_sequence_without_split_and_keepdims_0_squeezes():
    node = helper.make_node("SplitToSequence", ["x"], ["parts"], axis=-1, keepdims=0)
    model = make_model(
        [node],
        [value_info("x", [2, 3])],
        [helper.make_tensor_sequence_value_info("parts", FLOAT, None)],
    )
    x = _weights(16, 2, 3)
    (parts,) = backend.prepare(model).run([x])
    assert isinstance(parts, list) and len(parts) == 3
    for i, part in enumerate(parts):
        np.testing.assert_array_equal(part, x[:, i])


def _sequence_map_model() -> onnx.ModelProto:
    """Each column of x, times an outer weight, plus a whole tensor t; columns joined again."""
    body = helper.make_graph(
        [helper.make_node("Mul", ["e", "w"], ["m"]), helper.make_node("Add", ["m", "t"], ["o"])],
        "map",
        [value_info("e", [2, 1]), value_info("t", [2, 1])],
        [value_info("o", [2, 1])],
    )
    nodes = [
        helper.make_node("SplitToSequence", ["x"], ["seq"], axis=1),
        helper.make_node("SequenceMap", ["seq", "t"], ["mapped"], body=body),
        helper.make_node("ConcatFromSequence", ["mapped"], ["y"], axis=1),
    ]
    return make_model(
        nodes,
        [value_info("x", [2, 3]), value_info("t", [2, 1])],
        [value_info("y", [2, 3])],
        [initializer("w", np.array(1.5, np.float32))],
        opset=17,
    )


def test_sequence_map_maps_the_body_over_elements_with_an_outer_weight():
    x, t = _weights(17, 2, 3), _weights(18, 2, 1)
    got = ft.onnx.load(_sequence_map_model())(ft.tensor(x), ft.tensor(t)).numpy()
    np.testing.assert_allclose(got, x * 1.5 + t, rtol=1e-6)
    assert _gradcheck(_sequence_map_model(), x, t)


def _construct_and_optional_model() -> onnx.ModelProto:
    """SequenceConstruct of two inputs, joined; x through Optional and OptionalGetElement."""
    nodes = [
        helper.make_node("SequenceConstruct", ["x", "z"], ["pair"]),
        helper.make_node("ConcatFromSequence", ["pair"], ["joined"], axis=0),
        helper.make_node("Optional", ["x"], ["maybe"]),
        helper.make_node("OptionalGetElement", ["maybe"], ["unwrapped"]),
        helper.make_node("Mul", ["unwrapped", "unwrapped"], ["squared"]),
    ]
    return make_model(
        nodes,
        [value_info("x", [2]), value_info("z", [3])],
        [value_info("joined", [5]), value_info("squared", [2])],
        opset=18,
    )


def test_sequence_construct_and_optionals_pass_values_and_gradients():
    x, z = _weights(19, 2), _weights(20, 3)
    joined, squared = ft.onnx.load(_construct_and_optional_model())(ft.tensor(x), ft.tensor(z))
    np.testing.assert_array_equal(joined.numpy(), np.concatenate([x, z]))
    np.testing.assert_allclose(squared.numpy(), x * x, rtol=1e-6)
    assert _gradcheck(_construct_and_optional_model(), x, z)


# -- optionals and the backend ----------------------------------------------------------------


def _optional_model() -> onnx.ModelProto:
    """An optional input: whether it holds a value, and the value or an empty optional."""
    optional_float = helper.make_optional_type_proto(helper.make_tensor_type_proto(FLOAT, [2]))
    nodes = [
        helper.make_node("OptionalHasElement", ["maybe"], ["has"]),
        helper.make_node("Identity", ["maybe"], ["same"]),
    ]
    return make_model(
        nodes,
        [helper.make_value_info("maybe", optional_float)],
        [_scalar("has", BOOL), helper.make_value_info("same", optional_float)],
        opset=18,
    )


def test_backend_passes_an_empty_optional_as_none_both_ways():
    rep = backend.prepare(_optional_model())
    assert rep.model.input_types[0].describe() == "optional(float32[2])"
    has, same = rep.run([None])
    assert has.dtype == np.bool_ and not has and same is None
    has, same = rep.run([np.ones(2, np.float32)])
    assert has and np.array_equal(same, np.ones(2, np.float32))


def test_run_node_takes_and_returns_sequences_as_lists():
    a, b = np.ones(2, np.float32), np.zeros(3, np.float32)
    node = helper.make_node("SequenceAt", ["seq", "position"], ["y"])
    (y,) = backend.run_node(node, [[a, b], np.array(-1, np.int64)])
    np.testing.assert_array_equal(y, b)
    node = helper.make_node("SequenceInsert", ["seq", "t"], ["longer"])
    (longer,) = backend.run_node(node, [[a, a], b])
    assert [x.shape for x in longer] == [(2,), (2,), (3,)]


def test_optional_get_element_of_an_empty_optional_names_the_node():
    empty = helper.make_node(
        "Optional", [], ["none"], type=helper.make_tensor_type_proto(FLOAT, [2])
    )
    get = helper.make_node("OptionalGetElement", ["none"], ["y"], name="unwrap")
    model = make_model([empty, get], [], [value_info("y", [2])], opset=18)
    with pytest.raises(OnnxImportError, match="'unwrap'.*empty"):
        ft.onnx.load(model)()


def test_a_sequence_input_takes_a_list_and_refuses_a_tensor():
    seq = helper.make_tensor_sequence_value_info("seq", FLOAT, None)
    node = helper.make_node("ConcatFromSequence", ["seq"], ["y"], axis=0)
    model = make_model([node], [seq], [value_info("y", ["n"])], opset=13)
    module = ft.onnx.load(model)
    got = module([ft.tensor(np.ones(2, np.float32)), ft.tensor(np.zeros(1, np.float32))])
    np.testing.assert_array_equal(got.numpy(), [1, 1, 0])
    assert module.input_types[0].describe() == "sequence(float32)"
    with pytest.raises(OnnxImportError, match="'seq' is a sequence"):
        module(ft.tensor(np.ones(2, np.float32)))
    with pytest.raises(OnnxImportError, match="expects float32"):
        module([ft.tensor(np.ones(2, np.int64))])


# -- errors -----------------------------------------------------------------------------------


def test_an_unsupported_op_inside_a_body_is_named_with_its_path():
    body = helper.make_graph(
        [helper.make_node("Frobnicate", ["x"], ["t"], name="inner", domain="custom.ops")],
        "then",
        [],
        [value_info("t", [2])],
    )
    identity = helper.make_graph(
        [helper.make_node("Identity", ["x"], ["e"])], "else", [], [value_info("e", [2])]
    )
    node = helper.make_node(
        "If", ["cond"], ["y"], name="choose", then_branch=body, else_branch=identity
    )
    graph = helper.make_graph(
        [node], "g", [_scalar("cond", BOOL), value_info("x", [2])], [value_info("y", [2])]
    )
    model = helper.make_model(
        graph,
        opset_imports=[helper.make_opsetid("", 13), helper.make_opsetid("custom.ops", 1)],
    )
    with pytest.raises(OnnxImportError, match=r"custom\.ops\.Frobnicate.*choose/then_branch/inner"):
        ft.onnx.load(model)


def test_a_loop_body_with_the_wrong_inputs_is_refused_naming_the_node():
    body = helper.make_graph(
        [helper.make_node("Identity", ["cond_in"], ["cond_out"])],
        "body",
        [_scalar("cond_in", BOOL)],  # the iteration number and the carried value are missing
        [_scalar("cond_out", BOOL)],
    )
    node = helper.make_node("Loop", ["M", "", "y0"], ["y"], name="bad_loop", body=body)
    model = make_model(
        [node],
        [_scalar("M", INT64), value_info("y0", [2])],
        [value_info("y", [2])],
        check=False,
    )
    with pytest.raises(OnnxImportError, match="'bad_loop'.*body takes 1 inputs.*malformed"):
        ft.onnx.load(model)


def test_a_body_reading_a_name_nobody_defines_is_refused():
    then_body = helper.make_graph(
        [helper.make_node("Neg", ["ghost"], ["t"])], "then", [], [value_info("t", [2])]
    )
    else_body = helper.make_graph(
        [helper.make_node("Neg", ["x"], ["e"])], "else", [], [value_info("e", [2])]
    )
    node = helper.make_node(
        "If", ["cond"], ["y"], name="haunted", then_branch=then_body, else_branch=else_body
    )
    graph = helper.make_graph(
        [node], "g", [_scalar("cond", BOOL), value_info("x", [2])], [value_info("y", [2])]
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 7
    with pytest.raises(OnnxImportError, match="'ghost'(.|\n)*haunted"):
        ft.onnx.load(model)


# -- cases for the registry-wide gradient walk (tests/test_onnx_gradients.py EXTRA_CASES) ---------


def _case(build, *inputs: np.ndarray):
    """``(model, inputs, wrt)``: gradients with respect to every float input."""
    return build(), list(inputs), [i for i, x in enumerate(inputs) if x.dtype.kind == "f"]


GRADIENT_CASES = {
    "If": lambda: _case(_if_model, np.array(False), _weights(3, 2, 3)),
    "Loop": lambda: _case(
        _loop_model, np.array(3, np.int64), np.array(True), _weights(4, 3), _weights(5, 3)
    ),
    "Scan": lambda: _case(_scan_9_model, _weights(6, 2), _weights(7, 2, 4), _weights(8, 4, 2)),
    "SequenceMap": lambda: _case(_sequence_map_model, _weights(17, 2, 3), _weights(18, 2, 1)),
    "SplitToSequence": lambda: _case(_sequence_model, _weights(15, 3, 5)),
    "SequenceConstruct": lambda: _case(
        _construct_and_optional_model, _weights(19, 2), _weights(20, 3)
    ),
}
for _op in ("SequenceInsert", "SequenceErase", "SequenceAt", "ConcatFromSequence"):
    GRADIENT_CASES[_op] = GRADIENT_CASES["SplitToSequence"]
for _op in ("Optional", "OptionalGetElement"):
    GRADIENT_CASES[_op] = GRADIENT_CASES["SequenceConstruct"]


@pytest.mark.parametrize("op", sorted(GRADIENT_CASES))
def test_gradient_cases_for_the_registry_walk(op):
    """Each case runs ``op`` and passes gradcheck with respect to its float inputs."""
    model, inputs, wrt = GRADIENT_CASES[op]()
    assert any(node.op_type == op for node in _every_node(model.graph))
    module = ft.onnx.load(model, freeze=False).double()
    tensors = [
        ft.tensor(x.astype(np.float64), requires_grad=True) if i in wrt else ft.tensor(x)
        for i, x in enumerate(inputs)
    ]

    def floats(*_):
        out = module(*tensors)
        outs = out if isinstance(out, tuple) else (out,)
        return tuple(o for o in outs if isinstance(o, ft.Tensor) and o.dtype.is_floating_point)

    assert ft.autograd.gradcheck(floats, [tensors[i] for i in wrt])


def _every_node(graph: onnx.GraphProto):
    for node in graph.node:
        yield node
        for attribute in node.attribute:
            if attribute.type == onnx.AttributeProto.GRAPH:
                yield from _every_node(attribute.g)
