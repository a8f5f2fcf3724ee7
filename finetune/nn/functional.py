"""``torch.nn.functional``: the stateless forms of the layers and losses.

Each function checks its arguments (raising ``ShapeError`` with both shapes before numpy can
fail) and calls one primitive: ``autograd/nn_ops.py`` for linear, batch norm, dropout and
losses, ``autograd/conv.py`` for convolution and pooling, ``autograd/ops.py`` for the rest.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from .. import functions, random
from ..autograd import engine, nn_ops, ops, resample
from ..autograd.function import is_tracing
from ..errors import DataError, ShapeError
from ..parallel import elementwise
from ..tensor import Tensor

_IntOrTuple = int | Sequence[int]
_SPATIAL_NAMES = {1: "L", 2: "H, W", 3: "D, H, W"}


def _ntuple(value: _IntOrTuple, n: int, name: str = "argument") -> tuple[int, ...]:
    if isinstance(value, (int, np.integer)):
        return (int(value),) * n
    value = tuple(int(v) for v in value)
    if len(value) == 1:
        return value * n
    if len(value) != n:
        raise ShapeError(f"expected {name} to be a single int or a tuple of {n} ints, got {value}")
    return value


def _shape(x: Tensor) -> list[int]:
    return list(x.shape)


# -- linear ----------------------------------------------------------------------------------------


def embedding(
    input: Tensor,
    weight: Tensor,
    padding_idx: int | None = None,
    max_norm: float | None = None,
    norm_type: float = 2.0,
    scale_grad_by_freq: bool = False,
    sparse: bool = False,
) -> Tensor:
    """Rows of ``weight`` picked by the integer ``input``; ``max_norm`` first rescales, in place,
    the picked rows whose ``norm_type``-norm exceeds it (as PyTorch does). ``sparse=True``
    gives a dense gradient: optimizers here take dense gradients only."""
    if not isinstance(input, Tensor):
        input = Tensor._from_array(np.asarray(input))
    indices = input._data
    if indices.dtype.kind not in "iu":
        raise ShapeError(
            f"Expected tensor for argument #1 'indices' to have an integer type; got {input.dtype}"
        )
    num = weight.shape[0]
    if indices.size and (indices.min() < 0 or indices.max() >= num):
        raise ShapeError(
            f"index out of range in self: indices span [{indices.min()}, {indices.max()}] for "
            f"a table of {num} rows"
        )
    padding_idx = _padding_index(padding_idx, num)
    if max_norm is not None:
        with engine.no_grad():
            rows = np.unique(indices)
            table = weight._data
            norms = np.linalg.norm(table[rows], ord=norm_type, axis=1)
            over = norms > max_norm
            table[rows[over]] *= (max_norm / (norms[over] + 1e-7))[:, None].astype(table.dtype)
            weight._version.value += 1
    return nn_ops.Embedding.apply(
        weight, input, padding_idx=padding_idx, scale_grad_by_freq=scale_grad_by_freq
    )


def _padding_index(padding_idx: int | None, num: int) -> int | None:
    """``padding_idx`` as a row of a table of ``num`` rows (negative counts from the end)."""
    if padding_idx is None:
        return None
    if not -num <= padding_idx < num:
        raise ShapeError(f"Padding_idx must be within num_embeddings ({num}), got {padding_idx}")
    return padding_idx % num


def linear(input: Tensor, weight: Tensor, bias: Tensor | None = None) -> Tensor:
    """``input @ weight.T + bias`` as one node; a frozen weight gets no gradient computed."""
    if input.ndim == 0 or input.shape[-1] != weight.shape[-1]:
        rows = math.prod(input.shape[:-1]) if input.ndim else 1
        cols = input.shape[-1] if input.ndim else 1
        raise ShapeError(
            f"mat1 and mat2 shapes cannot be multiplied ({rows}x{cols} and "
            f"{weight.shape[1]}x{weight.shape[0]})"
        )
    if input.ndim == 2:
        primitive = nn_ops.Linear if bias is not None else nn_ops.LinearNoBias
    else:
        primitive = nn_ops.LinearNd if bias is not None else nn_ops.LinearNdNoBias
    return primitive.apply(input, weight, bias)


# -- batch norm ------------------------------------------------------------------------------------


def _writable_buffer(buffer: Tensor | None) -> Tensor | None:
    """Running statistics are updated in place; a read-only array (a loaded file) is copied once."""
    if buffer is not None:
        if not buffer._data.flags.writeable:
            buffer._data = buffer._data.copy()
        buffer._version.value += 1
    return buffer


def batch_norm(
    input: Tensor,
    running_mean: Tensor | None,
    running_var: Tensor | None,
    weight: Tensor | None = None,
    bias: Tensor | None = None,
    training: bool = False,
    momentum: float = 0.1,
    eps: float = 1e-5,
) -> Tensor:
    """Normalise each channel of ``(N, C, *)`` input: batch statistics when training (updating
    the running ones), running statistics otherwise."""
    if input.ndim < 2:
        raise ShapeError(f"batch_norm expects input of shape (N, C, *), got {_shape(input)}")
    channels = input.shape[1]
    for name, t in (
        ("running_mean", running_mean),
        ("running_var", running_var),
        ("weight", weight),
        ("bias", bias),
    ):
        if t is not None and t.numel() != channels:
            raise ShapeError(
                f"batch_norm: {name} should contain {channels} elements (the channels of input "
                f"{_shape(input)}), not {t.numel()}"
            )
    if training or running_mean is None or running_var is None:
        return nn_ops.BatchNormTrain.apply(
            input,
            weight,
            bias,
            _writable_buffer(running_mean) if training else None,
            _writable_buffer(running_var) if training else None,
            momentum=0.0 if momentum is None else float(momentum),
            eps=float(eps),
        )
    return nn_ops.BatchNormEval.apply(
        input, weight, bias, running_mean, running_var, eps=float(eps)
    )


# -- convolution and pooling -----------------------------------------------------------------------


def layer_norm(
    input: Tensor,
    normalized_shape: int | Sequence[int],
    weight: Tensor | None = None,
    bias: Tensor | None = None,
    eps: float = 1e-5,
) -> Tensor:
    """Normalise over the trailing ``normalized_shape`` dims of each sample (biased variance)."""
    shape = (normalized_shape,) if isinstance(normalized_shape, int) else tuple(normalized_shape)
    if tuple(input.shape[input.ndim - len(shape) :]) != shape or len(shape) > input.ndim:
        raise ShapeError(
            f"layer_norm: normalized_shape {list(shape)} does not match the trailing dims of "
            f"input of shape {_shape(input)}"
        )
    fused = input._data.dtype in (np.float32, np.float64) and all(
        p is None or (tuple(p.shape) == shape and p._data.dtype == input._data.dtype)
        for p in (weight, bias)
    )
    if fused and input.numel() > 0:
        return nn_ops.LayerNorm.apply(input, weight, bias, dims=len(shape), eps=eps)
    dims = tuple(range(input.ndim - len(shape), input.ndim))
    centered = input - functions.mean(input, dim=dims, keepdim=True)
    var = functions.mean(centered * centered, dim=dims, keepdim=True)
    out = centered / functions.sqrt(var + eps)
    if weight is not None:
        out = out * weight
    return out if bias is None else out + bias


def _channel_view(t: Tensor, ndim: int) -> Tensor:
    """A per-channel ``(C,)`` tensor shaped ``(C, 1, ...)`` to broadcast against ``(N, C, *)``."""
    return functions.reshape(t, (t.shape[0],) + (1,) * (ndim - 2))


def _standardize(input: Tensor, dims: tuple[int, ...], eps: float) -> Tensor:
    """``(x - mean) / sqrt(var + eps)`` over ``dims`` (biased variance)."""
    centered = input - functions.mean(input, dim=dims, keepdim=True)
    var = functions.mean(centered * centered, dim=dims, keepdim=True)
    return centered * functions.rsqrt(var + eps)


def group_norm(
    input: Tensor,
    num_groups: int,
    weight: Tensor | None = None,
    bias: Tensor | None = None,
    eps: float = 1e-5,
) -> Tensor:
    """Normalise each group of ``C / num_groups`` channels of ``(N, C, *)`` input per sample;
    ``weight`` and ``bias`` are per channel."""
    if input.ndim < 2 or num_groups < 1 or input.shape[1] % num_groups:
        raise ShapeError(
            f"group_norm: expected input of shape (N, C, *) with C divisible by num_groups="
            f"{num_groups}, got {_shape(input)}"
        )
    n = input.shape[0]
    grouped = functions.reshape(input, (n, num_groups, -1))
    out = functions.reshape(_standardize(grouped, (2,), eps), tuple(input.shape))
    if weight is not None:
        out = out * _channel_view(weight, input.ndim)
    return out if bias is None else out + _channel_view(bias, input.ndim)


def instance_norm(
    input: Tensor,
    running_mean: Tensor | None = None,
    running_var: Tensor | None = None,
    weight: Tensor | None = None,
    bias: Tensor | None = None,
    use_input_stats: bool = True,
    momentum: float = 0.1,
    eps: float = 1e-5,
) -> Tensor:
    """Normalise each channel of each sample of ``(N, C, *)`` input over its spatial dims.
    With ``use_input_stats`` the running statistics (when given) are updated in place with the
    batch mean of the per-instance statistics (unbiased variance), as PyTorch does."""
    if input.ndim < 3:
        raise ShapeError(f"instance_norm expects input of shape (N, C, *), got {_shape(input)}")
    dims = tuple(range(2, input.ndim))
    if use_input_stats:
        out = _standardize(input, dims, eps)
        if running_mean is not None and running_var is not None:
            data = input._data
            count = math.prod(data.shape[2:])
            mean = data.mean(axis=dims).mean(axis=0)
            var = data.var(axis=dims, ddof=1 if count > 1 else 0).mean(axis=0)
            for buffer, value in ((running_mean, mean), (running_var, var)):
                buffer = _writable_buffer(buffer)
                buffer._data *= 1 - momentum
                buffer._data += (momentum * value).astype(buffer._data.dtype)
    else:
        if running_mean is None or running_var is None:
            raise ShapeError("instance_norm: use_input_stats=False needs running statistics")
        scale = functions.rsqrt(_channel_view(running_var, input.ndim) + eps)
        out = (input - _channel_view(running_mean, input.ndim)) * scale
    if weight is not None:
        out = out * _channel_view(weight, input.ndim)
    return out if bias is None else out + _channel_view(bias, input.ndim)


def rms_norm(
    input: Tensor,
    normalized_shape: int | Sequence[int],
    weight: Tensor | None = None,
    eps: float | None = None,
) -> Tensor:
    """``x / sqrt(mean(x^2) + eps)`` over the trailing ``normalized_shape`` dims; ``eps=None``
    is the machine epsilon of the input's dtype (PyTorch's default)."""
    shape = (normalized_shape,) if isinstance(normalized_shape, int) else tuple(normalized_shape)
    if len(shape) > input.ndim or tuple(input.shape[input.ndim - len(shape) :]) != shape:
        raise ShapeError(
            f"rms_norm: normalized_shape {list(shape)} does not match the trailing dims of "
            f"input of shape {_shape(input)}"
        )
    if eps is None:
        eps = float(np.finfo(input._data.dtype).eps)
    dims = tuple(range(input.ndim - len(shape), input.ndim))
    out = input * functions.rsqrt(functions.mean(input * input, dim=dims, keepdim=True) + eps)
    return out if weight is None else out * weight


def _conv_padding(padding, kernel: tuple, dilation: tuple, stride: tuple) -> tuple:
    """``int``, tuple, ``'valid'`` or ``'same'`` → one ``(before, after)`` pair per dimension."""
    if isinstance(padding, str):
        if padding == "valid":
            return ((0, 0),) * len(kernel)
        if padding != "same":
            raise ValueError(
                f"Invalid padding string '{padding}', should be one of ('valid', 'same')"
            )
        if any(s != 1 for s in stride):
            raise ValueError("padding='same' is not supported for strided convolutions")
        totals = [d * (k - 1) for k, d in zip(kernel, dilation)]
        return tuple((t // 2, t - t // 2) for t in totals)
    return tuple((p, p) for p in _ntuple(padding, len(kernel), "padding"))


def _convnd(input, weight, bias, stride, padding, dilation, groups, spatial: int) -> Tensor:
    from ..autograd import conv

    name = f"conv{spatial}d"
    if input.ndim != spatial + 2:
        hint = " (add a batch dimension with x.unsqueeze(0))" if input.ndim == spatial + 1 else ""
        raise ShapeError(
            f"{name} expects a {spatial + 2}-D input (N, C, {_SPATIAL_NAMES[spatial]}), "
            f"got shape {_shape(input)}{hint}"
        )
    if weight.ndim != spatial + 2:
        raise ShapeError(f"{name}: weight should be {spatial + 2}-D, got shape {_shape(weight)}")
    out_channels, in_per_group = weight.shape[0], weight.shape[1]
    if input.shape[1] != in_per_group * groups:
        raise ShapeError(
            f"Given groups={groups}, weight of size {_shape(weight)}, expected input"
            f"{_shape(input)} to have {in_per_group * groups} channels, but got {input.shape[1]} "
            "channels instead"
        )
    if out_channels % groups:
        raise ShapeError(
            f"{name}: out_channels ({out_channels}) must be divisible by groups ({groups})"
        )
    kernel = tuple(weight.shape[2:])
    stride = _ntuple(stride, spatial, "stride")
    dilation = _ntuple(dilation, spatial, "dilation")
    pads = _conv_padding(padding, kernel, dilation, stride)
    padded = [s + lo + hi for s, (lo, hi) in zip(input.shape[2:], pads)]
    effective = [d * (k - 1) + 1 for k, d in zip(kernel, dilation)]
    if any(p < e for p, e in zip(padded, effective)):
        raise ShapeError(
            f"{name}: calculated padded input size per channel: ({' x '.join(map(str, padded))}). "
            f"Kernel size: ({' x '.join(map(str, effective))}). Kernel size can't be greater than "
            f"actual input size (input {_shape(input)}, weight {_shape(weight)})"
        )
    if bias is not None and bias.shape != (out_channels,):
        raise ShapeError(f"{name}: bias should have shape [{out_channels}], got {_shape(bias)}")
    return conv.conv(
        input, weight, bias, stride=stride, padding=pads, dilation=dilation, groups=groups
    )


def conv2d(
    input: Tensor,
    weight: Tensor,
    bias: Tensor | None = None,
    stride: _IntOrTuple = 1,
    padding: _IntOrTuple | str = 0,
    dilation: _IntOrTuple = 1,
    groups: int = 1,
) -> Tensor:
    """2-D convolution of ``(N, C, H, W)`` input with ``(O, C/groups, kH, kW)`` weights."""
    return _convnd(input, weight, bias, stride, padding, dilation, groups, 2)


def conv1d(
    input: Tensor,
    weight: Tensor,
    bias: Tensor | None = None,
    stride: _IntOrTuple = 1,
    padding: _IntOrTuple | str = 0,
    dilation: _IntOrTuple = 1,
    groups: int = 1,
) -> Tensor:
    """1-D convolution of ``(N, C, L)`` input with ``(O, C/groups, k)`` weights."""
    return _convnd(input, weight, bias, stride, padding, dilation, groups, 1)


def _conv_transposend(
    input, weight, bias, stride, padding, output_padding, groups, dilation, spatial: int
) -> Tensor:
    from ..autograd import conv

    name = f"conv_transpose{spatial}d"
    if input.ndim != spatial + 2 or weight.ndim != spatial + 2:
        raise ShapeError(
            f"{name} expects a {spatial + 2}-D input (N, C, {_SPATIAL_NAMES[spatial]}) and "
            f"weight, got input {_shape(input)} and weight {_shape(weight)}"
        )
    if input.shape[1] != weight.shape[0] or groups < 1 or weight.shape[0] % groups:
        raise ShapeError(
            f"{name}: weight of shape {_shape(weight)} (in, out/groups, k...) with groups={groups}"
            f" does not fit input of shape {_shape(input)}"
        )
    out_channels = weight.shape[1] * groups
    if bias is not None and bias.shape != (out_channels,):
        raise ShapeError(f"{name}: bias should have shape [{out_channels}], got {_shape(bias)}")
    stride = _ntuple(stride, spatial, "stride")
    dilation = _ntuple(dilation, spatial, "dilation")
    padding = _ntuple(padding, spatial, "padding")
    output_padding = _ntuple(output_padding, spatial, "output_padding")
    if any(o >= max(s, d) for o, s, d in zip(output_padding, stride, dilation)):
        raise ShapeError(
            f"{name}: output padding {output_padding} must be smaller than either stride "
            f"{stride} or dilation {dilation}"
        )
    pads = tuple((p, p - o) for p, o in zip(padding, output_padding))
    return conv.conv_transpose(input, weight, bias, stride, pads, dilation, groups)


def conv_transpose2d(
    input: Tensor,
    weight: Tensor,
    bias: Tensor | None = None,
    stride: _IntOrTuple = 1,
    padding: _IntOrTuple = 0,
    output_padding: _IntOrTuple = 0,
    groups: int = 1,
    dilation: _IntOrTuple = 1,
) -> Tensor:
    """2-D transposed convolution of ``(N, C, H, W)`` input with ``(C, O/groups, kH, kW)``
    weights: the input gradient of ``conv2d``."""
    return _conv_transposend(
        input, weight, bias, stride, padding, output_padding, groups, dilation, 2
    )


def conv_transpose1d(
    input: Tensor,
    weight: Tensor,
    bias: Tensor | None = None,
    stride: _IntOrTuple = 1,
    padding: _IntOrTuple = 0,
    output_padding: _IntOrTuple = 0,
    groups: int = 1,
    dilation: _IntOrTuple = 1,
) -> Tensor:
    """1-D transposed convolution of ``(N, C, L)`` input with ``(C, O/groups, k)`` weights."""
    return _conv_transposend(
        input, weight, bias, stride, padding, output_padding, groups, dilation, 1
    )


def _pool_args(name, input, kernel_size, stride, padding, dilation, spatial=2):
    if input.ndim != spatial + 2:
        raise ShapeError(
            f"{name} expects a 3-D or 4-D input ((C, H, W) or (N, C, H, W)), got shape "
            f"{_shape(input)}"
        )
    kernel = _ntuple(kernel_size, spatial, "kernel_size")
    stride = (
        kernel
        if stride is None or stride == [] or stride == ()
        else _ntuple(stride, spatial, "stride")
    )
    padding = _ntuple(padding, spatial, "padding")
    dilation = _ntuple(dilation, spatial, "dilation")
    for p, k, d in zip(padding, kernel, dilation):
        if p > (d * (k - 1) + 1) // 2:
            raise ShapeError(
                f"{name}: pad should be at most half of effective kernel size, but got pad={p}, "
                f"kernel_size={k} and dilation={d}"
            )
    return kernel, stride, padding, dilation


def max_pool2d(
    input: Tensor,
    kernel_size: _IntOrTuple,
    stride: _IntOrTuple | None = None,
    padding: _IntOrTuple = 0,
    dilation: _IntOrTuple = 1,
    ceil_mode: bool = False,
    return_indices: bool = False,
) -> Tensor:
    """Maximum over each window of ``(N, C, H, W)`` or ``(C, H, W)`` input; padding never wins."""
    from ..autograd import pooling

    if return_indices:
        raise NotImplementedError("max_pool2d(return_indices=True) is not supported")
    if input.ndim == 3:
        args = (kernel_size, stride, padding, dilation, ceil_mode)
        return functions.squeeze(max_pool2d(functions.unsqueeze(input, 0), *args), 0)
    kernel, stride, padding, dilation = _pool_args(
        "max_pool2d", input, kernel_size, stride, padding, dilation
    )
    return pooling.max_pool(
        input,
        kernel_size=kernel,
        stride=stride,
        padding=tuple((p, p) for p in padding),
        dilation=dilation,
        ceil_mode=ceil_mode,
    )


def avg_pool2d(
    input: Tensor,
    kernel_size: _IntOrTuple,
    stride: _IntOrTuple | None = None,
    padding: _IntOrTuple = 0,
    ceil_mode: bool = False,
    count_include_pad: bool = True,
    divisor_override: int | None = None,
) -> Tensor:
    """Mean over each window of ``(N, C, H, W)`` or ``(C, H, W)`` input."""
    from ..autograd import pooling

    if divisor_override is not None:
        raise NotImplementedError("avg_pool2d(divisor_override=...) is not supported")
    if input.ndim == 3:
        args = (kernel_size, stride, padding, ceil_mode, count_include_pad)
        return functions.squeeze(avg_pool2d(functions.unsqueeze(input, 0), *args), 0)
    kernel, stride, padding, _ = _pool_args("avg_pool2d", input, kernel_size, stride, padding, 1)
    return pooling.avg_pool(
        input,
        kernel_size=kernel,
        stride=stride,
        padding=tuple((p, p) for p in padding),
        ceil_mode=ceil_mode,
        count_include_pad=count_include_pad,
    )


_LINEAR_MODES = {"linear": 1, "bilinear": 2, "trilinear": 3}


def interpolate(
    input: Tensor,
    size: _IntOrTuple | None = None,
    scale_factor: float | Sequence[float] | None = None,
    mode: str = "nearest",
    align_corners: bool | None = None,
    recompute_scale_factor: bool | None = None,
    antialias: bool = False,
) -> Tensor:
    """Resize the spatial dimensions of ``input`` (N, C, *spatial) as ``torch.nn.functional.
    interpolate`` does, for the ``nearest``, ``linear``, ``bilinear`` and ``trilinear`` modes."""
    nd = input.ndim - 2
    if nd not in (1, 2, 3):
        raise ShapeError(
            f"interpolate: expected a 3-D, 4-D or 5-D input (N, C, *spatial), got shape "
            f"{list(input.shape)}"
        )
    if mode not in ("nearest", *_LINEAR_MODES):
        raise NotImplementedError(
            f"interpolate: mode {mode!r} is not supported (nearest, linear, bilinear, trilinear)"
        )
    if mode != "nearest" and _LINEAR_MODES[mode] != nd:
        raise NotImplementedError(
            f"Got {input.ndim}D input, but {mode} mode needs {_LINEAR_MODES[mode] + 2}D input"
        )
    if mode == "nearest" and align_corners is not None:
        raise ValueError(
            "align_corners option can only be set with the interpolating modes: "
            "linear | bilinear | bicubic | trilinear"
        )
    if antialias:
        raise NotImplementedError("interpolate: antialias=True is not supported")
    if (size is None) == (scale_factor is None):
        raise ValueError("only one of size or scale_factor should be defined")
    spatial = input.shape[2:]
    if size is not None:
        sizes = _tuple(size, nd, "size")
        scales = [None] * nd
    else:
        factors = _tuple(scale_factor, nd, "scale_factor")
        sizes = tuple(int(math.floor(s * f)) for s, f in zip(spatial, factors))
        scales = [None if recompute_scale_factor else 1.0 / f for f in factors]
    if any(s <= 0 for s in sizes):
        raise ShapeError(
            f"interpolate: output size {list(sizes)} of input {list(input.shape)} must be positive"
        )
    matrices = {
        2 + k: resample.axis_matrix(i, o, s, mode, bool(align_corners))
        for k, (i, o, s) in enumerate(zip(spatial, sizes, scales))
    }
    if mode == "nearest":  # the ONNX Resize computing the same, for the exporter
        resize = dict(
            mode="nearest", coordinate_transformation_mode="asymmetric", nearest_mode="floor"
        )
    else:
        # PyTorch's own rule is half_pixel (with a clamp at 0 that the edge taps make moot);
        # pytorch_half_pixel differs from it on axes resized to length 1
        transform = "align_corners" if align_corners else "half_pixel"
        resize = dict(mode="linear", coordinate_transformation_mode=transform)
    return resample.FUNCTIONS[(mode, nd)].apply(
        input,
        matrices=matrices,
        resize=resize,
        scales=None if scales[0] is None else (1.0, 1.0, *(1.0 / s for s in scales)),
    )


def _tuple(value, nd: int, what: str) -> tuple:
    values = tuple(value) if isinstance(value, (list, tuple)) else (value,) * nd
    if len(values) != nd:
        raise ValueError(f"interpolate: {what} needs {nd} value(s) for this input, got {value}")
    return values


def adaptive_avg_pool2d(input: Tensor, output_size: _IntOrTuple | None) -> Tensor:
    """Average into an ``output_size`` grid; ``(1, 1)`` is a plain mean over H and W."""
    if input.ndim not in (3, 4):
        raise ShapeError(
            f"adaptive_avg_pool2d expects (N, C, H, W) input, got shape {_shape(input)}"
        )
    h, w = input.shape[-2:]
    size = (output_size, output_size) if isinstance(output_size, int) else tuple(output_size)
    oh, ow = (h if size[0] is None else size[0]), (w if size[1] is None else size[1])
    if (oh, ow) == (1, 1):
        return functions.mean(input, dim=(-2, -1), keepdim=True)
    if (oh, ow) == (h, w):
        return input
    rows = [_adaptive_slice(i, h, oh) for i in range(oh)]
    cols = [_adaptive_slice(j, w, ow) for j in range(ow)]
    cells = [functions.mean(input[..., r, c], dim=(-2, -1)) for r in rows for c in cols]
    out = functions.stack(cells, dim=-1)
    return functions.reshape(out, (*input.shape[:-2], oh, ow))


def _adaptive_slice(i: int, size: int, out: int) -> slice:
    """PyTorch's adaptive window: ``[floor(i*size/out), ceil((i+1)*size/out))``."""
    return slice((i * size) // out, -((-(i + 1) * size) // out))


_GRID_SAMPLE_MODES = {"bilinear": "linear", "nearest": "nearest", "bicubic": "cubic"}


def grid_sample(
    input: Tensor,
    grid: Tensor,
    mode: str = "bilinear",
    padding_mode: str = "zeros",
    align_corners: bool | None = None,
) -> Tensor:
    """``input`` (N, C, *spatial) read at ``grid`` (N, *out, nd), coordinates in [-1, 1] with
    the last spatial axis first (x, y[, z]); 4-D or 5-D, differentiable in both. Points
    outside follow ``padding_mode`` as onnxruntime does (bicubic clamps its taps, not the
    point)."""
    from ..autograd import sampling

    sizes = tuple(input.shape[2:])
    nd = len(sizes)
    if mode not in _GRID_SAMPLE_MODES or padding_mode not in ("zeros", "border", "reflection"):
        raise ValueError(f"grid_sample: unknown mode {mode!r} or padding_mode {padding_mode!r}")
    if grid.ndim != nd + 2 or grid.shape[-1] != nd or grid.shape[0] != input.shape[0]:
        raise ShapeError(
            f"grid_sample: grid of shape {_shape(grid)} does not fit input of shape "
            f"{_shape(input)} (expected (N, *out, {nd}))"
        )
    out = tuple(grid.shape[1:-1])
    points = functions.flip(functions.reshape(grid, (input.shape[0], -1, nd)), [-1])  # x y -> h w
    size = Tensor._from_array(np.asarray(sizes, dtype=grid._data.dtype))
    if align_corners:
        points = (points + 1) / 2 * (size - 1)
        bounds = tuple((0.0, s - 1.0) for s in sizes)
    else:
        points = ((points + 1) * size - 1) / 2
        bounds = tuple((-0.5, s - 0.5) for s in sizes)
    y = sampling.sample(input, points, None, _GRID_SAMPLE_MODES[mode], padding_mode, bounds)
    return functions.reshape(y, (*input.shape[:2], *out))


def affine_grid(theta: Tensor, size: Sequence[int], align_corners: bool | None = None) -> Tensor:
    """The sampling grid (N, *spatial, nd) of the affine maps ``theta`` (N, nd, nd + 1) for an
    output of ``size`` (N, C, *spatial): each pixel's normalised coordinates (x first) times
    ``theta`` transposed; differentiable in ``theta``."""
    shape = tuple(int(v) for v in size)
    nd = len(shape) - 2
    if nd not in (2, 3) or tuple(theta.shape[1:]) != (nd, nd + 1) or theta.shape[0] != shape[0]:
        raise ShapeError(
            f"affine_grid: theta of shape {_shape(theta)} does not fit size {list(shape)}"
        )
    axes = []
    for s in reversed(shape[2:]):  # x (the last axis) first
        if align_corners:
            axes.append(np.linspace(-1.0, 1.0, s) if s > 1 else np.zeros(1))
        else:
            axes.append((np.arange(s) * 2.0 + 1.0) / s - 1.0)
    mesh = np.meshgrid(*axes[::-1], indexing="ij")[::-1]  # each spatial-shaped, x first
    base = np.stack([*mesh, np.ones(shape[2:])], axis=-1).reshape(-1, nd + 1)
    base = Tensor._from_array(base.astype(theta._data.dtype))
    grid = functions.matmul(base, functions.transpose(theta, 1, 2))  # l k, n k d -> n l d
    return functions.reshape(grid, (shape[0], *shape[2:], nd))


# -- activations -----------------------------------------------------------------------------------


def _inplace_ok(x: Tensor) -> bool:
    """In-place without a graph: overwrite the array directly and skip the copy (not while the
    ONNX exporter traces, which must see the op)."""
    if is_tracing():
        return False
    return not (engine.is_grad_enabled() and x.requires_grad) and x._data.flags.writeable


def relu(input: Tensor, inplace: bool = False) -> Tensor:
    if inplace:
        if _inplace_ok(input):
            elementwise(lambda o, a: np.maximum(a, 0, out=o), input._data, input._data)
            input._version.value += 1
            return input
        return input.relu_()
    return ops.Relu.apply(input)


def hardtanh(
    input: Tensor, min_val: float = -1.0, max_val: float = 1.0, inplace: bool = False
) -> Tensor:
    if inplace and _inplace_ok(input):
        np.clip(input._data, min_val, max_val, out=input._data)
        input._version.value += 1
        return input
    out = nn_ops.Hardtanh.apply(input, min_val=min_val, max_val=max_val)
    return input._inplace(out) if inplace else out


def relu6(input: Tensor, inplace: bool = False) -> Tensor:
    return hardtanh(input, 0.0, 6.0, inplace)


def leaky_relu(input: Tensor, negative_slope: float = 0.01, inplace: bool = False) -> Tensor:
    out = nn_ops.LeakyRelu.apply(input, negative_slope=negative_slope)
    return input._inplace(out) if inplace else out


def prelu(input: Tensor, weight: Tensor) -> Tensor:
    """``x`` where positive, ``weight * x`` elsewhere; a weight of more than one element holds
    one slope per channel (dim 1), as in PyTorch."""
    if weight.numel() != 1:
        if input.ndim < 2 or input.shape[1] != weight.numel():
            raise ShapeError(
                f"prelu: weight of {weight.numel()} elements needs an input with that many "
                f"channels in dim 1, got input of shape {list(input.shape)}"
            )
        weight = functions.reshape(weight, (-1,) + (1,) * (input.ndim - 2))
    return functions.relu(input) + functions.clamp(input, max=0) * weight


def elu(input: Tensor, alpha: float = 1.0, inplace: bool = False) -> Tensor:
    """``x`` where positive, ``alpha * (exp(x) - 1)`` elsewhere, as ``relu(x) + alpha *
    (exp(min(x, 0)) - 1)``: exact, never overflowing, and free of comparisons (which the
    exporter cannot trace)."""
    negative = functions.clamp(input, max=0.0)
    out = functions.relu(input) + (functions.exp(negative) - 1) * alpha
    return input._inplace(out) if inplace else out


def selu(input: Tensor, inplace: bool = False) -> Tensor:
    out = elu(input, 1.6732632423543772848170429916717) * 1.0507009873554804934193349852946
    return input._inplace(out) if inplace else out


def celu(input: Tensor, alpha: float = 1.0, inplace: bool = False) -> Tensor:
    """``x`` where positive, ``alpha * (exp(x / alpha) - 1)`` elsewhere."""
    negative = functions.clamp(input, max=0.0) / alpha
    out = functions.relu(input) + (functions.exp(negative) - 1) * alpha
    return input._inplace(out) if inplace else out


def hardsigmoid(input: Tensor, inplace: bool = False) -> Tensor:
    """``clamp(x / 6 + 1/2, 0, 1)``, one node (MobileNetV3's squeeze-and-excitation gate)."""
    out = nn_ops.HardSigmoid.apply(input)
    return input._inplace(out) if inplace else out


def hardswish(input: Tensor, inplace: bool = False) -> Tensor:
    """``x * clamp(x / 6 + 1/2, 0, 1)`` (MobileNetV3), one node."""
    out = nn_ops.HardSwish.apply(input)
    return input._inplace(out) if inplace else out


def softplus(input: Tensor, beta: float = 1.0, threshold: float = 20.0) -> Tensor:
    """``log(1 + exp(beta * x)) / beta``, linear where ``beta * x > threshold``. Written as
    ``max(z, 0) + log1p(exp(-|z|))``, which never overflows; at 0 its gradient is 1/2 because
    ``maximum`` splits a tie and ``|z|`` has slope 0 there."""
    z = input * beta if beta != 1 else input
    smooth = functions.maximum(z, 0) + functions.log1p(functions.exp(-functions.abs(z)))
    if beta != 1:
        smooth = smooth / beta
    if math.isinf(threshold):
        return smooth
    return functions.where(z > threshold, input, smooth)


def softsign(input: Tensor) -> Tensor:
    return input / (functions.abs(input) + 1)


def mish(input: Tensor, inplace: bool = False) -> Tensor:
    """``x * tanh(softplus(x))``."""
    smooth = functions.maximum(input, 0) + functions.log1p(functions.exp(-functions.abs(input)))
    out = input * functions.tanh(smooth)
    return input._inplace(out) if inplace else out


def sigmoid(input: Tensor) -> Tensor:
    return ops.Sigmoid.apply(input)


def silu(input: Tensor, inplace: bool = False) -> Tensor:
    """``x * sigmoid(x)`` (swish), one node."""
    out = nn_ops.Silu.apply(input)
    return input._inplace(out) if inplace else out


def tanh(input: Tensor) -> Tensor:
    return ops.Tanh.apply(input)


def gelu(input: Tensor, approximate: str = "none") -> Tensor:
    """``x * Phi(x)`` with the exact normal CDF, or its tanh approximation."""
    if approximate not in ("none", "tanh"):
        raise ValueError("approximate argument must be either none or tanh.")
    return nn_ops.Gelu.apply(input, approximate=approximate)


def _softmax_dim(ndim: int) -> int:
    """PyTorch's legacy choice when ``dim`` is not given."""
    return 0 if ndim in (0, 1, 3) else 1


def softmax(input: Tensor, dim: int | None = None, dtype=None) -> Tensor:
    return functions.softmax(input, _softmax_dim(input.ndim) if dim is None else dim, dtype)


def log_softmax(input: Tensor, dim: int | None = None, dtype=None) -> Tensor:
    return functions.log_softmax(input, _softmax_dim(input.ndim) if dim is None else dim, dtype)


def dropout(input: Tensor, p: float = 0.5, training: bool = True, inplace: bool = False) -> Tensor:
    """Zero each element with probability ``p`` and scale the rest by ``1 / (1 - p)``."""
    if not 0.0 <= p <= 1.0:
        raise ValueError(f"dropout probability has to be between 0 and 1, but got {p}")
    if not training or p == 0.0:
        return input
    dtype = input._data.dtype
    if p == 1.0:
        mask = np.zeros(input.shape, dtype=dtype)
    else:
        keep = random.generator().random(input.shape) >= p
        mask = keep.astype(dtype) * np.asarray(1.0 / (1.0 - p), dtype=dtype)
    out = nn_ops.Dropout.apply(input, mask)
    return input._inplace(out) if inplace else out


pad = functions.pad
flatten = functions.flatten


# -- losses ----------------------------------------------------------------------------------------


def one_hot(tensor: Tensor, num_classes: int = -1) -> Tensor:
    """int64 one-hot codes of class indices, a new last axis of ``num_classes`` (max + 1 if -1)."""
    data = tensor._data
    if data.dtype.kind not in "iu":
        raise ShapeError(
            f"one_hot is only applicable to index tensor, got dtype {data.dtype} with shape "
            f"{list(data.shape)}"
        )
    if data.size and data.min() < 0:
        raise ShapeError("Class values must be non-negative.")
    if num_classes == -1:
        if not data.size:
            raise ShapeError("Can not infer total number of classes from empty tensor.")
        num_classes = int(data.max()) + 1
    elif data.size and data.max() >= num_classes:
        raise ShapeError(
            f"Class values must be smaller than num_classes ({num_classes}); got {int(data.max())}"
        )
    out = np.zeros((*data.shape, num_classes), dtype=np.int64)
    np.put_along_axis(out, data[..., None].astype(np.intp), 1, axis=-1)
    return Tensor._from_array(out)


def _check_reduction(reduction: str) -> None:
    if reduction not in ("none", "mean", "sum"):
        raise ValueError(f"{reduction} is not a valid value for reduction")


def _reduce(loss: Tensor, reduction: str) -> Tensor:
    """An elementwise loss reduced as ``reduction`` asks ("none", "mean" or "sum")."""
    if reduction == "none":
        return loss
    return functions.mean(loss) if reduction == "mean" else functions.sum(loss)


def nll_loss(
    input: Tensor,
    target: Tensor,
    weight: Tensor | None = None,
    ignore_index: int = -100,
    reduction: str = "mean",
) -> Tensor:
    """Negative log-likelihood of class indices ``target`` under log-probabilities ``input``."""
    _check_reduction(reduction)
    target_data = target._data if isinstance(target, Tensor) else np.asarray(target)
    if target_data.dtype.kind not in "iu":
        raise DataError(
            f"nll_loss/cross_entropy expects integer class indices as target, got dtype "
            f"{target_data.dtype} with shape {list(target_data.shape)}"
        )
    if input.ndim == 1:
        expected = ()
    elif input.ndim >= 2:
        expected = (input.shape[0], *input.shape[2:])
    else:
        raise ShapeError("nll_loss expects input of shape (C,), (N, C) or (N, C, *), got []")
    if target_data.shape != expected:
        if input.ndim >= 2 and target_data.ndim >= 1 and target_data.shape[0] != input.shape[0]:
            raise ShapeError(
                f"Expected input batch_size ({input.shape[0]}) to match target batch_size "
                f"({target_data.shape[0]}) (input {_shape(input)}, "
                f"target {list(target_data.shape)})"
            )
        raise ShapeError(
            f"nll_loss: target shape {list(target_data.shape)} does not fit input shape "
            f"{_shape(input)}; expected target shape {list(expected)}"
        )
    n_classes = input.shape[1] if input.ndim > 1 else input.shape[0]
    weight_data = None
    if weight is not None:
        if weight.numel() != n_classes:
            raise ShapeError(
                f"nll_loss: weight should have {n_classes} elements (the classes of input "
                f"{_shape(input)}), got {weight.numel()}"
            )
        weight_data = weight._data.astype(input._data.dtype, copy=False)
    return nn_ops.NllLoss.apply(
        input, target_data, weight_data, reduction=reduction, ignore_index=int(ignore_index)
    )


def cross_entropy(
    input: Tensor,
    target: Tensor,
    weight: Tensor | None = None,
    size_average=None,
    ignore_index: int = -100,
    reduce=None,
    reduction: str = "mean",
    label_smoothing: float = 0.0,
) -> Tensor:
    """``nll_loss(log_softmax(input, 1), target)`` for class indices, or the soft-label form
    when ``target`` holds probabilities of the same shape as ``input``."""
    _check_reduction(reduction)
    if not 0.0 <= label_smoothing <= 1.0:
        raise ValueError(f"label_smoothing must be between 0.0 and 1.0. Got: {label_smoothing}")
    class_dim = 1 if input.ndim > 1 else 0
    n_classes = input.shape[class_dim]
    log_probs = functions.log_softmax(input, class_dim)
    if isinstance(target, Tensor) and target.is_floating_point() and target.shape == input.shape:
        return _soft_cross_entropy(log_probs, target, weight, reduction, label_smoothing, class_dim)
    loss = nll_loss(log_probs, target, weight, ignore_index, reduction)
    if label_smoothing == 0.0:
        return loss
    target_data = target._data if isinstance(target, Tensor) else np.asarray(target)
    ignored = target_data == ignore_index
    if weight is not None:
        view = [1] * input.ndim
        view[class_dim] = n_classes
        smooth = -functions.sum(log_probs * functions.reshape(weight, view), dim=class_dim)
    else:
        smooth = -functions.sum(log_probs, dim=class_dim)
    if ignored.any():
        smooth = functions.where(Tensor._from_array(ignored), 0.0, smooth)
    if reduction == "mean":
        if weight is not None:
            kept = target_data[~ignored]
            denominator = weight._data[kept].sum()
        else:
            denominator = (~ignored).sum()
        smooth = functions.sum(smooth) / float(denominator)
    elif reduction == "sum":
        smooth = functions.sum(smooth)
    return (1 - label_smoothing) * loss + smooth * (label_smoothing / n_classes)


def _soft_cross_entropy(log_probs, target, weight, reduction, label_smoothing, class_dim):
    if target.shape != log_probs.shape:
        raise ShapeError(
            f"cross_entropy with probability targets needs target shape {_shape(log_probs)}, "
            f"got {_shape(target)}"
        )
    n_classes = log_probs.shape[class_dim]
    if label_smoothing > 0:
        target = target * (1 - label_smoothing) + label_smoothing / n_classes
    product = log_probs * target
    if weight is not None:
        view = [1] * log_probs.ndim
        view[class_dim] = n_classes
        product = product * functions.reshape(weight, view)
    loss = -functions.sum(product, dim=class_dim)
    if reduction == "mean":
        return functions.sum(loss) / float(log_probs.numel() // n_classes)
    if reduction == "sum":
        return functions.sum(loss)
    return loss


def mse_loss(
    input: Tensor, target: Tensor, size_average=None, reduce=None, reduction: str = "mean"
) -> Tensor:
    """Mean squared error; shapes must match or broadcast (PyTorch warns, we broadcast too)."""
    _check_reduction(reduction)
    _check_broadcast("mse_loss", input, target)
    return nn_ops.MseLoss.apply(input, target, reduction=reduction)


def _check_broadcast(name: str, input: Tensor, target: Tensor) -> None:
    try:
        np.broadcast_shapes(tuple(input.shape), tuple(target.shape))
    except ValueError:
        raise ShapeError(
            f"{name}: input shape {_shape(input)} and target shape {_shape(target)} do not "
            "broadcast"
        ) from None


def l1_loss(
    input: Tensor, target: Tensor, size_average=None, reduce=None, reduction: str = "mean"
) -> Tensor:
    """Mean absolute error; shapes must match or broadcast."""
    _check_reduction(reduction)
    _check_broadcast("l1_loss", input, target)
    return _reduce(functions.abs(input - target), reduction)


def normalize(input: Tensor, p: float = 2.0, dim: int = 1, eps: float = 1e-12) -> Tensor:
    """Divide by the ``p``-norm along ``dim``, kept at least ``eps`` so zero vectors stay zero."""
    return input / functions.clamp(functions.norm(input, p, dim, keepdim=True), min=eps)


def binary_cross_entropy(
    input: Tensor,
    target: Tensor,
    weight: Tensor | None = None,
    size_average=None,
    reduce=None,
    reduction: str = "mean",
) -> Tensor:
    """Binary cross-entropy of probabilities ``input``; logs are clamped at -100 as in PyTorch."""
    _check_reduction(reduction)
    if target.shape != input.shape:
        raise ShapeError(
            f"binary_cross_entropy: target shape {_shape(target)} must equal input shape "
            f"{_shape(input)}"
        )
    if input.numel() and not ((input._data >= 0) & (input._data <= 1)).all():
        raise ShapeError("binary_cross_entropy: all elements of input should be between 0 and 1")
    log_p = functions.clamp(functions.log(input), min=-100.0)
    log_not_p = functions.clamp(functions.log(1 - input), min=-100.0)
    loss = -(target * log_p + (1 - target) * log_not_p)
    if weight is not None:
        loss = loss * weight
    return _reduce(loss, reduction)


def binary_cross_entropy_with_logits(
    input: Tensor,
    target: Tensor,
    weight: Tensor | None = None,
    size_average=None,
    reduce=None,
    reduction: str = "mean",
    pos_weight: Tensor | None = None,
) -> Tensor:
    """Sigmoid and binary cross-entropy in one stable step."""
    _check_reduction(reduction)
    if target.shape != input.shape:
        raise ShapeError(
            f"Target size ({target.shape}) must be the same as input size ({input.shape})"
        )
    return nn_ops.BinaryCrossEntropyWithLogits.apply(
        input,
        target,
        None if weight is None else weight._data,
        None if pos_weight is None else pos_weight._data,
        reduction=reduction,
    )
