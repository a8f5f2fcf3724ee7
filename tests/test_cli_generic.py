"""``finetune train --model X.onnx`` on whole architectures, as a user runs it: the nine model-zoo
graphs the ``onnx`` package ships (AlexNet, DenseNet-121, Inception v1/v2, ResNet-50,
ShuffleNet, SqueezeNet, VGG-19, ZFNet-512) and the torchvision classifiers under
``tests/data/architectures``, each with seeded random weights; then ``export`` and ``predict``
on the result.

The zoo's light files make every weight with ``ConstantOfShape`` (all 0.02); ``zoo_file`` turns
them into He-scaled random initializers, as a real zoo file holds its weights. Every run is one
epoch on four tiny images; two run through a subprocess, the rest in-process.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from architectures import load_proto, names
from PIL import Image
from test_onnx_zoo_light import LIGHT, MODELS

import finetune as ft
from finetune.cli import main
from finetune.predict import Predictor

CLASSES = ("blue", "red")
# image classifiers among the architecture files (the others are dense or not images)
ARCHITECTURES = [
    n for n in names() if not n.startswith(("yolo_like", "dbnet_like", "lstm_classifier"))
]
SUBPROCESS = ("light_squeezenet.onnx", "light_shufflenet.onnx")
# VGG-19 and ZFNet-512 are AlexNet's structure (Conv, LRN, MaxPool, Gemm, Softmax) at several
# times its cost (53 s and 17 s of the suite): AlexNet trains here, all three import and match
# onnxruntime in test_onnx_zoo_light
SAME_AS_ALEXNET = ("light_vgg19.onnx", "light_zfnet512.onnx")


def zoo_file(name: str, folder: Path, seed: int = 0) -> Path:
    """The light zoo file ``name`` with seeded random weights in place of its ``ConstantOfShape``
    ones, as a real zoo file holds them, written to ``folder``: He-scaled normals for weights of
    rank 2 and more, uniform in [0.5, 1.5] for vectors (``test_onnx_zoo_light``'s choice)."""
    rng = np.random.default_rng(seed)
    model = onnx.load(os.path.join(LIGHT, name))
    graph = model.graph

    def random(dims: list[int]) -> np.ndarray:
        if len(dims) >= 2:
            scale = np.float32(np.sqrt(2.0 / int(np.prod(dims[1:]))))
            return rng.standard_normal(dims, dtype=np.float32) * scale
        return rng.uniform(0.5, 1.5, dims).astype(np.float32)

    shapes = {t.name: onnx.numpy_helper.to_array(t) for t in graph.initializer}
    for tensor in graph.initializer:
        if tensor.data_type == onnx.TensorProto.FLOAT:
            tensor.CopyFrom(onnx.numpy_helper.from_array(random(list(tensor.dims)), tensor.name))
    nodes = []
    for node in graph.node:
        if node.op_type == "ConstantOfShape" and node.input[0] in shapes:
            dims = [int(d) for d in shapes[node.input[0]]]
            graph.initializer.append(onnx.numpy_helper.from_array(random(dims), node.output[0]))
            # IR version 3: every initializer is also a graph input
            graph.input.append(
                onnx.helper.make_tensor_value_info(node.output[0], onnx.TensorProto.FLOAT, dims)
            )
        else:
            nodes.append(node)
    del graph.node[:]
    graph.node.extend(nodes)
    path = folder / name
    onnx.save(model, path)
    return path


def architecture_file(name: str, folder: Path) -> Path:
    path = folder / f"{name}.onnx"
    onnx.save(load_proto(name), path)
    return path


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    """Two classes of solid-colour 20x20 images with a little noise, one of each to train and
    one to validate: every image costs a forward of a 224x224 network."""
    root = tmp_path_factory.mktemp("colours")
    rng = np.random.default_rng(0)
    for split, count in (("train", 1), ("val", 1)):
        for index, name in enumerate(CLASSES):
            folder = root / split / name
            folder.mkdir(parents=True)
            for i in range(count):
                pixels = rng.integers(0, 40, (20, 20, 3))
                pixels[..., 2 * index] += 200  # blue (channel 2) or red (channel 0)
                Image.fromarray(pixels.astype(np.uint8)).save(folder / f"{name}_{i}.png")
    return root


def _train_args(model: Path, data: Path, out: Path, *extra: str) -> list[str]:
    return [
        "train",
        "--model",
        str(model),
        "--data",
        str(data),
        "--out",
        str(out),
        "--epochs",
        "1",
        "--batch-size",
        "4",
        "--lr",
        "1e-6",  # random backbones give huge features: small steps keep the head stable
        "--workers",
        "0",
        "--quiet",
        *extra,
    ]


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "finetune", *args],
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, "FINETUNE_OFFLINE": "1"},
    )


