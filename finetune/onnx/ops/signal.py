"""Signal processing: DFT, STFT, the Hann / Hamming / Blackman windows and MelWeightMatrix.

DFT and STFT are linear in the signal and differentiable in it (and STFT in its window): DFT is
one FFT ``Function`` (``autograd/spectral.py``) whose backward is the adjoint FFT; STFT slices
frames, weights them by the window and calls it. The windows and the mel matrix are built from
their integer size inputs and have no gradient.
"""

from __future__ import annotations

import numpy as np
import onnx

from ... import functions as fn
from ...autograd.spectral import DFT
from ...errors import OnnxImportError, ShapeError
from ...tensor import Tensor
from ..export_ops import cannot_export, emits
from ..registry import register
from ._common import scalar, wrap


def _element_type(op: str, code: int) -> np.dtype:
    try:
        dtype = np.dtype(onnx.helper.tensor_dtype_to_np_dtype(code))
    except (KeyError, TypeError, ValueError):
        dtype = None
    if dtype is None or dtype.kind not in "iuf":
        raise OnnxImportError(f"{op}: output_datatype {code} is not a supported numeric type")
    return dtype


def _dft(x: Tensor, length: int | None, axis: int, inverse: int, onesided: int, op: str):
    if x.ndim < 2 or x.shape[-1] not in (1, 2):
        raise ShapeError(
            f"{op}: input of shape {list(x.shape)} must end in a dimension of 1 (real) or 2 "
            "(real, imaginary)"
        )
    rank = x.ndim
    if not -rank <= axis < rank:
        raise ShapeError(f"{op}: axis {axis} is out of range for a {rank}-D input")
    axis %= rank
    if axis == rank - 1:
        raise ShapeError(f"{op}: axis {axis} is the real/imaginary dimension, not a signal axis")
    if length is None:
        length = 2 * (x.shape[axis] - 1) if inverse and onesided else x.shape[axis]
    if length < 1:
        raise ShapeError(f"{op}: dft_length must be positive, got {length}")
    return DFT.apply(
        x, axis=axis, length=int(length), inverse=bool(inverse), onesided=bool(onesided)
    )


def _scalar_constant(b, value: int) -> str:
    """A 0-d int64 initializer (``b.constant`` makes 1-D arrays, which DFT's inputs are not)."""
    name = b.fresh("const")
    b.initializers.append(onnx.numpy_helper.from_array(np.asarray(value, dtype=np.int64), name))
    return name


@emits(DFT)
def _emit_dft(b, call, outs):
    """One DFT node: the axis as an attribute before opset 20, as an input from 20."""
    if b.opset < 17:
        raise cannot_export(call, f"DFT needs opset 17, not {b.opset}")
    (x,) = call.args
    kwargs = call.kwargs
    dtype = call.results[0]._data.dtype
    inputs = [b.operand(x, dtype), _scalar_constant(b, kwargs["length"])]
    flags = {"inverse": int(kwargs["inverse"]), "onesided": int(kwargs["onesided"])}
    if b.opset >= 20:
        b.node("DFT", [*inputs, _scalar_constant(b, kwargs["axis"])], outs, **flags)
    else:
        b.node("DFT", inputs, outs, axis=kwargs["axis"], **flags)


@register("DFT", 17)
def dft_17(x: Tensor, dft_length: Tensor | None = None, *, axis=1, inverse=0, onesided=0) -> Tensor:
    return _dft(x, scalar(dft_length), axis, inverse, onesided, "DFT")


@register("DFT", 20)
def dft_20(
    x: Tensor,
    dft_length: Tensor | None = None,
    axis: Tensor | None = None,
    *,
    inverse=0,
    onesided=0,
) -> Tensor:
    """The axis became an input; its default is the last signal axis (-2)."""
    a = -2 if axis is None else int(scalar(axis))
    return _dft(x, scalar(dft_length), a, inverse, onesided, "DFT")


