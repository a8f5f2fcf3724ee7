"""Activation and reduction converters: values and dtypes against onnxruntime (or, for opset-1
schemas onnxruntime no longer runs, the ONNX reference), gradients by gradcheck in float64, the
fast kernels against plain loops, PRelu as a trainable ``nn.PReLU``, and bad input."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import helper
from onnx.reference import ReferenceEvaluator
from onnx_builders import initializer, make_model, run_onnxruntime, single_node, value_info

import finetune as ft
from finetune import nn
from finetune.autograd import gradcheck
from finetune.errors import AutogradError, OnnxImportError, ShapeError
from finetune.onnx import registry

F32, F16, F64, I32, I64 = np.float32, np.float16, np.float64, np.int32, np.int64


def normal(*shape, dtype=F32, seed=0, scale=1.0):
    return (np.random.default_rng(seed).standard_normal(shape) * scale).astype(dtype)


def integers(*shape, dtype=I32, seed=0, low=-5, high=6):
    return np.random.default_rng(seed).integers(low, high, shape).astype(dtype)


def positive(*shape, dtype=F32, seed=0):
    return (np.abs(normal(*shape, seed=seed)) + 0.1).astype(dtype)


def ties(*shape, dtype=F32, seed=0):
    """Small integers as floats: many equal elements along every axis."""
    return integers(*shape, seed=seed, low=0, high=3).astype(dtype)


def c64(*values):
    return np.array(values, dtype=I64)


X = normal(2, 3, 4)


def _selu_1(x):
    """Selu with the opset-1 defaults (float32 1.6732 and 1.0507)."""
    alpha, gamma = F32(1.6732), F32(1.0507)
    return (gamma * np.where(x > 0, x, alpha * (np.exp(x) - 1))).astype(F32)


class Case:
    """One single-node model: ``op`` at ``opset`` on input ``x`` (and constant inputs), checked
    against ``oracle`` ("ort" or "reference")."""

    def __init__(self, name, op, opset, x=X, constants=None, oracle="ort", outputs=1, **attrs):
        self.name, self.op, self.opset, self.x = name, op, opset, x
        self.constants = constants or {}
        self.oracle, self.outputs, self.attrs = oracle, outputs, attrs

    def model(self) -> onnx.ModelProto:
        outputs = ("y",) if self.outputs == 1 else ("values", "indices")
        try:
            return single_node(
                self.op, {"x": self.x}, self.constants, outputs, self.opset, **self.attrs
            )
        except onnx.checker.ValidationError:  # opset-1 schemas lack shape inference
            draft = self._build(outputs, None, check=False)
            values = self.oracle(self.x) if callable(self.oracle) else self.expected(draft)
            ranks = [np.ndim(v) for v in values]
            return self._build(outputs, ranks)

    def _build(self, outputs, ranks, check=True) -> onnx.ModelProto:
        """The model with outputs typed, and shaped with free dims of the given ranks."""
        node = helper.make_node(
            self.op, ["x", *self.constants], list(outputs), name="node", **self.attrs
        )
        elem = helper.np_dtype_to_tensor_dtype(self.x.dtype)
        types = [I64 if self.op in ("ArgMax", "ArgMin") else self.x.dtype, I64]
        graph_outputs = [
            helper.make_tensor_value_info(
                name,
                helper.np_dtype_to_tensor_dtype(np.dtype(t)),
                None if ranks is None else [f"d{i}" for i in range(ranks[n])],
            )
            for n, (name, t) in enumerate(zip(outputs, types))
        ]
        inputs = [value_info("x", ["N", *self.x.shape[1:]], elem)]
        inits = [initializer(k, v) for k, v in self.constants.items()]
        return make_model([node], inputs, graph_outputs, inits, opset=self.opset, check=check)

    def expected(self, model) -> list[np.ndarray]:
        if callable(self.oracle):
            return self.oracle(self.x)
        if self.oracle == "ort":
            return run_onnxruntime(model, self.x)
        return ReferenceEvaluator(model).run(None, {"x": self.x})

    def __repr__(self) -> str:
        return self.name


ACTIVATIONS = [
    Case("relu_1", "Relu", 1, oracle="reference", consumed_inputs=[0]),
    Case("relu_6", "Relu", 6),
    Case("relu_14_int32", "Relu", 14, integers(3, 5)),
    Case("leaky_relu_1", "LeakyRelu", 1, oracle="reference", alpha=0.2, consumed_inputs=[0]),
    Case("leaky_relu_6", "LeakyRelu", 6, alpha=0.3),
    Case("sigmoid_1", "Sigmoid", 1, oracle="reference", consumed_inputs=[0]),
    Case("tanh_1", "Tanh", 1, oracle="reference"),
    Case("clip_1_min_only", "Clip", 1, oracle=lambda x: [np.maximum(x, F32(-0.2))], min=-0.2),
    Case("clip_6", "Clip", 6, min=-0.5, max=0.25),
    Case(
        "clip_12_int32",
        "Clip",
        12,
        integers(3, 5),
        {"lo": np.array(-2, I32), "hi": np.array(3, I32)},
    ),
    Case("elu_1", "Elu", 1, oracle="reference", alpha=0.5, consumed_inputs=[0]),
    Case("elu_6", "Elu", 6, normal(2, 3, 4, scale=30), alpha=0.5),
    Case("elu_22_float16", "Elu", 22, normal(3, 4, dtype=F16)),
    Case("selu_1", "Selu", 1, oracle=lambda x: [_selu_1(x)], consumed_inputs=[0]),
    Case("selu_6", "Selu", 6),
    Case("selu_22_attributes", "Selu", 22, alpha=1.5, gamma=1.2),
    Case("celu_12", "Celu", 12, alpha=2.0),
    Case("hard_sigmoid_1", "HardSigmoid", 1, oracle="reference", consumed_inputs=[0]),
    Case("hard_sigmoid_6", "HardSigmoid", 6, normal(2, 3, 4, scale=4), alpha=0.3, beta=0.4),
    Case(
        "hard_sigmoid_22_float64",
        "HardSigmoid",
        22,
        normal(3, 4, dtype=F64, scale=4),
        oracle="reference",
    ),
    Case("hard_swish_14", "HardSwish", 14, normal(2, 3, 4, scale=5)),
    Case("hard_swish_22_float16", "HardSwish", 22, normal(3, 4, dtype=F16, scale=5)),
    Case("softplus_1_wide", "Softplus", 1, normal(2, 3, 4, scale=60)),
    Case("softplus_22_float64", "Softplus", 22, normal(3, 4, dtype=F64), oracle="reference"),
    Case("softsign_1", "Softsign", 1),
    Case("mish_18", "Mish", 18, normal(2, 3, 4, scale=10)),
    Case("mish_22_float16", "Mish", 22, normal(3, 4, dtype=F16, scale=3)),
    Case("swish_24", "Swish", 24, oracle="reference", alpha=0.7),
    Case("thresholded_relu_10", "ThresholdedRelu", 10, alpha=0.3),
    Case("thresholded_relu_22", "ThresholdedRelu", 22),
    Case("shrink_9", "Shrink", 9, lambd=0.4, bias=0.25),
    Case("shrink_9_int32", "Shrink", 9, integers(3, 6), lambd=1.5, bias=1.0),
    Case("prelu_1", "PRelu", 1, constants={"s": normal(3, 1, seed=1)}, oracle="reference"),
    Case("prelu_7_channels", "PRelu", 7, normal(2, 3, 4, 5), {"s": normal(3, 1, 1, seed=1)}),
    Case("prelu_9_last_axis", "PRelu", 9, normal(2, 3, 4, 5), {"s": normal(5, seed=1)}),
    Case("prelu_16_full", "PRelu", 16, normal(2, 3, 4), {"s": normal(3, 4, seed=1)}),
    Case("prelu_16_one", "PRelu", 16, normal(2, 3, 4), {"s": np.array([0.2], F32)}),
    Case("prelu_16_int32", "PRelu", 16, integers(2, 3), {"s": np.array([2, 3, -1], I32)}),
    # the reference ignores the opset-1 coercion to 2-D; opset 7 still has schema 1
    Case("softmax_1_coerced", "Softmax", 7),
    Case("log_softmax_1_axis_2", "LogSoftmax", 7, axis=2),
    Case("hardmax_1", "Hardmax", 7, ties(2, 3, 4)),
    Case("hardmax_11_axis_0", "Hardmax", 11, ties(2, 3, 4), axis=0),
    Case("hardmax_13_ties", "Hardmax", 13, ties(2, 3, 4), axis=1),
]

# the remaining schema versions, so that every differentiable converter here passes gradcheck
ACTIVATIONS += [
    Case("relu_13", "Relu", 13),
    Case("relu_14", "Relu", 14),
    Case("leaky_relu_16", "LeakyRelu", 16),
    Case("sigmoid_6", "Sigmoid", 6),
    Case("sigmoid_13", "Sigmoid", 13),
    Case("tanh_6", "Tanh", 6),
    Case("tanh_13", "Tanh", 13),
    Case("gelu_20", "Gelu", 20),
    Case("clip_11", "Clip", 11, constants={"lo": np.array(-0.5, F32), "hi": np.array(0.5, F32)}),
    Case("clip_12_max_only", "Clip", 12, constants={"_": np.array(0, F32), "hi": F32(0.3)}),
    Case("clip_13_min_only", "Clip", 13, constants={"lo": np.array(-0.1, F32)}),
    Case("elu_22", "Elu", 22, oracle="reference", alpha=0.4),
    Case("celu_28", "Celu", 28, oracle="reference", alpha=0.8),
    Case("hard_sigmoid_22", "HardSigmoid", 22, normal(3, 4, scale=4), oracle="reference"),
    Case("hard_swish_22", "HardSwish", 22, normal(3, 4, scale=5), oracle="reference"),
    Case("softplus_22", "Softplus", 22, oracle="reference"),
    Case("softsign_22", "Softsign", 22, oracle="reference"),
    Case("mish_22", "Mish", 22, oracle="reference"),
    Case("prelu_6", "PRelu", 6, normal(2, 3, 4, 5), {"s": normal(3, 1, 1, seed=1)}, "reference"),
    Case("softmax_11", "Softmax", 11, axis=2),
    Case("softmax_13", "Softmax", 13, axis=1),
    Case("log_softmax_11", "LogSoftmax", 11, axis=1),
    Case("log_softmax_13", "LogSoftmax", 13),
]

_REDUCE_OPS = (
    "ReduceSum ReduceMean ReduceMax ReduceMin ReduceProd ReduceL1 ReduceL2 ReduceLogSum "
    "ReduceLogSumExp ReduceSumSquare"
).split()


def _reduce_input(op: str, dtype=F32):
    return positive(2, 3, 4, dtype=dtype) if op == "ReduceLogSum" else normal(2, 3, 4, dtype=dtype)


def _reduce_cases(op: str) -> list[Case]:
    x = _reduce_input(op)
    axes_input = 13 if op == "ReduceSum" else 18
    cases = [
        Case(f"{op}_1_all", op, 1, x, oracle="reference"),
        Case(f"{op}_11_axis_keepdims_0", op, 11, x, axes=[1], keepdims=0),
        Case(f"{op}_13_two_axes", op, 13 if op != "ReduceSum" else 11, x, axes=[0, -1]),
        Case(f"{op}_{axes_input}_input", op, axes_input, x, {"a": c64(2, 0)}, keepdims=0),
        Case(f"{op}_{axes_input}_noop", op, axes_input, x, {"a": c64()}, noop_with_empty_axes=1),
        Case(
            f"{op}_{axes_input}_empty_set", op, axes_input, np.zeros((2, 0, 3), F32), {"a": c64(1)}
        ),
        Case(f"{op}_{axes_input}_float16", op, axes_input, _reduce_input(op, F16), {"a": c64(1)}),
    ]
    if op not in ("ReduceLogSum", "ReduceLogSumExp", "ReduceL2"):
        ints = integers(2, 3, 4, low=1 if op == "ReduceProd" else -5, high=4)
        cases.append(Case(f"{op}_{axes_input}_int32", op, axes_input, ints, {"a": c64(-1)}))
    return cases


REDUCTIONS = [case for op in _REDUCE_OPS for case in _reduce_cases(op)] + [
    Case("ReduceMax_20_bool", "ReduceMax", 20, X > 0, {"a": c64(1)}),
    Case("ReduceMin_18_uint8_empty", "ReduceMin", 18, np.zeros((2, 0), np.uint8), {"a": c64(1)}),
    Case("ReduceLogSum_28", "ReduceLogSum", 28, positive(2, 3), {"a": c64(1)}, oracle="reference"),
    Case("ReduceLogSumExp_28", "ReduceLogSumExp", 28, X, oracle="reference"),
    Case("argmax_1", "ArgMax", 1, ties(3, 4), oracle="reference", axis=1),
    Case("argmax_11_keepdims_0", "ArgMax", 11, X, axis=-1, keepdims=0),
    Case("argmax_12_last", "ArgMax", 12, ties(3, 4), axis=1, select_last_index=1),
    Case("argmin_13_first", "ArgMin", 13, ties(3, 4), axis=0),
    Case("argmin_13_last", "ArgMin", 13, ties(3, 4), axis=0, keepdims=0, select_last_index=1),
    Case("argmax_13_int32", "ArgMax", 13, integers(3, 4), axis=1),
    Case("cumsum_11", "CumSum", 11, X, {"a": np.array(1, I32)}),
    Case("cumsum_14_exclusive", "CumSum", 14, X, {"a": np.array(2)}, exclusive=1),
    Case("cumsum_14_reverse", "CumSum", 14, X, {"a": np.array(-1)}, reverse=1),
    Case("cumsum_14_both", "CumSum", 14, X, {"a": np.array(0)}, exclusive=1, reverse=1),
    Case(
        "cumsum_14_int32_both",
        "CumSum",
        14,
        integers(3, 4),
        {"a": np.array(1)},
        exclusive=1,
        reverse=1,
    ),
    Case("cumsum_14_float16", "CumSum", 14, normal(3, 4, dtype=F16), {"a": np.array(1)}),
    Case("cumprod_26", "CumProd", 26, X, {"a": np.array(1)}, oracle="reference"),
    Case(
        "cumprod_26_both",
        "CumProd",
        26,
        X,
        {"a": np.array(2)},
        oracle="reference",
        exclusive=1,
        reverse=1,
    ),
    Case(
        "cumprod_26_int64",
        "CumProd",
        26,
        integers(3, 4, dtype=I64),
        {"a": np.array(1)},
        oracle="reference",
    ),
    Case("topk_1", "TopK", 1, X, outputs=2, k=2),
    Case("topk_10_axis", "TopK", 10, X, {"k": c64(2)}, outputs=2, axis=1),
    Case("topk_11_smallest_ties", "TopK", 11, ties(3, 6), {"k": c64(4)}, outputs=2, largest=0),
    Case("topk_11_largest_ties", "TopK", 11, ties(3, 6), {"k": c64(5)}, outputs=2, axis=-1),
    Case("topk_11_int32", "TopK", 11, integers(3, 6), {"k": c64(3)}, outputs=2),
    Case("topk_11", "TopK", 11, X, {"k": c64(3)}, outputs=2, axis=1, largest=0),
    Case("ReduceMax_12", "ReduceMax", 12, X, axes=[2]),
    Case("ReduceMin_12", "ReduceMin", 12, X, axes=[0, 1], keepdims=0),
    Case("ReduceMax_20", "ReduceMax", 20, X, {"a": c64(0, 1)}),
    Case("ReduceMin_20", "ReduceMin", 20, X, {"a": c64(-1)}, keepdims=0),
    Case("topk_24", "TopK", 24, X, {"k": c64(3)}, outputs=2, axis=2, oracle="reference"),
    Case("lp_normalization_1", "LpNormalization", 1, X),
    Case("lp_normalization_1_p1_axis1", "LpNormalization", 1, X, p=1, axis=1),
    Case("lp_normalization_22", "LpNormalization", 22, X, oracle="reference", axis=0),
]

CASES = ACTIVATIONS + REDUCTIONS


@pytest.mark.parametrize("case", CASES, ids=repr)
def test_values_dtypes_and_shapes_match_the_oracle(case):
    model = case.model()
    expected = case.expected(model)
    got = ft.onnx.load(model)(ft.from_numpy(case.x))
    got = got if isinstance(got, tuple) else (got,)
    assert len(got) == len(expected)
    for g, e in zip(got, expected):
        e = np.asarray(e)
        assert g.numpy().dtype == e.dtype
        assert g.shape == e.shape
        tolerance = 2e-3 if e.dtype == F16 else 1e-5
        np.testing.assert_allclose(g.numpy(), e, rtol=tolerance, atol=tolerance)


NO_GRADIENT = {"Hardmax", "ArgMax", "ArgMin"}


def test_every_differentiable_converter_here_has_a_gradcheck_case():
    """A new schema version of an op in this family cannot land without a gradient test."""
    covered = {(c.op, registry.since_version(c.op, c.opset)) for c in CASES if _differentiable(c)}
    for (_, op, version), converter in registry._REGISTRY.items():
        home = converter.run.__module__.rsplit(".", 1)[-1]
        if converter.differentiable and home in ("activation", "reduction"):
            assert (op, version) in covered, f"{op} {version} has no gradcheck case"


def _differentiable(case: Case) -> bool:
    empty = 0 in case.x.shape
    ties = "ties" in case.name  # not differentiable where equal elements swap
    return case.x.dtype == F32 and case.op not in NO_GRADIENT and not empty and not ties


@pytest.mark.parametrize("case", [c for c in CASES if _differentiable(c)], ids=repr)
def test_gradients_pass_gradcheck(case):
    model = ft.onnx.load(case.model(), freeze=False).double()
    x = ft.tensor(case.x.astype(F64), requires_grad=True)
    first = (lambda out: out[0]) if case.outputs == 2 else (lambda out: out)
    assert gradcheck(lambda x, *weights: first(model(x)), (x, *model.parameters()))


def test_softplus_and_mish_stay_finite_far_out_and_have_gradient_half_at_zero():
    x = ft.tensor(np.array([-1000.0, 0.0, 1000.0]), requires_grad=True)
    from finetune.onnx.ops.activation import mish, softplus

    y = softplus(x)
    np.testing.assert_allclose(y.detach().numpy(), [0.0, np.log(2.0), 1000.0])
    y.sum().backward()
    np.testing.assert_allclose(x.grad.numpy(), [0.0, 0.5, 1.0])
    assert np.isfinite(mish(x).detach().numpy()).all()


# -- fast paths against plain loops ------------------------------------------------------------


def _cumprod_gradient_by_loop(x: np.ndarray, g: np.ndarray) -> np.ndarray:
    """d/dx_j of sum_i g_i prod_{k<=i} x_k, one row at a time, by explicit products."""
    out = np.zeros_like(x)
    for row in range(x.shape[0]):
        for j in range(x.shape[1]):
            for i in range(j, x.shape[1]):
                others = [x[row, k] for k in range(i + 1) if k != j]
                out[row, j] += g[row, i] * np.prod(others)
    return out


def test_cumprod_gradient_matches_a_loop_with_zeros():
    from finetune.autograd.cumulative import Cumprod

    x = normal(3, 6, dtype=F64, seed=4)
    x[0, 2] = 0.0
    x[1, [1, 4]] = 0.0
    g = normal(3, 6, dtype=F64, seed=5)
    leaf = ft.tensor(x, requires_grad=True)
    y = Cumprod.apply(leaf, dim=1)
    np.testing.assert_allclose(y.detach().numpy(), np.cumprod(x, axis=1))
    (y * ft.tensor(g)).sum().backward()
    np.testing.assert_allclose(leaf.grad.numpy(), _cumprod_gradient_by_loop(x, g), atol=1e-12)


def test_multi_axis_max_and_prod_match_numpy_and_gradcheck():
    from finetune.onnx.ops.reduction import _reduce

    x = normal(3, 4, 5, dtype=F64, seed=6)
    for op, reference in (("ReduceMax", np.max), ("ReduceMin", np.min), ("ReduceProd", np.prod)):
        for axes in ([0, 2], [1, 2], [0, 1, 2]):
            got = _reduce(op, ft.tensor(x), axes, keepdims=1)
            np.testing.assert_allclose(got.numpy(), reference(x, axis=tuple(axes), keepdims=True))
            leaf = ft.tensor(x, requires_grad=True)
            assert gradcheck(lambda t, op=op, axes=axes: _reduce(op, t, axes, 0), (leaf,))


def test_topk_orders_ties_by_index_as_a_loop_does():
    x = ties(4, 7, seed=3)
    model = single_node("TopK", {"x": x}, {"k": c64(5)}, ("v", "i"), opset=11, largest=1)
    values, indices = ft.onnx.load(model)(ft.from_numpy(x))
    for row in range(x.shape[0]):
        expected = sorted(range(x.shape[1]), key=lambda j: (-x[row, j], j))[:5]
        assert indices.numpy()[row].tolist() == expected
        assert values.numpy()[row].tolist() == x[row, expected].tolist()


# -- PRelu as a module ---------------------------------------------------------------------------


def test_prelu_with_a_constant_slope_becomes_a_trainable_nn_prelu():
    x = normal(2, 3, 4, 4)
    slope = np.array([0.1, 0.2, 0.3], F32).reshape(3, 1, 1)
    model = single_node("PRelu", {"x": x}, {"slope": slope}, opset=16)
    net = ft.onnx.load(model, freeze=False)
    prelus = [m for m in net.modules() if isinstance(m, nn.PReLU)]
    assert len(prelus) == 1 and prelus[0].num_parameters == 3
    assert [name for name, _ in net.named_parameters()] == [f"{net.steps[0].module}.weight"]
    out = net(ft.from_numpy(x))
    np.testing.assert_allclose(out.detach().numpy(), run_onnxruntime(model, x)[0])
    out.sum().backward()
    negative = np.minimum(x, 0).sum(axis=(0, 2, 3))
    np.testing.assert_allclose(prelus[0].weight.grad.numpy(), negative, rtol=1e-5)


def test_prelu_slope_on_the_last_axis_keeps_onnx_broadcasting():
    x = normal(2, 4, 3, 4)
    slope = np.array([0.1, 0.2, 0.3, 0.4], F32)  # (C,) on a 4-d input aligns with W, not C
    model = single_node("PRelu", {"x": x}, {"slope": slope}, opset=16)
    net = ft.onnx.load(model)
    assert any(isinstance(m, nn.PReLU) for m in net.modules())
    np.testing.assert_allclose(net(ft.from_numpy(x)).numpy(), run_onnxruntime(model, x)[0])


def test_nn_prelu_matches_pytorch_semantics():
    layer = nn.PReLU(3, init=0.1)
    assert repr(layer) == "PReLU(num_parameters=3)"
    assert layer.weight.shape == (3,)
    x = normal(2, 3, 5)
    expected = np.where(x > 0, x, 0.1 * x)
    np.testing.assert_allclose(layer(ft.from_numpy(x)).detach().numpy(), expected, rtol=1e-6)
    with pytest.raises(ShapeError, match="channels"):
        layer(ft.from_numpy(normal(2, 4)))
    assert nn.PReLU()(ft.from_numpy(x)).shape == x.shape
    layer.weight.data = ft.tensor(np.ones(3, F32))
    layer.reset_parameters()
    np.testing.assert_array_equal(layer.weight.detach().numpy(), np.full(3, 0.1, F32))


LAYERS = [  # (layer, its PyTorch repr, formula)
    (nn.ELU(0.5), "ELU(alpha=0.5)", lambda x: np.where(x > 0, x, 0.5 * np.expm1(x))),
    (nn.CELU(2.0), "CELU(alpha=2.0)", lambda x: np.where(x > 0, x, 2.0 * np.expm1(x / 2.0))),
    (
        nn.SELU(),
        "SELU()",
        lambda x: 1.0507009873554805 * np.where(x > 0, x, 1.6732632423543772 * np.expm1(x)),
    ),
    (nn.Hardsigmoid(), "Hardsigmoid()", lambda x: np.clip(x / 6 + 0.5, 0, 1)),
    (nn.Hardswish(), "Hardswish()", lambda x: x * np.clip(x / 6 + 0.5, 0, 1)),
    (
        nn.Softplus(2.0, 3.0),
        "Softplus(beta=2.0, threshold=3.0)",
        lambda x: np.where(2 * x > 3, x, np.log1p(np.exp(2 * x)) / 2),
    ),
    (nn.Softsign(), "Softsign()", lambda x: x / (1 + np.abs(x))),
    (nn.Mish(), "Mish()", lambda x: x * np.tanh(np.log1p(np.exp(x)))),
]


@pytest.mark.parametrize("layer, text, formula", LAYERS, ids=[t for _, t, _ in LAYERS])
def test_activation_layers_match_their_formulas_and_gradcheck(layer, text, formula):
    assert repr(layer) == text
    x = normal(3, 7, dtype=F64, seed=2, scale=3)
    np.testing.assert_allclose(layer(ft.tensor(x)).numpy(), formula(x), rtol=1e-12, atol=1e-12)
    assert gradcheck(layer, (ft.tensor(x, requires_grad=True),))


# -- no gradient, bad input ------------------------------------------------------------------------


@pytest.mark.parametrize("op", ["ArgMax", "Hardmax"])
def test_a_backward_through_an_op_without_gradient_raises(op):
    model = single_node(op, {"x": X}, opset=13, axis=1)
    net = ft.onnx.load(model)
    x = ft.tensor(X, requires_grad=True)
    out = net(x)
    if out.dtype.is_floating_point:
        with pytest.raises(AutogradError, match=op):
            out.sum().backward()
    else:
        assert not out.requires_grad


@pytest.mark.parametrize(
    "op, opset, constants, attrs, match",
    [
        ("TopK", 11, {"k": c64(9)}, {}, "k=9"),
        ("ReduceMax", 18, {"a": c64(3)}, {}, "axis 3"),
        ("ReduceL2", 13, {}, {"axes": [-4]}, "axis -4"),
        ("CumSum", 14, {"a": np.array(5)}, {}, "axis 5"),
        ("PRelu", 16, {"s": normal(5, 4)}, {}, "does not broadcast"),
        ("LpNormalization", 22, {}, {"p": 3}, "p must be 1 or 2"),
        ("ArgMax", 13, {}, {"axis": 5}, "axis 5"),
        ("ArgMin", 1, {}, {"axis": -7}, "axis -7"),
        ("Softmax", 11, {}, {"axis": 5}, "axis 5"),
        ("Hardmax", 11, {}, {"axis": -6}, "axis -6"),
    ],
)
def test_bad_input_names_the_op_and_the_problem(op, opset, constants, attrs, match):
    outputs = ("values", "indices") if op == "TopK" else ("y",)
    model = Case(op, op, opset, X, constants, **attrs)._build(outputs, [3, 3])
    with pytest.raises((OnnxImportError, ShapeError), match=match) as error:
        ft.onnx.load(model)(ft.from_numpy(X))
    assert op in str(error.value)


def test_opset_1_reductions_accept_files_from_old_exporters():
    nodes = [
        helper.make_node("ReduceMax", ["x"], ["m"], axes=[1], keepdims=0),
        helper.make_node("Relu", ["m"], ["y"], consumed_inputs=[0]),
    ]
    model = make_model(nodes, [value_info("x", [2, 3, 4])], [value_info("y", [2, 4])], opset=1)
    got = ft.onnx.load(model)(ft.from_numpy(X)).numpy()
    np.testing.assert_allclose(got, np.maximum(X.max(axis=1), 0))


def test_prelu_before_opset_7_holds_one_slope_per_channel():
    """PyTorch's old exporter wrote a (C,) slope for an (N, C, H, W) input: per channel."""
    x = normal(2, 3, 4, 5)
    slope = np.array([0.1, 0.2, 0.3], F32)
    nodes = [helper.make_node("PRelu", ["x", "slope"], ["y"])]
    model = make_model(
        nodes,
        [value_info("x", [2, 3, 4, 5])],
        [value_info("y", [2, 3, 4, 5])],
        [initializer("slope", slope)],
        opset=6,
    )
    expected = np.where(x >= 0, x, slope.reshape(3, 1, 1) * x)
    net = ft.onnx.load(model)
    assert isinstance(net.get_submodule(net.steps[0].module), nn.PReLU)
    np.testing.assert_allclose(net(ft.from_numpy(x)).numpy(), expected, rtol=1e-6)


