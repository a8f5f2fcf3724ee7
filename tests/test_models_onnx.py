"""ResNet-18 ONNX files in every layout a user meets import into ``resnet18()`` exactly.

The files are built here with ``onnx.helper`` from one deterministic random ResNet-18 (the real
channel widths, 64x64 inputs): the zoo's MXNet export (opset 7, IR 3, BN ``spatial``), PyTorch's
legacy exporter with BatchNorm folded (opsets 11 and 17) or kept (opset 13), and its dynamo
exporter (opset 20, external data, ``ReduceMean`` + ``Reshape``, ``Identity`` aliases).
onnxruntime runs each file as the reference.
"""

from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

import finetune as ft
from finetune import nn
from finetune.errors import OnnxImportError
from finetune.models import resnet18

EPS = 1e-5
DATA = Path(__file__).parent / "data"


def _convs() -> list[tuple[str, str, int, int, int, int, int]]:
    """(conv, bn, out, in, kernel, stride, pad) of ResNet-18, in torchvision's names and order."""
    convs = [("conv1", "bn1", 64, 3, 7, 2, 3)]
    inplanes = 64
    for stage, planes in enumerate((64, 128, 256, 512), start=1):
        for block in range(2):
            p = f"layer{stage}.{block}"
            stride = 2 if stage > 1 and block == 0 else 1
            convs.append((f"{p}.conv1", f"{p}.bn1", planes, inplanes, 3, stride, 1))
            convs.append((f"{p}.conv2", f"{p}.bn2", planes, planes, 3, 1, 1))
            if stride != 1 or inplanes != planes:
                convs.append(
                    (f"{p}.downsample.0", f"{p}.downsample.1", planes, inplanes, 1, stride, 0)
                )
            inplanes = planes
    return convs


def random_resnet18(seed: int, classes: int) -> dict[str, np.ndarray]:
    """A torchvision-named state dict whose activations stay O(1) through all 18 layers."""
    rng = np.random.default_rng(seed)
    weights = {}
    for conv, bn, out, inp, k, _, _ in _convs():
        weights[f"{conv}.weight"] = rng.normal(0, np.sqrt(2 / (inp * k * k)), (out, inp, k, k))
        weights[f"{bn}.weight"] = rng.uniform(0.5, 1.5, out)
        weights[f"{bn}.bias"] = rng.normal(0, 0.1, out)
        weights[f"{bn}.running_mean"] = rng.normal(0, 0.1, out)
        weights[f"{bn}.running_var"] = rng.uniform(0.5, 1.5, out)
    weights["fc.weight"] = rng.normal(0, 0.05, (classes, 512))
    weights["fc.bias"] = rng.normal(0, 0.05, classes)
    return {k: v.astype(np.float32) for k, v in weights.items()}


def _mxnet_names() -> dict[str, str]:
    """torchvision name -> the zoo's resnetv15_* name (conv/batchnorm counters per stage)."""
    names = {"conv1": "resnetv15_conv0", "bn1": "resnetv15_batchnorm0", "fc": "resnetv15_dense0"}
    for stage in range(1, 5):
        counter = itertools.count()
        for conv, bn, *_ in _convs():
            if conv.startswith(f"layer{stage}."):
                i = next(counter)
                names[conv] = f"resnetv15_stage{stage}_conv{i}"
                names[bn] = f"resnetv15_stage{stage}_batchnorm{i}"
    return names


_MXNET_SUFFIX = {
    "weight": "weight",
    "bias": "bias",
    "running_mean": "running_mean",
    "running_var": "running_var",
}
_MXNET_BN_SUFFIX = {"weight": "gamma", "bias": "beta"}


