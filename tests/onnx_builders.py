"""Helpers that build small ONNX models with ``onnx.helper`` and run them in onnxruntime.

Shared by the import, backend, export and model tests: deterministic random weights, any opset,
and one call to get onnxruntime's answer for comparison.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

FLOAT = TensorProto.FLOAT


def value_info(name: str, shape: Sequence, elem_type: int = FLOAT) -> onnx.ValueInfoProto:
    """A graph input/output; a string in ``shape`` is a free (symbolic) dimension."""
    return helper.make_tensor_value_info(name, elem_type, list(shape))


def initializer(name: str, array: np.ndarray) -> onnx.TensorProto:
    return numpy_helper.from_array(np.asarray(array), name)


def random_weights(
    rng: np.random.Generator, shape: Sequence[int], scale: float = 0.5
) -> np.ndarray:
    return (rng.standard_normal(tuple(shape)) * scale).astype(np.float32)


def make_model(
    nodes: Sequence[onnx.NodeProto],
    inputs: Sequence[onnx.ValueInfoProto],
    outputs: Sequence[onnx.ValueInfoProto],
    initializers: Sequence[onnx.TensorProto] = (),
    opset: int = 13,
    ir_version: int | None = None,
    name: str = "test",
    check: bool = True,
) -> onnx.ModelProto:
    """A checked model; ``ir_version`` defaults to the oldest that allows ``opset``. Outputs
    made with ``make_empty_tensor_value_info`` get their type from shape inference."""
    inputs = list(inputs)
    ir_version = ir_version or _ir_for(opset)
    if ir_version < 4:  # IR 3 lists every initializer as a graph input too
        inputs += [
            helper.make_tensor_value_info(t.name, t.data_type, list(t.dims)) for t in initializers
        ]
    graph = helper.make_graph(list(nodes), name, inputs, list(outputs), list(initializers))
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = ir_version
    if any(not o.type.HasField("tensor_type") for o in model.graph.output):
        model = onnx.shape_inference.infer_shapes(model)
    if check:
        onnx.checker.check_model(model)
    return model


def _ir_for(opset: int) -> int:
    table = {7: 3, 8: 3, 9: 4, 10: 5, 11: 6, 12: 7, 13: 7, 14: 7, 15: 8, 16: 8, 17: 8, 18: 8}
    return table.get(opset, onnx.IR_VERSION if opset > 18 else 3)


def single_node(
    op_type: str,
    inputs: dict[str, np.ndarray],
    constants: dict[str, np.ndarray] | None = None,
    outputs: Sequence[str] = ("y",),
    opset: int = 13,
    free_batch: bool = True,
    **attributes,
) -> onnx.ModelProto:
    """A model of one node: ``inputs`` are graph inputs (their first dimension free when
    ``free_batch``), ``constants`` initializers; node inputs follow the dicts' order
    (graph inputs first, then constants; a key starting with ``_`` is an omitted input)."""
    constants = constants or {}
    names = [("" if k.startswith("_") else k) for k in (*inputs, *constants)]
    node = helper.make_node(
        op_type, names, list(outputs), name=f"{op_type.lower()}_node", **attributes
    )
    graph_inputs = []
    for name, array in inputs.items():
        shape = list(array.shape)
        if free_batch and shape:
            shape[0] = "N"
        elem = helper.np_dtype_to_tensor_dtype(array.dtype)
        graph_inputs.append(value_info(name, shape, elem))
    outs = [helper.make_empty_tensor_value_info(o) for o in outputs]
    inits = [initializer(k, v) for k, v in constants.items() if not k.startswith("_")]
    return make_model([node], graph_inputs, outs, inits, opset=opset)


def tiny_cnn(rng: np.random.Generator, opset: int = 13, classes: int = 3) -> onnx.ModelProto:
    """Conv → BatchNorm → Relu → MaxPool → Conv → GlobalAveragePool → Flatten → Gemm, with
    PyTorch-style weight names (``conv1.weight``, ``bn1.running_mean``, ``fc.weight``)."""
    c1, c2 = 4, 6
    weights = {
        "conv1.weight": random_weights(rng, (c1, 3, 3, 3)),
        "conv1.bias": random_weights(rng, (c1,)),
        "bn1.weight": 1 + random_weights(rng, (c1,), 0.1),
        "bn1.bias": random_weights(rng, (c1,), 0.1),
        "bn1.running_mean": random_weights(rng, (c1,), 0.1),
        "bn1.running_var": (1 + np.abs(random_weights(rng, (c1,), 0.3))).astype(np.float32),
        "layer1.0.conv1.weight": random_weights(rng, (c2, c1, 3, 3)),
        "fc.weight": random_weights(rng, (classes, c2)),
        "fc.bias": random_weights(rng, (classes,)),
    }
    nodes = [
        helper.make_node(
            "Conv",
            ["x", "conv1.weight", "conv1.bias"],
            ["c1"],
            name="/conv1/Conv",
            kernel_shape=[3, 3],
            pads=[1, 1, 1, 1],
        ),
        helper.make_node(
            "BatchNormalization",
            ["c1", "bn1.weight", "bn1.bias", "bn1.running_mean", "bn1.running_var"],
            ["b1"],
            name="/bn1/BatchNormalization",
            epsilon=1e-5,
        ),
        helper.make_node("Relu", ["b1"], ["r1"], name="/relu/Relu"),
        helper.make_node(
            "MaxPool", ["r1"], ["p1"], name="/maxpool/MaxPool", kernel_shape=[2, 2], strides=[2, 2]
        ),
        helper.make_node(
            "Conv",
            ["p1", "layer1.0.conv1.weight"],
            ["c2"],
            name="/layer1/layer1.0/conv1/Conv",
            kernel_shape=[3, 3],
            pads=[1, 1, 1, 1],
            strides=[2, 2],
        ),
        helper.make_node("Relu", ["c2"], ["r2"], name="/layer1/layer1.0/relu/Relu"),
        helper.make_node("GlobalAveragePool", ["r2"], ["g"], name="/avgpool/GlobalAveragePool"),
        helper.make_node("Flatten", ["g"], ["f"], name="/Flatten", axis=1),
        helper.make_node("Gemm", ["f", "fc.weight", "fc.bias"], ["y"], name="/fc/Gemm", transB=1),
    ]
    return make_model(
        nodes,
        [value_info("x", ["N", 3, 8, 8])],
        [value_info("y", ["N", classes])],
        [initializer(k, v) for k, v in weights.items()],
        opset=opset,
    )


def run_onnxruntime(model: onnx.ModelProto, *inputs: np.ndarray) -> list[np.ndarray]:
    """onnxruntime's outputs for ``inputs`` (graph inputs in order), all optimisations off."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    options.log_severity_level = 3
    session = ort.InferenceSession(
        model.SerializeToString(), options, providers=["CPUExecutionProvider"]
    )
    names = [i.name for i in session.get_inputs()]
    return session.run(None, dict(zip(names, inputs)))
