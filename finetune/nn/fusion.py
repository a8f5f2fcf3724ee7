"""Eval-mode BatchNorm folded into the convolution before it, for frozen inference.

``conv_bn(conv, bn, x)`` is ``bn(conv(x))``. When both layers are in eval mode and nothing needs
a gradient (a frozen backbone, ``no_grad`` inference), the BatchNorm's scale and shift are folded
into the convolution's weight and bias, saving a full pass over the activations. The folded
weights are cached on the BatchNorm and rebuilt whenever any tensor they come from changes
(tracked by identity and version), so training, ``load_state_dict`` and in-place edits are seen.
Anything unusual (training mode, a gradient needed, hooks, the exporter tracing) takes the plain
path, so results never depend on the shortcut beyond float rounding.
"""

from __future__ import annotations

import numpy as np

from ..autograd.engine import is_grad_enabled
from ..autograd.function import is_tracing
from ..tensor import Tensor
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


def conv_bn(conv, bn, x: Tensor) -> Tensor:
    """``bn(conv(x))``, with the BatchNorm folded into the convolution when that is exact."""
    if not foldable(conv, bn, x):
        return bn(conv(x))
    conv._check_input(x)
    weight, bias = folded_weights(conv, bn)
    return conv._conv(x, weight, bias)
