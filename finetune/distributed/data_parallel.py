"""Synchronous data-parallel SGD on Ray actors, for a backbone with trainable layers.

Each step the driver puts its current weights in the object store once; every actor loads them
into its replica, reads its slice of the global batch from storage, and returns the gradients
of its slice's mean loss. The driver averages them weighted by slice size (so the result is the
gradient of the global batch's mean loss, as in one process) and its own optimizer applies the
step; the next step's broadcast makes every replica take that same step. Keeping the optimizer
on the driver means momentum and Adam state never need syncing, and the driver's checkpoint and
``resume=True`` work as in a local run.

Like PyTorch's ``DistributedDataParallel`` (``broadcast_buffers=True``), a BatchNorm layer in
training mode normalises with its own slice's statistics, and the running statistics of the
first slice's replica become the model's; frozen BatchNorm (the recipe's) is unaffected.
"""

from __future__ import annotations

import functools
import time

import numpy as np

from ..errors import TrainingError
from ..tensor import Tensor
from .cluster import connect
from .pool import ActorPool
from .transport import SampleReader, model_from_bytes, model_to_bytes


class ReplicaWorker:
    """One actor: a replica of the model and the loss; ``gradients`` runs one slice."""

    def __init__(self, model_bytes: bytes, trainable: tuple[str, ...], loss_fn) -> None:
        self.model = model_from_bytes(model_bytes, trainable)
        self.params = dict(self.model.named_parameters())
        self.buffers = dict(self.model.named_buffers())
        self.trainable = trainable
        self.loss_fn = loss_fn
        self.token = None
        self.reader = None

    def gradients(self, token: str, reader_ref: list, state: dict, epoch: int, indices: list):
        """Load ``state``, run forward and backward on the readable samples among ``indices``;
        returns ``(count, loss, logits, labels, gradients, buffers)``."""
        import ray

        from ..train import freeze_batchnorm

        if token != self.token:
            self.reader, self.token = ray.get(reader_ref[0]), token
        for name, value in state.items():
            target = self.params[name] if name in self.params else self.buffers[name]
            target._data = np.array(value)
        loaded = self.reader.batch(epoch, indices)
        if loaded is None:
            return 0, 0.0, None, None, {}, {}
        _, x, y = loaded
        self.model.train()
        freeze_batchnorm(self.model)
        for p in self.params.values():
            p.grad = None
        out = self.model(x)
        loss = self.loss_fn(out, y)
        loss.backward()
        grads = {
            name: self.params[name].grad._data
            for name in self.trainable
            if self.params[name].grad is not None
        }
        buffers = {name: b._data for name, b in self.buffers.items()}
        return len(y._data), float(loss.item()), out._data, y._data, grads, buffers


class GatheredLoss:
    """The global batch's mean loss; ``backward()`` installs the averaged gradients, the way
    ``DistributedDataParallel``'s backward ends with all-reduced gradients."""

    def __init__(self, value: float, gradients: dict, params: dict) -> None:
        self.value, self.gradients, self.params = value, gradients, params

    def item(self) -> float:
        return self.value

    def backward(self) -> None:
        for name, grad in self.gradients.items():
            p = self.params[name]
            p.grad = Tensor._from_array(grad) if p.grad is None else p.grad + grad


class DataParallel:
    """``workers`` Ray actors (default: one per CPU of the cluster) training replicas of
    ``model`` on slices of each batch."""

    def __init__(
        self, model, loader, loss_fn, cluster: str, workers: int | None = None, log=None
    ) -> None:
        if workers is not None and workers < 1:
            raise TrainingError(f"ray_workers must be at least 1, got {workers}")
        from ..train import _stochastic_in_training

        random = [n for n, m in model.named_modules() if _stochastic_in_training(m)]
        if random:
            raise TrainingError(
                f"data-parallel training cannot replicate {random[0]} (dropout is traced out of "
                "the ONNX replica); set its p to 0 or train without ray_workers"
            )
        self.ray = ray = connect(cluster, log=log)
        workers = workers or max(1, int(ray.cluster_resources().get("CPU", 1)))
        self.log = log
        self.reader = SampleReader(loader)
        model_ref = ray.put(model_to_bytes(model, self.reader.example()))
        self.params = dict(model.named_parameters())
        self.trainable = tuple(n for n, p in self.params.items() if p.requires_grad)
        self.buffers = dict(model.named_buffers())
        worker = ray.remote(num_cpus=1)(ReplicaWorker)
        trainable = self.trainable
        self.pool = ActorPool(
            ray, lambda: worker.remote(model_ref, trainable, loss_fn), workers, log
        )
        self.token = f"{id(self)}-{time.monotonic_ns()}"
        self.reader_ref = [ray.put(self.reader)]
        self.images = 0
        self.seconds = 0.0
        if log:
            log(
                f"training data-parallel on {workers} Ray actors: {len(self.trainable)} "
                "trainable tensors, gradients averaged on the driver"
            )

    def batches(self, epoch: int, batches: list[list[int]]):
        """``fit``'s stream: each batch's indices, to pass to ``step``; logs the epoch's
        images/s when the epoch is done."""
        self.images, self.seconds = 0, 0.0
        for indices in batches:
            yield (epoch, indices), None
        if self.log:
            self.log(
                f"epoch {epoch + 1}: {self.images} images on {len(self.pool.actors)} Ray actors "
                f"in {self.seconds:.1f} s ({self.images_per_second():.1f} images/s)"
            )

    def step(self, batch: tuple[int, list[int]]) -> tuple[Tensor, Tensor, GatheredLoss]:
        """Logits and labels of the batch's readable samples, and its loss."""
        epoch, indices = batch
        started = time.perf_counter()
        state = {n: self.params[n]._data for n in self.trainable}
        state.update({n: b._data for n, b in self.buffers.items()})
        state_ref = self.ray.put(state)
        slices = [s.tolist() for s in np.array_split(np.asarray(indices), len(self.pool.actors))]
        slices = [s for s in slices if s]
        tasks = [
            functools.partial(_submit, args=(self.token, self.reader_ref, state_ref, epoch, s))
            for s in slices
        ]
        results = [None] * len(slices)
        what = functools.partial(_describe, epoch=epoch, slices=slices)
        for i, result in self.pool.run(tasks, what):
            results[i] = result
        total = sum(r[0] for r in results)
        done = [r for r in results if r[0]]
        gradients: dict = {}
        for count, _, _, _, grads, _ in done:
            for name, grad in grads.items():
                weighted = grad * np.float32(count / total)
                gradients[name] = weighted if name not in gradients else gradients[name] + weighted
        if done:
            for name, value in done[0][5].items():
                self.buffers[name]._data = np.array(value)
            out = np.concatenate([r[2] for r in done])
            labels = np.concatenate([r[3] for r in done])
            loss = sum(r[0] * r[1] for r in done) / total
        else:  # nothing readable in this batch: no gradient, the optimizer leaves weights alone
            out, labels, loss = np.zeros((0, 0), np.float32), np.zeros(0, np.int64), 0.0
        self.images += total
        self.seconds += time.perf_counter() - started
        return (
            Tensor._from_array(out),
            Tensor._from_array(labels),
            GatheredLoss(loss, gradients, self.params),
        )

    def images_per_second(self) -> float:
        return self.images / max(self.seconds, 1e-9)

    def close(self) -> None:
        self.pool.close()


def _submit(actor, args):
    return actor.gradients.remote(*args)


def _describe(i: int, epoch: int, slices: list) -> str:
    return f"epoch {epoch + 1}, slice {i + 1} of {len(slices)} (samples {slices[i][:3]}...)"
