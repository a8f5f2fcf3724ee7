"""Normalisation, loss and attention converters: values against onnxruntime (numpy where
onnxruntime has no kernel), the real modules constant weights become, and gradients by
gradcheck in float64."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import onnx
import pytest
from onnx import helper
from onnx_builders import initializer, make_model, run_onnxruntime

import finetune as ft
from finetune import nn
from finetune.errors import OnnxImportError

RNG = np.random.default_rng(0)
F32, F16, F64 = np.float32, np.float16, np.float64


def f32(*shape, scale=1.0):
    return (RNG.standard_normal(shape) * scale).astype(F32)


def positive(*shape):
    return (0.5 + RNG.random(shape)).astype(F32)


def labels(classes, *shape, ignore=None):
    out = RNG.integers(0, classes, shape).astype(np.int64)
    if ignore is not None:
        out.flat[:: max(1, out.size // 3)] = ignore
    return out


@dataclass
class Case:
    """One node: graph inputs, constant inputs (initializers), outputs with element type and
    shape (None: inferred), and the module its constants become."""

    id: str
    op: str
    opset: int
    inputs: dict
    constants: dict = field(default_factory=dict)
    outputs: tuple = (("y", F32, None),)
    attributes: dict = field(default_factory=dict)
    module: type | None = None
    atol: float = 1e-5
    order: tuple | None = None  # the node's inputs ("" omitted) when not inputs, constants
    graded: int | None = None  # how many leading outputs have a gradient (None: all)

    def model(self) -> onnx.ModelProto:
        names = list(self.order or (*self.inputs, *self.constants))
        node = helper.make_node(self.op, names, [o[0] for o in self.outputs], **self.attributes)
        graph_inputs = [
            helper.make_tensor_value_info(k, helper.np_dtype_to_tensor_dtype(v.dtype), v.shape)
            for k, v in self.inputs.items()
        ]
        graph_outputs = [
            helper.make_empty_tensor_value_info(name)
            if s is None
            else helper.make_tensor_value_info(
                name, helper.np_dtype_to_tensor_dtype(np.dtype(t)), s
            )
            for name, t, s in self.outputs
            if name
        ]
        inits = [initializer(k, v) for k, v in self.constants.items()]
        return make_model([node], graph_inputs, graph_outputs, inits, opset=self.opset)


def _attention(id, q, k, v, *, opset=23, mask=None, past=None, outputs=None, **attributes):
    inputs = {"q": q, "k": k, "v": v}
    if mask is not None:
        inputs["mask"] = mask
    order = None
    if past is not None:
        inputs.update({"pk": past[0], "pv": past[1]})
        order = ("q", "k", "v", "mask" if mask is not None else "", "pk", "pv")
    outputs = outputs or (("y", F32, None),)
    return Case(id, "Attention", opset, inputs, {}, outputs, attributes, order=order)


def _kv(b, h, s, d):
    return f32(b, h, s, d), f32(b, h, s, d)


ORT_CASES = [
    Case(
        "layer_norm_module",
        "LayerNormalization",
        17,
        {"x": f32(2, 3, 4)},
        {"s": f32(4), "b": f32(4)},
        module=nn.LayerNorm,
    ),
    Case(
        "layer_norm_axis1_no_bias_module",
        "LayerNormalization",
        17,
        {"x": f32(2, 3, 4)},
        {"s": f32(3, 4)},
        attributes={"axis": 1, "epsilon": 1e-3},
        module=nn.LayerNorm,
    ),
    Case(
        "layer_norm_three_outputs",
        "LayerNormalization",
        17,
        {"x": f32(2, 3, 4), "s": f32(3, 4), "b": f32(3, 4)},
        outputs=(("y", F32, (2, 3, 4)), ("mean", F32, (2, 1, 1)), ("inv", F32, (2, 1, 1))),
        attributes={"axis": -2},
    ),
    Case(
        "layer_norm_float16_stash_float32",
        "LayerNormalization",
        17,
        {"x": f32(3, 6).astype(F16), "s": f32(6).astype(F16)},
        outputs=(("y", F16, (3, 6)), ("mean", F32, (3, 1)), ("inv", F32, (3, 1))),
        atol=2e-3,
    ),
    Case(
        "group_norm_module",
        "GroupNormalization",
        21,
        {"x": f32(2, 6, 3, 2)},
        {"s": f32(6), "b": f32(6)},
        outputs=(("y", F32, (2, 6, 3, 2)),),
        attributes={"num_groups": 3},
        module=nn.GroupNorm,
    ),
    Case(
        "group_norm_functional",
        "GroupNormalization",
        21,
        {"x": f32(2, 4, 5), "s": f32(4), "b": f32(4)},
        outputs=(("y", F32, (2, 4, 5)),),
        attributes={"num_groups": 2, "epsilon": 1e-2},
    ),
    Case(
        "instance_norm_1d_module",
        "InstanceNormalization",
        6,
        {"x": f32(2, 3, 5)},
        {"s": f32(3), "b": f32(3)},
        module=nn.InstanceNorm1d,
    ),
    Case(
        "instance_norm_2d_module",
        "InstanceNormalization",
        6,
        {"x": f32(2, 3, 4, 3)},
        {"s": f32(3), "b": f32(3)},
        attributes={"epsilon": 1e-3},
        module=nn.InstanceNorm2d,
    ),
    Case(
        "instance_norm_3d_module",
        "InstanceNormalization",
        22,
        {"x": f32(2, 2, 3, 2, 2)},
        {"s": f32(2), "b": f32(2)},
        module=nn.InstanceNorm3d,
    ),
    Case(
        "instance_norm_functional",
        "InstanceNormalization",
        22,
        {"x": f32(2, 3, 4), "s": f32(3), "b": f32(3)},
    ),
    Case(
        "rms_norm_module",
        "RMSNormalization",
        23,
        {"x": f32(2, 3, 4)},
        {"s": f32(4)},
        module=nn.RMSNorm,
    ),
    Case(
        "rms_norm_axis1_functional",
        "RMSNormalization",
        23,
        {"x": f32(2, 3, 4), "s": f32(3, 4)},
        attributes={"axis": 1, "epsilon": 1e-2},
    ),
    Case(
        "mvn_default_axes",
        "MeanVarianceNormalization",
        13,
        {"x": f32(2, 3, 4, 2)},
        outputs=(("y", F32, (2, 3, 4, 2)),),
    ),
    Case(
        "mvn_axes_1",
        "MeanVarianceNormalization",
        9,
        {"x": f32(2, 3, 4)},
        outputs=(("y", F32, (2, 3, 4)),),
        attributes={"axes": [1]},
    ),
    Case(
        "batch_norm_15_training_outputs",
        "BatchNormalization",
        15,
        {"x": f32(4, 3, 2), "s": f32(3), "b": f32(3), "m": f32(3), "v": positive(3)},
        outputs=(("y", F32, None), ("rm", F32, None), ("rv", F32, None)),
        attributes={"training_mode": 1, "momentum": 0.8},
        graded=1,  # running statistics are state updates, as in PyTorch
    ),
    Case(
        "nll_mean_weight_ignore",
        "NegativeLogLikelihoodLoss",
        13,
        {"x": f32(4, 3, 2), "t": labels(3, 4, 2, ignore=1), "w": positive(3)},
        attributes={"ignore_index": 1},
    ),
    Case(
        "nll_none",
        "NegativeLogLikelihoodLoss",
        22,
        {"x": f32(3, 5), "t": labels(5, 3)},
        attributes={"reduction": "none"},
    ),
    Case(
        "nll_sum_negative_ignore",
        "NegativeLogLikelihoodLoss",
        13,
        {"x": f32(2, 3, 2, 2), "t": labels(3, 2, 2, 2, ignore=-1)},
        attributes={"reduction": "sum", "ignore_index": -1},
    ),
    Case(
        "sce_mean_weight_ignore_log_prob",
        "SoftmaxCrossEntropyLoss",
        13,
        {"x": f32(4, 3, 2), "t": labels(3, 4, 2, ignore=2), "w": positive(3)},
        outputs=(("y", F32, None), ("log_prob", F32, None)),
        attributes={"ignore_index": 2},
    ),
    Case(
        "sce_none",
        "SoftmaxCrossEntropyLoss",
        12,
        {"x": f32(3, 4), "t": labels(4, 3)},
        attributes={"reduction": "none"},
    ),
    _attention("attention_4d", f32(2, 2, 3, 4), *_kv(2, 2, 5, 4)),
    _attention(
        "attention_3d_gqa_scale",
        f32(2, 3, 4 * 4),
        f32(2, 5, 2 * 4),
        f32(2, 5, 2 * 3),
        q_num_heads=4,
        kv_num_heads=2,
        scale=0.3,
    ),
    _attention(
        "attention_causal_past_present",
        f32(1, 2, 3, 4),
        *_kv(1, 2, 3, 4),
        past=_kv(1, 2, 2, 4),
        outputs=(("y", F32, None), ("present_k", F32, None), ("present_v", F32, None)),
        is_causal=1,
    ),
    _attention(
        "attention_bool_mask_3d",
        f32(2, 2, 3, 4),
        *_kv(2, 2, 5, 4),
        mask=RNG.random((2, 3, 5)) > 0.3,
    ),
    _attention(
        "attention_float_mask_softcap",
        f32(2, 2, 3, 4, scale=3),
        *_kv(2, 2, 5, 4),
        mask=f32(3, 5),
        softcap=2.0,
    ),
    *[
        _attention(
            f"attention_qk_output_mode_{mode}",
            f32(1, 2, 3, 4, scale=3),
            *_kv(1, 2, 4, 4),
            mask=f32(1, 1, 3, 4),
            outputs=(("y", F32, None), ("", F32, None), ("", F32, None), ("qk", F32, None)),
            qk_matmul_output_mode=mode,
            softcap=1.5,
        )
        for mode in (0, 1, 2, 3)
    ],
    Case(
        "rotary_4d",
        "RotaryEmbedding",
        23,
        {"x": f32(2, 2, 3, 4), "cos": f32(2, 3, 2), "sin": f32(2, 3, 2)},
    ),
    Case(
        "rotary_3d_interleaved_partial_position_ids",
        "RotaryEmbedding",
        23,
        {
            "x": f32(2, 3, 2 * 8),
            "cos": f32(6, 2),
            "sin": f32(6, 2),
            "ids": np.array([[0, 2, 5], [1, 1, 3]], np.int64),
        },
        attributes={"num_heads": 2, "interleaved": 1, "rotary_embedding_dim": 4},
    ),
    Case(
        "causal_conv_bias_past_silu",
        "CausalConvWithState",
        27,
        {"x": f32(2, 3, 5), "w": f32(3, 1, 3), "b": f32(3), "past": f32(2, 3, 2)},
        outputs=(("y", F32, None), ("state", F32, None)),
        attributes={"activation": "silu"},
    ),
    Case(
        "linear_attention_gated_delta_gqa_past",
        "LinearAttention",
        27,
        {
            "q": f32(2, 3, 4 * 4, scale=0.5),
            "k": f32(2, 3, 2 * 4, scale=0.5),
            "v": f32(2, 3, 2 * 3),
            "past": f32(2, 2, 4, 3),
            "decay": -positive(2, 3, 2),
            "beta": positive(2, 3, 2) / 2,
        },
        outputs=(("y", F32, None), ("state", F32, None)),
        attributes={"q_num_heads": 4, "kv_num_heads": 2},
    ),
    Case(
        "linear_attention_gated_per_key_decay",
        "LinearAttention",
        27,
        {
            "q": f32(1, 4, 2 * 2),
            "k": f32(1, 4, 2 * 2),
            "v": f32(1, 4, 2 * 2),
            "decay": -positive(1, 4, 2 * 2),
        },
        outputs=(("y", F32, None), ("state", F32, None)),
        attributes={"q_num_heads": 2, "kv_num_heads": 2, "update_rule": "gated", "scale": 0.7},
        order=("q", "k", "v", "", "decay"),
    ),
]


def _load(case: Case, freeze: bool = True):
    return ft.onnx.load(case.model(), freeze=freeze)


def _outputs(model, inputs) -> tuple:
    out = model(*inputs)
    return out if isinstance(out, tuple) else (out,)


@pytest.mark.parametrize("case", ORT_CASES, ids=lambda c: c.id)
def test_matches_onnxruntime(case):
    model = _load(case)
    arrays = list(case.inputs.values())
    expected = run_onnxruntime(case.model(), *arrays)
    got = _outputs(model, [ft.from_numpy(a) for a in arrays])
    assert len(got) == len(expected)
    for g, e in zip(got, expected):
        assert g.numpy().dtype == e.dtype
        assert g.shape == e.shape
        rtol = 1e-3 if e.dtype == F16 else 1e-5
        np.testing.assert_allclose(g.numpy(), e, rtol=rtol, atol=case.atol)
    modules = [type(m) for m in model.modules()]
    if case.module is not None:
        assert case.module in modules
    else:
        assert not any(t.__name__.endswith(("Norm", "Norm1d", "Norm2d", "Norm3d")) for t in modules)


@pytest.mark.parametrize(
    "case", [c for c in ORT_CASES if c.outputs[0][1] == F32], ids=lambda c: c.id
)
def test_gradients_through_the_converted_op(case):
    """Every float graph input (masks with -inf aside) and every parameter, in float64."""
    model = _load(case, freeze=False).double()
    tensors = []
    for name, a in case.inputs.items():
        differentiable = a.dtype == F32 and not (name == "mask" and not np.isfinite(a).all())
        data = a.astype(F64) if a.dtype == F32 else a
        tensors.append(
            ft.tensor(data, requires_grad=True) if differentiable else ft.from_numpy(data)
        )
    leaves = [t for t in tensors if t.requires_grad] + list(model.parameters())

    def run(*_):
        outs = _outputs(model, tensors)[: case.graded]
        return tuple(o for o in outs if o.dtype.is_floating_point)

    assert ft.autograd.gradcheck(run, leaves)


# -- where onnxruntime has no kernel or refuses the input: onnx.reference or numpy ------------

REFERENCE_CASES = [
    _attention(
        "attention_short_bool_mask_gqa_causal",
        f32(2, 4, 3, 4),
        *_kv(2, 2, 5, 4),
        mask=RNG.random((3, 3)) > 0.2,
        is_causal=1,
    ),
    _attention("attention_short_float_mask", f32(1, 2, 3, 4), *_kv(1, 2, 5, 4), mask=f32(3, 2)),
    Case(
        "attention_24_nonpad_kv_seqlen_causal",
        "Attention",
        24,
        {
            "q": f32(2, 2, 2, 4),
            "k": f32(2, 2, 6, 4),
            "v": f32(2, 2, 6, 4),
            "n": np.array([3, 6], np.int64),
        },
        attributes={"is_causal": 1},
        order=("q", "k", "v", "", "", "", "n"),
    ),
    _attention(
        "attention_25_window_with_past",
        f32(1, 2, 3, 4),
        *_kv(1, 2, 3, 4),
        past=_kv(1, 2, 4, 4),
        opset=25,
        outputs=(("y", F32, None), ("present_k", F32, None), ("present_v", F32, None)),
        left_window_size=2,
        right_window_size=1,
    ),
    _attention(
        "attention_softmax_precision_float16",
        f32(1, 1, 3, 4).astype(F16),
        f32(1, 1, 3, 4).astype(F16),
        f32(1, 1, 3, 4).astype(F16),
        outputs=(("y", F16, None),),
        softmax_precision=onnx.TensorProto.FLOAT,
    ),
    Case("swiglu", "SwiGLU", 28, {"a": f32(2, 5), "b": f32(2, 5)}, attributes={"alpha": 1.7}),
    Case(
        "batch_norm_6_is_test",
        "BatchNormalization",
        6,
        {"x": f32(2, 3, 4)},
        {"s": f32(3), "b": f32(3), "m": f32(3), "v": positive(3)},
        attributes={"is_test": 1, "epsilon": 1e-3},
        module=nn.BatchNorm1d,
    ),
]


@pytest.mark.parametrize("case", REFERENCE_CASES, ids=lambda c: c.id)
def test_matches_the_onnx_reference(case):
    from onnx.reference import ReferenceEvaluator

    model = case.model()
    arrays = list(case.inputs.values())
    expected = ReferenceEvaluator(model).run(None, dict(zip(case.inputs, arrays)))
    loaded = ft.onnx.load(model)
    got = _outputs(loaded, [ft.from_numpy(a) for a in arrays])
    for g, e in zip(got, expected):
        assert g.numpy().dtype == e.dtype
        assert g.shape == e.shape
        half = e.dtype == F16
        np.testing.assert_allclose(
            g.numpy(), e, rtol=1e-3 if half else 1e-5, atol=1e-3 if half else 1e-5
        )
    if case.module is not None:
        assert any(isinstance(m, case.module) for m in loaded.modules())
    if case.outputs[0][1] == F32:
        double = ft.onnx.load(model, freeze=False).double()
        leaves = [
            ft.tensor(a.astype(F64), requires_grad=True) if a.dtype == F32 else ft.from_numpy(a)
            for a in arrays
        ]
        grads = [t for t in leaves if t.requires_grad] + list(double.parameters())
        assert ft.autograd.gradcheck(lambda *_: _outputs(double, leaves), grads)


def test_batch_norm_6_training_outputs_follow_the_spec_order():
    """Opset 6 lists Y, the updated running mean and var, then the batch's mean and var."""
    x, s, b, m, v = f32(5, 3, 2), f32(3), f32(3), f32(3), positive(3)
    case = Case(
        "bn6_training",
        "BatchNormalization",
        6,
        {"x": x, "s": s, "b": b, "m": m, "v": v},
        outputs=(("y", F32, (5, 3, 2)), *((n, F32, (3,)) for n in ("rm", "rv", "sm", "sv"))),
        attributes={"momentum": 0.7, "epsilon": 1e-3, "consumed_inputs": [0, 0, 0, 1, 1]},
    )
    case.opset = 1
    got = [
        o.numpy() for o in _outputs(_load(case), [ft.from_numpy(a) for a in case.inputs.values()])
    ]
    mean, var = x.mean(axis=(0, 2)), x.var(axis=(0, 2))
    y = (x - mean[:, None]) / np.sqrt(var[:, None] + 1e-3) * s[:, None] + b[:, None]
    expected = [y, m * 0.7 + mean * 0.3, v * 0.7 + var * 0.3, mean, var]
    for g, e in zip(got, expected, strict=True):
        np.testing.assert_allclose(g, e, rtol=1e-4, atol=1e-5)


