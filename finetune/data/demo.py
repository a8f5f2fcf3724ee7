"""A deterministic synthetic image-classification set: drawn shapes on noisy backgrounds.

``make_shapes`` writes real image files in ImageFolder layout (``train/<class>/``, ``val/<class>/``)
so examples and tests exercise the same decoding path as a user's own photos. The same arguments
always give byte-identical files.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

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
    c, s = math.cos(angle), math.sin(angle)
    return [(cx + r * (x * c - y * s), cy + r * (x * s + y * c)) for x, y in pts]


def draw_shape(kind: str, size: int, rng: np.random.Generator) -> Image.Image:
    """One image: a random background colour with noise, one shape of random colour and pose."""
    bg = rng.integers(0, 256, size=3)
    noise = rng.normal(0, 18, size=(size, size, 3))
    pixels = np.clip(bg[None, None, :] + noise, 0, 255).astype(np.uint8)
    img = Image.fromarray(pixels, mode="RGB")
    fg = rng.integers(0, 256, size=3)
    while np.abs(fg.astype(int) - bg.astype(int)).sum() < 180:  # keep the shape visible
        fg = rng.integers(0, 256, size=3)
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


def make_shapes(
    root: str | os.PathLike,
    n_per_class: int = 60,
    size: int = 64,
    seed: int = 0,
    classes: tuple[str, ...] = SHAPES,
    val_per_class: int | None = None,
) -> Path:
    """Write ``root/train/<class>/*.png`` and ``root/val/<class>/*.png``; return ``root``.

    ``val_per_class`` defaults to a quarter of ``n_per_class`` (at least 2).
    """
    root = Path(root)
    if val_per_class is None:
        val_per_class = max(2, n_per_class // 4)
    for split, count, split_id in (("train", n_per_class, 0), ("val", val_per_class, 1)):
        for class_id, kind in enumerate(classes):
            folder = root / split / kind
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(count):
                rng = np.random.default_rng([seed, split_id, class_id, i])
                draw_shape(kind, size, rng).save(folder / f"{kind}_{i:04d}.png", optimize=False)
    return root
