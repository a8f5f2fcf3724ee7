"""Issue 8 beyond the ONNX fuzzing: shape mistakes, checkpoints that do not fit or lie about
their sizes, writes that fail half-way, non-finite gradients, Ctrl-C during `finetune train`,
one-line CLI errors, and fuzzed checkpoint and image bytes. docs/reliability.md lists them."""

import copy
import errno
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import finetune as ft
from finetune import nn, optim
from finetune.errors import (
    CheckpointError,
    DataError,
    FinetuneError,
    ShapeError,
    TrainingError,
)
from finetune.train import CHECKPOINT_NAME, fit, load_checkpoint, save_checkpoint
from finetune.utils import atomic

DATA = Path(__file__).parent / "data"

# -- shape mistakes in user code ------------------------------------------------------------------

SHAPE_MISTAKES = {
    "linear_features": (
        lambda: nn.Linear(512, 10)(ft.ones(2, 256)),
        ["Linear(in_features=512", "[2, 256]"],
    ),
    "conv2d_3d_input": (
        lambda: nn.Conv2d(3, 4, 3)(ft.ones(3, 8, 8)),
        ["Conv2d(3, 4", "[3, 8, 8]", "4D"],
    ),
    "conv2d_channels": (
        lambda: nn.Conv2d(3, 4, 3)(ft.ones(1, 5, 8, 8)),
        ["Conv2d(3, 4", "3 channels", "[1, 5, 8, 8]"],
    ),
    "matmul": (lambda: ft.ones(2, 3) @ ft.ones(4, 5), ["2x3", "4x5"]),
    "batchnorm_channels": (
        lambda: nn.BatchNorm2d(4)(ft.ones(2, 3, 5, 5)),
        ["BatchNorm2d(4", "[2, 3, 5, 5]"],
    ),
    "cat": (lambda: ft.cat([ft.ones(2, 3), ft.ones(4, 5)]), ["[2, 3]", "[4, 5]"]),
    "add": (lambda: ft.ones(2, 3) + ft.ones(4, 5), ["[2, 3]", "[4, 5]", "dimension 1"]),
    "sub": (lambda: ft.ones(2, 3) - ft.ones(2, 4), ["[2, 3]", "[2, 4]"]),
    "mul": (lambda: ft.ones(3, 1, 5) * ft.ones(2, 4, 1), ["[3, 1, 5]", "[2, 4, 1]"]),
    "div": (lambda: ft.ones(2, 3) / ft.ones(3, 2), ["[2, 3]", "[3, 2]"]),
    "in_place_add": (lambda: ft.zeros(2, 3).add_(ft.ones(4, 5)), ["[2, 3]", "[4, 5]"]),
    "comparison": (lambda: ft.ones(2, 3) > ft.ones(3, 2), ["[2, 3]", "[3, 2]"]),
    "maximum": (lambda: ft.maximum(ft.ones(2, 3), ft.ones(4, 5)), ["[2, 3]", "[4, 5]"]),
    "where": (
        lambda: ft.where(ft.ones(4, 5) > 0, ft.ones(2, 3), ft.ones(2, 3)),
        ["[4, 5]", "[2, 3]"],
    ),
}


@pytest.mark.parametrize("mistake", list(SHAPE_MISTAKES))
def test_shape_mistakes_raise_shape_error_naming_layer_and_shapes(mistake):
    call, fragments = SHAPE_MISTAKES[mistake]
    with pytest.raises(ShapeError) as caught:
        call()
    message = str(caught.value)
    for fragment in fragments:
        assert fragment in message, message
    assert "operands could not be broadcast" not in message  # numpy's words never surface
    assert isinstance(caught.value, RuntimeError)  # PyTorch code catching RuntimeError still does


def test_broadcast_error_uses_pytorchs_wording():
    with pytest.raises(RuntimeError) as caught:
        ft.ones(2, 3) + ft.ones(4, 5)
    assert str(caught.value).startswith(
        "The size of tensor a (3) must match the size of tensor b (5) at non-singleton dimension 1"
    )


# -- state dicts and checkpoints that do not fit leave everything untouched -----------------------


def _net():
    ft.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.Flatten(), nn.Linear(4, 2))


