"""``finetune.save`` / ``load``: round trips, atomic writes, and pickles refused without running."""

from __future__ import annotations

import io
import math
import os
import pathlib
import pickle
import zipfile
from collections import Counter, OrderedDict

import numpy as np
import pytest

import finetune as torch
from finetune import optim, serialization
from finetune.errors import CheckpointError
from finetune.utils.atomic import atomic_write


def _assert_same_tensor(a, b):
    assert isinstance(b, torch.Tensor)
    assert b.dtype == a.dtype and b.shape == a.shape and b.requires_grad == a.requires_grad
    np.testing.assert_array_equal(a.detach().numpy(), b.detach().numpy())


def test_round_trip_keeps_nesting_types_and_dtypes(tmp_path):
    weights = OrderedDict(
        [
            ("fc.weight", torch.randn(3, 2)),
            ("fc.bias", torch.tensor([0.5, -1.0, 2.0], dtype=torch.float64)),
            ("bn.num_batches_tracked", torch.tensor(7)),
            ("mask", torch.tensor([True, False])),
            ("pixels", torch.tensor([0, 255], dtype=torch.uint8)),
            ("scalar", torch.tensor(1.5)),
        ]
    )
    obj = {
        "model": weights,
        "trainable": torch.ones(2, requires_grad=True),
        "array": np.arange(6, dtype=np.int16).reshape(2, 3),
        "np_scalar": np.float32(0.25),
        "epoch": 3,
        "big": 2**70,
        "lr": 0.1,
        "specials": [math.inf, -math.inf],
        "name": "résnet 18 ✓",
        "flags": (True, False, None),
        "int_keys": {0: "a", 1: {"b": [1, 2.0]}},
        "tuple_key": {(1, 2): "pair"},
        "counter": Counter([3, 3, 7]),
        "empty": [{}, [], ()],
    }
    path = tmp_path / "checkpoint.pt"
    torch.save(obj, path)
    assert os.listdir(tmp_path) == ["checkpoint.pt"]  # the name is kept, no temporary left over
    back = torch.load(path)

    assert list(back) == list(obj)
    assert type(back["model"]) is OrderedDict and list(back["model"]) == list(weights)
    for key, value in weights.items():
        _assert_same_tensor(value, back["model"][key])
    _assert_same_tensor(obj["trainable"], back["trainable"])
    assert isinstance(back["array"], np.ndarray) and back["array"].dtype == np.int16
    np.testing.assert_array_equal(back["array"], obj["array"])
    assert type(back["np_scalar"]) is np.float32 and back["np_scalar"] == 0.25
    assert back["epoch"] == 3 and type(back["epoch"]) is int
    assert back["big"] == 2**70 and back["lr"] == 0.1 and back["name"] == obj["name"]
    assert back["specials"] == [math.inf, -math.inf]
    assert back["flags"] == (True, False, None) and type(back["flags"]) is tuple
    assert (
        back["int_keys"] == {0: "a", 1: {"b": [1, 2.0]}}
        and type(back["int_keys"][1]["b"][1]) is float
    )
    assert back["tuple_key"] == {(1, 2): "pair"}
    assert type(back["counter"]) is Counter and back["counter"] == Counter([3, 3, 7])
    assert back["empty"] == [{}, [], ()]


def test_nan_survives_and_a_tensor_saved_twice_comes_back_as_one_object():
    shared = torch.zeros(2)
    buffer = io.BytesIO()
    torch.save({"a": shared, "b": [shared], "nan": math.nan}, buffer)
    buffer.seek(0)
    back = torch.load(buffer)
    assert back["a"] is back["b"][0]
    assert math.isnan(back["nan"])


