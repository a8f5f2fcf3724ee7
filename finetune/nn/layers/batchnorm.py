"""``BatchNorm1d`` and ``BatchNorm2d``: per-channel normalisation with running statistics."""

from __future__ import annotations

import numpy as np

from ...errors import ShapeError
from ...tensor import Tensor
from .. import functional as F
from .. import init
from ..module import Module
from ..parameter import Parameter


class _NormBase(Module):
    """What batch and instance norms share (PyTorch's ``_NormBase``): per-channel ``weight`` and
    ``bias`` with ``affine``, running statistics as buffers with ``track_running_stats``."""

    _optional_state = ("num_batches_tracked",)  # older and converted checkpoints lack it

    def __init__(
        self,
        num_features: int,
        eps: float = 1e-5,
        momentum: float | None = 0.1,
        affine: bool = True,
        track_running_stats: bool = True,
        device=None,
        dtype=None,
    ) -> None:
        super().__init__()
        self.num_features = num_features
        self.eps = eps
        self.momentum = momentum
        self.affine = affine
        self.track_running_stats = track_running_stats
        if affine:
            self.weight = Parameter(np.ones(num_features, dtype=np.float32))
            self.bias = Parameter(np.zeros(num_features, dtype=np.float32))
        else:
            self.register_parameter("weight", None)
            self.register_parameter("bias", None)
        if track_running_stats:
            self.register_buffer(
                "running_mean", Tensor._from_array(np.zeros(num_features, np.float32))
            )
            self.register_buffer(
                "running_var", Tensor._from_array(np.ones(num_features, np.float32))
            )
            self.register_buffer("num_batches_tracked", Tensor._from_array(np.array(0, np.int64)))
        else:
            self.register_buffer("running_mean", None)
            self.register_buffer("running_var", None)
            self.register_buffer("num_batches_tracked", None)
        if dtype is not None:
            self.to(dtype)

    def reset_running_stats(self) -> None:
        if self.track_running_stats:
            init.zeros_(self.running_mean)
            init.ones_(self.running_var)
            init.zeros_(self.num_batches_tracked)

    def reset_parameters(self) -> None:
        self.reset_running_stats()
        if self.affine:
            init.ones_(self.weight)
            init.zeros_(self.bias)

    def extra_repr(self) -> str:
        return (
            f"{self.num_features}, eps={self.eps}, momentum={self.momentum}, "
            f"affine={self.affine}, track_running_stats={self.track_running_stats}"
        )


class _BatchNorm(_NormBase):
    """Shared by the 1-D and 2-D forms, which differ only in the input ranks they accept."""

    _ranks: tuple[int, ...] = ()
    _layout = ""

    def forward(self, input: Tensor) -> Tensor:
        if input.ndim not in self._ranks:
            raise ShapeError(
                f"{self!r} expected {' or '.join(f'{r}D' for r in self._ranks)} input "
                f"({self._layout}), got input of shape {list(input.shape)}"
            )
        if input.shape[1] != self.num_features:
            raise ShapeError(
                f"{self!r} expected {self.num_features} channels in dimension 1, got input of "
                f"shape {list(input.shape)}"
            )
        factor = 0.0 if self.momentum is None else self.momentum
        if self.training and self.track_running_stats and self.num_batches_tracked is not None:
            self.num_batches_tracked.add_(1)
            if self.momentum is None:  # cumulative moving average
                factor = 1.0 / float(self.num_batches_tracked._data)
        use_batch_stats = self.training or self.running_mean is None
        tracked = not self.training or self.track_running_stats
        return F.batch_norm(
            input,
            self.running_mean if tracked else None,
            self.running_var if tracked else None,
            self.weight,
            self.bias,
            use_batch_stats,
            factor,
            self.eps,
        )


class BatchNorm1d(_BatchNorm):
    """Batch norm over ``(N, C)`` or ``(N, C, L)`` input."""

    _ranks = (2, 3)
    _layout = "N, C or N, C, L"


class BatchNorm2d(_BatchNorm):
    """Batch norm over ``(N, C, H, W)`` input."""

    _ranks = (4,)
    _layout = "N, C, H, W"
