"""Facts about the pretrained files the library can fetch, read from ``registry.json``.

The facts come from the ONNX model zoo's manifest; ``models/README.md`` documents each field.
The sha256 identifies a file wherever it was downloaded from, so mirrors can be added freely.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import cache
from importlib import resources

from ..errors import DownloadError


@dataclass(frozen=True)
class Pretrained:
    """One downloadable model file: where it lives, how to check it, how to feed it."""

    name: str
    file: str
    bytes: int
    sha256: str
    urls: tuple[str, ...]
    input_name: str
    output_name: str
    features: str
    preprocessing: dict
    top1: float
    classes: str


def _read() -> dict[str, Pretrained]:
    raw = json.loads(resources.files(__package__).joinpath("registry.json").read_text("utf-8"))
    return {
        name: Pretrained(
            name=name,
            file=e["file"],
            bytes=e["bytes"],
            sha256=e["sha256"],
            urls=tuple(e["urls"]),
            input_name=e["input"]["name"],
            output_name=e["output"]["name"],
            features=e["features"]["name"],
            preprocessing=e["preprocessing"],
            top1=e["top1"],
            classes=e["classes"],
        )
        for name, e in raw.items()
    }


PRETRAINED: dict[str, Pretrained] = _read()


def pretrained(name: str) -> Pretrained:
    """The registry entry called ``name`` (``"resnet18"``)."""
    try:
        return PRETRAINED[name]
    except KeyError:
        known = ", ".join(sorted(PRETRAINED))
        raise DownloadError(f"no pretrained model called {name!r}; known: {known}") from None


def imagenet_classes() -> list[str]:
    """The 1000 ImageNet class names in the zoo's output order (``"tench, Tinca tinca"``)."""
    return list(_synset())


@cache
def _synset() -> tuple[str, ...]:
    text = resources.files(__package__).joinpath("imagenet_classes.txt").read_text("utf-8")
    return tuple(line.split(" ", 1)[1] for line in text.splitlines() if line.strip())
