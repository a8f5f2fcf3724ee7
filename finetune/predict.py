"""Classify image files with an ONNX classifier, using the preprocessing and class names stored
in its metadata (or ImageNet's when the file is a 1000-class model without any).

The model's output is turned into probabilities once: a file whose metadata says ``output`` is
``probabilities`` (``finetune`` writes it when the graph ends in a Softmax), or whose graph ends
in a Softmax, is used as it is; ``log_probabilities`` (LogSoftmax) is exponentiated; anything
else is taken as logits and goes through a softmax."""

from __future__ import annotations

import os

import numpy as np

from .autograd import no_grad
from .data import load_image
from .data import transforms as T
from .errors import OnnxImportError
from .functions import stack
from .onnx.heads import output_kind
from .recipe import fixed_image_size

OUTPUT_KINDS = ("probabilities", "log_probabilities", "logits")


class Predictor:
    """An imported ONNX classifier with its preprocessing, ready to rank classes for images."""

    def __init__(self, model_path: str | os.PathLike) -> None:
        from . import onnx as fonnx

        self.model = fonnx.load(model_path)
        self.source = str(model_path)
        meta = getattr(self.model, "metadata", {}) or {}
        fixed = fixed_image_size(self.model)[0]  # a foreign file: its input's own size
        size = int(meta.get("input_size", fixed or 224))
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
        self.output = meta.get("output") or output_kind(self.model)
        if self.output not in OUTPUT_KINDS:
            raise OnnxImportError(
                f"{model_path}: metadata 'output' is {self.output!r}; expected one of "
                f"{', '.join(OUTPUT_KINDS)}"
            )

    @property
    def num_classes(self) -> int | None:
        """How many classes the model ranks: its class names', else its declared output's."""
        if self.classes is not None:
            return len(self.classes)
        types = self.model.output_types
        shape = types[0].shape if types else None
        return shape[1] if shape and len(shape) >= 2 and shape[1] else None

    def _names(self, n: int) -> list[str]:
        if self.classes is not None and len(self.classes) == n:
            return self.classes
        if n == 1000:
            from .models import imagenet_classes

            return imagenet_classes()
        return [f"class {i}" for i in range(n)]

    def probabilities(self, images: list) -> np.ndarray:
        """Class probabilities, one row per image path (softmax applied once, see above)."""
        batch = stack([self.transform(load_image(p)) for p in images])
        with no_grad():
            out = self.model(batch)
        scores = np.asarray(out._data, dtype=np.float64)
        if scores.ndim > 2 and all(s == 1 for s in scores.shape[2:]):
            scores = scores.reshape(scores.shape[:2])  # SqueezeNet's (batch, classes, 1, 1)
        if scores.ndim != 2:
            raise OnnxImportError(
                f"{self.source}: a classifier returns (batch, classes) scores, this model "
                f"returns shape {list(out.shape)}"
            )
        if self.output == "probabilities":
            return scores
        if self.output == "log_probabilities":
            return np.exp(scores)
        scores -= scores.max(axis=1, keepdims=True)
        e = np.exp(scores)
        return e / e.sum(axis=1, keepdims=True)

    def predict(self, image, top_k: int = 5) -> list[tuple[str, float]]:
        probs = self.probabilities([image])[0]
        names = self._names(len(probs))
        order = np.argsort(-probs, kind="stable")[:top_k]
        return [(names[i], float(probs[i])) for i in order]
