"""``einsum`` against ``np.einsum`` and gradcheck, across the equation forms PyTorch accepts."""

from __future__ import annotations

import numpy as np
import pytest

import finetune as torch
from finetune.autograd import gradcheck
from finetune.errors import ShapeError

# equation, operand shapes
CASES = {
    "matmul": ("ij,jk->ik", [(2, 3), (3, 4)]),
    "batch_matmul": ("bij,bjk->bik", [(2, 2, 3), (2, 3, 4)]),
    "transpose": ("ij->ji", [(2, 3)]),
    "sum_all": ("ij->", [(2, 3)]),
    "trace": ("ii->", [(3, 3)]),
    "diagonal": ("ii->i", [(3, 3)]),
    "outer": ("i,j->ij", [(3,), (4,)]),
    "letter_in_one_operand_only": ("ij,k->i", [(2, 3), (4,)]),
    "bilinear": ("bn,anm,bm->ba", [(2, 3), (4, 3, 5), (2, 5)]),
    "implicit_output": ("ji,jk", [(3, 2), (3, 4)]),
    "ellipsis": ("...ij,...jk->...ik", [(2, 2, 3), (3, 4)]),
    "ellipsis_broadcast": ("...ij,...jk", [(1, 2, 3), (5, 3, 2)]),
    "repeated_in_output_path": ("iij,jk->ik", [(2, 2, 3), (3, 2)]),
    "spaces_and_uppercase": ("Ab , bC -> AC", [(2, 3), (3, 2)]),
}


def _operands(shapes, dtype=np.float64, seed=0):
    rng = np.random.default_rng(seed)
    return [
        torch.tensor(rng.standard_normal(s), dtype=torch.float64, requires_grad=True)
        for s in shapes
    ]


@pytest.mark.parametrize("name", CASES)
def test_einsum_matches_numpy(name):
    equation, shapes = CASES[name]
    operands = _operands(shapes)
    got = torch.einsum(equation, *operands)
    want = np.einsum(equation.replace(" ", ""), *(x.detach().numpy() for x in operands))
    np.testing.assert_allclose(got.detach().numpy(), want, rtol=1e-12, atol=1e-12)
    assert got.grad_fn.name() == "EinsumBackward0"


@pytest.mark.parametrize("name", CASES)
def test_einsum_gradcheck(name):
    equation, shapes = CASES[name]
    assert gradcheck(lambda *xs: torch.einsum(equation, *xs), tuple(_operands(shapes)))


def test_einsum_takes_a_list_keeps_float32_and_refuses_mismatches():
    a, b = torch.randn(2, 3), torch.randn(3, 4)
    assert torch.einsum("ij,jk", [a, b]).dtype == torch.float32
    with pytest.raises(ShapeError, match="operand 1 has 2 dimension"):
        torch.einsum("ij,k->i", a, b)
    with pytest.raises(ShapeError, match="does not fit shapes"):
        torch.einsum("ij,ij->i", a, b)
    with pytest.raises(ValueError, match="names 2 operand"):
        torch.einsum("ij,jk->ik", a)
