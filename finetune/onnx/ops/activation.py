"""Activations: Relu, LeakyRelu, PRelu, Elu, Selu, Celu, ThresholdedRelu, Clip, Sigmoid,
HardSigmoid, HardSwish, Swish, Tanh, Softplus, Softsign, Mish, Gelu, Shrink, Softmax, LogSoftmax,
Hardmax.

Most are compositions of the library's tensor functions, so their gradients come with them,
and their export wherever the exporter knows every piece (comparisons, as in Shrink and
ThresholdedRelu, it cannot trace). Swish (SiLU), HardSigmoid, HardSwish and Gelu are single
Functions, one pass chain each (measured: the compositions made four to six arrays), and their
emitters are here. Opset 1 versions take the ``consumed_inputs`` attribute of
old exporters and ignore it (it was an in-place hint).
"""

from __future__ import annotations

import functools
import math

import numpy as np

from ... import functions as fn
from ...autograd import ops
from ...autograd.nn_ops import HardSigmoid, HardSwish, Silu
from ...errors import ShapeError
from ...nn import functional as F
from ...nn.layers.activation import PReLU
from ...nn.parameter import Parameter
from ...tensor import Tensor
from ..export_ops import emits
from ..registry import Built, NodeView, register
from ._common import axis_of, is_float, wrap

_FLOAT_MAX = 3.4028234663852886e38


@register("Relu", 1)
def relu_1(x: Tensor, *, consumed_inputs=None) -> Tensor:
    return fn.relu(x)


@register("Relu", 6, 13, 14)
def relu(x: Tensor) -> Tensor:
    return fn.relu(x)


@register("LeakyRelu", 1)
def leaky_relu_1(x: Tensor, *, alpha=0.01, consumed_inputs=None) -> Tensor:
    return F.leaky_relu(x, alpha)


@register("LeakyRelu", 6, 16)
def leaky_relu(x: Tensor, *, alpha=0.01) -> Tensor:
    return F.leaky_relu(x, alpha)


@register("Sigmoid", 1)
def sigmoid_1(x: Tensor, *, consumed_inputs=None) -> Tensor:
    return fn.sigmoid(x)


@register("Sigmoid", 6, 13)
def sigmoid(x: Tensor) -> Tensor:
    return fn.sigmoid(x)


@register("Tanh", 1)
def tanh_1(x: Tensor, *, consumed_inputs=None) -> Tensor:
    return fn.tanh(x)


@register("Tanh", 6, 13)
def tanh(x: Tensor) -> Tensor:
    return fn.tanh(x)


@register("Gelu", 20)
def gelu(x: Tensor, *, approximate="none") -> Tensor:
    return F.gelu(x, approximate=approximate)


@register("Clip", 1)
def clip_1(x: Tensor, *, min=None, max=None, consumed_inputs=None) -> Tensor:
    """Opset 1: an omitted bound means no bound."""
    return ops.Clamp.apply(x, min=min, max=max)


@register("Clip", 6)
def clip_6(x: Tensor, *, min=-_FLOAT_MAX, max=_FLOAT_MAX) -> Tensor:
    """Before opset 11 the bounds are attributes."""
    return ops.Clamp.apply(x, min=min, max=max)


@register("Clip", 11, 12, 13)
def clip(x: Tensor, min: Tensor | None = None, max: Tensor | None = None) -> Tensor:
    """From opset 11 the bounds are optional inputs (either may be omitted); gradients reach
    them too, since an imported bound may be a trainable weight. Constant one-value bounds
    (ReLU6's 0 and 6) make one ``Clamp`` pass."""
    if all(b is None or (b.numel() == 1 and not b.requires_grad) for b in (min, max)):
        lo, hi = (None if b is None else b._data.reshape(()).item() for b in (min, max))
        return ops.Clamp.apply(x, min=lo, max=hi)
    if min is not None:
        x = fn.maximum(x, min)
    if max is not None:
        x = fn.minimum(x, max)
    return x


# -- the exponential family ---------------------------------------------------------------------


@register("Elu", 1)
def elu_1(x: Tensor, *, alpha=1.0, consumed_inputs=None) -> Tensor:
    return F.elu(x, alpha)


