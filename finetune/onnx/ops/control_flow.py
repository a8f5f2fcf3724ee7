"""Control flow: If, Loop, Scan and SequenceMap. The loader imports each body as a child
``OnnxModule`` and hands it to the converter as a ``Body`` bound to the enclosing scope's
values; running it uses the library's own ops, so gradients flow through the branch taken and
through every iteration that ran."""

from __future__ import annotations

import os

import numpy as np
import onnx

from ... import functions as fn
from ...autograd import ops
from ...errors import ShapeError
from ...tensor import Tensor
from ..graph import Body, GraphInput, OnnxModule
from ..registry import register, since_version
from ._common import axis_of, ints, wrap

_VERSIONS = (1, 11, 13, 16, 19, 21, 23, 24, 25)

# A Loop with no trip count (or one above this) whose condition stays true stops with a
# ShapeError after this many iterations instead of running forever.
MAX_LOOP_ITERATIONS = int(os.environ.get("FINETUNE_ONNX_MAX_LOOP_ITERATIONS", 100_000))


def _truth(cond: Tensor, op: str) -> bool:
    """A one-element condition as a Python bool."""
    data = np.asarray(cond._data)
    if data.size != 1:
        raise ShapeError(f"{op}: the condition must have one element, got shape {list(data.shape)}")
    return bool(data.reshape(-1)[0])


def _node_outputs(values: list):
    """A converter's result: one value as is, several as a tuple (the walk's convention)."""
    return values[0] if len(values) == 1 else tuple(values)


def _stacked(steps: list[Tensor], spec: GraphInput | None, axis: int = 0) -> Tensor:
    """Per-iteration outputs stacked along a new ``axis``; an empty run gives a length-0 axis,
    with the body's declared element type and (known) dimensions."""
    if steps:
        return ops.Stack.apply(*steps, dim=axis_of(axis, steps[0].ndim + 1))
    dtype = spec.dtype if spec is not None and spec.dtype is not None else np.dtype(np.float32)
    dims = [d or 0 for d in spec.shape] if spec is not None and spec.shape is not None else []
    dims.insert(axis_of(axis, len(dims) + 1), 0)
    return wrap(np.zeros(dims, dtype=dtype))


def _spec(body: Body, index: int) -> GraphInput | None:
    types = body.output_types
    return types[index] if index < len(types) else None


@register("If", *_VERSIONS)
def if_(cond: Tensor, *, then_branch: Body, else_branch: Body):
    """Run one branch; its outputs are the node's."""
    branch = then_branch if _truth(cond, "If") else else_branch
    return _node_outputs(list(branch()))


@register("Loop", *_VERSIONS)
def loop(M: Tensor | None = None, cond: Tensor | None = None, *v_initial, body: Body):  # noqa: N803
    """``for i in range(M) while cond``: the body maps ``(i, cond, *carried)`` to
    ``(cond, *carried, *scan_outputs)``; outputs are the final carried values, then each scan
    output stacked along a new first axis. Without a ``cond`` input the body's condition output
    is ignored (the spec's for-loop)."""
    carried = list(v_initial)
    n = len(carried)
    trip = None if M is None else int(np.asarray(M._data).reshape(-1)[0])
    running = True if cond is None else _truth(cond, "Loop")
    scans: list[list[Tensor]] = [[] for _ in range(body.num_outputs - 1 - n)]
    i = 0
    while running and (trip is None or i < trip):
        if i >= MAX_LOOP_ITERATIONS and (trip is None or trip > MAX_LOOP_ITERATIONS):
            raise ShapeError(
                f"Loop: still running after {MAX_LOOP_ITERATIONS:,} iterations (trip count "
                f"{'none' if trip is None else f'{trip:,}'}, condition still true); finetune "
                "caps such loops; set FINETUNE_ONNX_MAX_LOOP_ITERATIONS to allow more"
            )
        outs = body(wrap(np.array(i, dtype=np.int64)), wrap(np.array(running)), *carried)
        carried = list(outs[1 : 1 + n])
        for acc, value in zip(scans, outs[1 + n :]):
            acc.append(value)
        if cond is not None:
            running = _truth(outs[0], "Loop body")
        i += 1
    stacked = [_stacked(acc, _spec(body, 1 + n + k)) for k, acc in enumerate(scans)]
    return _node_outputs(carried + stacked)


