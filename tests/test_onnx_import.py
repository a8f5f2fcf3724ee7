"""``finetune.onnx.load``: module tree, freezing, head replacement, gradients, and every error a
file can cause."""

import copy
import io

import numpy as np
import onnx
import pytest
from onnx import helper
from onnx_builders import (
    initializer,
    make_model,
    random_weights,
    run_onnxruntime,
    single_node,
    tiny_cnn,
    value_info,
)

import finetune as ft
from finetune import nn
from finetune.errors import OnnxImportError


@pytest.fixture(scope="module")
def cnn():
    return tiny_cnn(np.random.default_rng(0))


def _input(batch=2, seed=1):
    return np.random.default_rng(seed).standard_normal((batch, 3, 8, 8)).astype(np.float32)


# -- structure ------------------------------------------------------------------------------------


def test_module_tree_follows_pytorch_weight_names(cnn):
    model = ft.onnx.load(cnn)
    assert isinstance(model.conv1, nn.Conv2d)
    assert isinstance(model.bn1, nn.BatchNorm2d)
    assert isinstance(model.layer1[0].conv1, nn.Conv2d)
    assert model.layer1[0].conv1 is model.get_submodule("layer1.0.conv1")
    assert isinstance(model.fc, nn.Linear)
    assert (model.fc.in_features, model.fc.out_features) == (6, 3)
    bn = {t.name: onnx.numpy_helper.to_array(t) for t in cnn.graph.initializer}
    np.testing.assert_array_equal(model.bn1.running_var.numpy(), bn["bn1.running_var"])
    assert "bn1.running_mean" in dict(model.named_buffers())
    assert model.bn1.momentum == pytest.approx(0.1)
    assert not model.training and not model.bn1.training


def test_weights_are_frozen_parameters_by_default(cnn):
    model = ft.onnx.load(cnn)
    names = {name for name, _ in model.named_parameters()}
    assert {"conv1.weight", "conv1.bias", "layer1.0.conv1.weight", "fc.weight", "fc.bias"} <= names
    assert not any(p.requires_grad for p in model.parameters())
    trainable = ft.onnx.load(cnn, freeze=False)
    assert all(p.requires_grad for p in trainable.parameters())


@pytest.mark.parametrize("batch", [1, 4])
def test_cnn_matches_onnxruntime(cnn, batch):
    x = _input(batch)
    out = ft.onnx.load(cnn)(ft.from_numpy(x))
    np.testing.assert_allclose(out.numpy(), run_onnxruntime(cnn, x)[0], atol=1e-4, rtol=1e-3)


def test_every_source_kind_loads_the_same_model(cnn, tmp_path):
    path = tmp_path / "cnn.onnx"
    onnx.save(cnn, path)
    x = ft.from_numpy(_input())
    expected = ft.onnx.load(cnn)(x).numpy()
    with open(path, "rb") as f:
        from_file = ft.onnx.load(f)
    for model in (
        ft.onnx.load(str(path)),
        ft.onnx.load(path),
        from_file,
        ft.onnx.load(path.read_bytes()),
        ft.onnx.load(io.BytesIO(path.read_bytes())),
    ):
        np.testing.assert_array_equal(model(x).numpy(), expected)


def test_assigning_a_submodule_rewires_the_graph(cnn):
    model = ft.onnx.load(cnn)
    model.fc = nn.Linear(6, 10)
    assert model(ft.from_numpy(_input(3))).shape == (3, 10)
    model.layer1[0].conv1 = nn.Conv2d(4, 6, 1, stride=2)
    assert model(ft.from_numpy(_input(3))).shape == (3, 10)


def test_replace_head_trains_only_the_head(cnn):
    model = ft.onnx.load(cnn)
    name, head = ft.onnx.find_head(model)
    assert name == "fc" and head is model.fc
    new = model.replace_head(5)
    assert model.fc is new and new.in_features == 6 and new.out_features == 5
    out = model(ft.from_numpy(_input()))
    out.sum().backward()
    with_grad = {n for n, p in model.named_parameters() if p.grad is not None}
    assert with_grad == {"fc.weight", "fc.bias"}


def test_gradients_flow_through_an_imported_cnn_in_float64(cnn):
    model = ft.onnx.load(cnn, freeze=False).double()
    x = ft.tensor(_input(1).astype(np.float64), requires_grad=True)
    weight = model.layer1[0].conv1.weight
    assert ft.autograd.gradcheck(lambda x, w: model(x), (x, weight))