def test_dropout_6_is_identity_with_a_mask_of_the_data_type():
    x = f32(2, 3)
    case = Case(
        "dropout_6", "Dropout", 6, {"x": x}, outputs=(("y", F32, (2, 3)), ("mask", F32, (2, 3)))
    )
    y, mask = _outputs(_load(case), [ft.from_numpy(x)])
    np.testing.assert_array_equal(y.numpy(), x)
    assert mask.numpy().dtype == F32 and (mask.numpy() == 1).all()
    single = Case(
        "dropout_1",
        "Dropout",
        1,
        {"x": x},
        outputs=(("y", F32, (2, 3)),),
        attributes={"ratio": 0.3, "is_test": 0},
    )
    layer = next(m for m in _load(single).modules() if isinstance(m, nn.Dropout))
    assert layer.p == pytest.approx(0.3)


def test_instance_norm_1_accepts_consumed_inputs():
    x, s, b = f32(2, 3, 4), f32(3), f32(3)
    case = Case(
        "in1",
        "InstanceNormalization",
        1,
        {"x": x},
        {"s": s, "b": b},
        outputs=(("y", F32, (2, 3, 4)),),
        attributes={"consumed_inputs": [0, 0, 0]},
    )
    mean, var = x.mean(axis=2, keepdims=True), x.var(axis=2, keepdims=True)
    expected = (x - mean) / np.sqrt(var + 1e-5) * s[:, None] + b[:, None]
    np.testing.assert_allclose(_run_numpy(case), expected, rtol=1e-4, atol=1e-5)


