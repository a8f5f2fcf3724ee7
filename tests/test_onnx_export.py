"""ONNX export of hand-written modules: onnxruntime must agree with the library at any batch.

Each model is exported at batch 2 and run in onnxruntime at batches 1, 2 and 5, so a reshape or
expand that froze the traced batch size into the file shows up as a wrong shape.
"""

from __future__ import annotations

import json
import os

import numpy as np
import onnx
import onnxruntime as ort
import pytest

import finetune as ft
import finetune.nn.functional as F
from finetune import nn
from finetune.autograd.function import Function
from finetune.errors import OnnxExportError

ATOL, RTOL = 1e-4, 1e-3


class Lambda(nn.Module):
    """A module whose forward is a function of its input and a few parameters of its own."""

    def __init__(self, fn, features: int = 4) -> None:
        super().__init__()
        self.fn = fn
        self.weight = nn.Parameter(ft.randn(features))
        self.linear = nn.Linear(features, 3)

    def forward(self, x):
        return self.fn(self, x)


def run_onnxruntime(path, *inputs: np.ndarray) -> list[np.ndarray]:
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    names = [i.name for i in session.get_inputs()]
    return session.run(None, dict(zip(names, inputs)))


def library(model, *inputs: np.ndarray) -> np.ndarray:
    with ft.no_grad():
        return model(*(ft.from_numpy(x) for x in inputs)).numpy()


def assert_exports(model, shape, tmp_path, batches=(1, 2, 5), **kwargs) -> onnx.ModelProto:
    """Export at batch 2, then compare onnxruntime with the library at every batch."""
    model.eval()
    path = tmp_path / "model.onnx"
    ft.onnx.export(model, ft.randn(2, *shape), path, **kwargs)
    rng = np.random.default_rng(0)
    for n in batches:
        x = rng.standard_normal((n, *shape)).astype(np.float32)
        (theirs,) = run_onnxruntime(path, x)
        np.testing.assert_allclose(theirs, library(model, x), atol=ATOL, rtol=RTOL)
    return onnx.load(path)


ELEMENTWISE = {
    "arithmetic": lambda m, x: (x * 2.0 - 1) / (x.abs() + 1) + 3 - x,
    "reverse_scalar": lambda m, x: 1.5 - x + 2 * x / (2.0 + x * x),
    "parameter": lambda m, x: x * m.weight + m.weight,
    "pow": lambda m, x: x**2 + x.abs() ** 0.5 + ft.pow(x.abs() + 1, m.weight.abs()),
    "unary": lambda m, x: -x.exp() + (x.abs() + 1).log() + x.abs().sqrt() + x.sin() * x.cos(),
    "activations": lambda m, x: ft.relu(x) + ft.sigmoid(x) + ft.tanh(x) + F.leaky_relu(x, 0.2),
    "erf": lambda m, x: ft.erf(x * 2),
    "clamp": lambda m, x: x.clamp(-0.5, 0.5) + x.clamp(min=0.1) + F.relu6(x * 4),
    "where": lambda m, x: ft.where(m.weight > 0, x, x * 0.1),
    "cast": lambda m, x: (x * 3).to(ft.int64).to(ft.float32) + x.double().float(),
    "clone": lambda m, x: x.clone() * 2,
    "softmax": lambda m, x: F.softmax(x, dim=-1) + F.log_softmax(x, dim=1),
    "matmul": lambda m, x: x @ m.weight + (x @ ft.ones(4, 4)).sum(dim=1),
    "linear": lambda m, x: m.linear(x),
    "linear_nobias": lambda m, x: F.linear(x, m.linear.weight),
}

REDUCTIONS = {
    "sum": lambda m, x: x.sum(dim=1, keepdim=True) + x.sum(),
    "mean": lambda m, x: x.mean(dim=-1) + x.mean(),
    "max": lambda m, x: x.max(dim=1).values + x.min(dim=1).values + x.max(),
    "logsumexp": lambda m, x: ft.logsumexp(x, dim=1),
    "norm": lambda m, x: x.norm(dim=1) + x.norm(p=1, dim=1, keepdim=True)[:, 0],
    "topk": lambda m, x: x.topk(2, dim=1).values,
}


