"""Finding and replacing the classifier head of an imported graph.

The head is the last layer with weights on the way to the output: an ``nn.Linear`` (``Gemm``,
``MatMul``, ``Flatten`` + ``Gemm``) or a 1x1 ``Conv2d`` before or after global pooling
(SqueezeNet's ``conv10 → Relu → GlobalAveragePool``, DenseNet's ``GlobalAveragePool → fc6``).
Between the head and the output only weight-free, per-sample ops may stand (``TAIL_OPS``). A
trailing ``Softmax``/``LogSoftmax`` is the output activation.

``replace_head`` puts a new trainable layer in the head's place. When ops follow the head, the
new layer and those ops become one ``ClassifierHead`` step whose output is the logits, flattened
to ``(batch, classes)``, so the model's output is its head's output (what a frozen-backbone
feature cache needs). The output activation leaves the walk: the fine-tuned model returns
logits, which the loss needs, and ``output_activation`` says what export writes after them.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..errors import OnnxImportError
from ..nn.layers.conv import Conv2d
from ..nn.layers.linear import Linear
from ..nn.module import Module
from ..tensor import Tensor

ACTIVATIONS = ("Softmax", "LogSoftmax")
# weight-free ops that keep samples apart, allowed between a recognised head and the output
TAIL_OPS = frozenset(
    {
        "Relu",
        "GlobalAveragePool",
        "GlobalMaxPool",
        "AveragePool",
        "MaxPool",
        "ReduceMean",
        "Flatten",
        "Reshape",
        "Squeeze",
        "Identity",
        "Dropout",
    }
)
_LINEAR_OPS = ("Gemm", "MatMul", "MatMul+Add")


@dataclass(frozen=True)
class Head:
    """A model's classifier head: the module ``name`` (a dotted path), its layer, the ONNX
    ``node`` it came from, its feature and class counts, the weight-free ``tail`` steps between
    it and the output, and the trailing output ``activation`` step (None if there is none)."""

    name: str
    module: Module
    node: str
    in_features: int
    out_features: int
    tail: tuple = ()
    activation: object = None


class ClassifierHead(Module):
    """A new head layer and the weight-free ops that followed the old one, as one module whose
    output is ``(batch, classes)`` logits. The ops run as in the imported graph; the small
    constants they read (shapes, axes) are kept as buffers."""

    def __init__(
        self, layer: Module, call, tail: tuple, head_output: str, logits: str, constants
    ) -> None:
        super().__init__()
        self.layer = layer
        self._call_layer = call  # how the graph called the old layer (a Gemm's transA, pads)
        self._tail = tuple(tail)
        self._head_output = head_output
        self._logits = logits
        self._constant_names = {}
        for index, (name, value) in enumerate(constants.items()):
            attribute = f"constant_{index}"
            self.register_buffer(attribute, Tensor._from_array(np.array(value._data)), False)
            self._constant_names[name] = attribute

    @property
    def in_features(self) -> int:
        return _features(self.layer)[0]

    @property
    def out_features(self) -> int:
        return _features(self.layer)[1]

    def forward(self, x: Tensor) -> Tensor:
        values = {name: getattr(self, a) for name, a in self._constant_names.items()}
        values[self._head_output] = self._call_layer(self.layer, x)
        for step in self._tail:
            args = [values[name] if name else None for name in step.inputs]
            out = step.run(*args)
            for name, value in zip(step.outputs, out if isinstance(out, tuple) else (out,)):
                if name:
                    values[name] = value
        logits = values[self._logits]
        if logits.ndim > 2 and all(s == 1 for s in logits.shape[2:]):
            logits = logits.reshape(logits.shape[0], logits.shape[1])
        return logits

    def extra_repr(self) -> str:
        return f"then {[step.op_type for step in self._tail]}"


def _features(module: Module) -> tuple[int, int]:
    if isinstance(module, Linear):
        return module.in_features, module.out_features
    if isinstance(module, Conv2d):
        return module.in_channels, module.out_channels
    if isinstance(module, ClassifierHead):
        return module.in_features, module.out_features
    raise TypeError(f"{type(module).__name__} is not a classifier layer")


def _is_head_layer(module: Module | None, named: bool) -> bool:
    """A Linear, or a Conv2d: 1x1 and ungrouped unless the user named it with ``--head``."""
    if isinstance(module, (Linear, ClassifierHead)):
        return True
    if isinstance(module, Conv2d):
        return named or (module.kernel_size == (1, 1) and module.groups == 1)
    return False


def output_activation(model) -> object | None:
    """The step computing the graph's only output with Softmax/LogSoftmax, if there is one."""
    if len(model.output_names) != 1:
        return None
    for step in reversed(model.steps):
        if model.output_names[0] in step.outputs:
            return step if step.op_type in ACTIVATIONS else None
    return None


