"""The primitive ops: each ``Function`` keeps its forward next to its backward.

Every binary op undoes broadcasting with one helper, ``sum_to_shape``. Derived ops are written
from primitives where PyTorch's graph would show the primitive anyway. A backward computes
nothing for inputs whose ``needs_input_grad`` is False.
"""

from __future__ import annotations

import builtins
import functools
import numbers

import numpy as np

from .. import memory_format as memory_formats
from ..errors import ShapeError
from ..parallel import elementwise
from . import special
from .function import Function


def sum_to_shape(grad: np.ndarray, shape: tuple) -> np.ndarray:
    """Undo broadcasting: sum ``grad`` over the axes that broadcasting added or stretched."""
    if grad.shape == shape:
        return grad
    lead = grad.ndim - len(shape)
    axes = tuple(range(lead)) + tuple(
        lead + i for i, s in enumerate(shape) if s == 1 and grad.shape[lead + i] != 1
    )
    if axes:
        grad = grad.sum(axis=axes, keepdims=True)
    return grad.reshape(shape)


# -- dtype promotion (PyTorch's rules: python scalars and 0-d tensors don't widen) ----------------

_KIND_RANK = {"b": 0, "u": 1, "i": 1, "f": 2, "c": 3}


def _kind_rank(value) -> int:
    if isinstance(value, np.ndarray):
        return _KIND_RANK[value.dtype.kind]
    if isinstance(value, bool):
        return 0
    if isinstance(value, numbers.Integral):
        return 1
    return 2


def result_dtype(a, b) -> np.dtype:
    """The dtype PyTorch gives ``a op b`` (arrays or Python scalars)."""
    a_arr, b_arr = isinstance(a, np.ndarray), isinstance(b, np.ndarray)
    if a_arr and b_arr:
        if a.dtype == b.dtype:
            return a.dtype
        ra, rb = _kind_rank(a), _kind_rank(b)
        if ra == rb and (a.ndim == 0) != (b.ndim == 0):
            return b.dtype if a.ndim == 0 else a.dtype
        if ra != rb:
            hi, lo = (a, b) if ra > rb else (b, a)
            if hi.ndim == 0 and lo.ndim > 0:
                return _default_for(_kind_rank(hi))
            return hi.dtype
        return np.promote_types(a.dtype, b.dtype)
    if not (a_arr or b_arr):  # torch.where(cond, 1.0, 0.0)
        return _default_for(builtins.max(_kind_rank(a), _kind_rank(b)))
    arr, scalar = (a, b) if a_arr else (b, a)
    if _kind_rank(scalar) > _kind_rank(arr):
        return _default_for(_kind_rank(scalar))
    return arr.dtype


def _default_for(rank: int) -> np.dtype:
    return np.dtype([np.bool_, np.int64, np.float32, np.complex64][rank])


def _as_array(value, dtype) -> np.ndarray:
    if isinstance(value, np.ndarray):
        return value if value.dtype == dtype else value.astype(dtype)
    return np.asarray(value, dtype=dtype)


def _binary_operands(a, b):
    dtype = result_dtype(a, b)
    return _as_array(a, dtype), _as_array(b, dtype)


def _float_operands(a, b):
    dtype = result_dtype(a, b)
    if dtype.kind not in "fc":
        dtype = np.dtype(np.float32)
    return _as_array(a, dtype), _as_array(b, dtype)


def _shape(x) -> tuple:
    return x.shape if isinstance(x, np.ndarray) else ()


def broadcast_error(*shapes: tuple) -> ShapeError:
    """PyTorch's message for operand shapes that do not broadcast, with the shapes appended."""
    a_shape, b_shape = shapes[-2:]
    for i in range(1, min(len(a_shape), len(b_shape)) + 1):
        sa, sb = a_shape[-i], b_shape[-i]
        if sa != sb and 1 not in (sa, sb):
            dim = max(len(a_shape), len(b_shape)) - i
            return ShapeError(
                f"The size of tensor a ({sa}) must match the size of tensor b ({sb}) at "
                f"non-singleton dimension {dim} (shapes {list(a_shape)} and {list(b_shape)})"
            )
    listed = " and ".join(str(list(shape)) for shape in shapes)
    return ShapeError(f"shapes {listed} cannot be broadcast together")


def _broadcasting(forward):
    """Turn numpy's broadcasting ValueError in a binary op's forward into a ShapeError naming
    both shapes. Only the failure pays: the success path adds a ``try``."""

    @functools.wraps(forward)
    def checked(ctx, *operands, **options):
        try:
            return forward(ctx, *operands, **options)
        except ValueError as error:
            if "broadcast" not in str(error):
                raise
            raise broadcast_error(*(_shape(x) for x in operands)) from None

    return checked


# -- elementwise binary ----------------------------------------------------------------------


class Add(Function):
    @staticmethod
    @_broadcasting
    def forward(ctx, a, b):
        ctx.shapes = (_shape(a), _shape(b))
        a, b = _binary_operands(a, b)
        return np.add(a, b)

    @staticmethod
    def backward(ctx, grad):
        sa, sb = ctx.shapes
        return (
            sum_to_shape(grad, sa) if ctx.needs_input_grad[0] else None,
            sum_to_shape(grad, sb) if ctx.needs_input_grad[1] else None,
        )


