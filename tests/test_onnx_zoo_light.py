"""The ONNX model zoo's classic architectures, as shipped by the ``onnx`` package
(``onnx/backend/test/data/light``): each imports and matches onnxruntime, and gradients flow back
through it. They exercise operators ResNet-18 does not use (LRN, Sum, Concat, grouped and
channel-shuffled convolutions, ceil-mode pooling).

The shipped "light" weights are all 0.02: logits grow to ~1e10 and a softmax of nearly equal
huge logits turns float32 rounding (which differs between BLAS kernels and machines) into
visible differences. So the architectures get seeded, variance-preserving random weights, which
keep every activation of order one and the comparison well-conditioned on any machine."""

from __future__ import annotations

import os

import numpy as np
import onnx
import onnxruntime as ort
import pytest

import finetune as ft

LIGHT = os.path.join(os.path.dirname(onnx.__file__), "backend", "test", "data", "light")
MODELS = sorted(f for f in os.listdir(LIGHT) if f.endswith(".onnx")) if os.path.isdir(LIGHT) else []


def _with_random_weights(model: onnx.ModelProto, seed: int = 0) -> onnx.ModelProto:
    """``model`` with every float initializer redrawn: He-scaled normals for weights of rank 2
    and more, uniform in [0.5, 1.5] for vectors (biases, BatchNorm scales and variances)."""
    rng = np.random.default_rng(seed)
    model = onnx.ModelProto.FromString(model.SerializeToString())
    for tensor in model.graph.initializer:
        if tensor.data_type != onnx.TensorProto.FLOAT:
            continue
        dims = tuple(tensor.dims)
        if len(dims) >= 2:
            fan_in = int(np.prod(dims[1:]))
            values = rng.standard_normal(dims) * np.sqrt(2.0 / fan_in)
        else:
            values = rng.uniform(0.5, 1.5, dims)
        tensor.CopyFrom(onnx.numpy_helper.from_array(values.astype(np.float32), tensor.name))
    return model


def _logits(model: onnx.ModelProto) -> onnx.ModelProto:
    """``model`` without a final Softmax (its input becomes the output). Random weights with
    biases in [0.5, 1.5] carry the logits to 1e10-1e32 (SqueezeNet's to ~7e10, where two
    summation orders of the same global average pool differ by a few ulp, tens of thousands),
    and the softmax turns such differences into different answers: the logits are what can
    be compared."""
    model = onnx.ModelProto.FromString(model.SerializeToString())
    graph = model.graph
    last = graph.node[-1]
    if last.op_type == "Softmax" and last.output[0] == graph.output[0].name:
        graph.output[0].name = last.input[0]
        graph.node.remove(last)
    return model


def _graph_input(model: onnx.ModelProto):
    weights = {i.name for i in model.graph.initializer}
    (first,) = [i for i in model.graph.input if i.name not in weights]
    return first.name, [d.dim_value for d in first.type.tensor_type.shape.dim]


@pytest.mark.skipif(not MODELS, reason="this onnx wheel ships no light models")
@pytest.mark.parametrize("name", MODELS)
def test_zoo_architecture_imports_matches_onnxruntime_and_backpropagates(name):
    proto = _logits(_with_random_weights(onnx.load(os.path.join(LIGHT, name))))
    data = proto.SerializeToString()
    input_name, shape = _graph_input(proto)
    x = np.random.default_rng(0).standard_normal(shape).astype(np.float32)
    (expected,) = ort.InferenceSession(data, providers=["CPUExecutionProvider"]).run(
        None, {input_name: x}
    )
    model = ft.onnx.load(data)
    with ft.no_grad():
        got = model(ft.from_numpy(x))
    assert got.shape == expected.shape
    # logits: the random weights leave them at 1e10-1e32, compared relative to their scale
    scale = float(np.abs(expected).max())
    assert np.isfinite(expected).all() and scale > 0, f"degenerate logits ({scale:g})"
    np.testing.assert_allclose(got.numpy(), expected, rtol=1e-3, atol=1e-4 * scale)

    # every imported weight frozen; the input's gradient still flows through the whole graph
    assert not any(p.requires_grad for p in model.parameters())
    inp = ft.from_numpy(x).requires_grad_()
    model(inp).sum().backward()
    assert inp.grad is not None and inp.grad.shape == tuple(shape)
    assert np.isfinite(inp.grad.numpy()).all() and np.abs(inp.grad.numpy()).sum() > 0
    assert all(p.grad is None for p in model.parameters())
