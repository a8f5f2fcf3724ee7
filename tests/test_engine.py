"""Backward semantics, graph hygiene and dtype/creation rules, as PyTorch behaves."""

from __future__ import annotations

import gc
import weakref

import numpy as np
import pytest

import finetune as torch
from finetune.autograd import Variable


def test_gradients_accumulate_across_backward_calls() -> None:
    x = torch.tensor([1.0, 2.0], requires_grad=True)
    (x * 3).sum().backward()
    (x * x).sum().backward()
    np.testing.assert_array_equal(x.grad.numpy(), [5.0, 7.0])
    x.grad.zero_()
    (x * 2).sum().backward()
    np.testing.assert_array_equal(x.grad.numpy(), [2.0, 2.0])


def test_second_backward_needs_retain_graph() -> None:
    x = torch.tensor([1.0, 2.0], requires_grad=True)
    y = (x * x).sum()
    y.backward(retain_graph=True)
    y.backward()
    np.testing.assert_array_equal(x.grad.numpy(), [4.0, 8.0])
    with pytest.raises(RuntimeError, match="Trying to backward through the graph a second time"):
        y.backward()


def test_implicit_gradient_only_for_scalars() -> None:
    x = torch.ones(2, requires_grad=True)
    with pytest.raises(
        RuntimeError, match="grad can be implicitly created only for scalar outputs"
    ):
        (x * 2).backward()


def test_non_scalar_backward_with_gradient() -> None:
    x = torch.tensor([1.0, 2.0, 3.0], requires_grad=True)
    (x * x).backward(torch.tensor([1.0, 0.5, 0.0]))
    np.testing.assert_array_equal(x.grad.numpy(), [2.0, 2.0, 0.0])


def test_gradient_of_the_wrong_shape_is_refused() -> None:
    x = torch.ones(3, requires_grad=True)
    with pytest.raises(
        RuntimeError,
        match=r"Mismatch in shape: grad_output\[0\] has a shape of torch.Size\(\[2\]\) and "
        r"output\[0\] has a shape of torch.Size\(\[3\]\)",
    ):
        (x * 2).backward(torch.ones(2))


def test_backward_on_tensor_without_graph_raises() -> None:
    with pytest.raises(RuntimeError, match="does not require grad and does not have a grad_fn"):
        torch.ones(2).sum().backward()


def test_autograd_grad_returns_without_touching_dot_grad() -> None:
    x = torch.tensor([1.0, 2.0], requires_grad=True)
    w = torch.tensor([3.0, 4.0], requires_grad=True)
    (gx, gw) = torch.autograd.grad((x * w).sum(), (x, w))
    np.testing.assert_array_equal(gx.numpy(), [3.0, 4.0])
    np.testing.assert_array_equal(gw.numpy(), [1.0, 2.0])
    assert x.grad is None and w.grad is None


def test_autograd_grad_unused_input() -> None:
    x = torch.ones(2, requires_grad=True)
    unused = torch.ones(2, requires_grad=True)
    y = (x * 2).sum()
    with pytest.raises(RuntimeError, match="appears to not have been used in the graph"):
        torch.autograd.grad(y, (x, unused), retain_graph=True)
    gx, gu = torch.autograd.grad(y, (x, unused), allow_unused=True)
    np.testing.assert_array_equal(gx.numpy(), [2.0, 2.0])
    assert gu is None


def test_autograd_grad_with_grad_outputs_and_intermediate() -> None:
    x = torch.tensor([1.0, 2.0], requires_grad=True)
    h = x * 3
    y = h * h
    (gh,) = torch.autograd.grad(y, h, grad_outputs=torch.tensor([1.0, 2.0]))
    np.testing.assert_array_equal(gh.numpy(), [6.0, 24.0])


def test_leaf_and_non_leaf_rules() -> None:
    x = torch.ones(2, requires_grad=True)
    frozen = torch.ones(2)
    y = x * 2
    assert x.is_leaf and frozen.is_leaf and not y.is_leaf
    assert y.requires_grad and not (frozen * 2).requires_grad
    y.sum().backward()
    assert y.grad is None
    assert frozen.grad is None
    assert x.detach().is_leaf and not x.detach().requires_grad
    with pytest.raises(RuntimeError, match="requires_grad"):
        y.requires_grad = False