class Sub(Function):
    @staticmethod
    @_broadcasting
    def forward(ctx, a, b):
        ctx.shapes = (_shape(a), _shape(b))
        a, b = _binary_operands(a, b)
        return np.subtract(a, b)

    @staticmethod
    def backward(ctx, grad):
        sa, sb = ctx.shapes
        return (
            sum_to_shape(grad, sa) if ctx.needs_input_grad[0] else None,
            sum_to_shape(-grad, sb) if ctx.needs_input_grad[1] else None,
        )


class Mul(Function):
    @staticmethod
    @_broadcasting
    def forward(ctx, a, b):
        ctx.shapes = (_shape(a), _shape(b))
        a, b = _binary_operands(a, b)
        ctx.save_for_backward(
            a if ctx.needs_input_grad[1] else None, b if ctx.needs_input_grad[0] else None
        )
        return np.multiply(a, b)

    @staticmethod
    def backward(ctx, grad):
        a, b = ctx.saved_tensors
        sa, sb = ctx.shapes
        return (
            sum_to_shape(grad * b, sa) if ctx.needs_input_grad[0] else None,
            sum_to_shape(grad * a, sb) if ctx.needs_input_grad[1] else None,
        )


class Div(Function):
    @staticmethod
    @_broadcasting
    def forward(ctx, a, b):
        ctx.shapes = (_shape(a), _shape(b))
        a, b = _float_operands(a, b)
        ctx.save_for_backward(a if ctx.needs_input_grad[1] else None, b)
        return np.true_divide(a, b)

    @staticmethod
    def backward(ctx, grad):
        a, b = ctx.saved_tensors
        sa, sb = ctx.shapes
        ga = sum_to_shape(grad / b, sa) if ctx.needs_input_grad[0] else None
        gb = sum_to_shape(-grad * a / (b * b), sb) if ctx.needs_input_grad[1] else None
        return ga, gb


class Pow(Function):
    """``x ** c`` with a constant exponent."""

    @staticmethod
    def forward(ctx, x, exponent):
        x = _as_array(x, result_dtype(x, exponent))
        ctx.save_for_backward(x)
        ctx.exponent = exponent
        return np.power(x, x.dtype.type(exponent))

    @staticmethod
    def backward(ctx, grad):
        (x,) = ctx.saved_tensors
        c = ctx.exponent
        if c == 0:
            return np.zeros_like(x), None
        return grad * (c * np.power(x, x.dtype.type(c - 1))), None


class PowTensor(Function):
    """``a ** b`` with a tensor exponent."""

    name = "PowBackward1"

    @staticmethod
    @_broadcasting
    def forward(ctx, a, b):
        ctx.shapes = (_shape(a), _shape(b))
        a, b = _float_operands(a, b)
        out = np.power(a, b)
        ctx.save_for_backward(a, b, out)
        return out

    @staticmethod
    def backward(ctx, grad):
        a, b, out = ctx.saved_tensors
        sa, sb = ctx.shapes
        ga = gb = None
        if ctx.needs_input_grad[0]:
            ga = sum_to_shape(grad * b * np.power(a, b - 1), sa)
        if ctx.needs_input_grad[1]:
            log_a = np.where(a > 0, np.log(np.where(a > 0, a, 1)), 0).astype(out.dtype)
            gb = sum_to_shape(grad * out * log_a, sb)
        return ga, gb


class MatMul(Function):
    """``a @ b`` for any ranks, with numpy's batching and 1-D promotion rules."""

    name = "MatmulBackward0"

    @staticmethod
    def forward(ctx, a, b):
        a, b = _binary_operands(a, b)
        if a.ndim == 0 or b.ndim == 0:
            raise ShapeError("both arguments to matmul need to be at least 1D")
        ka = a.shape[-1]
        kb = b.shape[0] if b.ndim == 1 else b.shape[-2]
        if ka != kb:
            raise ShapeError(
                f"mat1 and mat2 shapes cannot be multiplied ({_mat_desc(a)} and {_mat_desc(b)})"
            )
        ctx.save_for_backward(
            a if ctx.needs_input_grad[1] else None, b if ctx.needs_input_grad[0] else None
        )
        ctx.shapes = (a.shape, b.shape)
        return np.matmul(a, b)

    @staticmethod
    def backward(ctx, grad):
        a, b = ctx.saved_tensors
        sa, sb = ctx.shapes
        a_vec, b_vec = len(sa) == 1, len(sb) == 1
        if a_vec and b_vec:
            return (
                grad * b if ctx.needs_input_grad[0] else None,
                grad * a if ctx.needs_input_grad[1] else None,
            )
        g = grad
        if a_vec:
            g = np.expand_dims(g, -2)
        if b_vec:
            g = np.expand_dims(g, -1)
        ga = gb = None
        if ctx.needs_input_grad[0]:
            b2 = b[:, None] if b_vec else b
            ga = np.matmul(g, np.swapaxes(b2, -1, -2))
            ga = sum_to_shape(ga[..., 0, :] if a_vec else ga, sa)
        if ctx.needs_input_grad[1]:
            a2 = a[None, :] if a_vec else a
            gb = np.matmul(np.swapaxes(a2, -1, -2), g)
            gb = sum_to_shape(gb[..., 0] if b_vec else gb, sb)
        return ga, gb


