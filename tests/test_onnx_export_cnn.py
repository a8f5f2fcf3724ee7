"""ONNX export of convolutional models: layers, BatchNorm folding, and round trips through import.

onnxruntime runs each exported file and must match the library to 1e-4 absolute / 1e-3 relative,
at batch sizes other than the one traced.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest

import finetune as ft
import finetune.nn.functional as F
from finetune import nn

ATOL, RTOL = 1e-4, 1e-3
DATA = Path(__file__).parent / "data"


def run_onnxruntime(path, x: np.ndarray) -> np.ndarray:
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(None, {session.get_inputs()[0].name: x})[0]


def library(model, x: np.ndarray) -> np.ndarray:
    with ft.no_grad():
        return model(ft.from_numpy(x)).numpy()


def images(n: int, channels: int = 3, size: int = 8, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.standard_normal((n, channels, size, size)).astype(np.float32)


def assert_agrees(model, path, shape=(3, 8, 8), batches=(1, 2, 5)) -> None:
    model.eval()
    rng = np.random.default_rng(1)
    for n in batches:
        x = rng.standard_normal((n, *shape)).astype(np.float32)
        np.testing.assert_allclose(
            run_onnxruntime(path, x), library(model, x), atol=ATOL, rtol=RTOL
        )


def small_cnn() -> nn.Module:
    ft.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(3, 6, 3, padding=1),
        nn.BatchNorm2d(6),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(6, 8, 3, stride=2, padding=1, bias=False),
        nn.BatchNorm2d(8),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Dropout(0.2),
        nn.Linear(8, 4),
    )
    model.train()
    for seed in range(3):  # running statistics that are not the defaults
        model(ft.from_numpy(images(4, seed=seed)))
    return model.eval()


def test_small_cnn_runs_at_any_batch(tmp_path):
    model = small_cnn()
    path = tmp_path / "cnn.onnx"
    ft.onnx.export(model, ft.from_numpy(images(2)), path)
    assert_agrees(model, path)
    ops = [n.op_type for n in onnx.load(path).graph.node]
    assert ops == [
        "Conv", "BatchNormalization", "Relu", "MaxPool",
        "Conv", "BatchNormalization", "Relu", "GlobalAveragePool", "Flatten", "Gemm",
    ]  # fmt: skip


def test_fold_batchnorm_gives_the_same_outputs_without_batch_normalization(tmp_path):
    model = small_cnn()
    path = tmp_path / "folded.onnx"
    ft.onnx.export(model, ft.from_numpy(images(2)), path, fold_batchnorm=True)
    assert_agrees(model, path)
    graph = onnx.load(path).graph
    assert "BatchNormalization" not in [n.op_type for n in graph.node]
    conv_weights = [list(n.input[1:]) for n in graph.node if n.op_type == "Conv"]
    assert conv_weights == [["0.weight", "0.bias"], ["4.weight", "4.bias"]]
    state = model.state_dict()
    folded = {i.name: onnx.numpy_helper.to_array(i) for i in graph.initializer}
    scale = state["1.weight"].numpy() / np.sqrt(state["1.running_var"].numpy() + 1e-5)
    np.testing.assert_allclose(
        folded["0.weight"], state["0.weight"].numpy() * scale[:, None, None, None], rtol=1e-6
    )


def test_batchnorm_read_twice_is_not_folded(tmp_path):
    """A convolution whose output something else also reads must stay as it is."""

    class Branch(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(3, 3, 1)
            self.bn = nn.BatchNorm2d(3)

        def forward(self, x):
            y = self.conv(x)
            return self.bn(y) + y

    model = Branch().eval()
    path = tmp_path / "m.onnx"
    ft.onnx.export(model, ft.from_numpy(images(2)), path, fold_batchnorm=True)
    assert "BatchNormalization" in [n.op_type for n in onnx.load(path).graph.node]
    assert_agrees(model, path)


LAYERS = {
    "conv_dilated_grouped": lambda: nn.Conv2d(3, 6, 3, padding=2, dilation=2, groups=3),
    "conv_same": lambda: nn.Conv2d(3, 4, (2, 3), padding="same"),
    "conv_reflect": lambda: nn.Conv2d(3, 4, 3, padding=1, padding_mode="reflect"),
    "max_pool_ceil": lambda: nn.MaxPool2d(3, stride=2, padding=1, ceil_mode=True),
    "max_pool_dilated": lambda: nn.MaxPool2d(2, stride=1, dilation=2),
    "avg_pool": lambda: nn.AvgPool2d(3, stride=2, padding=1),
    "avg_pool_exclude_pad": lambda: nn.AvgPool2d(3, stride=2, padding=1, count_include_pad=False),
    "avg_pool_ceil": lambda: nn.AvgPool2d(2, stride=2, ceil_mode=True),
    "adaptive_avg_pool": lambda: nn.AdaptiveAvgPool2d((2, 3)),
    "activations": lambda: nn.Sequential(nn.LeakyReLU(0.1), nn.ReLU6(), nn.Sigmoid(), nn.Tanh()),
}


@pytest.mark.parametrize("name", sorted(LAYERS))
def test_layer(name, tmp_path):
    ft.manual_seed(0)
    model = LAYERS[name]()
    path = tmp_path / "m.onnx"
    shape = (3, 7, 7)
    ft.onnx.export(model.eval(), ft.randn(2, *shape), path)
    assert_agrees(model, path, shape)


def test_conv1d_and_functional_calls(tmp_path):
    class Functional(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.weight = nn.Parameter(ft.randn(4, 3, 3) * 0.3)

        def forward(self, x):
            y = F.conv1d(x, self.weight, stride=2, padding=1)
            return F.avg_pool2d(y.unsqueeze(1), (1, 2)).squeeze(1)

    model = Functional()
    path = tmp_path / "m.onnx"
    ft.onnx.export(model, ft.randn(2, 3, 9), path)
    assert_agrees(model, path, (3, 9))


# -- round trips ---------------------------------------------------------------------------------


def test_resnet18_built_here_runs_in_onnxruntime(tmp_path):
    ft.manual_seed(0)
    model = ft.models.resnet18(num_classes=5).eval()
    path = tmp_path / "resnet18.onnx"
    ft.onnx.export(model, ft.randn(1, 3, 32, 32), path)
    assert_agrees(model, path, (3, 32, 32), batches=(2,))
    names = {i.name for i in onnx.load(path).graph.initializer}
    assert {"conv1.weight", "layer1.0.conv1.weight", "layer4.1.bn2.running_var", "fc.bias"} <= names


def test_imported_model_fine_tuned_exported_and_imported_again(tmp_path):
    """Import a ResNet, replace its head, train three SGD steps, export, and read it back."""
    model = ft.onnx.load(DATA / "tiny_resnet_bn.onnx")
    model.replace_head(3)
    shape = (3, 64, 64)  # the fixture's input, batch free
    x = ft.from_numpy(images(4, shape[0], shape[1]))
    target = ft.tensor([0, 1, 2, 1])
    optimizer = ft.optim.SGD(model.parameters(), lr=0.1)
    model.train()
    for _ in range(3):
        optimizer.zero_grad()
        F.cross_entropy(model(x), target).backward()
        optimizer.step()
    model.eval()

    path = tmp_path / "tuned.onnx"
    ft.onnx.export(model, x[:2], path, metadata={"classes": ["a", "b", "c"]})
    onnx.checker.check_model(onnx.load(path), full_check=True)
    assert_agrees(model, path, shape, batches=(1, 3))

    again = ft.onnx.load(path)
    assert again.metadata == {"classes": ["a", "b", "c"]}
    assert [type(m).__name__ for m in again.modules()] == [
        type(m).__name__ for m in model.modules()
    ]
    assert list(again.state_dict()) == list(model.state_dict())
    sample = images(3, shape[0], shape[1], seed=5)
    np.testing.assert_allclose(library(again, sample), library(model, sample), atol=ATOL, rtol=RTOL)