class _Emitter:
    """Writes the ResNet-18 graph node by node in one exporter's layout."""

    def __init__(self, weights: dict[str, np.ndarray], layout: str) -> None:
        self.w, self.layout = weights, layout
        self.nodes: list[onnx.NodeProto] = []
        self.inits: dict[str, np.ndarray] = {}
        self.fold = layout in ("folded", "dynamo")
        self.legacy_ids = itertools.count(100)
        self.mxnet = _mxnet_names()

    def name(self, module: str, key: str) -> str:
        if self.layout == "zoo":
            suffix = key
            if "batchnorm" in self.mxnet[module]:
                suffix = _MXNET_BN_SUFFIX.get(key, key)
            return f"{self.mxnet[module]}_{_MXNET_SUFFIX.get(suffix, suffix)}"
        if self.layout == "folded" and module != "fc":
            return f"onnx::Conv_{next(self.legacy_ids)}"
        return f"{module}.{key}"

    def tensor(self, module: str, key: str, array: np.ndarray) -> str:
        name = self.name(module, key)
        self.inits[name] = array.astype(np.float32)
        if self.layout == "dynamo" and module == "fc" and key == "weight":
            return self.op("Identity", [name])  # dynamo at opset 20 aliases some values
        return name

    def op(self, op_type: str, inputs: list[str], **attrs) -> str:
        out = f"{op_type.lower()}_{len(self.nodes)}"
        self.nodes.append(helper.make_node(op_type, inputs, [out], name=f"/{out}", **attrs))
        return out

    def conv_bn(self, x: str, conv: str, bn: str, k: int, stride: int, pad: int) -> str:
        w = self.w[f"{conv}.weight"]
        gamma, beta = self.w[f"{bn}.weight"], self.w[f"{bn}.bias"]
        mean, var = self.w[f"{bn}.running_mean"], self.w[f"{bn}.running_var"]
        attrs = dict(kernel_shape=[k, k], strides=[stride, stride], pads=[pad] * 4)
        if self.fold:
            scale = gamma / np.sqrt(var + EPS)
            bias_key = "weight_bias" if self.layout == "dynamo" else "bias"
            inputs = [
                x,
                self.tensor(conv, "weight", w * scale[:, None, None, None]),
                self.tensor(conv, bias_key, beta - mean * scale),
            ]
            return self.op("Conv", inputs, **attrs)
        y = self.op("Conv", [x, self.tensor(conv, "weight", w)], **attrs)
        bn_inputs = [
            self.tensor(bn, key, self.w[f"{bn}.{key}"])
            for key in ("weight", "bias", "running_mean", "running_var")
        ]
        extra = {"spatial": 1} if self.layout == "zoo" else {}
        return self.op("BatchNormalization", [y, *bn_inputs], epsilon=EPS, momentum=0.9, **extra)

    def graph(self, x: str) -> str:
        convs = {c[0]: c for c in _convs()}
        x = self.op("Relu", [self.conv_bn(x, "conv1", "bn1", 7, 2, 3)])
        x = self.op("MaxPool", [x], kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1])
        if self.layout == "dynamo":
            x = self.op("Identity", [x])
        for stage, block in itertools.product(range(1, 5), range(2)):
            p = f"layer{stage}.{block}"
            _, _, _, _, _, stride, _ = convs[f"{p}.conv1"]
            h = self.op("Relu", [self.conv_bn(x, f"{p}.conv1", f"{p}.bn1", 3, stride, 1)])
            h = self.conv_bn(h, f"{p}.conv2", f"{p}.bn2", 3, 1, 1)
            shortcut = x
            if f"{p}.downsample.0" in convs:
                shortcut = self.conv_bn(x, f"{p}.downsample.0", f"{p}.downsample.1", 1, stride, 0)
            pair = [shortcut, h] if self.layout == "zoo" else [h, shortcut]  # MXNet: residual+x
            x = self.op("Relu", [self.op("Add", pair)])
        if self.layout == "dynamo":
            axes = self.tensor("val", "axes", np.array([-1, -2]))
            shape = self.tensor("val", "shape", np.array([-1, 512]))
            self.inits["val.axes"] = self.inits["val.axes"].astype(np.int64)
            self.inits["val.shape"] = self.inits["val.shape"].astype(np.int64)
            x = self.op("Reshape", [self.op("ReduceMean", [x, axes], keepdims=1), shape])
        else:
            x = self.op("Flatten", [self.op("GlobalAveragePool", [x])], axis=1)
        fc = [
            self.tensor("fc", "weight", self.w["fc.weight"]),
            self.tensor("fc", "bias", self.w["fc.bias"]),
        ]
        return self.op("Gemm", [x, *fc], alpha=1.0, beta=1.0, transB=1)


LAYOUTS = {  # name: (emitter layout, opset, IR version, classes)
    "zoo-v1-opset7": ("zoo", 7, 3, 1000),
    "legacy-folded-opset11": ("folded", 11, 6, 7),
    "legacy-folded-opset17": ("folded", 17, 8, 7),
    "legacy-bn-opset13": ("bn", 13, 7, 7),
    "dynamo-opset20": ("dynamo", 20, 10, 7),
}


