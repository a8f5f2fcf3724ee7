"""Every differentiable converter's gradient, checked by gradcheck in float64.

The test walks the registry: each op registered as differentiable is checked on the smallest of
the ONNX project's node test cases that runs it as a single node (the case's own inputs, cast to
float64), perturbing the inputs the ONNX schema calls differentiable. An op that has no such
case must have one in ``EXTRA_CASES``, so a new converter without a gradient test fails here.
"""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from node_cases import KNOWN_FAILURES, array_of, population

import finetune as ft
from finetune.errors import AutogradError
from finetune.onnx import registry

Category = onnx.defs.OpSchema.DifferentiationCategory
FULL_JACOBIAN = 400  # up to this many input plus output elements the full Jacobian is built;
MAX_ELEMENTS = 20_000  # beyond, random projections (gradcheck's fast mode)


def _opset(model: onnx.ModelProto) -> int:
    return next(o.version for o in model.opset_import if o.domain in ("", "ai.onnx"))


def _differentiable_inputs(node: onnx.NodeProto, opset: int) -> list[int]:
    """Indices of the node's inputs the ONNX schema does not mark non-differentiable (newer
    schemas such as Attention leave every input ``Unknown``)."""
    schema = onnx.defs.get_schema(node.op_type, max_inclusive_version=opset)
    formal = list(schema.inputs)
    picked = []
    for i, name in enumerate(node.input):
        if not name:
            continue
        parameter = formal[min(i, len(formal) - 1)]
        if parameter.differentiation_category != Category.NonDifferentiable:
            picked.append(i)
    return picked


def _gradient_case(op: str, cases: list):
    """The smallest passing single-node case of ``op`` with float inputs to differentiate."""
    best = None
    for case in cases:
        graph = case.model.graph
        if len(graph.node) != 1 or graph.node[0].op_type != op or case.name in KNOWN_FAILURES:
            continue
        if any(
            a.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS)
            for a in graph.node[0].attribute
        ):
            continue
        inputs = [array_of(x) for x in case.data_sets[0][0]]
        outputs = [array_of(y) for y in case.data_sets[0][1]]
        if not all(isinstance(x, np.ndarray) for x in (*inputs, *outputs)):
            continue
        if any(x.dtype.kind == "f" and not np.isfinite(x).all() for x in inputs):
            continue  # finite differences need finite values
        if not any(y.dtype in (np.float32, np.float64) for y in outputs):
            continue  # float16 outputs round away what finite differences measure
        names = [i.name for i in graph.input]
        node = graph.node[0]
        wrt = [
            names.index(node.input[i])
            for i in _differentiable_inputs(node, _opset(case.model))
            if node.input[i] in names
            and inputs[names.index(node.input[i])].dtype in (np.float32, np.float64)
        ]
        if not wrt:
            continue
        if any(inputs[i].size == 0 for i in wrt):
            continue
        size = sum(x.size for x in (*inputs, *outputs))
        if size <= MAX_ELEMENTS and (best is None or size < best[0]):
            best = (size, case, [_off_kinks(x, i in wrt) for i, x in enumerate(inputs)], wrt)
    return best


def _off_kinks(x: np.ndarray, differentiated: bool) -> np.ndarray:
    """Hand-written examples hold round numbers (0, 1, ties) where ReLU-like ops, max and
    bilinear sampling have kinks; a seeded nudge of up to 2% (keeping each value's sign, zeros
    made small positives) moves them off, since only the Jacobian is compared, not the values."""
    if not differentiated:
        return x
    rng = np.random.default_rng(x.size)
    nudged = x * (1 + rng.uniform(0.002, 0.02, x.shape)) + (x == 0) * rng.uniform(
        0.01, 0.05, x.shape
    )
    return nudged.astype(x.dtype)


CASES_BY_OP: dict[str, list] = {}
for _case in population():
    for _node in _case.model.graph.node:
        CASES_BY_OP.setdefault(_node.op_type, []).append(_case)


