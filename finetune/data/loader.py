"""``DataLoader``, ``Dataset``, ``TensorDataset``, ``Subset`` and ``random_split``, by seed.

The order of an epoch depends only on ``(seed, epoch)``, and each sample's random transforms on
``(seed, epoch, index)``, so a run resumed at epoch ``k`` sees exactly what an uninterrupted run
saw, and a thread pool gives the same batches as the main thread.
"""

from __future__ import annotations

import math
import numbers
import warnings
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from .. import random as _random
from ..creation import tensor
from ..errors import DataError
from ..functions import stack
from ..tensor import Tensor
from .transforms import sample_rng


class DataWarning(UserWarning):
    """Samples were skipped because their files could not be read."""


class Dataset:
    """Base of map-style datasets (``torch.utils.data.Dataset``): define __getitem__ and __len__.

    The loader needs only those two, so any object with them works; subclassing is for PyTorch code.
    """

    def __getitem__(self, index: int):
        raise NotImplementedError(f"{type(self).__name__} must define __getitem__")


class TensorDataset(Dataset):
    """Samples are the ``i``-th rows of each tensor."""

    def __init__(self, *tensors: Tensor) -> None:
        n = {t.shape[0] for t in tensors}
        if len(n) != 1:
            raise DataError(
                f"TensorDataset needs tensors of equal length, got {[t.shape[0] for t in tensors]}"
            )
        self.tensors = tensors

    def __len__(self) -> int:
        return self.tensors[0].shape[0]

    def __getitem__(self, index: int):
        return tuple(Tensor._from_array(t._data[index]) for t in self.tensors)


class Subset(Dataset):
    """The samples of ``dataset`` at ``indices``, in that order."""

    def __init__(self, dataset, indices: Sequence[int]) -> None:
        self.dataset = dataset
        self.indices = list(indices)

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, index: int):
        return self.dataset[self.indices[index]]

    def __getattr__(self, name: str):
        # classes, transform, skipped, ... of the underlying dataset
        if name == "dataset":
            raise AttributeError(name)
        return getattr(self.dataset, name)


def random_split(
    dataset, lengths: Sequence[float], generator=None, seed: int | None = None
) -> list[Subset]:
    """Split into non-overlapping subsets; ``lengths`` may be counts or fractions summing to 1.
    The permutation comes from ``seed`` if given, else from ``generator`` (a
    ``finetune.Generator``, as PyTorch's ``random_split(..., generator=...)``) or the default."""
    n = len(dataset)
    if math.isclose(sum(lengths), 1) and sum(lengths) <= 1:
        counts = [int(math.floor(n * f)) for f in lengths]
        for i in range(n - sum(counts)):
            counts[i % len(counts)] += 1
    else:
        counts = [int(x) for x in lengths]
    if sum(counts) != n:
        raise DataError(f"random_split: lengths {list(lengths)} do not add up to {n} samples")
    rng = np.random.default_rng(seed) if seed is not None else _random.numpy_generator(generator)
    perm = rng.permutation(n)
    out, start = [], 0
    for c in counts:
        out.append(Subset(dataset, perm[start : start + c].tolist()))
        start += c
    return out


def default_collate(batch: list):
    """Stack tensors and arrays, turn numbers into a tensor, recurse into tuples and dicts."""
    first = batch[0]
    if isinstance(first, Tensor):
        return stack(batch)
    if isinstance(first, np.ndarray):
        return Tensor._from_array(np.stack(batch))
    if isinstance(first, (bool, numbers.Number)):
        return tensor(batch)
    if isinstance(first, dict):
        return {k: default_collate([b[k] for b in batch]) for k in first}
    if isinstance(first, (tuple, list)):
        return type(first)(default_collate(list(items)) for items in zip(*batch))
    return batch


class DataLoader:
    """Batches of a dataset in a seed-determined order, decoded in a thread pool if asked.

    ``pin_memory``, ``persistent_workers``, ``prefetch_factor`` and ``timeout`` are accepted so
    PyTorch loader calls run unchanged; on a CPU with a thread pool they have nothing to do.
    """

    def __init__(
        self,
        dataset,
        batch_size: int = 1,
        shuffle: bool = False,
        drop_last: bool = False,
        seed: int | None = None,
        num_workers: int = 0,
        collate_fn: Callable | None = None,
        *,
        pin_memory: bool = False,
        persistent_workers: bool = False,
        prefetch_factor: int | None = None,
        timeout: float = 0,
        generator=None,
    ) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be positive, got {batch_size}")
        self.dataset = dataset
        self.batch_size = batch_size
        self.shuffle = shuffle
        self.drop_last = drop_last
        if seed is None:  # one draw from the generator (or the default) fixes every epoch's order
            seed = int(_random.numpy_generator(generator).integers(2**31))
        self.seed = int(seed)
        self.num_workers = num_workers
        self.collate_fn = collate_fn or default_collate
        self.epoch = 0
        self.start_batch = 0
        self._started = False

    def set_epoch(self, epoch: int, start_batch: int = 0) -> None:
        """Make the next iteration produce epoch ``epoch``'s batches from ``start_batch`` on
        (used when resuming a run, even one interrupted mid-epoch)."""
        self.epoch = epoch
        self.start_batch = start_batch
        self._started = False

    def batches(self, epoch: int) -> list[list[int]]:
        """The dataset indices of each batch of ``epoch``."""
        order = self.order(epoch).tolist()
        batches = [order[i : i + self.batch_size] for i in range(0, len(order), self.batch_size)]
        if self.drop_last and batches and len(batches[-1]) < self.batch_size:
            batches.pop()
        return batches

    def __len__(self) -> int:
        n = len(self.dataset)
        return n // self.batch_size if self.drop_last else -(-n // self.batch_size)

    def order(self, epoch: int) -> np.ndarray:
        n = len(self.dataset)
        if not self.shuffle:
            return np.arange(n)
        return np.random.default_rng([self.seed, epoch]).permutation(n)

    def _load(self, epoch: int, index: int):
        with sample_rng(np.random.default_rng([self.seed, epoch, index, 1])):
            return self.dataset[index]

    def __iter__(self) -> Iterator:
        if self._started:
            self.epoch += 1
        self._started = True
        epoch, start, self.start_batch = self.epoch, self.start_batch, 0
        batches = self.batches(epoch)[start:]
        skipped_before = len(getattr(self.dataset, "skipped", ()))
        pool = ThreadPoolExecutor(self.num_workers) if self.num_workers > 0 else None
        try:
            for idx in batches:
                if pool is None:
                    samples = [self._load(epoch, i) for i in idx]
                else:
                    samples = list(pool.map(lambda i: self._load(epoch, i), idx))
                samples = [s for s in samples if s is not None]
                if samples:
                    yield self.collate_fn(samples)
        finally:
            if pool is not None:
                pool.shutdown(wait=True, cancel_futures=True)
        skipped = getattr(self.dataset, "skipped", ())
        if len(skipped) > skipped_before:
            warnings.warn(
                f"skipped {len(skipped)} unreadable image file(s) so far: "
                + ", ".join(skipped[:5])
                + (" ..." if len(skipped) > 5 else ""),
                DataWarning,
                stacklevel=2,
            )