def build(path: Path, weights: dict[str, np.ndarray], layout: str, opset: int, ir: int) -> Path:
    """Write the ResNet-18 ``weights`` to ``path`` in ``layout``; return the path."""
    emitter = _Emitter(weights, layout)
    out = emitter.graph("data" if layout == "zoo" else "input")
    batch = 1 if layout == "zoo" else "batch"  # the zoo declares batch 1
    x = helper.make_tensor_value_info(
        emitter.nodes[0].input[0], TensorProto.FLOAT, [batch, 3, 64, 64]
    )
    y = helper.make_tensor_value_info(out, TensorProto.FLOAT, [batch, len(weights["fc.bias"])])
    inits = [numpy_helper.from_array(v, k) for k, v in emitter.inits.items()]
    inputs = [x]
    if ir < 4:  # IR 3 lists every initializer as a graph input too
        inputs += [helper.make_tensor_value_info(t.name, t.data_type, list(t.dims)) for t in inits]
    graph = helper.make_graph(emitter.nodes, "resnet18", inputs, [y], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = ir
    onnx.checker.check_model(model)
    if layout == "dynamo":
        onnx.save_model(
            model,
            path,
            save_as_external_data=True,
            all_tensors_to_one_file=True,
            location=path.name + ".data",
        )
    else:
        onnx.save_model(model, path)
    return path


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, tuple[Path, dict[str, np.ndarray]]]:
    folder = tmp_path_factory.mktemp("resnet18")
    built = {}
    for name, (layout, opset, ir, classes) in LAYOUTS.items():
        weights = random_resnet18(seed=classes, classes=classes)
        built[name] = build(folder / f"{name}.onnx", weights, layout, opset, ir), weights
    return built


def _onnxruntime(path: Path, x: np.ndarray, per_row: bool) -> np.ndarray:
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    if per_row:  # a file that declares batch 1
        return np.concatenate([session.run(None, {name: x[i : i + 1]})[0] for i in range(len(x))])
    return session.run(None, {name: x})[0]


@pytest.mark.parametrize("layout", list(LAYOUTS))
def test_every_layout_matches_onnxruntime(files, layout):
    path, weights = files[layout]
    model = resnet18(weights=path)
    assert isinstance(model, ft.models.ResNet) and not model.training
    assert model.fc.out_features == len(weights["fc.bias"])
    assert not any(p.requires_grad for p in model.parameters())
    x = np.random.default_rng(0).standard_normal((4, 3, 64, 64)).astype(np.float32)
    want = _onnxruntime(path, x, per_row=layout.startswith("zoo"))
    with ft.no_grad():
        got = model(ft.from_numpy(x)).numpy()
        one = model(ft.from_numpy(x[:1])).numpy()
    np.testing.assert_allclose(got, want, atol=1e-4, rtol=1e-3)
    np.testing.assert_allclose(one, want[:1], atol=1e-4, rtol=1e-3)


@pytest.mark.parametrize("layout", ["zoo-v1-opset7", "legacy-bn-opset13"])
def test_kept_batchnorm_loads_the_files_own_numbers(files, layout):
    path, weights = files[layout]
    model = resnet18(weights=path)
    assert repr(model.layer3[0].downsample[1]) == (
        "BatchNorm2d(256, eps=1e-05, momentum=0.1, affine=True, track_running_stats=True)"
    )
    state = model.state_dict()
    for key, value in weights.items():
        np.testing.assert_array_equal(state[key].numpy(), value, err_msg=key)


def test_folded_batchnorm_becomes_an_exact_identity_plus_bias(files):
    path, weights = files["legacy-folded-opset17"]
    model = resnet18(weights=path)
    bn = model.layer2[0].downsample[1]
    assert np.all(bn.weight.numpy() == 1) and np.all(bn.running_mean.numpy() == 0)
    np.testing.assert_array_equal(bn.running_var.numpy(), np.float32(1 - EPS))
    assert np.all(np.sqrt(bn.running_var.numpy() + np.float32(bn.eps)) == 1)
    scale = weights["layer2.0.downsample.1.weight"] / np.sqrt(
        weights["layer2.0.downsample.1.running_var"] + EPS
    )
    folded_bias = weights["layer2.0.downsample.1.bias"] - (
        weights["layer2.0.downsample.1.running_mean"] * scale
    )
    np.testing.assert_allclose(bn.bias.numpy(), folded_bias, rtol=1e-6, atol=1e-7)