def _run_numpy(case: Case) -> np.ndarray:
    return _outputs(_load(case), [ft.from_numpy(a) for a in case.inputs.values()])[0].numpy()


def test_group_norm_18_scales_each_group():
    """Opset 18's scale/bias are per group; the onnx checker refuses the deprecated schema in a
    file, so the converter is checked directly against a loop over samples and groups."""
    from finetune.onnx.ops.normalization import group_normalization_18

    x, s, b = RNG.standard_normal((2, 6, 3)), RNG.standard_normal(3), RNG.standard_normal(3)
    expected = np.empty_like(x)
    for n in range(2):
        for g in range(3):
            part = x[n, 2 * g : 2 * g + 2]
            expected[n, 2 * g : 2 * g + 2] = (part - part.mean()) / np.sqrt(part.var() + 1e-5)
            expected[n, 2 * g : 2 * g + 2] = expected[n, 2 * g : 2 * g + 2] * s[g] + b[g]
    leaves = [ft.tensor(a, requires_grad=True) for a in (x, s, b)]
    got = group_normalization_18(*leaves, num_groups=3)
    np.testing.assert_allclose(got.detach().numpy(), expected, rtol=1e-10)
    assert ft.autograd.gradcheck(lambda *t: group_normalization_18(*t, num_groups=3), leaves)


