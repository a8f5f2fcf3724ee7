"""The seed's recipe end to end: a folder of images and a pretrained ResNet-18 in, a fine-tuned
ONNX model out, with history, a plot and a checkpoint in the run folder.

Frozen backbone, a new ``fc`` for the folder's classes, SGD (lr 0.01, momentum 0.9) by default.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from . import nn, optim
from . import random as _random
from .data import DataLoader, ImageFolder, Subset, random_split
from .data import transforms as T
from .errors import DataError, OnnxImportError
from .train import History, find_head, fit


@dataclass
class RunResult:
    out_dir: Path
    history: History
    classes: list[str]
    model_path: Path
    plot_path: Path | None
    notes: list[str] = field(default_factory=list)


def eval_transform(size: int) -> T.Compose:
    return T.Compose(
        [T.Resize(round(size * 256 / 224)), T.CenterCrop(size), T.ToTensor(), T.Normalize()]
    )


def train_transform(size: int, augment: bool) -> T.Compose:
    if not augment:
        return eval_transform(size)
    return T.Compose(
        [T.RandomResizedCrop(size), T.RandomHorizontalFlip(), T.ToTensor(), T.Normalize()]
    )


def load_datasets(
    data_dir: str | os.PathLike, size: int, augment: bool, seed: int, on_error: str = "raise"
):
    """``data/train`` and ``data/val`` when both exist, else a seeded 80/20 split of ``data``
    (validation images always get the evaluation transform, never augmentation)."""
    root = Path(data_dir)
    if not root.is_dir():
        raise DataError(f"data folder {root} does not exist")
    if (root / "train").is_dir() and (root / "val").is_dir():
        train = ImageFolder(root / "train", train_transform(size, augment), on_error=on_error)
        val = ImageFolder(root / "val", eval_transform(size), on_error=on_error)
        if val.classes != train.classes:
            raise DataError(
                f"{root / 'val'} has classes {val.classes} but {root / 'train'} has {train.classes}"
            )
        return train, val, train.classes
    full = ImageFolder(root, train_transform(size, augment), on_error=on_error)
    n_val = max(1, len(full) // 5)
    train, val = random_split(full, [len(full) - n_val, n_val], seed=seed)
    # the validation images are never augmented: same files, the evaluation transform
    val = Subset(ImageFolder(root, eval_transform(size), on_error=on_error), val.indices)
    return train, val, full.classes


def load_backbone(model: str, progress: bool = True, log: Callable | None = print):
    """``resnet18`` (pretrained, downloaded or cached) or a path to any ONNX classifier."""
    from . import models
    from . import onnx as fonnx

    if model == "resnet18":
        return models.resnet18(pretrained=True, progress=progress)
    path = Path(model)
    if not path.exists():
        raise OnnxImportError(f"model file {path} does not exist")
    try:
        return models.resnet18(weights=path)
    except OnnxImportError as err:
        if "finetune.onnx.load" not in str(err):
            raise
        if log:
            log(f"{path.name} is not a ResNet-18; importing it as a generic ONNX graph")
        return fonnx.load(path)


def replace_head(model: nn.Module, num_classes: int) -> nn.Module:
    """Freeze every imported weight and put a new trainable ``Linear`` in place of the head."""
    for p in model.parameters():
        p.requires_grad = False
    name, head = find_head(model)
    new = nn.Linear(head.in_features, num_classes)
    parent = model
    *path, last = name.split(".")
    for part in path:
        parent = parent[int(part)] if part.isdigit() else getattr(parent, part)
    if last.isdigit():
        parent[int(last)] = new
    else:
        setattr(parent, last, new)
    return new


def save_plot(history: History, path: Path) -> str | None:
    """Loss and accuracy curves as a PNG; returns a note instead when matplotlib is missing."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return "matplotlib is not installed: skipped the training plot (pip install matplotlib)"
    epochs = [r["epoch"] for r in history]
    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(10, 4))
    for key, ax in (("loss", ax_loss), ("acc", ax_acc)):
        ax.plot(epochs, [r[f"train_{key}"] for r in history], "o-", label="train")
        if history and history[0].get(f"val_{key}") is not None:
            ax.plot(epochs, [r[f"val_{key}"] for r in history], "o-", label="val")
        ax.set_xlabel("epoch")
        ax.set_title("loss" if key == "loss" else "accuracy")
        ax.legend()
    fig.tight_layout()
    from .utils.atomic import atomic_write

    with atomic_write(path, "wb") as f:
        fig.savefig(f, format="png", dpi=100)
    plt.close(fig)
    return None


def run(
    model: str | nn.Module,
    data_dir: str | os.PathLike,
    out_dir: str | os.PathLike,
    epochs: int = 5,
    lr: float = 0.01,
    momentum: float = 0.9,
    weight_decay: float = 0.0,
    batch_size: int = 32,
    seed: int = 0,
    augment: bool = False,
    resume: bool = False,
    image_size: int = 224,
    num_workers: int = 2,
    progress: bool = True,
    log: Callable[[str], None] | None = print,
) -> RunResult:
    """Fine-tune ``model`` on ``data_dir`` and write everything under ``out_dir``."""
    from . import onnx as fonnx
    from .creation import zeros

    _random.manual_seed(seed)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    train_set, val_set, classes = load_datasets(data_dir, image_size, augment, seed)
    if log:
        log(
            f"data: {len(train_set)} training and {len(val_set)} validation images, "
            f"{len(classes)} classes: {', '.join(classes)}"
        )
    net = load_backbone(model, progress, log) if isinstance(model, (str, os.PathLike)) else model
    replace_head(net, len(classes))
    optimizer = optim.SGD(net.parameters(), lr=lr, momentum=momentum, weight_decay=weight_decay)
    train_loader = DataLoader(
        train_set, batch_size, shuffle=True, seed=seed, num_workers=num_workers
    )
    val_loader = DataLoader(val_set, batch_size, num_workers=num_workers)
    history = fit(
        net,
        train_loader,
        optimizer,
        epochs,
        val_loader=val_loader,
        checkpoint_dir=out,
        resume=resume,
        progress=progress,
        log=log,
    )
    history.to_json(out / "history.json")
    notes = []
    plot_path: Path | None = out / "training.png"
    note = save_plot(history, plot_path)
    if note:
        notes.append(note)
        plot_path = None
        if log:
            log(note)
    model_path = out / "model.onnx"
    metadata = {
        "classes": classes,
        "mean": list(T.IMAGENET_MEAN),
        "std": list(T.IMAGENET_STD),
        "input_size": image_size,
        "resize": round(image_size * 256 / 224),
        "history": history[-1] if history else {},
    }
    fonnx.export(net, zeros(1, 3, image_size, image_size), model_path, metadata=metadata)
    if log:
        log(f"exported {model_path}")
    return RunResult(out, history, classes, model_path, plot_path, notes)
