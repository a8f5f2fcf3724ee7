"""The inference plan of an imported graph (``finetune/onnx/plan.py``): frozen eval inference
through it gives the exact walk's results (and onnxruntime's), and anything that needs the
exact walk (training mode, a gradient, export's trace, a new head) gets it."""

from __future__ import annotations

import functools
import math

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from architectures import example_input, load_proto
from onnx import TensorProto, helper, numpy_helper

import finetune as ft
from finetune import nn
from finetune.autograd import gradcheck

FLOAT = TensorProto.FLOAT
SQRT2 = math.sqrt(2.0)


def _model(nodes, inputs, outputs, initializers=(), opset=17) -> onnx.ModelProto:
    graph = helper.make_graph(nodes, "g", inputs, outputs, list(initializers))
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    onnx.checker.check_model(model)
    return model


def _tensor(name, shape):
    """A float value of ``shape``; an int is a rank, every dimension free."""
    if isinstance(shape, int):
        shape = [f"{name}_{i}" for i in range(shape)]
    return helper.make_tensor_value_info(name, FLOAT, shape)


def _constant(name, array) -> onnx.NodeProto:
    value = numpy_helper.from_array(np.asarray(array), name)
    return helper.make_node("Constant", [], [name], value=value)


def _init(name, array):
    return numpy_helper.from_array(np.asarray(array), name)


def _onnxruntime(proto, *xs):
    session = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
    names = [i.name for i in session.get_inputs()]
    return session.run(None, dict(zip(names, xs)))


def _exact(model, *xs):
    """The node-by-node walk, bypassing the plan."""
    out = model._walk(model._bind_inputs(tuple(ft.from_numpy(x) for x in xs)))
    return out[0] if len(out) == 1 else out


def _planned_ops(model) -> list[str]:
    """The op types the plan runs on a later call of the last input signature."""
    plan = model._plan.plan
    assert plan is not None, "the forward did not go through the plan"
    return [unit[-1].op_type for unit in plan._fast]


def _close(got, want):
    want = np.asarray(want)
    scale = max(float(np.abs(want).max(initial=0.0)), 1e-3)
    np.testing.assert_allclose(np.asarray(got), want, rtol=1e-5, atol=1e-5 * scale)


def _conv_bn_model(rng, conv_bias_through_identity=False) -> onnx.ModelProto:
    """x -> Conv (bias maybe through Identity) -> BatchNormalization -> Relu -> y."""
    c, o = 3, 4
    inits = [
        _init("w", rng.standard_normal((o, c, 3, 3)).astype(np.float32)),
        _init("b", rng.standard_normal(o).astype(np.float32)),
        _init("scale", rng.uniform(0.5, 1.5, o).astype(np.float32)),
        _init("shift", rng.standard_normal(o).astype(np.float32)),
        _init("mean", rng.standard_normal(o).astype(np.float32)),
        _init("var", rng.uniform(0.5, 1.5, o).astype(np.float32)),
    ]
    nodes = []
    bias = "b"
    if conv_bias_through_identity:
        nodes.append(helper.make_node("Identity", ["b"], ["b_id"]))
        bias = "b_id"
    nodes += [
        helper.make_node("Conv", ["x", "w", bias], ["c"], pads=[1, 1, 1, 1]),
        helper.make_node(
            "BatchNormalization", ["c", "scale", "shift", "mean", "var"], ["n"], epsilon=1e-5
        ),
        helper.make_node("Relu", ["n"], ["y"]),
    ]
    return _model(nodes, [_tensor("x", ["n", c, 6, 6])], [_tensor("y", 4)], inits)


# -- import: Identity of a constant folds ------------------------------------------------------


def test_a_conv_bias_read_through_identity_becomes_a_conv_module():
    rng = np.random.default_rng(0)
    proto = _conv_bn_model(rng, conv_bias_through_identity=True)
    model = ft.onnx.load(proto)
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    assert len(convs) == 1 and convs[0].bias is not None
    x = rng.standard_normal((2, 3, 6, 6)).astype(np.float32)
    with ft.no_grad():
        _close(model(ft.from_numpy(x)).numpy(), _onnxruntime(proto, x)[0])


def test_layers_sharing_a_bias_through_identity_get_their_own_copies():
    """PyTorch's legacy exporter deduplicates equal biases and feeds each layer an Identity of
    the shared one: training one layer's bias must not move another's."""
    rng = np.random.default_rng(1)
    w = rng.standard_normal((3, 3, 1, 1)).astype(np.float32)
    nodes = [
        helper.make_node("Identity", ["b"], ["b1"]),
        helper.make_node("Identity", ["b"], ["b2"]),
        helper.make_node("Conv", ["x", "w", "b1"], ["h"]),
        helper.make_node("Conv", ["h", "w", "b2"], ["y"]),
    ]
    inits = [_init("w", w), _init("b", np.zeros(3, np.float32))]
    model = ft.onnx.load(_model(nodes, [_tensor("x", [1, 3, 4, 4])], [_tensor("y", 4)], inits))
    first, second = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    assert not np.shares_memory(first.bias.numpy(), second.bias.numpy())
    with ft.no_grad():
        first.bias.add_(1.0)
    np.testing.assert_array_equal(second.bias.numpy(), np.zeros(3, np.float32))


def test_a_graph_output_that_is_identity_of_a_constant():
    nodes = [
        helper.make_node("Relu", ["x"], ["y"]),
        helper.make_node("Identity", ["k"], ["z"]),
    ]
    k = np.arange(4, dtype=np.float32)
    proto = _model(
        nodes, [_tensor("x", [2, 4])], [_tensor("y", 2), _tensor("z", 1)], [_init("k", k)]
    )
    model = ft.onnx.load(proto)
    x = np.random.default_rng(2).standard_normal((2, 4)).astype(np.float32)
    for _ in range(2):  # the first call builds the plan, the second runs it
        with ft.no_grad():
            y, z = model(ft.from_numpy(x))
        want_y, want_z = _onnxruntime(proto, x)
        _close(y.numpy(), want_y)
        np.testing.assert_array_equal(z.numpy(), want_z)


# -- folded shape arithmetic --------------------------------------------------------------------


def _shape_chain_model() -> onnx.ModelProto:
    """PyTorch's flatten as the exporters write it: ``Shape -> Gather -> Unsqueeze -> Concat ->
    Reshape``, then per-sample arithmetic on a size read the same way (``x * H``)."""
    nodes = [
        helper.make_node("Shape", ["x"], ["s"]),
        _constant("zero", np.array(0, np.int64)),
        _constant("two", np.array(2, np.int64)),
        _constant("axes", np.array([0], np.int64)),
        _constant("minus_one", np.array([-1], np.int64)),
        helper.make_node("Gather", ["s", "zero"], ["n"], axis=0),
        helper.make_node("Unsqueeze", ["n", "axes"], ["n1"]),
        helper.make_node("Concat", ["n1", "minus_one"], ["target"], axis=0),
        helper.make_node("Relu", ["x"], ["r"]),
        helper.make_node("Reshape", ["r", "target"], ["flat"]),
        helper.make_node("Gather", ["s", "two"], ["h"], axis=0),
        helper.make_node("Cast", ["h"], ["hf"], to=FLOAT),
        helper.make_node("Mul", ["flat", "hf"], ["y"]),
    ]
    return _model(nodes, [_tensor("x", ["n", 2, "h", "w"])], [_tensor("y", 2)])


