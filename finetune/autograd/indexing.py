"""Gather and scatter by index arrays, for ONNX's Gather, GatherElements, GatherND, Scatter*.

Each gather is a ``take`` whose backward is a scatter-add of the gradient, done without
``np.add.at``: ``np.bincount`` for single elements, one stable sort and ``np.add.reduceat`` for
whole rows. A scatter's backward is a gather, plus the per-position bookkeeping its reduction
needs (who won a write, products of the others, ties).

New Functions rather than compositions of ``Index``/``IndexPut``: those take one index array
per axis (an element gather would build rank-many index grids), their backward adds with
``np.add.at``, and no composition has a scatter's "last write wins" or its reductions' gradient.
"""

from __future__ import annotations

import numpy as np

from ..errors import ShapeError
from .function import Function


def segment_reduce(
    index: np.ndarray, values: np.ndarray, ufunc: np.ufunc = np.add
) -> tuple[np.ndarray, np.ndarray]:
    """``(positions, results)``: the distinct entries of the non-empty 1-D ``index`` (sorted)
    and, for each, the ``values`` rows (axis 0) that point there combined by ``ufunc``, in their
    original order."""
    order = np.argsort(index, kind="stable")
    ordered = index[order]
    starts = np.flatnonzero(np.r_[True, ordered[1:] != ordered[:-1]])
    return ordered[starts], ufunc.reduceat(values[order], starts, axis=0)


def index_add(size: int, index: np.ndarray, values: np.ndarray) -> np.ndarray:
    """Zeros of ``size`` rows with each ``values`` row added at its ``index`` (np.add.at's
    result for a 1-D index over axis 0). Single values go through ``np.bincount`` (summed in
    float64, the fastest form), rows through one sort and ``np.add.reduceat``."""
    if values.ndim == 1 and values.dtype.kind == "f":
        return np.bincount(index, weights=values, minlength=size).astype(values.dtype)
    out = np.zeros((size, *values.shape[1:]), dtype=values.dtype)
    if index.size:
        positions, sums = segment_reduce(index, values)
        out[positions] = sums
    return out


def scatter_add(shape: tuple, positions: np.ndarray, values: np.ndarray) -> np.ndarray:
    """Zeros of ``shape`` with each of ``values`` added at its flat position in ``positions``
    (same shape as ``values``; repeats add up): the backward of any element gather."""
    size = int(np.prod(shape))
    return index_add(size, positions.reshape(-1), values.reshape(-1)).reshape(shape)


class TakeAxis(Function):
    """``np.take(x, index, axis)``: ONNX Gather, Compress and Unique's values. ``index`` is
    already in range and non-negative. One index (a 0-d ``index``) answers a view, as
    PyTorch's ``select`` does: the attention blocks' ``qkv[0]``, ``qkv[1]``, ``qkv[2]`` copied
    a third of the activations each (Swin-T batch 8: 92 of 707 ms)."""

    name = "IndexSelectBackward0"

    @staticmethod
    def forward(ctx, x, index, axis):
        ctx.shape, ctx.index, ctx.axis = x.shape, index, axis
        if index.ndim == 0:
            return x[(slice(None),) * axis + (int(index),)]
        return np.take(x, index, axis=axis)

    @staticmethod
    def backward(ctx, grad):
        shape, index, axis = ctx.shape, ctx.index, ctx.axis
        if index.ndim == 0:  # a select: the gradient is the slice, zeros elsewhere (no sort)
            gx = np.zeros(shape, dtype=grad.dtype)
            gx[(slice(None),) * axis + (int(index),)] = grad
            return gx, None
        # pre idx... post -> pre k post, summed into pre n post
        pre, post = int(np.prod(shape[:axis])), int(np.prod(shape[axis + 1 :]))
        n = shape[axis]
        if post == 1:  # single elements: one bincount over flat positions
            flat = (np.arange(pre)[:, None] * n + index.reshape(1, -1)).reshape(-1)
            return index_add(pre * n, flat, grad.reshape(-1)).reshape(shape), None
        g = np.moveaxis(grad.reshape(pre, index.size, post), 1, 0)
        summed = index_add(n, index.reshape(-1), g)
        return np.moveaxis(summed, 0, 1).reshape(shape), None


class TakeFlat(Function):
    """``x.ravel()[flat]``: an element gather (GatherElements, GatherND, ReverseSequence) with
    the flat source position of every output element precomputed."""

    name = "TakeBackward0"

    @staticmethod
    def forward(ctx, x, flat):
        ctx.shape, ctx.flat = x.shape, flat
        return x.reshape(-1)[flat]

    @staticmethod
    def backward(ctx, grad):
        return scatter_add(ctx.shape, ctx.flat, grad), None