def output_kind(model) -> str:
    """What the model returns: "probabilities", "log_probabilities" or "logits" (any other
    scores, not normalised by a final Softmax)."""
    name = getattr(model, "output_activation", None)
    if name is None:
        step = output_activation(model) if hasattr(model, "steps") else None
        name = step.op_type if step is not None else None
    return {"Softmax": "probabilities", "LogSoftmax": "log_probabilities"}.get(name, "logits")


def find_classifier(model, node: str | None = None) -> Head:
    """The head of an imported graph: the layer feeding the output through ``TAIL_OPS`` only,
    or the layer of ``node`` (a node name or module path, what ``--head`` takes). Raises
    OnnxImportError naming the nodes the user could pick."""
    steps = model.steps
    activation = output_activation(model)
    logits = activation.inputs[0] if activation is not None else _only_output(model)
    producer = {name: i for i, step in enumerate(steps) for name in step.outputs if name}
    if node is not None:
        index = _named_step(model, node)
    else:
        index = _head_by_walking_back(model, producer, logits)
    step = steps[index]
    module = model.get_submodule(step.module)
    tail = _tail(model, index, logits, activation, named=node is not None)
    if tail is None and node is None:
        raise _no_head(model, "ops other than pooling and reshapes follow its last layer")
    inputs, outputs = _features(module)
    if isinstance(module, ClassifierHead):
        activation = None
    return Head(step.module, module, step.node, inputs, outputs, tuple(tail or ()), activation)


def _only_output(model) -> str:
    if len(model.output_names) != 1:
        raise _no_head(model, f"it has {len(model.output_names)} outputs, a classifier has one")
    return model.output_names[0]


def _head_by_walking_back(model, producer: dict, value: str) -> int:
    """From ``value`` back through ``TAIL_OPS`` to the layer that feeds it."""
    steps = model.steps
    while value in producer:
        index = producer[value]
        step = steps[index]
        if step.module is not None:
            module = model.get_submodule(step.module)
            if _is_head_layer(module, named=False) and (
                step.op_type in (*_LINEAR_OPS, "Conv") or isinstance(module, ClassifierHead)
            ):
                return index
            break
        if step.op_type not in TAIL_OPS:
            break
        value = step.inputs[0]
    raise _no_head(model, _why(model, producer, value))


def _why(model, producer: dict, value: str) -> str:
    if value not in producer:
        return "its output comes straight from an input or a constant"
    step = model.steps[producer[value]]
    return (
        f"its output comes from node {step.node!r} ({step.op_type}), not from a Gemm, MatMul or "
        "1x1 Conv through pooling and reshapes"
    )


def _named_step(model, node: str) -> int:
    for index, step in enumerate(model.steps):
        if node in (step.node, step.module):
            if step.module is not None and _is_head_layer(
                model.get_submodule(step.module), named=True
            ):
                return index
            raise OnnxImportError(
                f"{model.source}: node {node!r} ({step.op_type}) is not a Gemm, MatMul or Conv "
                f"layer; {_candidates(model)}"
            )
    raise OnnxImportError(f"{model.source}: no node or layer named {node!r}; {_candidates(model)}")