@register("STFT", 17)
def stft(
    signal: Tensor,
    frame_step: Tensor,
    window: Tensor | None = None,
    frame_length: Tensor | None = None,
    *,
    onesided=1,
) -> Tensor:
    """``signal`` (batch, length, 1|2) → (batch, frames, bins, 2); frames of ``frame_length``
    samples every ``frame_step``, each weighted by ``window`` (ones if omitted)."""
    if signal.ndim != 3 or signal.shape[-1] not in (1, 2):
        raise ShapeError(
            f"STFT: signal of shape {list(signal.shape)} must be (batch, length, 1 or 2)"
        )
    step = int(scalar(frame_step))
    if window is not None and window.ndim != 1:
        raise ShapeError(f"STFT: window must be 1-D, got shape {list(window.shape)}")
    if frame_length is not None:
        size = int(scalar(frame_length))
    else:
        size = window.shape[0] if window is not None else signal.shape[1]
    if window is not None and window.shape[0] != size:
        raise ShapeError(f"STFT: window of {window.shape[0]} samples for frames of {size}")
    if step < 1 or not 1 <= size <= signal.shape[1]:
        raise ShapeError(
            f"STFT: frame_step {step} must be positive and frame_length {size} between 1 and "
            f"the signal's length {signal.shape[1]}"
        )
    if onesided and signal.shape[-1] == 2:
        raise ShapeError("STFT: onesided output needs a real signal (last dimension 1)")
    frames = 1 + (signal.shape[1] - size) // step
    # b t c -> b f s c, sample s of frame f at t = f * step + s
    index = np.arange(frames)[:, None] * step + np.arange(size)[None, :]
    framed = fn.getitem(signal, (slice(None), index))
    if window is not None:
        framed = fn.mul(framed, fn.reshape(window, size, 1))
    return DFT.apply(framed, axis=2, length=size, inverse=False, onesided=bool(onesided))


def _window(op: str, size: Tensor, periodic: int, output_datatype: int, terms: tuple) -> Tensor:
    """``sum_k terms[k] * cos(2 pi k n / N)``, N = size (periodic) or size - 1 (symmetric)."""
    n = int(scalar(size))
    if n < 0:
        raise ShapeError(f"{op}: size must be non-negative, got {n}")
    dtype = _element_type(op, output_datatype)
    denominator = n if periodic else n - 1
    phase = 2 * np.pi * np.arange(n, dtype=np.float64) / max(denominator, 1)
    values = sum(c * np.cos(k * phase) for k, c in enumerate(terms))
    return wrap(np.asarray(values, dtype=np.float64).reshape(n).astype(dtype))


@register("HannWindow", 17, differentiable=False)
def hann_window(size: Tensor, *, output_datatype=1, periodic=1) -> Tensor:
    return _window("HannWindow", size, periodic, output_datatype, (0.5, -0.5))


@register("HammingWindow", 17, differentiable=False)
def hamming_window(size: Tensor, *, output_datatype=1, periodic=1) -> Tensor:
    return _window("HammingWindow", size, periodic, output_datatype, (25 / 46, -21 / 46))


@register("BlackmanWindow", 17, differentiable=False)
def blackman_window(size: Tensor, *, output_datatype=1, periodic=1) -> Tensor:
    return _window("BlackmanWindow", size, periodic, output_datatype, (0.42, -0.5, 0.08))


@register("MelWeightMatrix", 17, differentiable=False)
def mel_weight_matrix(
    num_mel_bins: Tensor,
    dft_length: Tensor,
    sample_rate: Tensor,
    lower_edge_hertz: Tensor,
    upper_edge_hertz: Tensor,
    *,
    output_datatype=1,
) -> Tensor:
    """(dft_length // 2 + 1, num_mel_bins) triangular filters, evenly spaced on the mel scale
    between the edges; bin edges snap to FFT bins as the ONNX reference does."""
    bins, length, rate = (int(scalar(v)) for v in (num_mel_bins, dft_length, sample_rate))
    low, high = float(scalar(lower_edge_hertz)), float(scalar(upper_edge_hertz))
    if bins < 1 or length < 1 or rate < 1 or not 0 <= low < high:
        raise ShapeError(
            f"MelWeightMatrix: needs num_mel_bins, dft_length, sample_rate > 0 and 0 <= "
            f"lower_edge_hertz < upper_edge_hertz; got {bins}, {length}, {rate}, {low}, {high}"
        )
    spectrogram_bins = length // 2 + 1
    low_mel = 2595 * np.log1p(low / 700) / np.log(10)
    high_mel = 2595 * np.log1p(high / 700) / np.log(10)
    mels = np.arange(bins + 2) * ((high_mel - low_mel) / (bins + 2)) + low_mel
    hertz = 700 * np.expm1(mels / 2595 * np.log(10))
    edges = (((length + 1) * hertz) // rate).astype(np.int64)
    if edges[-1] >= spectrogram_bins + 1:
        raise ShapeError(
            f"MelWeightMatrix: upper_edge_hertz {high} is above the Nyquist frequency {rate / 2}"
        )
    out = np.zeros((spectrogram_bins + 1, bins))
    for i in range(bins):
        left, center, right = edges[i], edges[i + 1], edges[i + 2]
        if center == left:
            out[center, i] = 1
        else:
            j = np.arange(left, center + 1)
            out[j, i] = (j - left) / (center - left)
        if right > center:
            j = np.arange(center, right)
            out[j, i] = (right - j) / (right - center)
    return wrap(out[:spectrogram_bins].astype(_element_type("MelWeightMatrix", output_datatype)))
