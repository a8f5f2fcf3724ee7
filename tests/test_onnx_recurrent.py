"""ONNX LSTM, GRU and RNN against onnxruntime: every direction, layout, initial states,
sequence_lens, clip, activations, peepholes, input_forget and linear_before_reset; the module
path (constant weights become nn.LSTM/nn.GRU/nn.RNN), backward through time with gradcheck in
float64, old opsets, and the errors for inconsistent sizes."""

from __future__ import annotations

import numpy as np
import pytest
from onnx import TensorProto, helper
from onnx_builders import initializer, make_model, run_onnxruntime, value_info

import finetune as ft
from finetune import nn
from finetune.autograd import gradcheck
from finetune.errors import OnnxImportError

GATES = {"LSTM": 4, "GRU": 3, "RNN": 1}
INPUTS = ("X", "W", "R", "B", "sequence_lens", "initial_h", "initial_c", "P")


def build(
    op,
    *,
    steps=4,
    batch=3,
    features=2,
    hidden=3,
    direction="forward",
    layout=0,
    opset=22,
    use=(),
    constant=("W", "R", "B"),
    lengths=None,
    dtype=np.float32,
    seed=0,
    **attributes,
):
    """One recurrent node: X, W, R and the optional inputs in ``use``; those in ``constant`` are
    initializers, the rest graph inputs. Returns (model, graph input arrays in order)."""
    rng = np.random.default_rng(seed)
    d = 2 if direction == "bidirectional" else 1
    g = GATES[op]
    state = (batch, d, hidden) if layout else (d, batch, hidden)
    shapes = {
        "X": (batch, steps, features) if layout else (steps, batch, features),
        "W": (d, g * hidden, features),
        "R": (d, g * hidden, hidden),
        "B": (d, 2 * g * hidden),
        "initial_h": state,
        "initial_c": state,
        "P": (d, 3 * hidden),
    }
    values = {n: (rng.standard_normal(s) * 0.8).astype(dtype) for n, s in shapes.items()}
    values["sequence_lens"] = np.array(
        lengths if lengths is not None else [steps] * batch, np.int32
    )
    present = [n for n in INPUTS if n in ("X", "W", "R") or n in use]
    last = max(INPUTS.index(n) for n in present)
    names = [n if n in present else "" for n in INPUTS[: last + 1]]
    outputs = ["Y", "Y_h", "Y_c"] if op == "LSTM" else ["Y", "Y_h"]
    if layout:
        attributes["layout"] = layout
    node = helper.make_node(
        op,
        names,
        outputs,
        name=f"{op.lower()}_1",
        hidden_size=hidden,
        direction=direction,
        **attributes,
    )
    elem = helper.np_dtype_to_tensor_dtype(np.dtype(dtype))
    graph_inputs, feeds, inits = [], [], []
    for n in present:
        if n in constant:
            inits.append(initializer(n, values[n]))
        else:
            kind = TensorProto.INT32 if n == "sequence_lens" else elem
            graph_inputs.append(value_info(n, list(values[n].shape), kind))
            feeds.append(values[n])
    if opset < 7:  # shape inference does not type the outputs of the opset 1 schemas
        ranks = {"Y": ["s", "d", "b", "h"], "Y_h": ["d", "b", "h"], "Y_c": ["d", "b", "h"]}
        outs = [helper.make_tensor_value_info(o, elem, ranks[o]) for o in outputs]
    else:
        outs = [helper.make_empty_tensor_value_info(o) for o in outputs]
    return make_model([node], graph_inputs, outs, inits, opset=opset), feeds


def ours(model, feeds):
    out = ft.onnx.load(model)(*feeds)
    return [o.numpy() for o in (out if isinstance(out, tuple) else (out,))]


def check_against_onnxruntime(model, feeds, rtol=1e-5, atol=1e-5):
    expected = run_onnxruntime(model, *feeds)
    got = ours(model, feeds)
    assert len(got) == len(expected)
    for g, e in zip(got, expected):
        assert g.dtype == e.dtype and g.shape == e.shape
        np.testing.assert_allclose(g, e, rtol=rtol, atol=atol)
    return got