@pytest.mark.parametrize("name", sorted(ELEMENTWISE))
def test_elementwise_and_linear(name, tmp_path):
    assert_exports(Lambda(ELEMENTWISE[name]), (4,), tmp_path)


@pytest.mark.parametrize("opset", [13, 17, 18])
@pytest.mark.parametrize("name", sorted(REDUCTIONS))
def test_reductions_at_each_axes_convention(name, opset, tmp_path):
    """ReduceMean/Max take axes as an attribute before opset 18 and as an input from it."""
    assert_exports(Lambda(REDUCTIONS[name]), (4,), tmp_path, opset_version=opset)


SHAPES = {
    "view_batch": lambda m, x: x.view(x.shape[0], -1),
    "view_keep_batch": lambda m, x: x.reshape(x.shape[0], 3, 4, 1) * 1,
    "flatten": lambda m, x: ft.flatten(x, 1),
    "permute": lambda m, x: x.permute(0, 2, 3, 1),
    "transpose": lambda m, x: x.transpose(1, 3),
    "squeeze": lambda m, x: x[:, :1].squeeze(1) + x[:, 1:2].squeeze(dim=1),
    "unsqueeze": lambda m, x: x.unsqueeze(1) * x.unsqueeze(-1).sum(dim=-1)[:, None],
    "slicing": lambda m, x: x[:, 1:, ::2, -1] + x[:, :2, 0, 1:2],
    "negative_step": lambda m, x: x[:, ::-1, 1::-1],
    "select": lambda m, x: x[:, 0] - x[:, -1] + x[:, 1, None, 1],
    "index_select": lambda m, x: x[:, [2, 0, 0]] + ft.index_select(x, 3, ft.tensor([1, 0])),
    "cat_stack": lambda m, x: ft.cat([x, ft.stack([x, -x * 2], dim=2).sum(dim=2)], dim=1),
    "split": lambda m, x: ft.cat(list(x.split([1, 2], dim=1))[::-1], dim=1),
    "expand": lambda m, x: x[:, :, :1].expand(-1, 3, 2, 2) * 1,
    "pad": lambda m, x: F.pad(x, (1, 2, 0, 1)) + F.pad(x, (1, 2, 0, 1), value=0.5),
    "pad_modes": lambda m, x: F.pad(x, (1, 1), mode="reflect") + F.pad(x, (1, 1), mode="replicate"),
}


@pytest.mark.parametrize("name", sorted(SHAPES))
def test_shape_ops_at_any_batch(name, tmp_path):
    assert_exports(Lambda(SHAPES[name]), (3, 2, 2), tmp_path)


def test_gather_with_a_constant_index(tmp_path):
    """The index is data, not traced: it is written as a constant of the traced batch size."""
    index = ft.tensor([[0, 2, 1], [1, 1, 0]])
    model = Lambda(lambda m, x: ft.gather(x, 1, index))
    with pytest.raises(OnnxExportError, match="not on a batch of 3"):
        ft.onnx.export(model, ft.randn(2, 4), tmp_path / "m.onnx")
    assert_exports(model, (4,), tmp_path, batches=(2,), dynamic_batch=False)


def test_reshape_that_keeps_the_batch_becomes_flatten_or_a_copied_dimension(tmp_path):
    flat = assert_exports(Lambda(SHAPES["view_batch"]), (3, 2, 2), tmp_path)
    assert [n.op_type for n in flat.graph.node] == ["Flatten"]
    kept = assert_exports(Lambda(SHAPES["view_keep_batch"]), (3, 2, 2), tmp_path)
    (shape,) = [i for i in kept.graph.initializer if i.name == kept.graph.node[0].input[1]]
    assert onnx.numpy_helper.to_array(shape).tolist() == [0, 3, 4, 1]