def test_shape_arithmetic_is_folded_per_input_shape():
    proto = _shape_chain_model()
    model = ft.onnx.load(proto)
    rng = np.random.default_rng(3)
    shapes = [(2, 2, 3, 3), (3, 2, 3, 3), (2, 2, 5, 4), (2, 2, 3, 3), (1, 2, 5, 4)]
    for shape in shapes:  # batch and spatial sizes change, and come back
        x = rng.standard_normal(shape).astype(np.float32)
        for _ in range(2):
            with ft.no_grad():
                got = model(ft.from_numpy(x)).numpy()
            assert got.shape == (shape[0], int(np.prod(shape[1:])))
            _close(got, _onnxruntime(proto, x)[0])
            _close(got, _exact(model, x).numpy())
    assert sorted(_planned_ops(model)) == ["Mul", "Relu", "Reshape"]


def test_a_constant_the_folded_values_read_is_watched():
    """A float initializer feeding shape-only arithmetic: changing it in place changes the
    result, as in the walk."""
    nodes = [
        helper.make_node("Shape", ["x"], ["s"]),
        helper.make_node("Cast", ["s"], ["sf"], to=FLOAT),
        helper.make_node("Mul", ["sf", "k"], ["scaled"]),
        helper.make_node("ReduceSum", ["scaled"], ["total"], keepdims=0),
        helper.make_node("Mul", ["x", "total"], ["y"]),
    ]
    k = np.ones(2, np.float32)
    proto = _model(nodes, [_tensor("x", ["n", 3])], [_tensor("y", 2)], [_init("k", k)], opset=13)
    model = ft.onnx.load(proto)
    x = np.ones((2, 3), np.float32)
    with ft.no_grad():
        np.testing.assert_allclose(model(ft.from_numpy(x)).numpy(), np.full((2, 3), 5.0))
        np.testing.assert_allclose(model(ft.from_numpy(x)).numpy(), np.full((2, 3), 5.0))
        next(p for p in model.parameters() if p.shape == (2,)).mul_(2.0)
        np.testing.assert_allclose(model(ft.from_numpy(x)).numpy(), np.full((2, 3), 10.0))


# -- BatchNorm folded into the convolution ------------------------------------------------------


def test_batchnorm_after_conv_is_folded_for_frozen_inference():
    rng = np.random.default_rng(4)
    proto = _conv_bn_model(rng)
    model = ft.onnx.load(proto)
    for batch in (2, 3):
        x = rng.standard_normal((batch, 3, 6, 6)).astype(np.float32)
        with ft.no_grad():
            got = model(ft.from_numpy(x)).numpy()
            again = model(ft.from_numpy(x)).numpy()
        _close(got, _onnxruntime(proto, x)[0])
        _close(again, _exact(model, x).numpy())
    # the BatchNorm folded into the convolution, the ReLU in its output pass
    assert _planned_ops(model) == ["Conv+BatchNormalization+Relu"]


def test_train_mode_normalises_with_batch_statistics_after_the_plan_ran():
    rng = np.random.default_rng(5)
    model = ft.onnx.load(_conv_bn_model(rng))
    x = ft.from_numpy(rng.standard_normal((4, 3, 6, 6)).astype(np.float32))
    with ft.no_grad():
        model(x)
        model(x)
    bn = next(m for m in model.modules() if isinstance(m, nn.BatchNorm2d))
    conv = next(m for m in model.modules() if isinstance(m, nn.Conv2d))
    before = bn.running_mean.numpy().copy()
    model.train()
    with ft.no_grad():
        c = conv(x).numpy().astype(np.float64)
        out = model(x).numpy()
    mean, var = c.mean(axis=(0, 2, 3)), c.var(axis=(0, 2, 3))
    shape = (1, -1, 1, 1)
    normalised = (c - mean.reshape(shape)) / np.sqrt(var.reshape(shape) + 1e-5)
    want = normalised * bn.weight.numpy().reshape(shape) + bn.bias.numpy().reshape(shape)
    _close(out, np.maximum(want, 0))
    # ONNX's momentum 0.9 is PyTorch's 0.1
    np.testing.assert_allclose(bn.running_mean.numpy(), 0.9 * before + 0.1 * mean, rtol=1e-5)


def test_an_unfrozen_conv_gets_correct_gradients_after_the_plan_ran():
    rng = np.random.default_rng(6)
    model = ft.onnx.load(_conv_bn_model(rng))
    x = rng.standard_normal((2, 3, 6, 6)).astype(np.float32)
    with ft.no_grad():
        model(ft.from_numpy(x))
        model(ft.from_numpy(x))
    model.double()
    conv = next(m for m in model.modules() if isinstance(m, nn.Conv2d))
    conv.weight.requires_grad_()
    x64 = ft.from_numpy(x.astype(np.float64))
    out = model(x64)
    assert out.dtype == ft.float64
    out.sum().backward()
    assert conv.weight.grad is not None and np.abs(conv.weight.grad.numpy()).sum() > 0
    assert gradcheck(lambda w: model(x64), (conv.weight,), fast_mode=True)
    x64.requires_grad_()
    assert gradcheck(lambda x: model(x), (x64,), fast_mode=True)


@pytest.mark.parametrize("name", ["efficientnet_dynamo", "swin_dynamo", "vit_legacy"])
def test_architecture_files_give_the_same_results_through_the_plan(name):
    proto = load_proto(name)
    model = ft.onnx.load(proto)
    x = example_input(proto)
    want = _onnxruntime(proto, x)[0]
    with ft.no_grad():
        first = model(ft.from_numpy(x)).numpy()
        planned = model(ft.from_numpy(x)).numpy()
    scale = float(np.abs(want).max())
    for got in (first, planned):
        np.testing.assert_allclose(got, want, rtol=1e-3, atol=1e-4 * scale)
    np.testing.assert_allclose(planned, _exact(model, x).numpy(), rtol=1e-4, atol=1e-5 * scale)


# -- fused activations ----------------------------------------------------------------------------


def _gelu_nodes(x, y, swap=False, sqrt2=SQRT2, prefix="g"):
    """The legacy exporter's exact GELU; ``swap`` puts each constant first instead."""

    def pair(a, b):
        return [b, a] if swap else [a, b]

    p = prefix
    return [
        _constant(f"{p}_sqrt2", np.array(sqrt2, np.float32)),
        _constant(f"{p}_one", np.array(1.0, np.float32)),
        _constant(f"{p}_half", np.array(0.5, np.float32)),
        helper.make_node("Div", [x, f"{p}_sqrt2"], [f"{p}_d"]),
        helper.make_node("Erf", [f"{p}_d"], [f"{p}_e"]),
        helper.make_node("Add", pair(f"{p}_e", f"{p}_one"), [f"{p}_a"]),
        helper.make_node("Mul", pair(x, f"{p}_a"), [f"{p}_m"]),
        helper.make_node("Mul", pair(f"{p}_m", f"{p}_half"), [y]),
    ]


