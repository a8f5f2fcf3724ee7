"""``.safetensors``: state dicts, checkpoints and torchvision-named ResNet-18 weights, read and
written with the ``safetensors`` package and checked against that package's own reader/writer."""

from __future__ import annotations

import io
import json
import math
import os
import pickle
import subprocess
import sys

import numpy as np
import onnxruntime as ort
import pytest
import safetensors.numpy as st_numpy
from safetensors import safe_open

import finetune as ft
from finetune import nn, optim, serialization
from finetune.cli import main
from finetune.errors import CheckpointError, ShapeError
from finetune.models import resnet18
from finetune.train import CHECKPOINT_NAME, load_checkpoint, save_checkpoint

DTYPES = [
    ft.float16,
    ft.float32,
    ft.float64,
    ft.int8,
    ft.int16,
    ft.int32,
    ft.int64,
    ft.uint8,
    ft.bool,
]

# what torchvision's resnet18().state_dict() holds: 62 parameters and 60 buffers
TORCHVISION_RESNET18_KEYS = 122


def _numpy(t: ft.Tensor) -> np.ndarray:
    return t.detach().numpy()


def _write_raw(path, header: dict, data: bytes) -> None:
    """A safetensors file assembled by hand, for dtypes numpy cannot express and for damage."""
    text = json.dumps(header).encode()
    text += b" " * (-len(text) % 8)
    path.write_bytes(len(text).to_bytes(8, "little") + text + data)


@pytest.fixture(scope="module")
def trained_resnet():
    """A ResNet-18 with 5 classes whose BatchNorm statistics are not the defaults."""
    ft.manual_seed(0)
    model = resnet18(num_classes=5)
    rng = np.random.default_rng(0)
    for name, buffer in model.named_buffers():
        if name.endswith("running_mean"):
            buffer.copy_(ft.tensor(rng.normal(0, 0.1, buffer.shape).astype(np.float32)))
        elif name.endswith("running_var"):
            buffer.copy_(ft.tensor(rng.uniform(0.5, 1.5, buffer.shape).astype(np.float32)))
        elif name.endswith("num_batches_tracked"):
            buffer.copy_(ft.tensor(123))
    return model.eval()


# -- finetune.save / finetune.load --------------------------------------------------------------


def test_a_state_dict_round_trips_with_every_dtype_and_its_metadata(tmp_path):
    ft.manual_seed(0)
    tensors = {f"layer.{d}": (ft.randn(2, 3) * 10).to(d) for d in DTYPES}
    tensors["bn.num_batches_tracked"] = ft.tensor(7)  # 0-d int64, as torchvision stores it
    tensors["empty"] = ft.zeros(0, 4)
    tensors["transposed"] = ft.randn(3, 2).t()  # not contiguous in memory
    metadata = {"arch": "resnet18", "classes": json.dumps(["circle", "square"])}
    path = tmp_path / "weights.safetensors"

    ft.save(tensors, path, metadata=metadata)

    assert os.listdir(tmp_path) == ["weights.safetensors"]  # no temporary file left over
    back = ft.load(path)
    assert sorted(back) == sorted(tensors)
    for key, value in tensors.items():
        assert isinstance(back[key], ft.Tensor) and not back[key].requires_grad
        assert back[key].dtype == value.dtype and back[key].shape == value.shape, key
        np.testing.assert_array_equal(_numpy(back[key]), _numpy(value), err_msg=key)
    assert serialization.read_metadata(path) == metadata
    assert serialization.load_file(path).keys() == back.keys()


def test_the_safetensors_package_reads_what_finetune_writes(tmp_path):
    ft.manual_seed(0)
    weights = {"fc.weight": ft.randn(3, 4), "fc.bias": ft.randn(3).to(ft.float16)}
    path = tmp_path / "fc.safetensors"
    ft.save(weights, path, metadata={"format": "np"})
    arrays = st_numpy.load_file(path)
    assert sorted(arrays) == ["fc.bias", "fc.weight"]
    for key, value in weights.items():
        assert arrays[key].dtype == _numpy(value).dtype
        np.testing.assert_array_equal(arrays[key], _numpy(value))
    with safe_open(path, framework="np") as f:
        assert f.metadata() == {"format": "np"}


