"""``finetune.onnx.export``: trace a model's forward and write it as a standard ONNX file.

The forward runs in eval mode under ``no_grad`` with a tracer that sees every primitive
``Function`` call and every in-place rebind. Each call needed for the outputs becomes standard
ONNX nodes through the emitters in ``export_ops``; parameters and buffers become initializers
named by their ``state_dict`` keys. A tensor a traced op reads that is none of those, nor an
input, nor a traced result, was made outside the trace (``torch.ones(...)``, a comparison,
``argmax``) and can only be written as a constant. A second trace on other input rows (one more
of them with a dynamic batch) tells the harmless ones from those that depend on the input, which
are refused. Python ints taken from ``x.shape`` reach ops as options: reshapes and expands of
the batch dimension are rewritten to follow it; other uses stay fixed to the traced size.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import onnx
from onnx import helper, numpy_helper

from ..autograd import conv, engine, nn_ops, ops
from ..autograd.function import set_tracer
from ..errors import OnnxExportError
from ..tensor import Tensor
from ..utils.atomic import atomic_write
from . import export_ops
from .metadata import encode_metadata

_MIN_OPSET = 13


@dataclass(frozen=True)
class Call:
    """One traced primitive: what ``Function.apply`` was given and what it returned, and the
    version of each tensor argument when it was read."""

    function: type
    args: tuple
    kwargs: dict
    results: tuple
    versions: tuple = ()


class Rebind:
    """The pseudo-call an in-place op leaves in the trace: ``results[0]`` now holds ``args[0]``."""


def _versions(values) -> tuple:
    return tuple(v._version.value if isinstance(v, Tensor) else None for v in values)


class _Tracer:
    def __init__(self) -> None:
        self.calls: list[Call] = []

    def record(self, function, args, kwargs, results) -> None:
        call = Call(function, tuple(args), dict(kwargs), tuple(results), _versions(args))
        self.calls.append(call)

    def rebind(self, tensor: Tensor, result: Tensor) -> None:
        self.calls.append(Call(Rebind, (result,), {}, (tensor,), _versions((result, tensor))))


def export(
    model,
    example_input: Tensor | Sequence[Tensor],
    path: str | os.PathLike,
    opset_version: int = 17,
    input_names: Sequence[str] = ("input",),
    output_names: Sequence[str] = ("output",),
    dynamic_batch: bool = True,
    metadata: Mapping[str, Any] | None = None,
    fold_batchnorm: bool = False,
) -> onnx.ModelProto:
    """Write ``model`` as an ONNX file at ``path`` (atomically) and return the ``ModelProto``.

    ``example_input`` is one tensor or a tuple of them (one per ``input_names`` entry). With
    ``dynamic_batch`` the first dimension of inputs and outputs is the symbol ``batch``; an
    imported graph that still needs its file's batch size (``OnnxModule.fixed_batch``) is
    written at that size. An imported classifier's output activation, which ``replace_head``
    took out of the walk, is written after its logits (metadata ``output``: "probabilities").
    ``metadata`` entries become ``metadata_props`` (see ``finetune.onnx.metadata``);
    ``fold_batchnorm`` folds an eval BatchNorm that directly follows a convolution into it.
    """
    proto = to_onnx(
        model,
        example_input,
        opset_version=opset_version,
        input_names=input_names,
        output_names=output_names,
        dynamic_batch=dynamic_batch,
        metadata=metadata,
        fold_batchnorm=fold_batchnorm,
    )
    data = proto.SerializeToString()
    with atomic_write(path, "wb") as f:
        f.write(data)
    return proto


def to_onnx(
    model,
    example_input: Tensor | Sequence[Tensor],
    opset_version: int = 17,
    input_names: Sequence[str] = ("input",),
    output_names: Sequence[str] = ("output",),
    dynamic_batch: bool = True,
    metadata: Mapping[str, Any] | None = None,
    fold_batchnorm: bool = False,
) -> onnx.ModelProto:
    """The checked ``ModelProto`` ``export`` writes, without touching the disk.

    An imported graph (``OnnxModule``) whose dynamic-batch file would not run at another batch
    size (its file computed sizes the trace cannot follow, such as Swin's batch-times-windows
    reshapes) is written at the example's batch size instead, with a warning: its forward cannot
    be rewritten the way the error advises for a model of one's own."""
    from .graph import OnnxModule

    args = (model, example_input, opset_version, input_names, output_names)
    try:
        return _to_onnx(*args, dynamic_batch, metadata, fold_batchnorm)
    except _BatchBaked as error:
        if not isinstance(model, OnnxModule):
            raise
        warnings.warn(
            f"{model.source}: written with a fixed batch size ({error})", UserWarning, stacklevel=2
        )
        return _to_onnx(*args, False, metadata, fold_batchnorm)