def _snapshot(model):
    return {k: v.numpy().copy() for k, v in model.state_dict().items()}


def _assert_same(model, snapshot):
    now = _snapshot(model)
    assert now.keys() == snapshot.keys()
    for key, value in snapshot.items():
        np.testing.assert_array_equal(now[key], value, err_msg=key)


def _other_state(change):
    ft.manual_seed(1)
    state = {k: v.clone() for k, v in _net().state_dict().items()}  # different values
    change(state)
    return state


BAD_STATE_DICTS = {
    "missing_key": (lambda s: s.pop("3.bias"), CheckpointError, ["Missing key(s)", '"3.bias"']),
    "unexpected_key": (
        lambda s: s.update({"4.weight": ft.ones(1)}),
        CheckpointError,
        ["Unexpected key(s)", '"4.weight"'],
    ),
    "wrong_shape": (
        lambda s: s.update({"3.weight": ft.ones(3, 4)}),
        ShapeError,
        ["3.weight", "[3, 4]", "[2, 4]"],
    ),
    "strings": (
        lambda s: s.update({"3.bias": np.array(["a", "b"])}),
        CheckpointError,
        ["3.bias", "<U1"],
    ),
}


@pytest.mark.parametrize("case", list(BAD_STATE_DICTS))
def test_bad_state_dict_names_keys_and_shapes_and_loads_nothing(case):
    change, error, fragments = BAD_STATE_DICTS[case]
    model = _net()
    before = _snapshot(model)
    with pytest.raises(error) as caught:
        model.load_state_dict(_other_state(change))
    for fragment in fragments:
        assert fragment in str(caught.value)
    _assert_same(model, before)


def _trained_optimizer(model):
    opt = optim.Adam(model.parameters(), lr=0.01)
    model(ft.randn(2, 3, 3, 3)).sum().backward()
    opt.step()
    return opt


def _optimizer_snapshot(opt):
    return {
        "groups": [{k: v for k, v in g.items() if k != "params"} for g in opt.param_groups],
        "state": {
            id(p): {k: np.array(v.numpy()) for k, v in s.items()} for p, s in opt.state.items()
        },
    }


def _assert_optimizer_same(opt, snapshot):
    now = _optimizer_snapshot(opt)
    assert now["groups"] == snapshot["groups"]
    assert now["state"].keys() == snapshot["state"].keys()
    for pid, buffers in snapshot["state"].items():
        for key, value in buffers.items():
            np.testing.assert_array_equal(now["state"][pid][key], value)


def test_bad_optimizer_state_dict_leaves_the_optimizer_untouched():
    model = _net()
    opt = _trained_optimizer(model)
    before = _optimizer_snapshot(opt)
    bad = copy.deepcopy(opt.state_dict())  # state_dict() shares the live buffers, as PyTorch's
    bad["param_groups"][0]["lr"] = 123.0
    last = max(bad["state"])
    bad["state"][last]["exp_avg"] = ft.ones(7)  # the last buffer does not fit its parameter
    with pytest.raises(ShapeError, match=r"exp_avg.*\[7\]"):
        opt.load_state_dict(bad)
    _assert_optimizer_same(opt, before)
    assert opt.param_groups[0]["lr"] == 0.01


def test_another_optimizers_state_is_refused_at_load_not_at_the_next_step():
    """SGD's state loaded into Adam used to be accepted, then fail in step() with KeyError."""
    p = ft.zeros(2, requires_grad=True)
    sgd = optim.SGD([p], lr=0.1, momentum=0.9)
    p.grad = ft.ones(2)
    sgd.step()
    adam = optim.Adam([p], lr=0.01)
    before = _optimizer_snapshot(adam)
    with pytest.raises(CheckpointError, match=r"lacks the options \['amsgrad', 'betas'"):
        adam.load_state_dict(sgd.state_dict())
    _assert_optimizer_same(adam, before)
    adam.step()  # still usable