def test_matmul_weights_are_the_initializer_viewed_and_train_apart():
    """A MatMul's (in, out) initializer becomes a Linear's (out, in) weight without a copy (a
    transposed view); two MatMuls reading one initializer still train as two layers."""
    rng = np.random.default_rng(3)
    m, b = random_weights(rng, (4, 5)), random_weights(rng, (5,))
    nodes = [
        helper.make_node("MatMul", ["x", "m"], ["h"], name="first"),
        helper.make_node("Add", ["h", "b"], ["a"], name="first_bias"),
        helper.make_node("MatMul", ["x", "m"], ["c"], name="second"),
        helper.make_node("Add", ["a", "c"], ["y"], name="sum"),
    ]
    proto = make_model(
        nodes,
        [value_info("x", ["n", 4])],
        [value_info("y", ["n", 5])],
        [initializer("m", m), initializer("b", b)],
    )
    model = ft.onnx.load(proto)
    layers = [mod for mod in model.modules() if isinstance(mod, nn.Linear)]
    assert len(layers) == 2
    for layer in layers:
        weight = layer.weight.numpy()
        assert weight.shape == (5, 4) and weight.T.flags.c_contiguous  # no copy at import
        np.testing.assert_array_equal(weight, m.T)
    x = rng.standard_normal((3, 4)).astype(np.float32)
    want = run_onnxruntime(proto, x)[0]
    np.testing.assert_allclose(model(ft.from_numpy(x)).numpy(), want, rtol=1e-5, atol=1e-6)

    trained, other = layers
    trained.weight.requires_grad_(True)
    optimizer = ft.optim.SGD([trained.weight], lr=0.1, momentum=0.9)
    for _ in range(2):
        optimizer.zero_grad()
        model(ft.from_numpy(x)).square().sum().backward()
        optimizer.step()
    assert not np.allclose(trained.weight.detach().numpy(), m.T)
    np.testing.assert_array_equal(other.weight.numpy(), m.T)  # neither shares the update
    with ft.no_grad():
        got = model(ft.from_numpy(x)).numpy()
    updated = trained.weight.detach().numpy()
    np.testing.assert_allclose(got, x @ updated.T + b + x @ m, rtol=1e-5, atol=1e-5)


def test_names_without_dots_come_from_mxnet_weights_or_node_names():
    rng = np.random.default_rng(0)
    nodes = [
        helper.make_node(
            "Gemm",
            ["x", "resnetv15_dense0_weight", "resnetv15_dense0_bias"],
            ["h"],
            name="resnetv15_dense0_fwd",
            transB=1,
        ),
        helper.make_node("MatMul", ["h", "anonymous"], ["y"], name="head/proj:0"),
    ]
    model = make_model(
        nodes,
        [value_info("x", ["N", 4])],
        [value_info("y", ["N", 2])],
        [
            initializer("resnetv15_dense0_weight", random_weights(rng, (3, 4))),
            initializer("resnetv15_dense0_bias", random_weights(rng, (3,))),
            initializer("anonymous", random_weights(rng, (3, 2))),
        ],
        opset=7,
    )
    imported = ft.onnx.load(model)
    assert isinstance(imported.resnetv15_dense0, nn.Linear)
    assert isinstance(imported.head_proj_0, nn.Linear)
    assert ft.onnx.find_head(imported)[0] == "head_proj_0"
    assert imported.input_names == ("x",)  # IR 3 lists the weights as inputs too
    x = np.ones((2, 4), np.float32)
    np.testing.assert_allclose(
        imported(ft.from_numpy(x)).numpy(), run_onnxruntime(model, x)[0], atol=1e-5
    )