# -- modules ------------------------------------------------------------------------------------


def test_constant_weights_become_pytorch_style_modules_that_train():
    x = f32(4, 3, 6)
    case = Case(
        "ln",
        "LayerNormalization",
        17,
        {"x": x},
        {"ln.weight": f32(6), "ln.bias": f32(6)},
    )
    model = _load(case, freeze=False)
    (layer,) = [m for m in model.modules() if isinstance(m, nn.LayerNorm)]
    assert layer.normalized_shape == (6,) and layer.eps == 1e-5 and layer.elementwise_affine
    np.testing.assert_array_equal(layer.weight.detach().numpy(), case.constants["ln.weight"])
    names = {n.rsplit(".", 1)[-1] for n, _ in model.named_parameters()}
    assert names == {"weight", "bias"}
    before = model(ft.from_numpy(x)).detach().numpy()
    optimizer = ft.optim.SGD(model.parameters(), lr=0.5)
    loss = (model(ft.from_numpy(x)) * ft.from_numpy(f32(4, 3, 6))).sum()
    loss.backward()
    optimizer.step()
    assert not np.allclose(model(ft.from_numpy(x)).detach().numpy(), before)


def test_group_norm_and_instance_norm_modules_carry_the_file_weights():
    s, b = f32(4), f32(4)
    gn = Case(
        "gn",
        "GroupNormalization",
        21,
        {"x": f32(2, 4, 3)},
        {"s": s, "b": b},
        outputs=(("y", F32, (2, 4, 3)),),
        attributes={"num_groups": 2, "epsilon": 1e-3},
    )
    (layer,) = [m for m in _load(gn).modules() if isinstance(m, nn.GroupNorm)]
    assert (layer.num_groups, layer.num_channels, layer.eps, layer.affine) == (2, 4, 1e-3, True)
    np.testing.assert_array_equal(layer.bias.numpy(), b)
    inorm = Case("in", "InstanceNormalization", 6, {"x": f32(2, 4, 3, 3)}, {"s": s, "b": b})
    (layer,) = [m for m in _load(inorm).modules() if isinstance(m, nn.InstanceNorm2d)]
    assert layer.affine and not layer.track_running_stats and layer.num_features == 4
    np.testing.assert_array_equal(layer.weight.numpy(), s)
    rms = Case("rms", "RMSNormalization", 23, {"x": f32(2, 3)}, {"s": s[:3]})
    (layer,) = [m for m in _load(rms).modules() if isinstance(m, nn.RMSNorm)]
    assert layer.normalized_shape == (3,) and layer.eps == 1e-5