def _has_differentiable_input(op: str) -> bool:
    """Whether any schema version of ``op`` has a float input not marked non-differentiable
    (ops without one, like Constant or ConstantOfShape, are sources: nothing flows back)."""
    for schema in onnx.defs.get_all_schemas_with_history():
        if schema.name != op or schema.domain != "":
            continue
        allowed = {c.type_param_str: c.allowed_type_strs for c in schema.type_constraints}
        for i in schema.inputs:
            types = allowed.get(i.type_str, [i.type_str])
            floats = any("float" in t or "double" in t for t in types)
            if floats and i.differentiation_category != Category.NonDifferentiable:
                return True
    return False


_REGISTERED_DIFFERENTIABLE = {
    op for (domain, op, _), c in registry._REGISTRY.items() if domain == "" and c.differentiable
}
DIFFERENTIABLE = sorted(op for op in _REGISTERED_DIFFERENTIABLE if _has_differentiable_input(op))
NOT_DIFFERENTIABLE = sorted(set(registry.supported()) - _REGISTERED_DIFFERENTIABLE)

RNG = np.random.default_rng(0)


def _f(*shape: int) -> np.ndarray:
    return RNG.standard_normal(shape).astype(np.float32)


def _i(*values: int) -> np.ndarray:
    return np.array(values, dtype=np.int64)


def _node_model(op: str, inputs: dict, opset: int = 22, outputs: int = 1, **attributes):
    """A one-node model of ``op`` on graph inputs ``inputs`` (name → array or list of arrays for
    a sequence); returns ``(model, input values, indices of the float ones)``."""
    from onnx import helper

    def info(name, value):
        if isinstance(value, list):
            element = helper.np_dtype_to_tensor_dtype(value[0].dtype)
            return helper.make_tensor_sequence_value_info(name, element, [None] * value[0].ndim)
        return helper.make_tensor_value_info(
            name, helper.np_dtype_to_tensor_dtype(value.dtype), value.shape
        )

    names = [f"y{k}" for k in range(outputs)]
    node = helper.make_node(op, list(inputs), names, **attributes)
    graph = helper.make_graph(
        [node],
        op,
        [info(k, v) for k, v in inputs.items()],
        [helper.make_empty_tensor_value_info(n) for n in names],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model = onnx.shape_inference.infer_shapes(model)
    values = list(inputs.values())
    wrt = [
        k for k, v in enumerate(values) if (v[0] if isinstance(v, list) else v).dtype.kind == "f"
    ]
    return model, values, wrt


def _body(nodes, inputs, outputs):
    """A subgraph: ``inputs``/``outputs`` are (name, elem_type, shape) triples."""
    from onnx import helper

    make = helper.make_tensor_value_info
    return helper.make_graph(nodes, "body", [make(*i) for i in inputs], [make(*o) for o in outputs])


def _control_flow_cases() -> dict:
    from onnx import TensorProto as T
    from onnx import helper

    twice = _body([helper.make_node("Add", ["x", "x"], ["y"])], [], [("y", T.FLOAT, [3])])
    square = _body([helper.make_node("Mul", ["x", "x"], ["y"])], [], [("y", T.FLOAT, [3])])
    loop_body = _body(
        [
            helper.make_node("Identity", ["cond"], ["cond_out"]),
            helper.make_node("Mul", ["acc", "x"], ["acc_out"]),
            helper.make_node("Sin", ["acc_out"], ["scan_out"]),
        ],
        [("i", T.INT64, []), ("cond", T.BOOL, []), ("acc", T.FLOAT, [3])],
        [("cond_out", T.BOOL, []), ("acc_out", T.FLOAT, [3]), ("scan_out", T.FLOAT, [3])],
    )
    scan_body = _body(
        [
            helper.make_node("Add", ["state", "row"], ["state_out"]),
            helper.make_node("Mul", ["state_out", "row"], ["row_out"]),
        ],
        [("state", T.FLOAT, [2]), ("row", T.FLOAT, [2])],
        [("state_out", T.FLOAT, [2]), ("row_out", T.FLOAT, [2])],
    )
    return {
        "If": lambda: _if_case(twice, square),
        "Loop": lambda: _loop_case(loop_body),
        "SequenceMap": lambda: _node_model(
            "SequenceMap",
            {"s": [_f(2), _f(3)], "x": _f(1)},
            opset=17,
            body=_body(
                [helper.make_node("Mul", ["e", "x"], ["y"])],
                [("e", T.FLOAT, None), ("x", T.FLOAT, [1])],
                [("y", T.FLOAT, None)],
            ),
        ),
        "Scan": lambda: _node_model(
            "Scan",
            {"s": _f(2), "rows": _f(4, 2)},
            outputs=2,
            body=scan_body,
            num_scan_inputs=1,
        ),
    }


def _if_case(then_branch, else_branch):
    """If reading the outer ``x`` by name from both branches."""
    from onnx import TensorProto as T
    from onnx import helper

    graph = helper.make_graph(
        [helper.make_node("If", ["c"], ["y"], then_branch=then_branch, else_branch=else_branch)],
        "if",
        [
            helper.make_tensor_value_info("c", T.BOOL, []),
            helper.make_tensor_value_info("x", T.FLOAT, [3]),
        ],
        [helper.make_tensor_value_info("y", T.FLOAT, [3])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 22)])
    return model, [np.array(False), _f(3)], [1]