@register("Elu", 6, 22)
def elu(x: Tensor, *, alpha=1.0) -> Tensor:
    return F.elu(x, alpha)


@register("Selu", 1)
def selu_1(x: Tensor, *, alpha=1.6732, gamma=1.0507, consumed_inputs=None) -> Tensor:
    return F.elu(x, alpha) * gamma


@register("Selu", 6, 22)
def selu(x: Tensor, *, alpha=1.6732631921768188, gamma=1.0507010221481323) -> Tensor:
    """``gamma * elu(x, alpha)``; the defaults are the float32 constants of the spec."""
    return F.elu(x, alpha) * gamma


@register("Celu", 12, 28)
def celu(x: Tensor, *, alpha=1.0) -> Tensor:
    return F.celu(x, alpha)


@register("Softplus", 1, 22)
def softplus(x: Tensor) -> Tensor:
    return F.softplus(x, threshold=math.inf)


@register("Softsign", 1, 22)
def softsign(x: Tensor) -> Tensor:
    return F.softsign(x)


@register("Mish", 18, 22)
def mish(x: Tensor) -> Tensor:
    return F.mish(x)


@register("Swish", 24)
def swish(x: Tensor, *, alpha=1.0) -> Tensor:
    """``x * sigmoid(alpha * x)``."""
    if alpha == 1:
        return F.silu(x)
    return x * fn.sigmoid(x * alpha)


# -- piecewise linear -----------------------------------------------------------------------------


@register("HardSigmoid", 1)
def hard_sigmoid_1(x: Tensor, *, alpha=0.2, beta=0.5, consumed_inputs=None) -> Tensor:
    return hard_sigmoid(x, alpha=alpha, beta=beta)


@register("HardSigmoid", 6, 22)
def hard_sigmoid(x: Tensor, *, alpha=0.2, beta=0.5) -> Tensor:
    """``clamp(alpha * x + beta, 0, 1)``, one node."""
    return HardSigmoid.apply(x, alpha=alpha, beta=beta)


@register("HardSwish", 14, 22)
def hard_swish(x: Tensor) -> Tensor:
    return F.hardswish(x)


def _emit_self_gated(b, call, outs, op: str, since: int, gate: str, **gate_attributes):
    """``op(x)`` from opset ``since``, else ``x * gate(x)`` (what PyTorch's exporter writes)."""
    x = b.operand(call.args[0], call.results[0]._data.dtype)
    if b.opset >= since:
        b.node(op, [x], outs)
        return
    b.node("Mul", [x, b.node(gate, [x], **gate_attributes)[0]], outs)


@emits(Silu)
def _emit_silu(b, call, outs):
    """Swish from opset 24, else Sigmoid and Mul."""
    _emit_self_gated(b, call, outs, "Swish", 24, "Sigmoid")


@emits(HardSigmoid)
def _emit_hard_sigmoid(b, call, outs):
    x = b.operand(call.args[0], call.results[0]._data.dtype)
    alpha, beta = call.kwargs.get("alpha", 1 / 6), call.kwargs.get("beta", 0.5)
    b.node("HardSigmoid", [x], outs, alpha=float(alpha), beta=float(beta))


@emits(HardSwish)
def _emit_hard_swish(b, call, outs):
    """HardSwish from opset 14, else ``x * HardSigmoid(x)`` with PyTorch's 1/6 and 1/2."""
    _emit_self_gated(b, call, outs, "HardSwish", 14, "HardSigmoid", alpha=1 / 6, beta=0.5)


@register("ThresholdedRelu", 10, 22)
def thresholded_relu(x: Tensor, *, alpha=1.0) -> Tensor:
    """``x`` where ``x > alpha``, else 0."""
    return fn.where(x > alpha, x, 0)


@register("Shrink", 9)
def shrink(x: Tensor, *, bias=0.0, lambd=0.5) -> Tensor:
    """``x + bias`` below ``-lambd``, ``x - bias`` above ``lambd``, 0 between; integer inputs
    keep their type (the arithmetic runs in it, as onnxruntime's kernel does)."""
    if not is_float(x):
        a = x._data
        shift = np.asarray(bias).astype(a.dtype)
        zero = np.zeros((), a.dtype)
        return wrap(np.where(a < -lambd, a + shift, np.where(a > lambd, a - shift, zero)))
    return fn.where(x < -lambd, x + bias, fn.where(x > lambd, x - bias, 0))