class _BatchBaked(OnnxExportError):
    """The model or its file does not follow the batch size."""


def _to_onnx(
    model,
    example_input,
    opset_version,
    input_names,
    output_names,
    dynamic_batch,
    metadata,
    fold_batchnorm,
) -> onnx.ModelProto:
    newest = onnx.defs.onnx_opset_version()
    if not _MIN_OPSET <= opset_version <= newest:
        raise OnnxExportError(
            f"opset_version must be between {_MIN_OPSET} and {newest} (the installed onnx's "
            f"newest), got {opset_version}"
        )
    inputs = _as_tensors(example_input)
    fixed = getattr(model, "fixed_batch", None)
    if fixed is not None:  # an imported graph that still needs its file's batch size keeps it
        if _batch(inputs) != fixed:
            raise OnnxExportError(
                f"{getattr(model, 'source', 'the model')} runs at batch size {fixed} only (its "
                f"file fixes it); export it with an example input of {fixed} sample(s), not "
                f"{_batch(inputs)}"
            )
        dynamic_batch = False
    if len(input_names) != len(inputs):
        raise OnnxExportError(
            f"{len(inputs)} example input(s) but {len(input_names)} input_names {list(input_names)}"
        )
    outputs, calls = _trace(model, inputs)
    if len(output_names) != len(outputs):
        raise OnnxExportError(
            f"the model returned {len(outputs)} output(s) but output_names has "
            f"{len(output_names)}: {list(output_names)}"
        )
    calls = _needed(calls, outputs)
    probe = _probe_inputs(inputs, dynamic_batch)
    try:
        probe_outputs, probe_calls = _trace(model, probe)
    except Exception as e:
        if not dynamic_batch:
            raise
        raise _BatchBaked(
            f"the model runs on example_input but not on a batch of {_batch(probe)} ({e}): "
            "export with dynamic_batch=False, or keep forward free of fixed batch sizes"
        ) from e
    _check_constants(calls, _needed(probe_calls, probe_outputs), inputs, probe, model)
    builder = _GraphBuilder(opset_version, _batch(inputs) if dynamic_batch else None)
    builder.name_state(model)
    if fold_batchnorm:
        calls = _fold_batchnorm(calls, outputs, builder)
    graph = builder.build(calls, inputs, list(input_names), outputs, list(output_names))
    opsets = [helper.make_opsetid("", opset_version)]
    proto = helper.make_model(
        graph,
        opset_imports=opsets,
        producer_name="finetune",
        producer_version=_library_version(),
        ir_version=helper.find_min_ir_version_for(opsets),
    )
    metadata = dict(metadata or {})
    kind = output_kind(model, proto)
    if kind != "logits":  # predict must not apply a second softmax
        metadata.setdefault("output", kind)
    if metadata:
        helper.set_model_props(proto, encode_metadata(metadata))
    light = _without_weights(proto)  # shape inference needs shapes, not a copy of the weights
    try:
        onnx.checker.check_model(proto)
        onnx.checker.check_model(light, full_check=True)
    except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError) as e:
        raise OnnxExportError(f"the exported graph failed onnx.checker: {e}") from e
    if dynamic_batch:
        _check_batch_follows(light, outputs, probe_outputs)
        if hasattr(model, "fixed_batch") and _fixed_reshapes(proto):  # an imported graph
            _check_file_runs(proto, probe, probe_outputs)
    return proto


