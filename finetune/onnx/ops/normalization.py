"""Normalisation layers and Dropout: BatchNormalization, LayerNormalization, GroupNormalization,
InstanceNormalization, RMSNormalization, MeanVarianceNormalization, LRN and Dropout.

Constant statistics make BatchNormalization a real ``nn.BatchNorm1d``/``nn.BatchNorm2d`` with
its running statistics as buffers; ONNX's ``momentum`` is PyTorch's ``1 - momentum``. Constant
scale/bias make the per-sample norms real ``nn.LayerNorm``, ``nn.GroupNorm``,
``nn.InstanceNorm1d/2d/3d`` and ``nn.RMSNorm`` modules; otherwise they are composed of
differentiable tensor ops (as is LRN, the local response normalisation of AlexNet-era models).
"""

from __future__ import annotations

from decimal import Decimal

import numpy as np

from ... import functions as fn
from ... import random
from ...autograd import nn_ops, ops
from ...errors import OnnxImportError, ShapeError
from ...nn.layers.batchnorm import BatchNorm1d, BatchNorm2d
from ...nn.layers.dropout import Dropout
from ...nn.layers.layernorm import LayerNorm
from ...nn.layers.normalization import (
    GroupNorm,
    InstanceNorm1d,
    InstanceNorm2d,
    InstanceNorm3d,
    RMSNorm,
)
from ...tensor import Tensor
from ..export_ops import emits
from ..registry import Built, NodeView, register
from ._common import axis_of, holding, keep_dtype, scalar, wrap


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
    holding(layer, scale, bias)
    layer.running_mean = Tensor._from_array(np.array(mean))
    layer.running_var = Tensor._from_array(np.array(var))
    return Built(layer)


def _batch_statistics(x, mean, var, momentum, spatial=1):
    """The batch's mean and population variance per channel (per activation when not
    ``spatial``), and the running statistics updated with them (no gradient)."""
    axes = (0, *range(2, x.ndim)) if spatial else (0,)
    batch_mean = fn.mean(x, dim=axes)
    batch_var = fn.var(x, dim=axes, correction=0)
    m = np.asarray(momentum, mean._data.dtype)
    running_mean = mean._data * m + batch_mean._data.astype(mean._data.dtype) * (1 - m)
    running_var = var._data * m + batch_var._data.astype(var._data.dtype) * (1 - m)
    return batch_mean, batch_var, wrap(running_mean), wrap(running_var)


@register("BatchNormalization", 1, 6, module=_batch_norm_module)
def batch_norm_6(
    x: Tensor,
    scale: Tensor,
    b: Tensor,
    mean: Tensor,
    var: Tensor,
    *,
    epsilon=1e-5,
    is_test=0,
    momentum=0.9,
    spatial=1,
    consumed_inputs=None,
    _outputs=1,
) -> Tensor | tuple[Tensor, ...]:
    """Old exporters' form. As onnxruntime does, the batch's statistics normalise only when the
    node asks for the updated statistics (outputs mean, var, saved_mean, saved_var) and is not
    ``is_test``; a one-output node runs in inference mode. ``consumed_inputs`` (in-place hints
    of opset 1) changes nothing."""
    if is_test or _outputs == 1:
        return _normalise(x, scale, b, mean, var, epsilon, spatial)
    batch_mean, batch_var, running_mean, running_var = _batch_statistics(
        x, mean, var, momentum, spatial
    )
    y = _normalise(x, scale, b, batch_mean, batch_var, epsilon, spatial)
    return (y, running_mean, running_var, batch_mean, batch_var)[:_outputs]


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
    batch_mean, batch_var, running_mean, running_var = _batch_statistics(x, mean, var, momentum)
    y = _normalise(x, scale, b, batch_mean, batch_var, epsilon)
    return y, running_mean, running_var


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


