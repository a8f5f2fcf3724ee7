"""Random-number ops: RandomUniform(Like), RandomNormal(Like), Bernoulli, Multinomial.

Draws come from the library's default generator (``finetune.manual_seed`` makes a run
repeatable); a node's ``seed`` attribute gives it its own stream, restarted at every run, so
the node returns the same values each time. The ``*Like`` ops' output depends on the input's
shape only: its gradient to the input is exactly zero, and they record no graph. Bernoulli and
Multinomial draw discrete values and have no gradient.
"""

from __future__ import annotations

import numpy as np
import onnx

from ...errors import OnnxImportError, ShapeError
from ...random import Generator, generator
from ...tensor import Tensor
from ..limits import check_shape
from ..registry import register
from ._common import wrap


def _stream(seed) -> np.random.Generator:
    if seed is None:
        return generator()
    # the float seed's bits, so 1.0 and 1.5 give different streams
    bits = int(np.asarray(seed, dtype=np.float32).view(np.uint32))
    return Generator().manual_seed(bits).numpy


def _dtype(op: str, code, default: np.dtype, kinds: str = "f") -> np.dtype:
    if code is None:
        return default
    try:
        dtype = np.dtype(onnx.helper.tensor_dtype_to_np_dtype(code))
    except (KeyError, TypeError, ValueError):
        dtype = None
    if dtype is None or dtype.kind not in kinds:
        raise OnnxImportError(f"{op}: dtype {code} is not supported here")
    return dtype


def _like_dtype(op: str, x: Tensor, dtype) -> np.dtype:
    if dtype is not None:
        return _dtype(op, dtype, np.dtype(np.float32))
    if x._data.dtype.kind != "f":
        raise OnnxImportError(f"{op}: input of {x._data.dtype} elements needs a float dtype")
    return x._data.dtype


def _uniform(shape, dtype, low, high, seed) -> Tensor:
    values = _stream(seed).uniform(low, high, size=tuple(shape))
    return wrap(values.astype(dtype))


def _normal(shape, dtype, mean, scale, seed) -> Tensor:
    values = _stream(seed).normal(mean, scale, size=tuple(shape))
    return wrap(values.astype(dtype))


def _shape(op: str, shape) -> tuple[int, ...]:
    if shape is None:
        raise OnnxImportError(f"{op}: the shape attribute is required")
    return check_shape([int(d) for d in shape], f"{op} output")


@register("RandomUniform", 1, 22, differentiable=False)
def random_uniform(*, dtype=1, high=1.0, low=0.0, seed=None, shape=None) -> Tensor:
    out = _dtype("RandomUniform", dtype, np.dtype(np.float32))
    return _uniform(_shape("RandomUniform", shape), out, low, high, seed)


@register("RandomNormal", 1, 22, differentiable=False)
def random_normal(*, dtype=1, mean=0.0, scale=1.0, seed=None, shape=None) -> Tensor:
    out = _dtype("RandomNormal", dtype, np.dtype(np.float32))
    return _normal(_shape("RandomNormal", shape), out, mean, scale, seed)


@register("RandomUniformLike", 1, 22)
def random_uniform_like(x: Tensor, *, dtype=None, high=1.0, low=0.0, seed=None) -> Tensor:
    return _uniform(x.shape, _like_dtype("RandomUniformLike", x, dtype), low, high, seed)


@register("RandomNormalLike", 1, 22)
def random_normal_like(x: Tensor, *, dtype=None, mean=0.0, scale=1.0, seed=None) -> Tensor:
    return _normal(x.shape, _like_dtype("RandomNormalLike", x, dtype), mean, scale, seed)


@register("Bernoulli", 15, 22, differentiable=False)
def bernoulli(x: Tensor, *, dtype=None, seed=None) -> Tensor:
    """1 with probability ``x`` (each element), else 0; the input's type unless ``dtype``."""
    p = np.asarray(x._data)
    if p.dtype.kind != "f":
        raise ShapeError(f"Bernoulli: probabilities must be float, got {p.dtype}")
    out = _dtype("Bernoulli", dtype, p.dtype, kinds="fiub")
    return wrap((_stream(seed).random(p.shape) < p).astype(out))


@register("Multinomial", 7, 22, differentiable=False)
def multinomial(x: Tensor, *, dtype=6, sample_size=1, seed=None) -> Tensor:
    """(batch, classes) unnormalised log-probabilities → (batch, sample_size) class indices,
    drawn with replacement; int32 unless ``dtype`` says int64."""
    logits = np.asarray(x._data, dtype=np.float64)
    if logits.ndim != 2 or logits.shape[1] < 1:
        raise ShapeError(f"Multinomial: input must be (batch, classes), got {list(logits.shape)}")
    out = _dtype("Multinomial", dtype, np.dtype(np.int32), kinds="i")
    if out not in (np.int32, np.int64):
        raise OnnxImportError(f"Multinomial: dtype must be int32 or int64, got {out}")
    p = np.exp(logits - logits.max(axis=1, keepdims=True))
    cdf = np.cumsum(p, axis=1)
    cdf /= cdf[:, -1:]
    u = _stream(seed).random((logits.shape[0], int(sample_size)))
    # b s, b c -> b s: the first class whose cumulative probability exceeds u
    draws = (u[:, :, None] >= cdf[:, None, :]).sum(axis=2)
    return wrap(np.minimum(draws, logits.shape[1] - 1).astype(out))
