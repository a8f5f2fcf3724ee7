"""Conv and ConvTranspose (1-, 2- and 3-D). A constant 1-D or 2-D weight makes them a real
``nn.Conv1d`` / ``nn.Conv2d`` (padding the module cannot express, asymmetric or ``SAME_*``, is
applied first) or ``nn.ConvTranspose1d`` / ``nn.ConvTranspose2d``."""

from __future__ import annotations

import math

import numpy as np

from ... import functions as fn
from ...autograd.conv import ConvolutionTranspose
from ...errors import OnnxImportError, ShapeError
from ...nn.layers.conv import Conv1d, Conv2d, ConvTranspose1d, ConvTranspose2d
from ...nn.utils import skip_init
from ...tensor import Tensor
from ..export_ops import cannot_export, emits
from ..limits import check_shape
from ..registry import Built, NodeView, call_module, register
from ._common import holding, ints, wrap
from ._padding import check_padded, is_static, spatial_pads, window


class _PadFirst:
    """Pads the input as the ONNX node says, then calls the module (with zero padding)."""

    def __init__(self, attributes: dict, kernel: tuple, strides: tuple, dilations: tuple):
        self.auto_pad = attributes.get("auto_pad", "NOTSET")
        self.pads = attributes.get("pads")
        self.kernel, self.strides, self.dilations = kernel, strides, dilations

    def pairs(self, shape: tuple) -> tuple:
        """The node's ``(before, after)`` pads for an input of ``shape``, checked."""
        pairs = spatial_pads(
            "Conv", self.auto_pad, self.pads, shape[2:], self.kernel, self.strides, self.dilations
        )
        check_padded(shape, pairs, "Conv")
        return pairs

    def __call__(self, module, x):
        flat = [p for pair in reversed(self.pairs(tuple(x.shape))) for p in pair]
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
        "Conv", n, a.get("kernel_shape") or w.shape[2:], a.get("strides"), a.get("dilations")
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
        pairs = spatial_pads("Conv", auto_pad, a.get("pads"), (0,) * n, kernel, strides, dilations)
        # pads past the kernel's reach go through _PadFirst, whose size is checked at run time
        reach = [(k - 1) * d + 1 for k, d in zip(kernel, dilations)]
        if all(lo == hi <= r for (lo, hi), r in zip(pairs, reach)):
            padding, call = tuple(lo for lo, _ in pairs), call_module
    layer = skip_init(
        Conv2d if n == 2 else Conv1d,
        w.shape[1] * group,
        w.shape[0],
        kernel,
        strides,
        padding,
        dilations,
        group,
        b is not None,
    )
    return Built(holding(layer, w, b), (0,), call)


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
    return run_conv("Conv", x, w, b, auto_pad, dilations, group, kernel_shape, pads, strides)


def run_conv(
    op: str, x: Tensor, w: Tensor, b, auto_pad, dilations, group, kernel_shape, pads, strides
) -> Tensor:
    """A convolution from ONNX's attributes (Conv's, also ConvInteger's and QLinearConv's):
    window and padding resolved and checked against the input, errors naming ``op``."""
    from ...autograd import conv as kernels

    kernel, strides, dilations = window(
        op, w.ndim - 2, kernel_shape or w.shape[2:], strides, dilations
    )
    padding = spatial_pads(op, auto_pad, pads, tuple(x.shape[2:]), kernel, strides, dilations)
    check_padded(tuple(x.shape), padding, op)
    return kernels.conv(x, w, b, stride=strides, padding=padding, dilation=dilations, groups=group)