# -- PRelu: a module when the slope is a constant ----------------------------------------------


def _prelu_module(view: NodeView) -> Built | None:
    """A constant float slope of one value, or one per channel shaped ``(C, 1, ..., 1)`` (after
    leading ones), becomes an ``nn.PReLU`` whose ``weight`` holds it; any other slope stays a
    functional node (its initializer is still a trainable parameter of the graph)."""
    slope = view.constant(1)
    if slope is None or slope.dtype.kind != "f":
        return None
    shape = tuple(slope.shape)
    while shape and shape[0] == 1:
        shape = shape[1:]
    if any(d != 1 for d in shape[1:]):
        return None
    module = PReLU(num_parameters=int(slope.size))
    module.weight = Parameter(np.array(slope).reshape(-1))
    legacy = view.opset < 7
    return Built(module, (0,), functools.partial(_call_prelu, shape=shape, legacy=legacy))


def _call_prelu(module, x: Tensor, *, shape: tuple, legacy: bool) -> Tensor:
    """PyTorch's PReLU puts its slopes on dim 1; ONNX from opset 7 aligns the slope's shape with
    the input's trailing dims. Where they disagree (a ``(C,)`` slope on a 4-d input), the weight
    is laid out as the file had it."""
    weight = module.weight
    if weight.numel() == 1 or x.ndim - len(shape) == 1 or (legacy and _per_channel(x, weight)):
        return module(x)
    return prelu(x, fn.reshape(weight, shape))


def _per_channel(x: Tensor, slope: Tensor) -> bool:
    """Before opset 7, a 1-d slope of C values holds one per channel (dim 1), as in Caffe2 and
    PyTorch's exporter, not numpy's broadcasting."""
    return slope.ndim == 1 and x.ndim >= 2 and slope.shape[0] == x.shape[1]


@register("PRelu", 1, module=_prelu_module)
def prelu_1(x: Tensor, slope: Tensor, *, consumed_inputs=None) -> Tensor:
    return prelu_6(x, slope)


@register("PRelu", 6, module=_prelu_module)
def prelu_6(x: Tensor, slope: Tensor) -> Tensor:
    if _per_channel(x, slope) and slope.shape[0] != 1:
        slope = fn.reshape(slope, (-1,) + (1,) * (x.ndim - 2))
    return prelu(x, slope)


@register("PRelu", 7, 9, 16, module=_prelu_module)
def prelu(x: Tensor, slope: Tensor) -> Tensor:
    """``x`` where non-negative, ``slope * x`` elsewhere; the slope broadcasts to ``x``
    (unidirectionally: the output has ``x``'s shape)."""
    try:
        fits = np.broadcast_shapes(tuple(x.shape), tuple(slope.shape)) == tuple(x.shape)
    except ValueError:
        fits = False
    if not fits:
        raise ShapeError(
            f"PRelu: slope of shape {list(slope.shape)} does not broadcast to the input's shape "
            f"{list(x.shape)}"
        )
    return fn.relu(x) + fn.clamp(x, max=0) * slope


# -- softmax family -----------------------------------------------------------------------------


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


def _hardmax(a: np.ndarray, axis: int) -> np.ndarray:
    """1 at the first largest element along ``axis``, 0 elsewhere, in ``a``'s type."""
    out = np.zeros_like(a)
    if a.size:
        index = np.expand_dims(np.argmax(a, axis=axis), axis)
        np.put_along_axis(out, index, 1, axis=axis)
    return out


@register("Hardmax", 1, 11, differentiable=False)
def hardmax_1(x: Tensor, *, axis=1) -> Tensor:
    """Before opset 13 the input is seen flattened to 2-D at ``axis``."""
    a = x._data
    axis = axis_of(axis, a.ndim)
    rows = math.prod(a.shape[:axis])
    flat = a.reshape(rows, math.prod(a.shape[axis:]))
    return wrap(_hardmax(flat, 1).reshape(a.shape))


@register("Hardmax", 13, differentiable=False)
def hardmax(x: Tensor, *, axis=-1) -> Tensor:
    return wrap(_hardmax(x._data, axis_of(axis, x.ndim)))
