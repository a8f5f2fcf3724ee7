"""Whole architectures as PyTorch's two exporters write them import, match onnxruntime, take a
new head and train.

The files (``tests/data/architectures``) hold torchvision's MobileNetV2/V3, EfficientNet,
ShuffleNetV2, RegNet, DenseNet, GoogLeNet, MNASNet, ResNet-50, ConvNeXt, Swin and ViT (small
configurations where torchvision offers one), a YOLO-style detector, a DBNet-style segmenter, an
LSTM classifier and a graph with an ``If``, each from the legacy exporter (opset 17) and the
dynamo exporter (opset 18), with seeded random weights.
"""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest
from architectures import example_input, load_proto, names

import finetune as ft
from finetune import nn, optim
from finetune.nn import functional as F

ALL = names()
# no classifier head: their whole graph is fine-tuned instead
DENSE_OUTPUT = {name for name in ALL if name.startswith(("yolo_like", "dbnet_like"))}


def _reference(proto, x):
    session = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(None, {session.get_inputs()[0].name: x})[0]


def test_the_files_cover_every_architecture_from_both_exporters():
    wanted = (
        "mobilenet_v2 mobilenet_v3 efficientnet shufflenet_v2 regnet densenet googlenet mnasnet "
        "resnet50 convnext swin vit yolo_like dbnet_like lstm_classifier"
    ).split()
    assert {f"{n}_{e}" for n in wanted for e in ("legacy", "dynamo")} <= set(ALL)
    assert "branching_dynamo" in ALL


@pytest.mark.parametrize("name", ALL)
def test_architecture_imports_and_matches_onnxruntime(name):
    proto = load_proto(name)
    x = example_input(proto)
    expected = _reference(proto, x)
    model = ft.onnx.load(proto)
    with ft.no_grad():
        got = model(ft.from_numpy(x))
    got = got[0] if isinstance(got, tuple) else got
    assert got.shape == expected.shape
    scale = float(np.abs(expected).max())
    np.testing.assert_allclose(got.numpy(), expected, rtol=1e-3, atol=1e-4 * max(scale, 1e-3))


def _loss_after_steps(model, params, x, target, loss_fn, steps=3):
    """Plain SGD with steps sized to cut the loss by 0.1% to first order (lr = loss / 1000
    |g|^2), so random weights of any scale train without tuning a learning rate: the loss falls
    at every step exactly when the gradients point downhill."""
    optimizer = optim.SGD(params, lr=0.0)
    losses = []
    for _ in range(steps):
        optimizer.zero_grad()
        out = model(x)
        out = out[0] if isinstance(out, tuple) else out
        loss = loss_fn(out, target)
        loss.backward()
        squared = sum(
            float((p.grad.numpy().astype(np.float64) ** 2).sum())
            for p in params
            if p.grad is not None
        )
        assert squared > 0, "no gradient reached the trainable parameters"
        optimizer.param_groups[0]["lr"] = loss.item() / (1000 * squared)
        optimizer.step()
        losses.append(loss.item())
    return losses


@pytest.mark.parametrize("name", sorted(set(ALL) - DENSE_OUTPUT))
def test_classifier_takes_a_new_head_and_trains(name):
    proto = load_proto(name)
    model = ft.onnx.load(proto)
    head = model.replace_head(3)
    assert isinstance(head, nn.Linear) and head.out_features == 3
    with ft.no_grad():  # random backbones give huge features: start from even odds
        head.weight.zero_()
        head.bias.zero_()
    trainable = [p for p in model.parameters() if p.requires_grad]
    assert {id(p) for p in trainable} == {id(p) for p in head.parameters()}
    x = (
        ft.from_numpy(example_input(proto, batch=4, seed=1))
        if _free_batch(proto)
        else (ft.from_numpy(example_input(proto, seed=1)))
    )
    target = ft.tensor(np.arange(x.shape[0]) % 3)
    losses = _loss_after_steps(model, trainable, x, target, F.cross_entropy)
    assert losses[2] < losses[1] < losses[0], losses


@pytest.mark.parametrize("name", sorted(DENSE_OUTPUT))
def test_dense_model_trains_end_to_end(name):
    proto = load_proto(name)
    model = ft.onnx.load(proto, freeze=False)
    x = ft.from_numpy(example_input(proto, seed=1))
    with ft.no_grad():
        out = model(x)
    target = ft.from_numpy(np.random.default_rng(2).uniform(0, 1, out.shape).astype(np.float32))
    losses = _loss_after_steps(model, list(model.parameters()), x, target, F.mse_loss, steps=3)
    assert losses[2] < losses[1] < losses[0], losses


def test_lstm_imports_as_a_trainable_lstm_module():
    model = ft.onnx.load(load_proto("lstm_classifier_dynamo"))
    lstms = [m for m in model.modules() if isinstance(m, nn.LSTM)]
    assert lstms, "the LSTM node should become nn.LSTM"
    assert all(hasattr(m, "weight_ih_l0") for m in lstms)


def _free_batch(proto) -> bool:
    weights = {t.name for t in proto.graph.initializer}
    first = next(i for i in proto.graph.input if i.name not in weights)
    return not first.type.tensor_type.shape.dim[0].HasField("dim_value")
