"""Tensor API as PyTorch spells it: methods mirror functions, grad_fn names, conversions."""

from __future__ import annotations

import copy

import numpy as np
import pytest

import finetune as torch


def _x() -> torch.Tensor:
    return torch.tensor([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]], requires_grad=True)


@pytest.mark.parametrize(
    ("expr", "name"),
    [
        ("x[:, 0]", "SelectBackward0"),
        ("x[0, 1:]", "SliceBackward0"),
        ("x[1:]", "SliceBackward0"),
        ("x[..., None]", "UnsqueezeBackward0"),
        ("x[[1, 0]]", "IndexBackward0"),
        ("x[x > 2]", "IndexBackward0"),
        ("x.std()", "StdBackward0"),
        ("x.var(1)", "VarBackward0"),
        ("x.split([1, 2], dim=1)[0]", "SplitWithSizesBackward0"),
        ("x.split(2, dim=1)[1]", "SplitBackward0"),
        ("x.chunk(2)[0]", "SplitBackward0"),
        ("x.T", "PermuteBackward0"),
        ("x.t()", "TBackward0"),
        ("x.transpose(0, 1)", "TransposeBackward0"),
        ("x.sum(1)", "SumBackward1"),
        ("x.max(dim=1)[0]", "MaxBackward0"),
        ("x.double()", "ToCopyBackward0"),
        ("x.unsqueeze(0)", "UnsqueezeBackward0"),
        ("x.flatten()", "ViewBackward0"),
        ("torch.cat([x, x])", "CatBackward0"),
        ("torch.stack([x, x])", "StackBackward0"),
        ("x.prod(1)", "ProdBackward1"),
        ("x ** x", "PowBackward1"),
        ("x @ x.t()", "MmBackward0"),
        ("x[0] @ x[1]", "DotBackward0"),
        ("x @ x[0]", "MvBackward0"),
    ],
)
def test_grad_fn_names_match_pytorch(expr: str, name: str) -> None:
    out = eval(expr, {"x": _x(), "torch": torch})
    assert type(out.grad_fn).__name__ == name


@pytest.mark.parametrize(
    ("method", "function", "args"),
    [
        ("add", torch.add, (2.0,)),
        ("sub", torch.sub, (2.0,)),
        ("mul", torch.mul, (2.0,)),
        ("div", torch.div, (2.0,)),
        ("pow", torch.pow, (2.0,)),
        ("neg", torch.neg, ()),
        ("exp", torch.exp, ()),
        ("log", torch.log, ()),
        ("sqrt", torch.sqrt, ()),
        ("relu", torch.relu, ()),
        ("sigmoid", torch.sigmoid, ()),
        ("tanh", torch.tanh, ()),
        ("abs", torch.abs, ()),
        ("softmax", torch.softmax, (1,)),
        ("log_softmax", torch.log_softmax, (1,)),
    ],
)
def test_methods_match_functions(method: str, function, args: tuple) -> None:
    x = _x()
    np.testing.assert_array_equal(
        getattr(x, method)(*args).detach().numpy(), function(x, *args).detach().numpy()
    )


def test_matmul_method_and_errors_name_the_shapes() -> None:
    x = _x()
    np.testing.assert_array_equal(x.matmul(x.t()).detach().numpy(), [[14.0, 32.0], [32.0, 77.0]])
    with pytest.raises(
        RuntimeError, match=r"mat1 and mat2 shapes cannot be multiplied \(2x3 and 2x3\)"
    ):
        x @ x


def test_setitem_records_and_keeps_gradients_right() -> None:
    x = _x()
    y = x * 1
    y[0, 1] = 0.0
    y[1] = torch.tensor([7.0, 8.0, 9.0])
    y.sum().backward()
    np.testing.assert_array_equal(x.grad.numpy(), [[1.0, 0.0, 1.0], [0.0, 0.0, 0.0]])


def test_conversions_and_dtype_changes() -> None:
    x = torch.tensor([1.7, -2.2])
    assert x.long().dtype is torch.int64 and x.long().tolist() == [1, -2]
    assert x.int().dtype is torch.int32
    assert x.double().dtype is torch.float64 and x.to(torch.float64).dtype is torch.float64
    assert x.bool().tolist() == [True, True]
    assert x.to("cpu") is x or np.array_equal(x.to("cpu").numpy(), x.numpy())
    assert x.type(torch.float64).dtype is torch.float64
    assert x.tolist() == pytest.approx([1.7, -2.2])


