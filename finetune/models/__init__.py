"""``finetune.models``: torchvision's ResNet-18, imported from any ResNet-18 ONNX file or the zoo.

``resnet18()`` is randomly initialised as torchvision does; ``resnet18(weights="file.onnx")``
loads a ResNet-18 ONNX graph of any common layout into the same module tree, every weight frozen;
``resnet18(pretrained=True)`` downloads (once) and imports the ONNX model zoo's ``resnet18-v1-7``.
"""

from __future__ import annotations

import os
from pathlib import Path

from . import registry
from .cache import cache_dir, fetch
from .registry import PRETRAINED, imagenet_classes
from .resnet import BasicBlock, ResNet
from .resnet_onnx import load_resnet18

__all__ = [
    "PRETRAINED",
    "BasicBlock",
    "ResNet",
    "cache_dir",
    "download",
    "imagenet_classes",
    "load_resnet18",
    "resnet18",
]


def resnet18(
    num_classes: int = 1000,
    weights: str | os.PathLike | None = None,
    pretrained: bool = False,
    progress: bool = True,
    url: str | None = None,
) -> ResNet:
    """torchvision's ResNet-18. With ``weights`` (a ResNet-18 .onnx file; ``"DEFAULT"`` means
    ``pretrained=True``) or ``pretrained`` (the zoo's resnet18-v1-7, downloaded once) its weights
    come from that file, frozen, in eval mode, and the number of classes is the file's."""
    if weights == "DEFAULT":
        weights, pretrained = None, True
    if weights is not None and pretrained:
        raise ValueError("pass either weights= (a local .onnx file) or pretrained=True, not both")
    if pretrained:
        weights = download("resnet18", progress=progress, url=url)
    if weights is None:
        return ResNet(BasicBlock, [2, 2, 2, 2], num_classes=num_classes)
    model = load_resnet18(weights)
    classes = model.fc.out_features
    if num_classes not in (1000, classes):  # 1000 is the default, not a request
        raise ValueError(
            f"{weights} has {classes} classes, not num_classes={num_classes}; load it, then "
            f"replace the head: model.fc = nn.Linear(512, {num_classes})"
        )
    return model


def download(
    name: str,
    dest: str | os.PathLike | None = None,
    progress: bool = True,
    url: str | None = None,
) -> Path:
    """Path of the registry's file ``name`` in ``dest`` (default: ``cache_dir()``), downloaded
    unless a verified copy is there. ``url`` or ``$FINETUNE_MODEL_URL`` replaces the mirrors."""
    entry = registry.pretrained(name)
    override = url or os.environ.get("FINETUNE_MODEL_URL")
    urls = (override,) if override else entry.urls
    folder = Path(dest).expanduser() if dest is not None else cache_dir()
    return fetch(urls, folder / entry.file, entry.sha256, entry.bytes, progress=progress)
