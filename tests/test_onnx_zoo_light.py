"""The ONNX model zoo's classic architectures, as shipped by the ``onnx`` package with light
weights (``onnx/backend/test/data/light``): each imports and matches onnxruntime, and gradients
flow back through it. They exercise operators ResNet-18 does not use (LRN, Sum, Concat, grouped
and channel-shuffled convolutions, ceil-mode pooling)."""

from __future__ import annotations

import os

import numpy as np
import onnx
import onnxruntime as ort
import pytest

import finetune as ft

LIGHT = os.path.join(os.path.dirname(onnx.__file__), "backend", "test", "data", "light")
MODELS = sorted(f for f in os.listdir(LIGHT) if f.endswith(".onnx")) if os.path.isdir(LIGHT) else []


def _graph_input(model: onnx.ModelProto):
    weights = {i.name for i in model.graph.initializer}
    (first,) = [i for i in model.graph.input if i.name not in weights]
    return first.name, [d.dim_value for d in first.type.tensor_type.shape.dim]


@pytest.mark.skipif(not MODELS, reason="this onnx wheel ships no light models")
@pytest.mark.parametrize("name", MODELS)
def test_zoo_architecture_imports_matches_onnxruntime_and_backpropagates(name):
    path = os.path.join(LIGHT, name)
    proto = onnx.load(path)
    input_name, shape = _graph_input(proto)
    x = np.random.default_rng(0).standard_normal(shape).astype(np.float32)
    (expected,) = ort.InferenceSession(path, providers=["CPUExecutionProvider"]).run(
        None, {input_name: x}
    )
    model = ft.onnx.load(path)
    with ft.no_grad():
        got = model(ft.from_numpy(x))
    np.testing.assert_allclose(got.numpy(), expected, rtol=1e-3, atol=1e-4)

    # every imported weight frozen; the input's gradient still flows through the whole graph
    assert not any(p.requires_grad for p in model.parameters())
    inp = ft.from_numpy(x).requires_grad_()
    model(inp).sum().backward()
    assert inp.grad is not None and inp.grad.shape == tuple(shape)
    assert np.isfinite(inp.grad.numpy()).all() and np.abs(inp.grad.numpy()).sum() > 0
    assert all(p.grad is None for p in model.parameters())
