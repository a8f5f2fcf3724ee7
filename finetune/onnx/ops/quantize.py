"""Quantization: QuantizeLinear, DequantizeLinear (per-tensor, per-axis, blocked),
DynamicQuantizeLinear, QLinearConv, QLinearMatMul, ConvInteger, MatMulInteger, with
onnxruntime's numerics (float32 division, round half to even, saturation to the integer range).

Only DequantizeLinear has a gradient: to its float scale (it is linear in it; a QDQ model's
activation scales are float initializers, so parameters once imported with ``freeze=False``),
and, when it reads a QuantizeLinear output, to that op's float input by the straight-through
estimate (``QuantizedTensor``), so every layer of a QDQ model trains. Every other op has integer
outputs, or a float output of integer inputs, and registers with ``differentiable=False``. A
QDQ model's weights become float parameters through ``fold_dequantized_weights``, which
dequantizes its constant quantized weights before the import.
"""

from __future__ import annotations

import numpy as np
import onnx

from ... import functions as fn
from ...autograd import is_grad_enabled
from ...errors import OnnxImportError, ShapeError
from ...tensor import Tensor
from ..registry import NodeView, register
from ._common import axis_of, keep_dtype, wrap
from .conv import run_conv

# the integer element types these ops read and write; float8 / 4-bit types are not supported
_INTEGER_TYPES = {
    onnx.TensorProto.UINT8: np.dtype(np.uint8),
    onnx.TensorProto.INT8: np.dtype(np.int8),
    onnx.TensorProto.UINT16: np.dtype(np.uint16),
    onnx.TensorProto.INT16: np.dtype(np.int16),
    onnx.TensorProto.INT32: np.dtype(np.int32),
}
_FLOAT_TYPES = {
    onnx.TensorProto.FLOAT: np.dtype(np.float32),
    onnx.TensorProto.FLOAT16: np.dtype(np.float16),
    onnx.TensorProto.DOUBLE: np.dtype(np.float64),
}


def _type_name(code: int) -> str:
    return (
        onnx.TensorProto.DataType.Name(code)
        if code in onnx.TensorProto.DataType.values()
        else str(code)
    )


def _integer_type(op: str, code: int) -> np.dtype:
    if code not in _INTEGER_TYPES:
        raise OnnxImportError(
            f"{op}: element type {_type_name(code)} is not supported (only uint8, int8, uint16, "
            "int16 and int32; float8 and 4-bit types are not)"
        )
    return _INTEGER_TYPES[code]


def _check_integer_array(op: str, what: str, array: np.ndarray) -> None:
    if array.dtype not in _INTEGER_TYPES.values():
        raise OnnxImportError(
            f"{op}: {what} has element type {array.dtype}, which is not supported (only uint8, "
            "int8, uint16, int16 and int32; float8 and 4-bit types are not)"
        )


def _float_type(op: str, what: str, array: np.ndarray) -> None:
    if array.dtype not in _FLOAT_TYPES.values():
        raise OnnxImportError(
            f"{op}: {what} has element type {array.dtype}; only float32, float16 and float64 "
            "are supported (not bfloat16 or float8)"
        )


def _refuse_unsupported_types(view: NodeView) -> None:
    """Refuse unsupported element types at import time: a module builder that builds no
    module, only checks the node's type attributes and constant inputs."""
    op = f"{view.node.op_type} node {view.node.name!r}"
    code = view.attributes.get("output_dtype", 0)
    if code and view.node.op_type == "QuantizeLinear":
        _integer_type(op, code)
    if code and view.node.op_type == "DequantizeLinear" and code not in _FLOAT_TYPES:
        raise OnnxImportError(f"{op}: output_dtype {_type_name(code)} is not supported")
    precision = view.attributes.get("precision", 0)
    if precision and precision not in _FLOAT_TYPES:
        raise OnnxImportError(f"{op}: precision {_type_name(precision)} is not supported")
    for index, array in enumerate(view.constants):
        if array is None:
            continue
        if array.dtype.kind not in "iuf" or array.dtype.names is not None:
            raise OnnxImportError(
                f"{op}: input {index} has element type {array.dtype}, which is not supported "
                "(float8, bfloat16 and 4-bit types are not)"
            )


