"""ONNX's padding rules for convolution and pooling: explicit ``pads`` or ``auto_pad``."""

from __future__ import annotations

from ...errors import OnnxImportError


def spatial_pads(
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
        raise OnnxImportError(f"unknown auto_pad {auto_pad!r}")
    pads = (0,) * (2 * n) if pads is None else tuple(pads)
    return tuple((pads[i], pads[i + n]) for i in range(n))


def is_static(auto_pad: str) -> bool:
    """Whether the pads are known without the input's size."""
    return auto_pad in ("NOTSET", "VALID")