def test_model_zoo_layout_ir3_opset7_batchnorm_spatial():
    """The zoo's resnet18-v1-7 shape: MXNet names, weights listed as inputs, BN ``spatial``."""
    rng = np.random.default_rng(3)
    weights = {
        "resnetv15_conv0_weight": random_weights(rng, (4, 3, 3, 3)),
        "resnetv15_batchnorm0_gamma": random_weights(rng, (4,)),
        "resnetv15_batchnorm0_beta": random_weights(rng, (4,)),
        "resnetv15_batchnorm0_running_mean": random_weights(rng, (4,)),
        "resnetv15_batchnorm0_running_var": 1 + np.abs(random_weights(rng, (4,))),
        "resnetv15_dense0_weight": random_weights(rng, (3, 4)),
        "resnetv15_dense0_bias": random_weights(rng, (3,)),
    }
    bn = [f"resnetv15_batchnorm0_{k}" for k in ("gamma", "beta", "running_mean", "running_var")]
    nodes = [
        helper.make_node(
            "Conv",
            ["data", "resnetv15_conv0_weight"],
            ["c"],
            name="resnetv15_conv0_fwd",
            kernel_shape=[3, 3],
            pads=[1, 1, 1, 1],
            strides=[2, 2],
        ),
        helper.make_node(
            "BatchNormalization",
            ["c", *bn],
            ["b"],
            name="resnetv15_batchnorm0_fwd",
            epsilon=1e-5,
            momentum=0.9,
            spatial=1,
        ),
        helper.make_node("Relu", ["b"], ["r"], name="resnetv15_relu0_fwd"),
        helper.make_node("GlobalAveragePool", ["r"], ["g"], name="resnetv15_pool1_fwd"),
        helper.make_node("Flatten", ["g"], ["f"], name="flatten_170"),
        helper.make_node(
            "Gemm",
            ["f", "resnetv15_dense0_weight", "resnetv15_dense0_bias"],
            ["y"],
            name="resnetv15_dense0_fwd",
            alpha=1.0,
            beta=1.0,
            transA=0,
            transB=1,
        ),
    ]
    model = make_model(
        nodes,
        [value_info("data", [1, 3, 8, 8])],
        [value_info("y", [1, 3])],
        [initializer(k, v) for k, v in weights.items()],
        opset=7,
    )
    assert model.ir_version == 3 and len(model.graph.input) == 1 + len(weights)
    imported = ft.onnx.load(model)
    assert imported.input_names == ("data",)
    assert isinstance(imported.resnetv15_conv0, nn.Conv2d)
    assert isinstance(imported.resnetv15_batchnorm0, nn.BatchNorm2d)
    assert ft.onnx.find_head(imported)[0] == "resnetv15_dense0"
    x = _input(1)
    np.testing.assert_allclose(
        imported(ft.from_numpy(x)).numpy(), run_onnxruntime(model, x)[0], atol=1e-4, rtol=1e-3
    )
    batch = _input(3)  # declared batch 1, yet any batch runs
    rows = np.concatenate([run_onnxruntime(model, batch[i : i + 1])[0] for i in range(3)])
    np.testing.assert_allclose(imported(ft.from_numpy(batch)).numpy(), rows, atol=1e-4, rtol=1e-3)
    imported.replace_head(7)
    assert imported(ft.from_numpy(x)).shape == (1, 7)


def test_preactivation_layout_batchnorm_on_the_input_and_reshape_before_gemm():
    """The zoo's resnet18-v2-7 shape: BatchNormalization straight on the graph input, and a
    Reshape to (0, -1) instead of Flatten before the Gemm head."""
    rng = np.random.default_rng(4)
    stats = {
        "resnetv22_batchnorm0_gamma": 1 + random_weights(rng, (3,), 0.1),
        "resnetv22_batchnorm0_beta": random_weights(rng, (3,)),
        "resnetv22_batchnorm0_running_mean": random_weights(rng, (3,)),
        "resnetv22_batchnorm0_running_var": 1 + np.abs(random_weights(rng, (3,))),
        "reshape_attr_tensor": np.array([0, -1], np.int64),
        "resnetv22_dense0_weight": random_weights(rng, (4, 3)),
        "resnetv22_dense0_bias": random_weights(rng, (4,)),
    }
    nodes = [
        helper.make_node(
            "BatchNormalization",
            ["data", *list(stats)[:4]],
            ["b"],
            name="resnetv22_batchnorm0_fwd",
            spatial=1,
        ),
        helper.make_node("GlobalAveragePool", ["b"], ["g"], name="resnetv22_pool1_fwd"),
        helper.make_node(
            "Reshape", ["g", "reshape_attr_tensor"], ["f"], name="resnetv22_flatten0_reshape0"
        ),
        helper.make_node(
            "Gemm",
            ["f", "resnetv22_dense0_weight", "resnetv22_dense0_bias"],
            ["y"],
            name="resnetv22_dense0_fwd",
            transB=1,
        ),
    ]
    model = make_model(
        nodes,
        [value_info("data", ["N", 3, 8, 8])],
        [value_info("y", ["N", 4])],
        [initializer(k, v) for k, v in stats.items()],
        opset=7,
    )
    imported = ft.onnx.load(model)
    assert isinstance(imported.resnetv22_batchnorm0, nn.BatchNorm2d)
    x = _input(4)
    np.testing.assert_allclose(
        imported(ft.from_numpy(x)).numpy(), run_onnxruntime(model, x)[0], atol=1e-4, rtol=1e-3
    )
    head = imported.replace_head(2)
    assert ft.onnx.find_head(imported) == ("resnetv22_dense0", head)
    assert imported(ft.from_numpy(x)).shape == (4, 2)


