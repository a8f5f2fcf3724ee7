"""``Tensor``: a numpy array with autograd metadata, and the PyTorch-named methods over it.

Methods are thin: each calls a primitive in ``autograd/ops.py`` (which holds forward and backward
side by side) or, for things with no gradient (comparisons, argmax), numpy directly.
"""

from __future__ import annotations

import weakref
from typing import Any

import numpy as np

from . import dtypes
from . import memory_format as memory_formats
from .autograd import engine
from .autograd.function import trace_inplace
from .device import device as _device
from .errors import AutogradError, ShapeError


class _Version:
    """A version counter shared by a tensor and its views; bumped by every in-place change."""

    __slots__ = ("value",)

    def __init__(self) -> None:
        self.value = 0


class Tensor:
    """An n-dimensional array that can record the operations applied to it for backward."""

    __slots__ = (
        "_data",
        "_requires_grad",
        "grad",
        "grad_fn",
        "_output_nr",
        "_version",
        "_accumulator",
        "__dict__",
        "__weakref__",
    )
    __array_priority__ = 1000  # numpy defers to our operators: np.float32(2) * t is a Tensor

    def __init__(self, *args, **kwargs) -> None:
        raise TypeError("create tensors with finetune.tensor(...), ones, zeros, randn, ...")

    @classmethod
    def _from_array(cls, array: np.ndarray, requires_grad: bool = False) -> Tensor:
        t = object.__new__(cls)
        t._data = array
        t._requires_grad = requires_grad
        t.grad = None
        t.grad_fn = None
        t._output_nr = 0
        t._version = _Version()
        t._accumulator = None
        return t

    # -- core attributes ----------------------------------------------------------------
    @property
    def data(self) -> Tensor:
        """The same storage without history (and, as in PyTorch, without version tracking)."""
        return Tensor._from_array(self._data)

    @data.setter
    def data(self, value: Tensor) -> None:
        self._data = value._data if isinstance(value, Tensor) else np.asarray(value)

    @property
    def requires_grad(self) -> bool:
        return self._requires_grad

    @requires_grad.setter
    def requires_grad(self, value: bool) -> None:
        value = bool(value)
        if self.grad_fn is not None and not value:
            raise AutogradError(
                "you can only change requires_grad flags of leaf variables. If you want to use a "
                "computed variable in a subgraph that doesn't require differentiation use "
                "var_no_grad = var.detach()."
            )
        if value and self._data.dtype.kind not in "fc":
            raise AutogradError("only Tensors of floating point dtype can require gradients")
        self._requires_grad = value

    def requires_grad_(self, requires_grad: bool = True) -> Tensor:
        self.requires_grad = requires_grad
        return self

    @property
    def is_leaf(self) -> bool:
        return self.grad_fn is None

    @property
    def shape(self) -> Size:
        return Size(self._data.shape)

    @property
    def dtype(self) -> dtypes.dtype:
        return dtypes.as_dtype(self._data.dtype)

    @property
    def ndim(self) -> int:
        return self._data.ndim

    @property
    def device(self) -> _device:
        return _CPU

    @property
    def is_floating_point_type(self) -> bool:
        return self._data.dtype.kind == "f"

    def is_floating_point(self) -> bool:
        return self._data.dtype.kind == "f"

    def size(self, dim: int | None = None):
        return Size(self._data.shape) if dim is None else self._data.shape[dim]

    def dim(self) -> int:
        return self._data.ndim

    def numel(self) -> int:
        return int(self._data.size)

    nelement = numel

    def element_size(self) -> int:
        return self._data.itemsize

    def __len__(self) -> int:
        if self._data.ndim == 0:
            raise TypeError("len() of a 0-d tensor")
        return self._data.shape[0]

    # -- conversion -----------------------------------------------------------------------
    def numpy(self) -> np.ndarray:
        if self._requires_grad:
            raise AutogradError(
                "Can't call numpy() on Tensor that requires grad. Use tensor.detach().numpy() "
                "instead."
            )
        return self._data

    def __array__(self, dtype=None, copy=None):
        return self._data if dtype is None else self._data.astype(dtype)

    def item(self):
        if self._data.size != 1:
            raise ShapeError(
                f"a Tensor with {self._data.size} elements cannot be converted to Scalar"
            )
        return self._data.reshape(()).item()

    def tolist(self):
        return self._data.tolist()

    def __float__(self) -> float:
        return float(self.item())

    def __int__(self) -> int:
        return int(self.item())

    def __index__(self) -> int:
        if self._data.dtype.kind not in "iub" or self._data.size != 1:
            raise TypeError("only integer tensors of a single element can be converted to an index")
        return int(self.item())

    def __bool__(self) -> bool:
        if self._data.size != 1:
            raise RuntimeError("Boolean value of Tensor with more than one value is ambiguous")
        return bool(self._data.reshape(()))

    def __hash__(self) -> int:
        return id(self)

    def __iter__(self):
        if self._data.ndim == 0:
            raise TypeError("iteration over a 0-d tensor")
        return (self[i] for i in range(self._data.shape[0]))

    def __repr__(self) -> str:
        from ._printing import tensor_repr

        return tensor_repr(self)

    __str__ = __repr__

    def __format__(self, spec: str) -> str:
        """As PyTorch: a 0-d tensor formats as its Python number (``f"{loss}"`` is ``2.5``)."""
        if self._data.ndim == 0 and type(self) is Tensor:
            return format(self.item(), spec)
        return object.__format__(self, spec)

    def __deepcopy__(self, memo: dict) -> Tensor:
        """Copy a leaf with its data, ``requires_grad`` and ``grad``: ``copy.deepcopy(model)``
        and ``copy.deepcopy(model.state_dict())`` work as in PyTorch."""
        if self.grad_fn is not None:
            raise AutogradError(
                "Only Tensors created explicitly by the user (graph leaves) support the deepcopy "
                "protocol at the moment."
            )
        t = type(self)._from_array(self._data.copy(), self._requires_grad)
        memo[id(self)] = t
        if self.grad is not None:
            t.grad = self.grad.__deepcopy__(memo)
        return t

    def __reduce_ex__(self, protocol):
        raise TypeError("finetune tensors are not pickled; use finetune.save (safe .npz format)")

    # -- autograd -------------------------------------------------------------------------
    def backward(
        self,
        gradient=None,
        retain_graph: bool | None = None,
        create_graph: bool = False,
        inputs=None,
    ) -> None:
        """Accumulate d(self)/d(leaf) into ``leaf.grad`` for every leaf that requires grad."""
        from .autograd import backward

        backward(
            self, gradient, retain_graph=retain_graph, create_graph=create_graph, inputs=inputs
        )

    def detach(self) -> Tensor:
        t = Tensor._from_array(self._data)
        t._version = self._version
        return t

    def detach_(self) -> Tensor:
        self.grad_fn = None
        self._requires_grad = False
        return self

    def retain_grad(self) -> None:
        if self.grad_fn is None:
            return
        if self.grad_fn._retained is None:
            self.grad_fn._retained = {}
        self.grad_fn._retained[self._output_nr] = weakref.ref(self)

    # -- in-place -------------------------------------------------------------------------
    def _check_inplace(self) -> None:
        if self._requires_grad and self.grad_fn is None and engine.is_grad_enabled():
            raise AutogradError(
                "a leaf Variable that requires grad is being used in an in-place operation."
            )

    def _inplace(self, result: Tensor) -> Tensor:
        """Make ``self`` hold ``result``: its values and, when recorded, its history."""
        self._check_inplace()
        if result.grad_fn is not None:
            self._data = result._data
            self.grad_fn = result.grad_fn
            self._output_nr = result._output_nr
            self._requires_grad = True
        else:
            out = result._data
            if out.shape != self._data.shape:
                raise ShapeError(
                    f"output with shape {list(self._data.shape)} doesn't match the broadcast "
                    f"shape {list(out.shape)}"
                )
            if self._data.flags.writeable:
                np.copyto(self._data, out, casting="unsafe")
            else:
                self._data = out.astype(self._data.dtype, copy=True)
        self._version.value += 1
        trace_inplace(self, result)
        return self

    def add_(self, other, alpha=1):
        return self._inplace(self.add(other, alpha=alpha))

    def sub_(self, other, alpha=1):
        return self._inplace(self.sub(other, alpha=alpha))

    def mul_(self, other):
        return self._inplace(self.mul(other))

    def div_(self, other):
        return self._inplace(self.div(other))

    def pow_(self, exponent):
        return self._inplace(self.pow(exponent))

    def clamp_(self, min=None, max=None):  # noqa: A002
        return self._inplace(self.clamp(min, max))

    def relu_(self):
        return self._inplace(self.relu())

    def neg_(self):
        return self._inplace(self.neg())

    def sqrt_(self):
        return self._inplace(self.sqrt())

    def exp_(self):
        return self._inplace(self.exp())

    def zero_(self):
        return self.fill_(0)

    def fill_(self, value):
        self._check_inplace()
        self._data = _writable(self._data)
        self._data.fill(value)
        self._version.value += 1
        return self

    def copy_(self, src):
        self._check_inplace()
        src_data = src._data if isinstance(src, Tensor) else np.asarray(src)
        if engine.is_grad_enabled() and isinstance(src, Tensor) and src.requires_grad:
            return self._inplace(_ops.expand(src, self.shape).to(self.dtype))
        self._data = _writable(self._data)
        try:
            np.copyto(self._data, np.broadcast_to(src_data, self._data.shape), casting="unsafe")
        except ValueError:
            raise ShapeError(
                f"copy_: source of shape {list(src_data.shape)} cannot be broadcast to "
                f"{list(self._data.shape)}"
            ) from None
        self._version.value += 1
        return self

    def normal_(self, mean=0.0, std=1.0, *, generator=None):
        from . import random

        rng = random.numpy_generator(generator)
        return self.copy_(rng.normal(mean, std, self._data.shape))

    def uniform_(self, a=0.0, b=1.0, *, generator=None):
        from . import random

        rng = random.numpy_generator(generator)
        return self.copy_(rng.uniform(a, b, self._data.shape))

    def __setitem__(self, index, value) -> None:
        self._check_inplace()
        index = _unwrap_index(index)
        if engine.is_grad_enabled() and (
            (isinstance(value, Tensor) and value.requires_grad) or self._requires_grad
        ):
            self._inplace(_ops.index_put(self, index, value))
            return
        self._data = _writable(self._data)
        self._data[index] = value._data if isinstance(value, Tensor) else value
        self._version.value += 1

    def __iadd__(self, other):
        return self.add_(other)

    def __isub__(self, other):
        return self.sub_(other)

    def __imul__(self, other):
        return self.mul_(other)

    def __itruediv__(self, other):
        return self.div_(other)

    # -- arithmetic (autograd ops) ------------------------------------------------------------
    def __add__(self, other):
        return _ops.add(self, other)

    def __radd__(self, other):
        return _ops.add(other, self)

    def __sub__(self, other):
        return _ops.sub(self, other)

    def __rsub__(self, other):
        return _ops.sub(other, self)

    def __mul__(self, other):
        return _ops.mul(self, other)

    __rmul__ = __mul__

    def __truediv__(self, other):
        return _ops.div(self, other)

    def __rtruediv__(self, other):
        return _ops.div(other, self)

    def __pow__(self, exponent):
        return _ops.pow(self, exponent)

    def __rpow__(self, base):
        return _ops.pow(base, self)

    def __matmul__(self, other):
        return _ops.matmul(self, other)

    def __rmatmul__(self, other):
        return _ops.matmul(other, self)

    def __neg__(self):
        return _ops.neg(self)

    def __pos__(self):
        return self

    def __abs__(self):
        return _ops.abs(self)

    def __floordiv__(self, other):
        return Tensor._from_array(np.floor_divide(self._data, _raw(other)))

    def __mod__(self, other):
        return _ops.remainder(self, other)

    def __rmod__(self, other):
        return _ops.remainder(other, self)

    # -- comparisons and logic (no gradient) --------------------------------------------------
    def __eq__(self, other):  # type: ignore[override]
        return _elementwise(np.equal, self, other)

    def __ne__(self, other):  # type: ignore[override]
        return _elementwise(np.not_equal, self, other)

    def __lt__(self, other):
        return _elementwise(np.less, self, other)

    def __le__(self, other):
        return _elementwise(np.less_equal, self, other)

    def __gt__(self, other):
        return _elementwise(np.greater, self, other)

    def __ge__(self, other):
        return _elementwise(np.greater_equal, self, other)

    def __and__(self, other):
        return _elementwise(np.bitwise_and, self, other)

    def __or__(self, other):
        return _elementwise(np.bitwise_or, self, other)

    def __xor__(self, other):
        return _elementwise(np.bitwise_xor, self, other)

    def __invert__(self):
        return Tensor._from_array(np.invert(self._data))

    eq, ne, lt, le, gt, ge = __eq__, __ne__, __lt__, __le__, __gt__, __ge__

    def equal(self, other) -> bool:
        return self.shape == other.shape and bool(np.array_equal(self._data, other._data))

    def allclose(self, other, rtol=1e-5, atol=1e-8, equal_nan=False) -> bool:
        return bool(np.allclose(self._data, _raw(other), rtol=rtol, atol=atol, equal_nan=equal_nan))

    def isnan(self):
        return Tensor._from_array(np.isnan(self._data))

    def isinf(self):
        return Tensor._from_array(np.isinf(self._data))

    def isfinite(self):
        return Tensor._from_array(np.isfinite(self._data))

    def all(self, dim=None, keepdim=False):
        return Tensor._from_array(np.asarray(np.all(self._data, axis=dim, keepdims=keepdim)))

    def any(self, dim=None, keepdim=False):
        return Tensor._from_array(np.asarray(np.any(self._data, axis=dim, keepdims=keepdim)))

    def argmax(self, dim=None, keepdim=False):
        return Tensor._from_array(_arg(np.argmax, self._data, dim, keepdim))

    def argmin(self, dim=None, keepdim=False):
        return Tensor._from_array(_arg(np.argmin, self._data, dim, keepdim))

    def topk(self, k: int, dim: int = -1, largest: bool = True, sorted: bool = True):  # noqa: A002
        return _ops.topk(self, k, dim, largest, sorted)

    def sort(self, dim: int = -1, descending: bool = False):
        return _ops.sort(self, dim, descending)

    # -- dtype ------------------------------------------------------------------------------
    def to(self, *args, **kwargs) -> Tensor:
        """``to(dtype)`` casts (differentiably); ``to("cpu")`` is a no-op on this CPU library."""
        target = kwargs.get("dtype")
        for a in args:
            if isinstance(a, Tensor):
                target = a.dtype
            elif isinstance(a, dtypes.dtype) or (isinstance(a, type) and issubclass(a, np.generic)):
                target = a
        layout = kwargs.get("memory_format", memory_formats.preserve_format)
        out = self if layout is memory_formats.preserve_format else self.contiguous(layout)
        if target is None or dtypes.as_dtype(target).numpy == out._data.dtype:
            return out
        return _ops.cast(out, dtypes.as_dtype(target).numpy)

    def type(self, dtype=None):
        if dtype is None:
            return f"torch.{_TYPE_NAMES.get(self._data.dtype.name, 'Tensor')}"
        return self.to(dtype)

    def float(self):
        return self.to(dtypes.float32)

    def double(self):
        return self.to(dtypes.float64)

    def half(self):
        return self.to(dtypes.float16)

    def long(self):
        return self.to(dtypes.int64)

    def int(self):
        return self.to(dtypes.int32)

    def bool(self):
        return self.to(dtypes.bool_)

    def cpu(self):
        return self

    def contiguous(self, memory_format=memory_formats.contiguous_format) -> Tensor:
        """``self`` if its values are laid out as ``memory_format`` asks (row-major by default),
        else a copy that is (as in PyTorch)."""
        if memory_formats.is_in(self._data, memory_format):
            return self
        return _ops.clone(self, memory_format=memory_format)

    def is_contiguous(self, memory_format=memory_formats.contiguous_format) -> bool:
        return memory_formats.is_in(self._data, memory_format)

    def stride(self, dim: int | None = None):
        """The step in elements between neighbours along each dimension (or ``dim``)."""
        steps = tuple(s // self._data.itemsize for s in self._data.strides)
        return steps if dim is None else steps[dim]

    def type_as(self, other: Tensor) -> Tensor:
        return self.to(other.dtype)

    def clone(self, *, memory_format=memory_formats.preserve_format):
        return _ops.clone(self, memory_format=memory_format)

    def clamp_min(self, min):  # noqa: A002
        return _ops.clamp(self, min=min)

    def clamp_max(self, max):  # noqa: A002
        return _ops.clamp(self, max=max)

    # -- new tensors like this one (same dtype unless given) ------------------------------------
    def new_tensor(self, data, dtype=None, requires_grad: bool = False) -> Tensor:
        from .creation import tensor

        return tensor(data, dtype=dtype or self.dtype, requires_grad=requires_grad)

    def new_full(self, size, fill_value, dtype=None, requires_grad: bool = False) -> Tensor:
        from .creation import full

        return full(size, fill_value, dtype=dtype or self.dtype, requires_grad=requires_grad)

    def new_zeros(self, *size, dtype=None, requires_grad: bool = False) -> Tensor:
        return self.new_full(_size_arg(size), 0, dtype, requires_grad)

    def new_ones(self, *size, dtype=None, requires_grad: bool = False) -> Tensor:
        return self.new_full(_size_arg(size), 1, dtype, requires_grad)

    def new_empty(self, *size, dtype=None, requires_grad: bool = False) -> Tensor:
        return self.new_full(_size_arg(size), 0, dtype, requires_grad)


class Size(tuple):
    """``torch.Size``: a tuple of ints that prints as ``torch.Size([2, 3])``."""

    def __repr__(self) -> str:
        return f"torch.Size({list(self)})"

    def numel(self) -> int:
        n = 1
        for s in self:
            n *= s
        return n


_TYPE_NAMES = {
    "float32": "FloatTensor",
    "float64": "DoubleTensor",
    "float16": "HalfTensor",
    "int64": "LongTensor",
    "int32": "IntTensor",
    "bool": "BoolTensor",
    "uint8": "ByteTensor",
}


_CPU = _device("cpu")


def _size_arg(size: tuple) -> tuple:
    """``f(2, 3)`` and ``f((2, 3))`` both mean shape (2, 3), as in PyTorch."""
    return tuple(size[0]) if len(size) == 1 and isinstance(size[0], (tuple, list)) else size


def _raw(value: Any):
    return value._data if isinstance(value, Tensor) else value


def _elementwise(ufunc: np.ufunc, a: Tensor, other: Any) -> Tensor:
    """A comparison or bitwise op (no gradient); operands that do not broadcast raise ShapeError
    naming both shapes."""
    try:
        return Tensor._from_array(ufunc(a._data, _raw(other)))
    except ValueError:
        from .autograd.ops import broadcast_error

        raise broadcast_error(a._data.shape, np.shape(_raw(other))) from None


def _writable(array: np.ndarray) -> np.ndarray:
    return array if array.flags.writeable else array.copy()


def _arg(fn, data: np.ndarray, dim, keepdim: bool) -> np.ndarray:
    if dim is None:
        return np.asarray(fn(data), dtype=np.int64)
    return np.asarray(fn(data, axis=dim, keepdims=keepdim), dtype=np.int64)


def _unwrap_index(index):
    if isinstance(index, tuple):
        return tuple(_unwrap_index(i) for i in index)
    if isinstance(index, Tensor):
        return index._data
    if isinstance(index, list) and any(isinstance(i, Tensor) for i in index):
        return [_unwrap_index(i) for i in index]
    return index


def is_tensor(obj: Any) -> bool:
    return isinstance(obj, Tensor)


from . import functions as _ops  # noqa: E402  (the functions need Tensor defined first)