class Mm(MatMul):
    name = "MmBackward0"


class Mv(MatMul):
    name = "MvBackward0"


class Dot(MatMul):
    name = "DotBackward0"


def _mat_desc(x: np.ndarray) -> str:
    if x.ndim == 1:
        return f"1x{x.shape[0]}"
    return "x".join(str(s) for s in (int(np.prod(x.shape[:-1])), x.shape[-1]))


# -- elementwise unary -------------------------------------------------------------------------


_TWO_OVER_SQRT_PI = float(2.0 / np.sqrt(np.pi))  # a Python float: float32 stays float32


def _floating(x: np.ndarray) -> np.ndarray:
    return x if x.dtype.kind in "fc" else x.astype(np.float32)


class Neg(Function):
    @staticmethod
    def forward(ctx, x):
        return np.negative(x)

    @staticmethod
    def backward(ctx, grad):
        return -grad


class Exp(Function):
    @staticmethod
    def forward(ctx, x):
        out = np.exp(_floating(x))
        ctx.save_for_backward(out)
        return out

    @staticmethod
    def backward(ctx, grad):
        (out,) = ctx.saved_tensors
        return grad * out


class Log1p(Function):
    """``log(1 + x)``, exact for tiny ``x``."""

    @staticmethod
    def forward(ctx, x):
        x = _floating(x)
        ctx.save_for_backward(x)
        return np.log1p(x)

    @staticmethod
    def backward(ctx, grad):
        (x,) = ctx.saved_tensors
        return grad / (1 + x)


class Log(Function):
    @staticmethod
    def forward(ctx, x):
        x = _floating(x)
        ctx.save_for_backward(x)
        return np.log(x)

    @staticmethod
    def backward(ctx, grad):
        (x,) = ctx.saved_tensors
        return grad / x


class Sqrt(Function):
    @staticmethod
    def forward(ctx, x):
        out = np.sqrt(_floating(x))
        ctx.save_for_backward(out)
        return out

    @staticmethod
    def backward(ctx, grad):
        (out,) = ctx.saved_tensors
        return grad / (2 * out)


class Abs(Function):
    @staticmethod
    def forward(ctx, x):
        ctx.save_for_backward(x)
        return np.abs(x)

    @staticmethod
    def backward(ctx, grad):
        (x,) = ctx.saved_tensors
        return grad * np.sign(x)


class Sin(Function):
    @staticmethod
    def forward(ctx, x):
        x = _floating(x)
        ctx.save_for_backward(x)
        return np.sin(x)

    @staticmethod
    def backward(ctx, grad):
        (x,) = ctx.saved_tensors
        return grad * np.cos(x)


class Cos(Function):
    @staticmethod
    def forward(ctx, x):
        x = _floating(x)
        ctx.save_for_backward(x)
        return np.cos(x)

    @staticmethod
    def backward(ctx, grad):
        (x,) = ctx.saved_tensors
        return -grad * np.sin(x)


class Relu(Function):
    @staticmethod
    def forward(ctx, x):
        out = np.empty_like(x)  # in x's layout (channels last stays channels last)
        elementwise(lambda o, a: np.maximum(a, 0, out=o), out, x)
        ctx.save_for_backward(out)
        return out

    @staticmethod
    def backward(ctx, grad):
        (out,) = ctx.saved_tensors
        gx = np.empty_like(grad)
        elementwise(lambda gx_, g, o: np.multiply(g, o > 0, out=gx_), gx, grad, out)
        return gx


class Erf(Function):
    @staticmethod
    def forward(ctx, x):
        x = _floating(x)
        ctx.save_for_backward(x)
        return special.erf(x)

    @staticmethod
    def backward(ctx, grad):
        (x,) = ctx.saved_tensors
        return grad * (_TWO_OVER_SQRT_PI * np.exp(-x * x))


class Sigmoid(Function):
    @staticmethod
    def forward(ctx, x):
        x = _floating(x)
        out = np.empty_like(x)
        pos = x >= 0
        out[pos] = 1 / (1 + np.exp(-x[pos]))
        e = np.exp(x[~pos])
        out[~pos] = e / (1 + e)
        ctx.save_for_backward(out)
        return out

    @staticmethod
    def backward(ctx, grad):
        (out,) = ctx.saved_tensors
        return grad * out * (1 - out)


class Tanh(Function):
    @staticmethod
    def forward(ctx, x):
        out = np.tanh(_floating(x))
        ctx.save_for_backward(out)
        return out

    @staticmethod
    def backward(ctx, grad):
        (out,) = ctx.saved_tensors
        return grad * (1 - out * out)


