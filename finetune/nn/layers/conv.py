"""``Conv1d`` and ``Conv2d``: learnable convolutions over ``(N, C, *spatial)`` input."""

from __future__ import annotations

import numpy as np

from ...tensor import Tensor
from .. import functional as F
from .. import init
from ..module import Module
from ..parameter import Parameter

_PADDING_MODES = ("zeros", "reflect", "replicate", "circular")


class _ConvNd(Module):
    """Shared by ``Conv1d`` and ``Conv2d``; ``_spatial`` is the number of spatial dimensions."""

    _spatial = 0

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size,
        stride=1,
        padding=0,
        dilation=1,
        groups: int = 1,
        bias: bool = True,
        padding_mode: str = "zeros",
        device=None,
        dtype=None,
    ) -> None:
        super().__init__()
        n = self._spatial
        if groups <= 0:
            raise ValueError("groups must be a positive integer")
        if in_channels % groups:
            raise ValueError("in_channels must be divisible by groups")
        if out_channels % groups:
            raise ValueError("out_channels must be divisible by groups")
        if padding_mode not in _PADDING_MODES:
            raise ValueError(
                f"padding_mode must be one of {_PADDING_MODES}, "
                f"but got padding_mode='{padding_mode}'"
            )
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.kernel_size = F._ntuple(kernel_size, n, "kernel_size")
        self.stride = F._ntuple(stride, n, "stride")
        if isinstance(padding, str):
            if padding not in ("same", "valid"):
                raise ValueError(
                    f"Invalid padding string '{padding}', should be one of ('valid', 'same')"
                )
            if padding == "same" and any(s != 1 for s in self.stride):
                raise ValueError("padding='same' is not supported for strided convolutions")
            self.padding = padding
        else:
            self.padding = F._ntuple(padding, n, "padding")
        self.dilation = F._ntuple(dilation, n, "dilation")
        self.output_padding = (0,) * n
        self.transposed = False
        self.groups = groups
        self.padding_mode = padding_mode
        shape = (out_channels, in_channels // groups, *self.kernel_size)
        self.weight = Parameter(np.empty(shape, dtype=np.float32))
        if bias:
            self.bias = Parameter(np.empty(out_channels, dtype=np.float32))
        else:
            self.register_parameter("bias", None)
        self.reset_parameters()
        if dtype is not None:
            self.to(dtype)

    def reset_parameters(self) -> None:
        init.default_weight_and_bias_(self.weight, self.bias)

    def _conv(self, input: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
        functional = F.conv2d if self._spatial == 2 else F.conv1d
        if self.padding_mode == "zeros":
            padding = self.padding
        else:
            pads = F._conv_padding(self.padding, self.kernel_size, self.dilation, self.stride)
            flat = [p for pair in reversed(pads) for p in pair]
            input = F.pad(input, flat, mode=self.padding_mode)
            padding = 0
        return functional(input, weight, bias, self.stride, padding, self.dilation, self.groups)

    def _check_input(self, input: Tensor) -> None:
        from ...errors import ShapeError

        n = self._spatial
        if input.ndim != n + 2:
            hint = " (add a batch dimension with x.unsqueeze(0))" if input.ndim == n + 1 else ""
            raise ShapeError(
                f"{self!r} expected {n + 2}D input (N, C, {'H, W' if n == 2 else 'L'}), got input "
                f"of shape {list(input.shape)}{hint}"
            )
        if input.shape[1] != self.in_channels:
            raise ShapeError(
                f"{self!r} expected input with {self.in_channels} channels in dimension 1, got "
                f"input of shape {list(input.shape)}"
            )

    def forward(self, input: Tensor) -> Tensor:
        self._check_input(input)
        return self._conv(input, self.weight, self.bias)

    def extra_repr(self) -> str:
        n = self._spatial
        text = (
            f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, "
            f"stride={self.stride}"
        )
        if self.padding != (0,) * n:
            text += f", padding={self.padding}"
        if self.dilation != (1,) * n:
            text += f", dilation={self.dilation}"
        if self.groups != 1:
            text += f", groups={self.groups}"
        if self.bias is None:
            text += ", bias=False"
        if self.padding_mode != "zeros":
            text += f", padding_mode={self.padding_mode}"
        return text


class Conv1d(_ConvNd):
    """Convolution over ``(N, C, L)`` input with ``(out, in/groups, k)`` weights."""

    _spatial = 1


class Conv2d(_ConvNd):
    """Convolution over ``(N, C, H, W)`` input with ``(out, in/groups, kH, kW)`` weights."""

    _spatial = 2
