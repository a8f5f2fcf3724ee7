"""The fit loop: progress, per-epoch metrics, frozen-backbone feature caching, safe checkpoints.

``fit`` trains any classifier built from the library's modules. When every parameter before the
head is frozen and the data pipeline is deterministic, the backbone runs once per image and the
head trains on cached features for every epoch; otherwise each step runs the full forward.
Both paths see the same batches in the same order, so they reach the same head weights.
"""

from __future__ import annotations

import contextlib
import functools
import inspect
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
from .utils.lock import folder_lock

CHECKPOINT_NAME = "checkpoint.npz"
# backbone features are computed in batches of at most this many images: per-image cost is flat
# up to here and grows beyond (larger im2col buffers), and memory stays bounded
FEATURE_BATCH = 16


class History(list):
    """One dict per epoch: epoch, train_loss, train_acc, val_loss, val_acc, lr, seconds."""

    def to_json(self, path: str | os.PathLike) -> None:
        """Write strict JSON: a non-finite number becomes the string ``"NaN"``, ``"Infinity"``
        or ``"-Infinity"`` (``float()`` reads each back); a missing value is ``null``."""
        from .utils.atomic import atomic_write

        with atomic_write(path, "w") as f:
            json.dump(_json_safe(list(self)), f, indent=2, allow_nan=False)


