"""Channels-last memory: ``n c h w`` arrays stored as ``n h w c``.

Two-dimensional convolutions return their output channels last, as PyTorch does for a
``channels_last`` input: an ``n c h w`` view (shape, indexing and values unchanged) of memory
laid out ``n h w c``. Their matrix products contract over the channels and produce channels, so
in this layout the im2col and Winograd copies move runs of whole channel vectors (64-512
floats) where the ``n c h w`` layout moved one window row of 2-14 pixels per inner loop, and
each product lands in its output without a transposing copy. Elementwise ufuncs keep their
inputs' layout, so the BatchNorm, ReLU and residual add between convolutions stay channels last
and the next convolution reads its input without a transpose. ``Tensor.contiguous()`` gives the
row-major copy when one is needed.
"""

from __future__ import annotations

import numpy as np

from ..parallel import split


def is_channels_last(x: np.ndarray) -> bool:
    """Whether the 4-d ``x`` is stored ``n h w c`` (and has more than one channel)."""
    return x.ndim == 4 and x.shape[1] > 1 and x.transpose(0, 2, 3, 1).flags.c_contiguous


def as_nchw(x_last: np.ndarray) -> np.ndarray:
    """``n h w c -> n c h w``, a view."""
    return x_last.transpose(0, 3, 1, 2)


def pad_last(out: np.ndarray, x: np.ndarray, pads: tuple, value: float = 0.0) -> None:
    """Write ``n c h w`` ``x`` (any layout; channels last reads fastest) padded with ``value``
    by ``((top, bottom), (left, right))`` into the start of the ``n H W c`` buffer ``out``,
    split over rows. Rows and columns of ``out`` past the padding's end take ``value`` too."""
    h, w = x.shape[2:]
    (top, _), (left, _) = pads
    out[:, :top] = value
    out[:, top + h :] = value
    out[:, top : top + h, :left] = value
    out[:, top : top + h, left + w :] = value
    interior, source = out[:, top : top + h, left : left + w], x.transpose(0, 2, 3, 1)
    split(lambda lo, hi: np.copyto(interior[:, lo:hi], source[:, lo:hi]), h, x.size)


def pixels_by_channel(a: np.ndarray) -> np.ndarray:
    """``n c h w -> (n h w) c``: every pixel's channel vector, a view of a channels-last array
    (a copy for any other layout)."""
    return a.transpose(0, 2, 3, 1).reshape(-1, a.shape[1])


def pixel_rows(a: np.ndarray) -> np.ndarray:
    """A channels-last ``n c h w`` array as ``(n h) w c`` rows of pixels: a view (a copy for
    any other layout)."""
    n, c, h, w = a.shape
    return a.transpose(0, 2, 3, 1).reshape(n * h, w, c)


def sum_rows(partial: np.ndarray) -> np.ndarray:
    """``(rows, c) -> (c,)``: partial sums added pairwise per channel. numpy adds the rows of a
    reduction over the leading axis one after another (a float32 sum of 10^5 rows loses about
    two more digits); transposed, they are its contiguous axis and it adds them in pairs."""
    return np.ascontiguousarray(partial.T).sum(axis=1)


def channel_sums_last(a: np.ndarray) -> np.ndarray:
    """``n c h w -> c``: each channel's sum of a channels-last array, summed along each image
    row, then the rows pairwise (``sum_rows``)."""
    rows = pixel_rows(a)
    partial = np.empty((len(rows), rows.shape[2]), dtype=a.dtype)
    split(lambda lo, hi: np.einsum("pwc->pc", rows[lo:hi], out=partial[lo:hi]), len(rows), a.size)
    return sum_rows(partial)


def along_row(v: np.ndarray, width: int) -> np.ndarray:
    """A per-channel vector repeated for each of an image row's ``width`` pixels, ``(w c,)``:
    against flat ``(n h) (w c)`` rows a per-channel scale or shift runs long inner loops (over
    ``(n h) w c`` the channels alone are the inner loop, 64 floats on a ResNet's first layers,
    about half the speed)."""
    return np.tile(v, width)
