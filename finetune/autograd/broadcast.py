"""How operands meet: PyTorch's dtype promotion, broadcasting errors, and ``sum_to_shape``, which
undoes broadcasting (the engine applies it once to every gradient, so no backward has to)."""

from __future__ import annotations

import builtins
import functools
import numbers

import numpy as np

from ..errors import ShapeError


def sum_to_shape(grad: np.ndarray, shape: tuple) -> np.ndarray:
    """Undo broadcasting: sum ``grad`` over the axes that broadcasting added or stretched."""
    if grad.shape == shape:
        return grad
    lead = grad.ndim - len(shape)
    axes = tuple(range(lead)) + tuple(
        lead + i for i, s in enumerate(shape) if s == 1 and grad.shape[lead + i] != 1
    )
    if axes:
        grad = grad.sum(axis=axes, keepdims=True)
    return grad.reshape(shape)


# -- dtype promotion (PyTorch's rules: python scalars and 0-d tensors don't widen) ----------------

_KIND_RANK = {"b": 0, "u": 1, "i": 1, "f": 2, "c": 3}


def _kind_rank(value) -> int:
    if isinstance(value, np.ndarray):
        return _KIND_RANK[value.dtype.kind]
    if isinstance(value, bool):
        return 0
    if isinstance(value, numbers.Integral):
        return 1
    return 2


def result_dtype(a, b) -> np.dtype:
    """The dtype PyTorch gives ``a op b`` (arrays or Python scalars)."""
    a_arr, b_arr = isinstance(a, np.ndarray), isinstance(b, np.ndarray)
    if a_arr and b_arr:
        if a.dtype == b.dtype:
            return a.dtype
        ra, rb = _kind_rank(a), _kind_rank(b)
        if ra == rb and (a.ndim == 0) != (b.ndim == 0):
            return b.dtype if a.ndim == 0 else a.dtype
        if ra != rb:
            hi, lo = (a, b) if ra > rb else (b, a)
            if hi.ndim == 0 and lo.ndim > 0:
                return _default_for(_kind_rank(hi))
            return hi.dtype
        return np.promote_types(a.dtype, b.dtype)
    if not (a_arr or b_arr):  # torch.where(cond, 1.0, 0.0)
        return _default_for(builtins.max(_kind_rank(a), _kind_rank(b)))
    arr, scalar = (a, b) if a_arr else (b, a)
    if _kind_rank(scalar) > _kind_rank(arr):
        return _default_for(_kind_rank(scalar))
    return arr.dtype


def _default_for(rank: int) -> np.dtype:
    return np.dtype([np.bool_, np.int64, np.float32, np.complex64][rank])


def _as_array(value, dtype) -> np.ndarray:
    if isinstance(value, np.ndarray):
        return value if value.dtype == dtype else value.astype(dtype)
    return np.asarray(value, dtype=dtype)


def _binary_operands(a, b):
    dtype = result_dtype(a, b)
    return _as_array(a, dtype), _as_array(b, dtype)


def _float_operands(a, b):
    dtype = result_dtype(a, b)
    if dtype.kind not in "fc":
        dtype = np.dtype(np.float32)
    return _as_array(a, dtype), _as_array(b, dtype)


def _shape(x) -> tuple:
    return x.shape if isinstance(x, np.ndarray) else ()


def broadcast_error(*shapes: tuple) -> ShapeError:
    """PyTorch's message for operand shapes that do not broadcast, with the shapes appended."""
    a_shape, b_shape = shapes[-2:]
    for i in range(1, min(len(a_shape), len(b_shape)) + 1):
        sa, sb = a_shape[-i], b_shape[-i]
        if sa != sb and 1 not in (sa, sb):
            dim = max(len(a_shape), len(b_shape)) - i
            return ShapeError(
                f"The size of tensor a ({sa}) must match the size of tensor b ({sb}) at "
                f"non-singleton dimension {dim} (shapes {list(a_shape)} and {list(b_shape)})"
            )
    listed = " and ".join(str(list(shape)) for shape in shapes)
    return ShapeError(f"shapes {listed} cannot be broadcast together")


def _broadcasting(forward):
    """Turn numpy's broadcasting ValueError in a binary op's forward into a ShapeError naming
    both shapes. Only the failure pays: the success path adds a ``try``."""

    @functools.wraps(forward)
    def checked(ctx, *operands, **options):
        try:
            return forward(ctx, *operands, **options)
        except ValueError as error:
            if "broadcast" not in str(error):
                raise
            raise broadcast_error(*(_shape(x) for x in operands)) from None

    return checked
