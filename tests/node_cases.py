"""The ONNX project's own node test cases as the import issue counts them, and how to run one.

The population is every case of ``onnx.backend.test.case.node.collect_testcases()`` except those
with float8, bfloat16, 4-bit, 2-bit or e8m0 element types, the random-number ops whose references
are unseeded, and nodes of non-default domains. A case passes when every output has the expected
dtype, shape and values (within the case's ``rtol``/``atol``); a sequence output is a list of
arrays, an empty optional ``None``.
"""

from __future__ import annotations

import warnings

import numpy as np
import onnx
from onnx import TensorProto, numpy_helper

EXCLUDED_TYPES = {
    getattr(TensorProto, name)
    for name in (
        "BFLOAT16",
        "FLOAT8E4M3FN",
        "FLOAT8E4M3FNUZ",
        "FLOAT8E5M2",
        "FLOAT8E5M2FNUZ",
        "FLOAT8E8M0",
        "FLOAT4E2M1",
        "UINT4",
        "INT4",
        "UINT2",
        "INT2",
    )
    if hasattr(TensorProto, name)
}
UNSEEDED_RANDOM_OPS = {
    "Bernoulli",
    "RandomUniform",
    "RandomUniformLike",
    "RandomNormal",
    "RandomNormalLike",
    "Multinomial",
}


def _types_of(value_type: onnx.TypeProto, into: set[int]) -> None:
    kind = value_type.WhichOneof("value")
    if kind == "tensor_type":
        into.add(value_type.tensor_type.elem_type)
    elif kind == "sequence_type":
        _types_of(value_type.sequence_type.elem_type, into)
    elif kind == "optional_type":
        _types_of(value_type.optional_type.elem_type, into)


def _graph_facts(graph: onnx.GraphProto, types: set[int], ops: set[tuple[str, str]]) -> None:
    for v in (*graph.input, *graph.output, *graph.value_info):
        _types_of(v.type, types)
    for t in graph.initializer:
        types.add(t.data_type)
    for node in graph.node:
        ops.add((node.domain, node.op_type))
        for attribute in node.attribute:
            if attribute.name in ("to", "output_dtype", "dtype") and attribute.type == 2:
                types.add(attribute.i)
            if attribute.type == onnx.AttributeProto.TENSOR:
                types.add(attribute.t.data_type)
            if attribute.type == onnx.AttributeProto.GRAPH:
                _graph_facts(attribute.g, types, ops)
            for g in attribute.graphs:
                _graph_facts(g, types, ops)


def array_of(value):
    """A case's input or output as numpy (TensorProto values converted)."""
    if isinstance(value, TensorProto):
        return numpy_helper.to_array(value)
    if isinstance(value, np.generic):  # some cases hold numpy scalars: a 0-d array here
        return np.asarray(value)
    return value


_array = array_of

# cases that fail today, with the reason: each one is an expected failure in the test suite
# (strict, so a case that starts passing must leave this list)
KNOWN_FAILURES: dict[str, str] = {}


def _data_types(case) -> set[int]:
    types: set[int] = set()
    for inputs, outputs in case.data_sets:
        for x in (*inputs, *outputs):
            if isinstance(x, TensorProto):
                types.add(x.data_type)
    return types


def population() -> list:
    """The cases the issue counts (1661 with onnx 1.23)."""
    from onnx.backend.test.case.node import collect_testcases

    with warnings.catch_warnings():  # generating some cases overflows on purpose
        warnings.simplefilter("ignore")
        cases = collect_testcases()
    chosen = []
    for case in cases:
        if case.model is None:
            continue
        types: set[int] = set()
        ops: set[tuple[str, str]] = set()
        _graph_facts(case.model.graph, types, ops)
        types |= _data_types(case)
        if types & EXCLUDED_TYPES:
            continue
        if any(domain not in ("", "ai.onnx") for domain, _ in ops):
            continue
        if any(op in UNSEEDED_RANDOM_OPS for _, op in ops):
            continue
        chosen.append(case)
    return chosen


def op_of(case) -> str:
    """The op a case tests: its graph's last default-domain node type (most cases have one)."""
    return case.model.graph.node[-1].op_type if case.model.graph.node else "?"


def _compare(got, expected, rtol: float, atol: float) -> None:
    if isinstance(expected, list):
        assert isinstance(got, list), f"expected a sequence, got {type(got).__name__}"
        assert len(got) == len(expected), f"sequence of {len(got)}, expected {len(expected)}"
        for g, e in zip(got, expected):
            _compare(g, e, rtol, atol)
        return
    if expected is None:
        assert got is None, f"expected an empty optional, got {type(got).__name__}"
        return
    expected = np.asarray(_array(expected))
    assert isinstance(got, np.ndarray), f"expected an array, got {type(got).__name__}"
    assert got.dtype == expected.dtype, f"dtype {got.dtype}, expected {expected.dtype}"
    assert got.shape == expected.shape, f"shape {got.shape}, expected {expected.shape}"
    if expected.dtype.kind in "OUS":
        np.testing.assert_array_equal(got, expected)
    else:
        np.testing.assert_allclose(got, expected, rtol=rtol, atol=atol)


def _input(value):
    if isinstance(value, list):
        return [_input(v) for v in value]
    return _array(value)


def run_case(case, backend) -> None:
    """Run ``case`` through ``backend`` (``prepare`` + ``rep.run``); AssertionError on mismatch."""
    rep = backend.prepare(case.model, "CPU")
    for inputs, outputs in case.data_sets:
        got = rep.run([_input(x) for x in inputs])
        assert len(got) == len(outputs), f"{len(got)} outputs, expected {len(outputs)}"
        for g, e in zip(got, outputs):
            _compare(g, e, case.rtol, case.atol)


def main(argv: list[str] | None = None) -> int:
    """``python tests/node_cases.py [OP ...]``: run the cases (those using any of the ops, if
    given), print each failure with its reason, then the totals."""
    import argparse
    import signal
    import time

    from finetune.onnx import backend

    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument("ops", nargs="*", help="only cases whose graph uses one of these ops")
    parser.add_argument("--seconds", type=float, default=30, help="time limit per case")
    parser.add_argument("--quiet", action="store_true", help="totals only")
    args = parser.parse_args(argv)

    def too_slow(*_):
        raise TimeoutError(f"over {args.seconds} s")

    signal.signal(signal.SIGALRM, too_slow)
    cases = population()
    if args.ops:
        wanted = set(args.ops)
        cases = [c for c in cases if wanted & ops_in(c)]
    passed, start = 0, time.perf_counter()
    for case in cases:
        signal.setitimer(signal.ITIMER_REAL, args.seconds)
        try:
            run_case(case, backend)
            passed += 1
        except Exception as error:  # noqa: BLE001 - a report of every failure is the point
            if not args.quiet:
                print(f"FAIL {case.name}: {type(error).__name__}: {str(error)[:300]}")
        finally:
            signal.setitimer(signal.ITIMER_REAL, 0)
    seconds = time.perf_counter() - start
    share = passed / len(cases) if cases else 0
    print(f"{passed} of {len(cases)} cases pass ({share:.1%}) in {seconds:.0f} s")
    return 0


def ops_in(case) -> set[str]:
    """Every op type a case's graph (and its subgraphs) uses."""
    types: set[int] = set()
    ops: set[tuple[str, str]] = set()
    _graph_facts(case.model.graph, types, ops)
    return {op for _, op in ops}


if __name__ == "__main__":
    import sys

    sys.path.insert(0, str(__import__("pathlib").Path(__file__).resolve().parents[1]))
    raise SystemExit(main())
