"""``ImageFolder``: one sub-folder per class, images decoded with Pillow into RGB.

Bad files never pass silently: with ``on_error="raise"`` the first one stops with a
``DataError`` naming it; with ``on_error="skip"`` it is left out of its batch, counted, and
reported by the loader at the end of the epoch.
"""

from __future__ import annotations

import contextlib
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


def find_images(
    folder: str | os.PathLike, reached: dict[tuple[int, int], str] | None = None
) -> list[str]:
    """Every image file under ``folder`` (recursively, by extension), sorted by folder then name;
    hidden entries (``.git``, macOS ``._photo.jpg`` forks) are skipped.

    Symlinks are followed, each folder and file at most once: a link back to a folder the walk is
    inside (a loop), or to a folder or image already reached, raises ``DataError`` naming the
    link, so no image is counted twice or under a second class. ``reached`` (folder and file
    identities to paths) carries this across several walks, e.g. the class folders of one set.
    """
    root = os.fspath(folder)
    reached = {} if reached is None else reached
    _reach(reached, _identity(root), root)
    found: list[tuple[str, str]] = []
    pending = [root]
    while pending:
        current = pending.pop()
        try:
            entries = sorted(os.scandir(current), key=lambda e: e.name)
        except OSError as e:
            raise DataError(f"cannot list folder {current}: {e.strerror or e}") from None
        for entry in entries:
            if entry.name.startswith("."):
                continue
            if entry.is_dir():  # follows a symlink
                _reach(reached, _identity(entry.path), entry.path)
                pending.append(entry.path)
            elif _is_image(entry.name):
                if entry.is_symlink():
                    with contextlib.suppress(OSError):  # a dangling link fails when loaded
                        _reach(reached, _identity(entry.path), entry.path)
                else:
                    st = entry.stat(follow_symlinks=False)
                    _reach(reached, (st.st_dev, st.st_ino), entry.path)
                found.append((current, entry.name))
    return [os.path.join(d, n) for d, n in sorted(found)]


def _reach(reached: dict[tuple[int, int], str], identity: tuple[int, int], path: str) -> None:
    """Record that the walk reached ``path``; refuse a folder or file reached before."""
    first = reached.setdefault(identity, path)
    if first == path:
        return
    if _is_inside(path, first):
        raise DataError(
            f"symlink loop: {path} leads back to {first}, which contains it; remove the link so "
            "each image is read once"
        )
    raise DataError(
        f"{first} and {path} are the same {'folder' if os.path.isdir(path) else 'file'}, reached "
        "twice (through a symlink or hard link); remove the link so each image is read once, "
        "under one class"
    )


def _identity(path: str) -> tuple[int, int]:
    st = os.stat(path)
    return st.st_dev, st.st_ino


def _is_inside(path: str, folder: str) -> bool:
    """Whether ``path`` (as written, links unresolved) lies in ``folder``: a link to an ancestor."""
    return os.path.commonpath([os.path.abspath(path), os.path.abspath(folder)]) == os.path.abspath(
        folder
    )


class ImageFolder:
    """``root/<class>/<image>`` as (image, class index) samples, classes in sorted order.

    Class folders are searched recursively with ``find_images`` (symlinks followed once, loops
    refused). ``min_classes`` refuses a root with fewer class folders: training needs two.
    """

    def __init__(
        self,
        root: str | os.PathLike,
        transform: Callable | None = None,
        target_transform: Callable | None = None,
        on_error: str = "raise",
        loader: Callable = load_image,
        min_classes: int = 1,
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
        reached = {_identity(str(self.root)): str(self.root)}
        for cls in self.classes:
            folder = self.root / cls
            files = find_images(folder, reached)
            if not files:
                raise DataError(
                    f"class folder {folder} has no image files ({', '.join(IMG_EXTENSIONS)})"
                )
            self.samples.extend((f, self.class_to_idx[cls]) for f in files)
        if len(self.classes) < min_classes:
            raise DataError(
                f"dataset folder {self.root} has {len(self.classes)} class sub-folder(s) "
                f"({', '.join(self.classes)}); a classifier needs at least {min_classes}: put each "
                f"class's images in its own folder {self.root}/<class name>/"
            )
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
