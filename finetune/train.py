"""The fit loop: progress, per-epoch metrics, frozen-backbone feature caching, safe checkpoints.

``fit`` trains any classifier built from the library's modules. When every parameter before the
head is frozen and the data pipeline is deterministic, the backbone runs once per image and the
head trains on cached features for every epoch; otherwise each step runs the full forward.
Both paths see the same batches in the same order, so they reach the same head weights.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import signal
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np

from . import nn
from . import random as _random
from .autograd import no_grad
from .errors import CheckpointError, FinetuneError, TrainingError
from .tensor import Tensor

CHECKPOINT_NAME = "checkpoint.npz"
# backbone features are computed in batches of at most this many images: per-image cost is flat
# up to here and grows beyond (larger im2col buffers), and memory stays bounded
FEATURE_BATCH = 16


class History(list):
    """One dict per epoch: epoch, train_loss, train_acc, val_loss, val_acc, lr, seconds."""

    def to_json(self, path: str | os.PathLike) -> None:
        from .utils.atomic import atomic_write

        with atomic_write(path, "w") as f:
            json.dump(list(self), f, indent=2)


def format_epoch(record: dict) -> str:
    """One line per epoch, e.g.

    ``epoch=3 train_loss=0.412 train_acc=0.861 val_loss=0.455 val_acc=0.842 lr=0.01 seconds=12.3``
    """
    parts = [f"epoch={record['epoch']}"]
    for key in ("train_loss", "train_acc", "val_loss", "val_acc"):
        if record.get(key) is not None:
            parts.append(f"{key}={record[key]:.3f}")
    parts.append(f"lr={record['lr']:g}")
    parts.append(f"seconds={record['seconds']:.1f}")
    return " ".join(parts)


class TrainingInterrupted(TrainingError):
    """Training stopped on Ctrl-C or SIGTERM after saving a checkpoint."""


# -- the model's parts -------------------------------------------------------------------------


def find_head(model: nn.Module) -> tuple[str, nn.Module]:
    """The last ``nn.Linear`` in the model: the classifier that fine-tuning replaces."""
    head = None
    for name, module in model.named_modules():
        if isinstance(module, nn.Linear):
            head = (name, module)
    if head is None:
        raise TrainingError(f"{type(model).__name__} has no nn.Linear layer to use as its head")
    return head


def freeze_batchnorm(model: nn.Module) -> list[str]:
    """Put every BatchNorm layer whose parameters are all frozen into eval mode.

    PyTorch's ``model.train()`` would update the running statistics of frozen BatchNorm layers
    while only the head trains, silently changing the pretrained backbone; here they keep
    using (and keeping) their running statistics. Returns the names of the layers affected.
    """
    batchnorm = tuple(getattr(nn, n) for n in ("BatchNorm1d", "BatchNorm2d") if hasattr(nn, n))
    names = []
    for name, module in model.named_modules():
        if isinstance(module, batchnorm) and not any(p.requires_grad for p in module.parameters()):
            module.eval()
            names.append(name)
    return names


def _stochastic_in_training(module: nn.Module) -> bool:
    return isinstance(module, nn.Dropout) and module.p > 0


def cache_eligible(model: nn.Module, head: nn.Module, dataset) -> tuple[bool, str]:
    """Whether backbone features can be computed once and reused, with the reason if not."""
    head_params = {id(p) for p in head.parameters()}
    trainable = [
        n for n, p in model.named_parameters() if p.requires_grad and id(p) not in head_params
    ]
    if trainable:
        return False, f"backbone parameters are trainable ({trainable[0]}, ...)"
    transform = getattr(dataset, "transform", None)
    if transform is not None and not getattr(transform, "deterministic", False):
        return False, "the data pipeline has random augmentation"
    for name, module in model.named_modules():
        if module is not head and _stochastic_in_training(module):
            return False, f"{name} is random in training mode"
    return True, "backbone frozen and data pipeline deterministic"


@contextlib.contextmanager
def _capture_input(module: nn.Module) -> Iterator[list]:
    """Record the input ``module`` receives during a forward."""
    seen: list = []
    handle = module.register_forward_pre_hook(lambda _m, args: seen.append(args[0]))
    try:
        yield seen
    finally:
        handle.remove()


def compute_features(
    model: nn.Module, head: nn.Module, loader
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Head inputs for every sample (dataset order), labels, and which samples were readable.

    Runs the model under ``no_grad``; checks once that the model's output is exactly the head's
    output, so caching the head's input loses nothing.
    """
    dataset = loader.dataset
    n = len(dataset)
    features = labels = None
    valid = np.zeros(n, dtype=bool)
    indices = list(range(n))
    checked = False
    batch = min(loader.batch_size, FEATURE_BATCH)
    with no_grad():
        for start in range(0, n, batch):
            idx = indices[start : start + batch]
            samples = [(i, loader._load(0, i)) for i in idx]
            samples = [(i, s) for i, s in samples if s is not None]
            if not samples:
                continue
            x, y = loader.collate_fn([s for _, s in samples])
            with _capture_input(head) as seen:
                out = model(x)
            feats = seen[-1]
            if not checked:
                if not np.array_equal(head(feats)._data, out._data, equal_nan=True):
                    raise TrainingError("the model's output is not its head's output")
                checked = True
            if features is None:
                features = np.zeros((n,) + feats.shape[1:], dtype=feats._data.dtype)
                labels = np.zeros(n, dtype=np.int64)
            rows = [i for i, _ in samples]
            features[rows] = feats._data
            labels[rows] = y._data
            valid[rows] = True
    if features is None:
        raise TrainingError("no readable samples in the training set")
    return features, labels, valid