def _slices(x: Tensor, axis: int, length: int) -> list[Tensor]:
    """``x`` cut along ``axis`` into ``length`` slices without that axis, in one Split."""
    if length == 0:
        return []
    pieces = ops.Split.apply(x, sizes=[1] * length, dim=axis) if length > 1 else (x,)
    shape = tuple(s for i, s in enumerate(x.shape) if i != axis)
    return [fn.reshape(p, shape) for p in pieces]


def _scan_steps(body: Body, states: list, xs: list, axes, directions, length: int):
    """Run the body over ``length`` positions: the final states and each scan output's values
    in iteration order."""
    n = len(states)
    columns = []
    for x, axis, reverse in zip(xs, axes, directions):
        if x.shape[axis] != length:  # Scan 8: a batch entry shorter than the padded sequence
            x = fn.getitem(x, (slice(None),) * axis + (slice(0, length),))
        cut = _slices(x, axis, length)
        columns.append(cut[::-1] if reverse else cut)
    outputs: list[list[Tensor]] = [[] for _ in range(body.num_outputs - n)]
    for t in range(length):
        outs = body(*states, *(column[t] for column in columns))
        states = list(outs[:n])
        for acc, value in zip(outputs, outs[n:]):
            acc.append(value)
    return states, outputs


@register("Scan", 9, 11, 16, 19, 21, 23, 24, 25)
def scan(
    *initial_state_and_scan_inputs: Tensor,
    body: Body,
    num_scan_inputs,
    scan_input_axes=None,
    scan_input_directions=None,
    scan_output_axes=None,
    scan_output_directions=None,
):
    """The body maps ``(*states, *slices)`` to ``(*states, *scan_outputs)`` at each position
    along each scan input's axis; scan outputs are stacked along their ``scan_output_axes``."""
    m = num_scan_inputs
    n = len(initial_state_and_scan_inputs) - m
    states, xs = list(initial_state_and_scan_inputs[:n]), initial_state_and_scan_inputs[n:]
    k = body.num_outputs - n
    in_axes = [axis_of(a, x.ndim) for a, x in zip(scan_input_axes or [0] * m, xs)]
    lengths = {x.shape[a] for x, a in zip(xs, in_axes)}
    if len(lengths) != 1:
        raise ShapeError(
            f"Scan: the scan inputs have different lengths {sorted(lengths)} along their axes"
        )
    length = lengths.pop()
    directions = scan_input_directions or [0] * m
    states, outputs = _scan_steps(body, states, list(xs), in_axes, directions, length)
    out_axes = scan_output_axes or [0] * k
    out_directions = scan_output_directions or [0] * k
    stacked = [
        _stacked(acc[::-1] if reverse else acc, _spec(body, n + j), axis)
        for j, (acc, axis, reverse) in enumerate(zip(outputs, out_axes, out_directions))
    ]
    return _node_outputs(states + stacked)


@register("Scan", 8)
def scan_8(
    sequence_lens: Tensor | None,
    *initial_state_and_scan_inputs: Tensor,
    body: Body,
    directions=None,
    num_scan_inputs,
):
    """Scan 8 has a batch axis 0 on every input and output; each batch entry runs its own
    ``sequence_lens`` steps (default: the scan inputs' axis 1), and scan outputs are padded
    with zeros to the longest."""
    m = num_scan_inputs
    n = len(initial_state_and_scan_inputs) - m
    states, xs = initial_state_and_scan_inputs[:n], initial_state_and_scan_inputs[n:]
    batch = (states or xs)[0].shape[0]
    full = xs[0].shape[1]
    if any(x.shape[0] != batch or x.shape[1] != full for x in xs) or any(
        s.shape[0] != batch for s in states
    ):
        raise ShapeError(
            f"Scan: inputs {[list(v.shape) for v in initial_state_and_scan_inputs]} do not share "
            "batch axis 0 and sequence axis 1"
        )
    lens = [full] * batch if sequence_lens is None else list(ints(sequence_lens))
    if len(lens) != batch or any(not 0 <= s <= full for s in lens):
        raise ShapeError(f"Scan: sequence_lens {lens} must be {batch} lengths within 0..{full}")
    per_state: list[list[Tensor]] = [[] for _ in range(n)]
    per_output: list[list[Tensor]] = [[] for _ in range(body.num_outputs - n)]
    for b in range(batch):
        entry_states = [fn.getitem(s, b) for s in states]
        entry_xs = [fn.getitem(x, b) for x in xs]
        final, outputs = _scan_steps(
            body, entry_states, entry_xs, [0] * m, directions or [0] * m, lens[b]
        )
        for acc, value in zip(per_state, final):
            acc.append(value)
        for j, acc in enumerate(outputs):
            per_output[j].append(_padded(acc, _spec(body, n + j), full))
    results = [ops.Stack.apply(*acc, dim=0) for acc in per_state]
    results += [ops.Stack.apply(*acc, dim=0) for acc in per_output]
    return _node_outputs(results)