def _check_batch_follows(proto: onnx.ModelProto, outputs, probe_outputs) -> None:
    """An output whose size follows the batch in the model must not have a fixed size in the
    file; ONNX shape inference says which size the file gives it."""
    inferred = onnx.shape_inference.infer_shapes(proto).graph.output
    for value, out, probe in zip(inferred, outputs, probe_outputs):
        dims = value.type.tensor_type.shape.dim
        follows = out.ndim and probe.ndim and out.shape[0] != probe.shape[0]
        if follows and dims and dims[0].HasField("dim_value"):
            raise _BatchBaked(
                f"output {value.name!r} follows the batch size in the model but the file fixes "
                f"its first dimension at {dims[0].dim_value}: forward sizes a tensor from "
                "x.shape (an expand or a new tensor of x.shape[0] rows); derive it from x "
                "instead, or export with dynamic_batch=False"
            )


def _without_weights(proto: onnx.ModelProto) -> onnx.ModelProto:
    """``proto`` with its large float initializers declared as inputs of their shape instead."""
    from .load import _without_float_weights

    light = _without_float_weights(proto)
    light.metadata_props.extend(proto.metadata_props)
    light.producer_name, light.producer_version = proto.producer_name, proto.producer_version
    return light


def _fixed_reshapes(proto: onnx.ModelProto) -> bool:
    """Whether a Reshape has a written shape whose first entry is a number (not 0 or -1): it
    may be the traced batch folded into another axis (``batch * windows``)."""
    shapes = {t.name: t for t in proto.graph.initializer}
    for node in proto.graph.node:
        if node.op_type == "Reshape" and node.input[1] in shapes:
            shape = numpy_helper.to_array(shapes[node.input[1]]).reshape(-1)
            if shape.size and shape[0] > 0:
                return True
    return False


def _check_file_runs(proto: onnx.ModelProto, probe: list[Tensor], probe_outputs) -> None:
    """Import the written file and run it on the probe batch: a size computed from the batch
    (``batch * windows``) that the trace wrote as a number shows up here, not in a user's run."""
    from .load import convert

    try:
        with engine.no_grad():
            got = convert(proto, "<exported>").eval()(*probe)
    except Exception as error:  # noqa: BLE001 - any failure means the file is not batch-free
        raise _BatchBaked(
            f"the written file does not run at batch size {_batch(probe)}: {error}"
        ) from error
    got = list(got) if isinstance(got, tuple) else [got]
    for a, b in zip(got, probe_outputs):
        want = np.asarray(b._data, dtype=np.float64)
        scale = max(float(np.abs(want).max(initial=0.0)), 1e-6)
        if a.shape != b.shape or not np.allclose(a._data, want, rtol=1e-3, atol=1e-4 * scale):
            raise _BatchBaked(
                f"the written file gives other values than the model at batch size {_batch(probe)}"
            )


def _as_tensors(example_input) -> list[Tensor]:
    items = example_input if isinstance(example_input, (tuple, list)) else (example_input,)
    tensors = []
    for item in items:
        if isinstance(item, Tensor):
            tensors.append(item)
        elif isinstance(item, np.ndarray):
            tensors.append(Tensor._from_array(item))
        else:
            raise OnnxExportError(
                f"example_input must be a Tensor (or a tuple of them), got {type(item).__name__}"
            )
    return tensors


def _batch(inputs: list[Tensor]) -> int | None:
    shape = inputs[0]._data.shape
    return shape[0] if shape else None


