"""Eval-mode BatchNorm folded into the convolution before it, for frozen inference.

``conv_bn(conv, bn, x)`` is ``bn(conv(x))``. When both layers are in eval mode and nothing needs
a gradient (a frozen backbone, ``no_grad`` inference), the BatchNorm's scale and shift are folded
into the convolution's weight and bias, saving a full pass over the activations. The folded
weights are cached on the BatchNorm and rebuilt whenever any tensor they come from changes
(tracked by identity and version), so training, ``load_state_dict`` and in-place edits are seen.
Anything unusual (training mode, a gradient needed, hooks, the exporter tracing) takes the plain
path, so results never depend on the shortcut beyond float rounding.

``FrozenConvolution`` goes one step further for an imported graph's inference plan: the whole
``activation(bn(conv(x)))`` straight on the convolution kernels, without the module call, the
functional checks and the autograd machinery around them (~60-110 us of a batch-1 layer whose
product takes 50), whenever that computes exactly what the layers would. ``FrozenBatchNorm`` does
the same for a BatchNorm nothing folds (one no convolution precedes) and the activation after it.
"""

from __future__ import annotations

import numpy as np

from ..autograd import conv as kernels
from ..autograd import nn_ops, piecewise
from ..autograd.engine import is_grad_enabled
from ..autograd.function import is_tracing
from ..autograd.layout import as_nchw, is_channels_last
from ..parallel import split_products
from ..tensor import Tensor
from . import functional as F
from .layers.activation import ReLU
from .layers.batchnorm import BatchNorm2d
from .layers.conv import Conv2d


def _plain(module) -> bool:
    return not (module.training or module._forward_hooks or module._forward_pre_hooks)


def foldable(conv, bn, x: Tensor) -> bool:
    """Whether ``conv_bn`` folds: both layers plain and in eval mode, nothing needing a gradient."""
    if type(conv) is not Conv2d or type(bn) is not BatchNorm2d or is_tracing():
        return False
    if not (_plain(conv) and _plain(bn)) or bn.running_mean is None:
        return False
    if bn.num_features != conv.out_channels:
        return False
    if is_grad_enabled():
        tensors = (x, conv.weight, conv.bias, bn.weight, bn.bias)
        if any(t is not None and t.requires_grad for t in tensors):
            return False
    return True


def _stamp(*tensors) -> tuple:
    """What identifies each tensor's current values: the tensor, its in-place version, and its
    array (``module.double()`` swaps the array without an in-place write)."""
    return tuple(
        (id(t), t._version.value, id(t._data), t._data.dtype) if t is not None else None
        for t in tensors
    )


def folded_weights(conv: Conv2d, bn: BatchNorm2d) -> tuple[Tensor, Tensor]:
    """The weight and bias of one convolution computing ``bn(conv(x))`` in eval mode."""
    sources = (conv.weight, conv.bias, bn.weight, bn.bias, bn.running_mean, bn.running_var)
    key = (_stamp(*sources), bn.eps)
    cached = bn.__dict__.get("_folded_cache")
    if cached is not None and cached[0] == key:
        return cached[1], cached[2]
    w = conv.weight._data.astype(np.float64)
    mean = bn.running_mean._data.astype(np.float64)
    scale = 1.0 / np.sqrt(bn.running_var._data.astype(np.float64) + bn.eps)
    shift = -mean * scale
    if bn.weight is not None:
        scale = scale * bn.weight._data
        shift = shift * bn.weight._data + bn.bias._data
    if conv.bias is not None:
        shift = shift + conv.bias._data * scale
    dtype = conv.weight._data.dtype
    weight = Tensor._from_array((w * scale.reshape(-1, *(1,) * (w.ndim - 1))).astype(dtype))
    bias = Tensor._from_array(shift.astype(dtype))
    object.__setattr__(bn, "_folded_cache", (key, weight, bias))
    return weight, bias


def conv_bn(conv, bn, x: Tensor, residual: Tensor | None = None, relu=None) -> Tensor:
    """``bn(conv(x))``, with the BatchNorm folded into the convolution when that is exact;
    ``relu(bn(conv(x)) + residual)`` with a ``residual`` (a skip connection) or an ``nn.ReLU``
    module given, either optional. When the BatchNorm folds, nothing needs a gradient and the
    ReLU is a plain one, the sum and the ReLU ride in the convolution's last pass over its
    output (``conv.epilogue``): no pass and no array of their own."""
    if not foldable(conv, bn, x):
        return _then(bn(conv(x)), residual, relu)
    conv._check_input(x)
    weight, bias = folded_weights(conv, bn)
    fused = relu is None or (
        type(relu) is ReLU and not (relu._forward_hooks or relu._forward_pre_hooks)
    )
    if residual is not None:
        kernel = weight.shape[2:]
        pads = F._conv_padding(conv.padding, kernel, conv.dilation, conv.stride)
        outs = tuple(
            kernels._out_size(size, pad, k, s, d, False)
            for size, pad, k, s, d in zip(x.shape[2:], pads, kernel, conv.stride, conv.dilation)
        )
        fused = fused and _fits(residual, x, weight.shape[0], outs)
    if not fused:
        return _then(conv._conv(x, weight, bias), residual, relu)
    if relu is None and residual is None:
        return conv._conv(x, weight, bias)  # a caller's ``epilogue`` may be pending
    tail = None if relu is None else piecewise.relu()
    with kernels.epilogue(tail, None if residual is None else residual._data):
        return conv._conv(x, weight, bias)