def test_layers_match_a_plain_loop():
    x = RNG.standard_normal((2, 4, 3, 2))
    gn = nn.GroupNorm(2, 4, eps=1e-3).double()
    gn.weight.data = ft.tensor(RNG.standard_normal(4))
    out = gn(ft.tensor(x)).detach().numpy()
    for n in range(2):
        for g in range(2):
            part = x[n, 2 * g : 2 * g + 2]
            want = (part - part.mean()) / np.sqrt(part.var() + 1e-3)
            want = want * gn.weight.detach().numpy()[2 * g : 2 * g + 2, None, None]
            np.testing.assert_allclose(out[n, 2 * g : 2 * g + 2], want, rtol=1e-10)
    rms = nn.RMSNorm((3, 2)).double()
    got = rms(ft.tensor(x)).detach().numpy()
    for index in np.ndindex(2, 4):
        part = x[index]
        want = part / np.sqrt((part**2).mean() + np.finfo(F64).eps)
        np.testing.assert_allclose(got[index], want, rtol=1e-10)


def test_affine_parameters_of_group_and_instance_norm_follow_pytorch():
    for layer in (nn.GroupNorm(2, 4), nn.InstanceNorm2d(4, affine=True)):
        assert [name for name, _ in layer.named_parameters()] == ["weight", "bias"]
        layer.weight.data = ft.tensor(np.full(4, 3.0, F32))
        layer.bias.data = ft.tensor(np.full(4, -1.0, F32))
        layer.reset_parameters()
        np.testing.assert_array_equal(layer.weight.detach().numpy(), np.ones(4, F32))
        np.testing.assert_array_equal(layer.bias.detach().numpy(), np.zeros(4, F32))
    for layer in (nn.GroupNorm(2, 4, affine=False), nn.InstanceNorm1d(4)):
        assert layer.weight is None and layer.bias is None
        assert list(layer.parameters()) == []
        layer.reset_parameters()