def test_lp_normalization_of_a_zero_vector_is_zero_with_a_finite_gradient():
    x = np.array([[0.0, 0.0, 0.0], [3.0, 0.0, 4.0]])
    net = ft.onnx.load(single_node("LpNormalization", {"x": x.astype(F32)}, axis=1), freeze=False)
    leaf = ft.tensor(x, requires_grad=True)
    y = net.double()(leaf)
    np.testing.assert_array_equal(y.detach().numpy(), [[0, 0, 0], [0.6, 0, 0.8]])
    y.sum().backward()
    assert np.isfinite(leaf.grad.numpy()).all()
    np.testing.assert_allclose(leaf.grad.numpy()[1], [0.032, 0.2, -0.024], atol=1e-12)


EXPORTED = [
    ("HardSwish", {}, {}, 14),
    ("Elu", {"alpha": 0.7}, {}, 13),
    ("Celu", {"alpha": 1.5}, {}, 13),
    ("PRelu", {}, {"s": normal(3, 1, seed=1)}, 13),
    ("HardSigmoid", {"alpha": 0.3}, {}, 13),
    ("ReduceProd", {"axes": [1, 2]}, {}, 13),
    ("ReduceMax", {"axes": [0, 2]}, {}, 13),
    ("CumSum", {"exclusive": 1, "reverse": 1}, {"a": np.array(1)}, 14),
    ("LpNormalization", {"p": 1, "axis": 1}, {}, 13),
    ("TopK", {"axis": 1}, {"k": c64(2)}, 11),
]


