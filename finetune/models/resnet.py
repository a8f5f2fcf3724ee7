"""ResNet-18 with torchvision's module tree, names and initialisation.

The same attribute names as ``torchvision.models.resnet18`` (``conv1, bn1, relu, maxpool,
layer1..layer4, avgpool, fc``) so state dicts, recipes and printed trees carry over unchanged,
and torchvision's weights load from a ``.safetensors`` file (``resnet18_from_safetensors``).
"""

from __future__ import annotations

import os
from collections.abc import Mapping

from .. import nn
from ..errors import CheckpointError, ShapeError
from ..functions import flatten
from ..nn.fusion import conv_bn
from ..tensor import Tensor


def conv3x3(in_planes: int, out_planes: int, stride: int = 1) -> nn.Conv2d:
    """3x3 convolution with padding 1 and no bias (BatchNorm follows)."""
    return nn.Conv2d(in_planes, out_planes, kernel_size=3, stride=stride, padding=1, bias=False)


def conv1x1(in_planes: int, out_planes: int, stride: int = 1) -> nn.Conv2d:
    """1x1 convolution without bias: the projection shortcut."""
    return nn.Conv2d(in_planes, out_planes, kernel_size=1, stride=stride, bias=False)


class BasicBlock(nn.Module):
    """Two 3x3 conv-BN pairs with an identity (or projected) shortcut added before the last ReLU."""

    expansion = 1

    def __init__(
        self, inplanes: int, planes: int, stride: int = 1, downsample: nn.Module | None = None
    ) -> None:
        super().__init__()
        self.conv1 = conv3x3(inplanes, planes, stride)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = conv3x3(planes, planes)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample = downsample
        self.stride = stride

    def forward(self, x: Tensor) -> Tensor:
        identity = x if self.downsample is None else _shortcut(self.downsample, x)
        out = conv_bn(self.conv1, self.bn1, x, relu=self.relu)
        return conv_bn(self.conv2, self.bn2, out, residual=identity, relu=self.relu)


def _shortcut(downsample: nn.Module, x: Tensor) -> Tensor:
    """The projection shortcut; a plain (conv, BatchNorm) pair can be folded like the others."""
    hooked = downsample._forward_hooks or downsample._forward_pre_hooks
    if type(downsample) is nn.Sequential and len(downsample) == 2 and not hooked:
        return conv_bn(downsample[0], downsample[1], x)
    return downsample(x)


class ResNet(nn.Module):
    """torchvision's ImageNet ResNet: a 7x7 stem, four stages of blocks, pooling, a linear head."""

    def __init__(
        self,
        block: type[BasicBlock],
        layers: tuple[int, int, int, int] | list[int],
        num_classes: int = 1000,
        width: int = 64,
    ) -> None:
        """``width`` is the stem's channel count, doubled by each later stage (torchvision's 64:
        64/128/256/512); a narrower network keeps the same layout at a fraction of the cost."""
        super().__init__()
        self.inplanes = width
        self.conv1 = nn.Conv2d(3, width, kernel_size=7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        self.layer1 = self._make_layer(block, width, layers[0])
        self.layer2 = self._make_layer(block, 2 * width, layers[1], stride=2)
        self.layer3 = self._make_layer(block, 4 * width, layers[2], stride=2)
        self.layer4 = self._make_layer(block, 8 * width, layers[3], stride=2)
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.fc = nn.Linear(8 * width * block.expansion, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.constant_(m.weight, 1)
                nn.init.constant_(m.bias, 0)

    def _make_layer(
        self, block: type[BasicBlock], planes: int, blocks: int, stride: int = 1
    ) -> nn.Sequential:
        downsample = None
        if stride != 1 or self.inplanes != planes * block.expansion:
            downsample = nn.Sequential(
                conv1x1(self.inplanes, planes * block.expansion, stride),
                nn.BatchNorm2d(planes * block.expansion),
            )
        layers = [block(self.inplanes, planes, stride, downsample)]
        self.inplanes = planes * block.expansion
        layers += [block(self.inplanes, planes) for _ in range(1, blocks)]
        return nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:
        x = self.maxpool(conv_bn(self.conv1, self.bn1, x, relu=self.relu))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(flatten(self.avgpool(x), 1))


def resnet18_from_safetensors(path: str | os.PathLike) -> ResNet:
    """A ResNet-18 holding the torchvision-named weights (``conv1.weight``, ``bn1.running_mean``,
    ..., ``fc.weight``) of a ``.safetensors`` state dict, or of a finetune checkpoint's ``model``,
    frozen, in eval mode, with as many classes as the file's ``fc.weight`` has rows."""
    from ..serialization import load

    state = load(path)
    if isinstance(state, Mapping) and isinstance(state.get("model"), Mapping):
        state = state["model"]
    if not isinstance(state, Mapping):
        raise CheckpointError(f"{path} holds a {type(state).__name__}, not a state dict")
    fc = state.get("fc.weight")
    classes = fc.shape[0] if isinstance(fc, Tensor) and fc.ndim == 2 else 1000
    net = ResNet(BasicBlock, [2, 2, 2, 2], num_classes=classes)
    try:
        net.load_state_dict(state)
    except (CheckpointError, ShapeError) as err:
        raise type(err)(f"{path} does not hold torchvision's ResNet-18 weights. {err}") from None
    for param in net.parameters():
        param.requires_grad = False
    return net.eval()
