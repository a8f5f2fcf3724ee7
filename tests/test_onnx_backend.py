"""The ONNX project's own node test cases, run through ``finetune.onnx.backend``.

The cases are every case of ``onnx.backend.test.case.node.collect_testcases()`` whose nodes all
use operators the library converts, except those with float8, bfloat16 or sub-byte element
types. The ones known to fail are listed with the reason.
"""

import warnings

import numpy as np
import onnx
import pytest
from onnx import TensorProto, numpy_helper
from onnx.backend.test.case.node import collect_testcases

from finetune.onnx import backend
from finetune.onnx.registry import supported

_EXCLUDED_TYPES = {
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

KNOWN_FAILURES = {
    "test_identity_sequence": "sequence values: the library has tensors only",
    "test_identity_opt": "optional values: the library has tensors only",
}


def _element_types(model: onnx.ModelProto) -> set[int]:
    graph = model.graph
    types = {v.type.tensor_type.elem_type for v in (*graph.input, *graph.output, *graph.value_info)}
    for node in graph.node:
        for attribute in node.attribute:
            if attribute.name == "to":
                types.add(attribute.i)
            if attribute.type == onnx.AttributeProto.TENSOR:
                types.add(attribute.t.data_type)
    return types


def _selected_cases():
    ops = set(supported())
    with warnings.catch_warnings():  # generating some cases overflows on purpose
        warnings.simplefilter("ignore", RuntimeWarning)
        cases = collect_testcases()
    return [
        case
        for case in cases
        if case.model is not None
        and all(n.op_type in ops and n.domain in ("", "ai.onnx") for n in case.model.graph.node)
        and not _element_types(case.model) & _EXCLUDED_TYPES
    ]


CASES = _selected_cases()


def _array(value):
    return numpy_helper.to_array(value) if isinstance(value, TensorProto) else value


def _param(case):
    reason = KNOWN_FAILURES.get(case.name)
    marks = [pytest.mark.xfail(reason=reason, strict=True)] if reason else []
    return pytest.param(case, id=case.name, marks=marks)


@pytest.mark.parametrize("case", [_param(c) for c in CASES])
def test_node_case(case):
    rep = backend.prepare(case.model, "CPU")
    for inputs, outputs in case.data_sets:
        got = rep.run([_array(x) for x in inputs])
        assert len(got) == len(outputs)
        for g, e in zip(got, map(_array, outputs)):
            assert g.dtype == e.dtype and g.shape == e.shape
            np.testing.assert_allclose(g, e, rtol=case.rtol, atol=case.atol)


def test_at_least_ninety_percent_of_the_selected_cases_are_expected_to_pass():
    assert len(CASES) > 300
    assert len(KNOWN_FAILURES) <= 0.1 * len(CASES)
    assert set(KNOWN_FAILURES) <= {c.name for c in CASES}


def test_run_node_and_device_support():
    node = onnx.helper.make_node("Gemm", ["a", "b", "c"], ["y"], transB=1, alpha=2.0)
    a, b, c = np.ones((2, 3), np.float32), np.full((4, 3), 0.5, np.float32), np.ones(4, np.float32)
    (y,) = backend.run_node(node, [a, b, c])
    np.testing.assert_allclose(y, np.full((2, 4), 4.0, np.float32))
    assert backend.supports_device("CPU") and not backend.supports_device("CUDA")