def test_batch_dimension_is_symbolic_unless_asked_not_to(tmp_path):
    model = Lambda(lambda m, x: m.linear(x))
    dynamic = assert_exports(model, (4,), tmp_path)
    for value in (*dynamic.graph.input, *dynamic.graph.output):
        assert value.type.tensor_type.shape.dim[0].dim_param == "batch"
    fixed = assert_exports(model, (4,), tmp_path, batches=(2,), dynamic_batch=False)
    assert [d.dim_value for d in fixed.graph.input[0].type.tensor_type.shape.dim] == [2, 4]
    assert [d.dim_value for d in fixed.graph.output[0].type.tensor_type.shape.dim] == [2, 3]


# -- the file itself -------------------------------------------------------------------------


class TwoLayer(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Dropout(0.5), nn.Linear(8, 8))
        self.norm = nn.BatchNorm1d(8)
        self.fc = nn.Linear(8, 3)

    def forward(self, x):
        return self.fc(F.relu(self.norm(self.body(x))))


def trained_two_layer() -> TwoLayer:
    ft.manual_seed(0)
    model = TwoLayer()
    model.train()
    model(ft.randn(16, 4))  # running statistics that are not the defaults
    return model


def test_weights_are_initializers_named_by_state_dict_key(tmp_path):
    model = trained_two_layer()
    proto = assert_exports(model, (4,), tmp_path)
    names = {i.name for i in proto.graph.initializer}
    state = {k for k in model.state_dict() if not k.endswith("num_batches_tracked")}
    assert state <= names
    for init in proto.graph.initializer:
        if init.name in state:
            np.testing.assert_array_equal(
                onnx.numpy_helper.to_array(init), model.state_dict()[init.name].numpy()
            )


def test_eval_graph_has_no_dropout_and_a_batch_normalization(tmp_path):
    proto = assert_exports(trained_two_layer(), (4,), tmp_path)
    ops = [n.op_type for n in proto.graph.node]
    assert ops == ["Gemm", "Relu", "Gemm", "BatchNormalization", "Relu", "Gemm"]


def test_file_passes_the_full_checker_at_the_lowest_ir_version(tmp_path):
    path = tmp_path / "m.onnx"
    ft.onnx.export(trained_two_layer(), ft.randn(2, 4), path, opset_version=13)
    proto = onnx.load(path)
    onnx.checker.check_model(proto, full_check=True)
    assert proto.ir_version == onnx.helper.find_min_ir_version_for(list(proto.opset_import))
    assert [(o.domain, o.version) for o in proto.opset_import] == [("", 13)]


def test_training_mode_of_every_module_is_restored(tmp_path):
    model = trained_two_layer()
    model.norm.eval()
    ft.onnx.export(model, ft.randn(2, 4), tmp_path / "m.onnx")
    assert model.training and model.body.training and not model.norm.training


def test_frozen_and_unfrozen_models_give_byte_identical_files(tmp_path):
    model = trained_two_layer()
    x = ft.randn(2, 4)
    ft.onnx.export(model, x, tmp_path / "unfrozen.onnx")
    model.requires_grad_(False)
    ft.onnx.export(model, x, tmp_path / "frozen.onnx")
    assert (tmp_path / "frozen.onnx").read_bytes() == (tmp_path / "unfrozen.onnx").read_bytes()


def test_metadata_rides_along_each_key_its_own_entry(tmp_path):
    meta = {
        "classes": ["cat", "dog", "3"],
        "mean": [0.485, 0.456, 0.406],
        "input_size": 224,
        "author": "me",
        "version": "3",
        "extra": {"a": [1, 2], "b": None},
    }
    path = tmp_path / "m.onnx"
    ft.onnx.export(trained_two_layer(), ft.randn(2, 4), path, metadata=meta)
    props = {p.key: p.value for p in onnx.load(path).metadata_props}
    assert props["author"] == "me"  # a plain string stays readable by other tools
    assert json.loads(props["classes"]) == ["cat", "dog", "3"]
    assert ft.onnx.load(path).metadata == meta


def test_metadata_that_is_not_json_is_refused(tmp_path):
    path = tmp_path / "m.onnx"
    with pytest.raises(OnnxExportError, match="metadata\\['bad'\\]"):
        ft.onnx.export(trained_two_layer(), ft.randn(2, 4), path, metadata={"bad": {1, 2}})
    assert not path.exists()


