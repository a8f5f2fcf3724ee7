"""Tensor factories: ``tensor``, ``ones``, ``zeros``, ``randn``, ``arange``, ... with PyTorch's
dtype rules."""

from __future__ import annotations

import numpy as np

from . import dtypes, random
from .tensor import Tensor


def _infer(data) -> np.ndarray:
    """Python data gets PyTorch's defaults: floats → float32, ints → int64, bools → bool."""
    if isinstance(data, Tensor):
        return data._data
    if isinstance(data, np.ndarray):
        return data
    if isinstance(data, (list, tuple)) and any(isinstance(x, Tensor) for x in _walk(data)):
        data = _nested_tolist(data)
    arr = np.asarray(data)
    if arr.dtype.kind == "f":
        return arr.astype(np.float32)
    if arr.dtype.kind in "iu":
        return arr.astype(np.int64)
    if arr.dtype.kind == "O":
        raise TypeError(f"could not make a tensor from data of type {type(data).__name__}")
    return arr


def _walk(data):
    for x in data:
        if isinstance(x, (list, tuple)):
            yield from _walk(x)
        else:
            yield x


def _nested_tolist(data):
    if isinstance(data, Tensor):
        return data._data.tolist()
    if isinstance(data, (list, tuple)):
        return [_nested_tolist(x) for x in data]
    return data


def tensor(data, dtype=None, requires_grad: bool = False, device=None) -> Tensor:
    """A new tensor copying ``data`` (numbers, nested lists, numpy arrays or tensors)."""
    arr = _infer(data)
    np_dtype = dtypes.to_numpy_dtype(dtype) if dtype is not None else None
    arr = np.array(arr, dtype=np_dtype, copy=True)
    t = Tensor._from_array(arr)
    if requires_grad:
        t.requires_grad_(True)
    return t


def as_tensor(data, dtype=None) -> Tensor:
    if isinstance(data, Tensor) and dtype is None:
        return data
    if isinstance(data, np.ndarray):
        if dtype is not None:
            data = data.astype(dtypes.to_numpy_dtype(dtype))
        return Tensor._from_array(data)
    return tensor(data, dtype=dtype)


def from_numpy(array: np.ndarray) -> Tensor:
    """A tensor sharing memory with ``array`` (its dtype kept, as in PyTorch)."""
    if not isinstance(array, np.ndarray):
        raise TypeError(f"expected np.ndarray (got {type(array).__name__})")
    dtypes.as_dtype(array.dtype)
    return Tensor._from_array(array)


def _sizes(size) -> tuple:
    if len(size) == 1 and isinstance(size[0], (tuple, list)):
        size = tuple(size[0])
    return tuple(int(s) for s in size)


def _new(array: np.ndarray, requires_grad: bool) -> Tensor:
    t = Tensor._from_array(array)
    if requires_grad:
        t.requires_grad_(True)
    return t


def _float_dtype(dtype) -> np.dtype:
    return dtypes.to_numpy_dtype(dtype) if dtype is not None else np.dtype(np.float32)


def zeros(*size, dtype=None, requires_grad: bool = False, device=None) -> Tensor:
    return _new(np.zeros(_sizes(size), dtype=_float_dtype(dtype)), requires_grad)


def ones(*size, dtype=None, requires_grad: bool = False, device=None) -> Tensor:
    return _new(np.ones(_sizes(size), dtype=_float_dtype(dtype)), requires_grad)


def empty(*size, dtype=None, requires_grad: bool = False, device=None) -> Tensor:
    return _new(np.empty(_sizes(size), dtype=_float_dtype(dtype)), requires_grad)


def full(size, fill_value, dtype=None, requires_grad: bool = False, device=None) -> Tensor:
    if dtype is None:
        dtype = (
            np.bool_
            if isinstance(fill_value, bool)
            else np.int64
            if isinstance(fill_value, int)
            else np.float32
        )
    array = np.full(_sizes((size,)), fill_value, dtype=dtypes.to_numpy_dtype(dtype))
    return _new(array, requires_grad)


def zeros_like(t: Tensor, dtype=None, requires_grad: bool = False) -> Tensor:
    return _new(np.zeros(t.shape, dtype=_like_dtype(t, dtype)), requires_grad)