def _json_safe(value):
    if isinstance(value, float) and not math.isfinite(value):
        return "NaN" if math.isnan(value) else ("Infinity" if value > 0 else "-Infinity")
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    if isinstance(value, np.generic):
        return _json_safe(value.item())
    return value


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
    """The classifier that fine-tuning replaces: an imported graph's head (its output comes from
    that module, see ``finetune.onnx.heads``), else the model's last ``nn.Linear``."""
    from .onnx.graph import OnnxModule
    from .onnx.graph import find_head as find_graph_head

    if isinstance(model, OnnxModule):
        return find_graph_head(model)
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
    model: nn.Module,
    head: nn.Module,
    loader,
    progress: bool = False,
    desc: str = "backbone features",
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Head inputs for every sample (dataset order), labels, and which samples were readable.

    Runs the model under ``no_grad``; checks once that the model's output is exactly the head's
    output, so caching the head's input loses nothing. ``progress`` shows a bar in images/s.
    Ctrl-C or SIGTERM stops it after the current batch with ``TrainingInterrupted``; nothing is
    written, as the features only live in memory.
    """
    dataset = loader.dataset
    n = len(dataset)
    features = labels = None
    valid = np.zeros(n, dtype=bool)
    indices = list(range(n))
    checked = False
    batch = min(loader.batch_size, FEATURE_BATCH)
    bar = _progress(n, 0, desc, progress, unit="img")
    with no_grad(), _StopRequest() as stop, contextlib.ExitStack() as cleanup:
        if bar is not None:
            cleanup.callback(bar.close)
        for start in range(0, n, batch):
            if stop.signal is not None:
                raise TrainingInterrupted(
                    f"interrupted while computing backbone features ({start} of {n} images); "
                    "nothing was written"
                )
            idx = indices[start : start + batch]
            samples = [(i, loader._load(0, i)) for i in idx]
            samples = [(i, s) for i, s in samples if s is not None]
            if samples:
                x, y = loader.collate_fn([s for _, s in samples])
                with _capture_input(head) as seen:
                    out = model(x)
                # an imported graph fixed at its file's batch size runs its head once per slice
                feats = (
                    seen[-1]
                    if len(seen) == 1
                    else Tensor._from_array(np.concatenate([f._data for f in seen]))
                )
                if not checked:
                    again = head(feats)._data  # rounding may differ from a sliced forward's
                    scale = float(np.abs(np.nan_to_num(out._data)).max(initial=0.0))
                    if again.shape != out.shape or not np.allclose(
                        again, out._data, rtol=1e-5, atol=1e-6 * scale, equal_nan=True
                    ):
                        raise TrainingError("the model's output is not its head's output")
                    checked = True
                if features is None:
                    features = np.zeros((n,) + feats.shape[1:], dtype=feats._data.dtype)
                    labels = np.zeros(n, dtype=np.int64)
                rows = [i for i, _ in samples]
                features[rows] = feats._data
                labels[rows] = y._data
                valid[rows] = True
            if bar is not None:
                bar.update(len(idx))
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
    extra: dict | None = None,
) -> None:
    """Write the training state; ``extra`` adds plain values under their own keys (the recipe
    stores its options as ``config`` and the classes and preprocessing as ``metadata``). A
    ``.safetensors`` path gets that format: tensors under dotted names, the rest in its metadata."""
    from .serialization import SAFETENSORS_SUFFIX, save, save_structured

    clash = sorted(set(extra or {}) & set(_CHECKPOINT_KEYS))
    if clash:
        raise CheckpointError(f"checkpoint extras may not replace the training state: {clash}")
    write = save_structured if Path(path).suffix.lower() == SAFETENSORS_SUFFIX else save
    write(
        {
            **(extra or {}),
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


# a loss or weight norm this many times its starting value (floored at 1) means divergence
DIVERGENCE_FACTOR = 1000.0


class _DivergenceGuard:
    """Stops training before a diverged step reaches a checkpoint (docs/reliability.md).

    Diverged means: a loss (training, per step; validation, per epoch) that is not finite or
    exceeds ``DIVERGENCE_FACTOR`` times the run's first training loss (floored at 1); a gradient
    that is not finite (before the step, which is then not taken); or, when weights are about to
    be saved or returned, a trainable weight that is not finite (float32
    overflow) or a norm of the trainable weights above ``DIVERGENCE_FACTOR`` times its value at
    the start (floored at 1). The loss is checked at every step for free, the gradients with one
    sum each; the weights only where they would leave ``fit``, so a step keeps no copy of them.
    A diverged step's weights never reach a checkpoint: the one on disk is left as it was.
    """

    def __init__(self, model: nn.Module, optimizer, ckpt: Path | None, saved_epoch: int | None):
        self.model, self.optimizer, self.ckpt = model, optimizer, ckpt
        self.saved_epoch = saved_epoch  # the epoch of the checkpoint this run wrote or resumed
        self.params = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
        self.start_norm = self._norm()
        self.first_loss: float | None = None

    def _norm(self) -> float:
        with np.errstate(over="ignore", invalid="ignore"):
            # float32 sums: an overflow to inf still reads as "too large", which it is
            return math.sqrt(sum(float(np.vdot(p._data, p._data)) for _, p in self.params))

    def _fail(self, what: str, where: str) -> TrainingError:
        lr = self.optimizer.param_groups[0].get("lr", float("nan"))
        if isinstance(lr, (int, float)) and math.isfinite(lr) and lr > 0:
            advice = f"lower the learning rate: it is {lr:g}, try --lr {lr / 10:g}"
        else:
            advice = f"the learning rate is {lr}: use a positive, finite --lr"
        if self.saved_epoch:
            kept = f"The checkpoint of epoch {self.saved_epoch} in {self.ckpt} is kept"
        elif self.ckpt is not None and self.ckpt.exists():
            kept = f"The checkpoint {self.ckpt} was left as it was"
        else:
            kept = "Nothing was saved"
        return TrainingError(f"training diverged: {what} at {where}; {advice}. {kept}")

    def check_loss(self, loss: float, where: str, kind: str = "loss") -> None:
        if not math.isfinite(loss):
            raise self._fail(f"the {kind} became {loss}", where)
        if self.first_loss is None:
            self.first_loss = loss
            return
        limit = DIVERGENCE_FACTOR * max(self.first_loss, 1.0)
        if loss > limit:
            raise self._fail(
                f"the {kind} {loss:.3g} is over {DIVERGENCE_FACTOR:g} times the first step's "
                f"({self.first_loss:.3g})",
                where,
            )

    def check_gradients(self, where: str) -> None:
        """Before the step: a NaN or inf anywhere in a gradient makes its sum non-finite, so one
        cheap reduction per parameter finds it (a float32 sum that overflows is divergence too)."""
        with np.errstate(over="ignore", invalid="ignore"):
            for name, p in self.params:
                if p.grad is not None and not math.isfinite(float(np.sum(p.grad._data))):
                    raise self._fail(f"non-finite gradient for {name}", where)

    def check_weights(self, where: str) -> None:
        """Before weights are saved or returned: every trainable weight finite, their norm
        within ``DIVERGENCE_FACTOR`` times its start."""
        bad = next((n for n, p in self.params if not np.isfinite(p._data).all()), None)
        if bad is not None:
            raise self._fail(f"weight {bad} became non-finite", where)
        norm = self._norm()
        if norm > DIVERGENCE_FACTOR * max(self.start_norm, 1.0):
            raise self._fail(
                f"the weights' norm {norm:.3g} is over {DIVERGENCE_FACTOR:g} times its start "
                f"({self.start_norm:.3g})",
                where,
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


def _locks_checkpoint_dir(fit_fn: Callable) -> Callable:
    """Hold the lock of ``fit``'s checkpoint folder while it runs (``utils.lock``), so a second
    run into the same folder fails at once instead of overwriting this one's checkpoints."""
    signature = inspect.signature(fit_fn)

    @functools.wraps(fit_fn)
    def locked(*args, **kwargs):
        bound = signature.bind(*args, **kwargs)
        folder = bound.arguments.get("checkpoint_dir")
        if folder is None:
            return fit_fn(*args, **kwargs)
        folder = Path(folder)
        if not bound.arguments.get("resume", False):
            folder.mkdir(parents=True, exist_ok=True)
        elif not folder.is_dir():  # fit names the missing checkpoint
            return fit_fn(*args, **kwargs)
        with folder_lock(folder, log=bound.arguments.get("log", print)):
            return fit_fn(*args, **kwargs)

    return locked