class Clamp(Function):
    name = "ClampBackward1"

    @staticmethod
    def forward(ctx, x, min=None, max=None):  # noqa: A002
        ctx.save_for_backward(x)
        ctx.bounds = (min, max)
        out = x
        if min is not None:
            out = np.maximum(out, np.asarray(min, dtype=x.dtype))
        if max is not None:
            out = np.minimum(out, np.asarray(max, dtype=x.dtype))
        return out if out is not x else x.copy()

    @staticmethod
    def backward(ctx, grad):
        (x,) = ctx.saved_tensors
        lo, hi = ctx.bounds
        mask = np.ones(x.shape, dtype=bool)
        if lo is not None:
            mask &= x >= lo
        if hi is not None:
            mask &= x <= hi
        return grad * mask


class Cast(Function):
    name = "ToCopyBackward0"

    @staticmethod
    def forward(ctx, x, dtype):
        ctx.src = x.dtype
        return x.astype(dtype)

    @staticmethod
    def backward(ctx, grad):
        return grad.astype(ctx.src)


class Clone(Function):
    """A copy in ``memory_format`` (default: the input's own layout, as PyTorch's
    ``preserve_format``)."""

    @staticmethod
    def forward(ctx, x, *, memory_format=memory_formats.preserve_format):
        return memory_formats.copy_into(x, memory_format)

    @staticmethod
    def backward(ctx, grad):
        return grad


class Maximum(Function):
    """The larger of two values; NaN wins, and a tie splits the gradient in half, as in
    PyTorch."""

    pick = staticmethod(np.maximum)
    loses = staticmethod(np.less)

    @classmethod
    def forward(cls, ctx, a, b):
        return _pick(ctx, a, b, pick=cls.pick)

    @classmethod
    def backward(cls, ctx, grad):
        a, b = ctx.saved_tensors
        sa, sb = ctx.shapes
        zero = grad.dtype.type(0)
        share = np.where(a == b, grad * grad.dtype.type(0.5), grad)
        ga = np.where(cls.loses(a, b), zero, share) if ctx.needs_input_grad[0] else None
        gb = np.where(cls.loses(b, a), zero, share) if ctx.needs_input_grad[1] else None
        return (
            None if ga is None else sum_to_shape(ga, sa),
            None if gb is None else sum_to_shape(gb, sb),
        )


class Minimum(Maximum):
    pick = staticmethod(np.minimum)
    loses = staticmethod(np.greater)


@_broadcasting
def _pick(ctx, a, b, *, pick):
    ctx.shapes = (_shape(a), _shape(b))
    a, b = _binary_operands(a, b)
    ctx.save_for_backward(a, b)
    return pick(a, b)


class Where(Function):
    name = "WhereBackward0"

    @staticmethod
    @_broadcasting
    def forward(ctx, cond, a, b):
        ctx.shapes = (_shape(a), _shape(b))
        ctx.save_for_backward(cond)
        a, b = _binary_operands(a, b)
        return np.where(cond, a, b)

    @staticmethod
    def backward(ctx, grad):
        (cond,) = ctx.saved_tensors
        sa, sb = ctx.shapes
        zero = grad.dtype.type(0)
        ga = sum_to_shape(np.where(cond, grad, zero), sa) if ctx.needs_input_grad[1] else None
        gb = sum_to_shape(np.where(cond, zero, grad), sb) if ctx.needs_input_grad[2] else None
        return None, ga, gb


# -- reductions ---------------------------------------------------------------------------------


def _axes(dim, ndim: int):
    if dim is None:
        return None
    if isinstance(dim, (list, tuple)):
        return tuple(d % ndim if ndim else 0 for d in dim)
    return (dim % ndim,) if ndim else (0,)


class Cumsum(Function):
    """Running sum along ``dim``; its gradient is the reversed running sum of the gradient."""

    @staticmethod
    def forward(ctx, x, dim):
        ctx.axis = dim % x.ndim if x.ndim else 0
        out = np.cumsum(x, axis=ctx.axis) if x.ndim else x.copy()
        return out.astype(np.int64) if x.dtype.kind in "biu" else out

    @staticmethod
    def backward(ctx, grad):
        if not grad.ndim:
            return grad
        flipped = np.flip(grad, ctx.axis)
        return np.flip(np.cumsum(flipped, axis=ctx.axis), ctx.axis)


def _expand_back(grad: np.ndarray, shape: tuple, axes, keepdim: bool) -> np.ndarray:
    """Broadcast a reduced gradient back to the input's shape."""
    if axes is None:
        return np.broadcast_to(grad.reshape((1,) * len(shape)), shape)
    if not keepdim:
        grad = np.expand_dims(grad, axes)
    return np.broadcast_to(grad, shape)


class Sum(Function):
    @staticmethod
    def forward(ctx, x, dim=None, keepdim=False):
        ctx.shape = x.shape
        ctx.axes = _axes(dim, x.ndim)
        ctx.keepdim = keepdim
        if x.dtype.kind in "bui":
            x = x.astype(np.int64)
        return np.asarray(np.sum(x, axis=ctx.axes if x.ndim else None, keepdims=keepdim))

    @staticmethod
    def backward(ctx, grad):
        return _expand_back(grad, ctx.shape, ctx.axes, ctx.keepdim)


class SumDim(Sum):
    name = "SumBackward1"


