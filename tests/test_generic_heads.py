"""Classifier heads of imported graphs, and files exported at a fixed batch size.

Small graphs built with ``onnx.helper`` in the shapes real files take: ``Gemm`` (+ ``Softmax``
or ``LogSoftmax``), ``Flatten`` + ``Gemm``, ``MatMul`` + ``Add``, SqueezeNet's ``Conv 1x1 → Relu
→ GlobalAveragePool → Softmax``, DenseNet's ``GlobalAveragePool → Conv 1x1``, a head followed
by an op no classifier needs (which ``--head`` names), and ``Reshape``s that bake in batch 1.
Each is checked against onnxruntime.
"""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

import finetune as ft
from finetune import nn, optim
from finetune.data import DataLoader, TensorDataset
from finetune.errors import OnnxImportError
from finetune.onnx.heads import ClassifierHead, find_classifier, output_kind
from finetune.train import find_head as train_find_head
from finetune.train import fit

RNG = np.random.default_rng(0)


def _weight(*shape) -> np.ndarray:
    fan_in = int(np.prod(shape[1:])) if len(shape) > 1 else 1
    return (RNG.standard_normal(shape) * np.sqrt(2.0 / fan_in)).astype(np.float32)


def _model(nodes, weights: dict, shape=(1, 3, 8, 8), rank=2, opset=13) -> onnx.ModelProto:
    """A graph from input ``x`` of ``shape`` to ``out`` of ``rank`` dimensions."""
    out = [f"d{i}" for i in range(rank)]
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, list(shape))],
        [helper.make_tensor_value_info("out", TensorProto.FLOAT, out)],
        [numpy_helper.from_array(np.asarray(v), k) for k, v in weights.items()],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    onnx.checker.check_model(model)
    return model


