"""Backbone features of a frozen model, computed on a pool of Ray actors.

The samples are cut into the same blocks as the local ``compute_features`` (so each block's
arithmetic, and hence each feature, is the same), the blocks are handed to idle actors, and the
float32 results are written into one array in data set order. Each actor imports the model once
and reads its blocks' images itself.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable

import numpy as np

from ..errors import TrainingError
from .cluster import connect, worker_name
from .pool import ActorPool
from .transport import SampleReader, model_from_bytes, model_to_bytes, module_name


class FeatureWorker:
    """One actor: the model imported once; ``extract`` returns the head's input for a block."""

    def __init__(self, model_bytes: bytes, head_name: str) -> None:
        self.model = model_from_bytes(model_bytes).eval()
        self.head = dict(self.model.named_modules())[head_name]
        self.token = None
        self.reader = None
        self.checked = False

    def extract(self, token: str, reader_ref: list, indices: list[int]):
        """``(rows, features, labels)`` of the readable samples among ``indices``."""
        import ray

        from ..autograd import no_grad
        from ..train import _capture_input

        if token != self.token:
            self.reader, self.token = ray.get(reader_ref[0]), token
        loaded = self.reader.batch(0, indices)
        if loaded is None:
            return [], None, None
        rows, x, y = loaded
        with no_grad(), _capture_input(self.head) as seen:
            out = self.model(x)
        feats = seen[-1]
        if not self.checked:
            with no_grad():
                if not np.array_equal(self.head(feats)._data, out._data, equal_nan=True):
                    raise TrainingError(
                        f"the model's output is not its head's output (on Ray worker "
                        f"{worker_name()})"
                    )
            self.checked = True
        return rows, np.asarray(feats._data, dtype=np.float32), np.asarray(y._data)


class RayExtractor:
    """``extract(model, head, loader)`` for ``fit``: the features on Ray actors, the actors kept
    for the next data set of the same model (the validation set)."""

    def __init__(
        self, cluster: str, progress: bool = True, log: Callable | None = None, actors=None
    ) -> None:
        self.cluster = cluster
        self.progress = progress
        self.log = log
        self.num_actors = actors
        self.pool: ActorPool | None = None
        self._model_key = None

    def __call__(self, model, head, loader):
        from ..train import FEATURE_BATCH

        ray = connect(self.cluster, log=self.log)
        reader = SampleReader(loader)
        n = len(reader)
        block = min(loader.batch_size, FEATURE_BATCH)
        blocks = [list(range(s, min(s + block, n))) for s in range(0, n, block)]
        pool = self._pool(ray, model, head, reader, len(blocks))
        token = f"{id(reader)}-{time.monotonic_ns()}"
        reader_ref = [ray.put(reader)]
        features = labels = None
        valid = np.zeros(n, dtype=bool)
        started = time.perf_counter()
        bar = _bar(n, self.progress)
        tasks = [
            functools.partial(_submit, token=token, reader_ref=reader_ref, indices=b)
            for b in blocks
        ]
        try:
            for i, (rows, feats, y) in pool.run(tasks, lambda i: _describe(blocks[i])):
                if rows:
                    if features is None:
                        features = np.zeros((n,) + feats.shape[1:], dtype=np.float32)
                        labels = np.zeros(n, dtype=np.int64)
                    features[rows], labels[rows], valid[rows] = feats, y, True
                if bar is not None:
                    bar.update(len(blocks[i]))
        except BaseException:
            self.close()
            raise
        finally:
            if bar is not None:
                bar.close()
        if features is None:
            raise TrainingError("no readable samples in the training set")
        seconds = time.perf_counter() - started
        if self.log:
            self.log(
                f"computed backbone features of {int(valid.sum())} samples on "
                f"{len(pool.actors)} Ray actors in {seconds:.1f} s "
                f"({n / max(seconds, 1e-9):.1f} images/s)"
            )
        return features, labels, valid

    def _pool(self, ray, model, head, reader, blocks: int) -> ActorPool:
        key = (id(model), id(head), tuple(model.state_dict().keys()))
        if self.pool is not None and key == self._model_key:
            return self.pool
        self.close()
        model_ref = ray.put(model_to_bytes(model, reader.example()))
        size = self.num_actors or max(1, int(ray.cluster_resources().get("CPU", 1)))
        worker = ray.remote(num_cpus=1)(FeatureWorker)
        head_name = module_name(model, head)
        self.pool = ActorPool(
            ray, lambda: worker.remote(model_ref, head_name), min(size, blocks), self.log
        )
        self._model_key = key
        return self.pool

    def close(self) -> None:
        if self.pool is not None:
            self.pool.close()
        self.pool = self._model_key = None


def _submit(actor, token, reader_ref, indices):
    return actor.extract.remote(token, reader_ref, indices)


def _describe(indices: list[int]) -> str:
    return f"samples {indices[0]}..{indices[-1]}"


def _bar(total: int, enabled: bool):
    if not enabled:
        return None
    from tqdm.auto import tqdm

    return tqdm(total=total, desc="features (Ray)", unit="img", leave=False, dynamic_ncols=True)


def ray_extractor(
    cluster: str, progress: bool = True, log: Callable | None = None, actors: int | None = None
) -> RayExtractor:
    """The feature extractor ``fit(..., cluster=...)`` uses: ``actors`` actors (default one per
    CPU of the cluster)."""
    return RayExtractor(cluster, progress, log, actors)
