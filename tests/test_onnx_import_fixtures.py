"""Files PyTorch really exported (legacy folded, legacy with BatchNorm, dynamo with external
data) load through the generic importer and reproduce PyTorch's numbers, before and after the
seed's recipe (freeze everything, replace ``fc``, cross-entropy)."""

from pathlib import Path

import numpy as np
import pytest
from onnx_builders import run_onnxruntime

import finetune as ft
from finetune import nn
from finetune.nn.parameter import Parameter

DATA = Path(__file__).parent / "data"
LAYOUTS = ["tiny_resnet_folded.onnx", "tiny_resnet_bn.onnx", "tiny_resnet_dynamo.onnx"]


@pytest.fixture(scope="module")
def reference():
    return dict(np.load(DATA / "tiny_resnet_reference.npz"))


@pytest.mark.parametrize("name", LAYOUTS)
def test_output_matches_pytorch(name, reference):
    model = ft.onnx.load(DATA / name)
    out = model(ft.from_numpy(reference["input"]))
    np.testing.assert_allclose(out.numpy(), reference["output"], atol=1e-4, rtol=1e-3)


@pytest.mark.parametrize("name", LAYOUTS)
def test_other_batch_sizes_match_onnxruntime(name, reference):
    import onnx

    x = reference["input"][:1]
    expected = run_onnxruntime(onnx.load(DATA / name), x)[0]
    out = ft.onnx.load(DATA / name)(ft.from_numpy(x))
    np.testing.assert_allclose(out.numpy(), expected, atol=1e-4, rtol=1e-3)


@pytest.mark.parametrize("name", LAYOUTS)
def test_module_tree_follows_pytorch_names(name):
    model = ft.onnx.load(DATA / name)
    assert isinstance(model.conv1, nn.Conv2d)
    assert isinstance(model.layer1[0].conv1, nn.Conv2d)
    assert isinstance(model.layer2[0].downsample[0], nn.Conv2d)
    assert isinstance(model.fc, nn.Linear) and model.fc.in_features == 64
    assert ft.onnx.find_head(model) == ("fc", model.fc)
    if name == "tiny_resnet_bn.onnx":
        assert isinstance(model.layer1[0].bn2, nn.BatchNorm2d)


@pytest.mark.parametrize("name", LAYOUTS)
def test_recipe_loss_and_head_gradients_match_pytorch(name, reference):
    model = ft.onnx.load(DATA / name)
    for p in model.parameters():
        p.requires_grad = False
    model.fc = nn.Linear(64, 3)
    model.fc.weight = Parameter(reference["new_fc_weight"])
    model.fc.bias = Parameter(reference["new_fc_bias"])
    logits = model(ft.from_numpy(reference["input"]))
    labels = reference["labels"]
    log_probs = ft.log_softmax(logits, dim=1)
    loss = -log_probs[np.arange(len(labels)), labels].mean()
    loss.backward()
    np.testing.assert_allclose(loss.item(), reference["loss"], atol=1e-4, rtol=1e-3)
    np.testing.assert_allclose(
        model.fc.weight.grad.numpy(), reference["grad_fc_weight"], atol=1e-4, rtol=1e-3
    )
    np.testing.assert_allclose(
        model.fc.bias.grad.numpy(), reference["grad_fc_bias"], atol=1e-4, rtol=1e-3
    )
    trained = {n for n, p in model.named_parameters() if p.grad is not None}
    assert trained == {"fc.weight", "fc.bias"}