def _backbone(weights: dict) -> list:
    """x (N, 3, 8, 8) → conv 3x3 to 6 channels → relu: the part the heads below sit on."""
    weights["w0"], weights["b0"] = _weight(6, 3, 3, 3), _weight(6)
    return [
        helper.make_node("Conv", ["x", "w0", "b0"], ["c0"], "conv0", pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c0"], ["r0"], "relu0"),
    ]


def gemm_softmax(activation: str = "Softmax") -> onnx.ModelProto:
    weights: dict = {}
    nodes = _backbone(weights)
    weights["fc_w"], weights["fc_b"] = _weight(5, 6), _weight(5)
    nodes += [
        helper.make_node("GlobalAveragePool", ["r0"], ["p"], "pool"),
        helper.make_node("Flatten", ["p"], ["f"], "flatten"),
        helper.make_node("Gemm", ["f", "fc_w", "fc_b"], ["logits"], "fc", transB=1),
        helper.make_node(activation, ["logits"], ["out"], "prob", axis=1),
    ]
    return _model(nodes, weights)


def matmul_add() -> onnx.ModelProto:
    weights: dict = {}
    nodes = _backbone(weights)
    weights["axes"] = np.array([2, 3])
    weights["mm_w"], weights["mm_b"] = _weight(6, 5), _weight(5)
    nodes += [
        helper.make_node("ReduceMean", ["r0", "axes"], ["m"], "mean", keepdims=0),
        helper.make_node("MatMul", ["m", "mm_w"], ["mm"], "head_mm"),
        helper.make_node("Add", ["mm", "mm_b"], ["out"], "head_add"),
    ]
    return _model(nodes, weights, opset=18)


def squeezenet_like() -> onnx.ModelProto:
    """SqueezeNet 1.0's end (opset 9): conv10 1x1 → Relu → GlobalAveragePool → Softmax."""
    weights: dict = {}
    nodes = _backbone(weights)
    weights["conv10_w"], weights["conv10_b"] = _weight(5, 6, 1, 1), _weight(5)
    nodes += [
        helper.make_node("Conv", ["r0", "conv10_w", "conv10_b"], ["c10"], "conv10"),
        helper.make_node("Relu", ["c10"], ["r10"], "relu10"),
        helper.make_node("GlobalAveragePool", ["r10"], ["p10"], "pool10"),
        helper.make_node("Softmax", ["p10"], ["out"], "prob"),
    ]
    return _model(nodes, weights, rank=4, opset=9)


def densenet_like() -> onnx.ModelProto:
    """DenseNet-121's end in the zoo file: GlobalAveragePool → fc6 as a 1x1 Conv, (N, C, 1, 1)."""
    weights: dict = {}
    nodes = _backbone(weights)
    weights["fc6_w"], weights["fc6_b"] = _weight(5, 6, 1, 1), _weight(5)
    nodes += [
        helper.make_node("GlobalAveragePool", ["r0"], ["p"], "pool"),
        helper.make_node("Conv", ["p", "fc6_w", "fc6_b"], ["out"], "fc6"),
    ]
    return _model(nodes, weights, rank=4)


def scaled_head() -> onnx.ModelProto:
    """A Gemm whose logits are divided by a temperature: no recognisable classifier end."""
    weights: dict = {}
    nodes = _backbone(weights)
    weights["fc_w"], weights["fc_b"] = _weight(5, 6), _weight(5)
    weights["temperature"] = np.array(2.0, dtype=np.float32)
    nodes += [
        helper.make_node("GlobalAveragePool", ["r0"], ["p"], "pool"),
        helper.make_node("Flatten", ["p"], ["f"], "flatten"),
        helper.make_node("Gemm", ["f", "fc_w", "fc_b"], ["logits"], "fc", transB=1),
        helper.make_node("Div", ["logits", "temperature"], ["out"], "scale"),
    ]
    return _model(nodes, weights)


def _x(batch: int, seed: int = 1, shape=(3, 8, 8)) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((batch, *shape)).astype(np.float32)


def _onnxruntime(proto: onnx.ModelProto, x: np.ndarray, one_at_a_time: bool = False):
    session = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    if one_at_a_time:
        return np.concatenate([session.run(None, {name: row[None]})[0] for row in x])
    return session.run(None, {name: x})[0]


def _run(model, x: np.ndarray) -> np.ndarray:
    with ft.no_grad():
        return model(ft.from_numpy(x)).numpy()


# -- finding the head ------------------------------------------------------------------------


@pytest.mark.parametrize(
    "build, node, kind",
    [
        (gemm_softmax, "fc", nn.Linear),
        (matmul_add, "head_mm", nn.Linear),
        (squeezenet_like, "conv10", nn.Conv2d),
        (densenet_like, "fc6", nn.Conv2d),
    ],
)
def test_the_head_is_the_layer_feeding_the_output(build, node, kind):
    model = ft.onnx.load(build())
    head = find_classifier(model)
    assert head.node == node and isinstance(head.module, kind)
    assert (head.in_features, head.out_features) == (6, 5)
    name, module = ft.onnx.find_head(model)
    assert module is head.module and model.get_submodule(name) is module


def test_a_trailing_softmax_is_the_output_activation_not_part_of_the_head():
    model = ft.onnx.load(gemm_softmax())
    assert find_classifier(model).activation.op_type == "Softmax"
    assert output_kind(model) == "probabilities"
    assert output_kind(ft.onnx.load(gemm_softmax("LogSoftmax"))) == "log_probabilities"
    assert output_kind(ft.onnx.load(densenet_like())) == "logits"


@pytest.mark.parametrize("build", [gemm_softmax, matmul_add, squeezenet_like, densenet_like])
def test_replace_head_gives_batch_by_classes_logits_from_the_head(build):
    """After replace_head the model returns (batch, classes) logits (no Softmax: the loss needs
    logits), computed by the module find_head returns: what a feature cache relies on."""
    proto = build()
    model = ft.onnx.load(proto)
    layer = model.replace_head(3)
    assert all(p.requires_grad for p in layer.parameters())
    x = _x(4)
    out = _run(model, x)
    assert out.shape == (4, 3)
    name, head = train_find_head(model)
    features = []
    handle = head.register_forward_pre_hook(lambda _m, args: features.append(args[0]))
    _run(model, x)
    handle.remove()
    with ft.no_grad():
        np.testing.assert_allclose(head(features[0]).numpy(), out, rtol=1e-6)
    # the backbone is untouched: its output is what onnxruntime computes for the original
    trainable = {id(p) for p in layer.parameters()}
    frozen = [p for p in model.parameters() if id(p) not in trainable]
    assert frozen and not any(p.requires_grad for p in frozen)


def test_squeezenet_head_keeps_relu_and_pooling_after_the_new_conv():
    model = ft.onnx.load(squeezenet_like())
    layer = model.replace_head(3)
    name, head = ft.onnx.find_head(model)
    assert isinstance(head, ClassifierHead) and head.layer is layer
    assert isinstance(layer, nn.Conv2d) and layer.kernel_size == (1, 1)
    with ft.no_grad():
        layer.weight.copy_(ft.from_numpy(_weight(3, 6, 1, 1)))
    out = _run(model, _x(2))
    assert (out >= 0).all()  # the ReLU after the head still runs


def test_no_recognisable_head_names_the_node_for_head():
    model = ft.onnx.load(scaled_head())
    with pytest.raises(OnnxImportError) as error:
        model.replace_head(3)
    message = str(error.value)
    assert "no classifier head found" in message and "'scale' (Div)" in message
    assert "--head NODE" in message and "'fc' (Gemm)" in message


def test_head_names_a_layer_and_the_ops_after_it_still_run():
    proto = scaled_head()
    model = ft.onnx.load(proto)
    layer = model.replace_head(3, node="fc")
    assert isinstance(layer, nn.Linear) and layer.out_features == 3
    with ft.no_grad():
        layer.weight.copy_(ft.from_numpy(np.ones((3, 6), np.float32)))
        layer.bias.zero_()
    x = _x(2)
    conv = _onnxruntime(_conv_output(proto), x, one_at_a_time=True)
    pooled = np.maximum(conv, 0).mean(axis=(2, 3))
    expected = np.repeat(pooled.sum(axis=1, keepdims=True), 3, axis=1) / 2.0  # Div by 2
    np.testing.assert_allclose(_run(model, x), expected, rtol=1e-5)


def _conv_output(proto: onnx.ModelProto) -> onnx.ModelProto:
    """``proto`` answering with its backbone's conv output (the caller adds ReLU and pooling)."""
    model = onnx.ModelProto.FromString(proto.SerializeToString())
    del model.graph.output[:]
    model.graph.output.append(helper.make_tensor_value_info("c0", TensorProto.FLOAT, list("nchw")))
    return model


def test_head_naming_nothing_lists_the_candidates():
    model = ft.onnx.load(scaled_head())
    with pytest.raises(OnnxImportError, match=r"no node or layer named 'nope'.*'fc' \(Gemm\)"):
        model.replace_head(3, node="nope")
    with pytest.raises(OnnxImportError, match="'pool' .* is not a Gemm, MatMul or Conv"):
        model.replace_head(3, node="pool")


def test_head_naming_a_layer_other_layers_follow_is_refused():
    """conv0 feeds the Gemm: a new conv there would not make the output the classes."""
    model = ft.onnx.load(scaled_head())
    with pytest.raises(OnnxImportError, match="'conv0' .Conv. does not reach the graph's output"):
        model.replace_head(3, node="conv0")
    assert isinstance(model.conv0, nn.Conv2d) and model.conv0.out_channels == 6  # untouched


@pytest.mark.parametrize("count", [0, -1, True])
def test_replace_head_refuses_a_class_count_that_is_not_positive(count):
    with pytest.raises(OnnxImportError, match="num_classes must be a positive integer"):
        ft.onnx.load(gemm_softmax()).replace_head(count)


# -- the output activation through export and predict ----------------------------------------


@pytest.mark.parametrize("activation", ["Softmax", "LogSoftmax"])
def test_export_writes_the_activation_back_and_says_so(activation, tmp_path):
    model = ft.onnx.load(gemm_softmax(activation))
    model.replace_head(3)
    x = _x(4)
    logits = _run(model, x).astype(np.float64)
    path = tmp_path / "m.onnx"
    proto = ft.onnx.export(model, ft.from_numpy(x[:1]), path)
    assert proto.graph.node[-1].op_type == activation
    meta = {p.key: p.value for p in proto.metadata_props}
    assert (
        meta["output"]
        == {"Softmax": "probabilities", "LogSoftmax": "log_probabilities"}[activation]
    )
    shifted = logits - logits.max(axis=1, keepdims=True)
    log_probabilities = shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))
    expected = np.exp(log_probabilities) if activation == "Softmax" else log_probabilities
    np.testing.assert_allclose(_onnxruntime(proto, x), expected, rtol=1e-4, atol=1e-6)
    assert model.output_activation == activation  # exporting leaves the model as it was
    assert _run(model, x).shape == (4, 3)


