"""``OnnxModule``: an imported ONNX graph as an ``nn.Module`` that walks its nodes in order.

Nodes with weights are real submodules, found by dotted name at every forward, so assigning
``model.fc = nn.Linear(512, 10)`` rewires the walk. Every other node is a small function on
tensors. The walk uses the library's own differentiable ops, so gradients flow end to end.
For frozen inference the forward runs the graph's inference plan instead (``plan.py``: folded
constants and shape arithmetic, BatchNorm folded into convolutions, fused activations) whenever
its result is the walk's.

Values are tensors, sequences (Python lists of tensors) or optionals (None when empty). A node
with subgraphs (``If``, ``Loop``, ``Scan``, ``SequenceMap``) holds its bodies as child
``OnnxModule``s; a body reads the enclosing scope's values by name, and the step that runs it
lists those names as inputs, so the walk keeps them alive until the node has run.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from ..autograd.engine import is_grad_enabled
from ..autograd.function import is_tracing
from ..errors import OnnxImportError, ShapeError
from ..functions import cat
from ..nn.layers.linear import Linear
from ..nn.module import Module
from ..tensor import Tensor
from . import heads
from .plan import NODE_ERRORS, Plan, last_uses, node_failed


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
    """A graph input (or output): its name, element type and shape (ints, or None for a free
    dimension). ``kind`` is "tensor", "sequence" (a list of ``element``) or "optional" (None or
    an ``element``); dtype and shape describe tensors only."""

    name: str
    dtype: np.dtype | None
    shape: tuple | None
    kind: str = "tensor"
    element: GraphInput | None = None

    def describe(self) -> str:
        """The type as a user reads it: ``float32[?, 3]``, ``sequence(int64[])``,
        ``optional(float32[2])``; ``?`` is a free dimension."""
        if self.kind != "tensor":
            return f"{self.kind}({self.element.describe() if self.element else '?'})"
        dtype = str(self.dtype) if self.dtype is not None else "tensor"
        if self.shape is None:
            return dtype
        return f"{dtype}[{', '.join('?' if d is None else str(d) for d in self.shape)}]"


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


class Bodies(Module):
    """The subgraphs of one node (``then_branch``/``else_branch`` of If, ``body`` of Loop, Scan
    and SequenceMap), each a child ``OnnxModule`` under its attribute name. No forward."""


class OnnxModule(Module):
    """An imported ONNX graph. ``forward(*inputs)`` takes the graph's inputs in order and returns
    its output (a tuple when the graph has several). ``metadata`` holds the model's
    ``metadata_props``. The loader registers the submodules, then sets the walk. A subgraph is an
    ``OnnxModule`` too, run by its node through ``Body``, with ``outer_names`` read from the
    enclosing scope."""

    def __init__(
        self,
        inputs: list[GraphInput],
        outputs: list[str],
        metadata: dict[str, str] | None = None,
        source: str = "<model>",
        output_types: list[GraphInput] | None = None,
        fixed_batch: int | None = None,
    ) -> None:
        super().__init__()
        # the batch size the file bakes in where the import could not free it (None: any)
        self.fixed_batch = fixed_batch
        self._graph_inputs = tuple(inputs)
        self._graph_outputs = tuple(outputs)
        self._output_types = tuple(output_types or ())
        self.metadata = dict(metadata or {})
        self.source = source
        # "Softmax"/"LogSoftmax" once replace_head moved the graph's output activation out of
        # the walk: the model returns logits, export appends the activation
        self.output_activation: str | None = None
        self._set_walk([], {})

    def _set_walk(
        self, steps: list[Step], constants: dict[str, str], outer: Sequence[str] = ()
    ) -> None:
        """The nodes to run, which attribute holds each constant value the walk reads, and the
        names a subgraph reads from its enclosing scope."""
        self._steps = tuple(steps)
        self._constants = dict(constants)
        self._outer = tuple(outer)
        self._last_use = last_uses(self._steps, self._graph_outputs)
        self._plan = _PlanSlot()  # built on the first call that can use it

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

    @property
    def input_types(self) -> tuple[GraphInput, ...]:
        """Each input's declared type (``describe()`` prints it)."""
        return self._graph_inputs

    @property
    def output_types(self) -> tuple[GraphInput, ...]:
        """The declared type of each output (what an empty Loop or Scan output is made of)."""
        return self._output_types

    @property
    def outer_names(self) -> tuple[str, ...]:
        """The enclosing scope's values this graph (a subgraph) reads by name."""
        return self._outer

    def forward(self, *inputs):
        batch = _batch_of(inputs)
        if self.fixed_batch is not None and batch is not None and batch != self.fixed_batch:
            results = self._walk_in_slices(inputs, batch)
        else:
            results = self._run(self._bind_inputs(inputs))
        return results[0] if len(results) == 1 else results

    def _run(self, values: dict) -> tuple:
        """The graph on bound inputs: through the inference plan when its result is the exact
        walk's (eval mode, not tracing; see ``Plan.usable``), else the walk."""
        inputs = tuple(values.values())
        if self.training or is_tracing():
            return self._walk(values)
        plan = self._plan.plan
        if plan is None or not plan.current(self):
            # built (again) only when it could run now: not on every step of a loop that
            # trains the constants a stale plan folded, nor for inputs needing a gradient
            if is_grad_enabled() and (
                any(isinstance(x, Tensor) and x.requires_grad for x in inputs)
                or (plan is not None and plan.folds_trainable())
            ):
                return self._walk(values)
            # no plan for a subgraph, non-tensor inputs, or a walk that fails (the walk reports)
            plan = self._plan.plan = Plan.build(self)
            if plan is None:
                return self._walk(values)
        if plan.usable(self, inputs):
            return plan.run(self, inputs)
        return self._walk(values)

    def _walk_in_slices(self, inputs: tuple, batch: int) -> tuple:
        """Run a graph that still needs its file's batch size on slices of that many samples
        (the last one padded by repeating its last sample) and join the outputs' rows."""
        size, parts = self.fixed_batch, []
        inputs = tuple(Tensor._from_array(x) if isinstance(x, np.ndarray) else x for x in inputs)
        for start in range(0, batch, size):
            index = np.minimum(np.arange(start, start + size), batch - 1)
            piece = tuple(
                x[index] if isinstance(x, Tensor) and x.ndim and x.shape[0] == batch else x
                for x in inputs
            )
            parts.append((self._run(self._bind_inputs(piece)), min(size, batch - start)))
        joined = []
        for position in range(len(parts[0][0])):
            outs = [(out[position], n) for out, n in parts]
            if not all(isinstance(o, Tensor) and o.ndim and o.shape[0] == size for o, _ in outs):
                raise OnnxImportError(
                    f"{self.source}: the graph is fixed at batch size {size} and its output "
                    f"{self.output_names[position]!r} has no batch axis to join; run it on "
                    f"{size} sample(s) at a time"
                )
            joined.append(cat([o if n == size else o[:n] for o, n in outs], 0))
        return tuple(joined)

    def run_body(self, inputs: Sequence, outer: dict) -> tuple:
        """Run this graph as a subgraph: ``inputs`` bound to its inputs in order (unchecked: a
        loop-carried value may change shape), ``outer`` the enclosing scope's values by name.
        Always returns a tuple of the outputs."""
        if len(inputs) != len(self._graph_inputs):
            raise ShapeError(
                f"{self.source}: the subgraph takes {len(self._graph_inputs)} input(s) "
                f"{list(self.input_names)}, got {len(inputs)}"
            )
        values = {name: outer[name] for name in self._outer}
        values.update(zip(self.input_names, inputs))
        return self._walk(values)

    def _walk(self, values: dict) -> tuple:
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
            except NODE_ERRORS as error:
                if isinstance(error, OnnxImportError):
                    raise
                raise node_failed(self.source, step, args, error) from error
            outs = out if isinstance(out, tuple) else (out,)
            for name, value in zip(step.outputs, outs):
                if name:
                    values[name] = value
            for name in self._last_use.get(index, ()):
                values.pop(name, None)
        try:
            return tuple(values[name] for name in self._graph_outputs)
        except KeyError as error:
            raise OnnxImportError(
                f"{self.source}: output {error.args[0]!r} is produced by no node"
            ) from None

    def _bind_inputs(self, inputs: tuple) -> dict:
        expected = self._graph_inputs
        if len(inputs) != len(expected):
            raise OnnxImportError(
                f"{self.source}: the graph takes {len(expected)} input(s) "
                f"{[i.name for i in expected]}, got {len(inputs)}"
            )
        source = self.source
        return {spec.name: _bind_value(spec, x, source) for spec, x in zip(expected, inputs)}

    def find_head(self, node: str | None = None) -> tuple[str, Module]:
        """``(name, module)`` of the classifier head (see ``finetune.onnx.heads``)."""
        return find_head(self, node)

    def replace_head(self, num_classes: int, node: str | None = None) -> Module:
        """Put a new trainable layer with ``num_classes`` outputs in place of the head (or of
        ``node``'s layer) and return it; the model then returns logits (``output_activation``
        names the Softmax it dropped, which export writes back)."""
        return replace_head(self, num_classes, node)

    def _rewire(self, steps: list[Step], outputs: tuple[str, ...]) -> None:
        """A new walk and outputs (``heads.replace_head`` folds the head's tail into one step)."""
        self._graph_outputs = tuple(outputs)
        self._set_walk(steps, self._constants, self._outer)

    def extra_repr(self) -> str:
        return f"inputs={list(self.input_names)}, outputs={list(self.output_names)}"


