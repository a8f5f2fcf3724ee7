"""Image transforms (torchvision's names and algorithms): PIL image in, tensor from ``ToTensor``.

Random transforms draw from the per-sample generator the ``DataLoader`` installs (seeded by
loader seed, epoch and sample index, so a run is reproducible whatever the thread order), or from
their own ``seed=`` generator when used on their own. Each transform says whether it is
``deterministic``; the training loop caches backbone features only when the whole pipeline is.
"""

from __future__ import annotations

import contextlib
import math
import threading
from collections.abc import Callable, Iterator, Sequence

import numpy as np
from PIL import Image

from ..creation import from_numpy
from ..tensor import Tensor

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

_local = threading.local()


@contextlib.contextmanager
def sample_rng(rng: np.random.Generator) -> Iterator[None]:
    """Make random transforms in this thread draw from ``rng`` (the per-sample generator)."""
    previous = getattr(_local, "rng", None)
    _local.rng = rng
    try:
        yield
    finally:
        _local.rng = previous


class Transform:
    """Base class: a callable with a ``deterministic`` flag."""

    deterministic = True

    def __call__(self, img):
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.extra_repr()})"

    def extra_repr(self) -> str:
        return ""


class RandomTransform(Transform):
    deterministic = False

    def __init__(self, seed: int | None = None) -> None:
        self._own_rng = np.random.default_rng(seed)

    def rng(self) -> np.random.Generator:
        active = getattr(_local, "rng", None)
        return active if active is not None else self._own_rng


class Compose(Transform):
    def __init__(self, transforms: Sequence[Callable]) -> None:
        self.transforms = list(transforms)

    @property
    def deterministic(self) -> bool:  # type: ignore[override]
        return all(getattr(t, "deterministic", False) for t in self.transforms)

    def __call__(self, img):
        for t in self.transforms:
            img = t(img)
        return img

    def __repr__(self) -> str:
        lines = "".join(f"\n    {t!r}" for t in self.transforms)
        return f"Compose({lines}\n)"


def _size_pair(size) -> tuple[int, int]:
    if isinstance(size, int):
        return size, size
    h, w = size
    return int(h), int(w)


class Resize(Transform):
    """Resize the shorter side to ``size`` (an int), or to exactly ``(h, w)``; bilinear default."""

    def __init__(self, size, interpolation=Image.BILINEAR) -> None:
        self.size = size
        self.interpolation = interpolation

    def __call__(self, img: Image.Image) -> Image.Image:
        w, h = img.size
        if isinstance(self.size, int):
            short, long = (w, h) if w <= h else (h, w)
            if short == self.size:
                return img
            new_short, new_long = self.size, int(self.size * long / short)
            new_w, new_h = (new_short, new_long) if w <= h else (new_long, new_short)
        else:
            new_h, new_w = _size_pair(self.size)
        return img.resize((new_w, new_h), self.interpolation)

    def extra_repr(self) -> str:
        return f"size={self.size}"


