"""Activations: Relu, LeakyRelu, Clip, Sigmoid, Tanh, Gelu, Softmax, LogSoftmax."""

from __future__ import annotations

import math

import numpy as np

from ... import functions as fn
from ...autograd import ops
from ...nn import functional as F
from ...tensor import Tensor
from ..registry import register
from ._common import axis_of


@register("Relu", 6, 13, 14)
def relu(x: Tensor) -> Tensor:
    return fn.relu(x)


@register("LeakyRelu", 6, 16)
def leaky_relu(x: Tensor, *, alpha=0.01) -> Tensor:
    return F.leaky_relu(x, alpha)


@register("Sigmoid", 6, 13)
def sigmoid(x: Tensor) -> Tensor:
    return fn.sigmoid(x)


@register("Tanh", 6, 13)
def tanh(x: Tensor) -> Tensor:
    return fn.tanh(x)


@register("Gelu", 20)
def gelu(x: Tensor, *, approximate="none") -> Tensor:
    return F.gelu(x, approximate=approximate)


@register("Clip", 6)
def clip_6(x: Tensor, *, min=-3.4028234663852886e38, max=3.4028234663852886e38) -> Tensor:
    """Before opset 11 the bounds are attributes."""
    return ops.Clamp.apply(x, min=min, max=max)


@register("Clip", 11, 12, 13)
def clip(x: Tensor, min: Tensor | None = None, max: Tensor | None = None) -> Tensor:
    """From opset 11 the bounds are optional inputs (either may be omitted); gradients reach
    them too, since an imported bound may be a trainable weight."""
    if min is not None:
        x = fn.maximum(x, min)
    if max is not None:
        x = fn.minimum(x, max)
    return x


def _coerced(x, axis: int, op):
    """Before opset 13, softmax saw its input flattened to 2-D at ``axis``."""
    axis = axis_of(axis, x.ndim)
    shape = tuple(x.shape)
    rows = math.prod(shape[:axis])
    flat = fn.reshape(x, (rows, int(np.prod(shape[axis:], dtype=np.int64))))
    return fn.reshape(op.apply(flat, dim=1), shape)


@register("Softmax", 1, 11)
def softmax_1(x: Tensor, *, axis=1) -> Tensor:
    return _coerced(x, axis, ops.Softmax)


@register("Softmax", 13)
def softmax(x: Tensor, *, axis=-1) -> Tensor:
    return ops.Softmax.apply(x, dim=axis_of(axis, x.ndim))


@register("LogSoftmax", 1, 11)
def log_softmax_1(x: Tensor, *, axis=1) -> Tensor:
    return _coerced(x, axis, ops.LogSoftmax)


@register("LogSoftmax", 13)
def log_softmax(x: Tensor, *, axis=-1) -> Tensor:
    return ops.LogSoftmax.apply(x, dim=axis_of(axis, x.ndim))