def test_resume_from_a_checkpoint_whose_optimizer_does_not_fit_changes_nothing(tmp_path):
    source = _net()
    source_opt = optim.SGD(source.parameters(), lr=0.1, momentum=0.9)
    source(ft.randn(2, 3, 3, 3)).sum().backward()
    source_opt.step()
    for p in source.parameters():
        p.data.add_(1.0)  # the checkpoint's weights differ from the target's
    path = tmp_path / CHECKPOINT_NAME
    save_checkpoint(path, source, source_opt, None, 1, 0, [], None)

    model = _net()
    head = list(model.parameters())[-2:]  # this run trains only the head: 2 parameters, not 6
    opt = optim.SGD(head, lr=0.1, momentum=0.9)
    model(ft.randn(2, 3, 3, 3)).sum().backward()
    opt.step()
    before, opt_before = _snapshot(model), _optimizer_snapshot(opt)
    with pytest.raises(ShapeError, match="group 0 has 6 parameters saved, 2 in this SGD"):
        load_checkpoint(path, model, opt, None)
    _assert_same(model, before)
    _assert_optimizer_same(opt, opt_before)


def test_a_file_that_is_not_a_training_checkpoint_is_refused_by_name(tmp_path):
    path = tmp_path / CHECKPOINT_NAME
    ft.save({"weights": ft.ones(2)}, path)
    model = _net()
    before = _snapshot(model)
    with pytest.raises(CheckpointError, match=r"not a training checkpoint \(missing model"):
        load_checkpoint(path, model, optim.SGD(model.parameters(), lr=0.1), None)
    _assert_same(model, before)


def test_a_checkpoint_entry_declaring_more_than_it_stores_is_refused_before_allocation(tmp_path):
    """numpy allocates what an .npy header declares before reading; a hostile header claiming
    10^10 floats (37 GiB) over 64 stored bytes is refused by name instead."""
    import io
    import zipfile

    path = tmp_path / "bomb.npz"
    ft.save({"w": ft.ones(2)}, path)
    with zipfile.ZipFile(path) as archive:
        entries = {n: archive.read(n) for n in archive.namelist()}
    header = io.BytesIO()
    np.lib.format.write_array_header_1_0(
        header, {"descr": "<f4", "fortran_order": False, "shape": (10**5, 10**5)}
    )
    entries["arr_0.npy"] = header.getvalue() + bytes(64)
    with zipfile.ZipFile(path, "w") as archive:
        for member, data in entries.items():
            archive.writestr(member, data)
    with pytest.raises(CheckpointError, match=r"bomb.npz: entry 'arr_0' declares shape \[100000"):
        ft.load(path)


@pytest.mark.parametrize("field, value", [("epoch", "x"), ("history", 5), ("step", -1), ("rng", 7)])
def test_a_checkpoint_with_damaged_fields_is_refused_before_anything_loads(tmp_path, field, value):
    model = _net()
    opt = optim.SGD(model.parameters(), lr=0.1)
    path = tmp_path / CHECKPOINT_NAME
    save_checkpoint(path, _net(), optim.SGD(_net().parameters(), lr=0.1), None, 1, 0, [], None)
    state = ft.load(path)
    state[field] = value
    ft.save(state, path)
    before = _snapshot(model)
    with pytest.raises(CheckpointError, match=rf"damaged: its fields \['{field}'\]|\['epoch'"):
        load_checkpoint(path, model, opt, None)
    _assert_same(model, before)


# -- writes that fail half-way keep the previous checkpoint and exported model --------------------


class _LimitedFile:
    """A file that accepts ``limit`` bytes, then fails like a full disk."""

    def __init__(self, f, limit):
        self._f, self._left = f, limit

    def write(self, data):
        data = bytes(data)
        if len(data) > self._left:
            self._f.write(data[: self._left])
            self._left = 0
            raise OSError(errno.ENOSPC, "No space left on device")
        self._left -= len(data)
        return self._f.write(data)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return self._f.__exit__(*exc)

    def __getattr__(self, name):
        return getattr(self._f, name)


class _FailingDisk:
    """Stands in for ``os`` inside ``finetune.utils.atomic``: files it opens take ``limit`` bytes,
    or (``limit=None``) fsync fails with ENOSPC, as on a full disk."""

    def __init__(self, limit):
        self.limit = limit

    def fdopen(self, fd, *args, **kwargs):
        f = os.fdopen(fd, *args, **kwargs)
        return f if self.limit is None else _LimitedFile(f, self.limit)

    def fsync(self, fd):
        if self.limit is None:
            raise OSError(errno.ENOSPC, "No space left on device")
        return os.fsync(fd)

    def __getattr__(self, name):
        return getattr(os, name)