def test_finetune_reads_what_the_safetensors_package_writes(tmp_path):
    arrays = {
        "w": np.arange(12, dtype=np.float32).reshape(3, 4),
        "half": np.array([0.5, -1.25], np.float16),
        "steps": np.array(3, np.int64),
        "mask": np.array([True, False]),
        "u16": np.array([0, 65535], np.uint16),  # finetune tensors have no uint16: widened
        "u32": np.array([4_000_000_000], np.uint32),
    }
    path = tmp_path / "hub.safetensors"
    st_numpy.save_file(arrays, path, metadata={"source": "hub"})

    back = ft.load(path)
    assert list(back) == sorted(arrays)  # safetensors.torch.load_file's order
    assert back["w"].dtype == ft.float32 and back["half"].dtype == ft.float16
    assert back["steps"].shape == () and back["steps"].item() == 3
    assert back["mask"].tolist() == [True, False]
    assert back["u16"].dtype == ft.int64 and back["u16"].tolist() == [0, 65535]
    assert back["u32"].tolist() == [4_000_000_000]
    np.testing.assert_array_equal(_numpy(back["w"]), arrays["w"])
    assert serialization.read_metadata(path) == {"source": "hub"}

    # a file object is recognised by its content, whatever its name
    buffer = io.BytesIO(st_numpy.save({"w": arrays["w"]}))
    np.testing.assert_array_equal(_numpy(ft.load(buffer)["w"]), arrays["w"])


def test_bfloat16_is_widened_exactly_and_an_unknown_dtype_is_named(tmp_path):
    values = np.array([1.0, -2.5, 3.140625, 0.0], np.float32)  # exact in bfloat16
    raw = (values.view(np.uint32) >> 16).astype("<u2").tobytes()
    path = tmp_path / "bf16.safetensors"
    _write_raw(path, {"w": {"dtype": "BF16", "shape": [2, 2], "data_offsets": [0, 8]}}, raw)
    back = ft.load(path)["w"]
    assert back.dtype == ft.float32 and back.shape == (2, 2)
    np.testing.assert_array_equal(_numpy(back).ravel(), values)

    fp8 = tmp_path / "fp8.safetensors"
    _write_raw(fp8, {"w": {"dtype": "F8_E4M3", "shape": [4], "data_offsets": [0, 4]}}, b"\0" * 4)
    with pytest.raises(CheckpointError, match=r"fp8.safetensors: tensor 'w' has dtype F8_E4M3"):
        ft.load(fp8)


@pytest.mark.parametrize(
    ("obj", "metadata", "message"),
    [
        ({"w": ft.ones(2), "epoch": 3}, None, r"obj\['epoch'\].*a int, not a tensor.*flat dict"),
        ({"model": {"w": ft.ones(2)}}, None, r"obj\['model'\].*a nested dict.*save_structured"),
        ({"w": [ft.ones(2)]}, None, r"obj\['w'\].*a nested list"),
        ([ft.ones(2)], None, r"cannot save a list as .*x.safetensors"),
        ({1: ft.ones(2)}, None, r"key 1 is a int; safetensors names tensors with strings"),
        ({"s": np.array(["a"])}, None, r"obj\['s'\].*safetensors has no <U1 type"),
        ({"w": ft.ones(2)}, {"epoch": 3}, r"metadata\['epoch'\] = 3.*str to str"),
        ({"w": ft.ones(2)}, ["a"], r"metadata must be a dict of str -> str"),
        ({"w": ft.ones(2)}, {"finetune.structure": "{}"}, r"'finetune.structure' is finetune's"),
    ],
)
def test_what_safetensors_cannot_hold_is_refused_naming_it_and_nothing_is_written(
    tmp_path, obj, metadata, message
):
    path = tmp_path / "x.safetensors"
    with pytest.raises(CheckpointError, match=message):
        ft.save(obj, path, metadata=metadata)
    assert os.listdir(tmp_path) == []


def test_metadata_needs_a_safetensors_name(tmp_path):
    with pytest.raises(CheckpointError, match=r"only in .safetensors files.*x.npz"):
        ft.save({"w": ft.ones(2)}, tmp_path / "x.npz", metadata={"a": "b"})
    assert os.listdir(tmp_path) == []