@pytest.mark.parametrize("swap", [False, True])
def test_gelu_chain_runs_fused(swap):
    nodes = [helper.make_node("MatMul", ["x", "w"], ["h"]), *_gelu_nodes("h", "y", swap)]
    w = np.random.default_rng(7).standard_normal((5, 6)).astype(np.float32)
    proto = _model(nodes, [_tensor("x", ["n", 5])], [_tensor("y", 2)], [_init("w", w)])
    model = ft.onnx.load(proto)
    x = np.random.default_rng(8).standard_normal((3, 5)).astype(np.float32) * 3
    with ft.no_grad():
        model(ft.from_numpy(x))
        got = model(ft.from_numpy(x)).numpy()
    _close(got, _onnxruntime(proto, x)[0])
    _close(got, _exact(model, x).numpy())
    assert "Gelu(fused)" in _planned_ops(model) and "Erf" not in _planned_ops(model)


def test_a_chain_that_only_looks_like_gelu_is_left_alone():
    nodes = _gelu_nodes("x", "y", sqrt2=1.5)
    proto = _model(nodes, [_tensor("x", ["n", 4])], [_tensor("y", 2)])
    model = ft.onnx.load(proto)
    x = np.random.default_rng(9).standard_normal((2, 4)).astype(np.float32)
    with ft.no_grad():
        model(ft.from_numpy(x))
        got = model(ft.from_numpy(x)).numpy()
    _close(got, _onnxruntime(proto, x)[0])
    assert "Erf" in _planned_ops(model)


@pytest.mark.parametrize("gate", ["Sigmoid", "HardSigmoid"])
def test_silu_and_hardswish_chains_run_fused(gate):
    attributes = {"alpha": 1.0 / 6.0, "beta": 0.5} if gate == "HardSigmoid" else {}
    nodes = [
        helper.make_node(gate, ["x"], ["s"], **attributes),
        helper.make_node("Mul", ["s", "x"], ["act"]),  # the gate first: either order matches
        # a squeeze-and-excitation gate multiplies another tensor: not fused
        helper.make_node(gate, ["act"], ["g"], **attributes),
        helper.make_node("Mul", ["x", "g"], ["y"]),
    ]
    proto = _model(nodes, [_tensor("x", ["n", 3, 4])], [_tensor("y", 3)])
    model = ft.onnx.load(proto)
    x = np.random.default_rng(10).standard_normal((2, 3, 4)).astype(np.float32) * 4
    with ft.no_grad():
        model(ft.from_numpy(x))
        got = model(ft.from_numpy(x)).numpy()
    _close(got, _onnxruntime(proto, x)[0])
    _close(got, _exact(model, x).numpy())
    fused = "Silu(fused)" if gate == "Sigmoid" else "HardSwish(fused)"
    assert sorted(_planned_ops(model)) == sorted([fused, gate, "Mul"])


def test_fused_activations_keep_float64():
    nodes = [helper.make_node("Sigmoid", ["x"], ["s"]), helper.make_node("Mul", ["x", "s"], ["y"])]
    model = ft.onnx.load(_model(nodes, [_tensor("x", ["n", 3])], [_tensor("y", 2)]))
    x = np.random.default_rng(11).standard_normal((2, 3))
    with ft.no_grad():
        model(ft.from_numpy(x))
        got = model(ft.from_numpy(x))
    assert got.dtype == ft.float64
    np.testing.assert_allclose(got.numpy(), x / (1 + np.exp(-x)), rtol=1e-12)


# -- when the exact walk runs -------------------------------------------------------------------


@pytest.fixture
def batchnorm_calls(monkeypatch):
    """How many times a BatchNorm2d layer ran its own forward (the plan folds it away)."""
    calls = []
    forward = nn.BatchNorm2d.forward

    def counting(self, x):
        calls.append(1)
        return forward(self, x)

    monkeypatch.setattr(nn.BatchNorm2d, "forward", counting)
    return calls


def test_the_exact_walk_runs_whenever_a_gradient_or_training_needs_it(batchnorm_calls):
    rng = np.random.default_rng(12)
    model = ft.onnx.load(_conv_bn_model(rng))
    x = ft.from_numpy(rng.standard_normal((2, 3, 6, 6)).astype(np.float32))

    def calls(run) -> int:
        batchnorm_calls.clear()
        run()
        return len(batchnorm_calls)

    with ft.no_grad():
        model(x)
        assert calls(lambda: model(x)) == 0  # folded
    assert calls(lambda: model(x)) == 0  # grad enabled, but nothing requires one
    assert calls(lambda: model(ft.from_numpy(x.numpy()).requires_grad_())) == 1
    conv = next(m for m in model.modules() if isinstance(m, nn.Conv2d))
    conv.weight.requires_grad_()
    assert calls(lambda: model(x)) == 1
    with ft.no_grad():
        assert calls(lambda: model(x)) == 0  # no gradient can be needed
    conv.weight.requires_grad_(False)
    model.train()
    with ft.no_grad():
        assert calls(lambda: model(x)) == 1
    model.eval()
    with ft.no_grad():
        assert calls(lambda: model(x)) == 0


def test_export_after_a_planned_forward_has_a_symbolic_batch(tmp_path):
    proto = _shape_chain_model()
    model = ft.onnx.load(proto)
    rng = np.random.default_rng(13)
    x2 = rng.standard_normal((2, 2, 3, 3)).astype(np.float32)
    with ft.no_grad():
        model(ft.from_numpy(x2))
        model(ft.from_numpy(x2))
    path = tmp_path / "out.onnx"
    ft.onnx.export(model, ft.from_numpy(x2), path)
    written = onnx.load(path)
    first = written.graph.input[0].type.tensor_type.shape.dim[0]
    assert first.HasField("dim_param") and not first.HasField("dim_value")
    for batch in (1, 5):
        x = rng.standard_normal((batch, 2, 3, 3)).astype(np.float32)
        _close(_onnxruntime(written, x)[0], _onnxruntime(proto, x)[0])


def test_export_of_a_conv_bn_model_still_writes_the_batchnorm(tmp_path):
    rng = np.random.default_rng(14)
    proto = _conv_bn_model(rng)
    model = ft.onnx.load(proto)
    x = rng.standard_normal((2, 3, 6, 6)).astype(np.float32)
    with ft.no_grad():
        model(ft.from_numpy(x))
        model(ft.from_numpy(x))
    written = ft.onnx.export(model, ft.from_numpy(x), tmp_path / "out.onnx")
    assert "BatchNormalization" in {n.op_type for n in written.graph.node}
    for batch in (1, 4):
        x = rng.standard_normal((batch, 3, 6, 6)).astype(np.float32)
        _close(_onnxruntime(written, x)[0], _onnxruntime(proto, x)[0])


# -- a changed walk rebuilds the plan ---------------------------------------------------------


def _classifier_model(rng) -> onnx.ModelProto:
    nodes = [
        helper.make_node("Relu", ["x"], ["r"]),
        helper.make_node("Gemm", ["r", "w", "b"], ["logits"], transB=1),
        helper.make_node("Softmax", ["logits"], ["y"], axis=1),
    ]
    inits = [
        _init("w", rng.standard_normal((4, 6)).astype(np.float32)),
        _init("b", rng.standard_normal(4).astype(np.float32)),
    ]
    return _model(nodes, [_tensor("x", ["n", 6])], [_tensor("y", 2)], inits)