def _dropout(x, ratio: float, training: bool, seed, outputs: int, mask_dtype=bool):
    """A node's ``seed`` draws its mask as the ONNX reference does (numpy's legacy generator),
    so seeded graphs reproduce; without one the library's generator (``manual_seed``) draws."""
    if not training or ratio == 0:
        return (x, wrap(np.ones(x.shape, dtype=mask_dtype)))[:outputs]
    if seed is None:
        uniform = random.generator().random(x.shape)
    else:
        uniform = np.random.RandomState(seed).uniform(0, 1.0, x.shape)
    keep = uniform >= ratio
    scale = np.asarray(1.0 / (1.0 - ratio), x._data.dtype)
    y = fn.mul(x, wrap(keep.astype(x._data.dtype) * scale))
    return (y, wrap(keep))[:outputs]


@register("Dropout", 1, 6, module=_dropout_module)
def dropout_6(
    data: Tensor, *, is_test=0, ratio=0.5, consumed_inputs=None, _outputs=1
) -> Tensor | tuple[Tensor, ...]:
    """Old exporters' form: an imported graph runs in inference mode whatever ``is_test`` says
    (as from opset 7); a single-output node becomes ``nn.Dropout``, which drops while the
    module trains. The mask has the data's element type until opset 10."""
    return _dropout(data, ratio, False, None, _outputs, data._data.dtype)


@register("Dropout", 7, module=_dropout_module)
def dropout_7(data: Tensor, *, ratio=0.5, _outputs=1) -> Tensor | tuple[Tensor, ...]:
    """Before opset 12 an ONNX graph always runs Dropout in inference mode: identity. The mask
    has the data's element type until opset 10 makes it bool."""
    return _dropout(data, ratio, False, None, _outputs, data._data.dtype)


@register("Dropout", 10, module=_dropout_module)
def dropout_10(data: Tensor, *, ratio=0.5, _outputs=1) -> Tensor | tuple[Tensor, ...]:
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
    # zero channels padded on, not concatenated: zeros sized from the input would carry the
    # batch size into an exported graph
    pads = ((0, 0), (before, after), *((0, 0),) * (x.ndim - 2))
    padded = ops.Pad.apply(squares, pads=pads, mode="constant", value=0)
    window = padded[:, 0:channels]
    for k in range(1, size):
        window = fn.add(window, padded[:, k : k + channels])
    scale = fn.add(fn.mul(window, alpha / size), bias)
    return fn.div(x, fn.pow(scale, beta))


# -- per-sample normalisation ----------------------------------------------------------------


def _compute_dtype(dtype: np.dtype, stash_type: int) -> np.dtype:
    """``stash_type`` 1 computes statistics in float32 at least (float16 input is widened); a
    float64 input keeps its precision, so gradcheck in float64 sees exact float64 arithmetic."""
    widths = {1: np.dtype(np.float32), 11: np.dtype(np.float64)}
    stash = widths.get(stash_type, dtype)
    return stash if stash.itemsize > dtype.itemsize else dtype


def _widen(x: Tensor, dtype: np.dtype) -> Tensor:
    return None if x is None else keep_dtype(x, dtype)


def _standardize(x: Tensor, dims: tuple[int, ...], epsilon: float, compute: np.dtype):
    """``(x - mean) / sqrt(var + epsilon)`` over ``dims`` in ``compute`` (population variance of
    the centred values), with the kept-dims ``mean`` and ``1 / sqrt(var + epsilon)``."""
    xc = _widen(x, compute)
    mean = fn.mean(xc, dim=dims, keepdim=True)
    centered = fn.sub(xc, mean)
    var = fn.mean(fn.mul(centered, centered), dim=dims, keepdim=True)
    inv_std = fn.rsqrt(fn.add(var, np.asarray(epsilon, compute)))
    return fn.mul(centered, inv_std), mean, inv_std


def _trailing_axes(op: str, axis: int, ndim: int) -> tuple[int, ...]:
    if not -ndim <= axis < ndim:
        raise ShapeError(f"{op}: axis {axis} is out of range for input of rank {ndim}")
    return tuple(range(axis_of(axis, ndim), ndim))


