"""Elementwise primitives: binary arithmetic (broadcasting), unary math, clamp, casts, where.

A backward returns each gradient in the broadcast shape; the engine sums it back to the input's
shape (``sum_to_shape``), once, for every op.
"""

from __future__ import annotations

import numpy as np

from .. import memory_format as memory_formats
from . import piecewise, special
from .broadcast import (
    _as_array,
    _binary_operands,
    _broadcasting,
    _float_operands,
    result_dtype,
)
from .function import Function
from .special import blockwise, empty_like_dense

# -- elementwise binary ----------------------------------------------------------------------


class Add(Function):
    @staticmethod
    @_broadcasting
    def forward(ctx, a, b):
        a, b = _binary_operands(a, b)
        return np.add(a, b)

    @staticmethod
    def backward(ctx, grad):
        return (
            grad if ctx.needs_input_grad[0] else None,
            grad if ctx.needs_input_grad[1] else None,
        )


class Sub(Function):
    @staticmethod
    @_broadcasting
    def forward(ctx, a, b):
        a, b = _binary_operands(a, b)
        return np.subtract(a, b)

    @staticmethod
    def backward(ctx, grad):
        return (
            grad if ctx.needs_input_grad[0] else None,
            -grad if ctx.needs_input_grad[1] else None,
        )


class Mul(Function):
    @staticmethod
    @_broadcasting
    def forward(ctx, a, b):
        a, b = _binary_operands(a, b)
        ctx.save_for_backward(
            a if ctx.needs_input_grad[1] else None, b if ctx.needs_input_grad[0] else None
        )
        return np.multiply(a, b)

    @staticmethod
    def backward(ctx, grad):
        a, b = ctx.saved_tensors
        return (
            grad * b if ctx.needs_input_grad[0] else None,
            grad * a if ctx.needs_input_grad[1] else None,
        )


class Div(Function):
    @staticmethod
    @_broadcasting
    def forward(ctx, a, b):
        a, b = _float_operands(a, b)
        ctx.save_for_backward(a if ctx.needs_input_grad[1] else None, b)
        return np.true_divide(a, b)

    @staticmethod
    def backward(ctx, grad):
        a, b = ctx.saved_tensors
        ga = grad / b if ctx.needs_input_grad[0] else None
        gb = -grad * a / (b * b) if ctx.needs_input_grad[1] else None
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
        a, b = _float_operands(a, b)
        out = np.power(a, b)
        ctx.save_for_backward(a, b, out)
        return out

    @staticmethod
    def backward(ctx, grad):
        a, b, out = ctx.saved_tensors
        ga = gb = None
        if ctx.needs_input_grad[0]:
            ga = grad * b * np.power(a, b - 1)
        if ctx.needs_input_grad[1]:
            log_a = np.where(a > 0, np.log(np.where(a > 0, a, 1)), 0).astype(out.dtype)
            gb = grad * out * log_a
        return ga, gb


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


class Abs(Function):
    @staticmethod
    def forward(ctx, x):
        ctx.save_for_backward(x)
        return np.abs(x)

    @staticmethod
    def backward(ctx, grad):
        (x,) = ctx.saved_tensors
        return grad * np.sign(x)


class Relu(Function):
    @staticmethod
    def forward(ctx, x):
        out = np.empty_like(x)  # in x's layout (channels last stays channels last)
        piecewise.relu().into(out, x)
        ctx.save_for_backward(out)
        return out

    @staticmethod
    def backward(ctx, grad):
        (out,) = ctx.saved_tensors
        gx = np.empty_like(grad)
        piecewise.relu_backward(gx, grad, out)
        return gx


class Sigmoid(Function):
    """``1 / (1 + exp(-x))``, PyTorch's formula, over cache-sized blocks in ``x``'s layout.
    ``exp(-x)`` overflows to ``inf`` below ``x = -88.7`` (float32) and the result is then 0
    where the true value is below 3e-39: no NaN, and full relative precision everywhere else.
    Not ``where(x >= 0, r, e r)`` with ``e = exp(-|x|)``: numpy's masked select costs five
    times the whole formula (measured: 48 against 8.5 ms at EfficientNet-B0's first layer)."""

    @staticmethod
    def forward(ctx, x):
        x = _floating(x)
        out = empty_like_dense(x)
        blockwise(sigmoid_into, out, x)
        ctx.save_for_backward(out)
        return out

    @staticmethod
    def backward(ctx, grad):
        (out,) = ctx.saved_tensors
        gx = empty_like_dense(grad)
        blockwise(_sigmoid_backward, gx, grad, out, temps=1)
        return gx


