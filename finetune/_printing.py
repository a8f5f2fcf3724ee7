"""PyTorch's tensor printing, to the character.

A transcription of ``torch/_tensor_str.py`` over numpy: one ``_Formatter`` per tensor picks
integer, fixed or scientific notation from the nonzero finite magnitudes and a common width;
large tensors are summarised with ``...``; suffixes (``dtype=``, ``grad_fn=``,
``requires_grad=True``) wrap at the line width exactly as PyTorch wraps them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np


@dataclass
class _PrintOptions:
    """The knobs of ``set_printoptions``, with PyTorch's defaults."""

    precision: int = 4
    threshold: float = 1000
    edgeitems: int = 3
    linewidth: int = 80
    sci_mode: bool | None = None


PRINT_OPTS = _PrintOptions()

_PROFILES = {
    "default": dict(precision=4, threshold=1000, edgeitems=3, linewidth=80),
    "short": dict(precision=2, threshold=1000, edgeitems=2, linewidth=80),
    "full": dict(precision=4, threshold=math.inf, edgeitems=3, linewidth=80),
}


def set_printoptions(
    precision: int | None = None,
    threshold: float | None = None,
    edgeitems: int | None = None,
    linewidth: int | None = None,
    profile: str | None = None,
    sci_mode: bool | None = None,
) -> None:
    """Set printing options as ``torch.set_printoptions`` does (a profile first, then overrides)."""
    if profile is not None:
        for name, value in _PROFILES[profile].items():
            setattr(PRINT_OPTS, name, value)
    for name, value in (
        ("precision", precision),
        ("threshold", threshold),
        ("edgeitems", edgeitems),
        ("linewidth", linewidth),
    ):
        if value is not None:
            setattr(PRINT_OPTS, name, value)
    PRINT_OPTS.sci_mode = sci_mode


class _Formatter:
    """Chooses one notation and width for every element of a tensor, as PyTorch does."""

    def __init__(self, values: np.ndarray) -> None:
        self.floating = values.dtype.kind == "f"
        self.int_mode = True
        self.sci_mode = False
        self.max_width = 1
        flat = values.reshape(-1)
        if not self.floating:
            for value in flat.tolist():
                self.max_width = max(self.max_width, len(f"{value}"))
            return
        nonzero = flat[np.isfinite(flat) & (flat != 0)]
        if nonzero.size == 0:
            return
        magnitudes = np.abs(nonzero).astype(np.float64)
        smallest, largest = float(magnitudes.min()), float(magnitudes.max())
        self.int_mode = bool(np.all(nonzero == np.ceil(nonzero)))
        precision = PRINT_OPTS.precision
        python_values = nonzero.tolist()
        if self.int_mode:
            if largest / smallest > 1000.0 or largest > 1.0e8:
                self.sci_mode = True
                widths = (len(f"{v:.{precision}e}") for v in python_values)
            else:
                widths = (len(f"{v:.0f}") + 1 for v in python_values)
        elif largest / smallest > 1000.0 or largest > 1.0e8 or smallest < 1.0e-4:
            self.sci_mode = True
            widths = (len(f"{v:.{precision}e}") for v in python_values)
        else:
            widths = (len(f"{v:.{precision}f}") for v in python_values)
        self.max_width = max(self.max_width, *widths)
        if PRINT_OPTS.sci_mode is not None:
            self.sci_mode = PRINT_OPTS.sci_mode

    def format(self, value) -> str:
        """One element, right-aligned to the common width."""
        if not self.floating:
            text = f"{value}"
        elif self.sci_mode:
            text = f"{value:{self.max_width}.{PRINT_OPTS.precision}e}"
        elif self.int_mode:
            text = f"{value:.0f}"
            if not (math.isinf(value) or math.isnan(value)):
                text += "."
        else:
            text = f"{value:.{PRINT_OPTS.precision}f}"
        return " " * (self.max_width - len(text)) + text


