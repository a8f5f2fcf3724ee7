"""BatchNormalization and Dropout, layers that behave differently while training, and LRN.

Constant statistics make BatchNormalization a real ``nn.BatchNorm1d``/``nn.BatchNorm2d`` with
its running statistics as buffers; ONNX's ``momentum`` is PyTorch's ``1 - momentum``. LRN (the
local response normalisation of AlexNet-era models) is composed of differentiable tensor ops.
"""

from __future__ import annotations

from decimal import Decimal

import numpy as np

from ... import functions as fn
from ... import random
from ...errors import OnnxImportError
from ...nn.layers.batchnorm import BatchNorm1d, BatchNorm2d
from ...nn.layers.dropout import Dropout
from ...nn.parameter import Parameter
from ...tensor import Tensor
from ..registry import Built, NodeView, register
from ._common import scalar, wrap


def _per_channel(v, x, spatial: int):
    """Shape a statistic to broadcast against ``x``: (C,) → (C, 1, ...); per-activation as is."""
    if spatial:
        return fn.reshape(v, (v.shape[0],) + (1,) * (x.ndim - 2))
    return v


def _normalise(x, scale, bias, mean, var, epsilon, spatial=1):
    dtype = x._data.dtype
    scale, bias, mean, var = (_per_channel(v, x, spatial) for v in (scale, bias, mean, var))
    inv = fn.div(scale, fn.sqrt(fn.add(var, np.asarray(epsilon, dtype))))
    return fn.add(fn.mul(fn.sub(x, mean), inv), bias)


def _decimal(value: float) -> Decimal:
    """A float32 attribute as the decimal it was written as (``1e-05``, not 9.99999974e-06)."""
    return Decimal(str(np.float32(value)))


def _batch_norm_module(view: NodeView) -> Built | None:
    stats = [view.constant(i) for i in range(1, 5)]
    a = view.attributes
    if view.constant(0) is not None or any(s is None or s.ndim != 1 for s in stats):
        return None
    if len(view.node.output) > 1 or a.get("training_mode", 0) or not a.get("spatial", 1):
        return None
    rank = view.rank(0)
    if rank not in (2, 3, 4):
        return None
    scale, bias, mean, var = stats
    eps, momentum = _decimal(a.get("epsilon", 1e-5)), _decimal(a.get("momentum", 0.9))
    layer = (BatchNorm2d if rank == 4 else BatchNorm1d)(
        scale.shape[0], eps=float(eps), momentum=float(1 - momentum)
    )
    layer.weight = Parameter(np.ascontiguousarray(scale))
    layer.bias = Parameter(np.ascontiguousarray(bias))
    layer.running_mean = Tensor._from_array(np.array(mean))
    layer.running_var = Tensor._from_array(np.array(var))
    return Built(layer)


@register("BatchNormalization", 7, module=_batch_norm_module)
def batch_norm_7(
    x: Tensor,
    scale: Tensor,
    b: Tensor,
    mean: Tensor,
    var: Tensor,
    *,
    epsilon=1e-5,
    momentum=0.9,
    spatial=1,
) -> Tensor:
    """Inference form; ``spatial=0`` normalises each activation with (C, D1, ...) statistics."""
    return _normalise(x, scale, b, mean, var, epsilon, spatial)


@register("BatchNormalization", 9, module=_batch_norm_module)
def batch_norm_9(
    x: Tensor, scale: Tensor, b: Tensor, mean: Tensor, var: Tensor, *, epsilon=1e-5, momentum=0.9
) -> Tensor:
    return _normalise(x, scale, b, mean, var, epsilon)