def test_replacing_the_head_after_a_planned_forward_uses_the_new_head():
    rng = np.random.default_rng(15)
    model = ft.onnx.load(_classifier_model(rng))
    x = ft.from_numpy(rng.standard_normal((3, 6)).astype(np.float32))
    with ft.no_grad():
        model(x)
        assert model(x).shape == (3, 4)
    head = model.replace_head(7)
    model.eval()
    with ft.no_grad():
        got = model(x)
        again = model(x)
    want = np.maximum(x.numpy(), 0) @ head.weight.detach().numpy().T + head.bias.detach().numpy()
    for out in (got, again):
        assert out.shape == (3, 7)
        _close(out.numpy(), want)
    assert model._plan.plan is not None


def test_assigning_a_layer_after_a_planned_forward_uses_it():
    rng = np.random.default_rng(16)
    model = ft.onnx.load(_classifier_model(rng))
    x = ft.from_numpy(rng.standard_normal((3, 6)).astype(np.float32))
    with ft.no_grad():
        model(x)
        model(x)
    name, old = model.find_head()
    parent, _, attribute = name.rpartition(".")
    new = nn.Linear(6, 4).eval()
    setattr(model.get_submodule(parent), attribute, new)
    with ft.no_grad():
        got = model(x).numpy()
    logits = np.maximum(x.numpy(), 0) @ new.weight.detach().numpy().T + new.bias.detach().numpy()
    want = np.exp(logits - logits.max(1, keepdims=True))
    _close(got, want / want.sum(1, keepdims=True))


def test_a_hook_on_a_layer_the_plan_calls_still_runs():
    rng = np.random.default_rng(17)
    model = ft.onnx.load(_classifier_model(rng))
    seen = []
    _, head = model.find_head()
    head.register_forward_pre_hook(lambda module, args: seen.append(args[0].shape))
    x = ft.from_numpy(rng.standard_normal((3, 6)).astype(np.float32))
    with ft.no_grad():
        model(x)
        model(x)
    assert seen == [(3, 6), (3, 6)]


def test_a_hook_on_a_folded_batchnorm_makes_the_plan_step_aside():
    rng = np.random.default_rng(18)
    model = ft.onnx.load(_conv_bn_model(rng))
    x = ft.from_numpy(rng.standard_normal((2, 3, 6, 6)).astype(np.float32))
    with ft.no_grad():
        model(x)
    bn = next(m for m in model.modules() if isinstance(m, nn.BatchNorm2d))
    seen = []
    bn.register_forward_hook(lambda module, args, out: seen.append(out.shape))
    with ft.no_grad():
        model(x)
    assert seen == [(2, 4, 6, 6)]


# -- a frozen backbone under a trainable head -----------------------------------------------------


def test_a_frozen_backbone_under_a_trainable_head_runs_planned(batchnorm_calls):
    """The fine-tuning step of the recipe: eval mode, backbone frozen, new head trainable. The
    backbone runs through the plan (its BatchNorm folded) and the head's gradients are the
    exact walk's."""
    rng = np.random.default_rng(17)
    nodes = [
        helper.make_node("Conv", ["x", "w"], ["c"], pads=[1, 1, 1, 1]),
        helper.make_node("BatchNormalization", ["c", "scale", "shift", "mean", "var"], ["n"]),
        helper.make_node("Relu", ["n"], ["r"]),
        helper.make_node("GlobalAveragePool", ["r"], ["p"]),
        helper.make_node("Flatten", ["p"], ["f"]),
        helper.make_node("Gemm", ["f", "fc_w", "fc_b"], ["y"], transB=1),
    ]
    inits = [
        _init("w", rng.standard_normal((4, 3, 3, 3)).astype(np.float32)),
        _init("scale", rng.uniform(0.5, 1.5, 4).astype(np.float32)),
        _init("shift", rng.standard_normal(4).astype(np.float32)),
        _init("mean", rng.standard_normal(4).astype(np.float32)),
        _init("var", rng.uniform(0.5, 1.5, 4).astype(np.float32)),
        _init("fc_w", rng.standard_normal((5, 4)).astype(np.float32)),
        _init("fc_b", rng.standard_normal(5).astype(np.float32)),
    ]
    model = ft.onnx.load(_model(nodes, [_tensor("x", ["n", 3, 6, 6])], [_tensor("y", 2)], inits))
    head = model.replace_head(2)
    model.eval()
    x = ft.from_numpy(rng.standard_normal((3, 3, 6, 6)).astype(np.float32))

    def head_grads(run):
        head.zero_grad()
        batchnorm_calls.clear()
        run().sum().backward()
        return head.weight.grad.numpy().copy(), len(batchnorm_calls)

    planned, calls = head_grads(lambda: model(x))
    assert calls == 0 and model._plan.plan is not None  # folded into the convolution
    exact, calls = head_grads(lambda: _exact(model, x.numpy()))
    assert calls == 1
    _close(planned, exact)


def test_a_fused_gelu_whose_input_needs_a_gradient_runs_its_nodes(monkeypatch):
    """An unfrozen layer before a fused GELU: the chain's own nodes run (not ``F.gelu``), and
    the layer's gradient is the analytic one."""
    from finetune.onnx import plan as plan_module

    fused_calls = []
    gelu = plan_module.F.gelu
    monkeypatch.setattr(plan_module.F, "gelu", lambda x: fused_calls.append(1) or gelu(x))
    nodes = [helper.make_node("MatMul", ["x", "w"], ["h"]), *_gelu_nodes("h", "y")]
    w = np.random.default_rng(18).standard_normal((4, 3)).astype(np.float32)
    proto = _model(nodes, [_tensor("x", ["n", 4])], [_tensor("y", 2)], [_init("w", w)])
    model = ft.onnx.load(proto).double()
    x = np.random.default_rng(19).standard_normal((2, 4))
    with ft.no_grad():
        model(ft.from_numpy(x))
        model(ft.from_numpy(x))
    assert fused_calls and "Gelu(fused)" in _planned_ops(model)
    layer = next(m for m in model.modules() if isinstance(m, nn.Linear))
    layer.weight.requires_grad_()
    fused_calls.clear()
    model(ft.from_numpy(x)).sum().backward()
    assert not fused_calls
    h = x @ layer.weight.detach().numpy().T
    s = float(np.float32(SQRT2))  # the file's constant, in float32
    erf = np.vectorize(math.erf)(h / s)
    slope = 0.5 * (1 + erf) + h * np.exp(-((h / s) ** 2)) / (s * math.sqrt(math.pi))
    np.testing.assert_allclose(layer.weight.grad.numpy(), slope.T @ x, rtol=1e-10)


def test_a_copy_of_a_planned_model_starts_without_its_plan():
    import copy

    rng = np.random.default_rng(20)
    model = ft.onnx.load(_conv_bn_model(rng))
    x = ft.from_numpy(rng.standard_normal((2, 3, 6, 6)).astype(np.float32))
    with ft.no_grad():
        model(x)
        want = model(x).numpy()
    assert model._plan.plan is not None
    clone = copy.deepcopy(model)
    assert clone._plan.plan is None
    with ft.no_grad():
        np.testing.assert_array_equal(clone(x).numpy(), want)
    assert clone._plan.plan is not None and clone._plan.plan is not model._plan.plan


