"""DataLoader order and per-sample randomness reproducible by seed; datasets, splits, demo set."""

import hashlib

import numpy as np
import pytest

import finetune as torch
from finetune.data import DataLoader, ImageFolder, TensorDataset, random_split
from finetune.data import transforms as T
from finetune.data.demo import SHAPES, make_shapes


def _labels(loader):
    return [y.numpy().tolist() for _, y in loader]


def test_order_depends_on_seed_and_epoch_only():
    ds = TensorDataset(torch.arange(20).float().reshape(20, 1), torch.arange(20))
    a = DataLoader(ds, batch_size=6, shuffle=True, seed=5)
    b = DataLoader(ds, batch_size=6, shuffle=True, seed=5)
    first_a, second_a = _labels(a), _labels(a)
    assert first_a == _labels(b) and second_a == _labels(b)
    assert first_a != second_a  # a new order each epoch
    c = DataLoader(ds, batch_size=6, shuffle=True, seed=5)
    c.set_epoch(1)
    assert _labels(c) == second_a  # resuming at epoch 1 reproduces it
    assert sorted(sum(first_a, [])) == list(range(20))


def test_no_shuffle_and_drop_last():
    ds = TensorDataset(torch.zeros(10, 2), torch.arange(10))
    assert _labels(DataLoader(ds, batch_size=4)) == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9]]
    loader = DataLoader(ds, batch_size=4, drop_last=True)
    assert len(loader) == 2 and len(_labels(loader)) == 2
    assert len(DataLoader(ds, batch_size=4)) == 3


def test_thread_pool_gives_the_same_batches(tmp_path):
    make_shapes(tmp_path, n_per_class=4, size=24, seed=1)
    pipeline = T.Compose([T.RandomResizedCrop(16), T.RandomHorizontalFlip(), T.ToTensor()])
    ds = ImageFolder(tmp_path / "train", transform=pipeline)
    serial = list(DataLoader(ds, batch_size=5, shuffle=True, seed=3))
    threaded = list(DataLoader(ds, batch_size=5, shuffle=True, seed=3, num_workers=2))
    for (xa, ya), (xb, yb) in zip(serial, threaded):
        np.testing.assert_array_equal(xa.numpy(), xb.numpy())
        np.testing.assert_array_equal(ya.numpy(), yb.numpy())


def test_random_split_sizes_and_determinism():
    ds = TensorDataset(torch.arange(10).float(), torch.arange(10))
    a, b = random_split(ds, [0.7, 0.3], seed=0)
    assert (len(a), len(b)) == (7, 3)
    assert sorted(a.indices + b.indices) == list(range(10))
    assert random_split(ds, [7, 3], seed=0)[0].indices == a.indices
    with pytest.raises(Exception, match="add up"):
        random_split(ds, [5, 3])


def test_collate_types():
    ds = TensorDataset(torch.ones(4, 3), torch.tensor([1, 0, 1, 0]))
    x, y = next(iter(DataLoader(ds, batch_size=4)))
    assert x.shape == (4, 3) and x.dtype == torch.float32 and y.dtype == torch.int64


def _digest(root):
    h = hashlib.sha256()
    for p in sorted(root.rglob("*.png")):
        h.update(p.relative_to(root).as_posix().encode())
        h.update(p.read_bytes())
    return h.hexdigest()


def test_make_shapes_is_deterministic_and_balanced(tmp_path):
    make_shapes(tmp_path / "a", n_per_class=5, size=32, seed=9)
    make_shapes(tmp_path / "b", n_per_class=5, size=32, seed=9)
    make_shapes(tmp_path / "c", n_per_class=5, size=32, seed=10)
    assert _digest(tmp_path / "a") == _digest(tmp_path / "b") != _digest(tmp_path / "c")
    train = ImageFolder(tmp_path / "a" / "train")
    val = ImageFolder(tmp_path / "a" / "val")
    assert train.classes == sorted(SHAPES)
    assert np.bincount(train.targets).tolist() == [5] * len(SHAPES)
    assert np.bincount(val.targets).tolist() == [2] * len(SHAPES)
