"""A ResNet-18 pretrained offline on synthetic pretext shapes, for `make example` without network.

Without the model zoo's ImageNet weights, a fine-tune of frozen random features learns nothing
(val_acc 0.28 on the four demo classes). So the example first trains the library's own ResNet-18
on ``finetune.data.pretext`` (twelve other shapes in random colours; none of the demo's classes),
exports it to ONNX, and the recipe then fine-tunes that file exactly as it would the zoo's.

What fits in about two minutes here: torchvision's ResNet-18 layout at an eighth of its width
(8/16/32/64 channels instead of 64/128/256/512) without the stem's max pooling, on 64x64 images,
1500 steps of 32 images with AdamW and a one-cycle schedule. Dropping the pooling (the usual
adaptation of ResNets to small images) keeps every stage at twice the resolution, so a shape of
12-20 pixels still has its corners and points when the blocks see it; at the same multiply-adds
(1/16 of ResNet-18's at this size) it lifts the demo's validation accuracy from 0.83-0.93 (three
pretraining seeds, a quarter of the width with the pooling) to 0.88-0.95 (five seeds, 0.91 on
average; 0.90-0.95 over six in PyTorch). The full-width network learns too slowly from scratch
to be useful in minutes (in PyTorch too: ~0.45 val_acc after 600 steps). At these sizes one
process with two threads is no faster than with one (106 and 107 ms for a training step of 32
images here), while one thread takes 50 ms for 16; so each step is data-parallel over two
processes, one thread each (80-90 ms a step with the drawing of the images and the exchange of
weights and gradients, 1500 steps in 120-137 s): every process draws and trains its slice of the
batch, the first averages the gradients and takes the optimizer step, and the others load the
new weights from shared memory (BatchNorm normalises each slice with its own statistics and
keeps the first process's running statistics, like PyTorch's DistributedDataParallel).

The file is cached in ``models/`` under a name that records how it was made; a second run
reuses it.
"""

from __future__ import annotations

import multiprocessing
import os
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np


@dataclass(frozen=True)
class PretextConfig:
    width: int = 8  # channels of the stem, doubled by each stage (torchvision's ResNet-18: 64)
    image_size: int = 64  # the fine-tune runs at the same size
    steps: int = 1500
    batch_size: int = 32
    max_lr: float = 3e-3  # AdamW, one-cycle schedule
    weight_decay: float = 0.01
    textured: float = 0.0  # chance of a striped, checked or graded fill (slower to learn)
    seed: int = 0
    processes: int = 2  # each takes 1/processes of every batch, on one thread

    def __post_init__(self) -> None:
        for name in ("width", "image_size", "steps", "batch_size", "processes"):
            if getattr(self, name) < 1:
                raise ValueError(f"pretext {name} must be at least 1, got {getattr(self, name)}")
        if self.processes > self.batch_size:
            raise ValueError(
                f"{self.processes} pretext processes need batches of at least as many images, "
                f"not {self.batch_size}"
            )

    def file_name(self) -> str:
        return (
            f"pretext-resnet18-w{self.width}-nopool-{self.image_size}px-"
            f"{self.steps}x{self.batch_size}"
            f"-seed{self.seed}.onnx"
        )


def _network(config: PretextConfig):
    import finetune as ft
    from finetune.data.pretext import PRETEXT_SHAPES
    from finetune.models import BasicBlock, ResNet

    ft.manual_seed(config.seed)
    net = ResNet(BasicBlock, [2, 2, 2, 2], num_classes=len(PRETEXT_SHAPES), width=config.width)
    net.maxpool = ft.nn.Identity()  # small images: every stage at twice the resolution
    return net.train()  # BatchNorm learns from batch statistics


def _slices(config: PretextConfig) -> list[tuple[int, int]]:
    """Each process's part of a batch, as ``[lo, hi)`` positions."""
    bounds = np.linspace(0, config.batch_size, config.processes + 1).round().astype(int)
    return list(zip(bounds[:-1].tolist(), bounds[1:].tolist(), strict=True))


