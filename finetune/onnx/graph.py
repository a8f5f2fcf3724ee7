"""``OnnxModule``: an imported ONNX graph as an ``nn.Module`` that walks its nodes in order.

Nodes with weights are real submodules, found by dotted name at every forward, so assigning
``model.fc = nn.Linear(512, 10)`` rewires the walk. Every other node is a small function on
tensors. The walk uses the library's own differentiable ops, so gradients flow end to end.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from ..errors import FinetuneError, OnnxImportError
from ..nn.layers.linear import Linear
from ..nn.module import Module
from ..tensor import Tensor


@dataclass(frozen=True)
class Step:
    """One node of the walk: ``run(*inputs)``, or ``run(module, *inputs)`` when ``module`` names
    the submodule it calls. Input names are graph value names ("" for an omitted input)."""

    node: str
    op_type: str
    inputs: tuple[str, ...]
    outputs: tuple[str, ...]
    run: Callable
    module: str | None = None


@dataclass(frozen=True)
class GraphInput:
    """A user input: its name, element type and shape (ints, or None for a free dimension)."""

    name: str
    dtype: np.dtype | None
    shape: tuple | None


class Scope(Module):
    """A container for one level of a dotted name, so ``model.layer1[0].conv1`` reaches
    ``layer1.0.conv1`` as in PyTorch. It has no forward of its own."""

    def __getitem__(self, key: int | str) -> Module:
        try:
            return self._modules[str(key)]
        except KeyError:
            raise KeyError(f"{key!r} is not in this scope (has {list(self._modules)})") from None

    def __setitem__(self, key: int | str, module: Module) -> None:
        setattr(self, str(key), module)

    def __len__(self) -> int:
        return len(self._modules)

    def __iter__(self):
        return iter(self._modules.values())


class OnnxModule(Module):
    """An imported ONNX graph. ``forward(*inputs)`` takes the graph's inputs in order and returns
    its output (a tuple when the graph has several). ``metadata`` holds the model's
    ``metadata_props``. The loader registers the submodules, then sets the walk."""

    def __init__(
        self,
        inputs: list[GraphInput],
        outputs: list[str],
        metadata: dict[str, str] | None = None,
        source: str = "<model>",
    ) -> None:
        super().__init__()
        self._graph_inputs = tuple(inputs)
        self._graph_outputs = tuple(outputs)
        self.metadata = dict(metadata or {})
        self.source = source
        self._set_walk([], {})

    def _set_walk(self, steps: list[Step], constants: dict[str, str]) -> None:
        """The nodes to run, and which attribute holds each constant value the walk reads."""
        self._steps = tuple(steps)
        self._constants = dict(constants)
        self._last_use = _last_uses(self._steps, self._graph_outputs)

    @property
    def steps(self) -> tuple[Step, ...]:
        """The node walk, in execution order."""
        return self._steps

    @property
    def input_names(self) -> tuple[str, ...]:
        return tuple(i.name for i in self._graph_inputs)

    @property
    def output_names(self) -> tuple[str, ...]:
        return self._graph_outputs

    def forward(self, *inputs):
        values = self._bind_inputs(inputs)
        for name, attribute in self._constants.items():
            values[name] = getattr(self, attribute)
        for index, step in enumerate(self._steps):
            try:
                args = [values[name] if name else None for name in step.inputs]
            except KeyError as error:
                raise OnnxImportError(
                    f"{self.source}: node {step.node!r} ({step.op_type}) reads {error.args[0]!r}, "
                    "which no earlier node produced"
                ) from None
            try:
                if step.module is not None:
                    out = step.run(self.get_submodule(step.module), *args)
                else:
                    out = step.run(*args)
            except (
                FinetuneError,
                ValueError,
                IndexError,
                TypeError,
                AttributeError,
                MemoryError,
            ) as error:
                if isinstance(error, OnnxImportError):
                    raise
                shapes = [list(a.shape) if isinstance(a, Tensor) else a for a in args]
                raise OnnxImportError(
                    f"{self.source}: node {step.node!r} ({step.op_type}) failed on inputs "
                    f"{list(step.inputs)} of shapes {shapes}: {error}"
                ) from error
            outs = out if isinstance(out, tuple) else (out,)
            for name, value in zip(step.outputs, outs):
                if name:
                    values[name] = value
            for name in self._last_use.get(index, ()):
                values.pop(name, None)
        results = tuple(values[name] for name in self._graph_outputs)
        return results[0] if len(results) == 1 else results

    def _bind_inputs(self, inputs: tuple) -> dict:
        expected = self._graph_inputs
        if len(inputs) != len(expected):
            raise OnnxImportError(
                f"{self.source}: the graph takes {len(expected)} input(s) "
                f"{[i.name for i in expected]}, got {len(inputs)}"
            )
        values = {}
        for spec, value in zip(expected, inputs):
            if not isinstance(value, Tensor):
                value = Tensor._from_array(np.asarray(value))
            _check_input(spec, value, self.source)
            values[spec.name] = value
        return values

    def find_head(self) -> tuple[str, Linear]:
        return find_head(self)

    def replace_head(self, num_classes: int) -> Linear:
        """Replace the last linear layer by a new trainable ``nn.Linear`` with ``num_classes``."""
        return replace_head(self, num_classes)

    def extra_repr(self) -> str:
        return f"inputs={list(self.input_names)}, outputs={list(self.output_names)}"


def _check_input(spec: GraphInput, value: Tensor, source: str) -> None:
    """Rank and the non-batch dimensions must match; the first dimension is free, since files
    exported at a fixed batch size (the model zoo's [1, 3, 224, 224]) run at any batch size."""
    shape = tuple(value.shape)
    if spec.shape is not None:
        mismatch = len(shape) != len(spec.shape) or any(
            want is not None and want != got for want, got in zip(spec.shape[1:], shape[1:])
        )
        if mismatch:
            want = ["?" if d is None or i == 0 else d for i, d in enumerate(spec.shape)]
            raise OnnxImportError(
                f"{source}: input {spec.name!r} expects shape {want} (? is free), got {list(shape)}"
            )
    got = value._data.dtype
    if spec.dtype is not None and got != spec.dtype and not (got.kind == spec.dtype.kind == "f"):
        # any float width is fine: a model converted with .double() takes float64 input
        raise OnnxImportError(
            f"{source}: input {spec.name!r} expects {spec.dtype} elements, got {value._data.dtype}"
        )


def _last_uses(steps: tuple[Step, ...], keep: tuple[str, ...]) -> dict[int, tuple[str, ...]]:
    """For each step, the values no later step reads (freed as the walk goes)."""
    last: dict[str, int] = {}
    for index, step in enumerate(steps):
        for name in step.inputs:
            if name:
                last[name] = index
    by_step: dict[int, list[str]] = {}
    for name, index in last.items():
        if name not in keep:
            by_step.setdefault(index, []).append(name)
    return {index: tuple(names) for index, names in by_step.items()}


def find_head(model: Module) -> tuple[str, Linear]:
    """``(name, module)`` of the model's last linear layer: last in the walk for an imported graph,
    last registered otherwise."""
    if isinstance(model, OnnxModule):
        for step in reversed(model.steps):
            if step.module is not None:
                module = model.get_submodule(step.module)
                if isinstance(module, Linear):
                    return step.module, module
    found = [(name, m) for name, m in model.named_modules() if isinstance(m, Linear)]
    if not found:
        raise OnnxImportError(
            f"{type(model).__name__} has no linear layer to use as its head "
            "(no Gemm or MatMul with a constant weight was imported as nn.Linear)"
        )
    return found[-1]


def replace_head(model: Module, num_classes: int) -> Linear:
    """Swap the last linear layer for a new trainable one with ``num_classes`` outputs."""
    name, old = find_head(model)
    head = Linear(old.in_features, num_classes, bias=True)
    parent_name, _, attribute = name.rpartition(".")
    setattr(model.get_submodule(parent_name), attribute, head)
    return head