def _tiny_classifier(seed):
    ft.manual_seed(seed)
    return nn.Sequential(nn.Linear(4, 3), nn.ReLU(), nn.Linear(3, 2))


@pytest.mark.parametrize("fraction", [0.0, 0.5, 0.99, None], ids=["0%", "50%", "99%", "fsync"])
def test_failed_writes_keep_the_previous_checkpoint_and_exported_model(
    tmp_path, monkeypatch, fraction
):
    """The disk fills after ``fraction`` of the file was written (or at fsync)."""
    old = _tiny_classifier(0)
    ckpt, exported = tmp_path / CHECKPOINT_NAME, tmp_path / "model.onnx"
    save_checkpoint(ckpt, old, optim.SGD(old.parameters(), lr=0.1), None, 1, 0, [], None)
    ft.onnx.export(old, ft.zeros(1, 4), exported)
    ckpt_bytes, model_bytes = ckpt.read_bytes(), exported.read_bytes()

    def disk_full_after(size):
        limit = None if fraction is None else int(fraction * size)
        monkeypatch.setattr(atomic, "os", _FailingDisk(limit))

    new = _tiny_classifier(1)
    disk_full_after(len(ckpt_bytes))
    with pytest.raises(OSError, match="No space left"):
        save_checkpoint(ckpt, new, optim.SGD(new.parameters(), lr=0.1), None, 2, 0, [], None)
    disk_full_after(len(model_bytes))
    with pytest.raises(OSError, match="No space left"):
        ft.onnx.export(new, ft.zeros(1, 4), exported)
    monkeypatch.undo()

    assert sorted(os.listdir(tmp_path)) == [CHECKPOINT_NAME, "model.onnx"]  # no temp files left
    assert ckpt.read_bytes() == ckpt_bytes and exported.read_bytes() == model_bytes
    restored = _tiny_classifier(2)
    load_checkpoint(ckpt, restored, optim.SGD(restored.parameters(), lr=0.1), None)
    x = ft.randn(5, 4)
    with ft.no_grad():
        expected = old(x).numpy()
        np.testing.assert_array_equal(restored(x).numpy(), expected)
        np.testing.assert_allclose(ft.onnx.load(exported)(x).numpy(), expected, rtol=1e-6)


# -- non-finite gradients -------------------------------------------------------------------------


class _SqrtAtZero(nn.Module):
    """A finite loss whose gradient is not: d sqrt(p) / dp is infinite at p = 0."""

    def __init__(self):
        super().__init__()
        self.p = nn.Parameter(ft.zeros(1))
        self.fc = nn.Linear(4, 2)

    def forward(self, x):
        return self.fc(x) + ft.sqrt(self.p)


def test_non_finite_gradient_stops_naming_epoch_step_and_parameter(tmp_path):
    from finetune.data import DataLoader, TensorDataset

    model = _SqrtAtZero()
    opt = optim.SGD(model.parameters(), lr=0.1)
    ckpt = tmp_path / CHECKPOINT_NAME
    save_checkpoint(ckpt, model, opt, None, 0, 0, [], None)
    good = ckpt.read_bytes()
    data = TensorDataset(ft.randn(6, 4), ft.tensor([0, 1, 0, 1, 0, 1]))
    with pytest.raises(TrainingError, match=r"non-finite gradient for p at epoch 1 step 1"):
        fit(
            model,
            DataLoader(data, batch_size=3),
            opt,
            2,
            checkpoint_dir=tmp_path,
            progress=False,
            cache_features=False,
            log=None,
        )
    assert ckpt.read_bytes() == good
    assert model.p.item() == 0.0  # the bad step was not applied


# -- the command line: Ctrl-C then --resume; one-line errors --------------------------------------


@pytest.fixture(scope="module")
def shapes(tmp_path_factory):
    from finetune.data.demo import make_shapes

    root = tmp_path_factory.mktemp("shapes")
    make_shapes(root, n_per_class=6, size=64, seed=0, classes=("circle", "square", "star"))
    return root