def _transpose_pads(
    sizes, kernel, strides, dilations, auto_pad, pads, output_padding, output_shape
) -> tuple[tuple[int, int], ...]:
    """ConvTranspose's crop of its full output, ``(before, after)`` per axis, output padding
    folded in (a smaller ``after``; negative: zeros added). ``output_shape`` (or SAME's
    ``size * stride``) fixes the output size: SAME_UPPER crops the odd pixel at the end, the
    others at the start, as the spec's formula says; explicit ``pads`` keep their start."""
    n = len(kernel)
    if auto_pad not in ("NOTSET", "SAME_UPPER", "SAME_LOWER", "VALID"):
        raise OnnxImportError(
            f"ConvTranspose: unknown auto_pad {auto_pad!r} (NOTSET, SAME_UPPER, SAME_LOWER or "
            "VALID)"
        )
    adjust = tuple(int(v) for v in output_padding) if output_padding else (0,) * n
    if len(adjust) != n:
        raise OnnxImportError(f"ConvTranspose: output_padding {list(adjust)} needs {n} entries")
    if output_shape is not None:
        output_shape = tuple(int(v) for v in output_shape)[-n:]
        if len(output_shape) != n:
            raise OnnxImportError(f"ConvTranspose: output_shape needs {n} spatial entries")
    if auto_pad in ("SAME_UPPER", "SAME_LOWER") and output_shape is None:
        output_shape = tuple(size * s for size, s in zip(sizes, strides))
    natural = [
        (size - 1) * s + (k - 1) * d + 1 + a
        for size, s, k, d, a in zip(sizes, strides, kernel, dilations, adjust)
    ]
    if auto_pad == "VALID":
        pairs = ((0, 0),) * n
    elif auto_pad in ("SAME_UPPER", "SAME_LOWER") or (output_shape is not None and not pads):
        pairs = []
        for total in (m - o for m, o in zip(natural, output_shape)):
            small, large = total // 2, total - total // 2
            pairs.append((small, large) if auto_pad == "SAME_UPPER" else (large, small))
        pairs = tuple(pairs)
    else:
        pairs = spatial_pads("ConvTranspose", "NOTSET", pads, sizes, kernel, strides, dilations)
        if output_shape is not None:
            pairs = tuple((lo, m - lo - o) for (lo, _), m, o in zip(pairs, natural, output_shape))
    return tuple((lo, hi - a) for (lo, hi), a in zip(pairs, adjust))


def _transpose_module(view: NodeView) -> Built | None:
    """A constant 1-d or 2-d weight with static, symmetric crops makes ``nn.ConvTranspose*``."""
    w, b = view.constant(1), view.constant(2) if view.has_input(2) else None
    if view.constant(0) is not None or w is None or w.dtype.kind != "f" or w.ndim not in (3, 4):
        return None
    if (view.has_input(2) and b is None) or b is not None and b.dtype != w.dtype:
        return None
    a = view.attributes
    n, group = w.ndim - 2, a.get("group", 1)
    if a.get("output_shape") is not None or w.shape[0] % group:
        return None
    kernel, strides, dilations = window(
        "ConvTranspose",
        n,
        a.get("kernel_shape") or w.shape[2:],
        a.get("strides"),
        a.get("dilations"),
    )
    if kernel != tuple(w.shape[2:]):
        raise OnnxImportError(
            f"ConvTranspose node {view.node.name!r}: kernel_shape {list(kernel)} does not match "
            f"its weight of shape {list(w.shape)}"
        )
    pairs = _transpose_pads(
        (1,) * n,  # SAME crops do not depend on the input size when output_shape is absent
        kernel,
        strides,
        dilations,
        a.get("auto_pad", "NOTSET"),
        a.get("pads"),
        a.get("output_padding"),
        None,
    )
    padding = tuple(lo for lo, _ in pairs)
    output_padding = tuple(lo - hi for lo, hi in pairs)
    if any(p < 0 for p in padding) or any(
        not 0 <= o < max(s, d) for o, s, d in zip(output_padding, strides, dilations)
    ):
        return None
    layer = skip_init(
        ConvTranspose2d if n == 2 else ConvTranspose1d,
        w.shape[0],
        w.shape[1] * group,
        kernel,
        strides,
        padding,
        output_padding,
        group,
        b is not None,
        dilations,
    )
    return Built(holding(layer, w, b))


