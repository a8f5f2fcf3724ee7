"""PyTorch-named dtype objects over numpy dtypes (``finetune.float32`` prints ``torch.float32``)."""

from __future__ import annotations

import builtins

import numpy as np


class dtype:  # noqa: N801 - the PyTorch name
    """A tensor element type; wraps a numpy dtype and prints like PyTorch's."""

    __slots__ = ("name", "numpy", "is_floating_point", "itemsize")

    def __init__(self, name: str, np_dtype: type) -> None:
        self.name = name
        self.numpy = np.dtype(np_dtype)
        self.is_floating_point = self.numpy.kind == "f"
        self.itemsize = self.numpy.itemsize

    def __repr__(self) -> str:
        return f"torch.{self.name}"

    def __reduce__(self):
        return (as_dtype, (self.name,))


float32 = dtype("float32", np.float32)
float64 = dtype("float64", np.float64)
float16 = dtype("float16", np.float16)
int64 = dtype("int64", np.int64)
int32 = dtype("int32", np.int32)
int16 = dtype("int16", np.int16)
int8 = dtype("int8", np.int8)
uint8 = dtype("uint8", np.uint8)
bool_ = dtype("bool", np.bool_)

float = float32  # noqa: A001 - torch.float
double = float64
half = float16
long = int64
int = int32  # noqa: A001 - torch.int

_ALL = (float32, float64, float16, int64, int32, int16, int8, uint8, bool_)
_BY_NUMPY = {d.numpy: d for d in _ALL}
_BY_NAME = {d.name: d for d in _ALL}

default_float = float32


def as_dtype(value) -> dtype:
    """Turn a library dtype, numpy dtype, Python type or name into a library dtype."""
    if isinstance(value, dtype):
        return value
    if isinstance(value, str):
        if value in _BY_NAME:
            return _BY_NAME[value]
        value = np.dtype(value)
    if value is builtins.float:
        return default_float
    if value is builtins.int:
        return int64
    if value is builtins.bool:
        return bool_
    np_dtype = np.dtype(value)
    try:
        return _BY_NUMPY[np_dtype]
    except KeyError:
        raise TypeError(f"unsupported dtype {np_dtype}; supported: {sorted(_BY_NAME)}") from None


def to_numpy_dtype(value) -> np.dtype:
    return as_dtype(value).numpy