@pytest.mark.parametrize("op, attrs, constants, opset", EXPORTED, ids=[e[0] for e in EXPORTED])
def test_converted_ops_export_back_and_onnxruntime_agrees(op, attrs, constants, opset, tmp_path):
    outputs = ("values", "indices") if op == "TopK" else ("y",)
    net = ft.onnx.load(single_node(op, {"x": X}, constants, outputs, opset=opset, **attrs))
    path = tmp_path / f"{op}.onnx"
    ft.onnx.export(net, ft.from_numpy(X), path, opset_version=max(opset, 13), output_names=outputs)
    theirs = run_onnxruntime(onnx.load(str(path)), X)
    ours = net(ft.from_numpy(X))
    ours = ours if isinstance(ours, tuple) else (ours,)
    assert len(ours) == len(theirs)
    for got, expected in zip(ours, theirs):
        np.testing.assert_allclose(got.numpy(), expected, rtol=1e-5, atol=1e-6)


FAMILY = (
    "Relu LeakyRelu PRelu Elu Selu Celu ThresholdedRelu Clip Sigmoid HardSigmoid HardSwish Swish "
    "Tanh Softplus Softsign Mish Gelu Shrink Softmax LogSoftmax Hardmax ArgMax ArgMin CumSum "
    "CumProd TopK LpNormalization"
).split() + _REDUCE_OPS


@pytest.mark.parametrize("op", FAMILY)
def test_every_opset_from_1_to_28_with_a_schema_reaches_a_converter(op):
    for opset in range(1, 29):
        if registry.since_version(op, opset) is not None:
            assert registry.lookup(op, opset) is not None, (op, opset)