def test_a_failed_write_keeps_the_previous_file(tmp_path, monkeypatch):
    path = tmp_path / "w.safetensors"
    ft.save({"w": ft.ones(4)}, path)
    before = path.read_bytes()

    def save_that_fails(*args, **kwargs):
        raise MemoryError("out of memory while serialising")

    monkeypatch.setattr(serialization.safetensors.numpy, "save", save_that_fails)
    with pytest.raises(MemoryError):
        ft.save({"w": ft.zeros(4)}, path)
    monkeypatch.undo()
    with pytest.raises(CheckpointError, match="epoch"):
        ft.save({"w": ft.zeros(4), "epoch": 2}, path)
    assert path.read_bytes() == before and os.listdir(tmp_path) == ["w.safetensors"]


def _damaged(path, damage: str) -> None:
    data = bytearray(path.read_bytes())
    size = int.from_bytes(data[:8], "little")
    header = json.loads(data[8 : 8 + size])
    if damage == "truncated":
        data = data[: len(data) // 2]
    elif damage == "header cut":
        data = data[:20]
    elif damage == "seven bytes":
        data = data[:7]
    elif damage == "empty":
        data = bytearray()
    elif damage == "huge header size":
        data[:8] = (2**31).to_bytes(8, "little")
    elif damage == "header not JSON":
        data[9:20] = b"\xff" * 11
    elif damage == "offsets past the end":
        header["w"]["data_offsets"][1] += 400
        _write_raw(path, header, bytes(data[8 + size :]))
        return
    elif damage == "shape does not fit the bytes":
        header["w"]["shape"] = [7, 7]
        _write_raw(path, header, bytes(data[8 + size :]))
        return
    elif damage == "metadata not str":
        header["__metadata__"] = {"epoch": 3}
        _write_raw(path, header, bytes(data[8 + size :]))
        return
    path.write_bytes(bytes(data))


@pytest.mark.parametrize(
    "damage",
    [
        "truncated",
        "header cut",
        "seven bytes",
        "empty",
        "huge header size",
        "header not JSON",
        "offsets past the end",
        "shape does not fit the bytes",
        "metadata not str",
    ],
)
def test_a_corrupt_or_truncated_file_raises_checkpoint_error_naming_it(tmp_path, damage):
    path = tmp_path / "broken.safetensors"
    ft.save({"w": ft.arange(100, dtype=ft.float32)}, path, metadata={"epoch": "3"})
    _damaged(path, damage)
    with pytest.raises(CheckpointError, match="broken.safetensors"):
        ft.load(path)


def test_random_byte_flips_and_truncations_load_or_raise_checkpoint_error(tmp_path):
    model = nn.Linear(3, 2)
    opt = optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    model(ft.randn(2, 3)).sum().backward()
    opt.step()
    source = tmp_path / "good.safetensors"
    serialization.save_structured(
        {"model": model.state_dict(), "optimizer": opt.state_dict()}, source
    )
    good = source.read_bytes()
    rng = np.random.default_rng(0)
    path = tmp_path / "fuzzed.safetensors"
    for _ in range(300):
        data = bytearray(good)
        if rng.random() < 0.3:
            data = data[: rng.integers(len(data))]
        else:
            for index in rng.integers(len(data), size=rng.integers(1, 5)):
                data[index] = rng.integers(256)
        path.write_bytes(bytes(data))
        try:
            ft.load(path)
            serialization.read_metadata(path)
        except CheckpointError as error:
            assert "fuzzed.safetensors" in str(error)


def test_a_damaged_checkpoint_structure_names_the_file(tmp_path):
    path = tmp_path / "ckpt.safetensors"
    serialization.save_structured({"model": {"w": ft.ones(2)}, "epoch": 1}, path)
    data = path.read_bytes()
    size = int.from_bytes(data[:8], "little")
    header = json.loads(data[8 : 8 + size])
    document = json.loads(header["__metadata__"]["finetune.structure"])
    document["root"]["dict"][0][1]["dict"][0][1]["tensor"] = "model.gone"
    header["__metadata__"]["finetune.structure"] = json.dumps(document)
    _write_raw(path, header, data[8 + size :])
    with pytest.raises(CheckpointError, match=r"ckpt.safetensors.*names a tensor 'model.gone'"):
        ft.load(path)
    header["__metadata__"]["finetune.structure"] = "{not json"
    _write_raw(path, header, data[8 + size :])
    with pytest.raises(CheckpointError, match=r"ckpt.safetensors.*not valid JSON"):
        ft.load(path)


def test_a_pickle_named_safetensors_is_refused_without_unpickling(tmp_path):
    path = tmp_path / "evil.safetensors"
    path.write_bytes(pickle.dumps({"w": [1.0, 2.0]}, protocol=4))
    with pytest.raises(CheckpointError, match="evil.safetensors is a pickle file"):
        ft.load(path)
    with pytest.raises(CheckpointError, match="evil.safetensors is not a safetensors file"):
        serialization.read_metadata(path)


# -- nested objects and training checkpoints ----------------------------------------------------


def test_save_structured_keeps_the_nesting_and_plain_readers_see_dotted_names(tmp_path):
    ft.manual_seed(0)
    model = nn.Linear(3, 2)
    opt = optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    model(ft.randn(4, 3)).sum().backward()
    opt.step()
    shared = ft.ones(2)
    obj = {
        "model": model.state_dict(),
        "optimizer": opt.state_dict(),
        "epoch": 2,
        "history": [{"loss": math.nan, "val_acc": None}],
        "classes": ("circle", "square"),
        "a": shared,
        "b": [shared],
    }
    path = tmp_path / "checkpoint.safetensors"
    serialization.save_structured(obj, path, metadata={"note": "run 1"})

    back = ft.load(path)
    assert back["epoch"] == 2 and back["classes"] == ("circle", "square")
    assert math.isnan(back["history"][0]["loss"]) and back["history"][0]["val_acc"] is None
    assert back["a"] is back["b"][0]
    assert back["optimizer"]["param_groups"] == obj["optimizer"]["param_groups"]
    for key, value in obj["model"].items():
        np.testing.assert_array_equal(_numpy(back["model"][key]), _numpy(value))
    momentum = back["optimizer"]["state"][0]["momentum_buffer"]
    np.testing.assert_array_equal(
        _numpy(momentum), _numpy(obj["optimizer"]["state"][0]["momentum_buffer"])
    )
    plain = st_numpy.load_file(path)
    assert {"model.weight", "model.bias", "optimizer.state.0.momentum_buffer", "a"} <= set(plain)
    assert serialization.read_metadata(path)["note"] == "run 1"
    assert sorted(serialization.load_file(path)) == sorted(plain)


def _steps(model, opt, x, y, n):
    for _ in range(n):
        opt.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        opt.step()


def test_a_safetensors_checkpoint_resumes_training_identically(tmp_path):
    ft.manual_seed(0)
    x, y = ft.randn(8, 4), ft.tensor([0, 1, 2, 0, 1, 2, 0, 1])
    model = nn.Sequential(nn.Linear(4, 5), nn.BatchNorm1d(5), nn.ReLU(), nn.Linear(5, 3))
    opt = optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-4)
    _steps(model, opt, x, y, 3)
    path = tmp_path / "checkpoint.safetensors"
    history = [{"epoch": 1, "loss": 1.0, "val_acc": 0.5}]
    save_checkpoint(path, model, opt, None, 1, 3, history, None)
    _steps(model, opt, x, y, 2)

    with safe_open(path, framework="np") as f:  # any safetensors reader sees the weights
        assert "model.0.weight" in f.keys() and "optimizer.state.0.momentum_buffer" in f.keys()
    ft.manual_seed(1)
    fresh = nn.Sequential(nn.Linear(4, 5), nn.BatchNorm1d(5), nn.ReLU(), nn.Linear(5, 3))
    fresh_opt = optim.SGD(fresh.parameters(), lr=0.5)
    state = load_checkpoint(path, fresh, fresh_opt, None)
    assert state["epoch"] == 1 and state["step"] == 3 and state["history"] == history
    assert fresh_opt.param_groups[0]["lr"] == 0.1 and fresh_opt.param_groups[0]["momentum"] == 0.9
    _steps(fresh, fresh_opt, x, y, 2)
    for (name, a), (_, b) in zip(model.state_dict().items(), fresh.state_dict().items()):
        np.testing.assert_array_equal(_numpy(a), _numpy(b), err_msg=name)