def test_file_objects_and_str_paths(tmp_path):
    buffer = io.BytesIO()
    torch.save([torch.arange(3)], buffer)
    buffer.seek(0)
    assert torch.load(buffer)[0].tolist() == [0, 1, 2]
    path = str(tmp_path / "x.npz")
    torch.save({"k": 1}, path)
    with open(path, "rb") as f:
        assert torch.load(f) == {"k": 1}
    assert torch.load(path, map_location="cpu", weights_only=True) == {"k": 1}


def test_a_module_state_dict_round_trips_into_a_fresh_module(tmp_path):
    nn = pytest.importorskip("finetune.nn")
    if not hasattr(nn, "Linear"):
        pytest.skip("finetune.nn.Linear is not written yet")
    model = nn.Linear(3, 2)
    torch.save(model.state_dict(), tmp_path / "linear.pt")
    fresh = nn.Linear(3, 2)
    fresh.load_state_dict(torch.load(tmp_path / "linear.pt"))
    for (name, a), (_, b) in zip(model.state_dict().items(), fresh.state_dict().items()):
        np.testing.assert_array_equal(a.numpy(), b.numpy(), err_msg=name)


def test_checkpoint_with_optimizer_state_resumes_identically(tmp_path):
    def train(p, opt, steps):
        for _ in range(steps):
            opt.zero_grad()
            ((p - 1.0) * (p - 1.0) * torch.tensor([1.0, 3.0])).sum().backward()
            opt.step()

    p = torch.tensor([0.0, 2.0], requires_grad=True)
    opt = optim.Adam([p], lr=0.1, amsgrad=True)
    train(p, opt, 3)
    path = tmp_path / "ckpt.pt"
    torch.save(
        {
            "model": {"p": p.detach()},
            "optimizer": opt.state_dict(),
            "epoch": 3,
            "history": [{"epoch": 1, "loss": 0.5, "val": None}],
        },
        path,
    )
    train(p, opt, 2)

    state = torch.load(path)
    assert state["epoch"] == 3 and state["history"] == [{"epoch": 1, "loss": 0.5, "val": None}]
    assert state["optimizer"]["state"][0]["step"].item() == 3.0
    q = torch.tensor([9.0, 9.0], requires_grad=True)
    q.data = state["model"]["p"]
    opt2 = optim.Adam([q], lr=0.5)
    opt2.load_state_dict(state["optimizer"])
    assert opt2.param_groups[0]["lr"] == 0.1 and opt2.param_groups[0]["params"] == [q]
    train(q, opt2, 2)
    np.testing.assert_array_equal(q.detach().numpy(), p.detach().numpy())


def test_unsupported_objects_are_named_and_nothing_is_written(tmp_path):
    path = tmp_path / "bad.pt"
    with pytest.raises(CheckpointError, match=r"obj\['model'\]\['fn'\].*function"):
        torch.save({"model": {"fn": lambda x: x}}, path)
    with pytest.raises(CheckpointError, match="dtype object"):
        torch.save(np.array([object()]), path)
    assert not path.exists()


def test_failed_write_leaves_the_previous_file_intact(tmp_path, monkeypatch):
    path = tmp_path / "model.pt"
    torch.save({"w": torch.ones(4), "epoch": 1}, path)
    before = path.read_bytes()

    def savez_that_dies_half_way(file, *args, **kwargs):
        file.write(b"PK\x03\x04 half an archive")
        raise OSError("No space left on device")

    monkeypatch.setattr(serialization.np, "savez", savez_that_dies_half_way)
    with pytest.raises(OSError, match="No space left"):
        torch.save({"w": torch.zeros(4), "epoch": 2}, path)
    assert path.read_bytes() == before
    assert os.listdir(tmp_path) == ["model.pt"]
    monkeypatch.undo()
    assert torch.load(path)["epoch"] == 1


