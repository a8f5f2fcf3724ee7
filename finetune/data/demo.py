"""A deterministic synthetic image-classification set: drawn shapes on noisy backgrounds.

``make_shapes`` writes real image files in ImageFolder layout (``train/<class>/``, ``val/<class>/``)
so examples and tests exercise the same decoding path as a user's own photos. The same arguments
always give byte-identical files.
"""

from __future__ import annotations

import colorsys
import math
import os
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from ..errors import DataError

SHAPES = ("circle", "square", "triangle", "star")


def _polygon(kind: str, cx: float, cy: float, r: float, angle: float) -> list[tuple[float, float]]:
    if kind == "square":
        pts = [(math.cos(a), math.sin(a)) for a in np.pi / 4 + np.arange(4) * np.pi / 2]
    elif kind == "triangle":
        pts = [(math.cos(a), math.sin(a)) for a in -np.pi / 2 + np.arange(3) * 2 * np.pi / 3]
    elif kind == "star":
        pts = []
        for k in range(10):
            rad = 1.0 if k % 2 == 0 else 0.45
            a = -np.pi / 2 + k * np.pi / 5
            pts.append((rad * math.cos(a), rad * math.sin(a)))
    else:
        raise ValueError(f"unknown shape {kind!r}")
    return place(pts, cx, cy, r, angle)


def place(points, cx: float, cy: float, r: float, angle: float) -> list[tuple[float, float]]:
    """Unit-radius ``points`` turned by ``angle``, scaled by ``r`` and centred on ``(cx, cy)``."""
    c, s = math.cos(angle), math.sin(angle)
    return [(cx + r * (x * c - y * s), cy + r * (x * s + y * c)) for x, y in points]


def _class_colour(hue: float, rng: np.random.Generator) -> np.ndarray:
    h = (hue + rng.uniform(-0.06, 0.06)) % 1.0
    r, g, b = colorsys.hsv_to_rgb(h, rng.uniform(0.6, 1.0), rng.uniform(0.7, 1.0))
    return np.array([r, g, b]) * 255


def draw_shape(
    kind: str, size: int, rng: np.random.Generator, hue: float | None = None
) -> Image.Image:
    """One image: a random background colour with noise, one shape of random colour and pose.

    With ``hue``, the shape's colour stays near that hue and the background is grey (an easier,
    colour-coded variant).
    """
    bg = rng.integers(0, 256, size=3) if hue is None else np.full(3, rng.integers(0, 256))
    fg = rng.integers(0, 256, size=3) if hue is None else _class_colour(hue, rng)
    while np.abs(fg.astype(int) - bg.astype(int)).sum() < 180:  # keep the shape visible
        if hue is None:
            fg = rng.integers(0, 256, size=3)
        else:
            bg = np.full(3, rng.integers(0, 256))
    noise = rng.normal(0, 18, size=(size, size, 3))
    img = Image.fromarray(np.clip(bg[None, None, :] + noise, 0, 255).astype(np.uint8), mode="RGB")
    r = size * rng.uniform(0.18, 0.32)
    cx, cy = rng.uniform(r, size - r, size=2)
    angle = rng.uniform(0, 2 * np.pi)
    draw = ImageDraw.Draw(img)
    colour = tuple(int(v) for v in fg)
    if kind == "circle":
        draw.ellipse((cx - r, cy - r, cx + r, cy + r), fill=colour)
    else:
        draw.polygon(_polygon(kind, cx, cy, r, angle), fill=colour)
    return img.filter(ImageFilter.GaussianBlur(radius=0.6))


# below this a shape is a few blurred pixels: no class can be told apart
MIN_SIZE = 8


def check_count(name: str, value) -> None:
    """A positive whole number, or a ``DataError`` naming ``name``."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise DataError(f"{name} must be a positive integer, got {value!r}")


def check_size(size) -> None:
    """An image side large enough for a shape to be told apart, or a ``DataError``."""
    check_count("size", size)
    if size < MIN_SIZE:
        raise DataError(f"size must be at least {MIN_SIZE} pixels for a visible shape, got {size}")


def make_shapes(
    root: str | os.PathLike,
    n_per_class: int = 60,
    size: int = 64,
    seed: int = 0,
    classes: tuple[str, ...] = SHAPES,
    val_per_class: int | None = None,
    colour_coded: bool = False,
) -> Path:
    """Write ``root/train/<class>/*.png`` and ``root/val/<class>/*.png``; return ``root``.

    ``val_per_class`` defaults to a quarter of ``n_per_class`` (at least 2). ``colour_coded``
    gives each class its own hue on grey backgrounds: an easy variant that small networks learn
    in seconds, for quick end-to-end checks.
    """
    check_count("n_per_class", n_per_class)
    check_size(size)
    if val_per_class is not None:
        check_count("val_per_class", val_per_class)
    if len(set(classes)) < 2 or len(set(classes)) != len(classes):
        raise DataError(
            f"classes must be at least two different shapes, got {', '.join(classes) or 'none'}"
        )
    root = Path(root)
    if val_per_class is None:
        val_per_class = max(2, n_per_class // 4)
    for split, count, split_id in (("train", n_per_class, 0), ("val", val_per_class, 1)):
        for class_id, kind in enumerate(classes):
            folder = root / split / kind
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(count):
                rng = np.random.default_rng([seed, split_id, class_id, i])
                hue = class_id / len(classes) if colour_coded else None
                draw_shape(kind, size, rng, hue).save(
                    folder / f"{kind}_{i:04d}.png", optimize=False
                )
    return root