def test_retain_grad_keeps_an_intermediate_gradient() -> None:
    x = torch.ones(2, requires_grad=True)
    y = x * 2
    y.retain_grad()
    (y * y).sum().backward()
    np.testing.assert_array_equal(y.grad.numpy(), [4.0, 4.0])


def test_modifying_a_saved_tensor_in_place_is_an_error() -> None:
    x = torch.ones(2, requires_grad=True)
    y = x * 2
    z = y * y
    y.add_(1)
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        z.sum().backward()


def test_in_place_on_a_leaf_that_requires_grad_is_an_error() -> None:
    x = torch.ones(2, requires_grad=True)
    with pytest.raises(
        RuntimeError, match="a leaf Variable that requires grad is being used in an in-place"
    ):
        x.add_(1)
    with torch.no_grad():
        x.add_(1)
    np.testing.assert_array_equal(x.detach().numpy(), [2.0, 2.0])


def test_in_place_on_a_non_saved_intermediate_keeps_gradients_right() -> None:
    x = torch.tensor([1.0, 2.0], requires_grad=True)
    y = x + 0
    y.mul_(3)
    y.sum().backward()
    np.testing.assert_array_equal(x.grad.numpy(), [3.0, 3.0])


def test_no_grad_and_enable_grad_as_context_and_decorator() -> None:
    x = torch.ones(2, requires_grad=True)
    with torch.no_grad():
        assert not torch.is_grad_enabled()
        assert (x * 2).grad_fn is None
        with torch.enable_grad():
            assert (x * 2).grad_fn is not None
    assert torch.is_grad_enabled()

    @torch.no_grad()
    def frozen(t):
        return t * 2

    @torch.enable_grad()
    def recorded(t):
        return t * 2

    assert frozen(x).grad_fn is None and not frozen(x).requires_grad
    with torch.no_grad():
        assert recorded(x).grad_fn is not None
    with torch.set_grad_enabled(False):
        assert (x + 1).grad_fn is None


def _intermediate_is_freed(under_no_grad: bool, frozen: bool) -> bool:
    x = torch.randn(4, 4, requires_grad=not frozen)
    w = torch.randn(4, 4, requires_grad=not frozen)
    ctx = torch.no_grad() if under_no_grad else torch.enable_grad()
    with ctx:
        h = (x @ w).relu()
        ref_tensor, ref_array = weakref.ref(h), weakref.ref(h._data)
        out = (h * 3).sum()
    del h
    gc.collect()
    assert out.grad_fn is None
    return ref_tensor() is None and ref_array() is None


def test_nothing_is_retained_without_a_graph() -> None:
    assert _intermediate_is_freed(under_no_grad=True, frozen=False)
    assert _intermediate_is_freed(under_no_grad=False, frozen=True)


def test_a_recorded_graph_retains_what_backward_needs_and_frees_it_after() -> None:
    x = torch.randn(3, requires_grad=True)
    h = x.exp()
    ref = weakref.ref(h._data)
    out = (h * h).sum()
    del h
    gc.collect()
    assert ref() is not None
    out.backward()
    gc.collect()
    assert ref() is None


def test_ten_thousand_op_chain_backward() -> None:
    x = torch.tensor([1.0], requires_grad=True)
    y = x
    for _ in range(10_000):
        y = y * 1.0001 - 0.0
    y.sum().backward()
    np.testing.assert_allclose(x.grad.numpy(), [1.0001**10_000], rtol=1e-3)


def test_grad_fn_graph_is_walkable() -> None:
    x = torch.ones(2, requires_grad=True)
    out = (x * 2 + 1).mean()
    assert repr(out.grad_fn).startswith("<MeanBackward0 object at 0x")
    ((add, _),) = out.grad_fn.next_functions
    assert type(add).__name__ == "AddBackward0"
    mul = add.next_functions[0][0]
    assert type(mul).__name__ == "MulBackward0"
    leaf = mul.next_functions[0][0]
    assert type(leaf).__name__ == "AccumulateGrad" and leaf.variable is x


def test_dtype_rules() -> None:
    assert torch.ones(2).dtype is torch.float32
    assert torch.tensor([1.5]).dtype is torch.float32
    assert torch.tensor([1, 2]).dtype is torch.int64
    assert torch.arange(12).dtype is torch.int64
    assert torch.arange(3.0).dtype is torch.float32
    assert (torch.arange(3) > 1).dtype is torch.bool
    assert (torch.tensor([1, 2]) / torch.tensor([2, 2])).dtype is torch.float32
    assert (torch.ones(2) + 1.5).dtype is torch.float32
    assert (torch.ones(2) * np.float64(2.0)).dtype is torch.float32
    assert (torch.tensor([1, 2]) + 1.5).dtype is torch.float32
    assert (torch.tensor([1, 2]) * 2).dtype is torch.int64
    assert (torch.ones(2, dtype=torch.float64) + torch.ones(2)).dtype is torch.float64


