"""``GroupNorm``, ``InstanceNorm1d/2d/3d`` and ``RMSNorm``: per-sample normalisation layers with
PyTorch's constructor arguments, parameter names and defaults (``LayerNorm`` is in layernorm.py)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from ...errors import ShapeError
from ...tensor import Tensor
from .. import functional as F
from .. import init
from ..module import Module
from ..parameter import Parameter
from .batchnorm import _NormBase


class _AffineNorm(Module):
    """GroupNorm's per-channel ``weight`` (ones) and ``bias`` (zeros) with ``affine``, else
    neither (the instance norms get theirs from ``_NormBase``, as batch norm does)."""

    affine: bool

    def _affine_parameters(self, channels: int) -> None:
        if self.affine:
            self.weight = Parameter(np.ones(channels, dtype=np.float32))
            self.bias = Parameter(np.zeros(channels, dtype=np.float32))
        else:
            self.register_parameter("weight", None)
            self.register_parameter("bias", None)

    def reset_parameters(self) -> None:
        if self.affine:
            init.ones_(self.weight)
            init.zeros_(self.bias)


class GroupNorm(_AffineNorm):
    """Normalise groups of ``num_channels / num_groups`` channels; per-channel affine."""

    def __init__(
        self,
        num_groups: int,
        num_channels: int,
        eps: float = 1e-5,
        affine: bool = True,
        device=None,
        dtype=None,
    ) -> None:
        super().__init__()
        if num_groups < 1 or num_channels % num_groups:
            raise ValueError(
                f"num_channels ({num_channels}) must be divisible by num_groups ({num_groups})"
            )
        self.num_groups = num_groups
        self.num_channels = num_channels
        self.eps = eps
        self.affine = affine
        self._affine_parameters(num_channels)
        if dtype is not None:
            self.to(dtype)

    def forward(self, input: Tensor) -> Tensor:
        if input.ndim < 2 or input.shape[1] != self.num_channels:
            raise ShapeError(
                f"GroupNorm expects input of shape (N, {self.num_channels}, *), got "
                f"{list(input.shape)}"
            )
        return F.group_norm(input, self.num_groups, self.weight, self.bias, self.eps)

    def extra_repr(self) -> str:
        return f"{self.num_groups}, {self.num_channels}, eps={self.eps}, affine={self.affine}"


class _InstanceNorm(_NormBase):
    """Shared by the 1-, 2- and 3-D forms, which differ only in the input ranks they accept;
    PyTorch's defaults: no affine parameters, no running statistics."""

    _spatial = 0

    def __init__(
        self,
        num_features: int,
        eps: float = 1e-5,
        momentum: float = 0.1,
        affine: bool = False,
        track_running_stats: bool = False,
        device=None,
        dtype=None,
    ) -> None:
        super().__init__(num_features, eps, momentum, affine, track_running_stats, device, dtype)

    def forward(self, input: Tensor) -> Tensor:
        batched = self._spatial + 2
        if input.ndim not in (batched - 1, batched):
            raise ShapeError(
                f"{type(self).__name__}: expected {batched - 1}D or {batched}D input, got "
                f"{input.ndim}D input of shape {list(input.shape)}"
            )
        unbatched = input.ndim == batched - 1
        x = input.unsqueeze(0) if unbatched else input
        if x.shape[1] != self.num_features and self.affine:
            raise ShapeError(
                f"{type(self).__name__}: expected {self.num_features} channels, got input of "
                f"shape {list(input.shape)}"
            )
        use_input_stats = self.training or not self.track_running_stats
        if self.training and self.track_running_stats:
            self.num_batches_tracked._data += 1
        out = F.instance_norm(
            x,
            self.running_mean,
            self.running_var,
            self.weight,
            self.bias,
            use_input_stats,
            self.momentum,
            self.eps,
        )
        return out.squeeze(0) if unbatched else out


class InstanceNorm1d(_InstanceNorm):
    _spatial = 1


class InstanceNorm2d(_InstanceNorm):
    _spatial = 2


class InstanceNorm3d(_InstanceNorm):
    _spatial = 3


class RMSNorm(Module):
    """``x / sqrt(mean(x^2) + eps) * weight`` over the trailing ``normalized_shape`` dims."""

    def __init__(
        self,
        normalized_shape: int | Sequence[int],
        eps: float | None = None,
        elementwise_affine: bool = True,
        device=None,
        dtype=None,
    ) -> None:
        super().__init__()
        if isinstance(normalized_shape, int):
            normalized_shape = (normalized_shape,)
        self.normalized_shape = tuple(normalized_shape)
        self.eps = eps
        self.elementwise_affine = elementwise_affine
        if elementwise_affine:
            self.weight = Parameter(np.ones(self.normalized_shape, dtype=np.float32))
        else:
            self.register_parameter("weight", None)
        if dtype is not None:
            self.to(dtype)

    def reset_parameters(self) -> None:
        if self.weight is not None:
            init.ones_(self.weight)

    def forward(self, input: Tensor) -> Tensor:
        return F.rms_norm(input, self.normalized_shape, self.weight, self.eps)

    def extra_repr(self) -> str:
        return (
            f"{self.normalized_shape}, eps={self.eps}, elementwise_affine={self.elementwise_affine}"
        )