def test_a_weights_only_file_is_not_taken_for_a_training_checkpoint(tmp_path):
    model = nn.Linear(2, 2)
    path = tmp_path / "checkpoint.safetensors"
    ft.save(model.state_dict(), path)
    with pytest.raises(CheckpointError, match=r"checkpoint.safetensors is not a training checkpo"):
        load_checkpoint(path, model, optim.SGD(model.parameters(), lr=0.1), None)


# -- torchvision-named ResNet-18 weights ----------------------------------------------------------


def test_resnet18_state_dict_uses_torchvision_names():
    keys = list(resnet18().state_dict())
    assert len(keys) == TORCHVISION_RESNET18_KEYS
    assert keys[:6] == [
        "conv1.weight",
        "bn1.weight",
        "bn1.bias",
        "bn1.running_mean",
        "bn1.running_var",
        "bn1.num_batches_tracked",
    ]
    assert {"layer1.0.conv1.weight", "layer2.0.downsample.0.weight"} <= set(keys)
    assert {"layer2.0.downsample.1.running_var", "layer4.1.bn2.num_batches_tracked"} <= set(keys)
    assert keys[-2:] == ["fc.weight", "fc.bias"]


def test_resnet18_loads_weights_this_library_saved(tmp_path, trained_resnet):
    path = tmp_path / "resnet18.safetensors"
    ft.save(trained_resnet.state_dict(), path)
    model = resnet18(weights=path)

    assert model.fc.out_features == 5 and not model.training
    assert not any(p.requires_grad for p in model.parameters())
    for key, value in trained_resnet.state_dict().items():
        got = model.state_dict()[key]
        assert got.dtype == value.dtype, key
        np.testing.assert_array_equal(_numpy(got), _numpy(value), err_msg=key)
    assert model.bn1.num_batches_tracked.item() == 123
    x = ft.randn(2, 3, 32, 32)
    np.testing.assert_allclose(_numpy(model(x)), _numpy(trained_resnet(x)), rtol=1e-5, atol=1e-5)