def _train_argv(data, out, *extra):
    return [
        sys.executable,
        "-m",
        "finetune",
        "train",
        "--model",
        str(DATA / "tiny_resnet_bn.onnx"),
        "--data",
        str(data),
        "--out",
        str(out),
        "--epochs",
        "300",
        "--batch-size",
        "4",
        "--image-size",
        "64",
        "--workers",
        "0",
        "--quiet",
        "--seed",
        "0",
        *extra,
    ]


def _final_weights(out):
    return {k: v.numpy() for k, v in ft.load(out / CHECKPOINT_NAME)["model"].items()}


def test_ctrl_c_during_cli_training_saves_and_resume_matches_uninterrupted(shapes, tmp_path):
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    straight = tmp_path / "straight"
    subprocess.run(_train_argv(shapes, straight), check=True, capture_output=True, timeout=120)

    run = tmp_path / "interrupted"
    proc = subprocess.Popen(
        _train_argv(shapes, run), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env
    )
    for line in proc.stdout:
        if line.startswith("epoch=3 "):
            proc.send_signal(signal.SIGINT)
            break
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 130, stderr
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and "training interrupted at epoch" in lines[0], stderr
    assert (run / CHECKPOINT_NAME).exists() and not (run / "model.onnx").exists()
    interrupted_at = int(lines[0].split("at epoch ")[1].split()[0])
    assert interrupted_at < 300

    subprocess.run(
        _train_argv(shapes, run, "--resume"), check=True, capture_output=True, timeout=120
    )
    resumed, expected = _final_weights(run), _final_weights(straight)
    assert resumed.keys() == expected.keys()
    for key in expected:
        np.testing.assert_array_equal(resumed[key], expected[key], err_msg=key)


def _cli(*argv):
    return subprocess.run(
        [sys.executable, "-m", "finetune", *map(str, argv)],
        capture_output=True,
        text=True,
        timeout=120,
    )


def _assert_one_line_error(proc, *fragments):
    assert proc.returncode not in (0, None)
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("finetune: error:"), proc.stderr
    for fragment in fragments:
        assert fragment in lines[0], lines[0]


def test_cli_refuses_a_pickle_checkpoint_in_one_line(tmp_path):
    import pickle

    path = tmp_path / "evil.npz"
    path.write_bytes(pickle.dumps({"model": 1}))
    proc = _cli(
        "export",
        "--model",
        DATA / "tiny_resnet_bn.onnx",
        "--checkpoint",
        path,
        "--out",
        tmp_path / "m.onnx",
        "--image-size",
        "64",
    )
    _assert_one_line_error(proc, "evil.npz")
    assert not (tmp_path / "m.onnx").exists()


def test_cli_resume_from_a_foreign_checkpoint_is_one_line(shapes, tmp_path):
    ft.save({"weights": ft.ones(2)}, tmp_path / CHECKPOINT_NAME)
    proc = _cli(*_train_argv(shapes, tmp_path, "--resume")[3:])
    _assert_one_line_error(proc, "not a training checkpoint")


def _external_weight_model(path: Path, location: str) -> Path:
    """A MatMul model whose 2x2 weight lives in the external file ``location``."""
    from onnx import TensorProto, helper

    weight = TensorProto(
        name="w", data_type=TensorProto.FLOAT, dims=[2, 2], data_location=TensorProto.EXTERNAL
    )
    weight.external_data.add(key="location", value=location)
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["y"])],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 2])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 2])],
        [weight],
    )
    path.write_bytes(helper.make_model(graph).SerializeToString())
    return path


def test_cli_refuses_external_data_outside_the_model_folder_in_one_line(tmp_path):
    import onnx

    path = _external_weight_model(tmp_path / "evil.onnx", "../../etc/passwd")
    assert onnx.load(path, load_external_data=False).graph.initializer[0].external_data
    _assert_one_line_error(_cli("inspect", path), "evil.onnx", "outside the model's folder")


def test_cli_file_system_errors_are_one_line(shapes, tmp_path):
    """An OSError (here an output folder under a file; a full disk likewise) is not a traceback."""
    (tmp_path / "file").write_text("")
    proc = _cli(*_train_argv(shapes, tmp_path / "file" / "run")[3:])
    _assert_one_line_error(proc, "Not a directory", "file/run")
    assert "Traceback" not in proc.stderr