class _Replica:
    """One process's share of a step: its slice of the batch, forward and backward."""

    def __init__(self, config: PretextConfig, part: tuple[int, int]) -> None:
        import finetune as ft
        from finetune.data.pretext import PretextShapes
        from finetune.recipe import eval_transform

        self.config, self.part = config, part
        self.net = _network(config)
        self.params = list(self.net.parameters())
        self.images = PretextShapes(
            config.steps * config.batch_size,
            size=64,
            seed=config.seed,
            transform=eval_transform(config.image_size),
            textured=config.textured,
        )
        self.loss_fn = ft.nn.CrossEntropyLoss()

    def gradients(self, step: int) -> tuple[float, int]:
        """Fill every parameter's ``.grad`` for ``step``'s slice; its mean loss and hits."""
        from finetune.data import default_collate

        lo, hi = self.part
        first = step * self.config.batch_size
        x, y = default_collate([self.images[first + i] for i in range(lo, hi)])
        for p in self.params:
            p.grad = None
        logits = self.net(x)
        loss = self.loss_fn(logits, y)
        loss.backward()
        return float(loss.item()), int((logits.argmax(1) == y).sum().item())


def _flat_views(buffer, params) -> list[np.ndarray]:
    """Views of a shared float32 buffer shaped like ``params``, one after another."""
    flat = np.frombuffer(buffer, dtype=np.float32)
    views, at = [], 0
    for p in params:
        views.append(flat[at : at + p.numel()].reshape(p.shape))
        at += p.numel()
    return views


def _helper(conn, weights, grads, config: PretextConfig, part: tuple[int, int]) -> None:
    """A helper process: for each step it is sent, load the weights, write its slice's
    gradients, answer with the slice's loss and hits; ``None`` ends it."""
    import finetune as ft

    ft.set_num_threads(1)
    replica = _Replica(config, part)
    weight_views = _flat_views(weights, replica.params)
    grad_views = _flat_views(grads, replica.params)
    while (step := conn.recv()) is not None:
        for p, w in zip(replica.params, weight_views, strict=True):
            np.copyto(p.data.numpy(), w)
        result = replica.gradients(step)
        for p, g in zip(replica.params, grad_views, strict=True):
            np.copyto(g, p.grad.numpy())
        conn.send(result)


class _HelperProcess:
    """The first process's handle on a helper: shared weights and gradients, and a pipe."""

    def __init__(self, context, config: PretextConfig, part: tuple[int, int], params) -> None:
        size = sum(p.numel() for p in params)
        weights, grads = context.RawArray("f", size), context.RawArray("f", size)
        self.conn, theirs = context.Pipe()
        self.process = context.Process(
            target=_helper, args=(theirs, weights, grads, config, part), daemon=True
        )
        self.process.start()
        self.params, self.part = params, part
        self.weights, self.grads = _flat_views(weights, params), _flat_views(grads, params)

    def start(self, step: int) -> None:
        """Hand over the current weights and start the helper's slice of ``step``."""
        for p, w in zip(self.params, self.weights, strict=True):
            np.copyto(w, p.data.numpy())
        self.conn.send(step)

    def add_gradients(self, step: int) -> tuple[float, int]:
        """Wait for the helper's slice; add its gradients, weighted by its size, to the
        parameters' and return its loss times that size, and its hits."""
        from finetune.errors import TrainingError

        try:
            loss, hits = self.conn.recv()
        except EOFError:
            raise TrainingError(
                f"pretext helper process {self.process.pid} ended (exit code "
                f"{self.process.exitcode}) at step {step + 1}"
            ) from None
        count = np.float32(self.part[1] - self.part[0])
        for p, g in zip(self.params, self.grads, strict=True):
            p.grad.numpy()[...] += g * count
        return loss * float(count), hits

    def close(self) -> None:
        if self.process.is_alive():
            self.conn.send(None)
        self.process.join(timeout=10)
        if self.process.is_alive():
            self.process.kill()