@register("ConvTranspose", 1, 11, 22, module=_transpose_module)
def conv_transpose(
    x: Tensor,
    w: Tensor,
    b: Tensor | None = None,
    *,
    auto_pad="NOTSET",
    dilations=None,
    group=1,
    kernel_shape=None,
    output_padding=None,
    output_shape=None,
    pads=None,
    strides=None,
) -> Tensor:
    from ...autograd import conv as kernels

    n = w.ndim - 2
    if x.ndim != n + 2 or x.shape[1] != w.shape[0] or w.shape[0] % group:
        raise ShapeError(
            f"ConvTranspose: weight of shape {list(w.shape)} (in, out/group, k...) with "
            f"group={group} does not fit input of shape {list(x.shape)}"
        )
    kernel, strides, dilations = window(
        "ConvTranspose", n, kernel_shape or w.shape[2:], strides, dilations
    )
    if kernel != tuple(w.shape[2:]):
        raise ShapeError(
            f"ConvTranspose: kernel_shape {list(kernel)} does not match its weight of shape "
            f"{list(w.shape)}"
        )
    pairs = _transpose_pads(
        tuple(x.shape[2:]), kernel, strides, dilations, auto_pad, pads, output_padding, output_shape
    )
    sizes = [
        (size - 1) * s + (k - 1) * d + 1 - lo - hi
        for size, s, k, d, (lo, hi) in zip(x.shape[2:], strides, kernel, dilations, pairs)
    ]
    check_shape([x.shape[0], w.shape[1] * group, *sizes], "ConvTranspose output")
    return kernels.conv_transpose(x, w, b, strides, pairs, dilations, group)