class CenterCrop(Transform):
    """Crop the centre ``(h, w)``; pads with zeros first when the image is smaller (torchvision)."""

    def __init__(self, size) -> None:
        self.size = _size_pair(size)

    def __call__(self, img: Image.Image) -> Image.Image:
        th, tw = self.size
        w, h = img.size
        if tw > w or th > h:
            padded = Image.new(img.mode, (max(w, tw), max(h, th)))
            padded.paste(img, ((max(w, tw) - w) // 2, (max(h, th) - h) // 2))
            img, (w, h) = padded, padded.size
        top = int(round((h - th) / 2.0))
        left = int(round((w - tw) / 2.0))
        return img.crop((left, top, left + tw, top + th))

    def extra_repr(self) -> str:
        return f"size={self.size}"


class RandomResizedCrop(RandomTransform):
    """A random area/aspect crop resized to ``size`` (torchvision's algorithm and fallback)."""

    def __init__(
        self,
        size,
        scale=(0.08, 1.0),
        ratio=(3 / 4, 4 / 3),
        interpolation=Image.BILINEAR,
        seed: int | None = None,
    ) -> None:
        super().__init__(seed)
        self.size = _size_pair(size)
        self.scale, self.ratio, self.interpolation = scale, ratio, interpolation

    def get_params(self, width: int, height: int) -> tuple[int, int, int, int]:
        rng = self.rng()
        area = width * height
        log_ratio = (math.log(self.ratio[0]), math.log(self.ratio[1]))
        for _ in range(10):
            target_area = area * rng.uniform(*self.scale)
            aspect = math.exp(rng.uniform(*log_ratio))
            w = int(round(math.sqrt(target_area * aspect)))
            h = int(round(math.sqrt(target_area / aspect)))
            if 0 < w <= width and 0 < h <= height:
                i = int(rng.integers(0, height - h + 1))
                j = int(rng.integers(0, width - w + 1))
                return i, j, h, w
        in_ratio = width / height
        if in_ratio < min(self.ratio):
            w, h = width, int(round(width / min(self.ratio)))
        elif in_ratio > max(self.ratio):
            h, w = height, int(round(height * max(self.ratio)))
        else:
            w, h = width, height
        return (height - h) // 2, (width - w) // 2, h, w

    def __call__(self, img: Image.Image) -> Image.Image:
        i, j, h, w = self.get_params(*img.size)
        th, tw = self.size
        return img.resize((tw, th), self.interpolation, box=(j, i, j + w, i + h))

    def extra_repr(self) -> str:
        return f"size={self.size}, scale={self.scale}, ratio={self.ratio}"


class RandomHorizontalFlip(RandomTransform):
    def __init__(self, p: float = 0.5, seed: int | None = None) -> None:
        super().__init__(seed)
        self.p = p

    def __call__(self, img):
        if self.rng().random() < self.p:
            if isinstance(img, Tensor):
                return from_numpy(np.ascontiguousarray(img._data[..., ::-1]))
            return img.transpose(Image.FLIP_LEFT_RIGHT)
        return img

    def extra_repr(self) -> str:
        return f"p={self.p}"


class ToTensor(Transform):
    """HWC uint8 PIL image → CHW float32 tensor in [0, 1]."""

    def __call__(self, img: Image.Image) -> Tensor:
        arr = np.asarray(img, dtype=np.uint8)
        if arr.ndim == 2:
            arr = arr[:, :, None]
        out = arr.transpose(2, 0, 1).astype(np.float32)
        out *= np.float32(1 / 255)
        return from_numpy(out)


class Normalize(Transform):
    """``(x - mean) / std`` per channel, ImageNet statistics by default."""

    def __init__(self, mean=IMAGENET_MEAN, std=IMAGENET_STD) -> None:
        self.mean = tuple(float(m) for m in mean)
        self.std = tuple(float(s) for s in std)
        self._mean = np.asarray(self.mean, dtype=np.float32)[:, None, None]
        self._inv_std = (1 / np.asarray(self.std, dtype=np.float32))[:, None, None]

    def __call__(self, t: Tensor) -> Tensor:
        return from_numpy(((t._data - self._mean) * self._inv_std).astype(np.float32, copy=False))

    def extra_repr(self) -> str:
        return f"mean={list(self.mean)}, std={list(self.std)}"


def imagenet_eval(size: int = 224, resize: int = 256) -> Compose:
    """The standard evaluation pipeline: resize, centre crop, to tensor, ImageNet normalise."""
    return Compose([Resize(resize), CenterCrop(size), ToTensor(), Normalize()])


def imagenet_train(size: int = 224, seed: int | None = None) -> Compose:
    """The standard augmenting pipeline: random resized crop, flip, to tensor, normalise."""
    return Compose(
        [
            RandomResizedCrop(size, seed=seed),
            RandomHorizontalFlip(seed=seed),
            ToTensor(),
            Normalize(),
        ]
    )
