"""A synthetic pretext set for pretraining a backbone offline: shapes the demo set does not have.

Twelve other shapes (pentagon, cross, crescent, ring, arrow, ...), drawn in random colours on
a noisy background of another random colour, so the features a network learns here are about
outline and corners, not about one colour. None of the demo set's classes (``demo.SHAPES``) is
among them: a backbone pretrained here has never seen a circle, square, triangle or star.
``textured`` gives a share of the shapes and backgrounds striped, checked or graded fills; the
offline example leaves it at 0 (with 0.3 its backbone reached val_acc 0.70 on the demo set
instead of 0.85: the demo has plain fills, and textures slow the learning down). Images are made
in memory from a seed and an index (``PretextShapes[i]`` is always the same image), at the demo
set's 64 pixels.
"""

from __future__ import annotations

import math

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from ..errors import DataError
from .demo import SHAPES, check_count, check_size, place
from .loader import Dataset

PRETEXT_SHAPES = (
    "pentagon",
    "hexagon",
    "cross",
    "arrow",
    "heart",
    "crescent",
    "ring",
    "semicircle",
    "ellipse",
    "rectangle",
    "rhombus",
    "trapezoid",
)
assert not set(PRETEXT_SHAPES) & set(SHAPES), "the pretext set must not hold a demo class"

# a shape's radius as a fraction of the image's side, and how far apart the colours of shape and
# background must be (summed over RGB)
RADIUS = (0.24, 0.38)
MIN_CONTRAST = 150


def _outline(kind: str) -> list[tuple[float, float]]:
    """The polygon of ``kind`` in unit coordinates (radius about 1, centred on the origin)."""
    if kind in ("pentagon", "hexagon"):
        n = 5 if kind == "pentagon" else 6
        return [(math.cos(a), math.sin(a)) for a in -math.pi / 2 + np.arange(n) * 2 * math.pi / n]
    if kind == "cross":
        w = 0.33
        return [
            (-w, -1), (w, -1), (w, -w), (1, -w), (1, w), (w, w),
            (w, 1), (-w, 1), (-w, w), (-1, w), (-1, -w), (-w, -w),
        ]  # fmt: skip
    if kind == "arrow":
        return [(-1, -0.3), (0.1, -0.3), (0.1, -0.8), (1, 0), (0.1, 0.8), (0.1, 0.3), (-1, 0.3)]
    if kind == "heart":
        t = np.linspace(0, 2 * math.pi, 40, endpoint=False)
        x = 16 * np.sin(t) ** 3
        y = -(13 * np.cos(t) - 5 * np.cos(2 * t) - 2 * np.cos(3 * t) - np.cos(4 * t))
        return list(zip(x / 16, (y + 2) / 16, strict=True))
    if kind == "semicircle":
        t = np.linspace(0, math.pi, 24)
        return list(zip(np.cos(t), np.sin(t) * 1.0 - 0.4, strict=True))
    if kind == "ellipse":
        t = np.linspace(0, 2 * math.pi, 40, endpoint=False)
        return list(zip(np.cos(t), 0.5 * np.sin(t), strict=True))
    if kind == "rectangle":
        return [(-1, -0.5), (1, -0.5), (1, 0.5), (-1, 0.5)]
    if kind == "rhombus":
        return [(0, -1), (0.5, 0), (0, 1), (-0.5, 0)]
    if kind == "trapezoid":
        return [(-1, 0.6), (1, 0.6), (0.45, -0.6), (-0.45, -0.6)]
    raise DataError(f"unknown pretext shape {kind!r}; the pretext shapes are {PRETEXT_SHAPES}")