def _affine_constants(view: NodeView, count: int) -> list[np.ndarray] | None:
    """The node's constant float scale (input 1) and, when present, bias (input 2), or None
    when the module form does not apply (non-constant input, non-float weight, extra outputs)."""
    if view.constant(0) is not None or any(o for o in view.node.output[1:]):
        return None
    weights = [view.constant(i) for i in range(1, 1 + count) if view.has_input(i)]
    if not weights or any(w is None or w.dtype not in (np.float32, np.float64) for w in weights):
        return None
    return weights


def _normalized_shape(view: NodeView, axis: int, scale: np.ndarray) -> tuple[int, ...] | None:
    """The trailing dims the module normalises: ``scale``'s shape, when it covers exactly the
    axes from ``axis`` on (a negative axis needs no rank). A size-1 dim may be a broadcast
    scale over a longer axis, which only the functional form allows."""
    count = -axis if axis < 0 else (view.rank(0) - axis if view.rank(0) is not None else None)
    if count is None or count <= 0 or scale.ndim != count or 1 in scale.shape:
        return None
    return tuple(scale.shape)


def _layer_norm_module(view: NodeView) -> Built | None:
    weights = _affine_constants(view, 2)
    if weights is None:
        return None
    a = view.attributes
    shape = _normalized_shape(view, a.get("axis", -1), weights[0])
    if shape is None or any(w.shape != shape for w in weights):
        return None
    layer = LayerNorm(shape, eps=float(_decimal(a.get("epsilon", 1e-5))), bias=len(weights) == 2)
    return Built(holding(layer, *weights))


@register("LayerNormalization", 17, module=_layer_norm_module)
def layer_normalization(
    x: Tensor,
    scale: Tensor,
    b: Tensor | None = None,
    *,
    axis=-1,
    epsilon=1e-5,
    stash_type=1,
    _outputs=1,
) -> Tensor | tuple[Tensor, ...]:
    """Normalise over the axes from ``axis`` on; Mean and InvStdDev (kept dims) are in the
    computation's type, float32 for float16 input."""
    dtype = x._data.dtype
    compute = _compute_dtype(dtype, stash_type)
    dims = _trailing_axes("LayerNormalization", axis, x.ndim)
    shape = tuple(x.shape[dims[0] :])
    if _outputs == 1 and compute == dtype and x.numel() > 0:
        weights = (scale, b)
        if all(w is None or (tuple(w.shape) == shape and w._data.dtype == dtype) for w in weights):
            return nn_ops.LayerNorm.apply(x, scale, b, dims=len(dims), eps=epsilon)
    normalized, mean, inv_std = _standardize(x, dims, epsilon, compute)
    y = fn.mul(normalized, _widen(scale, compute))
    if b is not None:
        y = fn.add(y, _widen(b, compute))
    return (keep_dtype(y, dtype), mean, inv_std)[:_outputs]


@emits(nn_ops.LayerNorm)
def _emit_layer_norm(b, call, outs):
    """LayerNormalization from opset 17; before, its formula in standard nodes."""
    x, weight, bias = call.args
    dtype, dims = _dtype_of(call), call.kwargs["dims"]
    axes = list(range(-dims, 0))
    shape = tuple(x.shape[len(x.shape) - dims :])
    eps = float(call.kwargs["eps"])
    name = b.name_of(x)
    if b.opset >= 17:
        scale = b.name_of(weight) if weight is not None else b.constant(np.ones(shape, dtype))
        inputs = [name, scale] + ([b.name_of(bias)] if bias is not None else [])
        b.node("LayerNormalization", inputs, outs, axis=-dims, epsilon=eps)
        return
    ndim = len(x.shape)
    positive = [a % ndim for a in axes]
    mean = b.reduce("ReduceMean", name, positive, True, None)[0]
    centred = b.node("Sub", [name, mean])[0]
    square = b.node("Mul", [centred, centred])[0]
    var = b.reduce("ReduceMean", square, positive, True, None)[0]
    shifted = b.node("Add", [var, b.constant(np.asarray(eps, dtype))])[0]
    normalized = b.node("Div", [centred, b.node("Sqrt", [shifted])[0]])[0]
    steps = [("Mul", weight), ("Add", bias)]
    steps = [(op, p) for op, p in steps if p is not None]
    if not steps:
        b.node("Identity", [normalized], outs)
    for k, (op, p) in enumerate(steps):
        last = k == len(steps) - 1
        normalized = b.node(op, [normalized, b.name_of(p)], outs if last else None)[0]