def modules_of(model, kind):
    return [m for m in ft.onnx.load(model).modules() if isinstance(m, kind)]


# (id, op, build arguments); each is checked against onnxruntime
CASES = [
    ("lstm_default", "LSTM", {}),
    (
        "lstm_bidirectional_states",
        "LSTM",
        {"direction": "bidirectional", "use": ("B", "initial_h", "initial_c")},
    ),
    (
        "lstm_reverse_lengths",
        "LSTM",
        {"direction": "reverse", "use": ("B", "sequence_lens"), "lengths": [2, 4, 1]},
    ),
    (
        "lstm_bidirectional_lengths_zero",
        "LSTM",
        {
            "direction": "bidirectional",
            "use": ("B", "sequence_lens", "initial_h", "initial_c"),
            "lengths": [3, 0, 2],
        },
    ),
    (
        "lstm_functional_weights",
        "LSTM",
        {"direction": "bidirectional", "use": ("B", "initial_h"), "constant": ()},
    ),
    ("lstm_peepholes_clip", "LSTM", {"use": ("B", "initial_h", "initial_c", "P"), "clip": 0.7}),
    (
        "lstm_input_forget",
        "LSTM",
        {"direction": "bidirectional", "use": ("B", "P"), "input_forget": 1},
    ),
    (
        "lstm_activations",
        "LSTM",
        {
            "direction": "bidirectional",
            "use": ("B",),
            "activations": [
                "HardSigmoid",
                "Elu",
                "Softsign",
                "LeakyRelu",
                "ScaledTanh",
                "Softplus",
            ],
            "activation_alpha": [0.3, 0.8, 0.05, 1.5],
            "activation_beta": [0.4, 0.7],
        },
    ),
    ("lstm_swapped_activations", "LSTM", {"activations": ["Tanh", "Sigmoid", "Sigmoid"]}),
    ("lstm_opset7", "LSTM", {"opset": 7, "use": ("B", "sequence_lens"), "lengths": [1, 4, 3]}),
    ("lstm_opset14", "LSTM", {"opset": 14, "direction": "reverse", "use": ("B", "initial_h")}),
    ("gru_default", "GRU", {}),
    (
        "gru_linear_before_reset",
        "GRU",
        {"direction": "bidirectional", "use": ("B", "initial_h"), "linear_before_reset": 1},
    ),
    (
        "gru_reverse_lengths",
        "GRU",
        {"direction": "reverse", "use": ("B", "sequence_lens", "initial_h"), "lengths": [4, 2, 3]},
    ),
    (
        "gru_functional_lengths",
        "GRU",
        {
            "direction": "bidirectional",
            "use": ("B", "sequence_lens"),
            "constant": ("R",),
            "lengths": [1, 3, 4],
            "linear_before_reset": 1,
        },
    ),
    (
        "gru_activations_clip",
        "GRU",
        {
            "direction": "bidirectional",
            "use": ("B",),
            "clip": 1.2,
            "activations": ["Sigmoid", "Affine", "HardSigmoid", "ThresholdedRelu"],
            "activation_alpha": [0.9, 0.25, 0.1],
            "activation_beta": [0.2, 0.6],
        },
    ),
    ("gru_opset7", "GRU", {"opset": 7, "use": ("B",), "linear_before_reset": 1}),
    ("rnn_default", "RNN", {}),
    (
        "rnn_relu_bidirectional",
        "RNN",
        {"direction": "bidirectional", "use": ("B", "initial_h"), "activations": ["Relu", "Relu"]},
    ),
    (
        "rnn_reverse_lengths",
        "RNN",
        {"direction": "reverse", "use": ("B", "sequence_lens"), "lengths": [3, 1, 2]},
    ),
    (
        "rnn_mixed_activations_clip",
        "RNN",
        {
            "direction": "bidirectional",
            "use": ("B",),
            "clip": 0.5,
            "activations": ["Tanh", "Softsign"],
        },
    ),
    (
        "rnn_leaky_relu",
        "RNN",
        {
            "use": ("B", "initial_h"),
            "activations": ["LeakyRelu"],
            "activation_alpha": [0.2],
            "constant": (),
        },
    ),
    ("rnn_opset7", "RNN", {"opset": 7, "use": ("B",)}),
]


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_matches_onnxruntime(case):
    _, op, arguments = case
    check_against_onnxruntime(*build(op, **arguments))