_TORCH_DTYPE_NAMES = {
    "int64": "Long",
    "int32": "Int",
    "int16": "Short",
    "int8": "Char",
    "uint8": "Byte",
    "bool": "Bool",
}


class Mean(Function):
    @staticmethod
    def forward(ctx, x, dim=None, keepdim=False):
        if x.dtype.kind not in "fc":
            raise ShapeError(  # PyTorch raises RuntimeError; ShapeError is one (and a ValueError)
                f"mean(): could not infer output dtype. Input dtype must be either a floating "
                f"point or complex dtype. Got: {_TORCH_DTYPE_NAMES.get(x.dtype.name, x.dtype.name)}"
            )
        ctx.shape = x.shape
        ctx.axes = _axes(dim, x.ndim)
        ctx.keepdim = keepdim
        count = x.size if ctx.axes is None else int(np.prod([x.shape[a] for a in ctx.axes]))
        ctx.count = count
        return np.asarray(
            np.mean(x, axis=ctx.axes if x.ndim else None, keepdims=keepdim), dtype=x.dtype
        )

    @staticmethod
    def backward(ctx, grad):
        return _expand_back(grad / grad.dtype.type(ctx.count), ctx.shape, ctx.axes, ctx.keepdim)


class MeanDim(Mean):
    name = "MeanBackward1"


class MaxAll(Function):
    """``max()`` / ``min()`` of everything: the gradient is shared evenly among ties."""

    name = "MaxBackward1"

    @staticmethod
    def forward(ctx, x, largest=True):
        if x.size == 0:
            raise ShapeError("max(): Expected reduction dim to be specified for input.numel() == 0")
        out = np.asarray(x.max() if largest else x.min())
        ctx.save_for_backward(x, out)
        return out

    @staticmethod
    def backward(ctx, grad):
        x, out = ctx.saved_tensors
        mask = x == out
        return mask * (grad / mask.sum()).astype(x.dtype)


class MinAll(MaxAll):
    name = "MinBackward1"


class MaxDim(Function):
    """``max(dim)`` / ``min(dim)``: values and indices; the gradient goes to the index."""

    name = "MaxBackward0"

    @staticmethod
    def forward(ctx, x, dim, keepdim=False, largest=True):
        axis = dim % x.ndim if x.ndim else 0
        fn = np.argmax if largest else np.argmin
        idx = np.expand_dims(fn(x, axis=axis), axis) if x.ndim else np.asarray(0)
        values = np.take_along_axis(x, idx, axis) if x.ndim else x.copy()
        ctx.save_for_backward(idx)
        ctx.axis, ctx.shape, ctx.keepdim = axis, x.shape, keepdim
        if not keepdim and x.ndim:
            values, idx = values.squeeze(axis), idx.squeeze(axis)
        return values, idx.astype(np.int64)

    @staticmethod
    def backward(ctx, grad, _grad_idx):
        (idx,) = ctx.saved_tensors
        if not ctx.shape:
            return grad
        if not ctx.keepdim:
            grad = np.expand_dims(grad, ctx.axis)
        out = np.zeros(ctx.shape, dtype=grad.dtype)
        np.put_along_axis(out, idx, grad, ctx.axis)
        return out


class MinDim(MaxDim):
    name = "MinBackward0"


class Var(Function):
    @staticmethod
    def forward(ctx, x, dim=None, correction=1, keepdim=False):
        axes = _axes(dim, x.ndim)
        n = x.size if axes is None else int(np.prod([x.shape[a] for a in axes]))
        mean = np.mean(x, axis=axes, keepdims=True)
        centered = x - mean
        ctx.save_for_backward(centered)
        ctx.axes, ctx.keepdim, ctx.denom = axes, keepdim, builtins.max(n - correction, 0)
        out = np.sum(centered * centered, axis=axes, keepdims=keepdim) / x.dtype.type(ctx.denom)
        return np.asarray(out, dtype=x.dtype)

    @staticmethod
    def backward(ctx, grad):
        (centered,) = ctx.saved_tensors
        g = _expand_back(grad, centered.shape, ctx.axes, ctx.keepdim)
        return g * centered * centered.dtype.type(2.0 / ctx.denom)


class Std(Var):
    """The square root of ``Var``, recorded as one node as PyTorch does (``StdBackward0``)."""

    @staticmethod
    def forward(ctx, x, dim=None, correction=1, keepdim=False):
        out = np.sqrt(Var.forward(ctx, x, dim, correction, keepdim))
        ctx.out = out
        return out

    @staticmethod
    def backward(ctx, grad):
        return Var.backward(ctx, grad / (2 * ctx.out))