class ScatterFlat(Function):
    """``data`` with ``updates`` written at the flat positions ``flat`` (one per update element,
    applied in order), combined by ``reduction``: none (the last write wins, as onnxruntime's
    sequential loop), add, mul, max or min. Backward: max and min share a gradient evenly
    between tied values, as PyTorch's ``scatter_reduce``."""

    name = "ScatterReduceBackward0"

    @staticmethod
    def forward(ctx, data, updates, flat, reduction="none"):
        if updates.shape != flat.shape:
            raise ShapeError(
                f"scatter: updates of shape {list(updates.shape)} for indices selecting "
                f"{list(flat.shape)}"
            )
        pos, u = flat.reshape(-1), updates.reshape(-1)
        out = data.copy().reshape(-1)
        if reduction == "none":
            ctx.winners = last_writes(pos)
            out[pos[ctx.winners]] = u[ctx.winners]
        elif reduction in _AT:  # ufunc.at: in update order, bit for bit the spec's loop
            _AT[reduction].at(out, pos, u)
        else:
            raise ShapeError(f"scatter: unknown reduction {reduction!r}")
        out = out.reshape(data.shape)
        ctx.reduction, ctx.flat, ctx.shapes = reduction, pos, (data.shape, updates.shape)
        if reduction in ("mul", "max", "min"):
            ctx.save_for_backward(data, u, out)
        return out

    @staticmethod
    def backward(ctx, grad):
        g = grad.reshape(-1)
        pos, reduction = ctx.flat, ctx.reduction
        need_data, need_updates = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        g_data = g_updates = None
        if reduction == "none":
            written = pos[ctx.winners]
            if need_data:
                g_data = g.copy()
                g_data[written] = 0
            if need_updates:
                g_updates = np.zeros(pos.size, dtype=g.dtype)
                g_updates[ctx.winners] = g[written]
        elif reduction == "add":
            g_data = g if need_data else None
            g_updates = g[pos] if need_updates else None
        elif reduction == "mul":
            g_data, g_updates = _mul_grads(ctx, g, pos)
        else:
            g_data, g_updates = _extreme_grads(ctx, g, pos)
        shape_d, shape_u = ctx.shapes
        return (
            g_data.reshape(shape_d) if need_data else None,
            g_updates.reshape(shape_u) if need_updates else None,
            None,
        )


_AT = {"add": np.add, "mul": np.multiply, "max": np.maximum, "min": np.minimum}


def last_writes(pos: np.ndarray) -> np.ndarray:
    """Which updates land: the last one to each position, as in a sequential loop (numpy's
    fancy assignment does not promise an order for repeated indices)."""
    _, first_from_end = np.unique(pos[::-1], return_index=True)
    return pos.size - 1 - first_from_end


def _mul_grads(ctx, g, pos):
    """``out[p] = data[p] * prod(u at p)``: each factor's gradient is the product of the others,
    with zeros among the updates handled exactly (no division by a zero)."""
    data, u, _ = ctx.saved_tensors
    d = data.reshape(-1)
    zero = u == 0
    zeros_at = np.bincount(pos, weights=zero, minlength=d.size)
    nonzero_product = np.ones(d.size, dtype=d.dtype)
    if pos.size:
        at, products = segment_reduce(pos, np.where(zero, 1, u), np.multiply)
        nonzero_product[at] = products
    product = np.where(zeros_at > 0, 0, nonzero_product).astype(d.dtype)
    g_data = g * product if ctx.needs_input_grad[0] else None
    g_updates = None
    if ctx.needs_input_grad[1]:
        zp, npp = zeros_at[pos], nonzero_product[pos]
        safe = np.where(zero, 1, u)
        others = np.where(zp == 0, npp / safe, np.where((zp == 1) & zero, npp, 0))
        g_updates = (g[pos] * d[pos] * others).astype(d.dtype)
    return g_data, g_updates


def _extreme_grads(ctx, g, pos):
    """``out[p] = max(data[p], u at p)`` (or min): the gradient goes to the values equal to the
    result, shared evenly between ties."""
    data, u, out = ctx.saved_tensors
    d, o = data.reshape(-1), out.reshape(-1)
    touched = np.bincount(pos, minlength=d.size) > 0
    hit_u = u == o[pos]
    hit_d = (d == o) | ~touched
    count = hit_d + np.bincount(pos, weights=hit_u, minlength=d.size)
    share = g / count
    g_data = np.where(hit_d, share, 0).astype(d.dtype) if ctx.needs_input_grad[0] else None
    g_updates = np.where(hit_u, share[pos], 0).astype(d.dtype) if ctx.needs_input_grad[1] else None
    return g_data, g_updates