def sigmoid_into(out: np.ndarray, x: np.ndarray) -> None:
    """``out = 1 / (1 + exp(-x))``; ``out`` may be ``x``."""
    np.negative(x, out=out)
    with np.errstate(over="ignore"):
        np.exp(out, out=out)
    out += 1
    np.divide(1, out, out=out)


def _sigmoid_backward(gx, grad, y, t):
    """``gx = grad * y * (1 - y)``."""
    np.subtract(1, y, out=t)
    t *= y
    np.multiply(grad, t, out=gx)


class Clamp(Function):
    """``x`` clipped to constant bounds in one pass, in ``x``'s layout; the gradient passes where
    ``min <= x <= max`` (PyTorch's ``clamp``)."""

    name = "ClampBackward1"

    @staticmethod
    def forward(ctx, x, min=None, max=None):  # noqa: A002
        lo = None if min is None else np.asarray(min, dtype=x.dtype)
        hi = None if max is None else np.asarray(max, dtype=x.dtype)
        ctx.save_for_backward(x if ctx.needs_input_grad[0] else None)
        ctx.bounds = (lo, hi)
        out = empty_like_dense(x)
        if lo is None and hi is None:
            np.copyto(out, x)
        elif (lo is None or lo.ndim == 0) and (hi is None or hi.ndim == 0):
            piecewise.clip(*(None if b is None else b.item() for b in (lo, hi))).into(out, x)
        else:
            blockwise(lambda o, a: np.clip(a, lo, hi, out=o), out, x)
        return out

    @staticmethod
    def backward(ctx, grad):
        (x,) = ctx.saved_tensors
        lo, hi = ctx.bounds
        if lo is None and hi is None:
            return grad
        gx = empty_like_dense(grad)
        blockwise(lambda g_, g, a: _clamp_backward(g_, g, a, lo, hi), gx, grad, x)
        return gx


def _clamp_backward(gx, grad, x, lo, hi) -> None:
    inside = x >= lo if hi is None else (x <= hi if lo is None else (x >= lo) & (x <= hi))
    np.multiply(grad, inside, out=gx)


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
        zero = grad.dtype.type(0)
        share = np.where(a == b, grad * grad.dtype.type(0.5), grad)
        ga = np.where(cls.loses(a, b), zero, share) if ctx.needs_input_grad[0] else None
        gb = np.where(cls.loses(b, a), zero, share) if ctx.needs_input_grad[1] else None
        return ga, gb


class Minimum(Maximum):
    pick = staticmethod(np.minimum)
    loses = staticmethod(np.greater)


@_broadcasting
def _pick(ctx, a, b, *, pick):
    a, b = _binary_operands(a, b)
    ctx.save_for_backward(a, b)
    return pick(a, b)


class Where(Function):
    name = "WhereBackward0"

    @staticmethod
    @_broadcasting
    def forward(ctx, cond, a, b):
        ctx.save_for_backward(cond)
        a, b = _binary_operands(a, b)
        return np.where(cond, a, b)

    @staticmethod
    def backward(ctx, grad):
        (cond,) = ctx.saved_tensors
        zero = grad.dtype.type(0)
        ga = np.where(cond, grad, zero) if ctx.needs_input_grad[1] else None
        gb = np.where(cond, zero, grad) if ctx.needs_input_grad[2] else None
        return None, ga, gb


class Mod(Function):
    """``a mod b`` with the quotient floored (``np.mod``, the sign of ``b``) or, with ``fmod``,
    truncated (``np.fmod``, the sign of ``a``). A Function, not ``a - b * q``: that composition
    rounds twice and drifts from the exact remainder. d/da = 1, d/db = -q."""

    @staticmethod
    @_broadcasting
    def forward(ctx, a, b, fmod=False):
        a, b = _binary_operands(a, b)
        out = np.fmod(a, b) if fmod else np.mod(a, b)
        if ctx.needs_input_grad[1]:
            ctx.save_for_backward(a, b, out)
        return out

    @staticmethod
    def backward(ctx, grad):
        gb = None
        if ctx.needs_input_grad[1]:
            a, b, out = ctx.saved_tensors
            gb = -grad * np.round((a - out) / b)  # (a - out) / b is the integer quotient
        return grad if ctx.needs_input_grad[0] else None, gb