@pytest.mark.parametrize("op", ["LSTM", "GRU", "RNN"])
@pytest.mark.parametrize("direction", ["forward", "reverse", "bidirectional"])
def test_layout_1_is_layout_0_batch_first(op, direction):
    """onnxruntime's CPU kernels refuse layout=1; the same node at layout 0 on transposed inputs
    is the reference."""
    extra = {"linear_before_reset": 1} if op == "GRU" else {}
    use = ("B", "sequence_lens", "initial_h") + (("initial_c",) if op == "LSTM" else ())
    arguments = dict(direction=direction, use=use, lengths=[4, 2, 3], **extra)
    model, feeds = build(op, layout=1, **arguments)
    flat_model, _ = build(op, layout=0, **arguments)
    transposed = [f.transpose(1, 0, 2) if f.ndim == 3 else f for f in feeds]
    expected = run_onnxruntime(flat_model, *transposed)
    got = ours(model, feeds)
    np.testing.assert_allclose(got[0], expected[0].transpose(2, 0, 1, 3), rtol=1e-5, atol=1e-5)
    for g, e in zip(got[1:], expected[1:]):
        np.testing.assert_allclose(g, e.transpose(1, 0, 2), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(
    "op, kind, extra",
    [
        ("LSTM", nn.LSTM, {}),
        ("GRU", nn.GRU, {"linear_before_reset": 1}),
        ("RNN", nn.RNN, {"activations": ["Relu", "Relu"]}),
    ],
)
def test_constant_weights_become_the_pytorch_module(op, kind, extra):
    model, feeds = build(op, direction="bidirectional", use=("B",), **extra)
    (layer,) = modules_of(model, kind)
    assert layer.bidirectional and layer.hidden_size == 3 and layer.input_size == 2
    assert "weight_hh_l0_reverse" in dict(layer.named_parameters())
    if op == "RNN":
        assert layer.nonlinearity == "relu"
    # the module's own forward (batch-major concat of directions) is ONNX's Y re-laid out
    x = ft.tensor(feeds[0])
    out, _ = layer(x)
    y = ours(model, feeds)[0]  # [seq, dirs, batch, hidden]
    np.testing.assert_allclose(
        out.detach().numpy(), y.transpose(0, 2, 1, 3).reshape(4, 3, 6), rtol=1e-6, atol=1e-6
    )


def test_lstm_gate_order_is_pytorchs():
    """The ONNX blocks i o f c land in PyTorch's i f g o: a weight set only on ONNX's forget
    gate block shows up in rows H:2H of weight_ih_l0."""
    model, _ = build("LSTM", use=("B",))
    w = ft.onnx.load(model)
    (layer,) = [m for m in w.modules() if isinstance(m, nn.LSTM)]
    onnx_w = next(t for t in model.graph.initializer if t.name == "W")
    from onnx import numpy_helper

    blocks = np.split(numpy_helper.to_array(onnx_w)[0], 4)  # i o f c
    torch_w = np.split(layer.weight_ih_l0.detach().numpy(), 4)  # i f g o
    for onnx_block, torch_block in zip((0, 2, 3, 1), range(4)):
        np.testing.assert_array_equal(blocks[onnx_block], torch_w[torch_block])


@pytest.mark.parametrize(
    "op, extra",
    [
        ("GRU", {"linear_before_reset": 0}),
        ("LSTM", {"clip": 2.0}),
        ("LSTM", {"activations": ["Sigmoid", "Tanh", "Relu"]}),
        ("LSTM", {"activations": ["Tanh", "Sigmoid", "Sigmoid"]}),
        ("RNN", {"direction": "bidirectional", "activations": ["Relu", "Tanh"]}),
    ],
)
def test_nodes_pytorch_cannot_express_stay_functional_and_trainable(op, extra):
    model, feeds = build(op, use=("B",), **extra)
    imported = ft.onnx.load(model, freeze=False)
    assert not [m for m in imported.modules() if isinstance(m, (nn.LSTM, nn.GRU, nn.RNN))]
    names = {n for n, _ in imported.named_parameters()}
    assert {"W", "R", "B"} <= names
    out = imported(*feeds)
    out[1].sum().backward()
    assert all(
        p.grad is not None and np.abs(p.grad.numpy()).sum() > 0 for p in imported.parameters()
    )


def test_reverse_with_constant_weights_is_a_module_run_backwards():
    model, feeds = build(
        "GRU",
        direction="reverse",
        use=("B", "sequence_lens"),
        lengths=[2, 4, 3],
        linear_before_reset=1,
    )
    (layer,) = modules_of(model, nn.GRU)
    assert not layer.bidirectional
    check_against_onnxruntime(model, feeds)


GRAD_CASES = [
    ("lstm_module", "LSTM", {"direction": "bidirectional", "use": ("B", "initial_h", "initial_c")}),
    (
        "lstm_peepholes_lengths",
        "LSTM",
        {"use": ("B", "P", "sequence_lens"), "lengths": [2, 3], "clip": 5.0},
    ),
    (
        "lstm_input_forget_layout1",
        "LSTM",
        {"layout": 1, "use": ("B",), "input_forget": 1, "direction": "reverse"},
    ),
    (
        "gru_module",
        "GRU",
        {"direction": "bidirectional", "use": ("B", "initial_h"), "linear_before_reset": 1},
    ),
    (
        "gru_reset_after",
        "GRU",
        {"use": ("B", "sequence_lens"), "lengths": [2, 1], "direction": "reverse"},
    ),
    ("gru_activations", "GRU", {"use": ("B",), "activations": ["HardSigmoid", "Softsign"]}),
    ("rnn_module", "RNN", {"use": ("B", "initial_h")}),
    (
        "rnn_activations",
        "RNN",
        {"direction": "bidirectional", "use": ("B",), "activations": ["Softplus", "Elu"]},
    ),
]


@pytest.mark.parametrize("case", GRAD_CASES, ids=[c[0] for c in GRAD_CASES])
def test_backward_through_time_passes_gradcheck(case):
    _, op, arguments = case
    model, feeds = build(op, steps=3, batch=2, hidden=2, dtype=np.float64, **arguments)
    imported = ft.onnx.load(model, freeze=False).double()
    leaves = [ft.tensor(f, requires_grad=f.dtype.kind == "f") for f in feeds]
    params = list(imported.parameters())
    assert params, "constant weights must be trainable"
    assert gradcheck(lambda *args: imported(*args[: len(leaves)]), (*leaves, *params))


@pytest.mark.parametrize("op", ["LSTM", "GRU", "RNN"])
@pytest.mark.parametrize("dtype", [np.float16, np.float64])
def test_outputs_keep_the_input_float_type(op, dtype):
    """onnxruntime has no float16/float64 kernels for all three; float32 is the reference."""
    arguments = dict(direction="bidirectional", use=("B", "initial_h"))
    model, feeds = build(op, **arguments)
    expected = run_onnxruntime(model, *feeds)
    got = ours(*build(op, dtype=dtype, **arguments))
    tolerance = 5e-3 if dtype == np.float16 else 1e-5
    for g, e in zip(got, expected):
        assert g.dtype == dtype and g.shape == e.shape
        np.testing.assert_allclose(g.astype(np.float32), e, rtol=tolerance, atol=tolerance)


def test_old_opset_1_and_3_schemas_import():
    reference_model, reference_feeds = build("GRU", opset=7, use=("B",))
    expected = run_onnxruntime(reference_model, *reference_feeds)
    for opset in (1, 3):
        old, old_feeds = build("GRU", opset=opset, use=("B",), output_sequence=1)
        for g, e in zip(ours(old, old_feeds), expected):
            np.testing.assert_allclose(g, e, rtol=1e-5, atol=1e-5)


def test_only_the_requested_outputs_are_bound():
    model, feeds = build("LSTM", use=("B",))
    node = model.graph.node[0]
    node.output[:] = ["", "Y_h"]
    del model.graph.output[:]
    model.graph.output.extend([value_info("Y_h", [1, 3, 3])])
    got = ft.onnx.load(model)(*feeds)
    expected = run_onnxruntime(model, *feeds)[0]
    np.testing.assert_allclose(got.numpy(), expected, rtol=1e-5, atol=1e-5)


def set_hidden_size(model, size):
    (attribute,) = [a for a in model.graph.node[0].attribute if a.name == "hidden_size"]
    attribute.i = size


def test_hidden_size_not_matching_the_weights_is_refused_at_import():
    model, _ = build("LSTM", use=("B",))
    set_hidden_size(model, 5)
    with pytest.raises(OnnxImportError, match="LSTM node 'lstm_1'.*hidden_size=5.*input W"):
        ft.onnx.load(model)


def test_wrong_direction_count_is_refused_at_import():
    model, _ = build("GRU", use=("B",))
    for attribute in model.graph.node[0].attribute:
        if attribute.name == "direction":
            attribute.s = b"bidirectional"
    with pytest.raises(OnnxImportError, match=r"GRU node 'gru_1'.*\[num_directions"):
        ft.onnx.load(model)


def test_wrong_sizes_with_weights_as_inputs_name_the_node_at_run_time():
    model, feeds = build("RNN", constant=(), use=("B",))
    set_hidden_size(model, 2)  # W, R and B are graph inputs sized for 3
    imported = ft.onnx.load(model)
    with pytest.raises(OnnxImportError, match="'rnn_1'.*hidden_size=2: input W must have shape"):
        imported(*feeds)


def test_unknown_activation_bad_layout_and_bad_lengths_are_refused():
    model, _ = build("RNN", activations=["Gelu"])
    with pytest.raises(OnnxImportError, match="unknown activation"):
        ft.onnx.load(model)
    model, _ = build("GRU", layout=1)
    (attribute,) = [a for a in model.graph.node[0].attribute if a.name == "layout"]
    attribute.i = 2
    with pytest.raises(OnnxImportError, match="GRU node 'gru_1'.*layout must be 0"):
        ft.onnx.load(model)
    model, feeds = build("LSTM", use=("B", "sequence_lens"), constant=("W", "R", "B"))
    feeds[1] = np.array([4, 9, 1], np.int32)
    with pytest.raises(OnnxImportError, match=r"sequence lengths must be 3 values in \[0, 4\]"):
        ft.onnx.load(model)(*feeds)


def test_fine_tuning_the_imported_lstm_moves_its_pytorch_parameters():
    model, feeds = build("LSTM", use=("B",))
    imported = ft.onnx.load(model, freeze=False)
    (layer,) = [m for m in imported.modules() if isinstance(m, nn.LSTM)]
    assert [n for n, _ in imported.named_parameters()] == [
        "lstm_1.weight_ih_l0",
        "lstm_1.weight_hh_l0",
        "lstm_1.bias_ih_l0",
        "lstm_1.bias_hh_l0",
    ]
    before = layer.weight_hh_l0.detach().numpy().copy()
    opt = ft.optim.SGD(imported.parameters(), lr=0.1)
    y = imported(*feeds)[0]
    (y**2).sum().backward()
    opt.step()
    assert not np.allclose(before, layer.weight_hh_l0.detach().numpy())