def _broadcast_params(
    op: str, param: np.ndarray, shape: tuple, axis: int, block_size: int, what: str
) -> np.ndarray:
    """A scale or zero point shaped to broadcast against an input of ``shape``: per-tensor
    (one element), per-axis (1-D along ``axis``) or blocked (same rank, ``block_size`` long
    blocks along ``axis``)."""
    if param.size == 1 and param.ndim <= 1 and block_size == 0:
        return param.reshape(())
    ndim = len(shape)
    if ndim == 0:
        raise ShapeError(f"{op}: a scalar input takes a one-element {what}, got {param.shape}")
    if not -ndim <= axis < ndim:
        raise ShapeError(f"{op}: axis {axis} is out of range for a {ndim}-D input")
    axis = axis_of(axis, ndim)
    if block_size <= 0:
        if param.ndim != 1 or param.shape[0] != shape[axis]:
            raise ShapeError(
                f"{op}: per-axis {what} must be 1-D of length {shape[axis]} (axis {axis} of input "
                f"{list(shape)}), got shape {list(param.shape)}"
            )
        return param.reshape([-1 if i == axis else 1 for i in range(ndim)])
    blocks = -(-shape[axis] // block_size)
    want = tuple(blocks if i == axis else s for i, s in enumerate(shape))
    if param.shape != want:
        raise ShapeError(
            f"{op}: blocked {what} (block_size {block_size}, axis {axis}) must have shape "
            f"{list(want)} for input {list(shape)}, got {list(param.shape)}"
        )
    return np.repeat(param, block_size, axis=axis).take(np.arange(shape[axis]), axis=axis)


def _compute_type(*arrays: np.ndarray) -> np.dtype:
    """onnxruntime computes in float32 (float64 for double input)."""
    return np.dtype(np.float64 if any(a.dtype == np.float64 for a in arrays) else np.float32)


def _saturate(values: np.ndarray, dtype: np.dtype) -> np.ndarray:
    """Float values, already rounded, clipped to ``dtype``'s range and converted."""
    info = np.iinfo(dtype)
    return np.clip(values, info.min, info.max).astype(dtype)


def quantize_array(
    op: str,
    x: np.ndarray,
    scale: np.ndarray,
    zero_point: np.ndarray | None,
    dtype: np.dtype,
    axis: int = 1,
    block_size: int = 0,
    compute: np.dtype | None = None,
) -> np.ndarray:
    """``saturate(round_half_even(x / scale) + zero_point)`` in ``dtype``."""
    return _saturate(_unsaturated(op, x, scale, zero_point, axis, block_size, compute)[0], dtype)


def _unsaturated(op, x, scale, zero_point, axis, block_size, compute):
    """``round_half_even(x / scale) + zero_point`` (float64) and the scale it divided by."""
    compute = compute or _compute_type(x, scale)
    s = _broadcast_params(op, scale, x.shape, axis, block_size, "scale").astype(compute)
    q = np.rint(x.astype(compute) / s).astype(np.float64)
    if zero_point is not None:
        q = q + _broadcast_params(op, zero_point, x.shape, axis, block_size, "zero point")
    return q, s


class QuantizedTensor(Tensor):
    """QuantizeLinear's integer output when its float input requires grad. It remembers that
    input and ``d q / d x`` by the straight-through estimate (``1 / scale`` where ``x`` is in
    the integer range, 0 where it saturates: PyTorch's fake-quantize rule), so a
    DequantizeLinear reading it passes the gradient back to the input, as in
    quantization-aware training. Its values are the exact integers."""

    source: Tensor
    slope: np.ndarray


def _expanded_scale(
    op: str, scale: Tensor, shape: tuple, axis: int, block_size: int, compute: np.dtype
) -> Tensor:
    """The scale as a tensor that broadcasts against ``shape`` (see ``_broadcast_params``),
    built from tensor ops so a gradient reaches the scale."""
    _broadcast_params(op, np.asarray(scale._data), shape, axis, block_size, "scale")  # checks
    scale = keep_dtype(scale, compute)
    if scale.numel() == 1 and scale.ndim <= 1 and block_size == 0:
        return fn.reshape(scale, ())
    axis = axis_of(axis, len(shape))
    if block_size <= 0:
        return fn.reshape(scale, [-1 if i == axis else 1 for i in range(len(shape))])
    return fn.index_select(scale, axis, np.arange(shape[axis]) // block_size)


def dequantize_tensor(
    op: str,
    x: np.ndarray,
    scale: Tensor,
    zero_point: np.ndarray | None,
    axis: int = 1,
    block_size: int = 0,
    dtype: np.dtype | None = None,
) -> Tensor:
    """``(x - zero_point) * scale``, computed in float32 as onnxruntime does, in ``dtype``
    (default: the scale's type). Composed from tensor ops: it is linear in the scale, whose
    gradient is ``x - zero_point``; the integer input has none."""
    _check_integer_array(op, "x", x)
    _float_type(op, "scale", np.asarray(scale._data))
    compute = _compute_type(np.asarray(scale._data))
    shifted = x.astype(np.int64)
    if zero_point is not None:
        _check_integer_array(op, "zero point", zero_point)
        shifted = shifted - _broadcast_params(
            op, zero_point, x.shape, axis, block_size, "zero point"
        )
    s = _expanded_scale(op, scale, x.shape, axis, block_size, compute)
    out = fn.mul(wrap(shifted.astype(compute)), s)
    return keep_dtype(out, dtype or scale._data.dtype)


def _data(x: Tensor | None) -> np.ndarray | None:
    return None if x is None else np.asarray(x._data)


@register(
    "QuantizeLinear",
    10,
    13,
    19,
    21,
    23,
    24,
    25,
    28,
    module=_refuse_unsupported_types,
    differentiable=False,
)
def quantize_linear(
    x: Tensor,
    y_scale: Tensor,
    y_zero_point: Tensor | None = None,
    *,
    axis=1,
    block_size=0,
    output_dtype=0,
    precision=0,
    saturate=1,
) -> Tensor:
    """``saturate`` only concerns float8 outputs, which are refused."""
    op = "QuantizeLinear"
    data, scale, zero_point = _data(x), _data(y_scale), _data(y_zero_point)
    _float_type(op, "y_scale", scale)
    if data.dtype.kind not in "fi":
        raise OnnxImportError(f"{op}: input x has element type {data.dtype}, expected a float")
    if zero_point is not None:
        _check_integer_array(op, "y_zero_point", zero_point)
        dtype = zero_point.dtype
        if output_dtype and _integer_type(op, output_dtype) != dtype:
            raise OnnxImportError(
                f"{op}: output_dtype {_type_name(output_dtype)} differs from y_zero_point's "
                f"element type {dtype}"
            )
    else:
        dtype = _integer_type(op, output_dtype) if output_dtype else np.dtype(np.uint8)
    if precision and precision not in _FLOAT_TYPES:
        raise OnnxImportError(f"{op}: precision {_type_name(precision)} is not supported")
    compute = _FLOAT_TYPES[precision] if precision else None
    q, s = _unsaturated(op, data, scale, zero_point, axis, block_size, compute)
    values = _saturate(q, dtype)
    if not (x.requires_grad and is_grad_enabled() and data.dtype.kind == "f"):
        return wrap(values)
    out = QuantizedTensor._from_array(values)
    info = np.iinfo(dtype)
    inside = (q >= info.min) & (q <= info.max)
    out.source, out.slope = x, np.where(inside, 1 / s, 0).astype(data.dtype)
    return out


@register("DequantizeLinear", 10, 13, 19, 21, 23, 24, 25, 28, module=_refuse_unsupported_types)
def dequantize_linear(
    x: Tensor,
    x_scale: Tensor,
    x_zero_point: Tensor | None = None,
    *,
    axis=1,
    block_size=0,
    output_dtype=0,
) -> Tensor:
    op = "DequantizeLinear"
    dtype = None
    if output_dtype:
        if output_dtype not in _FLOAT_TYPES:
            raise OnnxImportError(f"{op}: output_dtype {_type_name(output_dtype)} is not supported")
        dtype = _FLOAT_TYPES[output_dtype]
    data, zero_point = _data(x), _data(x_zero_point)
    if data.dtype == np.int32 and zero_point is not None and np.any(zero_point != 0):
        raise OnnxImportError(f"{op}: an int32 input takes no zero point (it must be 0)")
    out = dequantize_tensor(op, data, x_scale, zero_point, axis, block_size, dtype)
    if isinstance(x, QuantizedTensor) and is_grad_enabled():
        # straight through: add w - w (exactly 0) where w = x_float * slope * scale carries
        # the gradient d out / d x_float = slope * scale to the float input
        scale = _broadcast_params(op, _data(x_scale), data.shape, axis, block_size, "scale")
        factor = (x.slope * scale).astype(x.source._data.dtype)
        inside = wrap(factor != 0)
        w = fn.mul(fn.where(inside, x.source, 0.0), factor)
        out = fn.add(out, keep_dtype(fn.sub(w, w.detach()), out._data.dtype))
    return out


@register("DynamicQuantizeLinear", 11, differentiable=False)
def dynamic_quantize_linear(x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """uint8 quantization over the range of ``x`` extended to include 0 (onnxruntime's)."""
    data = np.asarray(x._data, dtype=np.float32)
    low = min(float(data.min(initial=0.0)), 0.0)
    high = max(float(data.max(initial=0.0)), 0.0)
    scale = np.float32((np.float32(high) - np.float32(low)) / np.float32(255))
    if scale == 0:
        scale = np.float32(1)  # an all-zero input: any scale works, onnxruntime takes 1
    zero_point = _saturate(np.rint(np.float32(0) - np.float32(low) / scale), np.dtype(np.uint8))
    y = quantize_array("DynamicQuantizeLinear", data, scale, zero_point, np.dtype(np.uint8))
    return wrap(y), wrap(np.asarray(scale, np.float32)), wrap(np.asarray(zero_point))


def _zero_point(op: str, zp: Tensor | None, what: str) -> np.ndarray:
    if zp is None:
        return np.zeros((), np.int64)
    array = _data(zp)
    _check_integer_array(op, what, array)
    return array.astype(np.int64)


def _matmul_shifted(
    op: str, a: np.ndarray, a_zp: np.ndarray, b: np.ndarray, b_zp: np.ndarray
) -> np.ndarray:
    """``(a - a_zp) @ (b - b_zp)`` in int64. A 1-D ``a_zp`` is per row of ``a`` (its M rows);
    a 1-D ``b_zp`` per column of ``b`` (its N columns)."""
    _check_integer_array(op, "A", a)
    _check_integer_array(op, "B", b)
    if a_zp.ndim == 1 and a.ndim >= 2 and a_zp.size == a.shape[-2] and a_zp.size > 1:
        a_zp = a_zp[:, None]
    if b_zp.ndim >= 1 and b_zp.size > 1:
        if b_zp.shape[-1] != b.shape[-1]:
            raise ShapeError(f"{op}: b_zero_point of shape {list(b_zp.shape)} does not fit B")
        b_zp = b_zp.reshape(*b_zp.shape[:-1], 1, b_zp.shape[-1])
    left, right = a.astype(np.int64) - a_zp, b.astype(np.int64) - b_zp
    if left.ndim == 0 or right.ndim == 0:
        raise ShapeError(f"{op}: inputs must be at least 1-D")
    try:
        # exact in float64 (|products| < 2**17, sums below 2**53) and BLAS-fast
        return np.rint(np.matmul(left.astype(np.float64), right.astype(np.float64))).astype(
            np.int64
        )
    except ValueError as error:
        raise ShapeError(f"{op}: {error}") from None


@register("MatMulInteger", 10, differentiable=False)
def matmul_integer(
    a: Tensor, b: Tensor, a_zero_point: Tensor | None = None, b_zero_point: Tensor | None = None
) -> Tensor:
    op = "MatMulInteger"
    out = _matmul_shifted(
        op,
        _data(a),
        _zero_point(op, a_zero_point, "a_zero_point"),
        _data(b),
        _zero_point(op, b_zero_point, "b_zero_point"),
    )
    return wrap(out.astype(np.int32))


def _requantize(
    op: str, acc: np.ndarray, multiplier: np.ndarray, y_zero_point: np.ndarray
) -> np.ndarray:
    """onnxruntime's MlasRequantizeOutput: ``float32(acc) * multiplier``, rounded half to even,
    plus the zero point, saturated to the zero point's type."""
    _check_integer_array(op, "y_zero_point", y_zero_point)
    scaled = np.rint(acc.astype(np.float32) * multiplier.astype(np.float32)).astype(np.float64)
    return _saturate(scaled + y_zero_point.astype(np.int64), y_zero_point.dtype)


def _scale(op: str, t: Tensor, what: str) -> np.ndarray:
    array = _data(t)
    _float_type(op, what, array)
    return array.astype(np.float32)


@register("QLinearMatMul", 10, 21, differentiable=False)
def qlinear_matmul(
    a: Tensor,
    a_scale: Tensor,
    a_zero_point: Tensor,
    b: Tensor,
    b_scale: Tensor,
    b_zero_point: Tensor,
    y_scale: Tensor,
    y_zero_point: Tensor,
) -> Tensor:
    """``a``'s scale and zero point may be per row (M values), ``b``'s per column (N values),
    as the spec allows; the product is requantized as onnxruntime does."""
    op = "QLinearMatMul"
    acc = _matmul_shifted(
        op,
        _data(a),
        _zero_point(op, a_zero_point, "a_zero_point"),
        _data(b),
        _zero_point(op, b_zero_point, "b_zero_point"),
    )
    sa, sb = _scale(op, a_scale, "a_scale"), _scale(op, b_scale, "b_scale")
    sa = sa.reshape(()) if sa.size == 1 else sa.reshape(-1, 1)  # m -> m 1: per row of a
    sb = sb.reshape(()) if sb.size == 1 else sb.reshape(*sb.shape[:-1], 1, sb.shape[-1])
    multiplier = (sa * sb) / _scale(op, y_scale, "y_scale").reshape(())
    return wrap(_requantize(op, acc, multiplier, _data(y_zero_point)))


def _conv_integer(
    op: str,
    x: np.ndarray,
    x_zp: np.ndarray,
    w: np.ndarray,
    w_zp: np.ndarray,
    auto_pad: str,
    dilations,
    group: int,
    kernel_shape,
    pads,
    strides,
) -> np.ndarray:
    """The exact integer convolution ``(x - x_zp) * (w - w_zp)`` as int64. A 1-D ``w_zp`` is per
    output channel. It runs the float64 convolution kernel on the shifted integers: every
    product and partial sum is an integer below 2**53, so the rounded result is exact."""
    _check_integer_array(op, "x", x)
    _check_integer_array(op, "w", w)
    if x.ndim < 3 or w.ndim != x.ndim:
        raise ShapeError(
            f"{op}: x {list(x.shape)} and w {list(w.shape)} must be (N, C, ...) and (M, C/group, "
            "...) of the same rank"
        )
    if x_zp.size != 1:
        raise ShapeError(f"{op}: x_zero_point must have one element, got {list(x_zp.shape)}")
    if w_zp.size > 1:
        w_zp = w_zp.reshape(-1, *([1] * (w.ndim - 1)))
    # x's zero point must pad as zero after the shift: shift first, then let the kernel pad
    left = wrap((x.astype(np.int64) - x_zp.reshape(())).astype(np.float64))
    right = wrap((w.astype(np.int64) - w_zp).astype(np.float64))
    out = run_conv(op, left, right, None, auto_pad, dilations, group, kernel_shape, pads, strides)
    return np.rint(out._data).astype(np.int64)


@register("ConvInteger", 10, differentiable=False)
def conv_integer(
    x: Tensor,
    w: Tensor,
    x_zero_point: Tensor | None = None,
    w_zero_point: Tensor | None = None,
    *,
    auto_pad="NOTSET",
    dilations=None,
    group=1,
    kernel_shape=None,
    pads=None,
    strides=None,
) -> Tensor:
    op = "ConvInteger"
    out = _conv_integer(
        op,
        _data(x),
        _zero_point(op, x_zero_point, "x_zero_point"),
        _data(w),
        _zero_point(op, w_zero_point, "w_zero_point"),
        auto_pad,
        dilations,
        group,
        kernel_shape,
        pads,
        strides,
    )
    return wrap(out.astype(np.int32))


@register("QLinearConv", 10, differentiable=False)
def qlinear_conv(
    x: Tensor,
    x_scale: Tensor,
    x_zero_point: Tensor,
    w: Tensor,
    w_scale: Tensor,
    w_zero_point: Tensor,
    y_scale: Tensor,
    y_zero_point: Tensor,
    b: Tensor | None = None,
    *,
    auto_pad="NOTSET",
    dilations=None,
    group=1,
    kernel_shape=None,
    pads=None,
    strides=None,
) -> Tensor:
    """Integer convolution plus the int32 bias, requantized with ``x_scale * w_scale / y_scale``
    (``w_scale`` per output channel or one value)."""
    op = "QLinearConv"
    acc = _conv_integer(
        op,
        _data(x),
        _zero_point(op, x_zero_point, "x_zero_point"),
        _data(w),
        _zero_point(op, w_zero_point, "w_zero_point"),
        auto_pad,
        dilations,
        group,
        kernel_shape,
        pads,
        strides,
    )
    shape = (-1, *([1] * (acc.ndim - 2)))
    if b is not None:
        bias = _data(b)
        if bias.size != acc.shape[1]:
            raise ShapeError(f"{op}: bias of {bias.size} values for {acc.shape[1]} channels")
        acc = acc + bias.astype(np.int64).reshape(shape)
    sw = _scale(op, w_scale, "w_scale")
    sw = sw.reshape(shape) if sw.size > 1 else sw.reshape(())
    sx = _scale(op, x_scale, "x_scale").reshape(())
    multiplier = (sx * sw) / _scale(op, y_scale, "y_scale").reshape(())
    return wrap(_requantize(op, acc, multiplier, _data(y_zero_point)))


def fold_dequantized_weights(
    nodes: list[onnx.NodeProto], constants: dict[str, np.ndarray], opset: int
) -> tuple[list[onnx.NodeProto], dict[str, np.ndarray]]:
    """Dequantize constant weights once, before the import, so a QDQ model's weights become
    float parameters that can be fine-tuned and exported as a float model.

    Every default-domain ``DequantizeLinear`` node (opset ``opset``) whose inputs are all in
    ``constants`` (initializers and Constant values, by name) is evaluated here. Returns
    ``(kept, folded)``: ``kept`` is ``nodes`` without those nodes (order kept), ``folded`` maps
    each removed node's output name to its float array (float32 unless the scale or
    ``output_dtype`` says float16/float64). The caller adds ``folded`` to its initializers and
    constants, so a following Conv or Gemm sees a constant float weight and becomes a module.
    ``constants`` is not modified. A node with an unsupported element type raises
    OnnxImportError naming it."""
    from ..registry import since_version

    kept, folded = [], {}
    known = dict(constants)
    for node in nodes:
        names = [n for n in node.input if n]
        if (
            node.op_type != "DequantizeLinear"
            or node.domain not in ("", "ai.onnx")
            or not names
            or not all(n in known for n in names)
            or since_version("DequantizeLinear", opset) is None
        ):
            kept.append(node)
            continue
        attributes = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
        inputs = [known[n] if n else None for n in node.input] + [None] * 3
        try:
            array = np.asarray(
                dequantize_linear(
                    *(None if a is None else wrap(a) for a in inputs[:3]),
                    axis=attributes.get("axis", 1),
                    block_size=attributes.get("block_size", 0),
                    output_dtype=attributes.get("output_dtype", 0),
                )._data
            )
        except (OnnxImportError, ShapeError) as error:
            raise OnnxImportError(f"DequantizeLinear node {node.name!r}: {error}") from None
        folded[node.output[0]] = array
        known[node.output[0]] = array
    return kept, folded