def test_metadata_props_become_a_dict(cnn):
    model = onnx.ModelProto()
    model.CopyFrom(cnn)
    onnx.helper.set_model_props(model, {"author": "me", "classes": "cat,dog"})
    assert ft.onnx.load(model).metadata == {"author": "me", "classes": "cat,dog"}


def test_reshape_honours_zero_and_minus_one_at_any_batch():
    model = single_node(
        "Reshape",
        {"x": np.zeros((1, 2, 3), np.float32)},
        {"s": np.array([0, -1], np.int64)},
        opset=14,
    )
    imported = ft.onnx.load(model)
    assert imported(ft.zeros(5, 2, 3)).shape == (5, 6)


# -- errors ---------------------------------------------------------------------------------------


def test_missing_file_names_the_path(tmp_path):
    with pytest.raises(OnnxImportError, match="nope.onnx: no such file"):
        ft.onnx.load(tmp_path / "nope.onnx")
    with pytest.raises(OnnxImportError, match="is a directory"):
        ft.onnx.load(tmp_path)


@pytest.mark.parametrize(
    "content",
    [
        b"\x08\x07\x12\xff\xff\xff",
        b"hello, I am a text file\n",
        b"\x89PNG\r\n\x1a\n" + bytes(range(256)),
    ],
)
def test_non_onnx_bytes_are_refused(tmp_path, content):
    path = tmp_path / "bad.onnx"
    path.write_bytes(content)
    with pytest.raises(OnnxImportError, match="bad.onnx: not"):
        ft.onnx.load(path)


def test_truncated_file_is_refused(cnn, tmp_path):
    path = tmp_path / "cut.onnx"
    path.write_bytes(cnn.SerializeToString()[:-40])
    with pytest.raises(OnnxImportError, match="cut.onnx"):
        ft.onnx.load(path)


def test_wrong_source_type_is_refused():
    with pytest.raises(OnnxImportError, match="pass a path, bytes"):
        ft.onnx.load(12)


def test_all_unsupported_operators_are_named_at_once():
    """Every default-domain op is converted, so the unsupported ones are a custom domain's."""
    nodes = [
        helper.make_node("Relu", ["x"], ["a"], name="ok"),
        helper.make_node("Warp", ["a"], ["b"], name="warp_1", domain="com.example"),
        helper.make_node("Bend", ["b"], ["c"], name="bend_1", domain="com.example"),
        helper.make_node("Warp", ["c"], ["y"], name="warp_2", domain="com.example"),
    ]
    graph = helper.make_graph(nodes, "g", [value_info("x", [2])], [value_info("y", [2])])
    opsets = [helper.make_opsetid("", 13), helper.make_opsetid("com.example", 1)]
    model = helper.make_model(graph, opset_imports=opsets)
    with pytest.raises(OnnxImportError) as error:
        ft.onnx.load(model)
    message = str(error.value)
    assert "opset 13" in message
    assert "com.example.Warp (nodes 'warp_1', 'warp_2')" in message
    assert "com.example.Bend (nodes 'bend_1')" in message


def _external_model(tmp_path, cnn):
    path = tmp_path / "m" / "cnn.onnx"
    path.parent.mkdir()
    model = onnx.ModelProto()
    model.CopyFrom(cnn)
    onnx.save(
        model,
        path,
        save_as_external_data=True,
        all_tensors_to_one_file=True,
        location="cnn.onnx.data",
        size_threshold=0,
    )
    return path