# -- unary math: one row per op, forward next to its derivative --------------------------------


class _UnaryMath(Function):
    """``y = f(x)`` on floats, ``dy/dx = df(saved)``, where the row saves ``x`` or ``y``
    (whichever its derivative is written in, as PyTorch saves) or nothing (a step function).
    The rows are primitives: numpy's ufunc is exact where a composition of the others (``tan``
    as ``sin / cos``, ``asinh`` through ``log``) would round more and lose range."""

    f: staticmethod  # x -> y
    df: staticmethod  # the saved x or y -> dy/dx
    saves = "x"  # "x", "y" or "" (the derivative is zero)
    floating = True  # integer input computes in float32 (as PyTorch); False keeps ints (Sign)

    @classmethod
    def forward(cls, ctx, x):
        if cls.floating:
            x = _floating(x)
        out = cls.f(x)
        if ctx.needs_input_grad[0] and cls.saves:
            ctx.save_for_backward(x if cls.saves == "x" else out)
        return out

    @classmethod
    def backward(cls, ctx, grad):
        if not cls.saves:
            return np.zeros_like(grad)
        (saved,) = ctx.saved_tensors
        return grad * cls.df(saved)


def _unary_math(name: str, f, df=None, *, saves: str = "x", floating: bool = True) -> type:
    """A row of the table: ``df`` of the saved ``x`` or ``y``; no ``df``, a zero derivative."""
    return type(
        name,
        (_UnaryMath,),
        {
            "f": staticmethod(f),
            "df": staticmethod(df),
            "saves": saves if df is not None else "",
            "floating": floating,
            "__module__": __name__,
        },
    )


def _on_floats(f):
    """``f`` for floats; an integer array is its own floor, ceiling and rounding (as PyTorch)."""
    return lambda x: f(x) if x.dtype.kind in "fc" else x.copy()


Exp = _unary_math("Exp", np.exp, lambda y: y, saves="y")
Log = _unary_math("Log", np.log, lambda x: 1 / x)
Log1p = _unary_math("Log1p", np.log1p, lambda x: 1 / (1 + x))  # exact for tiny x
Sqrt = _unary_math("Sqrt", np.sqrt, lambda y: 1 / (2 * y), saves="y")
Sin = _unary_math("Sin", np.sin, np.cos)
Cos = _unary_math("Cos", np.cos, lambda x: -np.sin(x))
Erf = _unary_math("Erf", special.erf, lambda x: _TWO_OVER_SQRT_PI * np.exp(-x * x))
Tanh = _unary_math("Tanh", np.tanh, lambda y: 1 - y * y, saves="y")
Tan = _unary_math("Tan", np.tan, lambda y: 1 + y * y, saves="y")
Asin = _unary_math("Asin", np.arcsin, lambda x: 1 / np.sqrt(1 - x * x))
Acos = _unary_math("Acos", np.arccos, lambda x: -1 / np.sqrt(1 - x * x))
Atan = _unary_math("Atan", np.arctan, lambda x: 1 / (1 + x * x))
Sinh = _unary_math("Sinh", np.sinh, np.cosh)
Cosh = _unary_math("Cosh", np.cosh, np.sinh)
Asinh = _unary_math("Asinh", np.arcsinh, lambda x: 1 / np.sqrt(x * x + 1))
Acosh = _unary_math("Acosh", np.arccosh, lambda x: 1 / np.sqrt(x * x - 1))
Atanh = _unary_math("Atanh", np.arctanh, lambda x: 1 / (1 - x * x))
Reciprocal = _unary_math("Reciprocal", np.reciprocal, lambda y: -y * y, saves="y")
# step functions: zero derivative almost everywhere
Floor = _unary_math("Floor", _on_floats(np.floor), floating=False)
Ceil = _unary_math("Ceil", _on_floats(np.ceil), floating=False)
Round = _unary_math("Round", _on_floats(np.round), floating=False)  # ties to even
Sign = _unary_math("Sign", np.sign, floating=False)
