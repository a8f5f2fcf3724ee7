"""``finetune predict`` on files and folders, with bad images among good ones and a closed pipe;
``export`` writing class names and preprocessing so predict prints them; ``inspect`` counting
parameters as PyTorch does."""

from __future__ import annotations

import importlib
import os
import subprocess
import sys

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

import finetune as ft
from finetune.cli import main
from finetune.data.demo import make_shapes

CLASSES = ["circle", "square", "triangle"]


class SmallNet(ft.nn.Module):
    """Conv-BN-ReLU, global pooling and a linear head: a stand-in for a pretrained backbone."""

    def __init__(self, classes: int = 5):
        super().__init__()
        nn = ft.nn
        self.conv1 = nn.Conv2d(3, 8, 3, stride=2, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(8)
        self.relu = nn.ReLU()
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.fc = nn.Linear(8, classes)

    def forward(self, x):
        return self.fc(ft.flatten(self.avgpool(self.relu(self.bn1(self.conv1(x)))), 1))


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    root = tmp_path_factory.mktemp("shapes")
    make_shapes(root, n_per_class=4, size=32, seed=0, classes=tuple(CLASSES), colour_coded=True)
    return root


@pytest.fixture(scope="module")
def backbone(tmp_path_factory):
    """A 5-class ONNX file with no class names, as a downloaded model might be."""
    ft.manual_seed(0)
    path = tmp_path_factory.mktemp("backbone") / "small.onnx"
    ft.onnx.export(SmallNet().eval(), ft.zeros(1, 3, 32, 32), path)
    return path


@pytest.fixture(scope="module")
def classifier(tmp_path_factory):
    """A 3-class model exported with its class names and preprocessing."""
    ft.manual_seed(1)
    path = tmp_path_factory.mktemp("classifier") / "shapes.onnx"
    metadata = {"classes": CLASSES, "input_size": 32, "resize": 36}
    ft.onnx.export(SmallNet(3).eval(), ft.zeros(1, 3, 32, 32), path, metadata=metadata)
    return path


def _run(*argv, **kwargs):
    return subprocess.run(
        [sys.executable, "-m", "finetune", *map(str, argv)],
        capture_output=True,
        text=True,
        timeout=120,
        **kwargs,
    )


def _ranked(out: str) -> dict[str, list[str]]:
    """predict's output as image path -> class names, best first."""
    result: dict[str, list[str]] = {}
    image = ""
    for line in out.splitlines():
        if line.startswith(" "):
            result[image].append(line.split()[-1])
        else:
            image = line
            result[image] = []
    return result


# -- predict --------------------------------------------------------------------------------


def test_a_folder_is_searched_recursively_and_top_k_defaults_to_the_class_count(classifier, demo):
    proc = _run("predict", "--model", classifier, demo / "val")
    assert proc.returncode == 0, proc.stderr
    ranked = _ranked(proc.stdout)
    expected = sorted(str(p) for p in (demo / "val").rglob("*.png"))
    assert list(ranked) == expected and len(expected) == 6
    for names in ranked.values():  # min(5, 3 classes): every class, each once, by name
        assert sorted(names) == CLASSES


def test_top_k_beyond_the_class_count_is_refused_naming_the_count(classifier, demo, capsys):
    image = next((demo / "val" / "circle").iterdir())
    assert main(["predict", "--model", str(classifier), str(image), "--top-k", "4"]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err == (
        f"finetune: error: argument --top-k: must be between 1 and 3 ({classifier} has 3 "
        "classes), got 4\n"
    )
    assert main(["predict", "--model", str(classifier), str(image), "--top-k", "2"]) == 0
    assert len(_ranked(capsys.readouterr().out)[str(image)]) == 2


def test_bad_images_are_reported_one_line_each_and_the_others_classified(
    classifier, demo, tmp_path, capsys
):
    good = sorted((demo / "val" / "square").iterdir())
    junk = tmp_path / "junk.png"
    junk.write_text("not an image")
    (tmp_path / "empty").mkdir()
    argv = [good[0], junk, tmp_path / "missing.jpg", tmp_path / "empty", good[1]]
    assert main(["predict", "--model", str(classifier), *map(str, argv)]) == 2
    captured = capsys.readouterr()
    assert list(_ranked(captured.out)) == [str(good[0]), str(good[1])]
    errors = captured.err.strip().splitlines()
    assert len(errors) == 4 and all(e.startswith("finetune: error: ") for e in errors)
    assert "junk.png" in errors[0] and "not an image" in errors[0]
    assert f"image file {tmp_path / 'missing.jpg'} does not exist" in errors[1]
    assert f"folder {tmp_path / 'empty'} has no image files" in errors[2]
    assert errors[3] == "finetune: error: 3 of 5 images could not be classified"


def test_a_closed_pipe_ends_quietly(classifier, demo):
    """As in ``finetune predict ... | head``: the reader is gone before predict writes."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "finetune", "predict", "--model", str(classifier), str(demo)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    proc.stdout.close()
    err = proc.stderr.read()
    proc.stderr.close()
    assert proc.wait(timeout=120) == 141  # 128 + SIGPIPE, as a shell reports for head
    assert err == b""


# -- export writes class names and preprocessing ---------------------------------------------


@pytest.fixture(scope="module")
def bare_checkpoint(backbone, tmp_path_factory):
    """A checkpoint holding only weights (3-class head), no class names or sizes."""
    from finetune.recipe import load_backbone, replace_head

    model = load_backbone(str(backbone), log=None)
    ft.manual_seed(2)
    replace_head(model, 3)
    path = tmp_path_factory.mktemp("bare") / "checkpoint.npz"
    ft.save({"model": model.state_dict()}, path)
    return path


def test_train_export_predict_prints_the_class_names(backbone, demo, tmp_path):
    run = tmp_path / "run"
    train = [
        *("train", "--model", backbone, "--data", demo, "--out", run),
        *("--epochs", "1", "--image-size", "32", "--batch-size", "4", "--workers", "0"),
        "--quiet",
    ]
    assert main(list(map(str, train))) == 0
    out = tmp_path / "exported.onnx"
    proc = _run("export", "--model", backbone, "--checkpoint", run / "checkpoint.npz", "--out", out)
    assert proc.returncode == 0, proc.stderr
    metadata = ft.onnx.load(out).metadata
    assert metadata["classes"] == CLASSES and metadata["input_size"] == 32
    assert metadata["mean"] == pytest.approx([0.485, 0.456, 0.406])
    image = sorted((demo / "val" / "triangle").iterdir())[0]
    proc = _run("predict", "--model", out, image, "--top-k", "1")
    assert proc.returncode == 0, proc.stderr
    (names,) = _ranked(proc.stdout).values()
    assert len(names) == 1 and names[0] in CLASSES


@pytest.mark.parametrize("source", ["--classes", "--classes-file", "--data"])
def test_export_takes_class_names_from_the_options(
    backbone, bare_checkpoint, demo, tmp_path, source, capsys
):
    if source == "--classes":
        names = ["--classes", "circle,square,triangle"]
    elif source == "--classes-file":
        (tmp_path / "names.txt").write_text("circle\nsquare\ntriangle\n")
        names = ["--classes", str(tmp_path / "names.txt")]
    else:
        names = ["--data", str(demo)]
    out = tmp_path / "m.onnx"
    argv = ["export", "--model", str(backbone), "--checkpoint", str(bare_checkpoint)]
    assert main([*argv, "--out", str(out), "--image-size", "32", *names]) == 0
    model = ft.onnx.load(out)
    assert model.metadata["classes"] == CLASSES
    assert model.metadata["input_size"] == 32 and model.metadata["resize"] == 37
    x = np.random.default_rng(0).standard_normal((2, 3, 32, 32)).astype(np.float32)
    with ft.no_grad():
        assert model(ft.from_numpy(x)).shape == (2, 3)


def test_export_refuses_names_that_do_not_fit_the_head(backbone, bare_checkpoint, tmp_path, capsys):
    argv = ["export", "--model", str(backbone), "--checkpoint", str(bare_checkpoint)]
    argv += ["--out", str(tmp_path / "m.onnx"), "--classes", "a,b,c", "--num-classes", "4"]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err == (
        "finetune: error: argument --num-classes: 4 does not match the 3 class names (a, b, c)\n"
    )
    assert not (tmp_path / "m.onnx").exists()


def test_export_without_names_infers_the_head_and_size_and_says_what_is_missing(
    backbone, bare_checkpoint, tmp_path, capsys
):
    out = tmp_path / "m.onnx"
    argv = ["export", "--model", str(backbone), "--checkpoint", str(bare_checkpoint)]
    assert main([*argv, "--out", str(out)]) == 0
    assert "no class names were written" in capsys.readouterr().err
    model = ft.onnx.load(out)
    assert "classes" not in model.metadata
    assert model.metadata["input_size"] == 32  # the size the backbone's file fixes


# -- inspect ------------------------------------------------------------------------------


def test_inspect_counts_parameters_as_pytorch_and_buffers_apart(tmp_path, capsys):
    """torchvision's resnet18 has 11,689,512 parameters and 9,620 buffer elements (running
    mean and variance of 20 BatchNorm layers, and their num_batches_tracked)."""
    path = tmp_path / "resnet18.onnx"
    ft.manual_seed(0)
    ft.onnx.export(ft.models.resnet18().eval(), ft.zeros(1, 3, 32, 32), path)
    assert main(["inspect", str(path)]) == 0
    out = capsys.readouterr().out.splitlines()
    assert "parameters: 11,689,512" in out
    assert (
        "buffers: 9,620 (num_batches_tracked, running_mean, running_var: state, not trained)"
        in (out)
    )
    assert any(
        line.startswith("head: fc = Linear(in_features=512, out_features=1000") for line in out
    )


def test_inspect_counts_the_files_weights_but_not_its_running_statistics(capsys):
    """PyTorch's exporter names the initializers by state_dict keys: every float one but the
    running statistics is a parameter."""
    path = "tests/data/tiny_resnet_bn.onnx"
    proto = onnx.load(path)
    expected = sum(
        int(np.prod(t.dims))
        for t in proto.graph.initializer
        if t.data_type == TensorProto.FLOAT and not t.name.endswith(("running_mean", "running_var"))
    )
    assert main(["inspect", path]) == 0
    out = capsys.readouterr().out
    assert f"parameters: {expected:,}\n" in out and expected == 78_637


def test_inspect_says_when_it_finds_no_head(tmp_path, capsys):
    graph = helper.make_graph(
        [helper.make_node("Relu", ["x"], ["y"])],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])],
    )
    path = tmp_path / "nohead.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)
    assert main(["inspect", str(path)]) == 0
    out = capsys.readouterr().out
    assert "parameters: 0\n" in out and "buffers: 0\n" in out
    (line,) = [line for line in out.splitlines() if line.startswith("head:")]
    assert line.startswith("head: none found (")


def test_inspect_names_the_file_in_every_error(tmp_path, monkeypatch, capsys):
    """An error raised deep in the import without the path still reaches the user with it."""
    from finetune.errors import OnnxImportError

    onnx_load = importlib.import_module("finetune.onnx.load")  # the package re-exports load()

    graph = helper.make_graph(
        [helper.make_node("Relu", ["x"], ["y"])],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])],
    )
    path = tmp_path / "named.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)

    def fail(model, label="<model>", freeze=True):
        raise OnnxImportError("<ModelProto>: node 'r' (Relu) failed")

    monkeypatch.setattr(onnx_load, "from_model", fail)  # where inspect imports the parsed file
    assert main(["inspect", str(path)]) == 2
    assert capsys.readouterr().err == (f"finetune: error: {path}: node 'r' (Relu) failed\n")


def test_inspect_counts_weights_that_constant_of_shape_nodes_produce(tmp_path, capsys):
    """The onnx package's light zoo files store each weight as a ConstantOfShape of its shape."""
    fill = helper.make_tensor("value", TensorProto.FLOAT, [1], [0.5])
    graph = helper.make_graph(
        [
            helper.make_node("ConstantOfShape", ["shape"], ["w"], value=fill),
            helper.make_node("MatMul", ["x", "w"], ["y"]),
        ],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 3])],
        [onnx.numpy_helper.from_array(np.array([4, 3], np.int64), "shape")],
    )
    path = tmp_path / "light.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)
    assert main(["inspect", str(path)]) == 0
    out = capsys.readouterr().out
    assert "parameters: 12\n" in out and "buffers: 0\n" in out


LIGHT_RESNET50 = os.path.join(
    os.path.dirname(onnx.__file__), "backend", "test", "data", "light", "light_resnet50.onnx"
)


@pytest.mark.skipif(not os.path.exists(LIGHT_RESNET50), reason="no light zoo in this onnx wheel")
def test_inspect_counts_the_light_resnet50_as_torchvision_does(capsys):
    assert main(["inspect", LIGHT_RESNET50]) == 0
    out = capsys.readouterr().out
    assert "parameters: 25,557,032\n" in out  # torchvision's resnet50
    assert "buffers: 53,173 (" in out  # 53 BatchNorm layers: 2 x 26,560 statistics + 53 counters