def test_instance_norm_tracks_running_statistics_like_pytorch():
    x = RNG.standard_normal((3, 2, 5)).astype(F32)
    layer = nn.InstanceNorm1d(2, momentum=0.25, track_running_stats=True)
    layer.train()
    train_out = layer(ft.from_numpy(x)).numpy()
    mean = x.mean(axis=2).mean(axis=0)
    var = x.var(axis=2, ddof=1).mean(axis=0)
    np.testing.assert_allclose(layer.running_mean.numpy(), 0.25 * mean, rtol=1e-5)
    np.testing.assert_allclose(layer.running_var.numpy(), 0.75 + 0.25 * var, rtol=1e-5)
    want = (x - x.mean(axis=2, keepdims=True)) / np.sqrt(x.var(axis=2, keepdims=True) + 1e-5)
    np.testing.assert_allclose(train_out, want, rtol=1e-4, atol=1e-5)
    layer.eval()
    eval_out = layer(ft.from_numpy(x)).numpy()
    running = (x - layer.running_mean.numpy()[:, None]) / np.sqrt(
        layer.running_var.numpy()[:, None] + 1e-5
    )
    np.testing.assert_allclose(eval_out, running, rtol=1e-4, atol=1e-5)
    assert int(layer.num_batches_tracked.numpy()) == 1