def test_external_data_next_to_the_model_is_followed(tmp_path, cnn):
    path = _external_model(tmp_path, cnn)
    x = ft.from_numpy(_input())
    np.testing.assert_array_equal(ft.onnx.load(path)(x).numpy(), ft.onnx.load(cnn)(x).numpy())


@pytest.mark.parametrize("location", ["../../etc/passwd", "/etc/passwd", "../secret.bin"])
def test_external_data_outside_the_folder_is_refused(tmp_path, cnn, location):
    path = _external_model(tmp_path, cnn)
    (tmp_path / "secret.bin").write_bytes(b"\0" * 4096)
    model = onnx.load(path, load_external_data=False)
    for tensor in model.graph.initializer:
        for entry in tensor.external_data:
            if entry.key == "location":
                entry.value = location
    onnx.save(model, path)
    with pytest.raises(OnnxImportError, match="outside the model's folder"):
        ft.onnx.load(path)


def test_missing_external_data_file_is_named(tmp_path, cnn):
    path = _external_model(tmp_path, cnn)
    (path.parent / "cnn.onnx.data").unlink()
    with pytest.raises(OnnxImportError, match="cnn.onnx.data"):
        ft.onnx.load(path)


def test_inputs_that_do_not_match_the_graph_are_refused(cnn):
    model = ft.onnx.load(cnn)
    with pytest.raises(OnnxImportError, match=r"takes 1 input\(s\) \['x'\], got 2"):
        model(ft.zeros(1, 3, 8, 8), ft.zeros(1))
    with pytest.raises(OnnxImportError, match=r"input 'x' expects shape \['\?', 3, 8, 8\]"):
        model(ft.zeros(1, 4, 8, 8))


def test_loose_float_weights_are_frozen_parameters_and_int_constants_are_not_state():
    model = make_model(
        [
            helper.make_node("Mul", ["x", "block.scale"], ["m"]),
            helper.make_node("Reshape", ["m", "shape"], ["y"]),
        ],
        [value_info("x", ["N", 2, 3])],
        [value_info("y", ["N", 6])],
        [
            initializer("block.scale", np.full(3, 2.0, np.float32)),
            initializer("shape", np.array([0, -1], np.int64)),
        ],
    )
    imported = ft.onnx.load(model)
    params = dict(imported.named_parameters())
    assert list(params) == ["block_scale"] and not params["block_scale"].requires_grad
    assert list(imported.state_dict()) == ["block_scale"]
    out = imported(ft.ones(4, 2, 3))
    np.testing.assert_array_equal(out.numpy(), np.full((4, 6), 2.0, np.float32))


def test_a_deep_copy_runs_independently(cnn):
    model = ft.onnx.load(cnn)
    twin = copy.deepcopy(model)
    twin.fc.bias.data = twin.fc.bias.data + 1
    x = ft.from_numpy(_input())
    np.testing.assert_allclose(twin(x).numpy(), model(x).numpy() + 1, atol=1e-6)


@pytest.mark.parametrize(
    "attributes",
    [{"strides": [0, 1]}, {"dilations": [1]}, {"pads": [1, 1, -1, 1]}, {"kernel_shape": [2, 2]}],
)
def test_impossible_conv_windows_are_refused_at_load(attributes):
    conv = helper.make_node("Conv", ["x", "w"], ["y"], name="conv", **attributes)
    model = make_model(
        [conv],
        [value_info("x", ["N", 2, 5, 5])],
        [value_info("y", ["N", 3, 3, 3])],
        [initializer("w", np.zeros((3, 2, 3, 3), np.float32))],
    )
    with pytest.raises(OnnxImportError, match="Conv|strides|dilations|pads"):
        ft.onnx.load(model)


def test_a_node_failing_at_run_time_is_named_with_its_input_shapes():
    model = single_node(
        "Reshape", {"x": np.zeros((1, 2, 3), np.float32)}, {"s": np.array([1, 6], np.int64)}
    )
    imported = ft.onnx.load(model)
    assert imported(ft.zeros(1, 2, 3)).shape == (1, 6)
    with pytest.raises(OnnxImportError, match=r"node 'reshape_node' \(Reshape\).*\[4, 2, 3\]"):
        imported(ft.zeros(4, 2, 3))  # the file baked batch 1 into the shape