class Body:
    """A subgraph bound to its enclosing scope's values, as a converter sees it: call it with the
    body's inputs, get a tuple of its outputs."""

    def __init__(self, module: OnnxModule, outer: dict) -> None:
        self.module = module
        self.outer = outer

    def __call__(self, *inputs) -> tuple:
        return self.module.run_body(inputs, self.outer)

    @property
    def num_inputs(self) -> int:
        return len(self.module.input_names)

    @property
    def num_outputs(self) -> int:
        return len(self.module.output_names)

    @property
    def output_types(self) -> tuple[GraphInput, ...]:
        return self.module.output_types


def _batch_of(inputs: tuple) -> int | None:
    first = inputs[0] if inputs else None
    if isinstance(first, Tensor) and first.ndim:
        return int(first.shape[0])
    if isinstance(first, np.ndarray) and first.ndim:
        return int(first.shape[0])
    return None


class _PlanSlot:
    """Where an ``OnnxModule`` keeps its inference plan. A copy of the module starts without
    one: the plan holds the original's modules, and is rebuilt on the first call that can use
    it."""

    __slots__ = ("plan",)

    def __init__(self) -> None:
        self.plan: Plan | None = None

    def __reduce__(self):
        return _PlanSlot, ()


def _bind_value(spec: GraphInput, value, source: str):
    """A user's input value as the walk holds it (Tensor, list of Tensors or None), checked."""
    if spec.kind == "optional":
        return None if value is None else _bind_value(spec.element, value, source)
    if spec.kind == "sequence":
        if isinstance(value, Tensor) or not isinstance(value, (list, tuple)):
            raise OnnxImportError(
                f"{source}: input {spec.name!r} is a {spec.describe()}; pass a list of tensors, "
                f"got {type(value).__name__}"
            )
        return [_bind_value(spec.element, v, source) for v in value]
    if value is None or (
        isinstance(value, (list, tuple)) and any(isinstance(v, Tensor) for v in value)
    ):
        raise OnnxImportError(
            f"{source}: input {spec.name!r} is a tensor {spec.describe()}, got "
            f"{type(value).__name__}"
        )
    if not isinstance(value, Tensor):
        value = Tensor._from_array(np.asarray(value))
    _check_input(spec, value, source)
    return value


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