class Norm(Function):
    """The vector p-norm over all elements or the given dims (``LinalgVectorNormBackward0``)."""

    name = "LinalgVectorNormBackward0"

    @staticmethod
    def forward(ctx, x, p=2.0, dim=None, keepdim=False):
        x = _floating(x)
        axes = _axes(dim, x.ndim)
        if p == 2:
            out = np.sqrt(np.sum(x * x, axis=axes, keepdims=keepdim))
        elif p == float("inf"):
            out = np.max(np.abs(x), axis=axes, keepdims=keepdim)
        elif p == 1:
            out = np.sum(np.abs(x), axis=axes, keepdims=keepdim)
        else:
            out = np.sum(np.abs(x) ** p, axis=axes, keepdims=keepdim) ** (1.0 / p)
        out = np.asarray(out, dtype=x.dtype)
        ctx.save_for_backward(x, out)
        ctx.p, ctx.axes, ctx.keepdim = p, axes, keepdim
        return out

    @staticmethod
    def backward(ctx, grad):
        x, out = ctx.saved_tensors
        p, axes, keepdim = ctx.p, ctx.axes, ctx.keepdim
        g = _expand_back(grad, x.shape, axes, keepdim)
        n = _expand_back(out, x.shape, axes, keepdim)
        if p == 2:
            local = np.where(n == 0, 0, x / n)
        elif p == 1:
            local = np.sign(x)
        elif p == float("inf"):
            mask = np.abs(x) == n
            count = _expand_back(np.sum(mask, axis=axes, keepdims=keepdim), x.shape, axes, keepdim)
            local = np.sign(x) * mask / count
        else:
            local = np.where(n == 0, 0, np.sign(x) * np.abs(x) ** (p - 1) / n ** (p - 1))
        return (g * local).astype(x.dtype)


class Prod(Function):
    """Product over all elements or one dim; the gradient is the product of the *other* elements,
    computed with exclusive cumulative products so zeros in the input are handled exactly."""

    @staticmethod
    def forward(ctx, x, dim=None, keepdim=False):
        ctx.save_for_backward(x)
        ctx.dim, ctx.keepdim = dim, keepdim
        return np.asarray(np.prod(x, axis=dim, keepdims=keepdim))

    @staticmethod
    def backward(ctx, grad):
        (x,) = ctx.saved_tensors
        axis = -1 if ctx.dim is None else ctx.dim
        moved = x.reshape(-1) if ctx.dim is None else np.moveaxis(x, axis, -1)
        ones = np.ones(moved.shape[:-1] + (1,), dtype=x.dtype)
        before = np.cumprod(np.concatenate([ones, moved[..., :-1]], axis=-1), axis=-1)
        after = np.cumprod(np.concatenate([ones, moved[..., :0:-1]], axis=-1), axis=-1)[..., ::-1]
        others = before * after
        others = others.reshape(x.shape) if ctx.dim is None else np.moveaxis(others, -1, axis)
        axes = None if ctx.dim is None else (ctx.dim % x.ndim,)
        return _expand_back(grad, x.shape, axes, ctx.keepdim) * others


class ProdDim(Prod):
    name = "ProdBackward1"


class LogSumExp(Function):
    @staticmethod
    def forward(ctx, x, dim, keepdim=False):
        axes = _axes(dim, x.ndim)
        m = np.max(x, axis=axes, keepdims=True)
        m = np.where(np.isfinite(m), m, 0)
        out = np.log(np.sum(np.exp(x - m), axis=axes, keepdims=True)) + m
        ctx.save_for_backward(x, out)
        ctx.axes = axes
        ctx.keepdim = keepdim
        return out if keepdim else np.squeeze(out, axis=axes)

    @staticmethod
    def backward(ctx, grad):
        x, out = ctx.saved_tensors
        if not ctx.keepdim:
            grad = np.expand_dims(grad, ctx.axes)
        return grad * np.exp(x - out)


# -- softmax ------------------------------------------------------------------------------------


class Softmax(Function):
    @staticmethod
    def forward(ctx, x, dim):
        x = _floating(x)
        e = np.exp(x - np.max(x, axis=dim, keepdims=True))
        out = e / np.sum(e, axis=dim, keepdims=True)
        ctx.save_for_backward(out)
        ctx.dim = dim
        return out

    @staticmethod
    def backward(ctx, grad):
        (out,) = ctx.saved_tensors
        gy = grad * out
        return gy - out * np.sum(gy, axis=ctx.dim, keepdims=True)


class LogSoftmax(Function):
    @staticmethod
    def forward(ctx, x, dim):
        x = _floating(x)
        shifted = x - np.max(x, axis=dim, keepdims=True)
        out = shifted - np.log(np.sum(np.exp(shifted), axis=dim, keepdims=True))
        ctx.save_for_backward(out)
        ctx.dim = dim
        return out

    @staticmethod
    def backward(ctx, grad):
        (out,) = ctx.saved_tensors
        return grad - np.exp(out) * np.sum(grad, axis=ctx.dim, keepdims=True)


# -- shape ----------------------------------------------------------------------------------------


class View(Function):
    @staticmethod
    def forward(ctx, x, shape):
        ctx.shape = x.shape
        try:
            return x.reshape(shape)
        except ValueError:
            raise ShapeError(
                f"shape '{list(shape)}' is invalid for input of size {x.size} "
                f"(input shape {list(x.shape)})"
            ) from None

    @staticmethod
    def backward(ctx, grad):
        return grad.reshape(ctx.shape)


