"""``ImageFolder``: one sub-folder per class, images decoded with Pillow into RGB.

Bad files never pass silently: with ``on_error="raise"`` the first one stops with a
``DataError`` naming it; with ``on_error="skip"`` it is left out of its batch, counted, and
reported by the loader at the end of the epoch.
"""

from __future__ import annotations

import os
import threading
import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

from ..errors import DataError

IMG_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm")

# Refuse images above ~89 megapixels outright (Pillow's warning threshold) instead of decoding a
# decompression bomb; fine-tuning images are a few megapixels at most.
MAX_IMAGE_PIXELS = Image.MAX_IMAGE_PIXELS or 89_478_485


def load_image(path: str | os.PathLike) -> Image.Image:
    """Open ``path`` as an 8-bit RGB image with EXIF orientation applied, or raise ``DataError``.

    Grayscale, palette, CMYK and 16-bit images are converted; an alpha channel is dropped, as
    torchvision's loader does.
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise DataError(f"image file {path} does not exist")
    try:
        if os.path.getsize(path) == 0:
            raise DataError(f"image file {path} is empty (0 bytes); delete or replace it")
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as im:
                w, h = im.size
                if w * h > MAX_IMAGE_PIXELS:
                    raise DataError(
                        f"image file {path} claims {w}x{h} pixels, more than the "
                        f"{MAX_IMAGE_PIXELS} allowed (possible decompression bomb); resize it"
                    )
                im.load()
                im = ImageOps.exif_transpose(im)
                return _to_rgb(im)
    except DataError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        raise DataError(f"image file {path} is too large to decode safely: {e}") from None
    except (OSError, ValueError, SyntaxError) as e:
        raise DataError(
            f"cannot read image file {path}: {e}. The file is truncated, corrupt or not an image."
        ) from None


def _to_rgb(im: Image.Image) -> Image.Image:
    if im.mode == "RGB":
        return im
    if im.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        arr = np.asarray(im).astype(np.float64)
        if im.mode.startswith("I;16") or arr.max(initial=0) > 255:
            arr = arr / 257.0
        im = Image.fromarray(np.clip(np.round(arr), 0, 255).astype(np.uint8), mode="L")
    return im.convert("RGB")


def _is_image(name: str) -> bool:
    return name.lower().endswith(IMG_EXTENSIONS)


class ImageFolder:
    """``root/<class>/<image>`` as (image, class index) samples, classes in sorted order."""

    def __init__(
        self,
        root: str | os.PathLike,
        transform: Callable | None = None,
        target_transform: Callable | None = None,
        on_error: str = "raise",
        loader: Callable = load_image,
    ) -> None:
        if on_error not in ("raise", "skip"):
            raise ValueError(f"on_error must be 'raise' or 'skip', got {on_error!r}")
        self.root = Path(root)
        if not self.root.is_dir():
            raise DataError(f"dataset folder {self.root} does not exist or is not a folder")
        self.classes = sorted(
            e.name for e in os.scandir(self.root) if e.is_dir() and not e.name.startswith(".")
        )
        if not self.classes:
            raise DataError(
                f"dataset folder {self.root} has no class sub-folders; expected "
                f"{self.root}/<class name>/<image files>"
            )
        self.class_to_idx = {c: i for i, c in enumerate(self.classes)}
        self.samples: list[tuple[str, int]] = []
        for cls in self.classes:
            files = []
            for dirpath, _, names in sorted(os.walk(self.root / cls, followlinks=True)):
                files.extend(os.path.join(dirpath, n) for n in sorted(names) if _is_image(n))
            if not files:
                raise DataError(
                    f"class folder {self.root / cls} has no image files "
                    f"({', '.join(IMG_EXTENSIONS)})"
                )
            self.samples.extend((f, self.class_to_idx[cls]) for f in files)
        self.targets = [t for _, t in self.samples]
        self.transform = transform
        self.target_transform = target_transform
        self.on_error = on_error
        self.loader = loader
        self._skipped: set[str] = set()
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int):
        """The sample at ``index``, or ``None`` for a bad file when ``on_error="skip"``."""
        path, target = self.samples[index]
        try:
            img = self.loader(path)
        except DataError:
            if self.on_error == "raise":
                raise
            with self._lock:
                self._skipped.add(path)
            return None
        if self.transform is not None:
            img = self.transform(img)
        if self.target_transform is not None:
            target = self.target_transform(target)
        return img, target

    @property
    def skipped(self) -> list[str]:
        """Files skipped so far because they could not be read."""
        return sorted(self._skipped)

    def __repr__(self) -> str:
        return (
            f"ImageFolder(root={str(self.root)!r}, classes={len(self.classes)}, "
            f"samples={len(self)}, transform={self.transform!r})"
        )
