"""Cumulative products, forward next to backward.

``Cumprod`` is a Function, not a composition: ``exp(cumsum(log x))`` is wrong for zeros and
negative values, and the textbook gradient ``reverse_cumsum(grad * y) / x`` divides by zero.
"""

from __future__ import annotations

import numpy as np

from .function import Function


class Cumprod(Function):
    """Running product along ``dim``. The gradient needs no division, so zeros are exact:
    ``dL/dx_j = E_j * S_j`` with ``E_j`` the product of the elements before ``j`` and
    ``S_j = g_j + x_{j+1} * S_{j+1}`` (a reverse scan over the axis, vectorised across the rest).
    """

    @staticmethod
    def forward(ctx, x, dim):
        ctx.axis = dim % x.ndim if x.ndim else 0
        ctx.save_for_backward(x)
        return np.cumprod(x, axis=ctx.axis) if x.ndim else x.copy()

    @staticmethod
    def backward(ctx, grad):
        (x,) = ctx.saved_tensors
        if not x.ndim or x.shape[ctx.axis] == 0:
            return grad.copy()
        xs = np.moveaxis(x, ctx.axis, 0)  # the scanned axis first: n ...
        gs = np.moveaxis(grad, ctx.axis, 0)
        before = np.ones_like(xs)  # E_j, the exclusive running product
        np.cumprod(xs[:-1], axis=0, out=before[1:])
        scan = np.empty_like(gs)  # S_j
        scan[-1] = gs[-1]
        for j in range(len(xs) - 2, -1, -1):
            scan[j] = gs[j] + xs[j + 1] * scan[j + 1]
        return np.moveaxis(before * scan, 0, ctx.axis)
