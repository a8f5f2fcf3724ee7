"""The ONNX project's own node test cases, run through ``finetune.onnx.backend``.

The cases are the population the import issue counts (``node_cases.population()``: every case of
``onnx.backend.test.case.node.collect_testcases()`` except float8, bfloat16 and sub-byte element
types, unseeded random ops and non-default domains), every one of them, whether or not its ops
are supported. The ones known to fail are listed with the reason in ``node_cases.KNOWN_FAILURES``.
"""

import numpy as np
import onnx
import pytest
from node_cases import KNOWN_FAILURES, UNSEEDED_RANDOM_OPS, ops_in, population, run_case

from finetune.onnx import backend
from finetune.onnx.registry import supported

CASES = population()


def _param(case):
    reason = KNOWN_FAILURES.get(case.name)
    marks = [pytest.mark.xfail(reason=reason, strict=True)] if reason else []
    return pytest.param(case, id=case.name, marks=marks)


@pytest.mark.parametrize("case", [_param(c) for c in CASES])
def test_node_case(case):
    run_case(case, backend)


def test_at_least_ninety_five_percent_of_the_cases_pass():
    assert len(CASES) >= 1600
    assert set(KNOWN_FAILURES) <= {c.name for c in CASES}
    assert len(KNOWN_FAILURES) <= 0.05 * len(CASES)


def test_every_supported_op_has_a_passing_case_or_a_test_of_its_own():
    """An op no node case reaches is tested in its family's test file (the random ops, whose
    node cases are unseeded, and ops the ONNX project has no case for)."""
    reached = set().union(*(ops_in(c) for c in CASES if c.name not in KNOWN_FAILURES))
    unreached = set(supported()) - reached
    assert unreached <= UNSEEDED_RANDOM_OPS | _ops_without_cases(), sorted(unreached)


def _ops_without_cases() -> set[str]:
    """Ops none of the ONNX project's node cases uses."""
    from onnx.backend.test.case.node import collect_testcases

    used = set()
    for case in collect_testcases():
        if case.model is not None:
            used |= ops_in(case)
    return set(supported()) - used


def test_run_node_and_device_support():
    node = onnx.helper.make_node("Gemm", ["a", "b", "c"], ["y"], transB=1, alpha=2.0)
    a, b, c = np.ones((2, 3), np.float32), np.full((4, 3), 0.5, np.float32), np.ones(4, np.float32)
    (y,) = backend.run_node(node, [a, b, c])
    np.testing.assert_allclose(y, np.full((2, 4), 4.0, np.float32))
    assert backend.supports_device("CPU") and not backend.supports_device("CUDA")