def _trace(model, inputs: list[Tensor]) -> tuple[list[Tensor], list[Call]]:
    """Run ``model`` once in eval mode with the tracer installed; restore every module's mode."""
    modules = list(model.modules()) if hasattr(model, "modules") else []
    modes = [m.training for m in modules]
    tracer = _Tracer()
    previous = set_tracer(tracer)
    try:
        if modules:
            model.eval()
        with engine.no_grad():
            result = model(*inputs)
            activation = getattr(model, "output_activation", None)
            if activation is not None and isinstance(result, Tensor):
                result = _activate(model, result, activation)
    finally:
        set_tracer(previous)
        for module, mode in zip(modules, modes):
            object.__setattr__(module, "training", mode)
    outputs = list(result) if isinstance(result, (tuple, list)) else [result]
    for out in outputs:
        if not isinstance(out, Tensor):
            raise OnnxExportError(
                f"the model must return a Tensor or a tuple of Tensors, got {type(out).__name__}"
            )
    return outputs, tracer.calls


def _activate(model, logits: Tensor, activation: str) -> Tensor:
    """The Softmax/LogSoftmax that ``replace_head`` moved out of an imported graph's walk,
    applied to the logits in the trace, so the file returns what the original file returned."""
    function = {"Softmax": ops.Softmax, "LogSoftmax": ops.LogSoftmax}.get(activation)
    if function is None:
        raise OnnxExportError(
            f"{type(model).__name__}.output_activation is {activation!r}; it can be "
            "'Softmax', 'LogSoftmax' or None"
        )
    return function.apply(logits, dim=1)


def output_kind(model, proto: onnx.ModelProto) -> str:
    """ "probabilities", "log_probabilities" or "logits" (any scores no final Softmax made):
    what the model says it returns, else what the exported graph's last node says."""
    from .heads import output_kind as model_output_kind

    kind = model_output_kind(model)
    if kind != "logits" or len(proto.graph.output) != 1:
        return kind
    name = proto.graph.output[0].name
    last = next((n for n in reversed(proto.graph.node) if name in n.output), None)
    if last is not None and last.op_type == "Identity":
        last = next((n for n in reversed(proto.graph.node) if last.input[0] in n.output), None)
    kinds = {"Softmax": "probabilities", "LogSoftmax": "log_probabilities"}
    return kinds.get(last.op_type if last is not None else "", "logits")


def _probe_inputs(inputs: list[Tensor], dynamic_batch: bool) -> list[Tensor]:
    """Inputs unlike the example: other rows (one more of them with a dynamic batch), and float
    values nudged, so a constant that secretly depends on the input changes with them."""
    rng = np.random.default_rng(0)
    probes = []
    for tensor in inputs:
        x = tensor._data
        if x.ndim and x.shape[0]:
            rows = x.shape[0] + 1 if dynamic_batch else x.shape[0]
            x = x[(np.arange(rows) + 1) % x.shape[0]]
        if x.dtype.kind == "f":
            x = (x * (1 + 1e-3 * rng.standard_normal(x.shape))).astype(x.dtype)
        probes.append(Tensor._from_array(np.ascontiguousarray(x)))
    return probes


def _check_constants(calls, probe_calls, inputs, probe, model) -> None:
    """Refuse a file that would freeze a value made outside the traced ops from the input.

    Comparisons, ``argmax`` or ``torch.zeros(x.shape[0])`` make tensors no ``Function`` saw; the
    trace can only write them as constants. Tracing a second, different input shows them: the
    same op reads a different constant. A different op sequence means control flow depends on
    the input; the file then holds the branch ``example_input`` took, which only a warning says.
    """
    if [c.function for c in calls] != [c.function for c in probe_calls]:
        warnings.warn(
            "the model ran different operations on a second input than on example_input: its "
            "control flow depends on the input's values or batch size, and the ONNX file holds "
            "only the branch example_input took",
            stacklevel=3,
        )
        return
    state = {id(t) for t in _state_tensors(model)}
    known = state | {id(t) for t in inputs} | {id(r) for c in calls for r in c.results}
    probe_known = state | {id(t) for t in probe} | {id(r) for c in probe_calls for r in c.results}
    for first, second in zip(calls, probe_calls):
        for position, (a, b) in enumerate(zip(first.args, second.args)):
            if not isinstance(a, (Tensor, np.ndarray)) or id(a) in known:
                continue
            a, b = _data(a), _data(b)
            same = id(b) in probe_known or (
                a.shape == b.shape and np.array_equal(a, b, equal_nan=a.dtype.kind in "fc")
            )
            if not same:
                # sized from x.shape (a different batch): harmless at the example's batch size
                error = _BatchBaked if a.shape != b.shape else OnnxExportError
                raise error(
                    f"cannot export {_describe(first.function)}: its input {position} "
                    f"(shape {list(a.shape)}) was computed from the model's input outside the "
                    "traced operations (a comparison, argmax, .numpy(), a tensor sized from "
                    "x.shape, ...) and would be frozen into the file as a constant"
                )


