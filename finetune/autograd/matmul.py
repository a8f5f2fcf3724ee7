"""Matrix products: ``MatMul`` with numpy's batching and 1-D promotion, and PyTorch's names for
its 2-D cases (``Mm``, ``Mv``, ``Dot``)."""

from __future__ import annotations

import numpy as np

from ..errors import ShapeError
from .broadcast import _binary_operands
from .function import Function


class MatMul(Function):
    """``a @ b`` for any ranks, with numpy's batching and 1-D promotion rules."""

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
        return np.matmul(a, b)

    @staticmethod
    def backward(ctx, grad):
        a, b = ctx.saved_tensors
        a_vec, b_vec = ctx.vectors
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
            ga = np.matmul(g, np.swapaxes(b2, -1, -2))
            ga = ga[..., 0, :] if a_vec else ga
        if ctx.needs_input_grad[1]:
            a2 = a[None, :] if a_vec else a
            gb = np.matmul(np.swapaxes(a2, -1, -2), g)
            gb = gb[..., 0] if b_vec else gb
        return ga, gb


class Mm(MatMul):
    name = "MmBackward0"


class Mv(MatMul):
    name = "MvBackward0"


class Dot(MatMul):
    name = "DotBackward0"


def _mat_desc(x: np.ndarray) -> str:
    if x.ndim == 1:
        return f"1x{x.shape[0]}"
    return "x".join(str(s) for s in (int(np.prod(x.shape[:-1])), x.shape[-1]))