def find_head(model: Module, node: str | None = None) -> tuple[str, Module]:
    """``(name, module)`` of the model's classifier head. For an imported graph, the layer that
    feeds its output (see ``finetune.onnx.heads``) or the layer of ``node``; for other modules,
    the last registered ``nn.Linear`` (or the submodule named ``node``)."""
    if isinstance(model, OnnxModule):
        head = heads.find_classifier(model, node)
        return head.name, head.module
    if node is not None:
        try:
            return node, model.get_submodule(node)
        except AttributeError:
            raise OnnxImportError(f"{type(model).__name__} has no layer named {node!r}") from None
    found = [(name, m) for name, m in model.named_modules() if isinstance(m, Linear)]
    if not found:
        raise OnnxImportError(
            f"{type(model).__name__} has no linear layer to use as its head "
            "(no Gemm or MatMul with a constant weight was imported as nn.Linear)"
        )
    return found[-1]


def replace_head(model: Module, num_classes: int, node: str | None = None) -> Module:
    """Swap the head for a new trainable layer with ``num_classes`` outputs and return it."""
    if isinstance(model, OnnxModule):
        return heads.replace_head(model, num_classes, node)
    name, old = find_head(model, node)
    head = Linear(old.in_features, num_classes, bias=True)
    parent_name, _, attribute = name.rpartition(".")
    setattr(model.get_submodule(parent_name), attribute, head)
    return head
