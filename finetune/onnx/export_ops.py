"""One small emitter per primitive ``Function``: the standard ONNX nodes computing the same.

An emitter is registered by decorator under the ``Function`` classes it serves and is called as
``emit(b, call, outs)``: ``b`` is the exporter's graph builder, ``call`` the traced
``(function, args, kwargs, results)``, ``outs`` the names its results must get. A subclass of a
registered function (``Mm`` of ``MatMul``) uses its parent's emitter.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from ..autograd import conv, einsum, nn_ops, ops, resample
from ..autograd.function import NoGradient
from ..errors import OnnxExportError
from ..tensor import Tensor

EMITTERS: dict[type, Callable] = {}

INT64_MAX = np.iinfo(np.int64).max
INT64_MIN = np.iinfo(np.int64).min


def emits(*functions: type) -> Callable:
    """Register the decorated emitter for each of ``functions``; a second registration is a bug."""

    def register(emitter: Callable) -> Callable:
        for function in functions:
            if function in EMITTERS:
                raise ValueError(f"an ONNX emitter for {function.__name__} is already registered")
            EMITTERS[function] = emitter
        return emitter

    return register


def emitter_for(function: type) -> Callable | None:
    """The emitter of ``function`` or of its nearest registered base class."""
    from . import ops as _families  # noqa: F401 - the op families register their emitters too

    for cls in function.__mro__:
        if cls in EMITTERS:
            return EMITTERS[cls]
    return None


def describe(function: type) -> str:
    """``Convolution (ConvolutionBackward0)``: the class and the grad_fn name users see."""
    return f"{function.__name__} ({function._node_class.__name__})"


def cannot_export(call, why: str) -> OnnxExportError:
    return OnnxExportError(f"cannot export {describe(call.function)}: {why}")


def _dtype(call, i: int = 0) -> np.dtype:
    return call.results[i]._data.dtype


def _shape(value) -> tuple:
    if isinstance(value, Tensor):
        return value._data.shape
    return np.shape(value)


def _axis(dim: int, ndim: int) -> int:
    return dim % ndim if ndim else 0


# -- elementwise (the plain unary and binary ops are rows in ops/elementwise.py) ------------------


@emits(ops.Pow)
def _pow(b, call, outs):
    dtype = _dtype(call)
    x = b.operand(call.args[0], dtype)
    exponent = call.args[1] if len(call.args) > 1 else call.kwargs["exponent"]
    b.node("Pow", [x, b.constant(np.asarray(exponent, dtype=dtype))], outs)


@emits(ops.Log1p)
def _log1p(b, call, outs):
    """Log(1 + x): ONNX has no log1p, so tiny ``x`` loses the digits PyTorch keeps."""
    dtype = _dtype(call)
    x = b.operand(call.args[0], dtype)
    b.node("Log", b.node("Add", [x, b.constant(np.asarray(1, dtype=dtype))]), outs)


@emits(ops.MatMul)
def _matmul(b, call, outs):
    dtype = _dtype(call)
    b.node("MatMul", [b.operand(x, dtype) for x in call.args], outs)


@emits(ops.Maximum, ops.Minimum)
def _max_min(b, call, outs):
    op = "Min" if issubclass(call.function, ops.Minimum) else "Max"
    dtype = _dtype(call)
    b.node(op, [b.operand(x, dtype) for x in call.args], outs)


@emits(einsum.Einsum)
def _einsum(b, call, outs):
    """Einsum (opset 12; the exporter writes 13 and later) with the equation made explicit."""
    dtype = _dtype(call)
    inputs, output = einsum.parse(call.kwargs["equation"], [len(_shape(x)) for x in call.args])
    equation = f"{','.join(inputs)}->{output}"
    b.node("Einsum", [b.operand(x, dtype) for x in call.args], outs, equation=equation)


@emits(resample.Resample)
def _resize(b, call, outs):
    """Resize with the attributes the call recorded (PyTorch's coordinates for ``interpolate``,
    the node's own for an imported Resize). Scale factors travel as ``scales`` (the batch stays
    free); a requested size travels as ``sizes``, its batch and channels read from the input's
    shape."""
    (x,) = call.args
    dtype, kwargs = _dtype(call), call.kwargs
    name = b.operand(x, dtype)
    attributes = kwargs["resize"]
    needs = {"antialias": 18, "half_pixel_symmetric": 19}
    for what, since in needs.items():
        used = attributes.get(what) or attributes.get("coordinate_transformation_mode") == what
        if used and b.opset < since:
            raise cannot_export(call, f"Resize with {what} needs opset {since}, not {b.opset}")
    if attributes.get("coordinate_transformation_mode") == "tf_crop_and_resize":
        raise cannot_export(call, "Resize with tf_crop_and_resize (its roi is not kept)")
    if kwargs["scales"] is not None:
        scales = np.asarray(kwargs["scales"], dtype=np.float32)
        b.node("Resize", [name, "", b.constant(scales)], outs, **attributes)
        return
    out_shape = np.asarray(call.results[0].shape, dtype=np.int64)
    if tuple(out_shape[:2]) != tuple(_shape(x)[:2]):  # batch or channels resized: all static
        b.node("Resize", [name, "", "", b.constant(out_shape)], outs, **attributes)
        return
    full, shape = b.fresh("resize_input_shape"), b.fresh("resize_shape")
    b.node("Shape", [name], [full])  # Shape's start/end attributes need opset 15
    bounds = [b.constant(np.asarray([v], dtype=np.int64)) for v in (0, 2)]
    b.node("Slice", [full, *bounds], [shape])
    spatial = b.constant(np.asarray(call.results[0].shape[2:], dtype=np.int64))
    sizes = b.fresh("resize_sizes")
    b.node("Concat", [shape, spatial], [sizes], axis=0)
    b.node("Resize", [name, "", "", sizes], outs, **attributes)


@emits(nn_ops.Embedding)
def _embedding(b, call, outs):
    weight, indices = call.args
    b.node("Gather", [b.name_of(weight), b.name_of(indices)], outs, axis=0)


@emits(ops.Clone, NoGradient)
def _clone(b, call, outs):
    """A copy, and a value marked as having no gradient, are the value itself."""
    b.node("Identity", [b.name_of(call.args[0])], outs)


@emits(ops.Cast)
def _cast(b, call, outs):
    b.node("Cast", [b.name_of(call.args[0])], outs, to=b.onnx_type(_dtype(call)))


def _clip(b, x, lo, hi, dtype, outs):
    bounds = ["" if v is None else b.constant(np.asarray(v, dtype=dtype)) for v in (lo, hi)]
    b.node("Clip", [x, *bounds], outs)


@emits(ops.Clamp)
def _clamp(b, call, outs):
    dtype = _dtype(call)
    x = b.operand(call.args[0], dtype)
    _clip(b, x, call.kwargs.get("min"), call.kwargs.get("max"), dtype, outs)


@emits(nn_ops.Hardtanh)
def _hardtanh(b, call, outs):
    dtype = _dtype(call)
    _clip(b, b.name_of(call.args[0]), call.kwargs["min_val"], call.kwargs["max_val"], dtype, outs)


@emits(nn_ops.Gelu)
def _gelu(b, call, outs):
    """A Gelu node from opset 20; before, the formula in standard nodes (what PyTorch's exporter
    writes too)."""
    dtype, approximate = _dtype(call), call.kwargs["approximate"]
    x = b.operand(call.args[0], dtype)
    if b.opset >= 20:
        b.node("Gelu", [x], outs, approximate=approximate)
        return

    def const(value: float) -> str:
        return b.constant(np.asarray(value, dtype=dtype))

    def node(op: str, *inputs: str) -> str:
        out = b.fresh(f"gelu_{op.lower()}")
        b.node(op, list(inputs), [out])
        return out

    if approximate == "tanh":
        cube = node("Mul", x, node("Mul", x, x))
        inner = node("Add", x, node("Mul", cube, const(0.044715)))
        shape = node("Tanh", node("Mul", inner, const(np.sqrt(2 / np.pi))))
    else:
        shape = node("Erf", node("Mul", x, const(np.sqrt(0.5))))
    half_x = node("Mul", x, const(0.5))
    b.node("Mul", [half_x, node("Add", shape, const(1.0))], outs)


@emits(nn_ops.LeakyRelu)
def _leaky_relu(b, call, outs):
    slope = float(call.kwargs["negative_slope"])
    b.node("LeakyRelu", [b.name_of(call.args[0])], outs, alpha=slope)


@emits(ops.Where)
def _where(b, call, outs):
    dtype = _dtype(call)
    cond = b.operand(call.args[0], np.dtype(bool))
    b.node("Where", [cond, b.operand(call.args[1], dtype), b.operand(call.args[2], dtype)], outs)


@emits(ops.Softmax, ops.LogSoftmax)
def _softmax(b, call, outs):
    op = "Softmax" if issubclass(call.function, ops.Softmax) else "LogSoftmax"
    b.node(op, [b.operand(call.args[0], _dtype(call))], outs, axis=int(call.kwargs["dim"]))


# -- reductions ----------------------------------------------------------------------------------


def _reduce_axes(dim, ndim: int) -> list[int] | None:
    if dim is None:
        return None
    dims = dim if isinstance(dim, (list, tuple)) else (dim,)
    return sorted(_axis(d, ndim) for d in dims)


@emits(ops.Sum)
def _sum(b, call, outs):
    x = b.operand(call.args[0], _dtype(call))
    ndim = len(_shape(call.args[0]))
    axes = _reduce_axes(call.kwargs.get("dim"), ndim)
    b.reduce("ReduceSum", x, axes, bool(call.kwargs.get("keepdim", False)), outs)


@emits(ops.Mean)
def _mean(b, call, outs):
    x = b.name_of(call.args[0])
    ndim = len(_shape(call.args[0]))
    axes = _reduce_axes(call.kwargs.get("dim"), ndim)
    keepdim = bool(call.kwargs.get("keepdim", False))
    if keepdim and ndim >= 3 and axes == list(range(2, ndim)):
        b.node("GlobalAveragePool", [x], outs)
    else:
        b.reduce("ReduceMean", x, axes, keepdim, outs)


@emits(ops.MaxAll)
def _max_all(b, call, outs):
    op = "ReduceMax" if call.kwargs.get("largest", True) else "ReduceMin"
    b.reduce(op, b.name_of(call.args[0]), None, False, outs)


@emits(ops.MaxDim)
def _max_dim(b, call, outs):
    largest = call.kwargs.get("largest", True)
    x = b.name_of(call.args[0])
    axis = _axis(call.kwargs["dim"], len(_shape(call.args[0])))
    keepdim = bool(call.kwargs.get("keepdim", False))
    b.reduce("ReduceMax" if largest else "ReduceMin", x, [axis], keepdim, outs[:1])
    b.node("ArgMax" if largest else "ArgMin", [x], outs[1:], axis=axis, keepdims=int(keepdim))


@emits(ops.Var)
def _var(b, call, outs):
    """Var as ReduceMean, Sub, Mul, ReduceSum and Div by ``n - correction``; Std adds a Sqrt."""
    dtype = _dtype(call)
    x = b.operand(call.args[0], dtype)
    shape = _shape(call.args[0])
    axes = _reduce_axes(call.kwargs.get("dim"), len(shape))
    keepdim = bool(call.kwargs.get("keepdim", False))
    count = int(np.prod([shape[a] for a in axes] if axes is not None else shape))
    denominator = max(count - call.kwargs.get("correction", 1), 0)
    mean = b.reduce("ReduceMean", x, axes, True, None)
    centered = b.node("Sub", [x, mean[0]])
    squares = b.node("Mul", [centered[0], centered[0]])
    total = b.reduce("ReduceSum", squares[0], axes, keepdim, None)
    scale = b.constant(np.asarray(denominator, dtype=dtype))
    if issubclass(call.function, ops.Std):
        b.node("Sqrt", b.node("Div", [total[0], scale]), outs)
    else:
        b.node("Div", [total[0], scale], outs)


@emits(ops.LogSumExp)
def _logsumexp(b, call, outs):
    axes = _reduce_axes(call.kwargs["dim"], len(_shape(call.args[0])))
    keepdim = bool(call.kwargs.get("keepdim", False))
    b.reduce("ReduceLogSumExp", b.name_of(call.args[0]), axes, keepdim, outs)


@emits(ops.Norm)
def _norm(b, call, outs):
    p = call.kwargs.get("p", 2.0)
    x = b.operand(call.args[0], _dtype(call))
    axes = _reduce_axes(call.kwargs.get("dim"), len(_shape(call.args[0])))
    keepdim = bool(call.kwargs.get("keepdim", False))
    if p == 2:
        b.reduce("ReduceL2", x, axes, keepdim, outs)
    elif p == 1:
        b.reduce("ReduceL1", x, axes, keepdim, outs)
    elif p == float("inf"):
        b.reduce("ReduceMax", b.node("Abs", [x])[0], axes, keepdim, outs)
    else:
        raise cannot_export(call, f"only the 1-, 2- and inf-norms have an ONNX form, not p={p}")


@emits(ops.TopK)
def _topk(b, call, outs):
    x = b.name_of(call.args[0])
    axis = _axis(call.kwargs.get("dim", -1), len(_shape(call.args[0])))
    k = b.ints([call.kwargs["k"]])
    largest = int(bool(call.kwargs.get("largest", True)))
    b.node("TopK", [x, k], outs, axis=axis, largest=largest, sorted=1)


# -- shape ---------------------------------------------------------------------------------------


@emits(ops.View)
def _view(b, call, outs):
    x = call.args[0]
    src, dst = _shape(x), call.results[0]._data.shape
    name = b.name_of(x)
    batch = b.batch
    if batch is not None and dst and dst[0] == batch:
        if src and src[0] == batch:
            if len(dst) == 2:
                b.node("Flatten", [name], outs, axis=1)
                return
            target = [0, *dst[1:]]  # 0: copy the (symbolic) batch dimension
        else:
            target = [-1, *dst[1:]]
    else:
        target = list(dst)
    b.node("Reshape", [name, b.ints(target)], outs)


@emits(ops.Permute)
def _permute(b, call, outs):
    ndim = len(_shape(call.args[0]))
    perm = [_axis(d, ndim) for d in call.kwargs["dims"]]
    b.node("Transpose", [b.name_of(call.args[0])], outs, perm=perm)


@emits(ops.Transpose)
def _transpose(b, call, outs):
    ndim = len(_shape(call.args[0]))
    perm = list(range(ndim))
    if ndim:
        i, j = _axis(call.kwargs["dim0"], ndim), _axis(call.kwargs["dim1"], ndim)
        perm[i], perm[j] = perm[j], perm[i]
    b.node("Transpose", [b.name_of(call.args[0])], outs, perm=perm)


@emits(ops.T)
def _t(b, call, outs):
    ndim = len(_shape(call.args[0]))
    b.node("Transpose", [b.name_of(call.args[0])], outs, perm=list(reversed(range(ndim))))


@emits(ops.Expand)
def _expand(b, call, outs):
    src, dst = _shape(call.args[0]), list(call.results[0]._data.shape)
    if b.batch is not None and len(src) == len(dst) and src and src[0] == dst[0] == b.batch:
        dst[0] = 1  # broadcasting keeps the input's own batch
    b.node("Expand", [b.name_of(call.args[0]), b.ints(dst)], outs)


@emits(ops.Squeeze)
def _squeeze(b, call, outs):
    src = _shape(call.args[0])
    dim = call.kwargs.get("dim")
    if dim is None:
        axes = [a for a, n in enumerate(src) if n == 1]
    else:
        dims = dim if isinstance(dim, (list, tuple)) else (dim,)
        axes = sorted({_axis(d, len(src)) for d in dims if src and src[_axis(d, len(src))] == 1})
    if not axes:
        b.node("Identity", [b.name_of(call.args[0])], outs)
    else:
        b.node("Squeeze", [b.name_of(call.args[0]), b.ints(axes)], outs)


@emits(ops.Unsqueeze)
def _unsqueeze(b, call, outs):
    axis = call.kwargs["dim"] % (len(_shape(call.args[0])) + 1)
    b.node("Unsqueeze", [b.name_of(call.args[0]), b.ints([axis])], outs)


@emits(ops.Cat)
def _cat(b, call, outs):
    dtype = _dtype(call)
    b.node("Concat", [b.operand(x, dtype) for x in call.args], outs, axis=call.kwargs.get("dim", 0))


@emits(ops.Stack)
def _stack(b, call, outs):
    dtype, dim = _dtype(call), call.kwargs.get("dim", 0)
    axis = b.ints([dim])
    parts = [b.node("Unsqueeze", [b.operand(x, dtype), axis])[0] for x in call.args]
    b.node("Concat", parts, outs, axis=dim)


@emits(ops.Split)
def _split(b, call, outs):
    axis = _axis(call.kwargs.get("dim", 0), len(_shape(call.args[0])))
    sizes = b.ints(list(call.kwargs["sizes"]))
    b.node("Split", [b.name_of(call.args[0]), sizes], outs, axis=axis)


_PAD_MODES = {
    "constant": "constant",
    "reflect": "reflect",
    "replicate": "edge",
    "edge": "edge",
    "circular": "wrap",
    "wrap": "wrap",
}


@emits(ops.Pad)
def _pad(b, call, outs):
    mode = _PAD_MODES.get(call.kwargs.get("mode", "constant"))
    if mode is None:
        raise cannot_export(call, f"unknown padding mode {call.kwargs.get('mode')!r}")
    if mode == "wrap" and b.opset < 19:
        raise cannot_export(call, "circular padding needs opset_version >= 19 (Pad mode 'wrap')")
    pairs = call.kwargs["pads"]
    pads = b.ints([lo for lo, _ in pairs] + [hi for _, hi in pairs])
    inputs = [b.name_of(call.args[0]), pads]
    if mode == "constant":
        inputs.append(b.constant(np.asarray(call.kwargs.get("value", 0.0), dtype=_dtype(call))))
    b.node("Pad", inputs, outs, mode=mode)


@emits(ops.Gather)
def _gather(b, call, outs):
    x, dim, index = call.args
    axis = _axis(dim, len(_shape(x)))
    index = b.operand(index, np.dtype(np.int64))
    b.node("GatherElements", [b.name_of(x), index], outs, axis=axis)


@emits(ops.Index)
def _index(b, call, outs):
    x = call.args[0]
    index = call.kwargs["index"] if "index" in call.kwargs else call.args[1]
    parts = _expand_ellipsis(index, len(_shape(x)))
    if parts is None:
        raise cannot_export(call, f"index {index!r} is neither basic slicing nor one index array")
    arrays = [i for i, p in enumerate(parts) if isinstance(p, np.ndarray)]
    if arrays:
        _gather_index(b, call, parts, arrays, outs)
    else:
        _slice_index(b, b.name_of(x), parts, outs)


def _expand_ellipsis(index, ndim: int) -> list | None:
    """The index as one entry per input axis (plus ``None`` entries); ``None`` if unsupported."""
    parts = list(index) if isinstance(index, tuple) else [index]
    for i, p in enumerate(parts):
        if isinstance(p, (list, np.ndarray, Tensor)):
            array = np.asarray(p._data if isinstance(p, Tensor) else p)
            if array.dtype.kind not in "iu":
                return None
            parts[i] = array.astype(np.int64)
        elif not (p is None or p is Ellipsis or isinstance(p, (slice, int, np.integer))):
            return None
    ellipses = [i for i, p in enumerate(parts) if p is Ellipsis]
    if len(ellipses) > 1:
        return None
    consuming = sum(p is not None and p is not Ellipsis for p in parts)
    fill = [slice(None)] * (ndim - consuming)
    if ellipses:
        parts[ellipses[0] : ellipses[0] + 1] = fill
    else:
        parts.extend(fill)
    return parts


def _gather_index(b, call, parts, arrays, outs):
    """One integer index array, every other axis whole: numpy's ``take`` is ONNX ``Gather``."""
    others = [p for i, p in enumerate(parts) if i not in arrays]
    whole = all(isinstance(p, slice) and p == slice(None) for p in others)
    if len(arrays) != 1 or not whole:
        raise cannot_export(call, "only one integer index array with whole other axes is supported")
    axis = arrays[0]
    indices = b.constant(parts[axis])
    b.node("Gather", [b.name_of(call.args[0]), indices], outs, axis=axis)


