"""Reading an image at arbitrary (fractional) points: nearest, linear or cubic taps per axis,
with a padding rule for points and taps outside the image. GridSample, RoiAlign and DeformConv
are compositions around this one Function.

A new Function rather than a composition: the taps' gather and, in backward, their scatter-add
into the image are one indexed pass each here, where a composition would materialise one graph
node per tap and per axis, and its gradient for the points needs each weight's derivative.
"""

from __future__ import annotations

import itertools
import math

import numpy as np

from ..errors import ShapeError
from .function import Function

CUBIC_A = -0.75  # Keys' cubic, as onnxruntime's and PyTorch's bicubic sampling


def _cubic(t: np.ndarray) -> tuple[list, list]:
    """The four cubic weights of taps ``-1, 0, 1, 2`` at fraction ``t`` and their derivatives
    with respect to ``t``."""
    a = CUBIC_A

    def near(s):  # |s| <= 1
        return ((a + 2) * s - (a + 3)) * s * s + 1, (3 * (a + 2) * s - 2 * (a + 3)) * s

    def far(s):  # 1 < |s| < 2
        return ((a * s - 5 * a) * s + 8 * a) * s - 4 * a, (3 * a * s - 10 * a) * s + 8 * a

    (w0, d0), (w1, d1) = far(t + 1), near(t)
    (w2, d2), (w3, d3) = near(1 - t), far(2 - t)
    return [w0, w1, w2, w3], [d0, d1, -d2, -d3]


def _reflect(u: np.ndarray, low: float, high: float) -> tuple[np.ndarray, np.ndarray]:
    """``u`` reflected off ``low`` and ``high`` until it falls between them, and the sign of
    its derivative."""
    span = high - low
    if span <= 0:
        return np.full_like(u, low), np.zeros_like(u)
    distance = np.abs(u - low)
    flips = np.floor(distance / span)
    rest = distance - flips * span
    even = flips % 2 == 0
    out = np.where(even, low + rest, high - rest)
    sign = np.where(u >= low, 1.0, -1.0) * np.where(even, 1.0, -1.0)
    return out, sign


def _axis_taps(u: np.ndarray, size: int, mode: str, padding: str, bounds: tuple) -> tuple:
    """One axis: for each tap, ``(index, valid, weight, dweight/du)``, and ``du'/du``, the
    derivative of the coordinate the padding rule leaves (zero where it clamps).

    ``padding``: ``zeros`` (taps outside read 0), ``border`` (coordinates and taps clamp to the
    edge; cubic clamps only its taps, as onnxruntime and PyTorch), ``reflection`` (off
    ``bounds``), ``roi`` (RoiAlign: a point outside ``[-1, size]`` reads 0, one inside clamps to
    the edge)."""
    factor = np.ones_like(u)
    inside = np.ones(u.shape, dtype=bool)
    if mode == "nearest":
        u = np.rint(u)
        factor = np.zeros_like(u)
    low, high = bounds
    if padding == "border" and mode != "cubic":  # cubic clamps its taps only (onnxruntime)
        outside = (u < low) | (u > high)
        clamped = np.clip(u, 0, size - 1)
        factor = np.where(outside & (clamped != u), 0.0, factor)
        u = np.where(outside, clamped, u)
    elif padding == "reflection":
        outside = (u < low) | (u > high)
        reflected, sign = _reflect(u, low, high)
        factor = np.where(outside, factor * sign, factor)
        u = np.where(outside, reflected, u)
    elif padding == "roi":
        inside = (u >= -1) & (u <= size)
        clamped = np.clip(u, 0, size - 1)
        factor = np.where(clamped != u, 0.0, factor)
        u = clamped
    if mode == "nearest":
        base, offsets = u.astype(np.int64), [0]  # truncated, as the reference after reflecting
        weights, slopes = [np.ones_like(u)], [np.zeros_like(u)]
    elif mode == "linear":
        base, offsets = np.floor(u), [0, 1]
        fraction = u - base
        weights, slopes = [1 - fraction, fraction], [-np.ones_like(u), np.ones_like(u)]
    else:
        base, offsets = np.floor(u), [-1, 0, 1, 2]
        weights, slopes = _cubic(u - base)
    taps = []
    for offset, weight, slope in zip(offsets, weights, slopes):
        index = np.asarray(base, dtype=np.int64) + offset
        valid = inside.copy()
        if padding in ("zeros", "roi"):
            valid &= (index >= 0) & (index < size)
        elif padding == "reflection" and mode != "nearest":
            index = _reflect(index.astype(np.float64), low, high)[0].astype(np.int64)
        index = np.clip(index, 0, size - 1)
        taps.append((index, valid, weight, slope))
    return taps, factor


