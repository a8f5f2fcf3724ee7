"""``finetune.onnx.load``: read an ONNX model safely and convert it into an ``OnnxModule``.

Everything a file can get wrong is reported at load time as one ``OnnxImportError`` naming the
file: unreadable or non-ONNX bytes, external data outside the model's folder, and every
operator the library cannot convert (with node names and opset, inside subgraphs too), never a
``KeyError`` later. Subgraphs (If, Loop, Scan, SequenceMap bodies) are imported recursively as
child ``OnnxModule``s of their node.
"""

from __future__ import annotations

import contextlib
import faulthandler
import functools
import math
import os
import select
import signal
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

import numpy as np
import onnx
from google.protobuf.message import DecodeError
from onnx import numpy_helper

from ..errors import OnnxImportError, ShapeError
from ..nn.parameter import Parameter
from ..tensor import Tensor
from . import naming
from .batch import prepare
from .graph import Bodies, Body, GraphInput, OnnxModule, Scope, Step
from .limits import check_shape
from .metadata import decode_metadata
from .ops.control_flow import check_subgraphs
from .ops.gemm import fuse_matmul_add
from .ops.quantize import fold_dequantized_weights
from .registry import Built, NodeView, _load_converters, converter_for, lookup

Source = str | os.PathLike | bytes | bytearray | memoryview | BinaryIO | onnx.ModelProto


def load(source: Source, freeze: bool = True) -> OnnxModule:
    """Import an ONNX model (path, bytes, binary file object or ``ModelProto``) as a module in
    eval mode; its weights are ``nn.Parameter``s, frozen unless ``freeze=False``."""
    model, _, label = read_model(source)
    return from_model(model, label, freeze)


def from_model(model: onnx.ModelProto, label: str = "<model>", freeze: bool = True) -> OnnxModule:
    """A model ``read_model`` already parsed, imported as ``load`` does (``label`` names it in
    errors): for callers that look at the proto first and must not read the file twice."""
    module = convert(model, label)
    for param in module.parameters():
        param.requires_grad = not freeze
    return module.eval()


# -- reading ---------------------------------------------------------------------------------


def read_model(source: Source) -> tuple[onnx.ModelProto, Path | None, str]:
    """Parse ``source``; follow external data only inside the model's folder. Returns
    ``(model, folder, label)`` where ``label`` names the source in messages."""
    if isinstance(source, onnx.ModelProto):
        model, folder, label = source, None, "<ModelProto>"
    elif isinstance(source, (bytes, bytearray, memoryview)):
        model, folder, label = _parse(bytes(source), "<bytes>"), None, "<bytes>"
    elif isinstance(source, (str, os.PathLike)):
        path = Path(source)
        label = str(path)
        if not path.exists():
            raise OnnxImportError(f"{label}: no such file; check the path to the .onnx model")
        if not path.is_file():
            raise OnnxImportError(f"{label}: is a directory, not an .onnx file")
        try:
            data = path.read_bytes()
        except OSError as error:
            raise OnnxImportError(f"{label}: cannot be read ({error})") from error
        model, folder = _parse(data, label), path.resolve().parent
    elif hasattr(source, "read"):
        label = str(getattr(source, "name", "<file object>"))
        data = source.read()
        if not isinstance(data, bytes):
            raise OnnxImportError(f"{label}: open the model in binary mode ('rb'), got text")
        model = _parse(data, label)
        folder = (
            Path(label).resolve().parent if isinstance(getattr(source, "name", None), str) else None
        )
    else:
        raise OnnxImportError(
            f"cannot load an ONNX model from a {type(source).__name__}; pass a path, bytes, a "
            "binary file object or an onnx.ModelProto"
        )
    with _utf8_strings(label):
        _load_external_data(model, folder, label)
    return model, folder, label


@contextlib.contextmanager
def _utf8_strings(label: str) -> Iterator[None]:
    """protobuf decodes a string field only when it is read; a corrupt file's invalid UTF-8
    surfaces then, and becomes an OnnxImportError naming the file."""
    try:
        yield
    except UnicodeDecodeError as error:
        raise OnnxImportError(
            f"{label}: a name or string in the file is not valid UTF-8 ({error}); the file is "
            "corrupt, re-download or re-export it"
        ) from error


