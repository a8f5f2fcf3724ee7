"""Matrix products: ``MatMul`` with numpy's batching and 1-D promotion, and PyTorch's names for
its 2-D cases (``Mm``, ``Mv``, ``Dot``)."""

from __future__ import annotations

import math

import numpy as np

from ..errors import ShapeError
from ..parallel import split_products
from .broadcast import _binary_operands
from .function import Function


class MatMul(Function):
    """``a @ b`` for any ranks, with numpy's batching and 1-D promotion rules.

    An N-d ``a`` against a matrix ``b`` (a Linear's weight, a channels-last pointwise layer)
    is one 2-D product of every row of ``a``: numpy would broadcast ``b`` and make one small
    BLAS call per leading index (56 for ConvNeXt's ``(1, 56, 56, 96) @ (96, 384)``, 3-50x
    slower on a busy machine). Its backward is two 2-D products as well."""

    name = "MatmulBackward0"

    @staticmethod
    def forward(ctx, a, b):
        a, b = _binary_operands(a, b)
        if a.ndim == 0 or b.ndim == 0:
            raise ShapeError("both arguments to matmul need to be at least 1D")
        ka = a.shape[-1]
        kb = b.shape[0] if b.ndim == 1 else b.shape[-2]
        if ka != kb:
            raise ShapeError(
                f"mat1 and mat2 shapes cannot be multiplied ({_mat_desc(a)} and {_mat_desc(b)})"
            )
        ctx.save_for_backward(
            a if ctx.needs_input_grad[1] else None, b if ctx.needs_input_grad[0] else None
        )
        ctx.vectors = (a.ndim == 1, b.ndim == 1)
        ctx.rows = _rows_times_matrix(a, b)
        if ctx.rows:
            product = as_rows(a) @ b.reshape(b.shape[-2:])
            return product.reshape(a.shape[:-1] + b.shape[-1:])
        return stacked_matmul(a, b)

    @staticmethod
    def backward(ctx, grad):
        a, b = ctx.saved_tensors
        a_vec, b_vec = ctx.vectors
        if ctx.rows:
            g = as_rows(grad)
            ga = gb = None
            if ctx.needs_input_grad[0]:
                ga = (g @ b.reshape(b.shape[-2:]).T).reshape(grad.shape[:-1] + (b.shape[-2],))
            if ctx.needs_input_grad[1]:
                gb = (as_rows(a).T @ g).reshape(b.shape)
            return ga, gb
        if a_vec and b_vec:
            return (
                grad * b if ctx.needs_input_grad[0] else None,
                grad * a if ctx.needs_input_grad[1] else None,
            )
        g = grad
        if a_vec:
            g = np.expand_dims(g, -2)
        if b_vec:
            g = np.expand_dims(g, -1)
        ga = gb = None
        if ctx.needs_input_grad[0]:
            b2 = b[:, None] if b_vec else b
            ga = stacked_matmul(g, np.swapaxes(b2, -1, -2))
            ga = ga[..., 0, :] if a_vec else ga
        if ctx.needs_input_grad[1]:
            a2 = a[None, :] if a_vec else a
            gb = stacked_matmul(np.swapaxes(a2, -1, -2), g)
            gb = gb[..., 0] if b_vec else gb
        return ga, gb


class Mm(MatMul):
    name = "MmBackward0"


class Mv(MatMul):
    name = "MvBackward0"


class Dot(MatMul):
    name = "DotBackward0"


def stacked_matmul(a: np.ndarray, b: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
    """``np.matmul(a, b, out=out)``, a stack of products (attention's, one per sample and
    head; Winograd's, one per tile position) shared out among the library's threads along the
    first stacked axis of more than one matrix (``parallel.split_products``), each thread
    multiplying whole matrices."""
    if a.ndim < 2 or b.ndim < 2 or a.dtype != b.dtype or a.dtype.kind != "f":
        return np.matmul(a, b, out=out)
    stack = np.broadcast_shapes(a.shape[:-2], b.shape[:-2])
    lead = next((axis for axis, count in enumerate(stack) if count > 1), None)
    if lead is None:
        return np.matmul(a, b, out=out)
    (m, k), n = a.shape[-2:], b.shape[-1]
    if out is None:
        out = np.empty((*stack, m, n), dtype=a.dtype)
    # drop the single-matrix axes before ``lead``: the chunks slice the next one
    first = (0,) * lead
    a = np.broadcast_to(a, (*stack, m, k))[first]
    b = np.broadcast_to(b, (*stack, k, n))[first]
    target = out[first]
    macs = math.prod(stack) * m * k * n
    split_products(
        lambda lo, hi: np.matmul(a[lo:hi], b[lo:hi], out=target[lo:hi]), len(target), macs
    )
    return out


def _rows_times_matrix(a: np.ndarray, b: np.ndarray) -> bool:
    """Whether ``a @ b`` is every row of ``a`` times one matrix: ``a`` has more than two
    dims and ``b`` is a matrix (or has only size-1 dims before its last two, and no more dims
    than ``a``)."""
    if a.ndim <= 2 or b.ndim < 2 or b.ndim > a.ndim:
        return False
    return all(d == 1 for d in b.shape[:-2])


def as_rows(a: np.ndarray) -> np.ndarray:
    """Collapse every leading dimension, ``(..., k) -> (rows, k)``: a view when the layout
    allows, else one copy (also Linear's, in ``nn_ops``)."""
    return a.reshape(-1, a.shape[-1])


def _mat_desc(x: np.ndarray) -> str:
    if x.ndim == 1:
        return f"1x{x.shape[0]}"
    return "x".join(str(s) for s in (int(np.prod(x.shape[:-1])), x.shape[-1]))
