"""Import-time graph rewrites that let a file exported at a fixed batch size train at any.

Two passes over the main graph's nodes, before conversion:

- ``fold_constant_nodes``: weights a file computes from constants (the model zoo's light files
  make every weight with ``ConstantOfShape``; Inception v1 reshapes its classifier's weight;
  PyTorch's legacy exporter feeds a deduplicated bias through ``Identity``) are evaluated once,
  so a following Conv or Gemm sees a constant weight and becomes a module.
- ``free_batch_reshapes``: a ``Reshape`` whose constant shape starts with the file's fixed batch
  size (ShuffleNet's ``[1, 4, 28, 56, 56]`` channel shuffle, a ``[1, -1]`` flatten) gets ``-1``
  there instead (or ``0``, "copy the input's first dimension", when another entry is -1), so it
  follows the batch. Only where ONNX
  shape inference, run with a symbolic batch, shows that the reshape's input carries the batch
  on its first axis, and the shape keeps it there: at the file's own batch size the result is
  the same tensor.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import onnx

from ..errors import FinetuneError
from .limits import check_shape

# ops evaluated at import when every input is a constant: cheap, exact, and with no randomness
FOLDABLE = frozenset(
    {"ConstantOfShape", "Reshape", "Unsqueeze", "Squeeze", "Transpose", "Cast", "Identity"}
)
BATCH_SYMBOL = "batch"


def prepare(
    graph: onnx.GraphProto,
    nodes: list[onnx.NodeProto],
    constants: dict[str, np.ndarray],
    opset: int,
    main: bool,
) -> tuple[list[onnx.NodeProto], dict[str, np.ndarray], int | None]:
    """Both rewrites (the batch one on the ``main`` graph only, not on subgraphs): the nodes to
    convert, the new constants they read, and the batch size the graph still needs (None when
    its outputs follow any batch: see ``free_batch_reshapes``)."""
    nodes, folded = fold_constant_nodes(nodes, constants, opset)
    if not main:
        return nodes, folded, None
    nodes, shapes, fixed = free_batch_reshapes(graph, nodes, {**constants, **folded}, opset)
    return nodes, {**folded, **shapes}, fixed


def fold_constant_nodes(
    nodes: list[onnx.NodeProto], constants: dict[str, np.ndarray], opset: int
) -> tuple[list[onnx.NodeProto], dict[str, np.ndarray]]:
    """Evaluate the default-domain ``FOLDABLE`` nodes whose inputs are all constants (in
    ``constants``, by name, or folded earlier). Returns ``(kept, folded)``: the other nodes in
    order, and each folded output's array. ``constants`` is not modified."""
    from .load import _attributes
    from .ops._common import wrap
    from .registry import lookup

    kept, folded = [], {}
    known = dict(constants)
    for node in nodes:
        names = [n for n in node.input if n]
        converter = None
        if (
            node.op_type in FOLDABLE
            and node.domain in ("", "ai.onnx")
            and names
            and all(n in known for n in names)
            and len(node.output) == 1
        ):
            converter = lookup(node.op_type, opset)
        if converter is None:
            kept.append(node)
            continue
        inputs = [wrap(known[n]) if n else None for n in node.input]
        try:
            array = np.asarray(converter.run(*inputs, **_attributes(node))._data)
            check_shape(array.shape, "folded constant")
            if any(np.may_share_memory(array, known[n]) for n in names):
                # a view (Identity, Reshape) of a weight another layer also holds: each layer
                # gets its own copy, so training one never moves the other
                array = array.copy()
        except (FinetuneError, ValueError, TypeError):
            kept.append(node)  # the walk reports it, naming the node, when the model runs
            continue
        known[node.output[0]] = folded[node.output[0]] = array
    return kept, folded