def test_resnet18_loads_half_precision_weights_the_safetensors_package_wrote(
    tmp_path, trained_resnet
):
    """A hub-style file: float16, written by safetensors itself, without num_batches_tracked
    (older torchvision checkpoints lack it)."""
    arrays = {
        key: _numpy(value).astype(np.float16)
        for key, value in trained_resnet.state_dict().items()
        if not key.endswith("num_batches_tracked")
    }
    path = tmp_path / "resnet18-fp16.safetensors"
    st_numpy.save_file(arrays, path, metadata={"format": "pt"})
    model = resnet18(weights=path)
    assert model.fc.out_features == 5
    for key, array in arrays.items():
        got = model.state_dict()[key]
        assert got.dtype == ft.float32, key
        np.testing.assert_array_equal(_numpy(got), array.astype(np.float32), err_msg=key)


def test_resnet18_loads_the_model_of_a_safetensors_checkpoint(tmp_path, trained_resnet):
    path = tmp_path / "checkpoint.safetensors"
    opt = optim.SGD(trained_resnet.fc.parameters(), lr=0.1)
    save_checkpoint(path, trained_resnet, opt, None, 1, 0, [], None)
    model = resnet18(weights=path)
    np.testing.assert_array_equal(_numpy(model.fc.weight), _numpy(trained_resnet.fc.weight))
    with pytest.raises(ValueError, match="has 5 classes, not num_classes=10"):
        resnet18(weights=path, num_classes=10)


def test_resnet18_refuses_missing_unexpected_and_misshapen_weights(tmp_path, trained_resnet):
    state = dict(trained_resnet.state_dict())
    del state["layer1.0.conv1.weight"]
    state["head.weight"] = ft.zeros(5, 512)
    state["layer2.0.conv1.weight"] = ft.zeros(128, 64, 1, 1)
    path = tmp_path / "odd.safetensors"
    ft.save(state, path)
    with pytest.raises(ShapeError) as info:
        resnet18(weights=path)
    message = str(info.value)
    assert "odd.safetensors does not hold torchvision's ResNet-18 weights" in message
    assert 'Missing key(s) in state_dict: "layer1.0.conv1.weight"' in message
    assert 'Unexpected key(s) in state_dict: "head.weight"' in message
    assert "size mismatch for layer2.0.conv1.weight" in message

    del state["layer2.0.conv1.weight"], state["head.weight"]
    ft.save(state, path)
    with pytest.raises(CheckpointError, match=r'(?s)odd.safetensors.*Missing key.*"layer2.0.conv1'):
        resnet18(weights=path)