def test_predict_applies_softmax_once(tmp_path):
    from PIL import Image

    from finetune.predict import Predictor

    model = ft.onnx.load(gemm_softmax())
    model.replace_head(2)
    exported = tmp_path / "m.onnx"
    ft.onnx.export(model, ft.zeros(1, 3, 8, 8), exported, metadata={"input_size": 8})
    image = tmp_path / "a.png"
    Image.fromarray(RNG.integers(0, 255, (12, 12, 3)).astype(np.uint8)).save(image)
    predictor = Predictor(exported)
    assert predictor.output == "probabilities"
    probabilities = predictor.probabilities([str(image)])
    batch = predictor.transform(ft.data.load_image(str(image))).numpy()[None]
    np.testing.assert_allclose(probabilities, _onnxruntime(onnx.load(exported), batch), rtol=1e-5)
    # a foreign file without the metadata: the graph's own Softmax says the same
    proto = gemm_softmax()
    plain = tmp_path / "zoo.onnx"
    onnx.save(proto, plain)
    assert Predictor(plain).output == "probabilities"


# -- batch sizes -------------------------------------------------------------------------------


def channel_shuffle(allowzero: int = 0) -> onnx.ModelProto:
    """ShuffleNet's channel shuffle and a ``[1, -1]`` flatten, at batch 1, as the zoo file has
    them: Reshape [1, 2, 3, 8, 8] → Transpose → Reshape [1, 6, 8, 8]."""
    weights: dict = {}
    nodes = _backbone(weights)
    weights["split"] = np.array([1, 2, 3, 8, 8])
    weights["merge"] = np.array([1, 6, 8, 8])
    weights["flat"] = np.array([1, -1])
    weights["fc_w"], weights["fc_b"] = _weight(5, 6 * 4 * 4), _weight(5)
    opset = 14 if allowzero else 13
    extra = {"allowzero": 1} if allowzero else {}
    nodes += [
        helper.make_node("Reshape", ["r0", "split"], ["s"], "shuffle_split", **extra),
        helper.make_node("Transpose", ["s"], ["t"], "shuffle", perm=[0, 2, 1, 3, 4]),
        helper.make_node("Reshape", ["t", "merge"], ["m"], "shuffle_merge", **extra),
        helper.make_node("MaxPool", ["m"], ["p"], "pool", kernel_shape=[2, 2], strides=[2, 2]),
        helper.make_node("Reshape", ["p", "flat"], ["f"], "flatten", **extra),
        helper.make_node("Gemm", ["f", "fc_w", "fc_b"], ["out"], "fc", transB=1),
    ]
    return _model(nodes, weights, opset=opset)