def _parse(data: bytes, label: str) -> onnx.ModelProto:
    model = onnx.ModelProto()
    try:
        model.ParseFromString(data)
    except (DecodeError, RuntimeError, ValueError) as error:
        raise OnnxImportError(
            f"{label}: not a readable ONNX model (corrupt or truncated protobuf: {error}); "
            "re-download or re-export the file"
        ) from error
    if not model.HasField("graph") or model.ir_version <= 0 or not model.graph.node:
        raise OnnxImportError(
            f"{label}: not an ONNX model (no graph, IR version or nodes); is this the right file?"
        )
    return model


def _external_tensors(model: onnx.ModelProto) -> list[onnx.TensorProto]:
    return [
        t
        for t in onnx.external_data_helper._get_all_tensors(model)
        if t.data_location == onnx.TensorProto.EXTERNAL
    ]


def _load_external_data(model: onnx.ModelProto, folder: Path | None, label: str) -> None:
    tensors = _external_tensors(model)
    if not tensors:
        return
    if folder is None:
        raise OnnxImportError(
            f"{label}: weights are stored in external data files, which only a path tells where to "
            "find; load the model from its path"
        )
    for tensor in tensors:
        info = {entry.key: entry.value for entry in tensor.external_data}
        location = info.get("location", "")
        target = (folder / location).resolve()
        if not location or Path(location).is_absolute() or not target.is_relative_to(folder):
            raise OnnxImportError(
                f"{label}: tensor {tensor.name!r} points to external data {location!r} outside "
                f"the model's folder {folder}; refusing to read it"
            )
        if not target.is_file():
            raise OnnxImportError(
                f"{label}: tensor {tensor.name!r} needs external data file {location!r}, which "
                f"is missing from {folder}; copy it next to the model"
            )
        size = target.stat().st_size
        offset, length = int(info.get("offset", 0)), info.get("length")
        if offset > size or (length is not None and offset + int(length) > size):
            raise OnnxImportError(
                f"{label}: tensor {tensor.name!r} reads past the end of {location!r} "
                f"(offset {offset}, length {length}, file size {size}); the file is truncated"
            )
    try:
        onnx.external_data_helper.load_external_data_for_model(model, str(folder))
    except (OSError, ValueError) as error:
        raise OnnxImportError(f"{label}: cannot read external data ({error})") from error


# -- converting ---------------------------------------------------------------------------------


def convert(model: onnx.ModelProto, label: str = "<model>") -> OnnxModule:
    """Convert a parsed model into an ``OnnxModule`` (weights trainable; ``load`` freezes them)."""
    _load_converters()
    with _utf8_strings(label):
        _refuse_undecodable_names(model, label)
        opset = _default_opset(model, label)
        # the checker and shape inference read structure, not weights: a copy without the
        # float weights spares serialising them (0.5 s for Swin-T); read_tensor checks those
        light = _without_float_weights(model)
        _check(light, label)
        _refuse_unsupported(model.graph, opset, label)
        metadata = decode_metadata((p.key, p.value) for p in model.metadata_props)
        ranks = _ranks(model, light)
        return _Importer(model.graph, opset, label, ranks, metadata=metadata).run()