def test_atomic_write_text_mode_replaces_only_on_success(tmp_path):
    path = tmp_path / "history.json"
    with atomic_write(path, "w") as f:
        f.write("[1]\n")
    assert path.read_text() == "[1]\n"
    with pytest.raises(KeyboardInterrupt), atomic_write(path, "w") as f:
        f.write("[1, 2")
        raise KeyboardInterrupt
    assert path.read_text() == "[1]\n" and os.listdir(tmp_path) == ["history.json"]
    umask = os.umask(0)
    os.umask(umask)
    assert path.stat().st_mode & 0o777 == 0o666 & ~umask
    with pytest.raises(ValueError, match="modes"):
        atomic_write(path, "a").__enter__()


class _Touch:
    """A pickle payload: unpickling it creates ``path``, the harmless stand-in for running code."""

    def __init__(self, path: pathlib.Path) -> None:
        self.path = path

    def __reduce__(self):
        return (pathlib.Path.touch, (self.path,))


def test_the_malicious_pickle_used_below_really_runs_code(tmp_path):
    marker = tmp_path / "proof"
    pickle.loads(pickle.dumps(_Touch(marker)))
    assert marker.exists()


@pytest.mark.parametrize("protocol", [0, 2, pickle.HIGHEST_PROTOCOL])
def test_a_plain_pickle_is_refused_without_unpickling(tmp_path, protocol):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pt"
    path.write_bytes(pickle.dumps({"state": _Touch(marker)}, protocol=protocol))
    with pytest.raises(CheckpointError, match="evil.pt") as info:
        torch.load(path)
    if protocol >= 2:
        assert "refuses to unpickle" in str(info.value)
    assert not marker.exists()


def test_a_pytorch_zip_checkpoint_is_refused_without_unpickling(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "resnet.pt"
    with zipfile.ZipFile(path, "w") as z:  # the layout torch.save has written since 1.6
        z.writestr("resnet/data.pkl", pickle.dumps(_Touch(marker), protocol=2))
        z.writestr("resnet/version", "3\n")
        z.writestr("resnet/data/0", b"\0" * 16)
    with pytest.raises(
        CheckpointError, match=r"resnet.pt is a PyTorch checkpoint.*refuses to unpickle"
    ):
        torch.load(path)
    assert not marker.exists()


def test_an_object_array_inside_the_archive_is_refused(tmp_path):
    genuine = io.BytesIO()
    torch.save({"w": torch.ones(2)}, genuine)
    path = tmp_path / "sneaky.npz"
    with zipfile.ZipFile(genuine) as src, zipfile.ZipFile(path, "w") as z:
        z.writestr("__structure__.npy", src.read("__structure__.npy"))
        with z.open("arr_0.npy", "w") as f:
            np.lib.format.write_array(f, np.array([_Touch(tmp_path / "pwned")], dtype=object))
    with pytest.raises(CheckpointError, match="sneaky.npz"):
        torch.load(path)
    assert not (tmp_path / "pwned").exists()


@pytest.mark.parametrize("damage", ["truncate", "flip", "empty"])
def test_truncated_or_corrupt_files_raise_checkpoint_error_naming_the_path(tmp_path, damage):
    path = tmp_path / "broken.pt"
    torch.save({"w": torch.arange(1000, dtype=torch.float32), "meta": {"epoch": 1}}, path)
    data = bytearray(path.read_bytes())
    if damage == "truncate":
        data = data[: len(data) // 2]
    elif damage == "flip":
        start = data.index(b"\x93NUMPY") + 200  # inside the first array's values
        data[start : start + 8] = bytes(b ^ 0xFF for b in data[start : start + 8])
    else:
        data = bytearray()
    path.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="broken.pt"):
        torch.load(path)


def test_a_plain_npz_is_not_mistaken_for_a_checkpoint(tmp_path):
    path = tmp_path / "arrays.npz"
    np.savez(path, w=np.ones(2))
    with pytest.raises(CheckpointError, match="not written by finetune.save"):
        torch.load(path)


def test_missing_file_raises_file_not_found_like_pytorch(tmp_path):
    with pytest.raises(FileNotFoundError):
        torch.load(tmp_path / "nope.pt")