@pytest.mark.parametrize("allowzero", [0, 1])
def test_batch_baked_reshapes_follow_the_batch_and_change_nothing_at_batch_one(allowzero):
    proto = channel_shuffle(allowzero)
    model = ft.onnx.load(proto)
    assert model.fixed_batch is None
    x = _x(3)
    np.testing.assert_allclose(_run(model, x[:1]), _onnxruntime(proto, x[:1]), rtol=1e-5)
    np.testing.assert_allclose(
        _run(model, x), _onnxruntime(proto, x, one_at_a_time=True), rtol=1e-5, atol=1e-6
    )


def test_a_rewritten_model_trains_at_any_batch_and_exports_a_dynamic_batch(tmp_path):
    proto = channel_shuffle()
    model = ft.onnx.load(proto)
    model.replace_head(2)
    x, y = _x(6), np.arange(6) % 2
    loader = DataLoader(TensorDataset(ft.from_numpy(x), ft.tensor(y)), batch_size=3)
    optimizer = optim.SGD([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    history = fit(model, loader, optimizer, 1, progress=False, log=None)
    assert len(history) == 1 and np.isfinite(history[0]["train_loss"])
    exported = ft.onnx.export(model, ft.from_numpy(x[:1]), tmp_path / "m.onnx")
    assert exported.graph.input[0].type.tensor_type.shape.dim[0].dim_param == "batch"
    np.testing.assert_allclose(_onnxruntime(exported, x), _run(model, x), rtol=1e-4, atol=1e-6)


def test_a_reshape_that_does_not_keep_the_batch_first_is_left_alone():
    """[1, 6] → Transpose → [6, 1] → Reshape [1, 6]: the 1 is not the batch axis."""
    weights = {"row": np.array([1, 6])}
    nodes = [
        helper.make_node("Transpose", ["x"], ["t"], "transpose", perm=[1, 0]),
        helper.make_node("Reshape", ["t", "row"], ["out"], "reshape"),
    ]
    proto = _model(nodes, weights, shape=(1, 6))
    model = ft.onnx.load(proto)
    (step,) = [s for s in model.steps if s.op_type == "Reshape"]
    assert step.inputs[1] == "row"  # not rewritten
    assert model.fixed_batch == 1  # so the graph runs one sample at a time
    x = _x(3, shape=(6,))
    np.testing.assert_allclose(_run(model, x), _onnxruntime(proto, x, one_at_a_time=True))


def test_rows_fixed_at_the_files_batch_make_the_graph_run_in_slices(tmp_path):
    """Zero rows made at batch 1 and concatenated along channels (LRN's padding in some
    exporters): shape inference cannot see the batch through it, so the graph runs per sample,
    and exports at its file's batch size."""
    weights: dict = {"pad": np.zeros((1, 2, 8, 8), np.float32)}
    nodes = _backbone(weights)
    weights["fc_w"], weights["fc_b"] = _weight(4, 8), _weight(4)
    nodes += [
        helper.make_node("Concat", ["pad", "r0"], ["c"], "concat", axis=1),
        helper.make_node("GlobalAveragePool", ["c"], ["p"], "pool"),
        helper.make_node("Flatten", ["p"], ["f"], "flatten"),
        helper.make_node("Gemm", ["f", "fc_w", "fc_b"], ["out"], "fc", transB=1),
    ]
    proto = _model(nodes, weights)
    model = ft.onnx.load(proto)
    assert model.fixed_batch == 1
    x = _x(3)
    np.testing.assert_allclose(
        _run(model, x), _onnxruntime(proto, x, one_at_a_time=True), rtol=1e-5, atol=1e-6
    )
    exported = ft.onnx.export(model, ft.from_numpy(x[:1]), tmp_path / "m.onnx")
    assert exported.graph.input[0].type.tensor_type.shape.dim[0].dim_value == 1
    with pytest.raises(ft.errors.OnnxExportError, match="runs at batch size 1 only"):
        ft.onnx.export(model, ft.from_numpy(x[:2]), tmp_path / "m2.onnx")


def test_weights_made_by_constant_of_shape_are_folded_into_parameters():
    """The model zoo's light files make every weight with ConstantOfShape."""
    fill = numpy_helper.from_array(np.array([0.02], dtype=np.float32), "")
    weights: dict = {"fc_w_shape": np.array([5, 6])}
    nodes = _backbone(weights)
    weights["fc_b"] = _weight(5)
    nodes += [
        helper.make_node("ConstantOfShape", ["fc_w_shape"], ["fc_w"], "make_w", value=fill),
        helper.make_node("GlobalAveragePool", ["r0"], ["p"], "pool"),
        helper.make_node("Flatten", ["p"], ["f"], "flatten"),
        helper.make_node("Gemm", ["f", "fc_w", "fc_b"], ["out"], "fc", transB=1),
    ]
    proto = _model(nodes, weights)
    model = ft.onnx.load(proto)
    name, head = ft.onnx.find_head(model)
    assert name == "fc" and isinstance(head, nn.Linear)
    assert np.all(head.weight.numpy() == np.float32(0.02))
    x = _x(2)
    expected = _onnxruntime(proto, x, one_at_a_time=True)
    np.testing.assert_allclose(_run(model, x), expected, rtol=1e-5)