class _Importer:
    """Turns each node of one graph into a step of the walk, nodes with weights into submodules
    and subgraphs into child ``OnnxModule``s. ``outer`` holds the names the enclosing scopes
    define before this graph's node (None for the main graph)."""

    def __init__(
        self,
        graph: onnx.GraphProto,
        opset: int,
        label: str,
        ranks: dict[str, int],
        outer: frozenset[str] | None = None,
        metadata: dict[str, str] | None = None,
    ) -> None:
        self.opset = opset
        self.label = label
        self.ranks = ranks
        self.outer = outer
        self.outputs = [o.name for o in graph.output]
        self.initializers = _initializers(graph, label)
        nodes = list(graph.node)
        constants = {**self.initializers, **_constant_node_values(nodes, label)}
        # the QDQ pre-pass: DequantizeLinear of constant int weights becomes a float initializer
        self.nodes, folded = fold_dequantized_weights(nodes, constants, opset)
        # weights computed from constants are folded; batch-baked Reshapes follow the batch
        known, main = {**constants, **folded}, outer is None
        self.nodes, rewritten, fixed_batch = prepare(graph, self.nodes, known, opset, main)
        folded.update(rewritten)
        self.initializers.update(folded)
        self.constants = {**constants, **folded}
        inputs = [_graph_input(v) for v in graph.input if v.name not in self.initializers]
        outputs = [_graph_input(v) for v in graph.output]
        self.module = OnnxModule(inputs, self.outputs, metadata, label, outputs, fixed_batch)
        self.available = set(outer or ()) | {i.name for i in inputs} | set(self.initializers)

    def run(self) -> OnnxModule:
        keep = set(self.outputs) | {n for node in self.nodes for n in _names_read_inside(node)}
        fused = fuse_matmul_add(self.nodes, self.constants, keep)
        absorbed = {add for add, _, _ in fused.values()}
        steps = []
        for index, node in enumerate(self.nodes):
            if index in fused:
                add, built, weight = fused[index]
                path = self._place(node, weight, index, built)
                outputs = tuple(self.nodes[add].output)
                steps.append(
                    Step(node.name, "MatMul+Add", (node.input[0],), outputs, built.call, path)
                )
            elif index not in absorbed:
                steps.append(self._step(index, node))
            self.available.update(n for n in node.output if n)
        read = {name for step in steps for name in step.inputs if name} | set(self.outputs)
        kept = {n: a for n, a in self.initializers.items() if n in read}
        defined = {i.name for i in self.module._graph_inputs} | set(self.initializers)
        defined |= {n for step in steps for n in step.outputs}
        outer = sorted(read - defined)
        unknown = [name for name in outer if self.outer is not None and name not in self.outer]
        if unknown:
            raise OnnxImportError(
                f"{self.label}: reads {unknown}, which neither the subgraph nor its enclosing "
                "graphs define before the node; the subgraph is malformed"
            )
        self.module._set_walk(steps, _register_constants(self.module, kept), outer)
        return self.module

    def _step(self, index: int, node: onnx.NodeProto) -> Step:
        converter = converter_for(node, self.opset)
        attributes = _attributes(node)
        graphs = {k: v for k, v in attributes.items() if isinstance(v, onnx.GraphProto)}
        if graphs:
            return self._subgraph_step(index, node, converter.run, attributes, graphs)
        built = None
        if converter.module is not None:
            view = NodeView(
                node,
                self.opset,
                attributes,
                tuple(self.constants.get(name) if name else None for name in node.input),
                tuple(self.ranks.get(name) for name in node.input),
            )
            built = converter.module(view)
        outputs = tuple(node.output)
        if built is None:
            if converter.wants_output_count():
                attributes["_outputs"] = len(node.output)
            run = functools.partial(converter.run, **attributes)
            return Step(node.name, node.op_type, tuple(node.input), outputs, run)
        weight = next((n for n in node.input[1:] if n in self.initializers), None)
        path = self._place(node, weight, index, built)
        used = tuple(node.input[i] if i < len(node.input) else "" for i in built.inputs)
        return Step(node.name, node.op_type, used, outputs, built.call, path)

    def _subgraph_step(self, index, node, run, attributes, graphs) -> Step:
        """A node with bodies: each body becomes a child ``OnnxModule`` (recursively) under one
        ``Bodies`` submodule; the step also reads the outer values the bodies use."""
        where = f"{node.op_type} node {node.name or f'#{index}'!r}"
        bodies = Bodies()
        for name, graph in graphs.items():
            label = f"{self.label}: {where} {name}"
            child = _Importer(graph, self.opset, label, self.ranks, frozenset(self.available))
            bodies.add_module(name, child.run())
        problem = check_subgraphs(
            node, {name: getattr(bodies, name) for name in graphs}, self.opset
        )
        if problem:
            raise OnnxImportError(f"{self.label}: {where}: {problem}; the subgraph is malformed")
        outer = tuple(sorted({n for name in graphs for n in getattr(bodies, name).outer_names}))
        others = {k: v for k, v in attributes.items() if k not in graphs}
        call = functools.partial(
            _run_with_bodies, run, others, tuple(graphs), len(node.input), outer
        )
        path = naming.candidate_path(node.name, node.op_type, None, index)
        path = naming.place(self.module, path, bodies, Scope)
        return Step(node.name, node.op_type, (*node.input, *outer), tuple(node.output), call, path)

    def _place(self, node: onnx.NodeProto, weight: str | None, index: int, built: Built) -> str:
        path = naming.candidate_path(node.name, node.op_type, weight, index)
        return naming.place(self.module, path, built.module, Scope)