def ones_like(t: Tensor, dtype=None, requires_grad: bool = False) -> Tensor:
    return _new(np.ones(t.shape, dtype=_like_dtype(t, dtype)), requires_grad)


def full_like(t: Tensor, fill_value, dtype=None, requires_grad: bool = False) -> Tensor:
    return _new(np.full(t.shape, fill_value, dtype=_like_dtype(t, dtype)), requires_grad)


def empty_like(t: Tensor, dtype=None, requires_grad: bool = False) -> Tensor:
    return _new(np.empty(t.shape, dtype=_like_dtype(t, dtype)), requires_grad)


def randn_like(t: Tensor, dtype=None, requires_grad: bool = False) -> Tensor:
    return randn(*t.shape, dtype=dtype or t.dtype, requires_grad=requires_grad)


def rand_like(t: Tensor, dtype=None, requires_grad: bool = False) -> Tensor:
    return rand(*t.shape, dtype=dtype or t.dtype, requires_grad=requires_grad)


def _like_dtype(t: Tensor, dtype) -> np.dtype:
    return dtypes.to_numpy_dtype(dtype) if dtype is not None else t._data.dtype


def eye(n: int, m: int | None = None, dtype=None, requires_grad: bool = False) -> Tensor:
    return _new(np.eye(n, m, dtype=_float_dtype(dtype)), requires_grad)


def arange(start, end=None, step=1, dtype=None, requires_grad: bool = False, device=None) -> Tensor:
    if end is None:
        start, end = 0, start
    if dtype is None:
        is_int = all(isinstance(v, (int, np.integer)) for v in (start, end, step))
        dtype = np.int64 if is_int else np.float32
    is_float = np.dtype(dtypes.to_numpy_dtype(dtype)).kind == "f"
    arr = np.arange(start, end, step, dtype=np.float64 if is_float else None)
    return _new(arr.astype(dtypes.to_numpy_dtype(dtype)), requires_grad)


def linspace(start, end, steps: int, dtype=None, requires_grad: bool = False) -> Tensor:
    """Evenly spaced points, computed as PyTorch does (from both ends, in float32)."""
    np_dtype = _float_dtype(dtype)
    idx = np.arange(steps, dtype=np.float64)
    step = np_dtype.type((end - start) / (steps - 1)) if steps > 1 else np_dtype.type(0)
    # PyTorch's kernel fuses multiply-add (one rounding); a float32 step times an index is exact
    # in float64, so computing there and rounding once reproduces it (-2.9802e-08, not 0.).
    step = np.float64(step)
    out = np.where(
        idx < steps // 2,
        np.float64(np_dtype.type(start)) + step * idx,
        np.float64(np_dtype.type(end)) - step * (steps - 1 - idx),
    ).astype(np_dtype)
    return _new(out, requires_grad)


def randn(*size, dtype=None, requires_grad: bool = False, generator=None, device=None) -> Tensor:
    rng = random.numpy_generator(generator)
    values = rng.standard_normal(_sizes(size), dtype=np.float64)
    return _new(values.astype(_float_dtype(dtype)), requires_grad)


def rand(*size, dtype=None, requires_grad: bool = False, generator=None, device=None) -> Tensor:
    rng = random.numpy_generator(generator)
    return _new(rng.random(_sizes(size)).astype(_float_dtype(dtype)), requires_grad)


def randint(low, high=None, size=(), dtype=None, generator=None) -> Tensor:
    if high is None:
        low, high = 0, low
    rng = random.numpy_generator(generator)
    return Tensor._from_array(
        rng.integers(low, high, size=_sizes((size,))).astype(
            dtypes.to_numpy_dtype(dtype) if dtype is not None else np.int64
        )
    )


def randperm(n: int, dtype=None, generator=None) -> Tensor:
    rng = random.numpy_generator(generator)
    return Tensor._from_array(rng.permutation(n).astype(np.int64))


def _legacy(np_dtype):
    def make(*args) -> Tensor:
        if len(args) == 1 and isinstance(args[0], (list, tuple, np.ndarray)):
            return tensor(args[0], dtype=np_dtype)
        return zeros(*args, dtype=np_dtype)

    return make


FloatTensor = _legacy(np.float32)
DoubleTensor = _legacy(np.float64)
LongTensor = _legacy(np.int64)
IntTensor = _legacy(np.int32)
BoolTensor = _legacy(np.bool_)
