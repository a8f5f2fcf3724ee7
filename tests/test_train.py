"""The fit loop: cached and uncached paths agree, resume equals uninterrupted, faults are safe."""

import os
import re
import signal
import threading

import numpy as np
import pytest

import finetune as torch
from finetune import nn, optim
from finetune.data import DataLoader, TensorDataset
from finetune.errors import TrainingError
from finetune.train import (
    CHECKPOINT_NAME,
    TrainingInterrupted,
    cache_eligible,
    find_head,
    fit,
    format_epoch,
)


class TinyNet(nn.Module):
    def __init__(self, classes=3):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.bn = nn.BatchNorm2d(4)
        self.relu = nn.ReLU()
        self.pool = nn.AdaptiveAvgPool2d((1, 1))
        self.flatten = nn.Flatten()
        self.fc = nn.Linear(4, classes)

    def forward(self, x):
        return self.fc(self.flatten(self.pool(self.relu(self.bn(self.conv(x))))))


def _data(n=24, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, 3, 6, 6)).astype(np.float32)
    y = rng.integers(0, 3, n)
    x[np.arange(n), y % 3, :, :] += 1.5  # make the classes learnable
    return TensorDataset(torch.from_numpy(x), torch.from_numpy(y))


def _frozen_model(seed=0):
    torch.manual_seed(seed)
    model = TinyNet()
    with torch.no_grad():
        model.bn.running_mean.copy_(torch.tensor([0.1, -0.2, 0.3, 0.0]))
        model.bn.running_var.copy_(torch.tensor([1.5, 0.5, 2.0, 1.0]))
    for p in model.parameters():
        p.requires_grad = False
    model.fc = nn.Linear(4, 3)
    return model


def _run(epochs, cache, tmp=None, resume=False, model=None, log=None):
    model = model or _frozen_model()
    opt = optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    loader = DataLoader(_data(), batch_size=5, shuffle=True, seed=7)
    history = fit(
        model,
        loader,
        opt,
        epochs,
        checkpoint_dir=tmp,
        resume=resume,
        progress=False,
        cache_features=cache,
        log=log,
        val_loader=DataLoader(_data(9, 1), 4),
    )
    return model, history


def test_cached_and_uncached_paths_reach_the_same_head():
    cached, h1 = _run(4, cache=True)
    full, h2 = _run(4, cache=False)
    np.testing.assert_allclose(
        cached.fc.weight.detach().numpy(), full.fc.weight.detach().numpy(), rtol=1e-5, atol=1e-6
    )
    np.testing.assert_allclose(
        [r["train_loss"] for r in h1], [r["train_loss"] for r in h2], rtol=1e-5
    )
    np.testing.assert_allclose([r["val_acc"] for r in h1], [r["val_acc"] for r in h2])


def test_training_learns_and_frozen_parts_stay_bit_identical():
    model = _frozen_model()
    before = {k: v.numpy().copy() for k, v in model.state_dict().items() if not k.startswith("fc")}
    _, history = _run(6, cache=None, model=model)
    assert history[-1]["train_acc"] > 0.6 and history[-1]["train_loss"] < history[0]["train_loss"]
    for k, v in model.state_dict().items():
        if not k.startswith("fc"):
            np.testing.assert_array_equal(v.numpy(), before[k], err_msg=k)  # BN stats too


def test_cache_eligibility():
    model = _frozen_model()
    ok, _ = cache_eligible(model, model.fc, _data())
    assert ok
    model.conv.weight.requires_grad = True
    ok, reason = cache_eligible(model, model.fc, _data())
    assert not ok and "conv.weight" in reason
    assert find_head(model)[0] == "fc"


def test_epoch_line_is_parseable():
    lines = []
    _run(2, cache=True, log=lines.append)
    epoch_lines = [line for line in lines if line.startswith("epoch=")]
    assert len(epoch_lines) == 2
    pattern = (
        r"epoch=2 train_loss=\d+\.\d{3} train_acc=\d\.\d{3} val_loss=\d+\.\d{3} "
        r"val_acc=\d\.\d{3} lr=0\.1 seconds=\d+\.\d"
    )
    assert re.fullmatch(pattern, epoch_lines[1])
    assert format_epoch(
        {
            "epoch": 3,
            "train_loss": 0.4123,
            "train_acc": 0.861,
            "val_loss": 0.455,
            "val_acc": 0.842,
            "lr": 0.01,
            "seconds": 12.34,
        }
    ) == (
        "epoch=3 train_loss=0.412 train_acc=0.861 val_loss=0.455 val_acc=0.842 lr=0.01 seconds=12.3"
    )


@pytest.mark.parametrize("cache", [True, False])
def test_resume_equals_uninterrupted(tmp_path, cache):
    straight, _ = _run(4, cache)
    _run(2, cache, tmp=tmp_path)
    resumed, history = _run(4, cache, tmp=tmp_path, resume=True, model=_frozen_model(seed=99))
    assert [r["epoch"] for r in history] == [1, 2, 3, 4]
    np.testing.assert_array_equal(
        resumed.fc.weight.detach().numpy(), straight.fc.weight.detach().numpy()
    )


def test_sigterm_mid_epoch_saves_and_resume_finishes_identically(tmp_path):
    straight, _ = _run(3, cache=False)
    model = _frozen_model()
    opt = optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    loader = DataLoader(_data(), batch_size=5, shuffle=True, seed=7)
    calls = {"n": 0}
    original = model.fc.forward

    def forward_then_signal(x):
        calls["n"] += 1
        if calls["n"] == 10:  # 5 train + 3 val calls in epoch 1, then epoch 2 step 2
            os.kill(os.getpid(), signal.SIGTERM)
        return original(x)

    model.fc.forward = forward_then_signal
    assert threading.current_thread() is threading.main_thread()
    with pytest.raises(TrainingInterrupted, match="epoch 2 step 2"):
        fit(
            model,
            loader,
            opt,
            3,
            checkpoint_dir=tmp_path,
            progress=False,
            cache_features=False,
            log=None,
            val_loader=DataLoader(_data(9, 1), 4),
        )
    assert (tmp_path / CHECKPOINT_NAME).exists()
    resumed, _ = _run(3, cache=False, tmp=tmp_path, resume=True, model=_frozen_model(seed=5))
    np.testing.assert_allclose(
        resumed.fc.weight.detach().numpy(), straight.fc.weight.detach().numpy(), rtol=0, atol=0
    )


def test_non_finite_loss_stops_and_keeps_last_good_checkpoint(tmp_path):
    model, _ = _run(1, cache=True, tmp=tmp_path)
    good = (tmp_path / CHECKPOINT_NAME).read_bytes()
    opt = optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    poisoned = _data()
    poisoned.tensors[0]._data[3] = np.nan  # one corrupt sample
    loader = DataLoader(poisoned, batch_size=5, shuffle=True, seed=7)
    with pytest.raises(TrainingError, match=r"epoch 1 step \d+"):
        fit(model, loader, opt, 50, checkpoint_dir=tmp_path, progress=False, log=None)
    from finetune import load

    state = load(tmp_path / CHECKPOINT_NAME)
    assert all(np.isfinite(v.numpy()).all() for v in state["model"].values())
    assert (tmp_path / CHECKPOINT_NAME).read_bytes() == good


def test_checkpoint_folder_is_created(tmp_path):
    folder = tmp_path / "runs" / "new"
    _run(1, cache=True, tmp=folder)
    assert (folder / CHECKPOINT_NAME).exists()