def _candidates(model, count: int = 3) -> str:
    """The last few layers a user could name with ``--head``."""
    found = []
    for step in reversed(model.steps):
        if step.module is not None and _is_head_layer(model.get_submodule(step.module), True):
            found.append(f"{step.node or step.module!r} ({step.op_type})")
            if len(found) == count:
                break
    if not found:
        return "the graph has no Gemm, MatMul or Conv layer with constant weights"
    return "name the classifier layer with --head NODE, e.g. " + ", ".join(found)


def _no_head(model, why: str) -> OnnxImportError:
    return OnnxImportError(
        f"{model.source}: no classifier head found ({why}); {_candidates(model)}"
    )


def _tail(model, index: int, logits: str, activation, named: bool) -> list | None:
    """The steps after ``index`` that turn its output into ``logits``, when they read nothing
    but that output and constants, and nothing else reads their values; None otherwise. The
    output ``activation`` step is not part of it."""
    steps = [step for step in model.steps if step is not activation]
    head = model.steps[index]
    index = steps.index(head)
    chain = set(head.outputs)
    constants = set(model._constants)
    tail = []
    for step in steps[index + 1 :]:
        reads = [name for name in step.inputs if name]
        if not any(name in chain for name in reads):
            continue
        if step.module is not None or any(n not in chain and n not in constants for n in reads):
            return None
        if not named and step.op_type not in TAIL_OPS:
            return None
        tail.append(step)
        chain.update(name for name in step.outputs if name)
    if logits not in chain:
        return None
    inner = chain - {logits}
    for step in steps:
        if step is not head and step not in tail and any(n in inner for n in step.inputs):
            return None
    return tail


def replace_head(model, num_classes: int, node: str | None = None) -> Module:
    """Put a new trainable layer with ``num_classes`` outputs in place of the head (see the
    module docstring) and return it: an ``nn.Linear``, or an ``nn.Conv2d`` of the old one's
    geometry for a convolution head."""
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
        raise OnnxImportError(f"num_classes must be a positive integer, got {num_classes!r}")
    head = find_classifier(model, node)
    if isinstance(head.module, ClassifierHead):  # replaced before: only the layer changes
        head.module.layer = _new_layer(head.module.layer, num_classes)
        return head.module.layer
    steps = list(model.steps)
    index = next(i for i, step in enumerate(steps) if step.module == head.name)
    logits = _logits(model, head)
    if _tail(model, index, logits, head.activation, named=True) is None:
        raise OnnxImportError(
            f"{model.source}: the output of {head.node!r} ({steps[index].op_type}) does not reach "
            "the graph's output through ops that read only it and constants, so a new layer "
            f"there would not make the model's output its classes; {_candidates(model)}"
        )
    layer = _new_layer(head.module, num_classes)
    removed = {id(s) for s in head.tail}
    if head.activation is not None:
        removed.add(id(head.activation))
        model.output_activation = head.activation.op_type
    if not head.tail and isinstance(layer, Linear):
        _set(model, head.name, layer)
    else:  # the new layer and the ops after it become one step with (batch, classes) logits
        step = steps[index]
        values = {n: getattr(model, a) for n, a in model._constants.items()}
        used = sorted({n for s in head.tail for n in s.inputs if n in values})
        module = ClassifierHead(
            layer, step.run, head.tail, step.outputs[0], logits, {n: values[n] for n in used}
        )
        _set(model, head.name, module)
        steps[index] = type(step)(
            step.node, "Classifier", step.inputs[:1], (logits,), _call, head.name
        )
    model._rewire([s for s in steps if id(s) not in removed], (logits,))
    return layer


def _logits(model, head: Head) -> str:
    return head.activation.inputs[0] if head.activation is not None else model.output_names[0]


def _call(module, x):
    return module(x)


def _new_layer(old: Module, num_classes: int) -> Module:
    if isinstance(old, Linear):
        return Linear(old.in_features, num_classes, bias=True)
    return Conv2d(
        old.in_channels,
        num_classes,
        old.kernel_size,
        old.stride,
        old.padding,
        old.dilation,
        bias=True,
    )


def _set(model, name: str, module: Module) -> None:
    parent, _, attribute = name.rpartition(".")
    setattr(model.get_submodule(parent), attribute, module)