def _slice_index(b, name, parts, outs):
    """Basic indexing: Slice sliced and integer axes, Squeeze the integers, Unsqueeze ``None``."""
    starts, ends, axes, steps, squeeze, unsqueeze = [], [], [], [], [], []
    axis = out_axis = 0
    for p in parts:
        if p is None:
            unsqueeze.append(out_axis)
            out_axis += 1
            continue
        if isinstance(p, slice):
            step = 1 if p.step is None else int(p.step)
            if p != slice(None) and (p.start, p.stop, step) != (None, None, 1):
                low, high = (0, INT64_MAX) if step > 0 else (INT64_MAX, INT64_MIN)
                starts.append(low if p.start is None else int(p.start))
                ends.append(high if p.stop is None else int(p.stop))
                axes.append(axis)
                steps.append(step)
            out_axis += 1
        else:
            i = int(p)
            starts.append(i)
            ends.append(INT64_MAX if i == -1 else i + 1)
            axes.append(axis)
            steps.append(1)
            squeeze.append(axis)
        axis += 1
    stages = []
    if axes:
        stages.append(("Slice", [b.ints(starts), b.ints(ends), b.ints(axes), b.ints(steps)]))
    if squeeze:
        stages.append(("Squeeze", [b.ints(squeeze)]))
    if unsqueeze:
        stages.append(("Unsqueeze", [b.ints(unsqueeze)]))
    stages = stages or [("Identity", [])]
    for k, (op, extra) in enumerate(stages):
        name = b.node(op, [name, *extra], outs if k == len(stages) - 1 else None)[0]