def test_recipe_trains_only_the_new_head(files):
    path, _ = files["legacy-bn-opset13"]
    ft.manual_seed(0)
    model = resnet18(weights=path)
    for p in model.parameters():
        p.requires_grad = False
    model.fc = nn.Linear(512, 10)
    optimizer = ft.optim.SGD(model.parameters(), lr=1e-2, momentum=0.9)
    before = {k: v.numpy().copy() for k, v in model.state_dict().items()}
    x = ft.from_numpy(np.random.default_rng(1).standard_normal((2, 3, 64, 64)).astype(np.float32))
    loss = nn.CrossEntropyLoss()(model(x), ft.tensor([3, 7]))
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
    after = model.state_dict()
    changed = {k for k in before if not np.array_equal(before[k], after[k].numpy())}
    assert changed == {"fc.weight", "fc.bias"}
    assert all(p.grad is None for n, p in model.named_parameters() if not n.startswith("fc."))


# -- graphs that are not ResNet-18 ----------------------------------------------------------------


@pytest.mark.parametrize(
    "name", ["tiny_resnet_folded.onnx", "tiny_resnet_bn.onnx", "tiny_resnet_dynamo.onnx"]
)
def test_tiny_one_block_resnets_are_refused_towards_the_generic_importer(name):
    with pytest.raises(OnnxImportError, match=r"is not a ResNet-18 .*finetune\.onnx\.load"):
        resnet18(weights=DATA / name)


def _preactivation_resnet18(path: Path) -> Path:
    """The zoo's resnet18-v2 topology: BN on the input, BN-ReLU before each conv, Reshape head."""
    rng = np.random.default_rng(0)
    nodes, inits = [], []

    def const(shape):
        inits.append(
            numpy_helper.from_array(rng.normal(0, 0.1, shape).astype(np.float32), f"w{len(inits)}")
        )
        return inits[-1].name

    def op(op_type, inputs, **attrs):
        nodes.append(helper.make_node(op_type, inputs, [f"t{len(nodes)}"], **attrs))
        return nodes[-1].output[0]

    def bn(x, c):
        return op("BatchNormalization", [x, *(const((c,)) for _ in range(4))], spatial=1)

    def conv(x, out, inp, k, s, p):
        return op(
            "Conv", [x, const((out, inp, k, k))], kernel_shape=[k, k], strides=[s, s], pads=[p] * 4
        )

    x = op("Relu", [bn(conv(bn("data", 3), 64, 3, 7, 2, 3), 64)])
    x = op("MaxPool", [x], kernel_shape=[3, 3], strides=[2, 2], pads=[1] * 4)
    inplanes = 64
    for planes, stride in [
        (64, 1),
        (64, 1),
        (128, 2),
        (128, 1),
        (256, 2),
        (256, 1),
        (512, 2),
        (512, 1),
    ]:
        pre = op("Relu", [bn(x, inplanes)])
        h = conv(
            op("Relu", [bn(conv(pre, planes, inplanes, 3, stride, 1), planes)]),
            planes,
            planes,
            3,
            1,
            1,
        )
        short = conv(pre, planes, inplanes, 1, stride, 0) if planes != inplanes else x
        x, inplanes = op("Add", [h, short]), planes
    x = op("GlobalAveragePool", [op("Relu", [bn(x, 512)])])
    inits.append(numpy_helper.from_array(np.array([0, -1], np.int64), "shape"))
    x = op("Gemm", [op("Reshape", [x, "shape"]), const((1000, 512)), const((1000,))], transB=1)
    inputs = [helper.make_tensor_value_info("data", TensorProto.FLOAT, [1, 3, 64, 64])]
    inputs += [helper.make_tensor_value_info(t.name, t.data_type, list(t.dims)) for t in inits]
    output = helper.make_tensor_value_info(x, TensorProto.FLOAT, [1, 1000])
    graph = helper.make_graph(nodes, "resnetv22", inputs, [output], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 7)])
    model.ir_version = 3
    onnx.checker.check_model(model)
    onnx.save_model(model, path)
    return path


def test_preactivation_resnet18_v2_is_refused(tmp_path):
    with pytest.raises(OnnxImportError, match=r"not a ResNet-18.*finetune\.onnx\.load"):
        resnet18(weights=_preactivation_resnet18(tmp_path / "resnet18-v2.onnx"))


def test_a_changed_stride_is_named_in_the_refusal(files, tmp_path):
    model = onnx.load(files["legacy-folded-opset11"][0])
    stem = model.graph.node[0]
    next(a for a in stem.attribute if a.name == "strides").ints[:] = [1, 1]
    onnx.save_model(model, tmp_path / "stride1.onnx")
    with pytest.raises(OnnxImportError, match=r"stem: Conv '/conv_0' .* stride 1.* stride 2"):
        resnet18(weights=tmp_path / "stride1.onnx")