class Mystery(Function):
    """A primitive the exporter has never heard of."""

    @staticmethod
    def forward(ctx, x):
        return x * 2

    @staticmethod
    def backward(ctx, grad):
        return grad * 2


def test_unsupported_op_raises_naming_it_and_leaves_no_file(tmp_path):
    model = Lambda(lambda m, x: Mystery.apply(ft.relu(x)))
    path = tmp_path / "m.onnx"
    with pytest.raises(OnnxExportError, match="Mystery \\(MysteryBackward0\\)"):
        ft.onnx.export(model, ft.randn(2, 4), path)
    assert os.listdir(tmp_path) == []


def test_failed_export_keeps_the_previous_file(tmp_path):
    path = tmp_path / "m.onnx"
    path.write_bytes(b"previous")
    with pytest.raises(OnnxExportError):
        ft.onnx.export(Lambda(lambda m, x: Mystery.apply(x)), ft.randn(2, 4), path)
    assert path.read_bytes() == b"previous"
    assert os.listdir(tmp_path) == ["m.onnx"]


def test_in_place_ops_are_traced_as_the_values_they_leave(tmp_path):
    def forward(m, x):
        y = x * 1
        y.add_(1).mul_(m.weight)
        F.relu(y, inplace=True)
        return y - F.hardtanh(y, 0.0, 1.0, inplace=True) + y

    proto = assert_exports(Lambda(forward), (4,), tmp_path)
    ops = [n.op_type for n in proto.graph.node]
    assert ops == ["Mul", "Add", "Mul", "Relu", "Clip", "Sub", "Add"]


def test_in_place_change_the_trace_cannot_see_is_refused(tmp_path):
    def forward(m, x):
        y = x * 2
        y[:, 0] = 0.0
        return y + 1

    with pytest.raises(OnnxExportError, match="changed in place outside the traced operations"):
        ft.onnx.export(Lambda(forward), ft.randn(2, 4), tmp_path / "m.onnx")


@pytest.mark.parametrize(
    "forward",
    [
        lambda m, x: ft.where(x > 0, x, x * 0.1),
        lambda m, x: x + x.argmax(dim=1, keepdim=True),
        lambda m, x: x + ft.zeros(x.shape[0], 1),
        lambda m, x: x * ft.from_numpy(x.numpy().copy()),
    ],
    ids=["comparison", "argmax", "sized_from_shape", "numpy"],
)
def test_values_computed_outside_the_trace_are_refused_not_frozen(forward, tmp_path):
    """Comparisons and argmax bypass the primitives; the file would hold them as constants."""
    with pytest.raises(OnnxExportError, match="outside the traced operations"):
        ft.onnx.export(Lambda(forward), ft.randn(2, 4), tmp_path / "m.onnx")
    assert os.listdir(tmp_path) == []


def test_a_batch_size_frozen_into_the_file_is_refused(tmp_path):
    model = Lambda(lambda m, x: x + ft.ones(1, 4).expand(x.shape[0], 4))
    with pytest.raises(OnnxExportError, match="fixes its first dimension at 2"):
        ft.onnx.export(model, ft.randn(2, 4), tmp_path / "m.onnx")
    assert os.listdir(tmp_path) == []
    assert_exports(model, (4,), tmp_path, batches=(2,), dynamic_batch=False)


def test_input_dependent_control_flow_warns(tmp_path):
    model = Lambda(lambda m, x: x * 2 if x.shape[0] == 2 else x - 1)
    with pytest.warns(UserWarning, match="control flow depends on the input"):
        ft.onnx.export(model, ft.ones(2, 4), tmp_path / "m.onnx")


def test_unused_results_are_not_exported(tmp_path):
    """Dead code in forward (even an unsupported op) leaves no trace in the file."""

    def forward(m, x):
        Mystery.apply(x)
        x.exp()
        return x * 2

    proto = assert_exports(Lambda(forward), (4,), tmp_path)
    assert [n.op_type for n in proto.graph.node] == ["Mul"]
    assert {i.name for i in proto.graph.initializer} == {proto.graph.node[0].input[1]}