@_locks_checkpoint_dir
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
    checkpoint_extra: dict | None = None,
    on_resume: Callable[[dict], None] | None = None,
    cluster: str | None = None,
    ray_workers: int | None = None,
) -> History:
    """Train ``model`` for ``epochs`` epochs and return the per-epoch history.

    ``cache_features=None`` caches backbone features when it is safe (see ``cache_eligible``);
    ``True`` insists (raising if unsafe), ``False`` always runs the full forward.
    ``checkpoint_extra`` is saved in every checkpoint; ``on_resume(state)`` runs after a resumed
    checkpoint is loaded (to apply new options). Training that diverges stops before a checkpoint
    is written (``_DivergenceGuard``); ``checkpoint_dir`` is locked while ``fit`` runs. Features of
    image folders are kept under ``$FINETUNE_HOME/features`` for the next run (``feature_cache``).
    ``cluster`` ("local", an address or ``ray://host:port``) computes them on Ray actors, or,
    when they cannot be cached, trains data-parallel there; ``ray_workers=N`` sets the number of
    actors and alone means a local Ray instance (docs/distributed.md).
    """
    if isinstance(epochs, bool) or not isinstance(epochs, int) or epochs < 1:
        raise TrainingError(f"epochs must be a whole number of at least 1, not {epochs!r}")
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
        if epochs < start_epoch + (start_step > 0):
            raise TrainingError(
                f"{ckpt} has already trained {start_epoch} epochs"
                + (f" and {start_step} steps" if start_step else "")
                + f"; epochs={epochs} cannot undo them (ask for at least "
                f"{start_epoch + (start_step > 0)})"
            )
        if on_resume is not None:
            on_resume(state)

    head_name, head = find_head(model)
    eligible, reason = cache_eligible(model, head, train_loader.dataset)
    use_cache = eligible if cache_features is None else bool(cache_features)
    if use_cache and not eligible:
        raise TrainingError(f"cannot cache backbone features: {reason}")
    cluster = cluster or ("local" if ray_workers else None)
    cache = val_cache = None
    caching_seconds = 0.0  # counted in the first epoch's time: it is that epoch's forward pass
    if use_cache and start_epoch < epochs:
        started = time.perf_counter()
        model.eval()
        from .distributed import ray_extractor
        from .feature_cache import cached_features

        extract = (
            functools.partial(compute_features, progress=progress)
            if cluster is None
            else ray_extractor(cluster, progress, log, ray_workers)
        )
        cache = cached_features(model, head, train_loader, extract, log)
        if val_loader is not None and getattr(
            getattr(val_loader.dataset, "transform", None), "deterministic", True
        ):
            val_cache = cached_features(model, head, val_loader, extract, log)
        caching_seconds = time.perf_counter() - started
        if log:
            log(
                f"cached backbone features of {int(cache[2].sum())} samples in "
                f"{caching_seconds:.1f} s ({reason})"
            )

    parallel = None
    if cluster is not None and cache is None and start_epoch < epochs:
        from .distributed import DataParallel

        parallel = DataParallel(model, train_loader, loss_fn, cluster, ray_workers, log)
    guard = _DivergenceGuard(model, optimizer, ckpt, start_epoch if resume else None)
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
            if parallel is not None:
                stream = parallel.batches(epoch, batches[first:])
            elif cache is None:
                train_loader.set_epoch(epoch, first)
                stream = iter(train_loader)
            else:
                stream = _cached_batches(cache, batches[first:])
            bar = _progress(len(batches), first, f"epoch {epoch + 1}", progress)
            for step, (x, y) in enumerate(stream, start=first):
                optimizer.zero_grad()
                if parallel is not None:  # x: a batch's indices; the replicas run it
                    out, y, loss = parallel.step(x)
                else:
                    out = head(x) if cache is not None else model(x)
                    loss = loss_fn(out, y)
                loss_value = float(loss.item())
                guard.check_loss(loss_value, f"epoch {epoch + 1} step {step + 1}")
                loss.backward()
                guard.check_gradients(f"epoch {epoch + 1} step {step + 1}")
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
                        guard.check_weights(f"epoch {epoch + 1} step {step + 1}")
                        save_checkpoint(
                            ckpt,
                            model,
                            optimizer,
                            scheduler,
                            epoch,
                            step + 1,
                            history,
                            sums,
                            checkpoint_extra,
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
            if record["val_loss"] is not None:
                guard.check_loss(record["val_loss"], f"epoch {epoch + 1}", "validation loss")
            if scheduler is not None:
                scheduler.step()
            record["seconds"] = sums["seconds"] + time.perf_counter() - t0
            if epoch == start_epoch:
                record["seconds"] += caching_seconds
            history.append(record)
            if log:
                log(format_epoch(record))
            guard.check_weights(f"the end of epoch {epoch + 1}")
            if ckpt is not None:
                save_checkpoint(
                    ckpt, model, optimizer, scheduler, epoch + 1, 0, history, None, checkpoint_extra
                )
                guard.saved_epoch = epoch + 1
    model.eval()
    return history


def _cached_batches(cache, batches):
    features, labels, valid = cache
    for idx in batches:
        rows = [i for i in idx if valid[i]]
        if rows:
            yield Tensor._from_array(features[rows]), Tensor._from_array(labels[rows])


def _progress(total: int, initial: int, desc: str, enabled: bool, unit: str = "batch"):
    """A tqdm bar that clears itself when closed (the per-epoch line stays), or None."""
    if not enabled:
        return None
    from tqdm.auto import tqdm

    return tqdm(
        total=total,
        initial=initial,
        desc=desc,
        leave=False,
        unit=unit,
        dynamic_ncols=True,
    )