def free_batch_reshapes(
    graph: onnx.GraphProto,
    nodes: list[onnx.NodeProto],
    constants: dict[str, np.ndarray],
    opset: int,
) -> tuple[list[onnx.NodeProto], dict[str, np.ndarray], int | None]:
    """``nodes`` with each batch-baked ``Reshape`` rewritten to follow the batch, the new shape
    constants they read, and the file's batch size if the graph still needs it: when shape
    inference does not show every output following the batch (another op bakes it in, such as
    Swin's windows or an ``Expand`` to ``[1, ...]``) or cannot follow the graph. ``OnnxModule``
    runs such a graph on slices of that many samples."""
    batch = _fixed_batch(graph, constants)
    if batch is None:
        return nodes, {}, None
    candidates = {
        index: shape
        for index, node in enumerate(nodes)
        if (shape := _reshape_target(node, constants)) is not None
        and shape[0] == batch
        and _free_shape(node, shape) is not None
    }
    chosen = set(candidates)
    while True:
        trial = _rewritten(nodes, candidates, chosen)
        shapes = _infer_with_symbolic_batch(graph, trial[0], {**constants, **trial[1]}, opset)
        if shapes is None:
            return nodes, {}, batch
        keep = {
            i for i in chosen if _keeps_batch_first(shapes.get(nodes[i].input[0]), candidates[i])
        }
        if keep == chosen:
            outputs = [shapes.get(value.name) for value in graph.output]
            follows = all(dims and dims[0] == BATCH_SYMBOL for dims in outputs)
            follows = follows and not _joins_fixed_rows(trial[0], shapes)
            return (*trial, None if follows else batch)
        chosen = keep


def _joins_fixed_rows(nodes: list[onnx.NodeProto], shapes: dict) -> bool:
    """Whether a Concat along another axis than the batch joins a batch-sized input with one of
    fixed rows (LRN's zero padding made at the file's batch size): shape inference lets the
    symbol stand for that number, the graph fails at any other batch size."""
    for node in nodes:
        if node.op_type != "Concat":
            continue
        axis = next((a.i for a in node.attribute if a.name == "axis"), 0)
        firsts = [dims[0] for name in node.input if (dims := shapes.get(name)) and len(dims) > 1]
        ranks = {len(shapes[name]) for name in node.input if shapes.get(name)}
        if axis % max(ranks or {1}) == 0:
            continue
        if BATCH_SYMBOL in firsts and any(isinstance(d, int) for d in firsts):
            return True
    return False


def _fixed_batch(graph: onnx.GraphProto, constants: dict) -> int | None:
    """The first dimension shared by the graph's tensor inputs, when it is a fixed number."""
    dims = set()
    for value in graph.input:
        if value.name in constants or not value.type.HasField("tensor_type"):
            continue
        shape = value.type.tensor_type.shape.dim
        if not shape or not shape[0].HasField("dim_value"):
            return None
        dims.add(shape[0].dim_value)
    return dims.pop() if len(dims) == 1 else None


def _reshape_target(node: onnx.NodeProto, constants: dict) -> list[int] | None:
    """A default-domain Reshape's constant target shape (input or opset-1 attribute)."""
    if node.op_type != "Reshape" or node.domain not in ("", "ai.onnx"):
        return None
    attributes = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
    if len(node.input) > 1 and node.input[1] in constants:
        shape = np.asarray(constants[node.input[1]]).reshape(-1)
    elif len(node.input) == 1 and "shape" in attributes:
        shape = np.asarray(attributes["shape"]).reshape(-1)
    else:
        return None
    return [int(s) for s in shape] if shape.size else None


def _free_shape(node: onnx.NodeProto, shape: list[int]) -> tuple[list[int], bool] | None:
    """``shape`` with its first entry made to follow the input's, and whether the node must
    drop ``allowzero``: 0 ("copy the input's dimension", which shape inference follows) unless
    a literal 0 needs ``allowzero``, else -1 when no other entry is -1."""
    allowzero = any(a.name == "allowzero" and a.i for a in node.attribute)
    if not allowzero or 0 not in shape:
        return [0, *shape[1:]], allowzero
    if -1 not in shape[1:]:
        return [-1, *shape[1:]], False
    return None