class Permute(Function):
    @staticmethod
    def forward(ctx, x, dims):
        if sorted(d % builtins.max(x.ndim, 1) for d in dims) != list(range(x.ndim)):
            raise ShapeError(
                f"permute(): number of dims don't match or repeat: input has {x.ndim} dims, "
                f"got {list(dims)}"
            )
        ctx.dims = tuple(d % x.ndim for d in dims)
        return np.transpose(x, ctx.dims)

    @staticmethod
    def backward(ctx, grad):
        return np.transpose(grad, np.argsort(ctx.dims))


class Transpose(Function):
    @staticmethod
    def forward(ctx, x, dim0, dim1):
        ctx.dims = (dim0, dim1)
        return np.swapaxes(x, dim0, dim1) if x.ndim else x

    @staticmethod
    def backward(ctx, grad):
        return np.swapaxes(grad, *ctx.dims) if grad.ndim else grad


class T(Function):
    @staticmethod
    def forward(ctx, x):
        if x.ndim > 2:
            raise ShapeError(f"t() expects a tensor with <= 2 dimensions, but self is {x.ndim}D")
        return x.T

    @staticmethod
    def backward(ctx, grad):
        return grad.T


class Expand(Function):
    @staticmethod
    def forward(ctx, x, shape):
        lead = len(shape) - x.ndim
        if lead < 0:
            raise ShapeError(
                f"expand: the number of sizes provided ({len(shape)}) must be greater or equal "
                f"to the number of dimensions in the tensor ({x.ndim})"
            )
        target = tuple(x.shape[i - lead] if s == -1 else s for i, s in enumerate(shape))
        ctx.shape = x.shape
        try:
            return np.broadcast_to(x, target)
        except ValueError:
            raise ShapeError(
                f"The expanded size of the tensor ({list(target)}) must match the existing size "
                f"({list(x.shape)}) at non-singleton dimensions"
            ) from None

    @staticmethod
    def backward(ctx, grad):
        return sum_to_shape(grad, ctx.shape)


class Squeeze(Function):
    @staticmethod
    def forward(ctx, x, dim=None):
        ctx.shape = x.shape
        if dim is None:
            return np.squeeze(x)
        axes = tuple(d % x.ndim for d in (dim if isinstance(dim, (tuple, list)) else (dim,)))
        axes = tuple(a for a in axes if x.shape[a] == 1)
        return np.squeeze(x, axis=axes) if axes else x.view()

    @staticmethod
    def backward(ctx, grad):
        return grad.reshape(ctx.shape)


class SqueezeDim(Squeeze):
    name = "SqueezeBackward1"


class Unsqueeze(Function):
    @staticmethod
    def forward(ctx, x, dim):
        ctx.shape = x.shape
        return np.expand_dims(x, dim % (x.ndim + 1))

    @staticmethod
    def backward(ctx, grad):
        return grad.reshape(ctx.shape)


class Index(Function):
    """``x[index]``; named Select/Slice/Index as PyTorch names the same operation."""

    @staticmethod
    def forward(ctx, x, index):
        ctx.shape, ctx.index = x.shape, index
        ctx.advanced = _is_advanced(index)
        try:
            out = x[index]
        except IndexError as e:
            raise IndexError(f"{e} (indexing a tensor of shape {list(x.shape)})") from None
        return np.asarray(out) if not isinstance(out, np.ndarray) else out

    @staticmethod
    def backward(ctx, grad):
        out = np.zeros(ctx.shape, dtype=grad.dtype)
        if ctx.advanced:
            np.add.at(out, ctx.index, grad)
        else:
            out[ctx.index] = grad
        return out


class Select(Index):
    name = "SelectBackward0"


class Slice(Index):
    name = "SliceBackward0"


class IndexUnsqueeze(Index):
    """Basic indexing whose last non-trivial step inserts an axis (``x[..., None]``)."""

    name = "UnsqueezeBackward0"


def _is_advanced(index) -> bool:
    parts = index if isinstance(index, tuple) else (index,)
    return any(isinstance(p, (list, np.ndarray)) and np.asarray(p).dtype.kind != "b" for p in parts)


class IndexPut(Function):
    """``x[index] = value`` out of place (what an in-place assignment records)."""

    @staticmethod
    def forward(ctx, x, index, value):
        ctx.index = index
        ctx.value_shape = _shape(value)
        out = x.copy()
        out[index] = value
        return out

    @staticmethod
    def backward(ctx, grad):
        gx = gv = None
        if ctx.needs_input_grad[0]:
            gx = grad.copy()
            gx[ctx.index] = 0
        if ctx.needs_input_grad[2]:
            gv = sum_to_shape(np.asarray(grad[ctx.index]), ctx.value_shape)
        return gx, None, gv


class Cat(Function):
    @staticmethod
    def forward(ctx, *xs, dim=0):
        ctx.sizes = [x.shape[dim] for x in xs]
        ctx.dim = dim
        try:
            return np.concatenate(xs, axis=dim)
        except ValueError:
            raise ShapeError(
                f"cat(): tensors must have the same shape except in dimension {dim}; got "
                f"{[list(x.shape) for x in xs]}"
            ) from None

    @staticmethod
    def backward(ctx, grad):
        splits = np.cumsum(ctx.sizes)[:-1]
        return tuple(np.split(grad, splits, axis=ctx.dim))