def _run_with_bodies(run, attributes, graph_names, count, outer_names, bodies, *args):
    """Call a subgraph node's converter: its inputs, its attributes, and each body bound to the
    outer values the walk passed after the inputs."""
    outer = dict(zip(outer_names, args[count:]))
    graphs = {name: Body(getattr(bodies, name), outer) for name in graph_names}
    return run(*args[:count], **attributes, **graphs)


def _subgraphs(node: onnx.NodeProto) -> Iterator[tuple[str, onnx.GraphProto]]:
    for attribute in node.attribute:
        if attribute.type == onnx.AttributeProto.GRAPH:
            yield attribute.name, attribute.g
        for graph in attribute.graphs:
            yield attribute.name, graph


def all_nodes(graph: onnx.GraphProto) -> Iterator[onnx.NodeProto]:
    """Every node of ``graph`` and of its subgraphs, at any depth."""
    for node in graph.node:
        yield node
        for _, sub in _subgraphs(node):
            yield from all_nodes(sub)


def _names_read_inside(node: onnx.NodeProto) -> set[str]:
    """Every value name the node's subgraphs read (a superset of the outer names they use)."""
    names: set[str] = set()
    for _, sub in _subgraphs(node):
        for inner in all_nodes(sub):
            names.update(inner.input)
        names.update(o.name for o in sub.output)
    return names


def _refuse_undecodable_names(model: onnx.ModelProto, label: str) -> None:
    """protobuf hands back a string field that is not valid UTF-8 as bytes (or raises when it is
    read); refuse such a file before any name reaches the converters."""
    graph = model.graph
    strings = [graph.name, *(o.domain for o in model.opset_import)]
    strings += [p for prop in model.metadata_props for p in (prop.key, prop.value)]
    for info in (*graph.input, *graph.output, *graph.value_info, *graph.initializer):
        strings.append(info.name)
    for node in all_nodes(graph):
        strings += [node.name, node.op_type, node.domain, *node.input, *node.output]
        strings += [a.name for a in node.attribute]
    bad = next((s for s in strings if not isinstance(s, str)), None)
    if bad is not None:
        raise OnnxImportError(
            f"{label}: the name {bad!r} is not valid UTF-8; the file is corrupt, re-download or "
            "re-export it"
        )


def _default_opset(model: onnx.ModelProto, label: str) -> int:
    for entry in model.opset_import:
        if entry.domain in ("", "ai.onnx"):
            return int(entry.version)
    if model.ir_version <= 2:
        return 1
    raise OnnxImportError(f"{label}: the model imports no default-domain opset")


def _check(model: onnx.ModelProto, label: str) -> None:
    try:
        onnx.checker.check_model(model)
    except (onnx.checker.ValidationError, ValueError) as error:
        raise OnnxImportError(f"{label}: fails onnx.checker: {error}") from error


def _refuse_unsupported(graph: onnx.GraphProto, opset: int, label: str) -> None:
    """Every node the library cannot convert, in subgraphs too (named ``outer/attribute/inner``),
    as one OnnxImportError."""
    missing: dict[str, list[str]] = {}
    bad_attributes: list[str] = []
    _collect_unsupported(graph, opset, "", missing, bad_attributes)
    if missing or bad_attributes:
        lines = [f"{op} (nodes {', '.join(map(repr, names))})" for op, names in missing.items()]
        parts = []
        if lines:
            parts.append(f"unsupported operators at opset {opset}: " + "; ".join(lines))
        parts.extend(bad_attributes)
        raise OnnxImportError(f"{label}: cannot import: " + "; ".join(parts))


def _collect_unsupported(
    graph: onnx.GraphProto, opset: int, prefix: str, missing: dict, bad_attributes: list
) -> None:
    for index, node in enumerate(graph.node):
        name = prefix + (node.name or f"#{index}")
        op = node.op_type if node.domain in ("", "ai.onnx") else f"{node.domain}.{node.op_type}"
        converter = lookup(node.op_type, opset, node.domain if node.domain != "ai.onnx" else "")
        if converter is None:
            missing.setdefault(op, []).append(name)
        else:
            unknown = {a.name for a in node.attribute} - converter.attribute_names()
            if unknown:
                bad_attributes.append(
                    f"{op} node {name!r} has attributes {sorted(unknown)} the library does not "
                    "implement"
                )
        for attribute, sub in _subgraphs(node):
            _collect_unsupported(sub, opset, f"{name}/{attribute}/", missing, bad_attributes)


def _initializers(graph: onnx.GraphProto, label: str) -> dict[str, np.ndarray]:
    return {t.name: read_tensor(t, f"{label}: initializer {t.name!r}") for t in graph.initializer}