def _dtype_of(call) -> np.dtype:
    return call.results[0]._data.dtype


def _rms_norm_module(view: NodeView) -> Built | None:
    weights = _affine_constants(view, 1)
    if weights is None:
        return None
    a = view.attributes
    shape = _normalized_shape(view, a.get("axis", -1), weights[0])
    if shape is None:
        return None
    return Built(holding(RMSNorm(shape, eps=float(_decimal(a.get("epsilon", 1e-5)))), weights[0]))


@register("RMSNormalization", 23, module=_rms_norm_module)
def rms_normalization(x: Tensor, scale: Tensor, *, axis=-1, epsilon=1e-5, stash_type=1) -> Tensor:
    """``x / sqrt(mean(x^2) + epsilon) * scale`` over the axes from ``axis`` on."""
    dtype = x._data.dtype
    compute = _compute_dtype(dtype, stash_type)
    dims = _trailing_axes("RMSNormalization", axis, x.ndim)
    xc = _widen(x, compute)
    mean_square = fn.mean(fn.mul(xc, xc), dim=dims, keepdim=True)
    inv_rms = fn.rsqrt(fn.add(mean_square, np.asarray(epsilon, compute)))
    return keep_dtype(fn.mul(fn.mul(xc, inv_rms), _widen(scale, compute)), dtype)


def _check_channels(op: str, x: Tensor, groups: int, *params: Tensor | None) -> None:
    if x.ndim < 2:
        raise ShapeError(f"{op}: input must be (N, C, ...), got shape {list(x.shape)}")
    channels = x.shape[1]
    if groups < 1 or channels % groups:
        raise ShapeError(
            f"{op}: {channels} channels of input {list(x.shape)} do not split into "
            f"num_groups={groups} groups"
        )
    for p in params:
        if p is not None and p.numel() not in (1, groups, channels):
            raise ShapeError(
                f"{op}: scale/bias of shape {list(p.shape)} fits neither the {channels} "
                f"channels nor the {groups} groups of input {list(x.shape)}"
            )


def _group_standardize(x: Tensor, groups: int, epsilon: float, compute: np.dtype) -> Tensor:
    """``x`` as ``(N, groups, -1)`` standardised along its last axis, in ``compute``."""
    grouped = fn.reshape(x, (x.shape[0], groups, -1))
    return _standardize(grouped, (2,), epsilon, compute)[0]


@register("GroupNormalization", 18)
def group_normalization_18(
    x: Tensor, scale: Tensor, bias: Tensor, *, epsilon=1e-5, num_groups
) -> Tensor:
    """Opset 18's scale and bias have one value per group (opset 21 made them per channel,
    PyTorch's form); the weights stay parameters of the graph, not a ``nn.GroupNorm``."""
    _check_channels("GroupNormalization", x, num_groups, scale, bias)
    if scale.numel() != num_groups or bias.numel() != num_groups:
        raise ShapeError(
            f"GroupNormalization-18: scale and bias need num_groups={num_groups} values, got "
            f"shapes {list(scale.shape)} and {list(bias.shape)}"
        )
    normalized = _group_standardize(x, num_groups, epsilon, x._data.dtype)
    per_group = (1, num_groups, 1)
    y = fn.add(fn.mul(normalized, fn.reshape(scale, per_group)), fn.reshape(bias, per_group))
    return fn.reshape(y, tuple(x.shape))


def _group_norm_module(view: NodeView) -> Built | None:
    weights = _affine_constants(view, 2)
    if weights is None or len(weights) != 2:
        return None
    scale, bias = weights
    groups = view.attributes.get("num_groups")
    if scale.shape != bias.shape or scale.ndim != 1 or not groups or scale.shape[0] % groups:
        return None
    layer = GroupNorm(
        groups, scale.shape[0], eps=float(_decimal(view.attributes.get("epsilon", 1e-5)))
    )
    return Built(holding(layer, scale, bias))