def _check_exported(model_path: Path, data: Path, onnxruntime: bool = True) -> None:
    """The exported file names the classes, ``predict`` ranks them with probabilities that sum
    to one, and (``onnxruntime``) they are what the file itself computes: no second softmax."""
    proto = onnx.load(model_path)
    predictor = Predictor(model_path)
    assert predictor.classes == list(CLASSES)
    images = sorted(str(p) for p in (data / "val").rglob("*.png"))
    if not onnxruntime:
        images = images[:1]  # each image is a forward of the whole network
    probabilities = predictor.probabilities(images)
    assert probabilities.shape == (len(images), len(CLASSES))
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, rtol=1e-5)
    if not onnxruntime:
        return
    # the file itself, run by onnxruntime, gives what predict reports (no second softmax)
    session = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
    batch = np.stack([predictor.transform(ft.data.load_image(p)).numpy() for p in images])
    dim = proto.graph.input[0].type.tensor_type.shape.dim[0]
    if dim.HasField("dim_value"):  # a graph that keeps its file's batch size: one at a time
        rows = [session.run(None, {session.get_inputs()[0].name: x[None]})[0] for x in batch]
        out = np.concatenate(rows)
    else:
        (out,) = session.run(None, {session.get_inputs()[0].name: batch})
    if predictor.output != "probabilities":
        out = np.exp(out - out.max(axis=1, keepdims=True))
        out /= out.sum(axis=1, keepdims=True)
    np.testing.assert_allclose(probabilities, out, rtol=1e-3, atol=1e-5)


@pytest.mark.slow
@pytest.mark.skipif(not MODELS, reason="this onnx wheel ships no light models")
@pytest.mark.parametrize("name", SUBPROCESS)
def test_zoo_model_trains_exports_and_predicts_through_the_cli(name, data, tmp_path):
    model = zoo_file(name, tmp_path)
    run = _cli(*_train_args(model, data, tmp_path / "run"))
    assert run.returncode == 0, run.stderr
    assert "epoch=1 " in run.stdout and "final val_acc=" in run.stdout
    model_path = tmp_path / "run" / "model.onnx"
    _check_exported(model_path, data)
    # the Softmax the zoo file ends in is kept in the export, and predict knows it
    proto = onnx.load(model_path)
    assert proto.graph.node[-1].op_type == "Softmax"
    assert {p.key: p.value for p in proto.metadata_props}["output"] == "probabilities"
    assert proto.graph.input[0].type.tensor_type.shape.dim[0].dim_param == "batch"

    image = next((data / "val" / "red").glob("*.png"))
    shown = _cli("predict", "--model", str(model_path), str(image))
    assert shown.returncode == 0, shown.stderr
    lines = [line.split() for line in shown.stdout.splitlines()[1:] if line.strip()]
    assert sorted(name for _, name in lines) == sorted(CLASSES)
    assert abs(sum(float(p.rstrip("%")) for p, _ in lines) - 100) < 0.1

    exported = tmp_path / "again.onnx"
    again = _cli(
        "export",
        "--model",
        str(model),
        "--checkpoint",
        str(tmp_path / "run" / "checkpoint.npz"),
        "--out",
        str(exported),
        "--quiet",
    )
    assert again.returncode == 0, again.stderr
    _check_exported(exported, data)