def _constant_node_values(nodes: list[onnx.NodeProto], label: str) -> dict[str, np.ndarray]:
    values = {}
    for node in nodes:
        if node.op_type == "Constant" and len(node.attribute) == 1:
            attribute = node.attribute[0]
            if attribute.name == "value":
                where = f"{label}: Constant node {node.name!r}"
                values[node.output[0]] = read_tensor(attribute.t, where)
    return values


def read_tensor(tensor: onnx.TensorProto, where: str) -> np.ndarray:
    """A tensor's values, once its declared dims are within the size budget and (for raw bytes
    of whole-byte types) match the bytes the file holds; OnnxImportError naming ``where``."""
    try:
        dims = check_shape(tensor.dims, "declared")
    except ShapeError as error:
        raise OnnxImportError(f"{where}: {error}") from None
    dtype = _NUMPY_DTYPES.get(tensor.data_type)
    if tensor.HasField("raw_data") and dtype is not None:
        need = math.prod(dims) * dtype.itemsize
        if len(tensor.raw_data) != need:
            raise OnnxImportError(
                f"{where}: declared shape {list(dims)} of {dtype} needs {need:,} bytes, the file "
                f"holds {len(tensor.raw_data):,}; the file is truncated or corrupt"
            )
    try:
        return numpy_helper.to_array(tensor)
    except KeyError:
        raise OnnxImportError(f"{where} has unknown element type {tensor.data_type}") from None
    except (ValueError, TypeError) as error:
        raise OnnxImportError(f"{where} cannot be read ({error})") from error


_NUMPY_DTYPES = {
    onnx.TensorProto.FLOAT: np.dtype(np.float32),
    onnx.TensorProto.DOUBLE: np.dtype(np.float64),
    onnx.TensorProto.FLOAT16: np.dtype(np.float16),
    onnx.TensorProto.INT64: np.dtype(np.int64),
    onnx.TensorProto.INT32: np.dtype(np.int32),
    onnx.TensorProto.INT16: np.dtype(np.int16),
    onnx.TensorProto.INT8: np.dtype(np.int8),
    onnx.TensorProto.UINT8: np.dtype(np.uint8),
    onnx.TensorProto.BOOL: np.dtype(np.bool_),
}


def _ranks(model: onnx.ModelProto, light: onnx.ModelProto) -> dict[str, int]:
    """Known ranks of the graph's values, from shape inference when a builder needs them and it
    succeeds. Inference runs on ``light``, the model's copy whose float weights are declared as
    inputs, not copied: ranks need no values."""
    inferred = None
    if any(node.op_type in _NEED_RANKS for node in all_nodes(model.graph)):
        inferred = _infer_shapes_isolated(light)
    ranks: dict[str, int] = {}
    _collect_ranks(inferred or model.graph, ranks)
    _collect_ranks(model.graph, ranks, values=False)
    return ranks


def _collect_ranks(graph: onnx.GraphProto, ranks: dict[str, int], values: bool = True) -> None:
    """Ranks declared in ``graph`` and its subgraphs (value names are unique in a model)."""
    if values:
        for info in (*graph.input, *graph.value_info, *graph.output):
            kind = info.type.WhichOneof("value")
            if kind == "tensor_type" and info.type.tensor_type.HasField("shape"):
                ranks[info.name] = len(info.type.tensor_type.shape.dim)
    for tensor in graph.initializer:
        ranks[tensor.name] = len(tensor.dims)
    for node in graph.node:
        for _, sub in _subgraphs(node):
            _collect_ranks(sub, ranks, values)


def _infer_shapes_isolated(light: onnx.ModelProto) -> onnx.GraphProto | None:
    """onnx's shape inference on ``light``, or None when it fails. Its C++ code can abort the
    whole process on a hostile graph (a failed assertion on absurd Pad pads), so where ``fork``
    exists it runs in a child process; the light model carries no float weights, so this is cheap.
    """
    if not hasattr(os, "fork"):
        try:
            return onnx.shape_inference.infer_shapes(light).graph
        except Exception:  # noqa: BLE001 - ranks are a hint; a graph inference cannot follow loads
            return None
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: infer, send the result, exit without running any cleanup
        code = 1
        try:
            os.close(read_end)
            faulthandler.disable()  # an abort here is expected on hostile files: stay quiet
            os.dup2(os.open(os.devnull, os.O_WRONLY), 2)
            data = onnx.shape_inference.infer_shapes(light).SerializeToString()
            with os.fdopen(write_end, "wb") as pipe:
                pipe.write(data)
            code = 0
        finally:
            os._exit(code)
    os.close(write_end)
    chunks = []
    try:
        while select.select([read_end], [], [], _INFERENCE_SECONDS)[0]:
            chunk = os.read(read_end, 1 << 20)
            if not chunk:
                break
            chunks.append(chunk)
        else:
            os.kill(pid, signal.SIGKILL)
    finally:
        os.close(read_end)
        _, status = os.waitpid(pid, 0)
    if status != 0:
        return None
    inferred = onnx.ModelProto()
    inferred.ParseFromString(b"".join(chunks))
    return inferred.graph