def _state_tensors(model) -> list[Tensor]:
    if not hasattr(model, "named_parameters"):
        return []
    return [t for _, t in (*model.named_parameters(), *model.named_buffers())]


def _needed(calls: list[Call], outputs: list[Tensor]) -> list[Call]:
    """The calls the outputs depend on, in trace order; the rest (dead code) is not exported.

    A backward liveness walk: a kept call's results are no longer wanted before it (an in-place
    op rebinds a tensor, so one tensor can name several values over the trace), its inputs are.
    """
    wanted = {id(t) for t in outputs}
    kept = []
    for call in reversed(calls):
        if any(id(r) in wanted for r in call.results):
            kept.append(call)
            wanted.difference_update(id(r) for r in call.results)
            wanted.update(id(a) for a in call.args if isinstance(a, Tensor))
    return kept[::-1]


def _fold_batchnorm(calls: list[Call], outputs: list[Tensor], builder: _GraphBuilder) -> list[Call]:
    """Replace each convolution whose only reader is an eval BatchNorm by one folded convolution.

    ``bn(conv(x, w, b)) = conv(x, w * s, (b - mean) * s + beta)`` with ``s = gamma / sqrt(var +
    eps)``. The folded weights keep the convolution's names.
    """
    readers: dict[int, int] = {}
    for call in calls:
        for a in call.args:
            if isinstance(a, Tensor):
                readers[id(a)] = readers.get(id(a), 0) + 1
    produced_by = {id(r): i for i, call in enumerate(calls) for r in call.results}
    folded: dict[int, Call] = {}
    dropped: set[int] = set()
    output_ids = {id(t) for t in outputs}
    for i, call in enumerate(calls):
        if not issubclass(call.function, nn_ops.BatchNormEval):
            continue
        source = call.args[0]
        j = produced_by.get(id(source))
        if j is None or not issubclass(calls[j].function, conv.Convolution):
            continue
        if readers.get(id(source)) != 1 or id(source) in output_ids:
            continue
        folded[j] = _folded_convolution(calls[j], call, builder)
        dropped.add(i)
    return [folded.get(i, call) for i, call in enumerate(calls) if i not in dropped]


def _folded_convolution(conv_call: Call, bn_call: Call, builder: _GraphBuilder) -> Call:
    x, weight = conv_call.args[0], conv_call.args[1]
    bias = conv_call.args[2] if len(conv_call.args) > 2 else None
    _, gamma, beta, mean, var = bn_call.args
    w = weight._data.astype(np.float64)
    channels = w.shape[0]
    scale = 1.0 / np.sqrt(var._data.astype(np.float64) + bn_call.kwargs["eps"])
    if gamma is not None:
        scale = scale * gamma._data
    shift = -mean._data * scale
    if beta is not None:
        shift = shift + beta._data
    if bias is not None:
        shift = shift + bias._data * scale
    dtype = weight._data.dtype
    per_channel = scale.reshape(channels, *([1] * (w.ndim - 1)))
    new_weight = Tensor._from_array((w * per_channel).astype(dtype))
    new_bias = Tensor._from_array(shift.astype(dtype))
    weight_name = builder.state_names.get(id(weight))
    if weight_name is not None:
        builder.claim(new_weight, weight_name)
        stem = weight_name.removesuffix("weight") if weight_name.endswith("weight") else ""
        bias_name = builder.state_names.get(id(bias)) or (stem + "bias" if stem else None)
        builder.claim(new_bias, bias_name or builder.fresh(weight_name + "_folded_bias"))
    return Call(conv_call.function, (x, new_weight, new_bias), conv_call.kwargs, bn_call.results)