@pytest.mark.slow
@pytest.mark.skipif(not MODELS, reason="this onnx wheel ships no light models")
@pytest.mark.parametrize("name", sorted(set(MODELS) - set(SUBPROCESS) - set(SAME_AS_ALEXNET)))
def test_zoo_model_trains_in_process(name, data, tmp_path, capsys):
    model = zoo_file(name, tmp_path)
    assert main(_train_args(model, data, tmp_path / "run")) == 0
    out = capsys.readouterr().out
    assert "epoch=1 " in out and "final val_acc=" in out
    _check_exported(tmp_path / "run" / "model.onnx", data, onnxruntime=False)


@pytest.mark.skipif(not MODELS, reason="this onnx wheel ships no light models")
def test_the_raw_light_files_constant_weights_become_parameters():
    """The shipped file as it is: weights made by ConstantOfShape (and Inception v1's reshaped
    classifier weight) are folded into parameters, so the head is a real layer to replace."""
    squeezenet = ft.onnx.load(os.path.join(LIGHT, "light_squeezenet.onnx"))
    assert sum(p.numel() for p in squeezenet.parameters()) == 1_235_496  # SqueezeNet 1.0
    inception = ft.onnx.load(os.path.join(LIGHT, "light_inception_v1.onnx"))
    name, head = ft.onnx.find_head(inception)
    assert isinstance(head, ft.nn.Linear) and (head.in_features, head.out_features) == (1024, 1000)


@pytest.mark.parametrize("name", ARCHITECTURES)
def test_architecture_trains_exports_and_predicts(name, data, tmp_path, capsys):
    model = architecture_file(name, tmp_path)
    assert main(_train_args(model, data, tmp_path / "run")) == 0
    assert "final val_acc=" in capsys.readouterr().out
    _check_exported(tmp_path / "run" / "model.onnx", data)


def test_a_model_without_a_recognisable_head_names_the_node_to_pass(data, tmp_path):
    model = architecture_file("dbnet_like_legacy", tmp_path)
    run = _cli(*_train_args(model, data, tmp_path / "run"))
    assert run.returncode == 2
    (line,) = run.stderr.strip().splitlines()
    assert "no classifier head found" in line and "--head NODE" in line
    assert "HardSigmoid" in line  # what stands between the last layer and the output
    assert "Traceback" not in run.stderr


def test_an_image_size_the_model_cannot_take_is_refused(data, tmp_path, capsys):
    model = architecture_file("mobilenet_v2_dynamo", tmp_path)
    code = main(_train_args(model, data, tmp_path / "run", "--image-size", "32"))
    assert code == 2
    err = capsys.readouterr().err
    assert "takes 64x64 images, not --image-size 32" in err and "mobilenet_v2_dynamo.onnx" in err


def test_head_names_the_layer_to_replace(data, tmp_path, capsys):
    """A Gemm whose logits are divided by a temperature: not found on its own, named with
    --head; export finds the same layer from the checkpoint, predict ranks the classes."""
    from test_generic_heads import scaled_head

    model = tmp_path / "scaled.onnx"
    onnx.save(scaled_head(), model)
    assert main(_train_args(model, data, tmp_path / "run")) == 2
    err = capsys.readouterr().err
    assert "no classifier head found" in err and "--head NODE, e.g. 'fc' (Gemm)" in err

    assert main(_train_args(model, data, tmp_path / "run", "--head", "fc")) == 0
    assert "final val_acc=" in capsys.readouterr().out
    _check_exported(tmp_path / "run" / "model.onnx", data)
    exported = tmp_path / "again.onnx"
    checkpoint = str(tmp_path / "run" / "checkpoint.npz")
    args = ["export", "--model", str(model), "--checkpoint", checkpoint, "--out", str(exported)]
    assert main([*args, "--quiet"]) == 0, capsys.readouterr().err
    _check_exported(exported, data)
