"""Where an imported model's forward loses time against onnxruntime, by kind of layer.

Times every unit of the library's inference plan (a convolution with its folded BatchNorm and
activation is one unit, as onnxruntime fuses them into one node) and every node of onnxruntime's
session (its own profiler, 2 threads), and adds them up by kind: ``Conv 3x3 s2`` (``dw`` for a
depthwise, ``grp`` for a grouped convolution, ``stem`` for one reading the 3 image channels),
otherwise the ONNX op type. Kinds are sorted by how much more time the library spends on them.
Both sums leave out what lies between the units (onnxruntime's profiler slows its small nodes
down: compare kinds, not totals). Run from the repository root with the package and
onnxruntime installed (``make bench`` installs both)::

    python benchmarks/versus.py model.onnx [--batch N] [--calls N] [--top N]

The timers reach into the plan (``finetune.onnx.plan._execute``): a measuring tool, not an API.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import tempfile
import time

# finetune before numpy, as the README advises (docs/performance.md, "All cores for the copies")
import finetune

# isort: split
import numpy as np
import onnx

from finetune.onnx import plan as planned

# what onnxruntime fuses into the convolution before it: its node is named after their output
_FUSED_AFTER_CONV = ("Relu", "Clip", "HardSigmoid", "HardSwish", "Sigmoid", "Mul", "Add")


def conv_kind(weight_shape, groups: int, stride) -> str:
    """``Conv 3x3 s1``, ``Conv 3x3dw s2``, ``Conv 1x1grp s1``, ``Conv 7x7 s2 stem``."""
    out_channels, in_per_group, *kernel = weight_shape
    extra = "dw" if groups > 1 and in_per_group == 1 else ("grp" if groups > 1 else "")
    size = "x".join(str(k) for k in kernel)
    stem = " stem" if groups == 1 and in_per_group == 3 else ""
    return f"Conv {size}{extra} s{stride[0]}{stem}"


def onnx_kinds(model: onnx.ModelProto):
    """``kind(tensor name)``: the kind of the node producing it, looking through the
    activations onnxruntime fuses into a convolution."""
    graph = model.graph
    shapes = {t.name: tuple(t.dims) for t in graph.initializer}
    producer = {name: node for node in graph.node for name in node.output}

    def of_node(node) -> str:
        if node.op_type != "Conv" or node.input[1] not in shapes:
            return node.op_type
        attributes = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
        return conv_kind(
            shapes[node.input[1]], attributes.get("group", 1), attributes.get("strides", [1])
        )

    def kind(name: str) -> str | None:
        node = producer.get(name)
        for _ in range(3):  # Conv -> [BatchNormalization] -> activation -> its gate Mul
            if node is None or node.op_type not in _FUSED_AFTER_CONV:
                break
            before = producer.get(node.input[0])
            if before is not None and before.op_type == "Conv":
                return of_node(before)
            node = before
        return None if node is None else of_node(node)

    return kind


def onnxruntime_times(path: str, inputs: list, threads: int) -> dict:
    """Microseconds per call by kind, from onnxruntime's profiler."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads, options.inter_op_num_threads = threads, 1
    options.enable_profiling = True
    options.profile_file_prefix = os.path.join(tempfile.mkdtemp(), "versus")
    session = ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    for x in inputs:
        session.run(None, {name: x})
    profile = session.end_profiling()
    with open(profile) as f:
        events = json.load(f)
    os.remove(profile)
    kind = onnx_kinds(onnx.load(path, load_external_data=False))
    totals: dict[str, float] = collections.defaultdict(float)
    for event in events:
        if event.get("cat") != "Node" or not event["name"].endswith("_kernel_time"):
            continue
        node = event["name"][: -len("_kernel_time")]
        op = event["args"].get("op_name", "?")
        tensor = node.removesuffix("_nchwc")
        found = None if op.startswith("Reorder") else kind(tensor)
        totals[found or op] += event["dur"] / len(inputs)
    return totals


def library_times(path: str, inputs: list) -> tuple[dict, float]:
    """Microseconds per call by kind, from timers around the plan's units, and the plain
    forward's milliseconds (no timers)."""
    model = finetune.onnx.load(path)
    model.eval()
    tensors = [finetune.from_numpy(x) for x in inputs]
    totals: dict[str, float] = collections.defaultdict(float)
    timing = False
    execute = planned._execute

    def timed(program, slots, source, record):
        if not timing:
            return execute(program, slots, source, record)
        for step in program:
            run, ins, outs, free, kept, unit = step
            start = time.perf_counter()
            execute((step,), slots, source, record)
            elapsed = time.perf_counter() - start
            kind = unit.op_type.split("+")[0]
            if unit.layers is not None:
                conv = unit.layers[0]
                kind = conv_kind(conv.weight.shape, conv.groups, conv.stride)
            totals[kind] += elapsed * 1e6 / len(tensors)

    planned._execute = timed
    try:
        with finetune.no_grad():
            model(tensors[0])  # the plan is built, its shape arithmetic folded
            start = time.perf_counter()
            for x in tensors:
                model(x)
            plain = (time.perf_counter() - start) / len(tensors) * 1e3
            timing = True
            for x in tensors:
                model(x)
    finally:
        planned._execute = execute
    return totals, plain


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", help="an ONNX file whose input has a fixed shape past the batch")
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--calls", type=int, default=20, help="timed calls of each system")
    parser.add_argument("--top", type=int, default=15, help="kinds shown")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)
    finetune.set_num_threads(args.threads)
    graph_input = onnx.load(args.model, load_external_data=False).graph.input[0]
    shape = [d.dim_value for d in graph_input.type.tensor_type.shape.dim][1:]
    rng = np.random.default_rng(0)
    inputs = [
        rng.standard_normal((args.batch, *shape), dtype=np.float32) for _ in range(args.calls)
    ]
    ours, plain = library_times(args.model, inputs)
    theirs = onnxruntime_times(args.model, inputs, args.threads)
    print(
        f"{os.path.basename(args.model)} batch {args.batch}: finetune forward {plain:.2f} ms "
        f"(its units {sum(ours.values()) / 1e3:.2f} ms); onnxruntime's nodes, profiled, "
        f"{sum(theirs.values()) / 1e3:.2f} ms"
    )
    kinds = sorted(set(ours) | set(theirs), key=lambda k: theirs.get(k, 0) - ours.get(k, 0))
    print(f"  {'kind':24s} {'finetune ms':>12s} {'onnxruntime ms':>15s} {'difference':>11s}")
    for kind in kinds[: args.top]:
        a, b = ours.get(kind, 0.0) / 1e3, theirs.get(kind, 0.0) / 1e3
        print(f"  {kind:24s} {a:12.2f} {b:15.2f} {a - b:+11.2f}")


if __name__ == "__main__":
    main()
