"""The seed's recipe end to end: a folder of images and a pretrained ResNet-18 in, a fine-tuned
ONNX model out, with history, a plot and a checkpoint in the run folder.

Frozen backbone, a new ``fc`` for the folder's classes, SGD (lr 0.01, momentum 0.9) by default.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from . import nn, optim
from . import random as _random
from .data import DataLoader, ImageFolder, Subset, random_split
from .data import transforms as T
from .errors import CheckpointError, DataError, OnnxImportError, TrainingError
from .train import CHECKPOINT_NAME, History, find_head, fit
from .utils.lock import folder_lock


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
        train = ImageFolder(
            root / "train", train_transform(size, augment), on_error=on_error, min_classes=2
        )
        val = ImageFolder(root / "val", eval_transform(size), on_error=on_error)
        if val.classes != train.classes:
            raise DataError(
                f"{root / 'val'} has classes {val.classes} but {root / 'train'} has {train.classes}"
            )
        return train, val, train.classes
    full = ImageFolder(root, train_transform(size, augment), on_error=on_error, min_classes=2)
    n_val = max(1, len(full) // 5)
    train, val = random_split(full, [len(full) - n_val, n_val], seed=seed)
    # the validation images are never augmented: same files, the evaluation transform
    val = Subset(ImageFolder(root, eval_transform(size), on_error=on_error), val.indices)
    return train, val, full.classes


def load_backbone(model: str, progress: bool = True, log: Callable | None = print):
    """``resnet18`` (pretrained, downloaded or cached) or a path to any ONNX classifier: a
    ResNet-18 becomes the structured ``resnet18()``, anything else an ``OnnxModule`` (the file
    is read once), every weight frozen."""
    from . import models
    from .models.resnet_onnx import load_resnet18
    from .onnx.load import convert, read_model

    if model == "resnet18":
        return models.resnet18(pretrained=True, progress=progress)
    path = Path(model)
    if not path.exists():
        raise OnnxImportError(f"model file {path} does not exist")
    if path.suffix.lower() == ".safetensors":
        return models.resnet18(weights=path)  # torchvision-named ResNet-18 weights
    proto, _, label = read_model(path)
    try:
        return load_resnet18(proto)
    except OnnxImportError as err:
        if "finetune.onnx.load" not in str(err):
            raise
    if log:
        log(
            f"{path.name} is not torchvision's ResNet-18 layout; importing it as a generic "
            "ONNX graph"
        )
    net = convert(proto, label)
    for param in net.parameters():
        param.requires_grad = False
    return net.eval()


def replace_head(model: nn.Module, num_classes: int, head: str | None = None) -> nn.Module:
    """Freeze every imported weight and put a new trainable layer in place of the head (of the
    layer ``head`` names: an ONNX node or a module path, what ``--head`` takes); returns it."""
    from .onnx.graph import OnnxModule

    for p in model.parameters():
        p.requires_grad = False
    if isinstance(model, OnnxModule):
        return model.replace_head(num_classes, head)
    if head is not None:
        try:
            old = model.get_submodule(head)
        except AttributeError:
            raise TrainingError(f"{type(model).__name__} has no layer named {head!r}") from None
        name = head
    else:
        name, old = find_head(model)
    if not isinstance(old, nn.Linear):
        raise TrainingError(f"{name} is a {type(old).__name__}, not a Linear layer to replace")
    new = nn.Linear(old.in_features, num_classes)
    parent, _, attribute = name.rpartition(".")
    setattr(model.get_submodule(parent), attribute, new)
    return new


def image_size_for(model: str | os.PathLike | nn.Module, requested: int | None) -> int | None:
    """The image size to train at: the model's own when its input fixes one (the model zoo's
    files take 224x224), else ``requested`` (None: the run's default). A ``requested`` size the
    model's input cannot take is refused, naming the file and its input."""
    fixed, where = fixed_image_size(model)
    if fixed is None:
        return requested
    if requested is not None and requested != fixed:
        raise OnnxImportError(
            f"{where} takes {fixed}x{fixed} images, not --image-size {requested}; leave "
            f"--image-size out to use {fixed}"
        )
    return fixed


def fixed_image_size(model) -> tuple[int | None, str]:
    """The square spatial size an ONNX model's first input fixes, and where it says so."""
    from .onnx.graph import OnnxModule

    if isinstance(model, OnnxModule):
        inputs, where = model.input_types, model.source
        shape = inputs[0].shape if inputs else None
    elif isinstance(model, (str, os.PathLike)) and str(model).endswith(".onnx"):
        path = Path(model)
        if not path.is_file():
            return None, str(path)
        import onnx

        try:
            proto = onnx.load(str(path), load_external_data=False)
        except Exception:  # noqa: BLE001 - load_backbone reports an unreadable file properly
            return None, str(path)
        weights = {t.name for t in proto.graph.initializer}
        first = next((i for i in proto.graph.input if i.name not in weights), None)
        if first is None:
            return None, str(path)
        dims = first.type.tensor_type.shape.dim
        shape = tuple(d.dim_value if d.HasField("dim_value") else None for d in dims)
        where = f"{path} (input {first.name!r} is {['?' if d is None else d for d in shape]})"
    else:
        return None, ""
    if shape is None or len(shape) != 4 or shape[2] is None or shape[2] != shape[3]:
        return None, where
    return shape[2], where


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


# options a run is made of, with their values for a new run; ``run`` takes None as "not given":
# the default for a new run, the run's own value on resume
DEFAULTS = {
    "epochs": 5,
    "lr": 0.01,
    "momentum": 0.9,
    "weight_decay": 0.0,
    "batch_size": 32,
    "seed": 0,
    "augment": False,
    "image_size": 224,
}
# what --resume does with a changed option: these take effect from the point it resumes at
# (--batch-size only at an epoch boundary); the others change what the checkpoint's weights mean
RESUME_APPLIES = ("epochs", "lr", "momentum", "weight_decay", "batch_size")
RESUME_REFUSES = ("model", "head", "data", "image_size", "augment", "seed")
# the files a run writes into its folder; any of them means the folder holds a run
RUN_FILES = (CHECKPOINT_NAME, "history.json", "training.png", "model.onnx")


def _flag(option: str) -> str:
    return "--" + option.replace("_", "-")


def _model_identity(model: str | os.PathLike | nn.Module) -> dict:
    """What ``--model`` was: the name, or a file's resolved path and sha256 (so a moved copy of
    the same file still resumes, and a different file with the same name does not)."""
    if isinstance(model, nn.Module):
        return {"model": f"<{type(model).__name__} object>"}
    if str(model) == "resnet18":
        return {"model": "resnet18"}
    path = Path(model)
    if not path.is_file():
        return {"model": str(path)}
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return {"model": str(path.resolve()), "model_sha256": digest.hexdigest()}


def _check_run_folder(out: Path, resume: bool, overwrite: bool) -> list[str]:
    """The run files ``out`` already holds; refused unless resuming or overwriting."""
    present = [name for name in RUN_FILES if (out / name).exists()]
    if present and not resume and not overwrite:
        state = "a finished run" if (out / "model.onnx").exists() else "an unfinished run"
        raise CheckpointError(
            f"run folder {out} already holds {state} ({', '.join(present)}); use --resume to "
            "continue it, --overwrite to replace it, or choose another --out"
        )
    if resume and CHECKPOINT_NAME not in present:
        raise CheckpointError(
            f"no checkpoint to resume from at {out / CHECKPOINT_NAME}; "
            "train without --resume to start a run there"
        )
    return present


def _resume_settings(
    out: Path, given: dict, identity: dict, log: Callable[[str], None] | None
) -> tuple[dict, dict | None]:
    """The options of a resumed run: the checkpoint's, then those given; a refused change raises.

    Returns the settings and the checkpoint's run description (None for a checkpoint written
    by ``fit`` alone, whose options cannot be compared)."""
    from .serialization import load

    state = load(out / CHECKPOINT_NAME)
    before = state.get("config") if isinstance(state, dict) else None
    if not isinstance(before, dict):  # written by ``fit`` alone (or not a checkpoint: fit says)
        if log and isinstance(state, dict) and "epoch" in state:
            log(f"{out / CHECKPOINT_NAME} does not record its options; resuming with those given")
        return {**DEFAULTS, **given}, None
    settings = {**DEFAULTS, **{k: before[k] for k in DEFAULTS if k in before}, **given}
    now = {**settings, **identity}
    refused = []
    for option in RESUME_REFUSES:
        old, new = before.get(option), now.get(option)
        if option == "model" and before.get("model_sha256") and now.get("model_sha256"):
            old, new = before["model_sha256"], now["model_sha256"]
            if old != new:
                refused.append(
                    f"--model (was {before['model']}, now {now['model']}: other weights)"
                )
            continue
        if old is not None and old != new:
            refused.append(f"{_flag(option)} (was {old}, now {new})")
    epoch, step = state.get("epoch", 0), state.get("step", 0)
    done = epoch + (step > 0)
    if settings["epochs"] < done:
        refused.append(f"--epochs {settings['epochs']} (the run has trained {done})")
    if step and settings["batch_size"] != before.get("batch_size", settings["batch_size"]):
        refused.append(
            f"--batch-size (was {before['batch_size']}, now {settings['batch_size']}: the run "
            f"stopped inside epoch {epoch + 1}; change it only at an epoch boundary)"
        )
    if refused:
        raise CheckpointError(
            f"cannot resume {out} with a changed " + "; ".join(refused) + ". Resume with the "
            "run's own values, or start a new run (another --out, or --overwrite)"
        )
    changes = [
        f"{_flag(k)} {before[k]} -> {settings[k]}"
        for k in RESUME_APPLIES
        if k in before and before[k] != settings[k]
    ]
    if log and settings["epochs"] <= epoch and not step:
        log(f"{out} has trained all {epoch} of its epochs; exporting it again")
    elif log:
        log(
            f"resuming {out} at epoch {epoch + 1} step {step + 1}"
            + (f"; applied from there: {', '.join(changes)}" if changes else "")
        )
    return settings, before


def run(
    model: str | nn.Module,
    data_dir: str | os.PathLike,
    out_dir: str | os.PathLike,
    epochs: int | None = None,
    lr: float | None = None,
    momentum: float | None = None,
    weight_decay: float | None = None,
    batch_size: int | None = None,
    seed: int | None = None,
    augment: bool | None = None,
    resume: bool = False,
    image_size: int | None = None,
    num_workers: int = 2,
    progress: bool = True,
    log: Callable[[str], None] | None = print,
    overwrite: bool = False,
    head: str | None = None,
    cluster: str | None = None,
    ray_workers: int | None = None,
) -> RunResult:
    """Fine-tune ``model`` on ``data_dir`` and write everything under ``out_dir``.

    Options left as None take ``DEFAULTS`` in a new run and the run's own values on ``resume``;
    a changed option is applied from the resume point or refused (``RESUME_APPLIES``,
    ``RESUME_REFUSES``). A folder that already holds a run is refused unless ``resume`` or
    ``overwrite`` (which removes the old run's files once the data and model have loaded). The
    folder is locked while the run writes it. The checkpoint carries the options (``config``)
    and the classes and preprocessing (``metadata``, as in the exported model). ``head`` names
    the layer to replace where none is recognised (``replace_head``); the image size defaults
    to the model's own input size when its file fixes one (``image_size_for``). ``cluster`` and
    ``ray_workers`` run the training on Ray (``fit``; docs/distributed.md).
    """
    given = {
        k: v
        for k, v in dict(
            epochs=epochs,
            lr=lr,
            momentum=momentum,
            weight_decay=weight_decay,
            batch_size=batch_size,
            seed=seed,
            augment=augment,
            image_size=image_size,
        ).items()
        if v is not None
    }
    if resume and overwrite:
        raise TrainingError("resume and overwrite exclude each other: choose one")
    if "epochs" in given and (
        isinstance(epochs, bool) or not isinstance(epochs, int) or epochs < 1
    ):
        raise TrainingError(f"--epochs must be a whole number of at least 1, not {epochs!r}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    with folder_lock(out, log=log):
        present = _check_run_folder(out, resume, overwrite)
        size = image_size_for(model, image_size)  # a model's fixed input size wins
        if size is not None:
            given["image_size"] = size
        identity = {
            **_model_identity(model),
            "head": head,
            "data": str(Path(data_dir).resolve()),
        }
        if resume:
            settings, before = _resume_settings(out, given, identity, log)
        else:
            settings, before = {**DEFAULTS, **given}, None
        return _train_run(
            model,
            data_dir,
            out,
            settings,
            identity,
            before,
            present if overwrite else [],
            resume,
            num_workers,
            progress,
            log,
            cluster,
            ray_workers,
        )


def _train_run(
    model,
    data_dir,
    out: Path,
    settings: dict,
    identity: dict,
    before: dict | None,
    replace: list[str],
    resume: bool,
    num_workers: int,
    progress: bool,
    log,
    cluster: str | None,
    ray_workers: int | None,
) -> RunResult:
    from . import onnx as fonnx
    from .creation import zeros

    s = settings
    _random.manual_seed(s["seed"])
    image_size = s["image_size"]
    train_set, val_set, classes = load_datasets(data_dir, image_size, s["augment"], s["seed"])
    if log:
        log(
            f"data: {len(train_set)} training and {len(val_set)} validation images, "
            f"{len(classes)} classes: {', '.join(classes)}"
        )
    if before is not None and before.get("classes") not in (None, classes):
        raise CheckpointError(
            f"cannot resume {out}: its classes were {before['classes']}, {data_dir} now has "
            f"{classes}. Start a new run (another --out, or --overwrite)"
        )
    net = load_backbone(model, progress, log) if isinstance(model, (str, os.PathLike)) else model
    replace_head(net, len(classes), identity["head"])
    optimizer = optim.SGD(
        net.parameters(), lr=s["lr"], momentum=s["momentum"], weight_decay=s["weight_decay"]
    )
    train_loader = DataLoader(
        train_set, s["batch_size"], shuffle=True, seed=s["seed"], num_workers=num_workers
    )
    val_loader = DataLoader(val_set, s["batch_size"], num_workers=num_workers)
    metadata = {
        "classes": classes,
        "mean": list(T.IMAGENET_MEAN),
        "std": list(T.IMAGENET_STD),
        "input_size": image_size,
        "resize": round(image_size * 256 / 224),
    }
    config = {**s, **identity, "classes": classes}

    def apply_options(_state: dict) -> None:
        # the checkpoint's optimizer state brought back its options; the run's settings win
        for group in optimizer.param_groups:
            group.update(lr=s["lr"], momentum=s["momentum"], weight_decay=s["weight_decay"])

    if replace:
        for name in replace:
            (out / name).unlink(missing_ok=True)
        if log:
            log(f"--overwrite: removed the previous run's {', '.join(replace)} from {out}")
    history = fit(
        net,
        train_loader,
        optimizer,
        s["epochs"],
        val_loader=val_loader,
        checkpoint_dir=out,
        resume=resume,
        progress=progress,
        log=log,
        checkpoint_extra={"config": config, "metadata": metadata},
        on_resume=apply_options,
        cluster=cluster,
        ray_workers=ray_workers,
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
    export_metadata = {**metadata, "history": history[-1] if history else {}}
    fonnx.export(net, zeros(1, 3, image_size, image_size), model_path, metadata=export_metadata)
    if log:
        log(f"exported {model_path}")
    return RunResult(out, history, classes, model_path, plot_path, notes)