def _mask(kind: str, size: int, rng: np.random.Generator) -> Image.Image:
    """The shape as a white-on-black mask, at a random place, size and angle."""
    mask = Image.new("L", (size, size), 0)
    draw = ImageDraw.Draw(mask)
    r = size * rng.uniform(*RADIUS)
    cx, cy = rng.uniform(r, size - r, size=2)
    angle = rng.uniform(0, 2 * math.pi)
    if kind in ("ring", "crescent"):
        draw.ellipse((cx - r, cy - r, cx + r, cy + r), fill=255)
        if kind == "ring":
            inner = r * rng.uniform(0.45, 0.6)
            ox = oy = 0.0
        else:
            inner = r * rng.uniform(0.8, 0.9)
            ox, oy = r * 0.45 * math.cos(angle), r * 0.45 * math.sin(angle)
        box = (cx + ox - inner, cy + oy - inner, cx + ox + inner, cy + oy + inner)
        draw.ellipse(box, fill=0)
    else:
        draw.polygon(place(_outline(kind), cx, cy, r, angle), fill=255)
    return mask


def _texture(size: int, rng: np.random.Generator, textured: float) -> tuple[np.ndarray, np.ndarray]:
    """A fill and its mean colour: one colour (an RGB triple, broadcast by the caller), or
    (with probability ``textured``) stripes, checks or a gradient of two, ``(size, size, 3)``."""
    a, b = rng.integers(0, 256, size=(2, 3)).astype(np.float32)
    if rng.random() >= textured:
        return a, a
    style = rng.choice(["stripes", "checks", "gradient"])
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    theta = rng.uniform(0, math.pi)
    period = rng.uniform(4, 10)
    u = xx * math.cos(theta) + yy * math.sin(theta)
    if style == "stripes":
        w = (np.sin(2 * math.pi * u / period) > 0).astype(np.float32)
    elif style == "checks":
        v = -xx * math.sin(theta) + yy * math.cos(theta)
        w = ((np.floor(u / period) + np.floor(v / period)) % 2).astype(np.float32)
    else:
        w = (u - u.min()) / max(u.max() - u.min(), 1e-6)
    mean = float(w.mean())
    return a * (1 - w[..., None]) + b * w[..., None], a * (1 - mean) + b * mean


def draw_pretext(
    kind: str, size: int, rng: np.random.Generator, textured: float = 0.0
) -> Image.Image:
    """One image: a shape of ``kind`` on a noisy background, each plain or (with probability
    ``textured``) striped, checked or graded."""
    mask = _mask(kind, size, rng)
    bg, bg_mean = _texture(size, rng, textured)
    fg, fg_mean = _texture(size, rng, textured)
    while np.abs(fg_mean - bg_mean).sum() < MIN_CONTRAST:  # keep the shape visible
        fg, fg_mean = _texture(size, rng, textured)
    alpha = np.asarray(mask, dtype=np.float32)[..., None] * np.float32(1 / 255)
    noise = rng.standard_normal((size, size, 3), dtype=np.float32) * np.float32(18)
    pixels = bg + (fg - bg) * alpha + noise
    img = Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8), mode="RGB")
    return img.filter(ImageFilter.GaussianBlur(radius=0.6))


class PretextShapes(Dataset):
    """``n`` images of ``PRETEXT_SHAPES`` (labels cycle through the classes), each drawn from
    ``(seed, index)`` when asked for, then passed through ``transform`` when given;
    ``textured`` is the chance that the shape, or the background, is striped, checked or graded."""

    classes = list(PRETEXT_SHAPES)

    def __init__(
        self,
        n: int,
        size: int = 64,
        seed: int = 0,
        transform=None,
        textured: float = 0.0,
    ) -> None:
        check_count("n", n)
        check_size(size)
        if not 0 <= textured <= 1:
            raise DataError(f"textured must be a probability in [0, 1], got {textured!r}")
        self.n, self.size, self.seed, self.transform = int(n), int(size), int(seed), transform
        self.textured = float(textured)

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, index: int):
        if not 0 <= index < self.n:
            raise IndexError(f"index {index} out of range for {self.n} pretext images")
        label = index % len(PRETEXT_SHAPES)
        rng = np.random.default_rng([self.seed, 2, index])
        img = draw_pretext(PRETEXT_SHAPES[label], self.size, rng, self.textured)
        return (self.transform(img) if self.transform else img), label