# -- the command line -----------------------------------------------------------------------------


def test_cli_exports_resnet18_safetensors_weights_to_onnx(tmp_path, trained_resnet):
    weights, out = tmp_path / "resnet18.safetensors", tmp_path / "resnet18.onnx"
    ft.save(trained_resnet.state_dict(), weights)
    proc = subprocess.run(
        [sys.executable, "-m", "finetune", "export", "--model", str(weights), "--out", str(out)]
        + ["--image-size", "32", "--quiet"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    assert f"exported {out}" in proc.stdout
    x = np.random.default_rng(0).normal(size=(2, 3, 32, 32)).astype(np.float32)
    session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    (logits,) = session.run(None, {session.get_inputs()[0].name: x})
    assert logits.shape == (2, 5)
    np.testing.assert_allclose(logits, _numpy(trained_resnet(ft.tensor(x))), rtol=1e-4, atol=1e-4)


def test_cli_exports_a_fine_tuned_safetensors_checkpoint(tmp_path, trained_resnet):
    weights, checkpoint = tmp_path / "backbone.safetensors", tmp_path / "checkpoint.safetensors"
    out = tmp_path / "tuned.onnx"
    ft.save(trained_resnet.state_dict(), weights)
    ft.manual_seed(3)
    tuned = resnet18(weights=weights)
    tuned.fc = nn.Linear(512, 3)
    save_checkpoint(
        checkpoint, tuned, optim.SGD(tuned.fc.parameters(), lr=0.1), None, 1, 0, [], None
    )
    code = main(
        ["export", "--model", str(weights), "--num-classes", "3", "--checkpoint", str(checkpoint)]
        + ["--out", str(out), "--image-size", "32", "--quiet"]
    )
    assert code == 0
    x = np.random.default_rng(1).normal(size=(1, 3, 32, 32)).astype(np.float32)
    session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    (logits,) = session.run(None, {session.get_inputs()[0].name: x})
    np.testing.assert_allclose(logits, _numpy(tuned(ft.tensor(x))), rtol=1e-4, atol=1e-4)


def test_cli_refuses_weights_that_are_not_resnet18_in_one_line(tmp_path):
    weights, out = tmp_path / "linear.safetensors", tmp_path / "m.onnx"
    ft.save(nn.Linear(4, 2).state_dict(), weights)
    proc = subprocess.run(
        [sys.executable, "-m", "finetune", "export", "--model", str(weights), "--out", str(out)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 2
    assert proc.stderr.count("\n") == 1 and "Traceback" not in proc.stderr
    assert proc.stderr.startswith(f"finetune: error: {weights} does not hold torchvision's")
    assert '"conv1.weight"' in proc.stderr
    assert 'Unexpected key(s) in state_dict: "bias", "weight"' in proc.stderr
    assert not out.exists()


def test_cli_fine_tunes_from_resnet18_safetensors_weights(tmp_path, trained_resnet):
    from finetune.data.demo import make_shapes

    weights = tmp_path / "resnet18.safetensors"
    ft.save(trained_resnet.state_dict(), weights)
    data = make_shapes(tmp_path / "shapes", n_per_class=4, size=32, seed=0)
    run = tmp_path / "run"
    code = main(
        ["train", "--model", str(weights), "--data", str(data), "--out", str(run)]
        + ["--epochs", "1", "--image-size", "32", "--batch-size", "8", "--quiet"]
    )
    assert code == 0
    history = json.loads((run / "history.json").read_text())
    assert len(history) == 1 and math.isfinite(history[0]["train_loss"])
    assert (run / "model.onnx").exists()
    checkpoint = ft.load(run / CHECKPOINT_NAME)
    assert checkpoint["model"]["fc.weight"].shape == (4, 512)  # the new head, one per shape
    for key in ("conv1.weight", "layer4.1.bn2.running_var"):  # the frozen backbone is the file's
        np.testing.assert_array_equal(
            _numpy(checkpoint["model"][key]), _numpy(trained_resnet.state_dict()[key])
        )
