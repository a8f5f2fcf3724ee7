"""A channel shuffle as one unit of the inference plan (``plan.py``).

ShuffleNetV2 ends each block with ``torch.cat([a, b], 1)`` and a channel shuffle of two groups,
exported as ``Concat -> Reshape (n, 2, c/2, h, w) -> Transpose (0, 2, 1, 3, 4) -> Reshape (n, c,
h, w)``, and the next block takes the two halves of that with a ``Slice`` each (``chunk(2,
1)``). Node by node that is a copy for the Concat, another for the second Reshape (the
transposed view has no other shape), four calls that only make views, and a copy into each half
for the convolutions that read them: at batch 1 ~90 us of calls per block for a few
kilobytes. Channel ``k`` of the shuffled value is channel ``k // 2`` of ``a`` for an even ``k``
and of ``b`` for an odd one, so each half (or, without the slices, the whole) is ``a``'s and
``b``'s channels interleaved: ``ChannelShuffle`` writes them in one pass, channels last, straight
from the two inputs. Whenever the values are not that (other shapes or layouts, reshape targets
or slices that are not this shuffle's, a gradient to record) it runs the nodes it stands for.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from ..autograd import jit
from ..autograd.engine import is_grad_enabled
from ..autograd.layout import as_nchw, is_channels_last
from ..parallel import split
from ..tensor import Tensor


class ChannelShuffle:
    """``Concat(a, b) -> Reshape -> Transpose -> Reshape`` and, when ``halves``, the two
    ``Slice`` nodes taking its halves: called with ``a``, ``b``, the two reshape targets and
    the slices' other inputs (``counts`` of them each), gives the slices' outputs (or the
    shuffled value). ``runs`` are the nodes' own runs, in that order, for the cases the
    single pass does not cover; ``allowzero`` the reshapes' attributes."""

    __slots__ = ("runs", "halves", "counts", "allowzero", "_fits")

    def __init__(self, runs: list[Callable], halves: bool, counts: tuple, allowzero: tuple):
        self.runs, self.halves, self.counts, self.allowzero = runs, halves, counts, allowzero
        # the last (shape, reshape targets, slices) found to be this shuffle: the targets and
        # slices are a signature's folded values, the same tensors on every call
        self._fits: tuple | None = None

    def __call__(self, a, b, first, second, *slicing):
        out = self._interleaved(a, b, first, second, slicing)
        return self._nodes(a, b, first, second, slicing) if out is None else out

    def _nodes(self, a, b, first, second, slicing):
        """The nodes in turn."""
        concat, reshape, transpose, reshape_again, *slices = self.runs
        shuffled = reshape_again(transpose(reshape(concat(a, b), first)), second)
        if not self.halves:
            return shuffled
        lo = self.counts[0]
        return slices[0](shuffled, *slicing[:lo]), slices[1](shuffled, *slicing[lo:])

    def _interleaved(self, a, b, first, second, slicing):
        """The single pass, or None when the values are not a two-group shuffle of equal
        channels-last halves that it covers."""
        if type(a) is not Tensor or type(b) is not Tensor:
            return None
        x, y = a._data, b._data
        if x.shape != y.shape or x.dtype != y.dtype or x.ndim != 4 or x.shape[1] % 2:
            return None
        if is_grad_enabled() and (a.requires_grad or b.requires_grad):
            return None
        if not (is_channels_last(x) and is_channels_last(y)):
            return None
        if not self._shuffles(x.shape, first, second, slicing):
            return None
        k = x.shape[1]
        if not self.halves:
            return Tensor._from_array(_interleave(x, y, 0, k))
        return (
            Tensor._from_array(_interleave(x, y, 0, k // 2)),
            Tensor._from_array(_interleave(x, y, k // 2, k)),
        )

    def _shuffles(self, shape: tuple, first, second, slicing: tuple) -> bool:
        """Whether the reshape targets (and the slices) make this a two-group shuffle of two
        ``shape`` inputs: worked out once per signature."""
        from .ops._common import ints  # not at the top: the converters import the plan

        values = (first, second, *slicing)
        fits = self._fits
        if fits is not None and fits[0] == shape and all(a is b for a, b in zip(fits[1], values)):
            return True
        if not all(v is None or isinstance(v, Tensor) for v in values):
            return False
        n, k, h, w = shape
        c = 2 * k
        if _target(ints(first), (n, c, h, w), self.allowzero[0]) != (n, 2, k, h, w):
            return False
        if _target(ints(second), (n, k, 2, h, w), self.allowzero[1]) != (n, c, h, w):
            return False
        if self.halves:
            lo = self.counts[0]
            ranges = [_channels(c, *map(ints, part)) for part in (slicing[:lo], slicing[lo:])]
            if ranges != [(0, k), (k, c)]:
                return False
        self._fits = (shape, values)
        return True


def _interleave(x: np.ndarray, y: np.ndarray, lo: int, hi: int) -> np.ndarray:
    """``x``'s and ``y``'s channels ``lo:hi`` interleaved (``x``'s first), ``n 2(hi-lo) h w``
    stored channels last; ``x`` and ``y`` ``n c h w`` stored channels last. Split over rows;
    compiled when numba is loaded (numpy's copies into every second value took ~20 us for a
    28x28x24 half)."""
    n, c, h, w = x.shape
    out = np.empty((n * h * w, hi - lo, 2), dtype=x.dtype)
    x_rows, y_rows = (a.transpose(0, 2, 3, 1).reshape(-1, c) for a in (x, y))
    kernel = jit.compiled_if_loaded(_interleave_rows)

    def rows(r0: int, r1: int) -> None:
        if kernel is not None:
            kernel(x_rows[r0:r1], y_rows[r0:r1], out[r0:r1], lo)
            return
        np.copyto(out[r0:r1, :, 0], x_rows[r0:r1, lo:hi])
        np.copyto(out[r0:r1, :, 1], y_rows[r0:r1, lo:hi])

    split(rows, len(out), 2 * out.size)
    return as_nchw(out.reshape(n, h, w, 2 * (hi - lo)))


def _interleave_rows(x, y, out, lo) -> None:
    """``out[p, i] = (x[p, lo + i], y[p, lo + i])`` for every row ``p`` (compiled by ``jit``)."""
    for p in range(out.shape[0]):
        a, b, pairs = x[p, lo:], y[p, lo:], out[p]
        for i in range(pairs.shape[0]):
            pairs[i, 0] = a[i]
            pairs[i, 1] = b[i]


def _target(dims: tuple | None, source: tuple, allowzero: int) -> tuple | None:
    """What an ONNX Reshape of a ``source``-shaped value to ``dims`` gives (a 0 copies the
    dimension unless ``allowzero``, one -1 takes what is left), or None when it is not
    one."""
    if dims is None:
        return None
    dims = [source[i] if d == 0 and not allowzero and i < len(source) else d for i, d in
            enumerate(dims)]  # fmt: skip
    if dims.count(-1) == 1:
        known = int(np.prod([d for d in dims if d != -1]))
        if known <= 0 or int(np.prod(source)) % known:
            return None
        dims[dims.index(-1)] = int(np.prod(source)) // known
    return tuple(dims)


def _channels(c: int, starts=None, ends=None, axes=None, steps=None) -> tuple | None:
    """The channels ``(lo, hi)`` an ONNX Slice (opset 10 and later; its inputs as ints) of an
    ``n c h w`` value takes when it slices the channel axis alone with a step of 1, else
    None."""
    if starts is None or ends is None or axes is None:
        return None
    if len(starts) != 1 or len(ends) != 1 or axes not in ((1,), (-3,)):
        return None
    if steps is not None and steps != (1,):
        return None
    lo, hi = (v + c if v < 0 else v for v in (starts[0], ends[0]))
    return min(max(lo, 0), c), min(max(hi, 0), c)
