"""The on-disk feature cache: a second run skips the backbone, a changed image invalidates it,
and the head trained from cached features is the head trained without the cache."""

import os

import numpy as np
import pytest

import finetune as torch
from finetune import feature_cache, nn, optim
from finetune.data import DataLoader, ImageFolder, TensorDataset
from finetune.data import transforms as T
from finetune.data.demo import make_shapes
from finetune.train import fit


class SmallNet(nn.Module):
    def __init__(self, classes=4):
        super().__init__()
        self.conv = nn.Conv2d(3, 6, 3, stride=2, padding=1)
        self.bn = nn.BatchNorm2d(6)
        self.relu = nn.ReLU()
        self.pool = nn.AdaptiveAvgPool2d((1, 1))
        self.flatten = nn.Flatten()
        self.fc = nn.Linear(6, classes)

    def forward(self, x):
        return self.fc(self.flatten(self.pool(self.relu(self.bn(self.conv(x))))))


def eval_transform(size):
    return T.Compose([T.Resize(size), T.CenterCrop(size), T.ToTensor(), T.Normalize()])


def frozen_net(seed=0):
    torch.manual_seed(seed)
    model = SmallNet()
    with torch.no_grad():
        model.bn.running_mean.copy_(torch.tensor([0.1, -0.2, 0.3, 0.0, 0.05, -0.1]))
        model.bn.running_var.copy_(torch.tensor([1.5, 0.5, 2.0, 1.0, 0.8, 1.2]))
    for p in model.parameters():
        p.requires_grad = False
    model.fc = nn.Linear(6, 4)
    return model


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    return make_shapes(tmp_path_factory.mktemp("shapes"), n_per_class=5, size=32, seed=0)


@pytest.fixture
def home(tmp_path, monkeypatch):
    monkeypatch.setenv("FINETUNE_HOME", str(tmp_path / "home"))
    return tmp_path / "home"


def train(root, lines, model=None, epochs=2):
    model = model or frozen_net()
    data = ImageFolder(root / "train", eval_transform(32))
    loader = DataLoader(data, batch_size=8, shuffle=True, seed=3)
    opt = optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    fit(model, loader, opt, epochs, progress=False, log=lines.append)
    return model


def test_a_second_run_reads_the_features_and_reaches_the_same_head(images, home):
    first_lines, second_lines = [], []
    first = train(images, first_lines)
    assert any(line.startswith("cached backbone features of 20 samples") for line in first_lines)
    assert len(list((home / "features").glob("*.npz"))) == 1

    calls = []
    model = frozen_net()
    model.conv.register_forward_hook(lambda *_: calls.append(1))
    second = train(images, second_lines, model=model)
    assert calls == []  # the backbone never ran
    assert any("read backbone features of 20 samples from cache" in line for line in second_lines)
    np.testing.assert_array_equal(
        second.fc.weight.detach().numpy(), first.fc.weight.detach().numpy()
    )

    without = frozen_net()
    opt = optim.SGD(without.parameters(), lr=0.1, momentum=0.9)
    loader = DataLoader(
        ImageFolder(images / "train", eval_transform(32)), batch_size=8, shuffle=True, seed=3
    )
    fit(without, loader, opt, 2, progress=False, cache_features=False, log=None)
    np.testing.assert_allclose(
        second.fc.weight.detach().numpy(), without.fc.weight.detach().numpy(), rtol=1e-5, atol=1e-6
    )


def test_touching_an_image_or_changing_the_backbone_or_transform_invalidates(images, home):
    model = frozen_net()
    data = ImageFolder(images / "train", eval_transform(32))
    key = feature_cache.cache_path(model, model.fc, data)
    same = frozen_net()
    assert key == feature_cache.cache_path(same, same.fc, data)
    model.fc = nn.Linear(6, 9)  # a new head does not change the features
    assert feature_cache.cache_path(model, model.fc, data) == key

    path = data.samples[3][0]
    stat = os.stat(path)
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000_000))
    touched = feature_cache.cache_path(
        model, model.fc, ImageFolder(images / "train", eval_transform(32))
    )
    assert touched != key

    other = frozen_net(seed=1)
    assert feature_cache.cache_path(other, other.fc, data) != touched
    assert (
        feature_cache.cache_path(model, model.fc, ImageFolder(images / "train", eval_transform(24)))
        != touched
    )

    lines = []
    train(images, lines)
    with open(path, "ab") as f:
        f.write(b"\0")  # one byte more: a different size, a new entry
    lines.clear()
    train(images, lines)
    assert any(line.startswith("cached backbone features") for line in lines)
    assert len(list((home / "features").glob("*.npz"))) == 2


def test_a_damaged_entry_is_recomputed_not_trusted(images, home):
    train(images, [])
    (entry,) = (home / "features").glob("*.npz")
    entry.write_bytes(b"not an archive")
    lines = []
    train(images, lines)
    assert any(line.startswith("cached backbone features") for line in lines)
    assert feature_cache.load(entry) is not None


def test_in_memory_data_sets_are_not_cached_on_disk(home):
    x = torch.from_numpy(np.random.default_rng(0).standard_normal((8, 3, 8, 8)).astype(np.float32))
    data = TensorDataset(x, torch.from_numpy(np.arange(8) % 4))
    model = frozen_net()
    assert feature_cache.cache_path(model, model.fc, data) is None
    fit(
        model,
        DataLoader(data, 4),
        optim.SGD(model.parameters(), lr=0.1),
        1,
        progress=False,
        log=None,
    )
    assert not (home / "features").exists()


def test_the_cache_can_be_turned_off_and_stays_within_its_size(images, home, monkeypatch):
    monkeypatch.setenv("FINETUNE_FEATURE_CACHE", "0")
    train(images, [], epochs=1)
    assert not (home / "features").exists()

    monkeypatch.delenv("FINETUNE_FEATURE_CACHE")
    folder = home / "features"
    folder.mkdir(parents=True)
    old = folder / "old.npz"
    old.write_bytes(b"x" * 4000)
    os.utime(old, ns=(0, 0))
    monkeypatch.setenv("FINETUNE_FEATURE_CACHE_GB", "0.000004")  # 4 kB: room for one entry
    train(images, [], epochs=1)
    assert not old.exists()
    assert len(list(folder.glob("*.npz"))) == 1