# -- layers, convolution and pooling ------------------------------------------------------------


@emits(nn_ops.Linear)
def _linear(b, call, outs):
    x, weight = call.args[0], call.args[1]
    bias = call.args[2] if len(call.args) > 2 else None
    names = [b.name_of(x), b.name_of(weight)]
    if len(_shape(x)) == 2:
        b.node("Gemm", names + ([b.name_of(bias)] if bias is not None else []), outs, transB=1)
        return
    transposed = b.node("Transpose", [names[1]], perm=[1, 0])[0]
    if bias is None:
        b.node("MatMul", [names[0], transposed], outs)
    else:
        product = b.node("MatMul", [names[0], transposed])[0]
        b.node("Add", [product, b.name_of(bias)], outs)


@emits(nn_ops.BatchNormEval)
def _batch_norm(b, call, outs):
    x, weight, bias, mean, var = call.args
    channels = _shape(x)[1]
    dtype = _dtype(call)
    scale = b.name_of(weight) if weight is not None else b.constant(np.ones(channels, dtype))
    shift = b.name_of(bias) if bias is not None else b.constant(np.zeros(channels, dtype))
    inputs = [b.name_of(x), scale, shift, b.name_of(mean), b.name_of(var)]
    b.node("BatchNormalization", inputs, outs, epsilon=float(call.kwargs["eps"]))


