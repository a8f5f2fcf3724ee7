"""Classify image files with an ONNX classifier, using the preprocessing and class names stored
in its metadata (or ImageNet's when the file is a 1000-class model without any)."""

from __future__ import annotations

import os

import numpy as np

from .autograd import no_grad
from .data import load_image
from .data import transforms as T
from .functions import stack


class Predictor:
    """An imported ONNX classifier with its preprocessing, ready to rank classes for images."""

    def __init__(self, model_path: str | os.PathLike) -> None:
        from . import onnx as fonnx

        self.model = fonnx.load(model_path)
        meta = getattr(self.model, "metadata", {}) or {}
        size = int(meta.get("input_size", 224))
        resize = int(meta.get("resize", round(size * 256 / 224)))
        self.transform = T.Compose(
            [
                T.Resize(resize),
                T.CenterCrop(size),
                T.ToTensor(),
                T.Normalize(meta.get("mean", T.IMAGENET_MEAN), meta.get("std", T.IMAGENET_STD)),
            ]
        )
        self.classes = list(meta["classes"]) if "classes" in meta else None

    def _names(self, n: int) -> list[str]:
        if self.classes is not None and len(self.classes) == n:
            return self.classes
        if n == 1000:
            from .models import imagenet_classes

            return imagenet_classes()
        return [f"class {i}" for i in range(n)]

    def probabilities(self, images: list) -> np.ndarray:
        """Softmax probabilities, one row per image path."""
        batch = stack([self.transform(load_image(p)) for p in images])
        with no_grad():
            logits = self.model(batch)._data.astype(np.float64)
        logits -= logits.max(axis=1, keepdims=True)
        e = np.exp(logits)
        return e / e.sum(axis=1, keepdims=True)

    def predict(self, image, top_k: int = 5) -> list[tuple[str, float]]:
        probs = self.probabilities([image])[0]
        names = self._names(len(probs))
        order = np.argsort(-probs, kind="stable")[:top_k]
        return [(names[i], float(probs[i])) for i in order]
