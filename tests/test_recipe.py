"""The recipe's parts: dataset layouts, head replacement, the plot's optional dependency."""

import sys

import pytest

import finetune as ft
from finetune import nn
from finetune.data.demo import make_shapes
from finetune.errors import DataError
from finetune.recipe import load_datasets, replace_head, save_plot
from finetune.train import History


def test_a_folder_without_train_and_val_is_split_80_20(tmp_path):
    make_shapes(tmp_path, n_per_class=5, size=16, seed=0, classes=("circle", "star"))
    train, val, classes = load_datasets(tmp_path / "train", 16, augment=False, seed=0)
    assert classes == ["circle", "star"] and (len(train), len(val)) == (8, 2)
    train2, val2, _ = load_datasets(tmp_path / "train", 16, augment=True, seed=0)
    assert val.indices == val2.indices  # the split is seeded
    assert not train2.transform.deterministic and val2.transform.deterministic


def test_train_and_val_must_have_the_same_classes(tmp_path):
    make_shapes(tmp_path, n_per_class=3, size=16, seed=0, classes=("circle", "star"))
    (tmp_path / "val" / "star").rename(tmp_path / "val" / "square")
    with pytest.raises(DataError, match="classes"):
        load_datasets(tmp_path, 16, augment=False, seed=0)


def test_replace_head_freezes_everything_else_and_finds_nested_heads():
    model = nn.Sequential(
        nn.Linear(4, 8), nn.ReLU(), nn.Sequential(nn.Dropout(0.1), nn.Linear(8, 5))
    )
    new = replace_head(model, 3)
    assert model[2][1] is new and (new.in_features, new.out_features) == (8, 3)
    trainable = [name for name, p in model.named_parameters() if p.requires_grad]
    assert trainable == ["2.1.weight", "2.1.bias"]
    assert model(ft.ones(2, 4)).shape == (2, 3)


def test_plot_is_skipped_with_a_note_without_matplotlib(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    history = History(
        [
            {
                "epoch": 1,
                "train_loss": 1.0,
                "train_acc": 0.5,
                "val_loss": 1.0,
                "val_acc": 0.5,
                "lr": 0.01,
                "seconds": 1.0,
            }
        ]
    )
    note = save_plot(history, tmp_path / "plot.png")
    assert "matplotlib" in note and not (tmp_path / "plot.png").exists()