_INFERENCE_SECONDS = 60
# the ops whose module builders call NodeView.rank
_NEED_RANKS = {
    "BatchNormalization",
    "InstanceNormalization",
    "LayerNormalization",
    "RMSNormalization",
}


def _without_float_weights(model: onnx.ModelProto) -> onnx.ModelProto:
    graph = model.graph
    light = onnx.ModelProto(ir_version=model.ir_version, opset_import=model.opset_import)
    declared = {i.name for i in graph.input}
    kept = [t for t in graph.initializer if t.data_type not in _FLOAT_TYPES]
    stubs = [
        onnx.helper.make_tensor_value_info(t.name, t.data_type, list(t.dims))
        for t in graph.initializer
        if t.data_type in _FLOAT_TYPES and t.name not in declared
    ]
    light.graph.CopyFrom(
        onnx.helper.make_graph(
            graph.node,
            graph.name,
            [*graph.input, *stubs],
            graph.output,
            kept,
            value_info=graph.value_info,
        )
    )
    return light


_FLOAT_TYPES = {onnx.TensorProto.FLOAT, onnx.TensorProto.DOUBLE, onnx.TensorProto.FLOAT16}


def _attributes(node: onnx.NodeProto) -> dict:
    values = {}
    for attribute in node.attribute:
        value = onnx.helper.get_attribute_value(attribute)
        if isinstance(value, bytes):
            value = value.decode("utf-8")
        elif isinstance(value, onnx.TensorProto):
            value = read_tensor(value, f"node {node.name!r} attribute {attribute.name!r}")
        elif isinstance(value, list) and value and isinstance(value[0], bytes):
            value = [v.decode("utf-8") for v in value]
        values[attribute.name] = value
    return values


def _register_constants(root: OnnxModule, arrays: dict[str, np.ndarray]) -> dict[str, str]:
    """Initializers that no module absorbed: float ones become parameters, others
    non-persistent buffers. Returns value name → attribute name."""
    attributes = {}
    for name, array in arrays.items():
        attribute, n = naming.sanitise(name), 0
        while hasattr(root, attribute) or attribute in root._modules:
            n += 1
            attribute = f"{naming.sanitise(name)}_{n}"
        if array.dtype.kind == "f":
            root.register_parameter(attribute, Parameter(np.array(array)))
        else:
            root.register_buffer(attribute, Tensor._from_array(np.array(array)), persistent=False)
        attributes[name] = attribute
    return attributes


def _graph_input(info: onnx.ValueInfoProto) -> GraphInput:
    return _value_type(info.name, info.type)


def _value_type(name: str, value_type: onnx.TypeProto) -> GraphInput:
    """A graph input's or output's type: a tensor, a sequence or an optional (nested)."""
    kind = value_type.WhichOneof("value")
    if kind == "sequence_type":
        element = _value_type(name, value_type.sequence_type.elem_type)
        return GraphInput(name, None, None, "sequence", element)
    if kind == "optional_type":
        element = _value_type(name, value_type.optional_type.elem_type)
        return GraphInput(name, None, None, "optional", element)
    tensor = value_type.tensor_type
    dtype = None
    if kind == "tensor_type" and tensor.elem_type:
        try:
            dtype = np.dtype(onnx.helper.tensor_dtype_to_np_dtype(tensor.elem_type))
        except (KeyError, TypeError):
            dtype = None
    shape = None
    if tensor.HasField("shape"):
        shape = tuple(d.dim_value if d.HasField("dim_value") else None for d in tensor.shape.dim)
    return GraphInput(name, dtype, shape)


__all__ = ["Source", "convert", "from_model", "load", "read_model"]
