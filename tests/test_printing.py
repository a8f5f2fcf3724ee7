"""Tensor printing against strings PyTorch printed (tests/data/torch_printing.json), plus
summarisation, wrapping and nesting cases built from PyTorch's rules."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest

import finetune
import finetune as torch

CASES = json.loads((Path(__file__).parent / "data" / "torch_printing.json").read_text())["cases"]


@pytest.mark.parametrize("case", CASES, ids=[c["expr"] for c in CASES])
def test_prints_as_pytorch(case: dict) -> None:
    if "nn.Parameter" in case["expr"] and importlib.util.find_spec("finetune.nn") is None:
        pytest.skip("finetune.nn is not written yet")
    t = eval(case["expr"], {"torch": finetune})
    assert repr(t) == case["prints"]
    assert str(t) == case["prints"]
    name = None if t.grad_fn is None else type(t.grad_fn).__name__
    assert name == case["repr_grad_fn"]


def test_seed_walkthrough_strings() -> None:
    x = torch.ones(2, 2, requires_grad=True)
    assert repr(x) == "tensor([[1., 1.],\n        [1., 1.]], requires_grad=True)"
    out = ((x + 2) * (x + 2) * 3).mean()
    assert repr(out) == "tensor(27., grad_fn=<MeanBackward0>)"
    sci = torch.tensor([102.4, 1024.0, 0.1024])
    assert repr(sci) == "tensor([1.0240e+02, 1.0240e+03, 1.0240e-01])"


def test_summarises_2d_with_ellipsis_rows_and_columns() -> None:
    t = torch.arange(2000).reshape(40, 50)
    lines = repr(t).split("\n")
    assert lines[0] == "tensor([[   0,    1,    2,  ...,   47,   48,   49],"
    assert lines[3] == "        ...,"
    assert lines[-1] == "        [1950, 1951, 1952,  ..., 1997, 1998, 1999]])"
    assert len(lines) == 7


def test_summarised_notation_comes_from_shown_elements_only() -> None:
    values = np.ones(1200, dtype=np.float32)
    values[600] = 1e-7
    assert repr(torch.from_numpy(values)) == "tensor([1., 1., 1.,  ..., 1., 1., 1.])"


def test_wraps_long_rows_at_80_columns() -> None:
    text = repr(torch.arange(30.0) + 0.5)
    assert max(len(line) for line in text.split("\n")) <= 80
    assert text.split("\n")[1].startswith("         ")


def test_dtype_suffix_wraps_to_its_own_line_when_row_is_full() -> None:
    short = repr(torch.arange(12.0, dtype=torch.float64) * 1.25)
    assert short.endswith("13.7500], dtype=torch.float64)")
    text = repr(torch.arange(16.0, dtype=torch.float64) * 1.25)
    assert text.endswith(",\n       dtype=torch.float64)")


def test_empty_tensors_name_shape_and_non_default_dtype() -> None:
    assert repr(torch.zeros(0, dtype=torch.int64)) == "tensor([], dtype=torch.int64)"
    assert repr(torch.zeros(3, 0, 2)) == "tensor([], size=(3, 0, 2))"


def test_float16_and_int_scalars() -> None:
    half = torch.tensor([0.5, 1.0], dtype=torch.float16)
    assert repr(half) == "tensor([0.5000, 1.0000], dtype=torch.float16)"
    assert repr(torch.tensor(7)) == "tensor(7)"
    assert repr(torch.tensor(True)) == "tensor(True)"


def test_integral_floats_with_large_ratio_use_scientific_notation() -> None:
    assert repr(torch.tensor([1.0, 10000.0])) == "tensor([1.0000e+00, 1.0000e+04])"
    assert repr(torch.tensor([1.0, 100.0])) == "tensor([  1., 100.])"


def test_set_printoptions_precision_and_restore() -> None:
    try:
        torch.set_printoptions(precision=2)
        assert repr(torch.tensor([1.23456])) == "tensor([1.23])"
    finally:
        torch.set_printoptions(profile="default")
    assert repr(torch.tensor([1.23456])) == "tensor([1.2346])"


def test_format_of_scalar_tensor_is_its_number() -> None:
    assert f"{torch.tensor(2.5):.2f}" == "2.50"
    assert f"{torch.tensor(2.5, requires_grad=True)}" == "2.5"
    assert f"{torch.tensor(3)}" == "3"
    assert f"{torch.tensor([2.5])}" == "tensor([2.5000])"
    with pytest.raises(TypeError):
        f"{torch.tensor([2.5]):.2f}"


def test_summarises_3d_blocks_with_blank_lines_and_ellipsis_blocks() -> None:
    row = "[0., 0., 0.,  ..., 0., 0., 0.]"
    block = "[" + ",\n         ".join([row] * 3 + ["..."] + [row] * 3) + "]"
    expected = "tensor([" + ",\n\n        ".join([block] * 3 + ["..."] + [block] * 3) + "])"
    assert repr(torch.zeros(10, 10, 11)) == expected
