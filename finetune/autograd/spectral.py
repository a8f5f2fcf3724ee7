"""The discrete Fourier transform on ONNX's real-pair layout (last axis: real, or real and
imaginary), as one ``Function``: numpy's FFT is O(n log n) where a composed DFT matrix product is
O(n^2) in time and memory, and the backward is the transform's adjoint, another FFT."""

from __future__ import annotations

import numpy as np

from .function import Function


def _complex(array: np.ndarray) -> np.ndarray:
    """..., 1|2 -> ... complex, in the input's precision (complex64 for float32 and float16),
    as onnxruntime and the ONNX reference compute."""
    dtype = np.complex128 if array.dtype == np.float64 else np.complex64
    z = array[..., 0].astype(dtype)
    if array.shape[-1] == 2:
        z += 1j * array[..., 1].astype(dtype)
    return z


def _resize(z: np.ndarray, axis: int, length: int) -> np.ndarray:
    """Zero-pad or truncate ``z`` along ``axis`` to ``length``."""
    have = z.shape[axis]
    if have >= length:
        return z.take(np.arange(length), axis=axis)
    pad = [(0, 0)] * z.ndim
    pad[axis] = (0, length - have)
    return np.pad(z, pad)


class DFT(Function):
    """``x`` (..., 1|2) → its DFT along ``axis`` (an axis of the complex view, not the last),
    of ``length`` points (input zero-padded or truncated), as (..., 2). ``inverse`` is the
    normalised inverse; ``onesided`` keeps the first ``length // 2 + 1`` frequencies. Both
    together are the real inverse (numpy's ``irfft``): a one-sided spectrum → (..., 1)."""

    @staticmethod
    def forward(ctx, x, *, axis: int, length: int, inverse: bool, onesided: bool):
        ctx.shape, ctx.dtype = x.shape, x.dtype
        ctx.axis, ctx.length, ctx.inverse, ctx.onesided = axis, length, inverse, onesided
        z = _complex(x)
        if inverse and onesided:
            return np.fft.irfft(z, n=length, axis=axis)[..., None].astype(x.dtype)
        z = _resize(z, axis, length)
        y = np.fft.ifft(z, axis=axis) if inverse else np.fft.fft(z, axis=axis)
        if onesided:
            y = y.take(np.arange(length // 2 + 1), axis=axis)
        return np.stack([y.real, y.imag], axis=-1).astype(x.dtype)

    @staticmethod
    def backward(ctx, grad):
        # the adjoint of the complex-linear map, on the real pairs: x_grad = W^H g
        if ctx.inverse and ctx.onesided:
            return _irfft_adjoint(ctx, grad[..., 0])
        g = _complex(grad)
        axis, length = ctx.axis, ctx.length
        if ctx.onesided:
            g = _resize(g, axis, length)
        # W = fft: W^H g = n * ifft(g); W = ifft: W^H g = fft(g) / n
        if ctx.inverse:
            z = np.fft.fft(g, axis=axis) / length
        else:
            z = np.fft.ifft(g, axis=axis) * length
        z = _resize(z, axis, ctx.shape[axis])
        if ctx.shape[-1] == 1:
            return z.real[..., None].astype(ctx.dtype)
        return np.stack([z.real, z.imag], axis=-1).astype(ctx.dtype)


def _irfft_adjoint(ctx, grad: np.ndarray) -> np.ndarray:
    """The adjoint of ``irfft`` (real-linear in the bins' real and imaginary parts): bin k of
    the input gets ``c_k / n * rfft(grad)_k``, c_k = 1 for the mean and Nyquist bins, else 2;
    the imaginary parts of those two bins, and bins past ``n // 2``, do not reach the output."""
    n, axis = ctx.length, ctx.axis
    z = np.fft.rfft(grad, n=n, axis=axis)
    weights = np.full(n // 2 + 1, 2.0)
    weights[0] = 1.0
    if n % 2 == 0:
        weights[-1] = 1.0
    shape = [1] * z.ndim
    shape[axis] = -1
    z = z * weights.reshape(shape) / n
    edges = [0] + ([n // 2] if n % 2 == 0 else [])
    index = [slice(None)] * z.ndim
    index[axis] = edges
    z[tuple(index)] = z[tuple(index)].real
    z = _resize(z, axis, ctx.shape[axis])
    if ctx.shape[-1] == 1:
        return z.real[..., None].astype(ctx.dtype)
    return np.stack([z.real, z.imag], axis=-1).astype(ctx.dtype)
