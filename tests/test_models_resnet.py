"""The structured ResNet-18: torchvision's module tree, parameter names and initialisation."""

from __future__ import annotations

import numpy as np
import pytest

import finetune as ft
from finetune import nn
from finetune.models import BasicBlock, resnet18


@pytest.fixture(scope="module")
def model():
    ft.manual_seed(0)
    return resnet18()


def test_top_level_children_are_torchvisions(model):
    names = [name for name, _ in model.named_children()]
    assert names == [
        "conv1",
        "bn1",
        "relu",
        "maxpool",
        "layer1",
        "layer2",
        "layer3",
        "layer4",
        "avgpool",
        "fc",
    ]
    assert isinstance(model.avgpool, nn.AdaptiveAvgPool2d)
    assert model.fc.in_features == 512 and model.fc.out_features == 1000


def test_parameter_count_matches_torchvision(model):
    # torchvision.models.resnet18(): 11,689,512 parameters; 10 classes drop 990 * 513 of them
    assert sum(p.numel() for p in model.parameters()) == 11_689_512
    assert sum(p.numel() for p in resnet18(num_classes=10).parameters()) == 11_181_642


def _resnet18_parameters(width: int, classes: int) -> int:
    """Counted from the layout: a 7x7 stem, two 3x3 convolutions per block, a 1x1 projection
    where a stage starts with stride 2, a BatchNorm (weight, bias) after each, a linear head."""
    count = 3 * width * 49 + 2 * width
    inplanes = width
    for planes in (width, 2 * width, 4 * width, 8 * width):
        for block in range(2):
            count += 9 * inplanes * planes + 9 * planes * planes + 4 * planes
            if block == 0 and planes != inplanes:
                count += inplanes * planes + 2 * planes
            inplanes = planes
    return count + (inplanes + 1) * classes


@pytest.mark.parametrize("width", [16, 24])
def test_narrow_resnet18_scales_every_stage(width):
    assert _resnet18_parameters(64, 1000) == 11_689_512  # the count itself checked
    net = ft.models.ResNet(BasicBlock, [2, 2, 2, 2], num_classes=12, width=width)
    assert net.conv1.out_channels == net.bn1.num_features == width
    widths = [getattr(net, f"layer{i}")[1].conv2.out_channels for i in range(1, 5)]
    assert widths == [width, 2 * width, 4 * width, 8 * width]
    assert net.fc.in_features == 8 * width and net.fc.out_features == 12
    assert sum(p.numel() for p in net.parameters()) == _resnet18_parameters(width, 12)
    with ft.no_grad():
        assert net.eval()(ft.zeros(2, 3, 64, 64)).shape == (2, 12)


def test_blocks_and_downsample_where_torchvision_has_them(model):
    for stage, (planes, stride) in enumerate([(64, 1), (128, 2), (256, 2), (512, 2)], start=1):
        layer = getattr(model, f"layer{stage}")
        assert isinstance(layer, nn.Sequential) and len(layer) == 2
        first, second = layer[0], layer[1]
        assert isinstance(first, BasicBlock) and isinstance(second, BasicBlock)
        assert first.conv1.stride == (stride, stride) and first.conv2.out_channels == planes
        assert second.downsample is None
        if stage == 1:
            assert first.downsample is None
        else:
            conv, bn = first.downsample[0], first.downsample[1]
            assert conv.kernel_size == (1, 1) and conv.stride == (2, 2) and conv.bias is None
            assert bn.num_features == planes


def test_state_dict_keys_follow_torchvision(model):
    keys = list(model.state_dict())
    assert len(keys) == 122  # 62 parameters, 60 BatchNorm buffers
    assert keys[:6] == [
        "conv1.weight",
        "bn1.weight",
        "bn1.bias",
        "bn1.running_mean",
        "bn1.running_var",
        "bn1.num_batches_tracked",
    ]
    assert "layer2.0.downsample.0.weight" in keys and "layer2.0.downsample.1.running_var" in keys
    assert keys[-2:] == ["fc.weight", "fc.bias"]


def test_initialisation_is_torchvisions(model):
    # kaiming_normal_(mode="fan_out", nonlinearity="relu"): std = sqrt(2 / (out * kh * kw))
    weight = model.layer4[1].conv2.weight.detach().numpy()
    assert weight.std() == pytest.approx(np.sqrt(2 / (512 * 9)), rel=0.01)
    assert abs(weight.mean()) < 1e-3
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            assert np.all(m.weight.detach().numpy() == 1) and np.all(m.bias.detach().numpy() == 0)
    # nn.Linear default: uniform in +-1/sqrt(in_features)
    fc = model.fc.weight.detach().numpy()
    assert np.abs(fc).max() <= 1 / np.sqrt(512) and fc.std() > 0.02


def test_seeded_construction_is_reproducible():
    ft.manual_seed(3)
    a = resnet18(num_classes=4).state_dict()
    ft.manual_seed(3)
    b = resnet18(num_classes=4).state_dict()
    assert all(np.array_equal(a[k].numpy(), b[k].numpy()) for k in a)


def test_repr_prints_as_torchvision(model):
    lines = repr(model).splitlines()
    assert lines[:5] == [
        "ResNet(",
        "  (conv1): Conv2d(3, 64, kernel_size=(7, 7), stride=(2, 2), padding=(3, 3), bias=False)",
        "  (bn1): BatchNorm2d(64, eps=1e-05, momentum=0.1, affine=True, track_running_stats=True)",
        "  (relu): ReLU(inplace=True)",
        "  (maxpool): MaxPool2d(kernel_size=3, stride=2, padding=1, dilation=1, ceil_mode=False)",
    ]
    assert lines[-3:] == [
        "  (avgpool): AdaptiveAvgPool2d(output_size=(1, 1))",
        "  (fc): Linear(in_features=512, out_features=1000, bias=True)",
        ")",
    ]
