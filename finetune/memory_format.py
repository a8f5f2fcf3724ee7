"""``torch.memory_format``: how a 4-d tensor's values are laid out in memory.

``contiguous_format`` is row-major ``n c h w``; ``channels_last`` keeps the ``n c h w`` shape
over ``n h w c`` memory, the layout 2-d convolutions answer in here (``autograd/layout.py``);
``preserve_format`` keeps whatever a tensor has. ``tensor.contiguous(memory_format=...)``,
``tensor.is_contiguous(memory_format=...)``, ``tensor.to(memory_format=...)`` and
``tensor.clone(memory_format=...)`` take them as in PyTorch.
"""

from __future__ import annotations

import numpy as np

from .errors import ShapeError


class memory_format:  # noqa: N801 - the PyTorch name
    __slots__ = ("name",)

    def __init__(self, name: str) -> None:
        self.name = name

    def __repr__(self) -> str:
        return f"torch.{self.name}"


contiguous_format = memory_format("contiguous_format")
channels_last = memory_format("channels_last")
preserve_format = memory_format("preserve_format")


def _rank_4(a: np.ndarray) -> None:
    if a.ndim != 4:
        raise ShapeError(
            f"required rank 4 tensor to use channels_last format, got shape {list(a.shape)}"
        )


def is_in(a: np.ndarray, layout: memory_format) -> bool:
    """Whether ``a`` is laid out as ``layout`` asks, with no gaps."""
    if layout is channels_last:
        _rank_4(a)
        return a.transpose(0, 2, 3, 1).flags.c_contiguous
    if layout is contiguous_format:
        return a.flags.c_contiguous
    raise ValueError(f"is_contiguous: unsupported memory format {layout!r}")


def copy_into(a: np.ndarray, layout: memory_format) -> np.ndarray:
    """A copy of ``a`` in ``layout`` (``preserve_format``: a's own axis order when it has no
    gaps, else row-major, as numpy's ``order="K"``)."""
    if layout is channels_last:
        _rank_4(a)
        return np.ascontiguousarray(a.transpose(0, 2, 3, 1)).transpose(0, 3, 1, 2)
    if layout is contiguous_format:
        return np.array(a, order="C", copy=True)
    if layout is preserve_format:
        return a.copy(order="K")
    raise ValueError(f"unsupported memory format {layout!r}")
