"""The error function against Python's ``math.erf``, to a few units in the last place."""

from __future__ import annotations

import math

import numpy as np
import pytest

from finetune.autograd.special import erf


def test_erf_matches_math_erf_to_a_few_ulps_in_float64():
    x = np.concatenate(
        [
            np.linspace(-7, 7, 40001),
            np.geomspace(1e-300, 1e-3, 50),
            [2.5 - 1e-12, 2.5, 2.5 + 1e-12, 5.9, 6.0, 26.0, 27.5, 40.0, 1e300],
        ]
    )
    x = np.concatenate([x, -x])
    want = np.array([math.erf(v) for v in x])
    got = erf(x)
    assert got.dtype == np.float64
    ulps = np.abs(got - want) / np.spacing(np.abs(want))
    assert ulps.max() <= 16


def test_erf_special_values_and_dtypes():
    got = erf(np.array([np.nan, 0.0, -0.0, np.inf, -np.inf]))
    assert np.isnan(got[0])
    np.testing.assert_array_equal(got[1:], [0.0, -0.0, 1.0, -1.0])
    assert np.signbit(got[2])
    assert erf(np.float32([0.5, -3.0])).dtype == np.float32
    assert erf(np.array([1, 2])).dtype == np.float32  # integers compute in float32, as torch
    assert erf(np.float16([0.5])).dtype == np.float16
    assert erf(np.zeros((0, 3))).shape == (0, 3)


@pytest.mark.parametrize("value", [-3.0, -0.7, 0.0, 0.2, 1.3, 2.6, 4.0])
def test_erf_float32_is_within_a_few_ulps_of_the_rounded_float64(value):
    """float32 takes the fast rational (tests/test_fast_elementwise.py checks a dense grid)."""
    want = np.float32(math.erf(np.float32(value)))
    got = erf(np.float32([value]))[0]
    assert abs(float(got) - float(want)) <= 8 * float(np.spacing(np.abs(want)))