# -- masks, errors ------------------------------------------------------------------------------


def test_a_fully_masked_query_row_gives_zeros_and_finite_gradients():
    mask = np.ones((3, 4), bool)
    mask[1] = False
    case = _attention("dead_row", f32(1, 2, 3, 4), *_kv(1, 2, 4, 4), mask=mask)
    model = ft.onnx.load(case.model()).double()
    q, k, v = (ft.tensor(a.astype(F64), requires_grad=True) for a in list(case.inputs.values())[:3])
    y = model(q, k, v, ft.from_numpy(mask))
    out = y.detach().numpy()
    assert np.isfinite(out).all() and (out[:, :, 1] == 0).all()
    y.sum().backward()
    assert all(np.isfinite(t.grad.numpy()).all() for t in (q, k, v))
    assert (q.grad.numpy()[:, :, 1] == 0).all()


@pytest.mark.parametrize(
    "case, message",
    [
        (
            Case(
                "gn_groups",
                "GroupNormalization",
                21,
                {"x": f32(2, 5, 3), "s": f32(5), "b": f32(5)},
                outputs=(("y", F32, (2, 5, 3)),),
                attributes={"num_groups": 2},
            ),
            "do not split into num_groups=2",
        ),
        (
            _attention("heads", f32(1, 3, 2, 4), *_kv(1, 2, 2, 4)),
            "heads must divide evenly",
        ),
        (
            Case(
                "nll_range",
                "NegativeLogLikelihoodLoss",
                13,
                {"x": f32(2, 3), "t": np.array([0, 7])},
            ),
            "out of range for 3 classes",
        ),
        (
            Case(
                "rotary_cache",
                "RotaryEmbedding",
                23,
                {"x": f32(1, 1, 3, 4), "cos": f32(1, 3, 3), "sin": f32(1, 3, 3)},
            ),
            "cos/sin caches give shape",
        ),
    ],
    ids=lambda c: c.id if isinstance(c, Case) else "",
)
def test_bad_input_names_the_op_and_the_problem(case, message):
    model = ft.onnx.load(case.model())
    with pytest.raises(OnnxImportError, match=message):
        model(*[ft.from_numpy(a) for a in case.inputs.values()])