# -- fuzzed checkpoints and images: a clear error or a result, nothing else ----------------------


def _valid_checkpoint_bytes() -> bytes:
    import io

    buffer = io.BytesIO()
    model = _tiny_classifier(0)
    ft.save({"model": model.state_dict(), "epoch": 3, "history": [{"loss": 0.5}]}, buffer)
    return buffer.getvalue()


CHECKPOINT_BYTES = _valid_checkpoint_bytes()


def _corrupt(data, original: bytes) -> bytes:
    raw = bytearray(original)
    if data.draw(st.booleans()):
        return bytes(raw[: data.draw(st.integers(0, len(raw) - 1))])
    for _ in range(data.draw(st.integers(1, 8))):
        raw[data.draw(st.integers(0, len(raw) - 1))] ^= data.draw(st.integers(1, 255))
    return bytes(raw)


@settings(max_examples=150, deadline=None, derandomize=True)
@given(data=st.data())
def test_corrupted_checkpoints_load_or_raise_checkpoint_error(tmp_path_factory, data):
    path = tmp_path_factory.mktemp("ckpt") / "corrupt.npz"
    path.write_bytes(_corrupt(data, CHECKPOINT_BYTES))
    try:
        state = ft.load(path)
    except CheckpointError as error:
        assert "corrupt.npz" in str(error)
        return
    model = _tiny_classifier(1)
    try:
        model.load_state_dict(state["model"])
    except (FinetuneError, KeyError, TypeError):  # a flipped key or type inside a readable file
        pass


@pytest.mark.parametrize("flag", [0x1, 0x20, 0x40], ids=["encrypted", "patched", "strong"])
def test_zip_flags_the_reader_cannot_handle_are_checkpoint_errors(tmp_path, flag):
    """zipfile raises RuntimeError / NotImplementedError for these (found by a deeper fuzz run)."""
    raw = bytearray(CHECKPOINT_BYTES)
    central = raw.index(b"PK\x01\x02")  # the first member's central directory entry
    raw[central + 8] |= flag
    path = tmp_path / "flagged.npz"
    path.write_bytes(bytes(raw))
    with pytest.raises(CheckpointError, match="flagged.npz is truncated or corrupt"):
        ft.load(path)


def _valid_image_bytes(fmt: str) -> bytes:
    import io

    from PIL import Image

    buffer = io.BytesIO()
    Image.new("RGB", (16, 12), (200, 30, 90)).save(buffer, format=fmt)
    return buffer.getvalue()


IMAGE_BYTES = {"png": _valid_image_bytes("PNG"), "jpg": _valid_image_bytes("JPEG")}


@settings(max_examples=150, deadline=None, derandomize=True)
@given(fmt=st.sampled_from(sorted(IMAGE_BYTES)), data=st.data())
def test_corrupted_images_load_or_raise_data_error_naming_the_file(tmp_path_factory, fmt, data):
    from finetune.data import ImageFolder
    from finetune.data import transforms as T

    root = tmp_path_factory.mktemp("images")
    (root / "cls").mkdir()
    path = root / "cls" / f"broken.{fmt}"
    path.write_bytes(_corrupt(data, IMAGE_BYTES[fmt]))
    dataset = ImageFolder(root, transform=T.Compose([T.Resize(8), T.CenterCrop(8), T.ToTensor()]))
    try:
        x, y = dataset[0]
    except DataError as error:
        assert "broken" in str(error)
        return
    assert tuple(x.shape) == (3, 8, 8) and y == 0


def test_external_data_through_a_symlink_out_of_the_folder_is_refused(tmp_path):
    """The location is resolved before the check, so a link inside the folder cannot reach out."""
    outside, folder = tmp_path / "outside", tmp_path / "model"
    outside.mkdir()
    folder.mkdir()
    (outside / "secret.bin").write_bytes(np.ones(4, np.float32).tobytes())
    (folder / "w.bin").symlink_to(outside / "secret.bin")
    path = _external_weight_model(folder / "linked.onnx", "w.bin")
    with pytest.raises(FinetuneError, match="outside the model's folder"):
        ft.onnx.load(path)