def train_pretext(config: PretextConfig, log=print):
    """The narrow ResNet-18 trained on ``config.steps`` fresh batches of pretext images, in
    eval mode, with the pretext accuracy over the last tenth of the steps."""
    import finetune as ft
    from finetune.errors import TrainingError

    threads = ft.get_num_threads()
    ft.set_num_threads(1)
    context = multiprocessing.get_context("spawn")  # no fork of a process running BLAS threads
    first, *others = _slices(config)
    replica = _Replica(config, first)
    params = replica.params
    helpers = []
    try:
        helpers = [_HelperProcess(context, config, part, params) for part in others]
        optimizer = ft.optim.AdamW(params, lr=config.max_lr, weight_decay=config.weight_decay)
        schedule = ft.optim.lr_scheduler.OneCycleLR(
            optimizer, max_lr=config.max_lr, total_steps=config.steps, pct_start=0.25
        )
        window_loss = window_hits = late_hits = late_seen = 0
        every, late = max(1, config.steps // 10), config.steps - max(1, config.steps // 10)
        count = np.float32(first[1] - first[0])
        t0 = time.perf_counter()
        for step in range(config.steps):
            for helper in helpers:
                helper.start(step)
            loss, hits = replica.gradients(step)
            loss *= float(count)
            for p in params:  # the batch's mean: each slice's mean weighted by its size
                p.grad.numpy()[...] *= count
            for helper in helpers:
                their_loss, their_hits = helper.add_gradients(step)
                loss += their_loss
                hits += their_hits
            for p in params:
                p.grad.numpy()[...] /= np.float32(config.batch_size)
            loss /= config.batch_size
            if not np.isfinite(loss):
                raise TrainingError(f"pretext training diverged at step {step + 1} (loss {loss})")
            optimizer.step()
            schedule.step()
            window_loss += loss
            window_hits += hits
            if step >= late:
                late_hits += hits
                late_seen += config.batch_size
            if log and ((step + 1) % every == 0 or step + 1 == config.steps):
                done = step + 1 - (step // every) * every
                log(
                    f"  pretext step {step + 1}/{config.steps}: loss {window_loss / done:.3f} "
                    f"acc {window_hits / (done * config.batch_size):.2f} "
                    f"({time.perf_counter() - t0:.0f} s)"
                )
                window_loss = window_hits = 0
    finally:
        for helper in helpers:
            helper.close()
        ft.set_num_threads(threads)
    return replica.net.eval(), late_hits / max(late_seen, 1)


def pretext_backbone(models_dir: Path, config: PretextConfig = PretextConfig(), log=print):
    """The path of the pretext ResNet-18 ONNX file in ``models_dir``, trained and exported on
    the first call, reused afterwards; and a sentence about where it came from."""
    import finetune as ft

    path = Path(models_dir) / config.file_name()
    if path.exists():
        return path, f"reused {path} (delete it to pretrain again)"
    if log:
        log(
            f"pretraining a ResNet-18 (width {config.width}) on "
            f"{config.steps * config.batch_size} synthetic pretext images "
            f"({config.image_size}x{config.image_size}, shapes other than the demo's) "
            f"in {config.processes} processes"
        )
    t0 = time.perf_counter()
    net, accuracy = train_pretext(config, log)
    meta = {"pretext": str(asdict(config)), "pretext_train_acc": f"{accuracy:.4f}"}
    partial = path.with_name(path.name + f".{os.getpid()}.partial")
    ft.onnx.export(
        net, ft.zeros(1, 3, config.image_size, config.image_size), partial, metadata=meta
    )
    os.replace(partial, path)  # a cached file is always a finished one
    seconds = time.perf_counter() - t0
    return path, (
        f"pretrained in {seconds:.0f} s (pretext accuracy {accuracy:.2f} over the last "
        f"tenth of the steps), written to {path}"
    )


if __name__ == "__main__":  # pretrain into a folder: python examples/pretext_backbone.py DIR
    out = Path(sys.argv[1] if len(sys.argv) > 1 else "models")
    out.mkdir(parents=True, exist_ok=True)
    print(pretext_backbone(out)[1])