# -- an activation in its convolution's output pass ----------------------------------------------

# the activation's nodes reading "c" and writing "y", and the opset they need
ACTIVATIONS = {
    "Relu": (lambda: [helper.make_node("Relu", ["c"], ["y"])], 17),
    "Clip": (
        lambda: [
            _constant("lo", np.float32(0)),
            _constant("hi", np.float32(6)),
            helper.make_node("Clip", ["c", "lo", "hi"], ["y"]),
        ],
        17,
    ),
    "Clip-min-only": (
        lambda: [_constant("lo", np.float32(-0.5)), helper.make_node("Clip", ["c", "lo"], ["y"])],
        17,
    ),
    "Clip-opset6": (lambda: [helper.make_node("Clip", ["c"], ["y"], min=-1.0, max=1.5)], 6),
    "HardSwish": (lambda: [helper.make_node("HardSwish", ["c"], ["y"])], 17),
    "Sigmoid": (lambda: [helper.make_node("Sigmoid", ["c"], ["y"])], 17),  # an SE block's gate
    "HardSigmoid": (
        lambda: [helper.make_node("HardSigmoid", ["c"], ["y"], alpha=0.3, beta=0.4)],
        17,
    ),
    "HardSigmoid-defaults": (lambda: [helper.make_node("HardSigmoid", ["c"], ["y"])], 6),
    "Silu(fused)": (
        lambda: [
            helper.make_node("Sigmoid", ["c"], ["s"]),
            helper.make_node("Mul", ["c", "s"], ["y"]),
        ],
        17,
    ),
    "HardSwish(fused)": (
        lambda: [
            helper.make_node("HardSigmoid", ["c"], ["s"], alpha=1.0 / 6.0, beta=0.5),
            helper.make_node("Mul", ["s", "c"], ["y"]),
        ],
        17,
    ),
}
# name: (input channels, weight shape, Conv attributes, with a BatchNormalization after it)
CONVOLUTIONS = {
    "3x3": (3, (5, 3, 3, 3), dict(pads=[1, 1, 1, 1]), False),
    "1x1": (4, (6, 4, 1, 1), {}, False),
    "depthwise-stride2": (4, (4, 1, 3, 3), dict(pads=[1, 1, 1, 1], strides=[2, 2], group=4), False),
    "grouped": (4, (6, 2, 3, 3), dict(pads=[0, 1, 1, 0], group=2), False),
    "same-upper-stride2": (4, (6, 4, 3, 3), dict(auto_pad="SAME_UPPER", strides=[2, 2]), False),
    "3x3+BatchNormalization": (3, (5, 3, 3, 3), dict(pads=[1, 1, 1, 1]), True),
    "winograd": (64, (64, 64, 3, 3), dict(pads=[1, 1, 1, 1]), False),
    "7x7-stride2-per-sample": (3, (4, 3, 7, 7), dict(pads=[3, 3, 3, 3], strides=[2, 2]), False),
}


def _conv_activation_model(conv: str, act: str, rng, size=(7, 6)) -> tuple:
    """x -> Conv (-> BatchNormalization) -> activation -> y; and the fused unit's op type."""
    c, shape, attributes, with_bn = CONVOLUTIONS[conv]
    nodes_of, opset = ACTIVATIONS[act]
    o = shape[0]
    fan_in = math.prod(shape[1:])  # values of a few units before the activation
    inits = [_init("w", (rng.standard_normal(shape) / math.sqrt(fan_in)).astype(np.float32))]
    inits.append(_init("b", rng.standard_normal(o).astype(np.float32)))
    nodes = [helper.make_node("Conv", ["x", "w", "b"], ["c0" if with_bn else "c"], **attributes)]
    if with_bn:
        inits += [
            _init("scale", rng.uniform(0.5, 1.5, o).astype(np.float32)),
            _init("shift", rng.standard_normal(o).astype(np.float32)),
            _init("mean", rng.standard_normal(o).astype(np.float32)),
            _init("var", rng.uniform(0.5, 1.5, o).astype(np.float32)),
        ]
        bn_inputs = ["c0", "scale", "shift", "mean", "var"]
        nodes.append(helper.make_node("BatchNormalization", bn_inputs, ["c"], epsilon=1e-5))
    nodes += nodes_of()
    proto = _model(
        nodes, [_tensor("x", ["n", c, *size])], [_tensor("y", 4)], inits, opset=max(opset, 9)
    )
    base = "Conv+BatchNormalization" if with_bn else "Conv"
    op = act.split("-")[0]
    return proto, f"{base}+{op}"


@pytest.mark.parametrize(
    "conv, jit",
    # the depthwise forward also without its compiled kernel (autograd/jit.py)
    [(conv, "default") for conv in CONVOLUTIONS] + [("depthwise-stride2", "numpy")],
)
@pytest.mark.parametrize("act", ACTIVATIONS)
def test_an_activation_runs_in_its_convolutions_output_pass(conv, jit, act, monkeypatch):
    from finetune.autograd import conv as kernels
    from finetune.autograd import jit as compiled

    if jit == "numpy":
        monkeypatch.setattr(compiled, "ENABLED", False)
    rng = np.random.default_rng(30)
    size = (40, 36) if "per-sample" in conv else (7, 6)
    proto, fused = _conv_activation_model(conv, act, rng, size)
    model = ft.onnx.load(proto)
    x = (rng.standard_normal((2, CONVOLUTIONS[conv][0], *size)) * 3).astype(np.float32)
    plan = kernels.ConvPlan(x.shape, CONVOLUTIONS[conv][1], (1, 1), ((1, 1), (1, 1)), (1, 1), 1)
    assert bool(plan.winograd) == (conv == "winograd")
    with ft.no_grad():
        model(ft.from_numpy(x))
        got = model(ft.from_numpy(x)).numpy()
    assert _planned_ops(model) == [fused]
    _close(got, _onnxruntime(proto, x)[0])
    _close(got, _exact(model, x).numpy())


@pytest.mark.parametrize("conv", list(CONVOLUTIONS))
def test_frozen_convolutions_run_straight_on_the_kernels_with_the_layers_values(conv, monkeypatch):
    """Each planned convolution calls the kernels directly (``FrozenConvolution``), and gives
    exactly what its layers' own calls give."""
    from finetune.autograd import conv as kernels
    from finetune.nn.fusion import FrozenConvolution

    rng = np.random.default_rng(34)
    size = (40, 36) if "per-sample" in conv else (7, 6)
    proto, _ = _conv_activation_model(conv, "Relu", rng, size)
    model = ft.onnx.load(proto)
    x = ft.from_numpy(rng.standard_normal((2, CONVOLUTIONS[conv][0], *size)).astype(np.float32))
    direct = []
    infer = kernels.infer
    monkeypatch.setattr(kernels, "infer", lambda *a, **k: direct.append(1) or infer(*a, **k))
    with ft.no_grad():
        got = model(x).numpy()
        assert direct == [1]
        monkeypatch.setattr(FrozenConvolution, "_direct", lambda self, x: False)
        layers = model(x).numpy()
    assert direct == [1]
    np.testing.assert_array_equal(got, layers)


