"""``Conv1d``, ``Conv2d`` and their transposes: learnable convolutions over ``(N, C, *spatial)``
input."""

from __future__ import annotations

import numpy as np

from ...errors import ShapeError
from ...tensor import Tensor
from .. import functional as F
from .. import init
from ..module import Module
from ..parameter import Parameter

_PADDING_MODES = ("zeros", "reflect", "replicate", "circular")


class _ConvBase(Module):
    """What a convolution and its transpose share, as PyTorch's ``_ConvNd``: the group checks,
    the hyper-parameters, the weight (``(out, in/groups, k...)``, or ``(in, out/groups, k...)``
    when ``transposed``), the input check and the repr. ``_spatial`` is the number of spatial
    dimensions."""

    _spatial = 0

    def _setup(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size,
        stride,
        padding,
        dilation,
        output_padding,
        transposed: bool,
        groups: int,
        bias: bool,
        padding_mode: str,
        dtype,
    ) -> None:
        n = self._spatial
        if groups <= 0:
            raise ValueError("groups must be a positive integer")
        if in_channels % groups:
            raise ValueError("in_channels must be divisible by groups")
        if out_channels % groups:
            raise ValueError("out_channels must be divisible by groups")
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.kernel_size = F._ntuple(kernel_size, n, "kernel_size")
        self.stride = F._ntuple(stride, n, "stride")
        self.padding = padding if isinstance(padding, str) else F._ntuple(padding, n, "padding")
        self.dilation = F._ntuple(dilation, n, "dilation")
        self.output_padding = F._ntuple(output_padding, n, "output_padding")
        self.transposed = transposed
        self.groups = groups
        self.padding_mode = padding_mode
        rows, columns = (in_channels, out_channels) if transposed else (out_channels, in_channels)
        shape = (rows, columns // groups, *self.kernel_size)
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

    def _check_input(self, input: Tensor) -> None:
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
        if self.output_padding != (0,) * n:
            text += f", output_padding={self.output_padding}"
        if self.groups != 1:
            text += f", groups={self.groups}"
        if self.bias is None:
            text += ", bias=False"
        if self.padding_mode != "zeros":
            text += f", padding_mode={self.padding_mode}"
        return text


class _ConvNd(_ConvBase):
    """Shared by ``Conv1d`` and ``Conv2d``."""

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
        if padding_mode not in _PADDING_MODES:
            raise ValueError(
                f"padding_mode must be one of {_PADDING_MODES}, "
                f"but got padding_mode='{padding_mode}'"
            )
        if isinstance(padding, str):
            if padding not in ("same", "valid"):
                raise ValueError(
                    f"Invalid padding string '{padding}', should be one of ('valid', 'same')"
                )
            if padding == "same" and any(s != 1 for s in F._ntuple(stride, self._spatial)):
                raise ValueError("padding='same' is not supported for strided convolutions")
        self._setup(
            in_channels,
            out_channels,
            kernel_size,
            stride,
            padding,
            dilation,
            0,
            False,
            groups,
            bias,
            padding_mode,
            dtype,
        )

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

    def forward(self, input: Tensor) -> Tensor:
        self._check_input(input)
        return self._conv(input, self.weight, self.bias)


class Conv1d(_ConvNd):
    """Convolution over ``(N, C, L)`` input with ``(out, in/groups, k)`` weights."""

    _spatial = 1


class Conv2d(_ConvNd):
    """Convolution over ``(N, C, H, W)`` input with ``(out, in/groups, kH, kW)`` weights."""

    _spatial = 2


class _ConvTransposeNd(_ConvBase):
    """Shared by ``ConvTranspose1d`` and ``ConvTranspose2d``: PyTorch's parameters, the weight
    ``(in, out/groups, k...)``."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size,
        stride=1,
        padding=0,
        output_padding=0,
        groups: int = 1,
        bias: bool = True,
        dilation=1,
        padding_mode: str = "zeros",
        device=None,
        dtype=None,
    ) -> None:
        super().__init__()
        if padding_mode != "zeros":
            raise ValueError(f'Only "zeros" padding mode is supported for {type(self).__name__}')
        if isinstance(padding, str):
            raise ValueError(f"{type(self).__name__} takes numeric padding, got {padding!r}")
        self._setup(
            in_channels,
            out_channels,
            kernel_size,
            stride,
            padding,
            dilation,
            output_padding,
            True,
            groups,
            bias,
            padding_mode,
            dtype,
        )

    def _output_padding(self, input: Tensor, output_size) -> tuple[int, ...]:
        """``output_padding``, or the one that makes the output ``output_size`` (PyTorch's
        ``forward(input, output_size)``)."""
        if output_size is None:
            return self.output_padding
        n = self._spatial
        size = tuple(output_size)[-n:]
        smallest = [
            (i - 1) * s - 2 * p + (k - 1) * d + 1
            for i, s, p, k, d in zip(
                input.shape[2:], self.stride, self.padding, self.kernel_size, self.dilation
            )
        ]
        extra = tuple(o - m for o, m in zip(size, smallest))
        if len(size) != n or any(not 0 <= e < s for e, s in zip(extra, self.stride)):
            raise ShapeError(
                f"{self!r}: requested an output size of {list(size)}, but valid sizes range from "
                f"{smallest} to {[m + s - 1 for m, s in zip(smallest, self.stride)]} (for an input "
                f"of {list(input.shape[2:])})"
            )
        return extra

    def forward(self, input: Tensor, output_size=None) -> Tensor:
        self._check_input(input)
        functional = F.conv_transpose2d if self._spatial == 2 else F.conv_transpose1d
        return functional(
            input,
            self.weight,
            self.bias,
            self.stride,
            self.padding,
            self._output_padding(input, output_size),
            self.groups,
            self.dilation,
        )


class ConvTranspose1d(_ConvTransposeNd):
    """Transposed convolution over ``(N, C, L)`` input with ``(in, out/groups, k)`` weights."""

    _spatial = 1


class ConvTranspose2d(_ConvTransposeNd):
    """Transposed convolution over ``(N, C, H, W)`` input with ``(in, out/groups, kH, kW)``
    weights."""

    _spatial = 2