@register("GroupNormalization", 21, module=_group_norm_module)
def group_normalization(
    x: Tensor, scale: Tensor, bias: Tensor, *, epsilon=1e-5, num_groups, stash_type=1
) -> Tensor:
    """Normalise each group of ``C / num_groups`` channels; scale and bias per channel."""
    _check_channels("GroupNormalization", x, num_groups, scale, bias)
    channels = x.shape[1]
    if scale.numel() != channels or bias.numel() != channels:
        raise ShapeError(
            f"GroupNormalization: scale and bias need {channels} values (the channels of input "
            f"{list(x.shape)}), got shapes {list(scale.shape)} and {list(bias.shape)}"
        )
    dtype = x._data.dtype
    compute = _compute_dtype(dtype, stash_type)
    normalized = fn.reshape(_group_standardize(x, num_groups, epsilon, compute), tuple(x.shape))
    per_channel = (channels,) + (1,) * (x.ndim - 2)
    y = fn.mul(normalized, fn.reshape(_widen(scale, compute), per_channel))
    y = fn.add(y, fn.reshape(_widen(bias, compute), per_channel))
    return keep_dtype(y, dtype)


_INSTANCE_NORMS = {3: InstanceNorm1d, 4: InstanceNorm2d, 5: InstanceNorm3d}


def _instance_norm_module(view: NodeView) -> Built | None:
    weights = _affine_constants(view, 2)
    layer_type = _INSTANCE_NORMS.get(view.rank(0))
    if weights is None or len(weights) != 2 or layer_type is None:
        return None
    scale, bias = weights
    if scale.ndim != 1 or scale.shape != bias.shape:
        return None
    eps = float(_decimal(view.attributes.get("epsilon", 1e-5)))
    layer = layer_type(scale.shape[0], eps=eps, affine=True, track_running_stats=False)
    return Built(holding(layer, scale, bias))


@register("InstanceNormalization", 1, 6, 22, module=_instance_norm_module)
def instance_normalization(
    x: Tensor, scale: Tensor, b: Tensor, *, epsilon=1e-5, consumed_inputs=None
) -> Tensor:
    """Normalise each channel of each sample over its spatial axes; ``consumed_inputs`` (opset
    1's in-place hints) changes nothing."""
    if x.ndim < 3:
        raise ShapeError(
            f"InstanceNormalization: input must be (N, C, D1, ...), got shape {list(x.shape)}"
        )
    channels = x.shape[1]
    if scale.numel() != channels or b.numel() != channels:
        raise ShapeError(
            f"InstanceNormalization: scale and B need {channels} values (the channels of "
            f"input {list(x.shape)}), got shapes {list(scale.shape)} and {list(b.shape)}"
        )
    normalized = _standardize(x, tuple(range(2, x.ndim)), epsilon, x._data.dtype)[0]
    per_channel = (channels,) + (1,) * (x.ndim - 2)
    return fn.add(fn.mul(normalized, fn.reshape(scale, per_channel)), fn.reshape(b, per_channel))


@register("MeanVarianceNormalization", 9, 13)
def mean_variance_normalization(x: Tensor, *, axes=(0, 2, 3)) -> Tensor:
    """``(x - mean) / (std + 1e-9)`` over ``axes``, as the spec's function body; the variance is
    taken of the centred values (the body's ``E[x^2] - E[x]^2`` can round below zero)."""
    dims = tuple(sorted({axis_of(a, x.ndim) for a in axes}))
    if any(not 0 <= d < x.ndim for d in dims):
        raise ShapeError(
            f"MeanVarianceNormalization: axes {list(axes)} out of range for rank {x.ndim}"
        )
    centered = fn.sub(x, fn.mean(x, dim=dims, keepdim=True))
    std = fn.sqrt(fn.mean(fn.mul(centered, centered), dim=dims, keepdim=True))
    return fn.div(centered, fn.add(std, np.asarray(1e-9, x._data.dtype)))
