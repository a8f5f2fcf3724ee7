"""The command line end to end on a tiny demo set, and its one-line errors."""

import json
import subprocess
import sys

import numpy as np
import onnxruntime as ort
import pytest

import finetune as ft
from finetune.cli import main
from finetune.data.demo import make_shapes


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    root = tmp_path_factory.mktemp("shapes")
    make_shapes(
        root,
        n_per_class=24,
        size=32,
        seed=0,
        classes=("circle", "square", "star"),
        colour_coded=True,
    )
    return root


class SmallNet(ft.nn.Module):
    """A small ResNet-like net: conv-BN-ReLU stem, one residual block, pool, fc."""

    def __init__(self, classes=3):
        super().__init__()
        nn = ft.nn
        self.conv1 = nn.Conv2d(3, 16, 3, stride=2, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(16)
        self.conv2 = nn.Conv2d(16, 16, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(16)
        self.relu = nn.ReLU()
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.fc = nn.Linear(16, classes)

    def forward(self, x):
        x = self.relu(self.bn1(self.conv1(x)))
        x = self.relu(x + self.bn2(self.conv2(x)))
        return self.fc(ft.flatten(self.avgpool(x), 1))


@pytest.fixture(scope="module")
def pretrained(demo, tmp_path_factory):
    """The stand-in for a downloaded pretrained model: SmallNet trained here (every layer
    trainable) on the demo set, then exported to ONNX."""
    from finetune.data import DataLoader, ImageFolder
    from finetune.recipe import eval_transform
    from finetune.train import fit

    ft.manual_seed(0)
    net = SmallNet()
    data = ImageFolder(demo / "train", eval_transform(32))
    history = fit(
        net,
        DataLoader(data, 8, shuffle=True, seed=0),
        ft.optim.Adam(net.parameters(), 0.01),
        30,
        progress=False,
        log=None,
    )
    assert history[-1]["train_acc"] > 0.8
    path = tmp_path_factory.mktemp("pretrained") / "small.onnx"
    ft.onnx.export(net.eval(), ft.zeros(1, 3, 32, 32), path)
    return path


def _train_argv(model, data, out, *extra):
    return [
        "train",
        "--model",
        str(model),
        "--data",
        str(data),
        "--epochs",
        "8",
        "--batch-size",
        "8",
        "--image-size",
        "32",
        "--out",
        str(out),
        "--quiet",
        "--workers",
        "0",
        *extra,
    ]


@pytest.fixture(scope="module")
def trained(demo, pretrained, tmp_path_factory):
    out = tmp_path_factory.mktemp("run")
    code = main(_train_argv(pretrained, demo, out))
    assert code == 0
    return out


def test_train_writes_the_run_folder_and_beats_chance(trained):
    history = json.loads((trained / "history.json").read_text())
    assert [r["epoch"] for r in history] == list(range(1, 9))
    assert history[-1]["val_acc"] > 0.5  # three classes: chance is 1/3
    assert (trained / "checkpoint.npz").exists() and (trained / "model.onnx").exists()


def test_exported_model_agrees_with_the_library_in_onnxruntime(trained):
    model = ft.onnx.load(trained / "model.onnx")
    assert model.metadata["classes"] == ["circle", "square", "star"]
    x = np.random.default_rng(0).standard_normal((2, 3, 32, 32)).astype(np.float32)
    with ft.no_grad():
        ours = model(ft.from_numpy(x)).numpy()
    sess = ort.InferenceSession(str(trained / "model.onnx"), providers=["CPUExecutionProvider"])
    theirs = sess.run(None, {sess.get_inputs()[0].name: x})[0]
    np.testing.assert_allclose(ours, theirs, rtol=1e-3, atol=1e-4)


def test_predict_and_inspect(trained, demo, capsys):
    image = sorted((demo / "val" / "star").glob("*.png"))[0]
    assert (
        main(["predict", "--model", str(trained / "model.onnx"), str(image), "--top-k", "2"]) == 0
    )
    out = capsys.readouterr().out
    assert str(image) in out and out.count("%") == 2
    assert main(["inspect", str(trained / "model.onnx")]) == 0
    out = capsys.readouterr().out
    assert "opset" in out and "parameters:" in out and "Conv" in out


def test_resume_after_finishing_is_a_no_op_and_keeps_weights(trained, demo, pretrained):
    before = (trained / "model.onnx").read_bytes()
    code = main(_train_argv(pretrained, demo, trained, "--resume"))
    assert code == 0
    assert (trained / "model.onnx").read_bytes() == before


@pytest.mark.parametrize(
    "argv, message",
    [
        (["train", "--data", "/nonexistent/folder", "--out", "{tmp}"], "does not exist"),
        (
            ["train", "--model", "{tmp}/missing.onnx", "--data", "{demo}", "--out", "{tmp}"],
            "missing.onnx",
        ),
        (["inspect", "{tmp}/garbage.onnx"], "garbage.onnx"),
        (
            ["train", "--model", "{tmp}/garbage.onnx", "--data", "{empty}", "--out", "{tmp}"],
            "no image files",
        ),
    ],
)
def test_errors_are_one_line_with_nonzero_exit(tmp_path, demo, argv, message):
    (tmp_path / "garbage.onnx").write_bytes(b"\x00not a model at all")
    (tmp_path / "empty" / "cls").mkdir(parents=True)
    argv = [a.format(tmp=tmp_path, demo=demo, empty=tmp_path / "empty") for a in argv]
    proc = subprocess.run(
        [sys.executable, "-m", "finetune", *argv], capture_output=True, text=True, timeout=120
    )
    assert proc.returncode != 0
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("finetune: error:"), proc.stderr
    assert message in lines[0]
    assert "Traceback" not in proc.stderr


def test_download_failure_is_one_line_saying_where_to_put_the_file(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("FINETUNE_OFFLINE", "1")
    assert main(["download", "resnet18", "--dest", str(tmp_path), "--quiet"]) != 0
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("finetune: error:")
    assert "resnet18-v1-7.onnx" in err and str(tmp_path) in err