def _loop_case(body):
    """Three iterations of acc *= x (x from the outer scope), with a scan output."""
    from onnx import TensorProto as T
    from onnx import helper

    graph = helper.make_graph(
        [helper.make_node("Loop", ["m", "", "acc"], ["final", "trace"], body=body)],
        "loop",
        [
            helper.make_tensor_value_info("m", T.INT64, []),
            helper.make_tensor_value_info("acc", T.FLOAT, [3]),
            helper.make_tensor_value_info("x", T.FLOAT, [3]),
        ],
        [
            helper.make_tensor_value_info("final", T.FLOAT, [3]),
            helper.make_tensor_value_info("trace", T.FLOAT, [None, 3]),
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 22)])
    return model, [np.array(3, np.int64), _f(3), _f(3)], [1, 2]


# ops whose node cases cannot serve (integer or non-finite example inputs, round values at every
# jump, sequences, subgraphs, or only cases too large): a small case of their own
EXTRA_CASES: dict = {
    "Cast": lambda: _node_model("Cast", {"x": _f(2, 3)}, to=onnx.TensorProto.DOUBLE),
    "CastLike": lambda: _node_model("CastLike", {"x": _f(2, 3), "like": np.zeros(1, np.float64)}),
    "Ceil": lambda: _node_model("Ceil", {"x": _f(2, 3)}),
    "Floor": lambda: _node_model("Floor", {"x": _f(2, 3)}),
    "Round": lambda: _node_model("Round", {"x": _f(2, 3)}),
    "Sign": lambda: _node_model("Sign", {"x": _f(2, 3)}),
    "CumSum": lambda: _node_model(
        "CumSum", {"x": _f(2, 4), "axis": np.array(1, np.int64)}, exclusive=1, reverse=1
    ),
    "Trilu": lambda: _node_model("Trilu", {"x": _f(3, 4), "k": np.array(1, np.int64)}, upper=0),
    "Pad": lambda: _node_model(
        "Pad",
        {"x": _f(2, 3), "pads": _i(1, 0, 0, 2), "value": np.array(0.5, np.float32)},
        mode="constant",
    ),
    "GlobalLpPool": lambda: _node_model("GlobalLpPool", {"x": _f(1, 2, 3, 3)}, p=3),
    "MaxRoiPool": lambda: _node_model(
        "MaxRoiPool",
        {"x": _f(1, 2, 6, 6), "rois": np.array([[0, 0.3, 0.6, 4.4, 5.2]], np.float32)},
        pooled_shape=[2, 2],
    ),
    "OneHot": lambda: _node_model(
        "OneHot",
        {
            "i": _i(0, 2, 1),
            "depth": np.array(3, np.int64),
            "values": np.array([-0.5, 1.5], np.float32),
        },
    ),
    "SequenceConstruct": lambda: _node_model("SequenceConstruct", {"a": _f(2), "b": _f(2)}),
    "SequenceAt": lambda: _node_model(
        "SequenceAt", {"s": [_f(2), _f(3)], "i": np.array(1, np.int64)}
    ),
    "SequenceInsert": lambda: _node_model("SequenceInsert", {"s": [_f(2)], "t": _f(2)}),
    "SequenceErase": lambda: _node_model(
        "SequenceErase", {"s": [_f(2), _f(2)], "i": np.array(0, np.int64)}
    ),
    "SplitToSequence": lambda: _node_model("SplitToSequence", {"x": _f(4, 2)}, axis=0),
    "ConcatFromSequence": lambda: _node_model("ConcatFromSequence", {"s": [_f(2), _f(3)]}, axis=0),
    "Optional": lambda: _node_model("Optional", {"x": _f(3)}),
    # a seeded noise draw shaped like its input: the gradient to the input is exactly zero
    "RandomNormalLike": lambda: _node_model("RandomNormalLike", {"x": _f(2, 3)}, seed=1.0),
    "RandomUniformLike": lambda: _node_model("RandomUniformLike", {"x": _f(2, 3)}, seed=1.0),
    **_control_flow_cases(),
}


