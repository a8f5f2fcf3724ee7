"""Resampling (``F.interpolate``): nearest and (bi/tri)linear, as PyTorch computes them.

Both modes are linear maps applied separably: along each spatial axis the output is
``A @ x`` for a small ``(out, in)`` matrix ``A`` (one 1 per row for nearest, two weights summing
to 1 for linear), so the forward is one matmul per axis and the backward the same with ``A^T``.
The source coordinate of output index ``d`` follows PyTorch (``area_pixel_compute_source_index``):
``scale * (d + 0.5) - 0.5`` clamped at 0 for linear, ``d * (in - 1) / (out - 1)`` with
``align_corners``, and ``floor(d * scale)`` for nearest, where ``scale`` is ``1 / scale_factor``
when a scale factor was given and ``in / out`` otherwise.
"""

from __future__ import annotations

import numpy as np

from .function import Function


def axis_matrix(
    size_in: int, size_out: int, scale: float | None, mode: str, align_corners: bool
) -> np.ndarray:
    """The ``(size_out, size_in)`` float64 matrix resampling one axis."""
    step = scale if scale is not None else size_in / size_out
    dst = np.arange(size_out, dtype=np.float64)
    matrix = np.zeros((size_out, size_in))
    if mode == "nearest":
        src = np.minimum(np.floor(dst * step).astype(np.int64), size_in - 1)
        matrix[np.arange(size_out), src] = 1.0
        return matrix
    if align_corners:
        src = dst * ((size_in - 1) / (size_out - 1)) if size_out > 1 else np.zeros(size_out)
    else:
        src = np.maximum(step * (dst + 0.5) - 0.5, 0.0)
    low = np.minimum(np.floor(src).astype(np.int64), size_in - 1)
    high = np.minimum(low + 1, size_in - 1)
    frac = src - low
    rows = np.arange(size_out)
    np.add.at(matrix, (rows, low), 1.0 - frac)
    np.add.at(matrix, (rows, high), frac)
    return matrix


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