@register("BatchNormalization", 14, 15, module=_batch_norm_module)
def batch_norm(
    x: Tensor,
    scale: Tensor,
    b: Tensor,
    mean: Tensor,
    var: Tensor,
    *,
    epsilon=1e-5,
    momentum=0.9,
    training_mode=0,
) -> Tensor | tuple[Tensor, ...]:
    """With ``training_mode`` the batch's statistics normalise, and the running ones are updated:
    ``running = running * momentum + batch * (1 - momentum)`` (population variance)."""
    if not training_mode:
        return _normalise(x, scale, b, mean, var, epsilon)
    axes = (0, *range(2, x.ndim))
    batch_mean = fn.mean(x, dim=axes)
    batch_var = fn.var(x, dim=axes, correction=0)
    y = _normalise(x, scale, b, batch_mean, batch_var, epsilon)
    m = np.asarray(momentum, mean._data.dtype)
    running_mean = mean._data * m + batch_mean._data.astype(mean._data.dtype) * (1 - m)
    running_var = var._data * m + batch_var._data.astype(var._data.dtype) * (1 - m)
    return y, wrap(running_mean), wrap(running_var)


def _dropout_module(view: NodeView) -> Built | None:
    a = view.attributes
    if len(view.node.output) > 1 or view.has_input(2):
        return None
    ratio = a.get("ratio", 0.5)
    if view.has_input(1):
        constant = view.constant(1)
        if constant is None:
            return None
        ratio = float(constant.reshape(-1)[0])
    return Built(Dropout(ratio))


def _dropout(x, ratio: float, training: bool, seed, outputs: int):
    """A node's ``seed`` draws its mask as the ONNX reference does (numpy's legacy generator),
    so seeded graphs reproduce; without one the library's generator (``manual_seed``) draws."""
    if not training or ratio == 0:
        return (x, wrap(np.ones(x.shape, dtype=bool)))[:outputs]
    if seed is None:
        uniform = random.generator().random(x.shape)
    else:
        uniform = np.random.RandomState(seed).uniform(0, 1.0, x.shape)
    keep = uniform >= ratio
    scale = np.asarray(1.0 / (1.0 - ratio), x._data.dtype)
    y = fn.mul(x, wrap(keep.astype(x._data.dtype) * scale))
    return (y, wrap(keep))[:outputs]


@register("Dropout", 7, 10, module=_dropout_module)
def dropout_7(data: Tensor, *, ratio=0.5, _outputs=1) -> Tensor | tuple[Tensor, ...]:
    """Before opset 12 an ONNX graph always runs Dropout in inference mode: identity."""
    return _dropout(data, ratio, False, None, _outputs)


@register("Dropout", 12, 13, 22, module=_dropout_module)
def dropout(
    data: Tensor,
    ratio: Tensor | None = None,
    training_mode: Tensor | None = None,
    *,
    seed=None,
    _outputs=1,
) -> Tensor | tuple[Tensor, ...]:
    training = bool(scalar(training_mode)) if training_mode is not None else False
    p = 0.5 if ratio is None else float(scalar(ratio))
    return _dropout(data, p, training, seed, _outputs)


@register("LRN", 1, 13)
def lrn(x: Tensor, *, size, alpha=0.0001, beta=0.75, bias=1.0) -> Tensor:
    """``x / (bias + alpha / size * window_sum(x^2)) ^ beta``, the window ``size`` channels wide
    around each channel: ``floor((size - 1) / 2)`` before it and ``ceil((size - 1) / 2)`` after,
    clipped to the existing channels."""
    if size < 1:
        raise OnnxImportError(f"LRN: size must be positive, got {size}")
    channels = x.shape[1]
    before, after = (size - 1) // 2, size // 2
    squares = fn.mul(x, x)
    zeros_shape = (x.shape[0], max(before, after), *x.shape[2:])
    zeros = wrap(np.zeros(zeros_shape, dtype=x._data.dtype))
    padded = fn.cat([zeros[:, :before], squares, zeros[:, :after]], dim=1)
    window = padded[:, 0:channels]
    for k in range(1, size):
        window = fn.add(window, padded[:, k : k + channels])
    scale = fn.add(fn.mul(window, alpha / size), bias)
    return fn.div(x, fn.pow(scale, beta))