def _then(y: Tensor, residual: Tensor | None, relu) -> Tensor:
    """What ``conv_bn`` adds after the convolution when nothing rides in it."""
    if residual is not None:
        y = y + residual
    return y if relu is None else relu(y)


class FrozenConvolution:
    """``tail(bn(conv(x)))`` for a ``Conv2d``, the BatchNorm2d (folded in) and the activation
    optional; ``tail`` is an in-place ``epilogue`` on blocks of the output. ``pads_first(shape)``,
    when given, is zero padding applied before the convolution (an ONNX node's asymmetric pads,
    ``(before, after)`` per axis). The layers' own path (``fallback(x, *others)``) runs whenever
    the direct one could differ from it: a gradient needed, a BatchNorm that does not fold, hooks
    on the convolution, another padding mode, an input the layer would refuse (it then raises
    its own error)."""

    __slots__ = ("conv", "bn", "tail", "fallback", "pads_first", "_state")

    def __init__(self, conv: Conv2d, bn: BatchNorm2d | None, tail, fallback, pads_first=None):
        self.conv, self.bn, self.tail, self.fallback = conv, bn, tail, fallback
        self.pads_first = pads_first
        # what the last direct call's weights, bias and plan came from, and those three: most
        # calls check the key and reuse them (~8 us a call, against ~20 worked out afresh)
        self._state = None

    def __call__(self, x, *others):
        out = self.fused(x, self.tail)
        return self.fallback(x, *others) if out is None else out

    def fused(self, x, tail=None, residual=None) -> Tensor | None:
        """``tail(conv(x) + residual)`` straight on the kernels (the sum and ``tail`` in the
        output's last pass), or None when the layers' own path must run or the residual does
        not add as it is (``_fits``)."""
        state = self.current(x)
        if state is None:
            return None
        weight, bias, plan = state[2:]
        skip = None
        if residual is not None:
            if not _fits(residual, x, weight.shape[0], plan.outs):
                return None
            skip = residual._data
        with np.errstate(all="ignore"):  # as every op: 1/0 is inf, silently
            return Tensor._from_array(kernels.infer(plan, x._data, weight, bias, tail, skip))

    def current(self, x) -> tuple | None:
        """``(key, held, weight, bias array, plan)`` for the direct path on ``x``, or None when
        the layers' own path must run."""
        if not self._direct(x):
            return None
        conv, data, sources = self.conv, x._data, self._sources()
        key = (
            data.shape, data.dtype, conv.stride, conv.padding, conv.dilation, conv.groups,
            conv.in_channels, None if self.bn is None else self.bn.eps,
            # each tensor the weights come from, its in-place version and its array; the state
            # holds them, so no id is reused while it does
            _stamp(*sources),
        )  # fmt: skip
        state = self._state
        if state is None or state[0] != key:
            state = self._prepare(data, key, sources)
            if state is not None:
                self._state = state
        return state

    def _sources(self) -> tuple:
        """The tensors the convolution's weight and bias come from, BatchNorm's included."""
        p = self.conv._parameters
        if self.bn is None:
            return p.get("weight"), p.get("bias")
        q, b = self.bn._parameters, self.bn._buffers
        return (
            p.get("weight"), p.get("bias"), q.get("weight"), q.get("bias"),
            b.get("running_mean"), b.get("running_var"),
        )  # fmt: skip

    def _prepare(self, x: np.ndarray, key: tuple, sources: tuple) -> tuple | None:
        """``(key, sources and their arrays, weight, bias array, plan)`` for inputs like ``x``,
        or None when the layers' own path must run."""
        conv, bn = self.conv, self.bn
        if sources[0] is None:
            return None
        weight, bias = (conv.weight, conv.bias) if bn is None else folded_weights(conv, bn)
        first = self.pads_first(x.shape) if self.pads_first is not None else None
        pads = _padding(conv, x, weight._data, bias, first)
        if pads is None:
            return None
        shapes = (x.shape, weight._data.shape, conv.stride, pads, conv.dilation, conv.groups)
        held = (sources, tuple(t._data for t in sources if t is not None))
        bias = None if bias is None else bias._data
        return key, held, weight, bias, kernels.ConvPlan(*shapes)

    def _direct(self, x) -> bool:
        """Whether the layers are plain (see the class) and nothing needs a gradient."""
        conv, bn = self.conv, self.bn
        if type(x) is not Tensor or type(conv) is not Conv2d or conv.padding_mode != "zeros":
            return False
        if conv._forward_hooks or conv._forward_pre_hooks:
            return False
        if bn is not None:
            return foldable(conv, bn, x)
        return not is_grad_enabled() or not any(
            t is not None and t.requires_grad for t in (x, conv.weight, conv.bias)
        )