def _pads(pairs) -> list[int]:
    """``((before, after), ...)`` per spatial axis -> ONNX ``[begins..., ends...]``."""
    return [int(lo) for lo, _ in pairs] + [int(hi) for _, hi in pairs]


@emits(conv.Convolution)
def _convolution(b, call, outs):
    x, weight = call.args[0], call.args[1]
    inputs = [b.name_of(x), b.name_of(weight)]
    if len(call.args) > 2 and call.args[2] is not None:
        inputs.append(b.name_of(call.args[2]))
    k = call.kwargs
    b.node(
        "Conv",
        inputs,
        outs,
        kernel_shape=list(_shape(weight)[2:]),
        strides=list(k["stride"]),
        pads=_pads(k["padding"]),
        dilations=list(k["dilation"]),
        group=int(k["groups"]),
    )


@emits(conv.MaxPool)
def _max_pool(b, call, outs):
    k = call.kwargs
    b.node(
        "MaxPool",
        [b.name_of(call.args[0])],
        outs,
        kernel_shape=list(k["kernel_size"]),
        strides=list(k["stride"]),
        pads=_pads(k["padding"]),
        dilations=list(k["dilation"]),
        ceil_mode=int(k["ceil_mode"]),
    )


@emits(conv.AvgPool)
def _avg_pool(b, call, outs):
    k = call.kwargs
    b.node(
        "AveragePool",
        [b.name_of(call.args[0])],
        outs,
        kernel_shape=list(k["kernel_size"]),
        strides=list(k["stride"]),
        pads=_pads(k["padding"]),
        ceil_mode=int(k["ceil_mode"]),
        count_include_pad=int(k["count_include_pad"]),
    )