def test_several_inputs_and_outputs(tmp_path):
    class Pair(nn.Module):
        def forward(self, a, b):
            return a + b, a, (a * b).sum(dim=1)

    path = tmp_path / "m.onnx"
    a, b = np.ones((3, 4), np.float32), np.arange(12, dtype=np.float32).reshape(3, 4)
    ft.onnx.export(
        Pair(),
        (ft.randn(2, 4), ft.randn(2, 4)),
        path,
        input_names=("a", "b"),
        output_names=("sum", "same", "dot"),
    )
    total, same, dot = run_onnxruntime(path, a, b)
    np.testing.assert_allclose(total, a + b)
    np.testing.assert_array_equal(same, a)
    np.testing.assert_allclose(dot, (a * b).sum(axis=1))


def test_names_must_match_the_inputs_and_outputs(tmp_path):
    model = Lambda(lambda m, x: (x, x))
    with pytest.raises(OnnxExportError, match="returned 2 output"):
        ft.onnx.export(model, ft.randn(2, 4), tmp_path / "m.onnx")
    with pytest.raises(OnnxExportError, match="input_names"):
        ft.onnx.export(model, ft.randn(2, 4), tmp_path / "m.onnx", input_names=("a", "b"))
    with pytest.raises(OnnxExportError, match="opset_version"):
        ft.onnx.export(model, ft.randn(2, 4), tmp_path / "m.onnx", opset_version=9)
    assert os.listdir(tmp_path) == []


@pytest.mark.parametrize("approximate", ["none", "tanh"])
@pytest.mark.parametrize("opset", [17, 20])
def test_gelu_as_a_node_from_opset_20_and_as_its_formula_before(approximate, opset, tmp_path):
    model = assert_exports(
        Lambda(lambda m, x: F.gelu(x * 3, approximate=approximate)),
        (4,),
        tmp_path,
        opset_version=opset,
    )
    ops = {n.op_type for n in model.graph.node}
    assert ("Gelu" in ops) == (opset >= 20)
    if opset < 20:
        assert ("Erf" in ops) == (approximate == "none")


def test_maximum_and_minimum_export_as_max_and_min(tmp_path):
    model = assert_exports(
        Lambda(lambda m, x: ft.maximum(x, m.weight) + ft.minimum(x, 0.5 * x)), (4,), tmp_path
    )
    assert {"Max", "Min"} <= {n.op_type for n in model.graph.node}


def test_einsum_exports_with_an_explicit_equation(tmp_path):
    model = assert_exports(
        Lambda(lambda m, x: ft.einsum("...i,i->...", x, m.weight) + ft.einsum("bi,bi", x, x)),
        (4,),
        tmp_path,
    )
    (node,) = [n for n in model.graph.node if n.op_type == "Einsum"][:1]
    assert "..." not in node.attribute[0].s.decode()


@pytest.mark.parametrize(
    "kwargs",
    [
        dict(scale_factor=2, mode="nearest"),
        dict(scale_factor=(1.5, 0.5), mode="nearest"),
        dict(size=(5, 7), mode="nearest"),
        dict(scale_factor=2, mode="bilinear", align_corners=False),
        dict(size=(5, 3), mode="bilinear", align_corners=False),
        dict(scale_factor=1.5, mode="bilinear", align_corners=True),
        # axes resized to length 1, where ONNX's pytorch_half_pixel is not PyTorch's rule
        dict(size=(1, 3), mode="bilinear"),
        dict(scale_factor=0.3, mode="bilinear"),
    ],
)
@pytest.mark.parametrize("opset", [13, 17])
def test_interpolate_exports_as_resize(kwargs, opset, tmp_path):
    model = assert_exports(
        Lambda(lambda m, x: F.interpolate(x, **kwargs)), (2, 4, 6), tmp_path, opset_version=opset
    )
    assert "Resize" in {n.op_type for n in model.graph.node}