def test_imported_norm_modules_export_back_and_onnxruntime_agrees(tmp_path):
    import onnxruntime as ort

    for case in [c for c in ORT_CASES if c.module is not None]:
        model = _load(case)
        (x,) = case.inputs.values()
        path = tmp_path / f"{case.id}.onnx"
        ft.onnx.export(model, ft.from_numpy(x), path, opset_version=17)
        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        (theirs,) = session.run(None, {"input": x})
        ours = model(ft.from_numpy(x)).numpy()
        np.testing.assert_allclose(theirs, ours, rtol=1e-5, atol=1e-5, err_msg=case.id)


def test_an_imported_lrn_exports_with_a_free_batch(tmp_path):
    """LRN pads its channel window with a Pad, not zeros sized from the input: the exported
    file runs at any batch size (it used to carry the import's batch)."""
    graph = helper.make_graph(
        [helper.make_node("LRN", ["x"], ["y"], size=3)],
        "lrn",
        [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1, 5, 4, 4])],
        [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1, 5, 4, 4])],
    )
    model = ft.onnx.load(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)]))
    path = tmp_path / "lrn.onnx"
    ft.onnx.export(model, ft.zeros(1, 5, 4, 4), str(path))
    x = np.random.default_rng(0).standard_normal((3, 5, 4, 4)).astype(np.float32)
    (got,) = run_onnxruntime(onnx.load(str(path)), x)
    with ft.no_grad():
        expected = model(ft.from_numpy(x)).numpy()
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)
