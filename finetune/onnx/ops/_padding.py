"""ONNX's window rules for convolution and pooling: kernel, strides and dilations per spatial
dimension, and padding from explicit ``pads`` or ``auto_pad``."""

from __future__ import annotations

from ...errors import OnnxImportError
from ..limits import check_shape


def window(
    op: str, n: int, kernel_shape, strides, dilations
) -> tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...]]:
    """``(kernel, strides, dilations)`` for ``n`` spatial dimensions (strides and dilations
    default to 1); OnnxImportError naming ``op`` unless each has ``n`` positive entries."""
    values = []
    for name, given in (
        ("kernel_shape", kernel_shape),
        ("strides", strides),
        ("dilations", dilations),
    ):
        value = tuple(int(v) for v in given) if given else (1,) * n
        if len(value) != n or any(v < 1 for v in value):
            raise OnnxImportError(
                f"{op}: {name} {list(value)} must have {n} positive entries (one per spatial "
                "dimension)"
            )
        values.append(value)
    return values[0], values[1], values[2]


def spatial_pads(
    op: str,
    auto_pad: str,
    pads,
    sizes: tuple[int, ...],
    kernel: tuple[int, ...],
    strides: tuple[int, ...],
    dilations: tuple[int, ...],
) -> tuple[tuple[int, int], ...]:
    """One ``(before, after)`` pair per spatial dimension.

    ``SAME_UPPER``/``SAME_LOWER`` pad so the output is ``ceil(size / stride)``, the odd pixel
    going after (UPPER) or before (LOWER); ``VALID`` pads nothing; ``NOTSET`` uses ``pads``,
    laid out as all the befores then all the afters.
    """
    n = len(kernel)
    if auto_pad in ("SAME_UPPER", "SAME_LOWER"):
        result = []
        for size, k, s, d in zip(sizes, kernel, strides, dilations):
            out = -(-size // s)
            total = max((out - 1) * s + (k - 1) * d + 1 - size, 0)
            small, large = total // 2, total - total // 2
            result.append((small, large) if auto_pad == "SAME_UPPER" else (large, small))
        return tuple(result)
    if auto_pad == "VALID":
        return ((0, 0),) * n
    if auto_pad != "NOTSET":
        raise OnnxImportError(
            f"{op}: unknown auto_pad {auto_pad!r} (NOTSET, SAME_UPPER, SAME_LOWER or VALID)"
        )
    pads = (0,) * (2 * n) if pads is None else tuple(int(p) for p in pads)
    if len(pads) != 2 * n or any(p < 0 for p in pads):
        raise OnnxImportError(f"{op}: pads {list(pads)} must have {2 * n} non-negative entries")
    return tuple((pads[i], pads[i + n]) for i in range(n))


def is_static(auto_pad: str) -> bool:
    """Whether the pads are known without the input's size."""
    return auto_pad in ("NOTSET", "VALID")


def check_padded(shape: tuple[int, ...], pairs: tuple[tuple[int, int], ...], what: str) -> None:
    """Refuse padding that would make the padded input (batch, channels, padded spatial sizes)
    exceed the size budget, before the kernel allocates it."""
    spatial = [size + lo + hi for size, (lo, hi) in zip(shape[2:], pairs)]
    check_shape([*shape[:2], *spatial], f"{what} padded input")