def test_a_convolution_read_twice_keeps_its_activation_apart():
    rng = np.random.default_rng(31)
    w = rng.standard_normal((4, 3, 3, 3)).astype(np.float32)
    nodes = [
        helper.make_node("Conv", ["x", "w"], ["c"], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c"], ["r"]),
        helper.make_node("Add", ["r", "c"], ["y"]),  # the convolution's output read again
        helper.make_node("Conv", ["x", "w"], ["z"], pads=[1, 1, 1, 1]),  # a graph output
        helper.make_node("Relu", ["z"], ["zr"]),
    ]
    proto = _model(
        nodes,
        [_tensor("x", ["n", 3, 5, 5])],
        [_tensor("y", 4), _tensor("z", 4), _tensor("zr", 4)],
        [_init("w", w)],
    )
    model = ft.onnx.load(proto)
    x = rng.standard_normal((2, 3, 5, 5)).astype(np.float32)
    with ft.no_grad():
        model(ft.from_numpy(x))
        got = [t.numpy() for t in model(ft.from_numpy(x))]
    assert sorted(_planned_ops(model)) == sorted(["Conv", "Relu", "Add", "Conv", "Relu"])
    for g, want in zip(got, _onnxruntime(proto, x)):
        _close(g, want)


def test_a_hook_on_a_convolution_with_an_activation_sees_its_own_output():
    rng = np.random.default_rng(32)
    proto, _ = _conv_activation_model("3x3", "Relu", rng)
    model = ft.onnx.load(proto)
    x = ft.from_numpy(rng.standard_normal((2, 3, 7, 6)).astype(np.float32))
    with ft.no_grad():
        model(x)
    conv = next(m for m in model.modules() if isinstance(m, nn.Conv2d))
    seen = []
    conv.register_forward_hook(lambda module, args, out: seen.append(out.numpy().min()))
    with ft.no_grad():
        got = model(x).numpy()
    assert seen and seen[0] < 0  # before the ReLU
    assert got.min() >= 0


@pytest.mark.parametrize("conv", ["3x3", "3x3+BatchNormalization"])
def test_an_unfrozen_convolution_before_an_activation_gets_the_walks_gradients(conv):
    rng = np.random.default_rng(33)
    proto, fused = _conv_activation_model(conv, "Silu(fused)", rng)
    model = ft.onnx.load(proto).double()
    x = rng.standard_normal((2, 3, 7, 6))
    with ft.no_grad():
        model(ft.from_numpy(x))
        model(ft.from_numpy(x))
    assert _planned_ops(model) == [fused]
    conv = next(m for m in model.modules() if isinstance(m, nn.Conv2d))
    conv.weight.requires_grad_()

    def weight_grad(run):
        conv.weight.grad = None
        run().sum().backward()
        return conv.weight.grad.numpy().copy()

    planned = weight_grad(lambda: model(ft.from_numpy(x)))
    assert model._plan.plan is not None
    _close(planned, weight_grad(lambda: _exact(model, x)))
    # a trainable weight swapped in for a frozen one after the plan was built is seen too
    conv.weight.requires_grad_(False)
    conv.weight = nn.Parameter(conv.weight.detach() * 2)
    planned = weight_grad(lambda: model(ft.from_numpy(x)))
    _close(planned, weight_grad(lambda: _exact(model, x)))


def test_a_convolution_refuses_an_epilogue_when_a_gradient_is_needed():
    from finetune.autograd import conv as kernels

    x = ft.randn(1, 2, 4, 4, requires_grad=True)
    w = ft.randn(3, 2, 3, 3)
    with kernels.epilogue(lambda block: None), pytest.raises(RuntimeError, match="inference"):
        kernels.conv(x, w, None, padding=((1, 1), (1, 1)))


def _batch_norm_activation_model(rng, act: str, channels=5) -> onnx.ModelProto:
    """x, x -> Concat -> BatchNormalization -> activation -> y: DenseNet's pre-activation,
    a BatchNorm no convolution precedes."""
    c = 2 * channels
    inits = [
        _init("scale", rng.uniform(0.5, 1.5, c).astype(np.float32)),
        _init("shift", rng.standard_normal(c).astype(np.float32)),
        _init("mean", rng.standard_normal(c).astype(np.float32)),
        _init("var", rng.uniform(0.5, 1.5, c).astype(np.float32)),
    ]
    nodes = [
        helper.make_node("Concat", ["x", "x"], ["cat"], axis=1),
        helper.make_node("BatchNormalization", ["cat", "scale", "shift", "mean", "var"], ["c"]),
        *ACTIVATIONS[act][0](),
    ]
    return _model(nodes, [_tensor("x", ["n", channels, 6, 7])], [_tensor("y", 4)], inits)


@pytest.mark.parametrize("act", ["Relu", "Clip", "HardSwish"])
def test_a_batchnorm_and_its_activation_run_as_one_pass(act):
    rng = np.random.default_rng(35)
    proto = _batch_norm_activation_model(rng, act)
    model = ft.onnx.load(proto)
    x = (rng.standard_normal((2, 5, 6, 7)) * 3).astype(np.float32)
    with ft.no_grad():
        model(ft.from_numpy(x))
        got = model(ft.from_numpy(x)).numpy()
    assert _planned_ops(model) == ["Concat", f"BatchNormalization+{act}"]
    _close(got, _onnxruntime(proto, x)[0])
    np.testing.assert_array_equal(got, _exact(model, x).numpy())  # the same passes, in order


def test_a_batchnorm_in_training_or_with_a_hook_runs_its_layers_after_the_plan_ran():
    rng = np.random.default_rng(36)
    proto = _batch_norm_activation_model(rng, "Relu")
    model = ft.onnx.load(proto)
    x = ft.from_numpy(rng.standard_normal((2, 5, 6, 7)).astype(np.float32))
    with ft.no_grad():
        model(x)
    bn = next(m for m in model.modules() if isinstance(m, nn.BatchNorm2d))
    seen = []
    handle = bn.register_forward_hook(lambda module, args, out: seen.append(out.numpy().min()))
    with ft.no_grad():
        got = model(x).numpy()
    assert seen and seen[0] < 0 and got.min() >= 0  # the hook saw the BatchNorm's own output
    handle.remove()
    bn.train()  # batch statistics: the running ones move
    before = bn.running_mean.numpy().copy()
    with ft.no_grad():
        model(x)
    assert not np.array_equal(bn.running_mean.numpy(), before)


def test_planned_inference_loads_the_compiled_kernels_and_a_frozen_step_does_not(monkeypatch):
    """``jit.load`` (numba, for the compiled passes around the products) is for inference with
    gradients off; a frozen backbone's training step runs the plan too, and must not pay its
    memory."""
    from finetune.autograd import jit
    from finetune.onnx.plan import Plan

    loads, runs, run = [], [], Plan.run
    monkeypatch.setattr(jit, "load", lambda: loads.append(1))
    monkeypatch.setattr(Plan, "run", lambda *a: runs.append(1) or run(*a))
    rng = np.random.default_rng(16)
    model = ft.onnx.load(_classifier_model(rng))
    model.eval()
    head = model.replace_head(2)
    x = ft.from_numpy(rng.standard_normal((3, 6)).astype(np.float32))
    nn.functional.cross_entropy(model(x), ft.tensor([0, 1, 1])).backward()
    assert head.weight.grad is not None and runs == [1]  # the step ran planned
    assert loads == []
    with ft.no_grad():
        model(x)
    assert loads == [1]


def _squeeze_excite_model(rng, c=6, o=4, size=5, gate_first=True) -> onnx.ModelProto:
    """x -> Conv 3x3 -> y; y * sigmoid(Conv 1x1(GlobalAveragePool(y))) -> Conv 1x1 -> BN -> z,
    squeeze-and-excitation before a projection (the gate's operand order as asked)."""
    f32 = np.float32
    inits = [
        _init("w", rng.standard_normal((c, 3, 3, 3)).astype(f32)),
        _init("se_w", rng.standard_normal((c, c, 1, 1)).astype(f32)),
        _init("se_b", rng.standard_normal(c).astype(f32)),
        _init("p_w", rng.standard_normal((o, c, 1, 1)).astype(f32)),
        _init("scale", rng.uniform(0.5, 1.5, o).astype(f32)),
        _init("shift", rng.standard_normal(o).astype(f32)),
        _init("mean", rng.standard_normal(o).astype(f32)),
        _init("var", rng.uniform(0.5, 1.5, o).astype(f32)),
    ]
    nodes = [
        helper.make_node("Conv", ["x", "w"], ["y"], pads=[1, 1, 1, 1]),
        helper.make_node("GlobalAveragePool", ["y"], ["pooled"]),
        helper.make_node("Conv", ["pooled", "se_w", "se_b"], ["logits"]),
        helper.make_node("Sigmoid", ["logits"], ["gate"]),
        helper.make_node("Mul", ["gate", "y"] if gate_first else ["y", "gate"], ["gated"]),
        helper.make_node("Conv", ["gated", "p_w"], ["p"]),
        helper.make_node(
            "BatchNormalization", ["p", "scale", "shift", "mean", "var"], ["z"], epsilon=1e-5
        ),
    ]
    inputs = [_tensor("x", ["n", 3, size, size])]
    return _model(nodes, inputs, [_tensor("z", 4)], inits)


@pytest.mark.parametrize("gate_first", [True, False])
@pytest.mark.parametrize("size", [5, 1])  # 1x1 pixels: the weights are larger, x * gate runs
@pytest.mark.parametrize("shared", [False, True])  # the samples' products on two threads
def test_a_gate_before_a_projection_scales_its_weights(
    monkeypatch, request, gate_first, size, shared
):
    from finetune import parallel
    from finetune.nn.fusion import GatedConvolution

    if shared:
        monkeypatch.setattr(parallel, "MIN_WORK_PER_THREAD", 1)
        request.addfinalizer(functools.partial(ft.set_num_threads, ft.get_num_threads()))
        ft.set_num_threads(2)
    direct, state = [], GatedConvolution._state
    monkeypatch.setattr(
        GatedConvolution, "_state", lambda *a: direct.append(state(*a) is not None) or state(*a)
    )
    rng = np.random.default_rng(17)
    proto = _squeeze_excite_model(rng, size=size, gate_first=gate_first)
    model = ft.onnx.load(proto)
    model.eval()
    x = rng.standard_normal((3, 3, size, size)).astype(np.float32)
    with ft.no_grad():
        got = model(ft.from_numpy(x))
    assert "Mul+Conv+BatchNormalization" in _planned_ops(model)
    assert direct == [size > 1]  # in the weights, unless they outnumber a sample's pixels
    _close(got.numpy(), _onnxruntime(proto, x)[0])


def test_a_gated_projection_gives_the_walks_gradients():
    """With the input needing a gradient the fused unit runs its two nodes: the gradient is
    the exact walk's."""
    rng = np.random.default_rng(18)
    model = ft.onnx.load(_squeeze_excite_model(rng))
    model.eval()
    x = rng.standard_normal((2, 3, 5, 5))
    with ft.no_grad():
        model(ft.from_numpy(x.astype(np.float32)))  # the plan is built and used once
    model.double()
    planned = ft.tensor(x, requires_grad=True)
    model(planned).sum().backward()
    walked = ft.tensor(x, requires_grad=True)
    out = model._walk(model._bind_inputs((walked,)))[0]
    out.sum().backward()
    np.testing.assert_allclose(planned.grad.numpy(), walked.grad.numpy(), rtol=1e-10)
    assert gradcheck(model, (ft.tensor(x[:1], requires_grad=True),))


def _residual_model(
    conv: str, act: str | None, skip_first: bool, rng, size=(7, 6), free_skip=False
) -> tuple:
    """x -> Conv (-> BatchNormalization) -> c; skip + c or c + skip (the order asked) ->
    activation (or none) -> y, the skip a second input of the convolution's output shape;
    and that shape."""
    proto, _ = _conv_activation_model(conv, "Relu", rng, size)
    c, shape = CONVOLUTIONS[conv][:2]
    x = np.zeros((2, c, *size), np.float32)
    out_shape = _onnxruntime(proto, x)[0].shape
    graph = proto.graph
    nodes = [n for n in graph.node if n.op_type != "Relu"]  # ... -> c
    summed = "y" if act is None else "sum"
    nodes.append(helper.make_node("Add", ["skip", "c"] if skip_first else ["c", "skip"], [summed]))
    opset = 17
    if act is not None:
        act_nodes, opset = ACTIVATIONS[act]
        for node in act_nodes():
            node.input[:] = ["sum" if name == "c" else name for name in node.input]
            nodes.append(node)
    inputs = [*graph.input, _tensor("skip", 4 if free_skip else ["n", *out_shape[1:]])]
    outputs = [_tensor("y", 4)]
    return _model(nodes, inputs, outputs, graph.initializer, opset=max(opset, 9)), out_shape


def _counted_residuals(monkeypatch) -> list:
    """The residuals the kernels are handed (``conv.infer``'s), appended as they come."""
    from finetune.autograd import conv as kernels

    seen, infer = [], kernels.infer

    def counted(*args, **kwargs):
        seen.append(args[5] if len(args) > 5 else kwargs.get("residual"))
        return infer(*args, **kwargs)

    monkeypatch.setattr(kernels, "infer", counted)
    return seen


@pytest.mark.parametrize("layout", ["channels_last", "contiguous"])
@pytest.mark.parametrize("act", [None, "Relu"])
@pytest.mark.parametrize("conv", list(CONVOLUTIONS))
def test_a_skip_connection_and_its_activation_run_in_the_convolutions_output_pass(
    conv, act, layout, monkeypatch
):
    """``act(conv(x) + s)`` is one unit, the sum and the activation in the convolution's last
    pass (compiled for a channels-last skip, numpy's for another layout), against
    onnxruntime and the node-by-node walk."""
    rng = np.random.default_rng(40)
    size = (40, 36) if "per-sample" in conv else (7, 6)
    proto, out_shape = _residual_model(conv, act, skip_first=False, rng=rng, size=size)
    model = ft.onnx.load(proto)
    x = (rng.standard_normal((2, CONVOLUTIONS[conv][0], *size)) * 3).astype(np.float32)
    s = rng.standard_normal(out_shape).astype(np.float32)
    skip = ft.from_numpy(s)
    if layout == "channels_last":
        skip = skip.contiguous(memory_format=ft.channels_last)
    residuals = _counted_residuals(monkeypatch)
    with ft.no_grad():
        model(ft.from_numpy(x), skip)
        got = model(ft.from_numpy(x), skip).numpy()
    base = "Conv+BatchNormalization" if CONVOLUTIONS[conv][3] else "Conv"
    assert _planned_ops(model) == [f"{base}+Add" + (f"+{act}" if act else "")]
    assert len(residuals) == 2 and all(r is skip._data for r in residuals)
    _close(got, _onnxruntime(proto, x, s)[0])
    _close(got, _exact(model, x, s).numpy())


@pytest.mark.parametrize("act", list(ACTIVATIONS))
def test_every_activation_rides_after_the_skip_connection(act):
    rng = np.random.default_rng(41)
    proto, out_shape = _residual_model("1x1", act, skip_first=True, rng=rng)
    model = ft.onnx.load(proto)
    x = (rng.standard_normal((2, 4, 7, 6)) * 3).astype(np.float32)
    s = ft.from_numpy(rng.standard_normal(out_shape).astype(np.float32))
    s = s.contiguous(memory_format=ft.channels_last)
    with ft.no_grad():
        got = model(ft.from_numpy(x), s).numpy()
    assert _planned_ops(model)[-1].startswith("Conv+Add+")
    _close(got, _onnxruntime(proto, x, s.numpy())[0])


def test_a_skip_that_broadcasts_runs_the_add_node(monkeypatch):
    """A skip of another shape (the Add broadcasts it): the nodes run in turn."""
    rng = np.random.default_rng(42)
    proto, out_shape = _residual_model("3x3+BatchNormalization", "Relu", True, rng, free_skip=True)
    model = ft.onnx.load(proto)
    x = rng.standard_normal((2, 3, 7, 6)).astype(np.float32)
    s = rng.standard_normal((1, out_shape[1], 1, 1)).astype(np.float32)
    residuals = _counted_residuals(monkeypatch)
    with ft.no_grad():
        got = model(ft.from_numpy(x), ft.from_numpy(s)).numpy()
    assert residuals == [None]  # the convolution alone, then the Add and the Relu nodes
    _close(got, _onnxruntime(proto, x, s)[0])


def test_a_skip_connection_gives_the_walks_gradients():
    """With the skip or the input needing a gradient the fused unit runs its nodes: the
    gradients are the exact walk's, and gradcheck passes through the plan."""
    rng = np.random.default_rng(43)
    proto, out_shape = _residual_model("3x3+BatchNormalization", "Relu", False, rng)
    model = ft.onnx.load(proto)
    model.eval()
    x = rng.standard_normal((2, 3, 7, 6))
    s = rng.standard_normal(out_shape)
    with ft.no_grad():
        model(ft.from_numpy(x.astype(np.float32)), ft.from_numpy(s.astype(np.float32)))
    model.double()
    planned = [ft.tensor(x, requires_grad=True), ft.tensor(s, requires_grad=True)]
    model(*planned).sum().backward()
    walked = [ft.tensor(x, requires_grad=True), ft.tensor(s, requires_grad=True)]
    model._walk(model._bind_inputs(tuple(walked)))[0].sum().backward()
    for a, b in zip(planned, walked):
        np.testing.assert_allclose(a.grad.numpy(), b.grad.numpy(), rtol=1e-10)
    inputs = (ft.tensor(x[:1], requires_grad=True), ft.tensor(s[:1], requires_grad=True))
    assert gradcheck(model, inputs)


def test_a_convolution_read_twice_adds_its_skip_apart():
    """The convolution's output read by the Add and by another node, or the sum a graph
    output read by the activation too: nothing fuses that would lose a value."""
    rng = np.random.default_rng(44)
    w = rng.standard_normal((3, 3, 3, 3)).astype(np.float32)
    nodes = [
        helper.make_node("Conv", ["x", "w"], ["c"], pads=[1, 1, 1, 1]),
        helper.make_node("Add", ["c", "x"], ["sum"]),
        helper.make_node("Mul", ["c", "x"], ["twice"]),  # the convolution's output again
        helper.make_node("Conv", ["x", "w"], ["d"], pads=[1, 1, 1, 1]),
        helper.make_node("Add", ["x", "d"], ["out"]),  # a graph output, read by the Relu too
        helper.make_node("Relu", ["out"], ["r"]),
    ]
    outputs = [_tensor(n, 4) for n in ("sum", "twice", "out", "r")]
    proto = _model(nodes, [_tensor("x", ["n", 3, 5, 5])], outputs, [_init("w", w)])
    model = ft.onnx.load(proto)
    x = rng.standard_normal((2, 3, 5, 5)).astype(np.float32)
    with ft.no_grad():
        got = model(ft.from_numpy(x))
    ops = _planned_ops(model)
    assert ops.count("Conv+Add") == 1 and "Relu" in ops and "Add" in ops
    for a, b in zip(got, _onnxruntime(proto, x)):
        _close(a.numpy(), b)


@pytest.mark.parametrize("size", [5, 1])  # 1x1 pixels: the gate stays out of the weights
def test_a_skip_connection_rides_in_a_gated_projection(size, monkeypatch):
    """EfficientNet's and RegNetY's blocks: squeeze-and-excitation, the projection, the skip
    and a ReLU, one unit."""
    from finetune.nn.fusion import GatedConvolution

    calls, original = [], GatedConvolution.fused

    def fused(self, *args, **kwargs):
        out = original(self, *args, **kwargs)
        calls.append((kwargs.get("residual") is not None, out is not None))
        return out

    monkeypatch.setattr(GatedConvolution, "fused", fused)
    rng = np.random.default_rng(45)
    se = _squeeze_excite_model(rng, size=size)
    nodes = [*se.graph.node, helper.make_node("Add", ["z", "skip"], ["sum"])]
    nodes.append(helper.make_node("Relu", ["sum"], ["out"]))
    inputs = [*se.graph.input, _tensor("skip", ["n", 4, size, size])]
    proto = _model(nodes, inputs, [_tensor("out", 4)], se.graph.initializer)
    model = ft.onnx.load(proto)
    x = rng.standard_normal((3, 3, size, size)).astype(np.float32)
    skip = rng.standard_normal((3, 4, size, size)).astype(np.float32)
    last = ft.from_numpy(skip).contiguous(memory_format=ft.channels_last)
    with ft.no_grad():
        got = model(ft.from_numpy(x), last)
    assert _planned_ops(model)[-1] == "Mul+Conv+BatchNormalization+Add+Relu"
    if size > 1:
        assert calls == [(True, True)]  # with the skip, in one pass
    else:  # the gate stays out of the weights: declined with the skip and without it
        assert calls == [(True, False), (False, False)]
    _close(got.numpy(), _onnxruntime(proto, x, skip)[0])