def test_mean_of_integers_is_refused() -> None:
    with pytest.raises(RuntimeError, match="mean\\(\\): could not infer output dtype"):
        torch.tensor([1, 2]).mean()


def test_integer_tensors_cannot_require_grad() -> None:
    with pytest.raises(RuntimeError, match="floating point"):
        torch.tensor([1, 2], requires_grad=True)


def test_tensor_from_list_of_tensors_and_scalars() -> None:
    t = torch.tensor([torch.tensor(1.0), torch.tensor(2.5)])
    assert t.tolist() == [1.0, 2.5] and t.dtype is torch.float32
    assert torch.tensor(3.0).shape == () and torch.tensor([]).shape == (0,)


def test_deepcopy_of_a_leaf_keeps_grad_and_flag() -> None:
    x = torch.ones(2, requires_grad=True)
    (x * 2).sum().backward()
    y = copy.deepcopy(x)
    assert y.requires_grad and y is not x
    np.testing.assert_array_equal(y.grad.numpy(), [2.0, 2.0])


def test_in_place_helpers_under_no_grad_and_on_plain_tensors() -> None:
    t = torch.zeros(3)
    t.fill_(2.0).add_(1.0).mul_(2.0)
    np.testing.assert_array_equal(t.numpy(), [6.0, 6.0, 6.0])
    t.copy_(torch.tensor([1.0, 2.0, 3.0]))
    t.clamp_(max=2.0)
    np.testing.assert_array_equal(t.numpy(), [1.0, 2.0, 2.0])
    t.zero_()
    assert not t.numpy().any()


def test_iteration_len_and_truthiness() -> None:
    x = _x()
    rows = list(x)
    assert len(rows) == len(x) == 2
    assert rows[1].tolist() == [4.0, 5.0, 6.0]
    with pytest.raises(
        RuntimeError, match="Boolean value of Tensor with more than one value is ambiguous"
    ):
        bool(x)
    with pytest.raises(TypeError, match="iteration over a 0-d tensor"):
        iter(torch.tensor(1.0))


def test_new_tensors_follow_the_source_dtype() -> None:
    x = torch.ones(2, dtype=torch.float64)
    assert x.new_zeros(2, 3).shape == (2, 3) and x.new_zeros((2, 3)).dtype is torch.float64
    assert x.new_ones(1).tolist() == [1.0] and x.new_full((2,), 7).tolist() == [7.0, 7.0]
    assert x.new_tensor([1, 2]).dtype is torch.float64 and x.new_empty(0).shape == (0,)
    assert torch.ones(2).new_zeros(1, dtype=torch.int64).dtype is torch.int64


def test_clamp_min_max_methods() -> None:
    x = torch.tensor([-1.0, 0.5, 2.0])
    assert x.clamp_min(0.0).tolist() == [0.0, 0.5, 2.0]
    assert x.clamp_max(1.0).tolist() == [-1.0, 0.5, 1.0]


def test_values_indices_results_print_as_torch_return_types() -> None:
    x = torch.tensor([[1.0, 5.0], [3.0, 4.0]])
    values, indices = torch.max(x, 1)
    assert values.tolist() == [5.0, 4.0] and indices.tolist() == [1, 1]
    assert repr(torch.max(x, 1)) == (
        "torch.return_types.max(\nvalues=tensor([5., 4.]),\nindices=tensor([1, 1]))"
    )
    assert repr(x.min(0)).startswith("torch.return_types.min(\nvalues=")
    assert repr(x.topk(1)).startswith("torch.return_types.topk(")
    assert x.sort(1, descending=True).values.tolist() == [[5.0, 1.0], [4.0, 3.0]]


def test_device_and_cuda_for_portable_scripts() -> None:
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    assert device == "cpu" and repr(device) == "device(type='cpu')" and str(device) == "cpu"
    x = torch.ones(2).to(device)
    assert x.device == device and x.device.type == "cpu"
    assert repr(torch.device("cuda:1")) == "device(type='cuda', index=1)"
    assert torch.cuda.device_count() == 0