def test_float32_chain_never_upcasts() -> None:
    x = torch.randn(3, 4, requires_grad=True)
    w = torch.randn(4, 2, requires_grad=True)
    h = ((x @ w).sigmoid() * 0.5 + 1e-3).log().softmax(1)
    loss = (h.var() + h.norm() + (h / 3.0).mean() - h.max() + h.exp().sum() ** 0.5) / 7
    assert loss.dtype is torch.float32 and loss._data.dtype == np.float32
    loss.backward()
    assert x.grad.dtype is torch.float32 and w.grad.dtype is torch.float32


def test_creation_functions() -> None:
    np.testing.assert_array_equal(torch.zeros(2, 3).numpy(), np.zeros((2, 3)))
    np.testing.assert_array_equal(torch.ones((2,)).numpy(), [1.0, 1.0])
    np.testing.assert_array_equal(torch.full((2,), 7.0).numpy(), [7.0, 7.0])
    np.testing.assert_array_equal(torch.eye(3).numpy(), np.eye(3))
    np.testing.assert_array_equal(torch.arange(1, 7, 2).numpy(), [1, 3, 5])
    assert torch.full((2,), 7).dtype is torch.int64
    assert torch.randn(2, 3).shape == (2, 3) and torch.rand(4).dtype is torch.float32
    r = torch.rand(1000).numpy()
    assert r.min() >= 0.0 and r.max() < 1.0
    ft = torch.FloatTensor([1, 2])
    assert ft.dtype is torch.float32 and repr(ft) == "tensor([1., 2.])"


def test_from_numpy_shares_memory_and_keeps_dtype() -> None:
    array = np.arange(3, dtype=np.float64)
    t = torch.from_numpy(array)
    assert t.dtype is torch.float64
    array[0] = 5.0
    assert t[0].item() == 5.0


def test_manual_seed_reproduces_random_draws() -> None:
    torch.manual_seed(7)
    a, b = torch.randn(5), torch.rand(3)
    torch.manual_seed(7)
    np.testing.assert_array_equal(torch.randn(5).numpy(), a.numpy())
    np.testing.assert_array_equal(torch.rand(3).numpy(), b.numpy())
    assert not np.array_equal(torch.randn(5).numpy(), a.numpy())


def test_variable_is_a_tensor() -> None:
    v = Variable(torch.ones(2), requires_grad=True)
    assert isinstance(v, torch.Tensor) and v.requires_grad and v.is_leaf
    assert not Variable(torch.ones(2)).requires_grad


def test_data_detach_item_size_numpy() -> None:
    x = torch.tensor([[1.0, 2.0, 3.0]], requires_grad=True)
    y = x * 2
    assert y.data.grad_fn is None and not y.data.requires_grad
    np.testing.assert_array_equal(y.data.numpy(), [[2.0, 4.0, 6.0]])
    d = y.detach()
    assert d.grad_fn is None and not d.requires_grad
    assert y.sum().item() == 12.0 and isinstance(y.sum().item(), float)
    assert torch.tensor(3).item() == 3 and isinstance(torch.tensor(3).item(), int)
    assert x.size() == (1, 3) and x.size(1) == 3 and x.size(-1) == 3 and x.shape == x.size()
    assert repr(x.size()) == "torch.Size([1, 3])"
    assert x.dim() == 2 == x.ndim
    with pytest.raises(RuntimeError, match="Use tensor.detach\\(\\).numpy\\(\\) instead"):
        x.numpy()
    with pytest.raises(
        RuntimeError, match="a Tensor with 3 elements cannot be converted to Scalar"
    ):
        x.item()


def test_data_assignment_and_in_place_on_data_bypass_autograd() -> None:
    w = torch.ones(2, requires_grad=True)
    w.data.mul_(3)
    np.testing.assert_array_equal(w.detach().numpy(), [3.0, 3.0])
    w.data = torch.zeros(2)
    assert w.requires_grad and w.is_leaf
    np.testing.assert_array_equal(w.detach().numpy(), [0.0, 0.0])