class GatedConvolution:
    """``frozen(x * gate)`` for a ``FrozenConvolution`` that is 1x1 (stride 1, no padding or
    groups, no activation) and a gate of one value per sample and channel, ``n c 1 1``:
    squeeze-and-excitation's ``x * sigmoid(...)`` before EfficientNet's, MobileNetV3's and
    RegNetY's projections. The gate scales the rows of each sample's ``c o`` weight matrix
    instead of the activation, ``x_s @ (g_s W^T)``: no pass over ``x`` and no array for the
    product, where the weights are smaller than a sample's activation (``o < h w``); otherwise,
    and wherever ``multiply`` then ``frozen`` could differ from this beyond rounding (a
    gradient needed, another layout or shape), the two run in turn. EfficientNet-B0 at batch 1
    spent 2.6 ms of ~17 in those multiplications."""

    __slots__ = ("frozen", "multiply")

    def __init__(self, frozen: FrozenConvolution, multiply) -> None:
        self.frozen, self.multiply = frozen, multiply

    def __call__(self, a, b):
        out = self.fused(a, b)
        return self.frozen(self.multiply(a, b)) if out is None else out

    def fused(self, a, b, tail=None, residual=None) -> Tensor | None:
        """``tail(frozen(a * b) + residual)`` with the gate in the weights (the sum and
        ``tail`` in the output's last pass), or None where the two must run in turn."""
        x, gate = (
            (b, a) if isinstance(a, Tensor) and a.ndim == 4 and a.shape[2:] == (1, 1) else (a, b)
        )
        state = self._state(x, gate)
        if state is None:
            return None
        weight, bias, _ = state[2:]
        n, c, h, w = x.shape
        o = weight.shape[0]
        if residual is not None and not _fits(residual, x, o, (h, w)):
            return None
        rows = x._data.transpose(0, 2, 3, 1).reshape(n, h * w, c)  # a view: channels last
        gates = gate._data.reshape(n, c, 1)
        matrix = weight._data.reshape(o, c).T
        out = np.empty((n, h, w, o), dtype=rows.dtype)
        products = out.reshape(n, h * w, o)

        def samples(lo: int, hi: int) -> None:
            for s in range(lo, hi):
                np.matmul(rows[s], np.multiply(matrix, gates[s]), out=products[s])

        with np.errstate(all="ignore"):
            split_products(samples, n, n * h * w * c * o)
            skip = None if residual is None else residual._data
            out = kernels.output_pass(as_nchw(out), bias, tail, skip)
        return Tensor._from_array(out)

    def _state(self, x, gate) -> tuple | None:
        """The convolution's direct state for ``x`` when the gate can go into its weights."""
        if type(x) is not Tensor or type(gate) is not Tensor or x.ndim != 4:
            return None
        n, c, h, w = x.shape
        if gate.shape != (n, c, 1, 1) or gate.dtype != x.dtype or not is_channels_last(x._data):
            return None
        if is_grad_enabled() and gate.requires_grad:
            return None
        state = self.frozen.current(x)
        if state is None or self.frozen.tail is not None:
            return None
        plan = state[4]
        if not plan.pointwise or plan.stride != (1, 1) or plan.groups != 1:
            return None
        if state[2].shape[0] >= h * w:  # scaling the weights would cost more than x * gate
            return None
        return state