class Stack(Function):
    @staticmethod
    def forward(ctx, *xs, dim=0):
        ctx.dim = dim
        try:
            return np.stack(xs, axis=dim)
        except ValueError:
            raise ShapeError(
                f"stack expects each tensor to be equal size, but got {[list(x.shape) for x in xs]}"
            ) from None

    @staticmethod
    def backward(ctx, grad):
        return tuple(np.moveaxis(grad, ctx.dim, 0))


class Split(Function):
    name = "SplitWithSizesBackward0"

    @staticmethod
    def forward(ctx, x, sizes, dim=0):
        ctx.dim, ctx.shape = dim, x.shape
        bounds = np.cumsum(sizes)[:-1]
        return tuple(np.split(x, bounds, axis=dim))

    @staticmethod
    def backward(ctx, *grads):
        return np.concatenate(grads, axis=ctx.dim)


class SplitEqual(Split):
    """``split(x, int)`` and ``chunk``: equal pieces, the last possibly shorter."""

    name = "SplitBackward0"


class Pad(Function):
    """Constant, reflect, replicate (edge) or circular (wrap) padding; ``pads`` per axis (lo, hi).

    Negative pads crop, as ONNX allows.
    """

    name = "ConstantPadNdBackward0"

    @staticmethod
    def forward(ctx, x, pads, mode="constant", value=0.0):
        ctx.shape, ctx.pads, ctx.mode = x.shape, pads, mode
        crop = tuple(
            slice(builtins.max(-lo, 0), n - builtins.max(-hi, 0))
            for (lo, hi), n in zip(pads, x.shape)
        )
        x = x[crop]
        grow = [(builtins.max(lo, 0), builtins.max(hi, 0)) for lo, hi in pads]
        if mode == "constant":
            return np.pad(x, grow, mode="constant", constant_values=value)
        if mode == "reflect":
            return np.pad(x, grow, mode="reflect")
        if mode in ("replicate", "edge"):
            return np.pad(x, grow, mode="edge")
        if mode in ("circular", "wrap"):
            return np.pad(x, grow, mode="wrap")
        raise ValueError(f"unknown padding mode {mode!r}")

    @staticmethod
    def backward(ctx, grad):
        shape, pads, mode = ctx.shape, ctx.pads, ctx.mode
        grow = [(builtins.max(lo, 0), builtins.max(hi, 0)) for lo, hi in pads]
        if mode == "constant":
            inner = grad[tuple(slice(lo, g - hi) for (lo, hi), g in zip(grow, grad.shape))]
        else:
            inner = _pad_backward_by_index(grad, grow, mode, shape, pads)
        out = np.zeros(shape, dtype=grad.dtype)
        crop = tuple(
            slice(builtins.max(-lo, 0), n - builtins.max(-hi, 0))
            for (lo, hi), n in zip(pads, shape)
        )
        out[crop] = inner
        return out


def _pad_backward_by_index(grad, grow, mode, shape, pads):
    """Scatter-add the padded gradient back along each axis through the source indices."""
    np_mode = {"reflect": "reflect", "replicate": "edge", "edge": "edge"}.get(mode, "wrap")
    for axis, (lo, hi) in enumerate(grow):
        if lo == 0 and hi == 0:
            continue
        n = grad.shape[axis] - lo - hi
        src = np.pad(np.arange(n), (lo, hi), mode=np_mode)
        moved = np.moveaxis(grad, axis, 0)
        acc = np.zeros((n,) + moved.shape[1:], dtype=grad.dtype)
        np.add.at(acc, src, moved)
        grad = np.moveaxis(acc, 0, axis)
    return grad


class Gather(Function):
    """``torch.gather``: pick along ``dim`` at ``index``."""

    @staticmethod
    def forward(ctx, x, dim, index):
        ctx.shape, ctx.dim = x.shape, dim
        ctx.save_for_backward(index)
        return np.take_along_axis(x, index, axis=dim)

    @staticmethod
    def backward(ctx, grad):
        (index,) = ctx.saved_tensors
        out = np.zeros(ctx.shape, dtype=grad.dtype)
        np.add.at(out, _along_axis_index(index, ctx.dim), grad)
        return out, None, None


def _along_axis_index(index: np.ndarray, dim: int) -> tuple:
    grids = list(np.indices(index.shape, sparse=True))
    grids[dim] = index
    return tuple(grids)


class TopK(Function):
    @staticmethod
    def forward(ctx, x, k, dim=-1, largest=True):
        dim = dim % x.ndim
        order = np.argsort(-x if largest else x, axis=dim, kind="stable")
        idx = np.take(order, np.arange(k), axis=dim)
        ctx.save_for_backward(idx)
        ctx.shape, ctx.dim = x.shape, dim
        return np.take_along_axis(x, idx, axis=dim), idx.astype(np.int64)

    @staticmethod
    def backward(ctx, grad, _grad_idx):
        (idx,) = ctx.saved_tensors
        out = np.zeros(ctx.shape, dtype=grad.dtype)
        np.put_along_axis(out, idx, grad, ctx.dim)
        return out


class Sort(TopK):
    name = "SortBackward0"