class _GraphBuilder:
    """Collects nodes and initializers; hands out names for tensors, constants and results."""

    def __init__(self, opset: int, batch: int | None) -> None:
        self.opset = opset
        self.batch = batch
        self.nodes: list[onnx.NodeProto] = []
        self.initializers: list[onnx.TensorProto] = []
        self.state_names: dict[int, str] = {}
        self._names: dict[int, str] = {}
        self._state: dict[int, Tensor] = {}
        self._used_state: set[int] = set()
        self._taken: set[str] = set()
        self._ints: dict[tuple, str] = {}
        self._versions: dict[int, int] = {}
        self._counts: dict[str, int] = {}
        self._keep: list = []

    # -- names ---------------------------------------------------------------------------------
    def name_state(self, model) -> None:
        """Parameters and buffers are written under their ``state_dict`` keys, when first read."""
        named = []
        if hasattr(model, "named_parameters"):
            named = [*model.named_parameters(), *model.named_buffers()]
        for key, tensor in named:
            self.state_names[id(tensor)] = key
            self._state[id(tensor)] = tensor
            self._taken.add(key)

    def claim(self, tensor: Tensor, name: str) -> None:
        """Write ``tensor`` as an initializer called ``name`` (a folded weight keeps its name)."""
        self._keep.append(tensor)
        self.state_names[id(tensor)] = name
        self._state[id(tensor)] = tensor
        self._taken.add(name)

    def fresh(self, stem: str) -> str:
        while True:
            n = self._counts.get(stem, 0)
            self._counts[stem] = n + 1
            name = f"{stem}_{n}"
            if name not in self._taken:
                self._taken.add(name)
                return name

    def name_of(self, value) -> str:
        """The graph name of a traced tensor, a parameter, or a constant (written on first use)."""
        if isinstance(value, Tensor):
            key = id(value)
            if key in self._names:
                return self._names[key]
            if key in self._state:
                name = self.state_names[key]
                self.initializers.append(numpy_helper.from_array(np.asarray(value._data), name))
            else:
                name = self.constant(value._data)
            self._keep.append(value)
            self._names[key] = name
            return name
        return self.constant(np.asarray(value))

    def operand(self, value, dtype: np.dtype) -> str:
        """``name_of(value)`` as ``dtype``: a Python scalar becomes a constant, a tensor a Cast."""
        if not isinstance(value, Tensor):
            return self.constant(np.asarray(value, dtype=dtype))
        name = self.name_of(value)
        if value._data.dtype != dtype:
            name = self.node("Cast", [name], to=self.onnx_type(dtype))[0]
        return name

    def constant(self, array: np.ndarray) -> str:
        """An initializer of ``array``'s shape (a 0-d value stays 0-d: ascontiguousarray would
        make it 1-d, and a scalar result then fails shape inference)."""
        name = self.fresh("const")
        array = np.require(array, requirements="C")
        self.initializers.append(numpy_helper.from_array(array, name))
        return name

    def ints(self, values: Sequence[int]) -> str:
        """A 1-D int64 constant (shapes, axes, pads), shared between nodes that use the same one."""
        key = tuple(int(v) for v in values)
        if key not in self._ints:
            self._ints[key] = self.constant(np.asarray(key, dtype=np.int64))
        return self._ints[key]

    @staticmethod
    def onnx_type(dtype: np.dtype) -> int:
        return helper.np_dtype_to_tensor_dtype(np.dtype(dtype))

    # -- nodes ---------------------------------------------------------------------------------
    def node(
        self, op_type: str, inputs: Sequence[str], outputs: Sequence[str] | None = None, **attrs
    ) -> list[str]:
        """Append one node; fresh output names unless ``outputs`` gives them."""
        name = self.fresh(op_type)
        outputs = list(outputs) if outputs is not None else [f"{name}_output"]
        self.nodes.append(helper.make_node(op_type, list(inputs), outputs, name=name, **attrs))
        return outputs

    def reduce(self, op_type, x: str, axes, keepdims: bool, outputs) -> list[str]:
        """A Reduce* node; its axes are an input from ReduceSum 13 and the others' opset 18."""
        axes_input = op_type == "ReduceSum" or self.opset >= 18
        if axes is None:
            return self.node(op_type, [x], outputs, keepdims=int(keepdims))
        if axes_input:
            return self.node(op_type, [x, self.ints(axes)], outputs, keepdims=int(keepdims))
        return self.node(op_type, [x], outputs, axes=list(axes), keepdims=int(keepdims))

    # -- the graph -----------------------------------------------------------------------------
    def build(self, calls, inputs, input_names, outputs, output_names) -> onnx.GraphProto:
        for tensor, name in zip(inputs, input_names):
            self._names[id(tensor)] = name
            self._taken.add(name)
        self._taken.update(output_names)
        produced = {id(r) for call in calls for r in call.results}
        rebound = {id(call.results[0]) for call in calls if call.function is Rebind}
        assigned: dict[int, str] = {}
        for tensor, name in zip(outputs, output_names):
            key = id(tensor)
            if key in produced and key not in rebound and key not in assigned:
                assigned[key] = name
        for call in calls:
            self._check_versions(call)
            if call.function is Rebind:
                (tensor,), (source,) = call.results, call.args
                self._names[id(tensor)] = self.name_of(source)
                self._versions[id(tensor)] = call.versions[1]
                continue
            emit = export_ops.emitter_for(call.function)
            if emit is None:
                raise OnnxExportError(
                    f"cannot export {export_ops.describe(call.function)}: no ONNX form is "
                    f"known for it (inputs {[list(np.shape(_data(a))) for a in call.args]})"
                )
            stem = call.function.__name__.lower()
            outs = [assigned.get(id(r)) or self.fresh(stem) for r in call.results]
            emit(self, call, outs)
            for r, name in zip(call.results, outs):
                self._names[id(r)] = name
                self._versions[id(r)] = 0
        for tensor, name in zip(outputs, output_names):
            if self.name_of(tensor) != name:
                self.node("Identity", [self.name_of(tensor)], [name])
        return helper.make_graph(
            self.nodes,
            "finetune",
            [self._value_info(t, n) for t, n in zip(inputs, input_names)],
            [self._value_info(t, n) for t, n in zip(outputs, output_names)],
            initializer=self.initializers,
        )

    def _check_versions(self, call: Call) -> None:
        """A tensor read at another version than the one its name holds was changed in place by
        something the trace did not see (``x[...] = v`` or ``fill_`` without a graph)."""
        for position, (arg, version) in enumerate(zip(call.args, call.versions)):
            if version is None:
                continue
            seen = self._versions.setdefault(id(arg), version)
            if seen != version:
                what = _describe(call.function)
                raise OnnxExportError(
                    f"cannot export {what}: its input {position} (shape "
                    f"{list(arg._data.shape)}) was changed in place outside the traced operations "
                    "(item assignment, fill_, copy_, ... without a graph); compute it out of place"
                )

    def _value_info(self, tensor: Tensor, name: str) -> onnx.ValueInfoProto:
        shape: list = list(tensor._data.shape)
        if self.batch is not None and shape and shape[0] == self.batch:
            shape[0] = "batch"
        return helper.make_tensor_value_info(name, self.onnx_type(tensor._data.dtype), shape)


def _describe(function: type) -> str:
    return "an in-place op" if function is Rebind else export_ops.describe(function)


def _data(value):
    return value._data if isinstance(value, Tensor) else value


def _library_version() -> str:
    from .. import __version__

    return __version__