class ResidualConvolution:
    """``act(conv(*inputs) + skip)``, ``conv`` a ``FrozenConvolution`` with no activation of
    its own or a ``GatedConvolution`` (its ``arity`` inputs), ``act`` an activation node or
    None: a block's last convolution, the skip connection added and the activation after the
    sum, all in the convolution's last pass over its output (``tail``, the activation as an
    epilogue): ResNet's and RegNet's blocks, the inverted residuals of MobileNetV2, MNASNet and
    EfficientNet. onnxruntime fuses the same; here the Add and the ReLU each read and wrote the
    whole output once more, and the Add allocated it (ResNet-50 at batch 8: 29 of ~420 ms).
    Where this could differ from the nodes in turn (a gradient needed, a skip of another shape
    or dtype, the layers' own path), they run in turn: ``add`` on the two in the node's order
    (``skip_first``), then ``act``."""

    __slots__ = ("conv", "arity", "tail", "add", "act", "skip_first")

    def __init__(self, conv, arity: int, tail, add, act, skip_first: bool) -> None:
        self.conv, self.arity, self.tail, self.add, self.act = conv, arity, tail, add, act
        self.skip_first = skip_first

    def __call__(self, *values):
        inputs, skip, others = values[: self.arity], values[self.arity], values[self.arity + 1 :]
        out = self.conv.fused(*inputs, tail=self.tail, residual=skip)
        if out is not None:
            return out
        y = self.conv(*inputs)
        y = self.add(skip, y) if self.skip_first else self.add(y, skip)
        return y if self.act is None else self.act(y, *others)


def _fits(skip, x: Tensor, channels: int, outs: tuple) -> bool:
    """Whether ``skip`` adds to the convolution's output as it is: the same shape (no
    broadcasting) and dtype, and no gradient needed through it."""
    if type(skip) is not Tensor or skip._data.dtype != x._data.dtype:
        return False
    if skip.shape != (x.shape[0], channels, *outs):
        return False
    return not (is_grad_enabled() and skip.requires_grad)


def _padding(conv: Conv2d, x: np.ndarray, weight: np.ndarray, bias, first) -> tuple | None:
    """The ``(before, after)`` pads of ``first`` (or none) and then ``conv``'s own, summed, for
    the input ``x`` when ``conv2d`` accepts the input, weight and bias as they are, all of one
    dtype (None otherwise: the layer's own path then runs, and raises its error)."""
    shape, groups, dtype = x.shape, conv.groups, weight.dtype
    if x.dtype != dtype or len(shape) != 4 or weight.ndim != 4 or conv.in_channels != shape[1]:
        return None
    if weight.shape[1] * groups != shape[1] or weight.shape[0] % groups:
        return None
    if bias is not None and (bias._data.shape != weight.shape[:1] or bias._data.dtype != dtype):
        return None
    kernel, dilation = weight.shape[2:], conv.dilation
    pads = F._conv_padding(conv.padding, kernel, dilation, conv.stride)
    if first is not None:
        pads = tuple((a + lo, b + hi) for (a, b), (lo, hi) in zip(first, pads))
    for size, (lo, hi), k, d in zip(shape[2:], pads, kernel, dilation):
        if size + lo + hi < d * (k - 1) + 1:
            return None
    return pads


class FrozenBatchNorm:
    """``tail(bn(x))`` for an eval-mode ``BatchNorm2d`` with running statistics, ``tail`` a
    ``piecewise.Activation`` (or None) applied to each block of the affine pass while it is in
    cache: a BatchNorm that cannot fold into a convolution (DenseNet's, after each
    concatenation) and its ReLU in one pass over memory instead of two passes and two arrays.
    The layers' own path, ``fallback(x, *others)``, runs whenever this could differ from it:
    training mode, hooks, a gradient needed, an input the layer would refuse."""

    __slots__ = ("bn", "tail", "fallback", "_state")

    def __init__(self, bn: BatchNorm2d, tail, fallback) -> None:
        self.bn, self.tail, self.fallback = bn, tail, fallback
        self._state = None  # the key of the last scale and shift, the tensors held, and them

    def __call__(self, x, *others):
        bn = self.bn
        if type(x) is not Tensor or type(bn) is not BatchNorm2d or not _plain(bn):
            return self.fallback(x, *others)
        p, b, data = bn._parameters, bn._buffers, x._data
        sources = (p.get("weight"), p.get("bias"), b.get("running_mean"), b.get("running_var"))
        if sources[2] is None or sources[3] is None or data.ndim != 4:
            return self.fallback(x, *others)
        if is_grad_enabled() and any(t is not None and t.requires_grad for t in (x, *sources)):
            return self.fallback(x, *others)
        key = (data.shape[1], data.dtype, bn.num_features, bn.eps, _stamp(*sources))
        state = self._state
        if state is None or state[0] != key:
            arrays = tuple(None if t is None else t._data for t in sources)
            if data.shape[1] != bn.num_features or any(
                a is not None and a.size != bn.num_features for a in arrays
            ):
                return self.fallback(x, *others)
            scale, shift, _ = nn_ops.eval_affine(*arrays, float(bn.eps), data.dtype)
            state = self._state = (key, (sources, arrays), scale, shift)
        with np.errstate(all="ignore"):  # as every op: 1/0 is inf, silently
            out = nn_ops.affine_channels(data, state[2], state[3], self.tail)
        return Tensor._from_array(out)