def _vector_str(values: np.ndarray, indent: int, summarize: bool, formatter: _Formatter) -> str:
    element_length = formatter.max_width + 2
    per_line = max(1, int(math.floor((PRINT_OPTS.linewidth - indent) / element_length)))
    edge = PRINT_OPTS.edgeitems
    if summarize and not edge:
        data = ["..."]
    elif summarize and values.shape[0] > 2 * edge:
        data = (
            [formatter.format(v) for v in values[:edge].tolist()]
            + [" ..."]
            + [formatter.format(v) for v in values[-edge:].tolist()]
        )
    else:
        data = [formatter.format(v) for v in values.tolist()]
    lines = [", ".join(data[i : i + per_line]) for i in range(0, len(data), per_line)]
    return "[" + (",\n" + " " * (indent + 1)).join(lines) + "]"


def _tensor_str_with_formatter(
    values: np.ndarray, indent: int, summarize: bool, formatter: _Formatter
) -> str:
    dim = values.ndim
    if dim == 0:
        return formatter.format(values.item())
    if dim == 1:
        return _vector_str(values, indent, summarize, formatter)
    edge = PRINT_OPTS.edgeitems
    rows = values.shape[0]
    if summarize and rows > 2 * edge:
        shown = [*range(edge), None, *range(rows - edge, rows)]
    else:
        shown = range(rows)
    inner = indent + 1
    slices = [
        "..." if i is None else _tensor_str_with_formatter(values[i], inner, summarize, formatter)
        for i in shown
    ]
    return "[" + ("," + "\n" * (dim - 1) + " " * (indent + 1)).join(slices) + "]"


def _summarized_data(values: np.ndarray) -> np.ndarray:
    """Only the elements that will be shown, so they alone decide the notation."""
    edge = PRINT_OPTS.edgeitems
    if values.ndim == 0:
        return values
    if values.ndim == 1:
        if values.shape[0] > 2 * edge:
            return np.concatenate((values[:edge], values[-edge:]))
        return values
    if not edge:
        return values[(slice(0, 0),) * values.ndim]
    rows = range(values.shape[0])
    if values.shape[0] > 2 * edge:
        rows = [*range(edge), *range(values.shape[0] - edge, values.shape[0])]
    return np.stack([_summarized_data(values[i]) for i in rows])


def _tensor_str(values: np.ndarray, indent: int) -> str:
    if values.size == 0:
        return "[]"
    summarize = values.size > PRINT_OPTS.threshold
    if values.dtype == np.float16:
        values = values.astype(np.float32)
    formatter = _Formatter(_summarized_data(values) if summarize else values)
    return _tensor_str_with_formatter(values, indent, summarize, formatter)


def _add_suffixes(tensor_str: str, suffixes: list[str], indent: int) -> str:
    parts = [tensor_str]
    last_line_len = len(tensor_str) - tensor_str.rfind("\n") + 1
    for suffix in suffixes:
        if last_line_len + len(suffix) + 2 > PRINT_OPTS.linewidth:
            parts.append(",\n" + " " * indent + suffix)
            last_line_len = indent + len(suffix)
        else:
            parts.append(", " + suffix)
            last_line_len += len(suffix) + 2
    parts.append(")")
    return "".join(parts)


_DEFAULT_DTYPE_NAMES = ("float32", "int64", "bool")


def tensor_repr(t) -> str:
    """``repr(t)`` as PyTorch prints it, with ``Parameter containing:`` for parameter classes."""
    prefix = "tensor("
    indent = len(prefix)
    values = t._data
    dtype_name = repr(t.dtype)
    suffixes = []
    if values.size == 0:
        if values.ndim != 1:
            suffixes.append(f"size={tuple(values.shape)}")
        if dtype_name != "torch.float32":
            suffixes.append(f"dtype={dtype_name}")
        tensor_str = "[]"
    else:
        if t.dtype.name not in _DEFAULT_DTYPE_NAMES:
            suffixes.append(f"dtype={dtype_name}")
        tensor_str = _tensor_str(values, indent)
    if t.grad_fn is not None:
        suffixes.append(f"grad_fn=<{type(t.grad_fn).__name__}>")
    elif t.requires_grad:
        suffixes.append("requires_grad=True")
    text = _add_suffixes(prefix + tensor_str, suffixes, indent)
    return getattr(type(t), "_repr_prefix", "") + text