def _check(model: onnx.ModelProto, inputs: list[np.ndarray], wrt: list[int]) -> None:
    module = ft.onnx.load(model, freeze=False).double()
    tensors = [_tensor(x, i in wrt) for i, x in enumerate(inputs)]
    leaves = [t for t in _flat(tensors) if t.requires_grad]
    assert leaves

    def run(*_):
        out = module(*tensors)
        outs = _flat(out if isinstance(out, tuple) else (out,))
        return tuple(o for o in outs if o.dtype.is_floating_point)

    size = sum(t.numel() for t in _flat(tensors)) + sum(o.numel() for o in run())
    assert ft.autograd.gradcheck(run, leaves, fast_mode=size > FULL_JACOBIAN)


def _tensor(x, differentiated: bool):
    """A float input as a float64 leaf; a list (a sequence) element by element."""
    if isinstance(x, list):
        return [_tensor(v, differentiated) for v in x]
    if x.dtype.kind != "f":
        return ft.from_numpy(np.asarray(x))
    return ft.from_numpy(np.asarray(x, np.float64)).requires_grad_(differentiated)


def _flat(values) -> list:
    """The tensors in ``values``, sequences (lists) opened, empty optionals (None) skipped."""
    flat = []
    for v in values:
        if isinstance(v, list):
            flat.extend(_flat(v))
        elif isinstance(v, ft.Tensor):
            flat.append(v)
    return flat


@pytest.mark.parametrize("op", DIFFERENTIABLE)
def test_gradient_of_every_differentiable_op(op):
    if op in EXTRA_CASES:
        model, inputs, wrt = EXTRA_CASES[op]()
    else:
        found = _gradient_case(op, CASES_BY_OP.get(op, []))
        assert found is not None, (
            f"{op} is registered as differentiable but no node case can check its gradient; "
            "add a small case to EXTRA_CASES"
        )
        _, case, inputs, wrt = found
        model = case.model
    _check(model, inputs, wrt)


# ONNX calls Hardmax's input differentiable, but its one-hot output is piecewise constant: a
# backward through it raises (as through ArgMax) rather than passing an all-zero gradient
NO_GRADIENT_ON_PURPOSE = {"Hardmax"}


@pytest.mark.parametrize("op", sorted(set(NOT_DIFFERENTIABLE) - NO_GRADIENT_ON_PURPOSE))
def test_ops_without_a_gradient_are_not_differentiable_in_the_onnx_schema(op):
    """An op the library marks as having no gradient must not have one in the spec either."""
    schema = onnx.defs.get_schema(op)
    assert all(i.differentiation_category != Category.Differentiable for i in schema.inputs), (
        f"ONNX calls an input of {op} differentiable, but its converter says it has no gradient"
    )


def test_a_backward_through_an_op_without_a_gradient_raises():
    """Round-tripping a float through a non-differentiable op must not pass a silent zero."""
    from finetune.autograd.function import NoGradient

    x = ft.tensor([1.0, 2.0], requires_grad=True)
    y = NoGradient.apply(x * 2, x, op="ArgMax")
    with pytest.raises(AutogradError, match="ArgMax has no gradient"):
        y.sum().backward()
