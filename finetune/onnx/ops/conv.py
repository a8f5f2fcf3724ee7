"""Conv (1-, 2- and 3-D). A constant 1-D or 2-D weight makes it a real ``nn.Conv1d`` /
``nn.Conv2d``; padding the module cannot express (asymmetric, ``SAME_*``) is applied first."""

from __future__ import annotations

import numpy as np

from ... import functions as fn
from ...errors import OnnxImportError
from ...nn.layers.conv import Conv1d, Conv2d
from ...nn.parameter import Parameter
from ...tensor import Tensor
from ..registry import Built, NodeView, call_module, register
from ._padding import check_padded, is_static, spatial_pads, window


class _PadFirst:
    """Pads the input as the ONNX node says, then calls the module (with zero padding)."""

    def __init__(self, attributes: dict, kernel: tuple, strides: tuple, dilations: tuple):
        self.auto_pad = attributes.get("auto_pad", "NOTSET")
        self.pads = attributes.get("pads")
        self.kernel, self.strides, self.dilations = kernel, strides, dilations

    def __call__(self, module, x):
        pairs = spatial_pads(
            self.auto_pad, self.pads, tuple(x.shape[2:]), self.kernel, self.strides, self.dilations
        )
        check_padded(tuple(x.shape), pairs, "Conv")
        flat = [p for pair in reversed(pairs) for p in pair]
        return module(fn.pad(x, flat))


def _conv_module(view: NodeView) -> Built | None:
    w, b = view.constant(1), view.constant(2) if view.has_input(2) else None
    if view.constant(0) is not None or w is None or w.dtype.kind != "f" or w.ndim not in (3, 4):
        return None
    if view.has_input(2) and b is None:
        return None
    a = view.attributes
    n = w.ndim - 2
    kernel, strides, dilations = window(
        n, a.get("kernel_shape") or w.shape[2:], a.get("strides"), a.get("dilations")
    )
    if kernel != tuple(w.shape[2:]):
        raise OnnxImportError(
            f"Conv node {view.node.name!r}: kernel_shape {list(kernel)} does not match its "
            f"weight of shape {list(w.shape)}"
        )
    group = a.get("group", 1)
    auto_pad = a.get("auto_pad", "NOTSET")
    padding, call = (0,) * n, _PadFirst(a, kernel, strides, dilations)
    if is_static(auto_pad):
        pairs = spatial_pads(auto_pad, a.get("pads"), (0,) * n, kernel, strides, dilations)
        # pads past the kernel's reach go through _PadFirst, whose size is checked at run time
        reach = [(k - 1) * d + 1 for k, d in zip(kernel, dilations)]
        if all(lo == hi <= r for (lo, hi), r in zip(pairs, reach)):
            padding, call = tuple(lo for lo, _ in pairs), call_module
    layer = (Conv2d if n == 2 else Conv1d)(
        w.shape[1] * group, w.shape[0], kernel, strides, padding, dilations, group, b is not None
    )
    layer.weight = Parameter(np.ascontiguousarray(w))
    if b is not None:
        layer.bias = Parameter(np.ascontiguousarray(b))
    return Built(layer, (0,), call)


@register("Conv", 1, 11, 22, module=_conv_module)
def conv(
    x: Tensor,
    w: Tensor,
    b: Tensor | None = None,
    *,
    auto_pad="NOTSET",
    dilations=None,
    group=1,
    kernel_shape=None,
    pads=None,
    strides=None,
) -> Tensor:
    from ...autograd import conv as kernels

    kernel, strides, dilations = window(w.ndim - 2, kernel_shape or w.shape[2:], strides, dilations)
    padding = spatial_pads(auto_pad, pads, tuple(x.shape[2:]), kernel, strides, dilations)
    check_padded(tuple(x.shape), padding, "Conv")
    return kernels.conv(x, w, b, stride=strides, padding=padding, dilation=dilations, groups=group)
