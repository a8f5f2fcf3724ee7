"""Resampling (``F.interpolate``, ONNX ``Resize``): one matrix per resized axis.

Nearest, linear and cubic resampling are linear maps applied separably: along each axis the
output is ``A @ x`` for a small ``(out, in)`` matrix ``A``, so the forward is one matmul per axis
and the backward the same with ``A^T``. ``sample_matrix`` builds ``A`` from the input coordinate
each output index reads; where that coordinate comes from is the caller's rule: PyTorch's here
(``axis_matrix``, for ``F.interpolate``), ONNX's in ``finetune/onnx/ops/resize.py``.

PyTorch's coordinate of output index ``d`` (``area_pixel_compute_source_index``):
``scale * (d + 0.5) - 0.5`` clamped at 0 for linear, ``d * (in - 1) / (out - 1)`` with
``align_corners``, and ``floor(d * scale)`` for nearest, where ``scale`` is ``1 / scale_factor``
when a scale factor was given and ``in / out`` otherwise.
"""

from __future__ import annotations

import math

import numpy as np

from .function import Function

_ROUNDING = {
    "round_prefer_floor": lambda v: np.ceil(v - 0.5),
    "round_prefer_ceil": lambda v: np.floor(v + 0.5),
    "floor": np.floor,
    "ceil": np.ceil,
}


def _cubic(distance: np.ndarray, a: float) -> np.ndarray:
    d = np.abs(distance)
    near = ((a + 2) * d - (a + 3)) * d * d + 1
    far = ((a * d - 5 * a) * d + 8 * a) * d - 4 * a
    return np.where(d <= 1, near, np.where(d < 2, far, 0.0))


def sample_matrix(
    size_in: int,
    src: np.ndarray,
    mode: str,
    *,
    nearest_mode: str = "floor",
    stretch: float | None = None,
    cubic_coeff_a: float = -0.75,
    exclude_outside: bool = False,
) -> np.ndarray:
    """The ``(len(src), size_in)`` float64 matrix reading the input at coordinates ``src``:
    ``nearest`` rounds them (``nearest_mode``), ``linear`` takes two taps and ``cubic`` four
    around ``floor(src)``. ``stretch`` (a downscale factor) widens the kernel to antialias and
    normalises its weights; indices past the edges read the edge, or with ``exclude_outside``
    are dropped and the weights renormalised."""
    rows = np.arange(src.size)
    matrix = np.zeros((src.size, size_in))
    if mode == "nearest":
        index = np.clip(_ROUNDING[nearest_mode](src), 0, size_in - 1).astype(np.int64)
        matrix[rows, index] = 1.0
        return matrix
    low = np.floor(src)
    frac = src - low
    reach = 1 if mode == "linear" else 2  # the kernel's half-width, in input samples
    first = math.floor(-reach / (stretch or 1.0)) + 1
    offsets = np.arange(first, 2 - first)  # the taps around floor(src), widened by antialias
    distance = (offsets[None, :] - frac[:, None]) * (stretch or 1.0)
    if mode == "linear":
        weights = np.clip(1 - np.abs(distance), 0, 1)
    else:
        weights = _cubic(distance, cubic_coeff_a)
    index = low[:, None].astype(np.int64) + offsets[None, :]
    if stretch is not None or exclude_outside:
        if exclude_outside:
            weights = np.where((index >= 0) & (index < size_in), weights, 0.0)
        weights = weights / weights.sum(axis=1, keepdims=True)
    clamped = np.clip(index, 0, size_in - 1).ravel()
    np.add.at(matrix, (np.repeat(rows, index.shape[1]), clamped), weights.ravel())
    return matrix


def axis_matrix(
    size_in: int, size_out: int, scale: float | None, mode: str, align_corners: bool
) -> np.ndarray:
    """The ``(size_out, size_in)`` float64 matrix resampling one axis by PyTorch's rule."""
    step = scale if scale is not None else size_in / size_out
    dst = np.arange(size_out, dtype=np.float64)
    if mode == "nearest":
        src = dst * step
    elif align_corners:
        src = dst * ((size_in - 1) / (size_out - 1)) if size_out > 1 else np.zeros(size_out)
    else:
        src = np.maximum(step * (dst + 0.5) - 0.5, 0.0)
    return sample_matrix(size_in, src, "nearest" if mode == "nearest" else "linear")


def _apply(x: np.ndarray, matrices: dict[int, np.ndarray]) -> np.ndarray:
    """Multiply axis ``a`` of ``x`` by ``matrices[a]`` (``(out, in)``), for each axis given."""
    for axis, matrix in matrices.items():
        moved = np.moveaxis(x, axis, -1)
        x = np.moveaxis(moved @ matrix.T.astype(x.dtype), -1, axis)
    return np.ascontiguousarray(x)


class Resample(Function):
    """``n c i... -> n c o...`` by one matrix per resized axis (``{axis: (out, in)}``).
    ``resize`` (the ONNX Resize attributes computing the same) and ``scales`` (a scale factor
    per axis, or None when sizes were asked for) only describe the call, for the exporter."""

    @staticmethod
    def forward(ctx, x, *, matrices, resize, scales):
        ctx.matrices = matrices
        return _apply(x, matrices)

    @staticmethod
    def backward(ctx, grad):
        return _apply(grad, {axis: m.T for axis, m in ctx.matrices.items()})


def _named(mode: str, nd: int) -> type:
    name = f"Upsample{mode.capitalize()}{nd}D"
    return type(name, (Resample,), {"name": f"{name}Backward0", "__module__": __name__})


class Resize(Resample):
    """An imported ONNX Resize or Upsample node."""

    name = "ResizeBackward0"


FUNCTIONS = {
    (mode, nd): _named(mode, nd)
    for mode, nd in [("nearest", 1), ("nearest", 2), ("nearest", 3)]
    + [("linear", 1), ("bilinear", 2), ("trilinear", 3)]
}