# -- checkpoints ---------------------------------------------------------------------------------


def save_checkpoint(
    path: Path,
    model,
    optimizer,
    scheduler,
    epoch: int,
    step: int,
    history: History,
    partial: dict | None,
) -> None:
    from .serialization import save

    save(
        {
            "model": model.state_dict(),
            "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict() if scheduler is not None else None,
            "epoch": epoch,
            "step": step,
            "history": list(history),
            "partial": partial,
            "rng": json.dumps(_random.generator().bit_generator.state),
        },
        path,
    )


_CHECKPOINT_KEYS = ("model", "optimizer", "scheduler", "epoch", "step", "history", "partial", "rng")


def load_checkpoint(path: Path, model, optimizer, scheduler) -> dict:
    """Restore a checkpoint written by ``save_checkpoint``. All or nothing: if any part does not
    fit, the model, optimizer and scheduler are left as they were and CheckpointError (or
    ShapeError) names the file."""
    from .serialization import load

    if not path.exists():
        raise CheckpointError(f"no checkpoint to resume from at {path}")
    state = load(path)
    missing = [k for k in _CHECKPOINT_KEYS if not isinstance(state, dict) or k not in state]
    if missing:
        raise CheckpointError(
            f"{path} is not a training checkpoint (missing {', '.join(missing)}); "
            "delete it or start without --resume"
        )
    kinds = {"epoch": int, "step": int, "history": list, "partial": (dict, type(None)), "rng": str}
    wrong = [k for k, kind in kinds.items() if not isinstance(state[k], kind)]
    if wrong or state["epoch"] < 0 or state["step"] < 0:
        raise CheckpointError(
            f"{path} is damaged: its fields {wrong or ['epoch', 'step']} do not hold what a "
            "checkpoint writes; delete it or start without --resume"
        )
    before = {k: np.array(v._data) for k, v in model.state_dict().items()}
    model.load_state_dict(state["model"])
    try:
        optimizer.load_state_dict(state["optimizer"])
        if scheduler is not None and state["scheduler"] is not None:
            scheduler.load_state_dict(state["scheduler"])
        rng = json.loads(state["rng"])
    except BaseException as error:
        model.load_state_dict(before)
        if isinstance(error, (KeyError, TypeError, ValueError)) and not isinstance(
            error, FinetuneError
        ):
            raise CheckpointError(
                f"{path}: the optimizer or scheduler state does not fit ({error!r})"
            ) from error
        raise
    _random.generator().bit_generator.state = rng
    return state


# -- the loop --------------------------------------------------------------------------------------


class _StopRequest:
    """Turns SIGINT/SIGTERM into a flag checked between steps, so a checkpoint is consistent."""

    def __init__(self) -> None:
        self.signal: int | None = None
        self._previous: dict = {}

    def __enter__(self) -> _StopRequest:
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum, _frame) -> None:
        if self.signal is not None:  # a second Ctrl-C: stop at once
            raise KeyboardInterrupt
        self.signal = signum

    def __exit__(self, *exc) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


def _check_finite(loss: float, model: nn.Module, epoch: int, step: int) -> None:
    if not math.isfinite(loss):
        raise TrainingError(
            f"loss became {loss} at epoch {epoch} step {step}; lower the learning rate. "
            "The last good checkpoint was kept."
        )
    for name, p in model.named_parameters():
        if p.grad is not None and not np.isfinite(p.grad._data).all():
            raise TrainingError(
                f"non-finite gradient for {name} at epoch {epoch} step {step}; lower the learning "
                "rate. The last good checkpoint was kept."
            )


def _evaluate(model, loader, loss_fn) -> tuple[float, float]:
    model.eval()
    total_loss = correct = count = 0.0
    with no_grad():
        for x, y in loader:
            out = model(x)
            total_loss += float(loss_fn(out, y).item()) * len(y)
            correct += float((out._data.argmax(1) == y._data).sum())
            count += len(y)
    return total_loss / max(count, 1), correct / max(count, 1)