def _padded(steps: list[Tensor], spec: GraphInput | None, length: int) -> Tensor:
    """One batch entry's scan output, zero-padded along axis 0 to ``length`` steps."""
    stacked = _stacked(steps, spec)
    missing = length - stacked.shape[0]
    if missing == 0:
        return stacked
    zeros = wrap(np.zeros((missing, *stacked.shape[1:]), dtype=stacked._data.dtype))
    return ops.Cat.apply(stacked, zeros, dim=0) if steps else zeros


@register("SequenceMap", 17)
def sequence_map(input_sequence: list, *additional_inputs, body: Body):
    """The body on the i-th element of every sequence input (tensor inputs whole); each output
    is the sequence of the body's results."""
    inputs = (input_sequence, *additional_inputs)
    n = len(input_sequence)
    lengths = [len(x) for x in inputs if isinstance(x, list)]
    if any(length != n for length in lengths):
        raise ShapeError(f"SequenceMap: the input sequences have different lengths {lengths}")
    outputs: list[list] = [[] for _ in range(body.num_outputs)]
    for i in range(n):
        outs = body(*(x[i] if isinstance(x, list) else x for x in inputs))
        for acc, value in zip(outputs, outs):
            acc.append(value)
    return _node_outputs(outputs)


def check_subgraphs(node: onnx.NodeProto, bodies: dict[str, OnnxModule], opset: int) -> str | None:
    """What is wrong with a control-flow node's bodies given its inputs and outputs (the
    loader turns it into an OnnxImportError naming the node), or None."""
    arity = {name: (len(b.input_names), len(b.output_names)) for name, b in bodies.items()}
    inputs, outputs = len(node.input), len(node.output)
    if node.op_type == "If":
        for name, (_, count) in arity.items():
            if count != outputs:
                return f"{name} has {count} outputs, the node {outputs}"
    elif node.op_type == "Loop" and "body" in arity:
        carried = max(inputs - 2, 0)
        got_in, got_out = arity["body"]
        if got_in != 2 + carried:
            return (
                f"body takes {got_in} inputs; with {carried} loop-carried values it must take "
                f"{2 + carried} (iteration, condition, values)"
            )
        if got_out < 1 + carried or outputs > got_out - 1:
            return (
                f"body has {got_out} outputs for {carried} loop-carried values and {outputs} "
                "node outputs; it needs the condition, the values, then the scan outputs"
            )
    elif node.op_type == "Scan" and "body" in arity:
        attributes = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
        scanned = int(attributes.get("num_scan_inputs", 0))
        states = inputs - scanned - (1 if since_version("Scan", opset) == 8 else 0)
        got_in, got_out = arity["body"]
        if scanned < 1 or states < 0 or got_in != states + scanned:
            return (
                f"body takes {got_in} inputs; the node has {states} states and {scanned} scan "
                "inputs"
            )
        if got_out != outputs or got_out < states:
            return f"body has {got_out} outputs, the node {outputs} ({states} states first)"
        for name, want in (
            ("scan_input_axes", scanned),
            ("scan_input_directions", scanned),
            ("directions", scanned),
            ("scan_output_axes", outputs - states),
            ("scan_output_directions", outputs - states),
        ):
            if name in attributes and len(attributes[name]) != want:
                return f"attribute {name} has {len(attributes[name])} entries, expected {want}"
    elif node.op_type == "SequenceMap" and "body" in arity:
        if arity["body"] != (inputs, outputs):
            return (
                f"body takes {arity['body'][0]} inputs and has {arity['body'][1]} outputs; the "
                f"node has {inputs} and {outputs}"
            )
    return None