def test_external_data_outside_the_models_folder_is_refused(files, tmp_path):
    model = onnx.load(files["dynamo-opset20"][0], load_external_data=False)
    for tensor in model.graph.initializer:
        for entry in tensor.external_data:
            if entry.key == "location":
                entry.value = "../elsewhere.data"
    (tmp_path / "inner").mkdir()
    onnx.save_model(model, tmp_path / "inner" / "escape.onnx")
    with pytest.raises(OnnxImportError, match="escape.onnx"):
        resnet18(weights=tmp_path / "inner" / "escape.onnx")


def test_weights_and_pretrained_together_is_a_mistake(files):
    with pytest.raises(ValueError, match="not both"):
        resnet18(weights=files["legacy-bn-opset13"][0], pretrained=True)


@pytest.mark.parametrize("fold", [False, True], ids=["bn-kept", "bn-folded"])
def test_the_librarys_own_export_of_a_fine_tuned_resnet18_loads_back(tmp_path, fold):
    ft.manual_seed(0)
    model = resnet18(num_classes=5)
    model.load_state_dict(
        {k: ft.from_numpy(v) for k, v in random_resnet18(seed=2, classes=5).items()}, strict=False
    )
    model.eval()
    x = ft.from_numpy(np.random.default_rng(2).standard_normal((2, 3, 64, 64)).astype(np.float32))
    ft.onnx.export(model, x, tmp_path / "tuned.onnx", fold_batchnorm=fold)
    again = resnet18(weights=tmp_path / "tuned.onnx")
    assert again.fc.out_features == 5
    with ft.no_grad():
        np.testing.assert_allclose(again(x).numpy(), model(x).numpy(), atol=1e-5, rtol=1e-4)


def test_damaged_graphs_are_refused_with_import_errors_only(files):
    """Dropped inputs, swapped op types, rewired or deleted nodes: an OnnxImportError, or a
    model, never an IndexError or a hang."""
    original = onnx.load(files["legacy-folded-opset11"][0])
    rng = np.random.default_rng(0)
    outcomes = set()
    for _ in range(25):
        model = onnx.ModelProto()
        model.CopyFrom(original)
        nodes = model.graph.node
        node = nodes[int(rng.integers(len(nodes)))]
        kind = int(rng.integers(4))
        if kind == 0 and node.input:
            del node.input[-1]
        elif kind == 1:
            node.op_type = str(rng.choice(["Relu", "Identity", "Add", "Conv", "Flatten"]))
        elif kind == 2 and node.input:
            node.input[0] = nodes[int(rng.integers(len(nodes)))].output[0]
        else:
            nodes.remove(node)
        try:
            resnet18(weights=model)
            outcomes.add("loaded")
        except OnnxImportError as error:
            assert "finetune.onnx.load" in str(error) or "<ModelProto>" in str(error)
            outcomes.add("refused")
    assert "refused" in outcomes


def test_a_matmul_plus_add_head_is_a_linear_layer_too(files, tmp_path):
    path, weights = files["legacy-bn-opset13"]
    model = onnx.load(path)
    gemm = model.graph.node[-1]
    x, w, b = gemm.input
    out = gemm.output[0]
    model.graph.initializer.append(numpy_helper.from_array(weights["fc.weight"].T.copy(), "w_t"))
    model.graph.node.remove(gemm)
    model.graph.node.extend([
        helper.make_node("MatMul", [x, "w_t"], ["logits"], name="fc_matmul"),
        helper.make_node("Add", ["logits", b], [out], name="fc_add"),
    ])  # fmt: skip
    onnx.save_model(model, tmp_path / "matmul.onnx")
    imported = resnet18(weights=tmp_path / "matmul.onnx")
    np.testing.assert_array_equal(imported.fc.weight.numpy(), weights["fc.weight"])
    np.testing.assert_array_equal(imported.fc.bias.numpy(), weights["fc.bias"])
    x = np.random.default_rng(3).standard_normal((2, 3, 64, 64)).astype(np.float32)
    with ft.no_grad():
        got = imported(ft.from_numpy(x)).numpy()
    want = _onnxruntime(tmp_path / "matmul.onnx", x, per_row=False)
    np.testing.assert_allclose(got, want, atol=1e-4, rtol=1e-3)


def test_num_classes_that_contradicts_the_file_is_an_error(files):
    path, _ = files["legacy-bn-opset13"]
    assert resnet18(num_classes=7, weights=path).fc.out_features == 7
    with pytest.raises(
        ValueError, match=r"has 7 classes, not num_classes=10.*nn.Linear\(512, 10\)"
    ):
        resnet18(num_classes=10, weights=path)