@register("DeformConv", 19, 22)
def deform_conv(
    x: Tensor,
    w: Tensor,
    offset: Tensor,
    b: Tensor | None = None,
    mask: Tensor | None = None,
    *,
    dilations=None,
    group=1,
    kernel_shape=None,
    offset_group=1,
    pads=None,
    strides=None,
) -> Tensor:
    """Deformable convolution (torchvision's ``deform_conv2d``, N-d): each kernel tap reads
    the input bilinearly at its place plus a learned ``offset`` (zero outside the input),
    scaled by ``mask``, then the taps contract with ``w`` as a grouped convolution's columns.
    Differentiable in ``x``, ``w``, ``offset``, ``b`` and ``mask``."""
    from ...autograd import sampling

    n, c, sizes = x.shape[0], x.shape[1], tuple(x.shape[2:])
    nd, o = len(sizes), w.shape[0]
    kernel, strides, dilations = window(
        "DeformConv", nd, kernel_shape or w.shape[2:], strides, dilations
    )
    padding = spatial_pads("DeformConv", "NOTSET", pads, sizes, kernel, strides, dilations)
    outs = tuple(
        (s + lo + hi - (k - 1) * d - 1) // st + 1
        for s, (lo, hi), k, st, d in zip(sizes, padding, kernel, strides, dilations)
    )
    taps, pixels = math.prod(kernel), math.prod(outs)
    if (
        w.ndim != nd + 2
        or tuple(w.shape[2:]) != kernel
        or c % group
        or c % offset_group
        or o % group
        or w.shape[1] * group != c
        or tuple(offset.shape) != (n, offset_group * taps * nd, *outs)
        or (mask is not None and tuple(mask.shape) != (n, offset_group * taps, *outs))
        or min(outs) < 1
    ):
        raise ShapeError(
            f"DeformConv: input {list(x.shape)}, weight {list(w.shape)}, offset "
            f"{list(offset.shape)}, mask {None if mask is None else list(mask.shape)} with "
            f"group={group}, offset_group={offset_group} do not fit (expected offset "
            f"{[n, offset_group * taps * nd, *outs]})"
        )
    dtype = x._data.dtype
    # where each tap of each output pixel reads before its offset: (k l) nd
    tap_at = np.stack(np.meshgrid(*map(np.arange, kernel), indexing="ij"), -1).reshape(-1, nd)
    pixel_at = np.stack(np.meshgrid(*map(np.arange, outs), indexing="ij"), -1).reshape(-1, nd)
    lows = np.array([lo for lo, _ in padding])
    base = tap_at[:, None] * np.array(dilations) + pixel_at[None] * np.array(strides) - lows
    base = wrap(base.reshape(1, taps * pixels, nd).astype(dtype))
    # n (g k nd) j... -> n g (k l) nd
    shifts = fn.reshape(offset, (n, offset_group, taps, nd, pixels))
    shifts = fn.reshape(fn.permute(shifts, (0, 1, 2, 4, 3)), (n, offset_group, taps * pixels, nd))
    if mask is not None:
        mask = fn.reshape(mask, (n, offset_group, 1, taps, pixels))
    per_group = c // offset_group
    columns = []
    for g in range(offset_group):
        channels = fn.getitem(x, (slice(None), slice(g * per_group, (g + 1) * per_group)))
        points = fn.add(fn.getitem(shifts, (slice(None), g)), base)
        read = sampling.sample(channels, points, None, "linear", "zeros")  # n c (k l)
        read = fn.reshape(read, (n, per_group, taps, pixels))
        columns.append(read if mask is None else fn.mul(read, fn.getitem(mask, (slice(None), g))))
    cols = columns[0] if offset_group == 1 else fn.cat(columns, dim=1)  # n c k l
    # n g (c k) l, g o (c k) -> n g o l
    cols = fn.reshape(cols, (n, group, (c // group) * taps, pixels))
    weights = fn.reshape(w, (group, o // group, (c // group) * taps))
    y = fn.reshape(fn.matmul(weights, cols), (n, o, *outs))
    if b is not None:
        y = fn.add(y, fn.reshape(b, (1, o) + (1,) * nd))
    return y


@register("Col2Im", 18)
def col2im(
    x: Tensor, image_shape: Tensor, block_shape: Tensor, *, dilations=None, pads=None, strides=None
) -> Tensor:
    """Blocks (N, C * prod(block), L) added back into images (N, C, *image_shape), the inverse
    layout of im2col: a transposed convolution, grouped by channel, whose one-hot weight puts
    each block element at its tap."""
    from ...autograd import conv as kernels

    image, block = ints(image_shape), ints(block_shape)
    nd, taps = len(image), math.prod(block)
    kernel, strides, dilations = window("Col2Im", nd, block, strides, dilations)
    padding = spatial_pads("Col2Im", "NOTSET", pads, image, kernel, strides, dilations)
    outs = tuple(
        (s + lo + hi - (k - 1) * d - 1) // st + 1
        for s, (lo, hi), k, st, d in zip(image, padding, kernel, strides, dilations)
    )
    if x.ndim != 3 or x.shape[1] % taps or x.shape[2] != math.prod(outs) or min(outs) < 1:
        raise ShapeError(
            f"Col2Im: input {list(x.shape)} does not hold blocks {list(block)} of an image "
            f"{list(image)} ({math.prod(outs)} blocks of {taps} per channel expected)"
        )
    c = x.shape[1] // taps
    check_shape([x.shape[0], c, *image], "Col2Im")
    one_hot = np.tile(np.eye(taps, dtype=x._data.dtype), (c, 1)).reshape(c * taps, 1, *kernel)
    natural = [
        (j - 1) * st + (k - 1) * d + 1 for j, st, k, d in zip(outs, strides, kernel, dilations)
    ]
    crop = tuple((lo, m - lo - s) for (lo, _), m, s in zip(padding, natural, image))
    blocks = fn.reshape(x, (x.shape[0], x.shape[1], *outs))
    return kernels.conv_transpose(blocks, wrap(one_hot), None, strides, crop, dilations, c)


@emits(ConvolutionTranspose)
def _emit_conv_transpose(b, call, outs):
    """A trailing crop smaller than zero is ONNX's ``output_padding``; a leading one has no
    ONNX form."""
    x, weight = call.args[0], call.args[1]
    inputs = [b.name_of(x), b.name_of(weight)]
    if len(call.args) > 2 and call.args[2] is not None:
        inputs.append(b.name_of(call.args[2]))
    k = call.kwargs
    if any(lo < 0 for lo, _ in k["padding"]):
        raise cannot_export(call, f"negative leading padding {list(k['padding'])}")
    b.node(
        "ConvTranspose",
        inputs,
        outs,
        kernel_shape=list(weight.shape[2:]),
        strides=list(k["stride"]),
        pads=[int(lo) for lo, _ in k["padding"]] + [max(int(hi), 0) for _, hi in k["padding"]],
        output_padding=[max(-int(hi), 0) for _, hi in k["padding"]],
        dilations=list(k["dilation"]),
        group=int(k["groups"]),
    )
