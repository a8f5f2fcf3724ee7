"""What travels to Ray actors: the model as ONNX bytes, the data as a reader of its samples.

Modules are never pickled: the driver exports the model to ONNX (initializers keep their
``state_dict`` names) and each actor imports it once, so parameter names match on both sides.
The data travels as a ``SampleReader``: the file paths and labels (each actor opens its own
images from storage every node can see) or, for in-memory data sets, the data set itself.
"""

from __future__ import annotations

import numpy as np

from ..data.transforms import sample_rng
from ..errors import DataError, TrainingError
from .cluster import ClusterError, worker_name


def module_name(model, module) -> str:
    for name, candidate in model.named_modules():
        if candidate is module:
            return name
    raise ClusterError(f"{type(module).__name__} is not a submodule of {type(model).__name__}")


def model_to_bytes(model, example) -> bytes:
    """``model`` as ONNX bytes with a dynamic batch, traced in eval mode on ``example``."""
    from ..errors import OnnxExportError
    from ..onnx.export import to_onnx

    was_training = model.training
    model.eval()
    try:
        return to_onnx(model, example).SerializeToString()
    except OnnxExportError as error:
        raise ClusterError(f"the model cannot be sent to Ray workers as ONNX: {error}") from None
    finally:
        model.train(was_training)


def model_from_bytes(data: bytes, trainable: tuple[str, ...] = ()):
    """The imported model in eval mode, with exactly the parameters named in ``trainable``
    requiring gradients (as on the driver)."""
    from ..onnx import load

    model = load(data)
    names = set(trainable)
    for name, p in model.named_parameters():
        p.requires_grad = name in names
    missing = names - {n for n, _ in model.named_parameters()}
    if missing:
        raise ClusterError(f"the replica has no parameters named {sorted(missing)}")
    return model


class SampleReader:
    """Reads sample ``i`` as the driver's ``DataLoader`` would (same per-sample random state),
    from file paths when the data set has them."""

    def __init__(self, loader) -> None:
        from ..feature_cache import file_samples

        found = file_samples(loader.dataset)
        self.seed = loader.seed
        self.collate_fn = loader.collate_fn
        if found is None:
            self.samples, self.dataset = None, loader.dataset
            self.transform = self.target_transform = None
            self.open, self.on_error = None, "raise"
        else:
            samples, base = found
            self.samples, self.dataset = samples, None
            self.transform = getattr(base, "transform", None)
            self.target_transform = getattr(base, "target_transform", None)
            self.open = base.loader
            self.on_error = getattr(base, "on_error", "raise")

    def __len__(self) -> int:
        return len(self.samples) if self.samples is not None else len(self.dataset)

    def load(self, epoch: int, index: int):
        """The sample, or ``None`` for an unreadable file when the data set skips those; a file
        missing on this worker names the path and the worker."""
        with sample_rng(np.random.default_rng([self.seed, epoch, index, 1])):
            if self.samples is None:
                return self.dataset[index]
            path, target = self.samples[index]
            try:
                img = self.open(path)
            except DataError as error:
                if self.on_error == "skip":
                    return None
                raise DataError(f"{error} (on Ray worker {worker_name()})") from None
            if self.transform is not None:
                img = self.transform(img)
            if self.target_transform is not None:
                target = self.target_transform(target)
            return img, target

    def example(self):
        """A batch of one readable sample, to trace the model for export."""
        for i in range(len(self)):
            sample = self.load(0, i)
            if sample is not None:
                return self.collate_fn([sample])[0]
        raise TrainingError("no readable samples in the training set")

    def batch(self, epoch: int, indices):
        """``(rows, x, y)`` for the readable samples among ``indices``; ``None`` if none."""
        loaded = [(int(i), self.load(epoch, int(i))) for i in indices]
        loaded = [(i, s) for i, s in loaded if s is not None]
        if not loaded:
            return None
        x, y = self.collate_fn([s for _, s in loaded])
        return [i for i, _ in loaded], x, y
