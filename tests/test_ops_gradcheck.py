"""Every differentiable op and function checked with float64 finite differences (gradcheck)."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

import finetune
import finetune.functions as F
from finetune.autograd import gradcheck

RNG = np.random.default_rng(0)


def leaf(*shape: int, low: float | None = None) -> finetune.Tensor:
    """A float64 leaf of normal values, or uniform in [low, low + 1] (away from kinks/domains)."""
    values = RNG.standard_normal(shape) if low is None else RNG.uniform(low, low + 1, shape)
    return finetune.tensor(values, dtype=finetune.float64, requires_grad=True)


BINARY = {
    "add": lambda a, b: a + b,
    "sub": lambda a, b: a - b,
    "mul": lambda a, b: a * b,
    "div": lambda a, b: a / b,
    "pow": lambda a, b: a**b,
    "add_alpha": lambda a, b: a.add(b, alpha=2.5),
    "maximum": F.maximum,
    "minimum": F.minimum,
    "where": lambda a, b: F.where(a > 0.7, a, b),
}

BROADCAST_SHAPES = [
    ((3, 4), (3, 4)),
    ((3, 1, 4), (2, 4)),
    ((4,), (2, 3, 4)),
    ((2, 1), (1, 3)),
    ((), (2, 2)),
]


@pytest.mark.parametrize("name", BINARY)
@pytest.mark.parametrize(("sa", "sb"), BROADCAST_SHAPES)
def test_binary_broadcasting(name: str, sa: tuple, sb: tuple) -> None:
    positive = name in ("pow", "div")
    a, b = leaf(*sa, low=0.5 if positive else None), leaf(*sb, low=0.5 if positive else None)
    assert gradcheck(BINARY[name], (a, b))


SCALAR_FORMS = [
    lambda x: x + 2,
    lambda x: 2 + x,
    lambda x: x - 1.5,
    lambda x: 1.5 - x,
    lambda x: x * 3,
    lambda x: 3 * x,
    lambda x: x / 4,
    lambda x: 4 / x,
    lambda x: x**3,
    lambda x: x**0.5,
    lambda x: 2**x,
    lambda x: -x,
    lambda x: x.pow(2),
    lambda x: x.div(3),
    lambda x: x.mul(0.5),
]


@pytest.mark.parametrize("index", range(len(SCALAR_FORMS)))
def test_scalar_operands(index: int) -> None:
    assert gradcheck(SCALAR_FORMS[index], (leaf(2, 3, low=0.5),))


UNARY = {
    "exp": (lambda x: x.exp(), None),
    "log": (lambda x: x.log(), 0.5),
    "sqrt": (lambda x: x.sqrt(), 0.5),
    "rsqrt": (F.rsqrt, 0.5),
    "abs": (lambda x: x.abs(), 0.5),
    "neg_abs": (lambda x: (-x).abs(), 0.5),
    "sin": (F.sin, None),
    "cos": (F.cos, None),
    "reciprocal": (F.reciprocal, 0.5),
    "square": (F.square, None),
    "relu": (lambda x: x.relu(), 0.5),
    "relu_neg": (lambda x: (-x).relu(), 0.5),
    "sigmoid": (lambda x: x.sigmoid(), None),
    "tanh": (lambda x: x.tanh(), None),
    "erf": (lambda x: x.erf(), None),
    "erf_wide": (lambda x: (x * 4).erf(), None),
    "clamp": (lambda x: x.clamp(-0.3, 0.4), None),
    "clamp_min": (lambda x: x.clamp(min=0.1), None),
    "clone": (lambda x: x.clone(), None),
    "double": (lambda x: x.double() * 2, None),
}


@pytest.mark.parametrize("name", UNARY)
def test_unary(name: str) -> None:
    fn, low = UNARY[name]
    x = leaf(3, 4, low=low)
    if name.startswith("clamp"):
        x = finetune.tensor(
            np.array([-0.9, -0.2, 0.0, 0.3, 0.7, 0.05]), dtype=finetune.float64, requires_grad=True
        )
    assert gradcheck(fn, (x,))


REDUCTIONS = {
    "sum": lambda x: x.sum(),
    "sum_dim": lambda x: x.sum(dim=1),
    "sum_dims_keep": lambda x: x.sum((0, 2), keepdim=True),
    "mean": lambda x: x.mean(),
    "mean_dim": lambda x: x.mean(-1, keepdim=True),
    "max": lambda x: x.max(),
    "min": lambda x: x.min(),
    "max_dim": lambda x: x.max(dim=1)[0],
    "min_dim_keep": lambda x: x.min(dim=0, keepdim=True).values,
    "amax": lambda x: F.amax(x, dim=2),
    "var": lambda x: x.var(),
    "var_dim": lambda x: x.var(dim=1),
    "var_biased": lambda x: x.var(dim=0, unbiased=False),
    "std": lambda x: x.std(dim=2),
    "norm": lambda x: x.norm(),
    "norm_dim": lambda x: x.norm(dim=1),
    "norm_p1": lambda x: F.norm(x, p=1, dim=2),
    "logsumexp": lambda x: F.logsumexp(x, dim=1),
    "prod": lambda x: F.prod(x, dim=1),
    "softmax": lambda x: x.softmax(1),
    "softmax_last": lambda x: F.softmax(x, -1),
    "log_softmax": lambda x: x.log_softmax(0),
    "log_softmax_last": lambda x: F.log_softmax(x, dim=-1),
}


@pytest.mark.parametrize("name", REDUCTIONS)
def test_reductions(name: str) -> None:
    assert gradcheck(REDUCTIONS[name], (leaf(2, 3, 4),))


SHAPES = {
    "reshape": lambda x: x.reshape(4, 6),
    "view": lambda x: x.view(-1),
    "flatten": lambda x: x.flatten(1),
    "unflatten": lambda x: F.unflatten(x, 2, (2, 2)),
    "squeeze": lambda x: x.unsqueeze(0).squeeze(),
    "squeeze_dim": lambda x: x.unsqueeze(1).squeeze(1),
    "permute": lambda x: x.permute(2, 0, 1),
    "transpose": lambda x: x.transpose(0, 2),
    "T": lambda x: x[0].T,
    "t": lambda x: x[1].t(),
    "expand": lambda x: x[:, :1].expand(2, 5, 4),
    "expand_as": lambda x: x[:1].expand_as(x),
    "contiguous": lambda x: x.transpose(0, 1).contiguous(),
}


@pytest.mark.parametrize("name", SHAPES)
def test_shape_ops(name: str) -> None:
    assert gradcheck(SHAPES[name], (leaf(2, 3, 4),))


INDEXING = {
    "int": lambda x: x[1],
    "negative_int": lambda x: x[-1, 2],
    "slice": lambda x: x[:, 1:3],
    "step_slice": lambda x: x[::2, ::-1],
    "ellipsis_none": lambda x: x[..., None, 1],
    "list": lambda x: x[[0, 2, 0]],
    "list_pair": lambda x: x[[0, 1], [3, 3]],
    "tensor_index": lambda x: x[finetune.tensor([2, 2, 1])],
    "bool_mask": lambda x: x[x > 0],
    "row_mask": lambda x: x[finetune.tensor([True, False, True])],
    "index_select": lambda x: F.index_select(x, 1, finetune.tensor([3, 0, 3])),
    "gather": lambda x: F.gather(x, 1, finetune.tensor([[0, 3], [1, 1], [2, 0]])),
    "topk": lambda x: x.topk(2, dim=1)[0],
    "topk_smallest": lambda x: x.topk(2, dim=0, largest=False).values,
    "sort": lambda x: x.sort(dim=1, descending=True)[0],
}


@pytest.mark.parametrize("name", INDEXING)
def test_indexing_and_selection(name: str) -> None:
    assert gradcheck(INDEXING[name], (leaf(3, 4),))


def test_index_put_gradient_flows_to_value_and_untouched_entries() -> None:
    def fn(x, v):
        y = x * 1
        y[1:, 2] = v
        return y

    assert gradcheck(fn, (leaf(3, 4), leaf(2)))


def test_cat_stack_split_chunk() -> None:
    a, b, c = leaf(2, 3), leaf(2, 1), leaf(2, 3)
    assert gradcheck(lambda a, b: F.cat([a, b], dim=1), (a, b))
    assert gradcheck(lambda a, c: F.stack([a, c], dim=1), (a, c))
    assert gradcheck(lambda a: F.split(a, [1, 2], dim=1), (a,))
    assert gradcheck(lambda a: F.split(a, 2, dim=1)[1], (a,))
    assert gradcheck(lambda a: a.chunk(3, dim=1)[2] * 2, (a,))


PAD_CASES = [
    *(
        (mode, pads)
        for mode in ("constant", "reflect", "replicate", "circular")
        for pads in ((1, 2), (2, 1, 1, 2))
    ),
    ("constant", (-1, 1, 0, 2)),  # negative pads crop (constant mode only, as ONNX allows)
]


@pytest.mark.parametrize(("mode", "pads"), PAD_CASES)
def test_pad(mode: str, pads: tuple) -> None:
    assert gradcheck(lambda x: F.pad(x, pads, mode=mode, value=0.5), (leaf(1, 3, 4),))


@pytest.mark.parametrize(
    ("sa", "sb"),
    [
        ((3, 4), (4, 2)),
        ((4,), (4,)),
        ((3, 4), (4,)),
        ((4,), (4, 2)),
        ((2, 3, 4), (4, 5)),
        ((2, 1, 3, 4), (3, 4, 2)),
    ],
)
def test_matmul_shapes(sa: tuple, sb: tuple) -> None:
    assert gradcheck(lambda a, b: a @ b, (leaf(*sa), leaf(*sb)))
    assert gradcheck(F.matmul, (leaf(*sa), leaf(*sb)))


def test_prod_with_zeros_and_over_all() -> None:
    x = finetune.tensor(
        [[0.0, 2.0, 3.0], [0.0, 0.0, 1.5]], dtype=finetune.float64, requires_grad=True
    )
    assert gradcheck(lambda x: x.prod(dim=1), (x,))
    assert gradcheck(lambda x: F.prod(x[:, 1:]), (x,))
    assert type(F.prod(x).grad_fn).__name__ == "ProdBackward0"


def test_create_graph_is_refused_clearly() -> None:
    x = leaf(3)
    with pytest.raises(NotImplementedError, match="create_graph"):
        finetune.autograd.grad((x**3).sum(), x, create_graph=True)


def test_gradcheck_detects_a_wrong_backward() -> None:
    class Wrong(finetune.autograd.Function):
        @staticmethod
        def forward(ctx, x):
            return x * 2

        @staticmethod
        def backward(ctx, grad):
            return grad * 3

    with pytest.raises(RuntimeError):
        gradcheck(Wrong.apply, (leaf(3),))
    assert gradcheck(Wrong.apply, (leaf(3),), raise_exception=False) is False


def test_gradcheck_refuses_float32_inputs() -> None:
    with pytest.raises(RuntimeError, match="float64"):
        gradcheck(lambda x: x * 2, (finetune.ones(2, requires_grad=True),))


shapes = hnp.array_shapes(min_dims=1, max_dims=3, min_side=1, max_side=3)
ELEMENTWISE = ["add", "sub", "mul", "div", "maximum"]


@settings(max_examples=25, deadline=None)
@given(shape=shapes, data=st.data())
def test_hypothesis_broadcast_elementwise(shape: tuple, data) -> None:
    other = tuple(
        data.draw(st.sampled_from([1, n]))
        for n in shape[data.draw(st.integers(0, len(shape) - 1)) :]
    )
    name = data.draw(st.sampled_from(ELEMENTWISE))
    a = leaf(*shape, low=0.5)
    b = leaf(*other, low=1.7)
    assert gradcheck(BINARY[name], (a, b))


@settings(max_examples=25, deadline=None)
@given(shape=shapes, data=st.data())
def test_hypothesis_reductions(shape: tuple, data) -> None:
    dim = data.draw(st.integers(-len(shape), len(shape) - 1))
    keepdim = data.draw(st.booleans())
    op = data.draw(
        st.sampled_from(["sum", "mean", "amax", "softmax", "log_softmax", "norm", "var"])
    )
    if op == "var" and shape[dim] < 2:
        return
    fn = {
        "sum": lambda x: x.sum(dim, keepdim=keepdim),
        "mean": lambda x: x.mean(dim, keepdim=keepdim),
        "amax": lambda x: F.amax(x, dim, keepdim=keepdim),
        "softmax": lambda x: x.softmax(dim),
        "log_softmax": lambda x: x.log_softmax(dim),
        "norm": lambda x: x.norm(dim=dim, keepdim=keepdim),
        "var": lambda x: x.var(dim, keepdim=keepdim),
    }[op]
    x = finetune.tensor(
        RNG.permutation(np.prod(shape)).reshape(shape) * 0.37 + 0.2,
        dtype=finetune.float64,
        requires_grad=True,
    )
    assert gradcheck(fn, (x,))


def test_gradcheck_names_the_wrong_output() -> None:
    class SecondWrong(finetune.autograd.Function):
        @staticmethod
        def forward(ctx, x):
            return x * 2, x * 3

        @staticmethod
        def backward(ctx, g1, g2):
            return g1 * 2 + g2 * 4

    with pytest.raises(RuntimeError, match="output 1 with respect to input 0"):
        gradcheck(SecondWrong.apply, (leaf(2),))


def test_gradcheck_perturbs_non_contiguous_inputs() -> None:
    transposed = finetune.tensor(RNG.standard_normal((2, 3)), dtype=finetune.float64).t()
    assert gradcheck(lambda a: a * a, (transposed.requires_grad_(),))


def test_where_broadcasts_condition_and_operands() -> None:
    mask = finetune.tensor(RNG.random((3, 4)) > 0.5)
    assert gradcheck(lambda a, b: F.where(mask, a, b), (leaf(4), leaf(1)))
    assert gradcheck(lambda a: F.where(mask, a, 0.0), (leaf(3, 1),))


def test_maximum_and_minimum_follow_pytorch_on_ties_and_nan():
    """PyTorch: NaN wins either way; a tie gives each side half the gradient."""
    a = finetune.tensor([1.0, 2.0, 3.0, float("nan")], requires_grad=True)
    b = finetune.tensor([1.0, 5.0, 0.0, 0.0], requires_grad=True)
    out = finetune.maximum(a, b)
    assert out.grad_fn.name() == "MaximumBackward0"
    np.testing.assert_array_equal(out.detach().numpy(), [1.0, 5.0, 3.0, np.nan])
    out.backward(finetune.ones(4))
    np.testing.assert_array_equal(a.grad.numpy(), [0.5, 0.0, 1.0, 1.0])
    np.testing.assert_array_equal(b.grad.numpy(), [0.5, 1.0, 0.0, 1.0])
    low = finetune.minimum(b, a)
    assert low.grad_fn.name() == "MinimumBackward0"
    np.testing.assert_array_equal(low.detach().numpy(), [1.0, 2.0, 0.0, np.nan])
