"""The ONNX backend API (``onnx.backend.base``) over ``finetune.onnx.load``, as
``onnxruntime.backend`` offers it: module-level ``prepare``, ``run_model``, ``run_node`` and
``supports_device``, so the ONNX project's own backend test cases run against the library.
A sequence is passed and returned as a list of arrays, an empty optional as None."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import onnx
from onnx.backend.base import Backend, BackendRep

from ..autograd import no_grad
from ..tensor import Tensor
from .load import load


class FinetuneRep(BackendRep):
    """A prepared model: ``run(inputs)`` evaluates it on numpy arrays, without recording a graph."""

    def __init__(self, model) -> None:
        self.model = model

    def run(self, inputs: Any, **kwargs: Any) -> tuple:
        if isinstance(inputs, dict):
            inputs = [inputs[name] for name in self.model.input_names]
        elif isinstance(inputs, np.ndarray):
            inputs = [inputs]
        values = [_to_value(x) for x in inputs]
        with no_grad():
            out = self.model(*values)
        outs = out if isinstance(out, tuple) else (out,)
        return tuple(_to_numpy(o) for o in outs)


def _to_value(x):
    """A backend input as the model takes it: a list stays a list (a sequence), None stays None
    (an empty optional), anything else becomes a Tensor."""
    if x is None:
        return None
    if isinstance(x, (list, tuple)):
        return [_to_value(v) for v in x]
    return Tensor._from_array(np.asarray(x))


def _to_numpy(value):
    if value is None:
        return None
    if isinstance(value, list):
        return [_to_numpy(v) for v in value]
    return np.asarray(value._data)


class FinetuneBackend(Backend):
    """Runs ONNX models on the CPU with finetune's own ops."""

    @classmethod
    def supports_device(cls, device: str) -> bool:
        return device.upper() == "CPU"

    @classmethod
    def prepare(cls, model: onnx.ModelProto, device: str = "CPU", **kwargs: Any) -> FinetuneRep:
        super().prepare(model, device, **kwargs)
        return FinetuneRep(load(model, freeze=True))

    @classmethod
    def run_model(
        cls, model: onnx.ModelProto, inputs: Any, device: str = "CPU", **kwargs: Any
    ) -> tuple[np.ndarray, ...]:
        return cls.prepare(model, device, **kwargs).run(inputs)

    @classmethod
    def run_node(
        cls,
        node: onnx.NodeProto,
        inputs: Sequence[np.ndarray],
        device: str = "CPU",
        outputs_info: Sequence[tuple[np.dtype, tuple]] | None = None,
        **kwargs: Any,
    ) -> tuple[np.ndarray, ...]:
        """Run one node on ``inputs`` (one array per non-empty node input, in order); output
        types come from shape inference."""
        arrays = [x if isinstance(x, list) else np.asarray(x) for x in inputs]
        names = [name for name in node.input if name]
        graph_inputs = [_value_info(name, a) for name, a in zip(names, arrays)]
        graph_outputs = [onnx.helper.make_empty_tensor_value_info(name) for name in node.output]
        opset = kwargs.get("opset_version", onnx.defs.onnx_opset_version())
        model = onnx.helper.make_model(
            onnx.helper.make_graph([node], "run_node", graph_inputs, graph_outputs),
            opset_imports=[onnx.helper.make_opsetid("", opset)],
        )
        return cls.run_model(onnx.shape_inference.infer_shapes(model), arrays, device)


def _value_info(name: str, value) -> onnx.ValueInfoProto:
    """A tensor input's type, or a sequence's: the element type of its first tensor, the shape
    its tensors share (free dimensions where they differ)."""
    if isinstance(value, list):
        arrays = [np.asarray(v) for v in value] or [np.zeros(0, np.float32)]
        element = onnx.helper.np_dtype_to_tensor_dtype(arrays[0].dtype)
        shapes = {a.shape for a in arrays}
        ranks = {len(s) for s in shapes}
        shape = (
            shapes.pop() if len(shapes) == 1 else [None] * ranks.pop() if len(ranks) == 1 else None
        )
        return onnx.helper.make_tensor_sequence_value_info(name, element, shape)
    return onnx.helper.make_tensor_value_info(
        name, onnx.helper.np_dtype_to_tensor_dtype(value.dtype), value.shape
    )


prepare = FinetuneBackend.prepare
run_model = FinetuneBackend.run_model
run_node = FinetuneBackend.run_node
supports_device = FinetuneBackend.supports_device
