"""Linear-algebra primitives with no composition from the others: the determinant."""

from __future__ import annotations

import numpy as np

from ..errors import ShapeError
from .function import Function


class Det(Function):
    """``det`` of the last two axes (square), batched over the rest. A new Function because no
    composition of the elementwise ops computes it. The gradient is the cofactor matrix
    ``det * inv^T``, computed from the SVD so it stays defined for singular matrices."""

    name = "LinalgDetBackward0"

    @staticmethod
    def forward(ctx, x):
        if x.ndim < 2 or x.shape[-1] != x.shape[-2]:
            raise ShapeError(
                f"Det: needs square matrices in the last two axes, got {list(x.shape)}"
            )
        ctx.save_for_backward(x)
        work = x if x.dtype in (np.float32, np.float64) else x.astype(np.float32)
        return np.linalg.det(work).astype(x.dtype)

    @staticmethod
    def backward(ctx, grad):
        (x,) = ctx.saved_tensors
        work = x if x.dtype in (np.float32, np.float64) else x.astype(np.float32)
        return (grad[..., None, None] * cofactors(work)).astype(x.dtype)


def cofactors(a: np.ndarray) -> np.ndarray:
    """The cofactor matrix ``adj(a)^T`` of each matrix: with ``a = U S Vh``, it is
    ``det(U) det(Vh) U diag(prod_{j != i} s_j) Vh``, defined whether or not ``a`` is invertible."""
    n = a.shape[-1]
    if n == 0:
        return np.zeros_like(a)
    u, s, vh = np.linalg.svd(a)
    ones = np.ones((*s.shape[:-1], 1), dtype=s.dtype)
    # exclusive products of the singular values before and after each one
    before = np.cumprod(np.concatenate([ones, s[..., :-1]], axis=-1), axis=-1)
    after = np.cumprod(np.concatenate([ones, s[..., :0:-1]], axis=-1), axis=-1)[..., ::-1]
    sign = np.linalg.det(u) * np.linalg.det(vh)
    return sign[..., None, None] * ((u * (before * after)[..., None, :]) @ vh)