def _rewritten(nodes, candidates, chosen):
    """The nodes with each chosen Reshape reading a shape whose first entry follows the batch."""
    out, added = list(nodes), {}
    for index in sorted(chosen):
        node = nodes[index]
        shape, drop_allowzero = _free_shape(node, candidates[index])
        free = np.asarray(shape, dtype=np.int64)
        name = f"{node.name or node.output[0]}__batch_free_shape"
        new = onnx.NodeProto()
        new.CopyFrom(node)
        if drop_allowzero:  # the shape has no literal 0: allowzero changes nothing else
            kept = [a for a in new.attribute if a.name != "allowzero"]
            del new.attribute[:]
            new.attribute.extend(kept)
        if len(node.input) > 1:
            new.input[1] = name
            added[name] = free
        else:
            del new.attribute[:]
            new.attribute.extend(a for a in node.attribute if a.name != "shape")
            new.attribute.append(onnx.helper.make_attribute("shape", free.tolist()))
        out[index] = new
    return out, added


def _keeps_batch_first(dims: Sequence | None, target: list[int]) -> bool:
    """The reshape's input has the batch symbol first and known other dims, and the target
    shape moves none of them into the first axis."""
    if not dims or dims[0] != BATCH_SYMBOL or not all(isinstance(d, int) for d in dims[1:]):
        return False
    rest, known = math.prod(dims[1:]), [s for s in target[1:] if s != -1]
    if any(s <= 0 for s in known):
        return False  # a 0 copies an input dimension: too clever to verify here
    if -1 in target[1:]:
        return target[1:].count(-1) == 1 and rest % max(math.prod(known), 1) == 0
    return math.prod(known) == rest


def _infer_with_symbolic_batch(graph, nodes, constants, opset) -> dict | None:
    """ONNX shape inference of ``nodes`` with every input's first dimension the symbol
    ``batch``: value name → dims (ints, the symbol, or None), or None when inference fails.
    Float constants are declared as inputs, not copied, so this is cheap for any model."""
    from .load import _infer_shapes_isolated

    inputs, initializers = [], []
    for value in graph.input:
        if value.name in constants:
            continue
        value = onnx.ValueInfoProto.FromString(value.SerializeToString())
        dims = value.type.tensor_type.shape.dim
        if dims:
            dims[0].Clear()
            dims[0].dim_param = BATCH_SYMBOL
        inputs.append(value)
    produced = {name for node in nodes for name in node.output}
    for name, array in constants.items():
        if name in produced:
            continue
        array = np.asarray(array)
        if array.dtype.kind == "f":
            elem = onnx.helper.np_dtype_to_tensor_dtype(array.dtype)
            inputs.append(onnx.helper.make_tensor_value_info(name, elem, list(array.shape)))
        else:
            initializers.append(onnx.numpy_helper.from_array(array, name))
    outputs = []
    for value in graph.output:  # declared output shapes (the file's batch) are left to inference
        value = onnx.ValueInfoProto.FromString(value.SerializeToString())
        if value.type.HasField("tensor_type"):
            value.type.tensor_type.ClearField("shape")
        outputs.append(value)
    light = onnx.helper.make_model(
        onnx.helper.make_graph(nodes, graph.name or "g", inputs, outputs, initializers),
        opset_imports=[onnx.helper.make_opsetid("", opset)],
    )
    inferred = _infer_shapes_isolated(light)
    if inferred is None:
        return None
    shapes = {}
    for info in (*inferred.input, *inferred.value_info, *inferred.output):
        if info.type.HasField("tensor_type") and info.type.tensor_type.HasField("shape"):
            shapes[info.name] = [
                d.dim_value if d.HasField("dim_value") else (d.dim_param or None)
                for d in info.type.tensor_type.shape.dim
            ]
    return shapes
