"""The architecture test files under ``tests/data/architectures``: their weights were stripped
when they were written (``make_architectures.py``); here they get seeded random ones back."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx

FOLDER = Path(__file__).resolve().parent / "data" / "architectures"
STRIPPED = "finetune-test: values stripped"


def names() -> list[str]:
    return sorted(p.stem for p in FOLDER.glob("*.onnx"))


def load_proto(name: str, seed: int = 0) -> onnx.ModelProto:
    """The file ``name`` with every stripped weight refilled: He-scaled normals for rank 2 and
    more, uniform in [0.5, 1.5] for vectors (biases, norm scales, BatchNorm variances)."""
    model = onnx.load(FOLDER / f"{name}.onnx")
    rng = np.random.default_rng(seed)
    for tensor in model.graph.initializer:
        if tensor.doc_string != STRIPPED:
            continue
        dims = tuple(tensor.dims)
        if len(dims) >= 2:
            values = rng.standard_normal(dims) * np.sqrt(2.0 / max(1, int(np.prod(dims[1:]))))
        else:
            values = rng.uniform(0.5, 1.5, dims)
        tensor.CopyFrom(onnx.numpy_helper.from_array(values.astype(np.float32), tensor.name))
    return model


def example_input(model: onnx.ModelProto, batch: int = 1, seed: int = 0) -> np.ndarray:
    """A seeded input of the graph's first input's shape (its free dimensions set to ``batch``)."""
    weights = {t.name for t in model.graph.initializer}
    first = next(i for i in model.graph.input if i.name not in weights)
    dims = first.type.tensor_type.shape.dim
    shape = [d.dim_value if d.HasField("dim_value") else batch for d in dims]
    return np.random.default_rng(seed).standard_normal(shape).astype(np.float32)