class Sample(Function):
    """``x`` (N, C, *spatial) read at ``points`` (M, P, nd), pixel coordinates in the order of
    the spatial axes, of image ``batch[m]`` -> (M, C, P); with ``keep_taps`` the weighted taps
    are not summed: (M, C, P, taps). Differentiable in ``x`` and ``points``."""

    name = "SampleBackward0"

    @staticmethod
    def forward(ctx, x, points, *, batch, mode, padding, bounds, keep_taps=False):
        n, c, sizes = x.shape[0], x.shape[1], x.shape[2:]
        m, p, nd = points.shape
        if nd != len(sizes) or batch.shape != (m,):
            raise ShapeError(
                f"sample: points of shape {list(points.shape)} for an image of shape "
                f"{list(x.shape)}"
            )
        dtype = x.dtype  # the image's type, whatever the points' (GridSample's T1)
        axes = [
            _axis_taps(points[..., d].astype(np.float64), sizes[d], mode, padding, bounds[d])
            for d in range(nd)
        ]
        pitch = [math.prod(sizes[d + 1 :]) for d in range(nd)]
        flat_x = x.reshape(n, c, -1)
        combos = []
        for combo in itertools.product(*(taps for taps, _ in axes)):
            indices, valids, weights, slopes = zip(*combo)
            flat = sum(index * step for index, step in zip(indices, pitch))
            valid = np.logical_and.reduce(valids)
            weight = np.prod(weights, axis=0) * valid
            values = flat_x[batch[:, None], :, flat].transpose(0, 2, 1)  # m p c -> m c p
            combos.append((flat, valid, weight, weights, slopes, values))
        weighted = [(w[:, None, :] * v).astype(dtype, copy=False) for _, _, w, _, _, v in combos]
        out = np.stack(weighted, axis=-1) if keep_taps else sum(weighted)
        ctx.combos, ctx.factors = combos, [f for _, f in axes]
        ctx.shape, ctx.batch, ctx.keep_taps = x.shape, batch, keep_taps
        ctx.dtypes = (x.dtype, points.dtype)
        return np.asarray(out, dtype=dtype)

    @staticmethod
    def backward(ctx, grad):
        n, c = ctx.shape[:2]
        length = math.prod(ctx.shape[2:])
        needs = ctx.needs_input_grad
        grad_x = grad_points = None
        grads = [grad[..., t] if ctx.keep_taps else grad for t in range(len(ctx.combos))]
        if needs[0]:
            # m c p positions into the flat n c l image
            rows = (ctx.batch[:, None] * c + np.arange(c)[None, :])[:, :, None] * length
            positions = np.concatenate(
                [(rows + flat[:, None, :]).reshape(-1) for flat, *_ in ctx.combos]
            )
            shares = np.concatenate(
                [(g * w[:, None, :]).reshape(-1) for g, (_, _, w, *_) in zip(grads, ctx.combos)]
            )
            summed = np.bincount(positions, weights=shares, minlength=n * c * length)
            grad_x = summed.reshape(ctx.shape).astype(ctx.dtypes[0], copy=False)
        if len(needs) > 1 and needs[1]:
            nd = len(ctx.factors)
            grad_points = np.zeros((*ctx.batch.shape, grads[0].shape[2], nd))
            for g, (_, valid, _, weights, slopes, values) in zip(grads, ctx.combos):
                along = (g * values).sum(axis=1) * valid  # m c p -> m p
                for d in range(nd):
                    others = np.prod([w for e, w in enumerate(weights) if e != d], axis=0)
                    grad_points[..., d] += along * others * slopes[d] * ctx.factors[d]
            grad_points = grad_points.astype(ctx.dtypes[1], copy=False)
        return grad_x, grad_points


def sample(x, points, batch=None, mode="linear", padding="zeros", bounds=None, keep_taps=False):
    """``Sample`` with defaults: every image read at its own points (``batch`` None), the
    reflection bounds those of ``align_corners=False`` (``[-0.5, size - 0.5]``)."""
    if batch is None:
        batch = np.arange(x.shape[0])
    if bounds is None:
        bounds = tuple((-0.5, s - 0.5) for s in x.shape[2:])
    return Sample.apply(
        x,
        points,
        batch=np.asarray(batch, dtype=np.int64),
        mode=mode,
        padding=padding,
        bounds=tuple(bounds),
        keep_taps=keep_taps,
    )