def fit(
    model: nn.Module,
    train_loader,
    optimizer,
    epochs: int,
    loss_fn: Callable | None = None,
    val_loader=None,
    scheduler=None,
    checkpoint_dir: str | os.PathLike | None = None,
    resume: bool = False,
    progress: bool = True,
    cache_features: bool | None = None,
    log: Callable[[str], None] | None = print,
) -> History:
    """Train ``model`` for ``epochs`` epochs and return the per-epoch history.

    ``cache_features=None`` caches backbone features when it is safe (see ``cache_eligible``);
    ``True`` insists (raising if unsafe), ``False`` always runs the full forward.
    """
    loss_fn = loss_fn or nn.CrossEntropyLoss()
    ckpt = Path(checkpoint_dir) / CHECKPOINT_NAME if checkpoint_dir is not None else None
    if ckpt is not None and not resume:
        ckpt.parent.mkdir(parents=True, exist_ok=True)
    history = History()
    start_epoch, start_step, partial = 0, 0, None
    if resume:
        if ckpt is None:
            raise CheckpointError("resume=True needs a checkpoint_dir")
        state = load_checkpoint(ckpt, model, optimizer, scheduler)
        history = History(state["history"])
        start_epoch, start_step, partial = state["epoch"], state["step"], state["partial"]

    head_name, head = find_head(model)
    eligible, reason = cache_eligible(model, head, train_loader.dataset)
    use_cache = eligible if cache_features is None else bool(cache_features)
    if use_cache and not eligible:
        raise TrainingError(f"cannot cache backbone features: {reason}")
    cache = val_cache = None
    caching_seconds = 0.0  # counted in the first epoch's time: it is that epoch's forward pass
    if use_cache and start_epoch < epochs:
        started = time.perf_counter()
        model.eval()
        cache = compute_features(model, head, train_loader)
        if val_loader is not None and getattr(
            getattr(val_loader.dataset, "transform", None), "deterministic", True
        ):
            val_cache = compute_features(model, head, val_loader)
        caching_seconds = time.perf_counter() - started
        if log:
            log(
                f"cached backbone features of {int(cache[2].sum())} samples in "
                f"{caching_seconds:.1f} s ({reason})"
            )

    with _StopRequest() as stop:
        for epoch in range(start_epoch, epochs):
            t0 = time.perf_counter()
            model.train()
            freeze_batchnorm(model)
            batches = train_loader.batches(epoch)
            first = start_step if epoch == start_epoch else 0
            sums = (
                dict(partial)
                if (partial and epoch == start_epoch)
                else {"loss": 0.0, "correct": 0.0, "count": 0.0, "seconds": 0.0}
            )
            if cache is None:
                train_loader.set_epoch(epoch, first)
                stream = iter(train_loader)
            else:
                stream = _cached_batches(cache, batches[first:])
            bar = _progress(len(batches), first, epoch, progress)
            for step, (x, y) in enumerate(stream, start=first):
                optimizer.zero_grad()
                out = head(x) if cache is not None else model(x)
                loss = loss_fn(out, y)
                loss.backward()
                loss_value = float(loss.item())
                _check_finite(loss_value, model, epoch + 1, step + 1)
                optimizer.step()
                n = len(y)
                sums["loss"] += loss_value * n
                sums["correct"] += float((out._data.argmax(1) == y._data).sum())
                sums["count"] += n
                if bar is not None:
                    bar.update(1)
                    bar.set_postfix(
                        loss=f"{sums['loss'] / sums['count']:.3f}",
                        acc=f"{sums['correct'] / sums['count']:.3f}",
                    )
                if stop.signal is not None:
                    if bar is not None:
                        bar.close()
                    sums["seconds"] += time.perf_counter() - t0
                    if ckpt is not None:
                        save_checkpoint(
                            ckpt, model, optimizer, scheduler, epoch, step + 1, history, sums
                        )
                    where = f"; checkpoint saved to {ckpt}, resume to continue" if ckpt else ""
                    raise TrainingInterrupted(
                        f"training interrupted at epoch {epoch + 1} step {step + 1}{where}"
                    )
            if bar is not None:
                bar.close()
            record = {
                "epoch": epoch + 1,
                "train_loss": sums["loss"] / max(sums["count"], 1),
                "train_acc": sums["correct"] / max(sums["count"], 1),
                "val_loss": None,
                "val_acc": None,
                "lr": float(optimizer.param_groups[0]["lr"]),
            }
            if val_cache is not None:
                record["val_loss"], record["val_acc"] = _evaluate(
                    head, _cached_batches(val_cache, val_loader.batches(0)), loss_fn
                )
            elif val_loader is not None:
                record["val_loss"], record["val_acc"] = _evaluate(model, val_loader, loss_fn)
            if scheduler is not None:
                scheduler.step()
            record["seconds"] = sums["seconds"] + time.perf_counter() - t0
            if epoch == start_epoch:
                record["seconds"] += caching_seconds
            history.append(record)
            if log:
                log(format_epoch(record))
            if ckpt is not None:
                save_checkpoint(ckpt, model, optimizer, scheduler, epoch + 1, 0, history, None)
    model.eval()
    return history


def _cached_batches(cache, batches):
    features, labels, valid = cache
    for idx in batches:
        rows = [i for i in idx if valid[i]]
        if rows:
            yield Tensor._from_array(features[rows]), Tensor._from_array(labels[rows])


def _progress(total: int, initial: int, epoch: int, enabled: bool):
    if not enabled:
        return None
    from tqdm.auto import tqdm

    return tqdm(
        total=total,
        initial=initial,
        desc=f"epoch {epoch + 1}",
        leave=False,
        unit="batch",
        dynamic_ncols=True,
    )
