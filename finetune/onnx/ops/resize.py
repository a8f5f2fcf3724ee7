"""Resize and Upsample: nearest, linear and cubic resampling, as one matrix per resized axis;
and GridSample and AffineGrid, resampling at arbitrary points (``nn.functional.grid_sample``).

Every supported variant is linear in the input, separable by axis: output index ``d`` of an axis
reads the input at the coordinate the node's ``coordinate_transformation_mode`` gives, through
``nearest_mode`` rounding, two linear taps or four cubic ones (their weights stretched by the
scale when ``antialias`` downsamples), edge indices clamped or, with ``exclude_outside``, left
out and the weights renormalised. The matrices run through ``autograd.resample``, so gradients
reach the input. ``tf_crop_and_resize`` samples the ``roi`` box instead, and outputs whose
coordinate falls outside the input take ``extrapolation_value`` (a constant, so no gradient).
"""

from __future__ import annotations

import math

import numpy as np

from ... import functions as fn
from ...autograd import resample
from ...errors import OnnxImportError, ShapeError
from ...nn import functional as F
from ...tensor import Tensor
from ..limits import check_shape
from ..registry import register
from ._common import ints

_TRANSFORMS = ("half_pixel", "half_pixel_symmetric", "pytorch_half_pixel", "align_corners")
_TRANSFORMS += ("asymmetric", "tf_crop_and_resize")


def _source(size_in, size_out, scale, transform, roi=(0.0, 1.0)) -> np.ndarray:
    """The input coordinate of every output index along one axis (the ONNX formulas)."""
    x = np.arange(size_out, dtype=np.float64)
    if transform == "tf_crop_and_resize":
        start, end = roi
        if size_out > 1:
            return start * (size_in - 1) + x * (end - start) * (size_in - 1) / (size_out - 1)
        return np.full(size_out, 0.5 * (start + end) * (size_in - 1))
    if transform == "asymmetric":
        return x / scale
    if transform == "align_corners":
        # the resized length here is ``size_in * scale`` before flooring, as in ONNX's reference
        length = size_in * scale
        return x * ((size_in - 1) / (length - 1)) if length != 1 else np.zeros(size_out)
    if transform == "pytorch_half_pixel" and size_out <= 1:
        return np.zeros(size_out)
    if transform == "half_pixel_symmetric":
        adjustment = size_out / (scale * size_in)
        offset = size_in / 2 * (1 - adjustment)
        return offset + (x + 0.5) / scale - 0.5
    return (x + 0.5) / scale - 0.5  # half_pixel, pytorch_half_pixel


def axis_matrix(size_in, size_out, scale, attrs, roi=(0.0, 1.0)) -> tuple[np.ndarray, np.ndarray]:
    """The ``(size_out, size_in)`` matrix resampling one axis, and which outputs fall outside
    the input (``tf_crop_and_resize`` only; their rows are zero)."""
    transform = attrs["coordinate_transformation_mode"]
    src = _source(size_in, size_out, scale, transform, roi)
    outside = np.zeros(size_out, dtype=bool)
    if transform == "tf_crop_and_resize":
        outside = (src < 0) | (src > size_in - 1)
    matrix = resample.sample_matrix(
        size_in,
        src,
        attrs["mode"],
        nearest_mode=attrs["nearest_mode"],
        stretch=min(scale, 1.0) if attrs["antialias"] else None,
        cubic_coeff_a=attrs["cubic_coeff_a"],
        exclude_outside=bool(attrs["exclude_outside"]),
    )
    matrix[outside] = 0.0
    return matrix, outside


_DEFAULTS = dict(
    mode="nearest",
    coordinate_transformation_mode="half_pixel",
    nearest_mode="round_prefer_floor",
    cubic_coeff_a=-0.75,
    exclude_outside=0,
    antialias=0,
)


def _values(t: Tensor | None) -> list | None:
    """An optional scales/sizes input as a list; an empty tensor counts as absent."""
    if t is None or t._data.size == 0:
        return None
    return np.asarray(t._data).reshape(-1).tolist()


def _resize(
    x: Tensor, scales, sizes, attrs: dict, axes=None, policy="stretch", roi=None, extrapolation=0.0
) -> Tensor:
    attrs = {**_DEFAULTS, **attrs}
    if attrs["coordinate_transformation_mode"] not in _TRANSFORMS:
        raise OnnxImportError(
            f"Resize: unknown coordinate_transformation_mode "
            f"{attrs['coordinate_transformation_mode']!r}"
        )
    if attrs["mode"] not in ("nearest", "linear", "cubic"):
        raise OnnxImportError(f"Resize: unknown mode {attrs['mode']!r}")
    rank = x.ndim
    axes = list(range(rank)) if axes is None else [a + rank if a < 0 else a for a in axes]
    shape_in = [x.shape[a] for a in axes]
    scales, sizes = _values(scales), _values(sizes)
    boxes = [(0.0, 1.0)] * len(axes)
    if attrs["coordinate_transformation_mode"] == "tf_crop_and_resize":
        roi = _values(roi)
        if roi is None or len(roi) != 2 * len(axes):
            raise OnnxImportError(
                f"Resize: tf_crop_and_resize needs a roi of {2 * len(axes)} values, got {roi}"
            )
        boxes = list(zip(roi[: len(axes)], roi[len(axes) :]))
    if sizes is not None:
        if len(sizes) != len(axes):
            raise OnnxImportError(f"Resize: {len(sizes)} sizes for {len(axes)} axes")
        if policy == "stretch":
            out = [int(s) for s in sizes]
            factors = [o / i for o, i in zip(out, shape_in)]
        else:
            pick = min if policy == "not_larger" else max
            factor = pick(s / i for s, i in zip(sizes, shape_in))
            factors = [factor] * len(axes)
            out = [int(math.floor(factor * i + 0.5)) for i in shape_in]
    elif scales is not None:
        if len(scales) != len(axes):
            raise OnnxImportError(f"Resize: {len(scales)} scales for {len(axes)} axes")
        if any(not s > 0 for s in scales):
            raise OnnxImportError(f"Resize: scales must be positive, got {scales}")
        factors = [float(s) for s in scales]
        out = [
            int(math.floor(i * (end - start) * s))
            for i, s, (start, end) in zip(shape_in, factors, boxes)
        ]
    else:
        raise OnnxImportError("Resize: neither scales nor sizes is given")
    full = list(x.shape)
    for a, o in zip(axes, out):
        full[a] = o
    check_shape(full, "Resize")
    if any(o <= 0 for o in out):
        raise OnnxImportError(f"Resize: output shape {full} of input {list(x.shape)} is empty")
    matrices, outside = {}, np.zeros([1] * rank, dtype=bool)
    for a, i, o, f, box in zip(axes, shape_in, out, factors, boxes):
        matrix, off = axis_matrix(i, o, f, attrs, box)
        if not (i == o and np.array_equal(matrix, np.eye(i))):
            matrices[a] = matrix
        outside = outside | off.reshape([-1 if k == a else 1 for k in range(rank)])
    resize = {k: v for k, v in attrs.items() if v != _DEFAULTS[k]}
    resize.setdefault("mode", attrs["mode"])
    per_axis = [1.0] * rank
    for a, f in zip(axes, factors):
        per_axis[a] = f
    exported_scales = tuple(per_axis) if sizes is None else None
    y = resample.Resize.apply(x, matrices=matrices, resize=resize, scales=exported_scales)
    if outside.any():
        fill = Tensor._from_array(np.asarray(extrapolation, dtype=y._data.dtype))
        y = fn.where(Tensor._from_array(np.broadcast_to(outside, y.shape)), fill, y)
    return y


@register("Upsample", 7)
def upsample_7(x: Tensor, *, scales, mode="nearest") -> Tensor:
    """Upsample before Resize existed: asymmetric coordinates, nearest rounding down."""
    return _resize(x, Tensor._from_array(np.asarray(scales)), None, _legacy(mode))


@register("Upsample", 9, 10)
def upsample_9(x: Tensor, scales: Tensor, *, mode="nearest") -> Tensor:
    return _resize(x, scales, None, _legacy(mode))


@register("Resize", 10)
def resize_10(x: Tensor, scales: Tensor, *, mode="nearest") -> Tensor:
    return _resize(x, scales, None, _legacy(mode))


def _legacy(mode) -> dict:
    mode = "linear" if mode == "bilinear" else mode
    return dict(mode=mode, coordinate_transformation_mode="asymmetric", nearest_mode="floor")


@register("Resize", 11, 13)
def resize_11(
    x: Tensor,
    roi: Tensor | None = None,
    scales: Tensor | None = None,
    sizes: Tensor | None = None,
    *,
    coordinate_transformation_mode="half_pixel",
    cubic_coeff_a=-0.75,
    exclude_outside=0,
    extrapolation_value=0.0,
    mode="nearest",
    nearest_mode="round_prefer_floor",
) -> Tensor:
    """Opset 18 added ``antialias``, ``axes`` and ``keep_aspect_ratio_policy``, whose
    defaults give this version."""
    return resize_18(
        x,
        roi,
        scales,
        sizes,
        coordinate_transformation_mode=coordinate_transformation_mode,
        cubic_coeff_a=cubic_coeff_a,
        exclude_outside=exclude_outside,
        extrapolation_value=extrapolation_value,
        mode=mode,
        nearest_mode=nearest_mode,
    )


@register("Resize", 18, 19)
def resize_18(
    x: Tensor,
    roi: Tensor | None = None,
    scales: Tensor | None = None,
    sizes: Tensor | None = None,
    *,
    antialias=0,
    axes=None,
    coordinate_transformation_mode="half_pixel",
    cubic_coeff_a=-0.75,
    exclude_outside=0,
    extrapolation_value=0.0,
    keep_aspect_ratio_policy="stretch",
    mode="nearest",
    nearest_mode="round_prefer_floor",
) -> Tensor:
    attrs = dict(
        antialias=antialias,
        coordinate_transformation_mode=coordinate_transformation_mode,
        cubic_coeff_a=cubic_coeff_a,
        exclude_outside=exclude_outside,
        mode=mode,
        nearest_mode=nearest_mode,
    )
    axes = list(axes) if axes is not None else None
    return _resize(
        x, scales, sizes, attrs, axes, keep_aspect_ratio_policy, roi, extrapolation_value
    )


# -- GridSample and AffineGrid ------------------------------------------------------------------

_GRID_MODES = {"bilinear": "bilinear", "bicubic": "bicubic", "linear": "bilinear"}
_GRID_MODES |= {"cubic": "bicubic", "nearest": "nearest"}


def _grid_sample(x: Tensor, grid: Tensor, mode, padding_mode, align_corners) -> Tensor:
    if mode not in _GRID_MODES or padding_mode not in ("zeros", "border", "reflection"):
        raise OnnxImportError(f"GridSample: unknown mode {mode!r} or padding_mode {padding_mode!r}")
    check_shape([*x.shape[:2], *grid.shape[1:-1]], "GridSample")
    return F.grid_sample(x, grid, _GRID_MODES[mode], padding_mode, bool(align_corners))


@register("GridSample", 16)
def grid_sample_16(
    x: Tensor, grid: Tensor, *, align_corners=0, mode="bilinear", padding_mode="zeros"
) -> Tensor:
    """Opset 16: 4-D input only, modes ``bilinear``, ``nearest`` and ``bicubic``."""
    if x.ndim != 4:
        raise ShapeError(f"GridSample-16 takes a 4-D input, got shape {list(x.shape)}")
    return _grid_sample(x, grid, mode, padding_mode, align_corners)


@register("GridSample", 20, 22)
def grid_sample_20(
    x: Tensor, grid: Tensor, *, align_corners=0, mode="linear", padding_mode="zeros"
) -> Tensor:
    """Any number of spatial axes; modes ``linear``, ``nearest`` and ``cubic``."""
    return _grid_sample(x, grid, mode, padding_mode, align_corners)


@register("AffineGrid", 20)
def affine_grid(theta: Tensor, size: Tensor, *, align_corners=0) -> Tensor:
    shape = ints(size)
    check_shape([shape[0], *shape[2:], len(shape) - 2], "AffineGrid")
    return F.affine_grid(theta, shape, bool(align_corners))


@register("Upsample", 1)
def upsample_1(x: Tensor, *, height_scale, width_scale, mode="nearest") -> Tensor:
    """The first Upsample: 4-D input, scales for its last two axes."""
    if x.ndim != 4:
        raise ShapeError(f"Upsample-1 takes a 4-D input, got shape {list(x.shape)}")
    scales = np.asarray([1.0, 1.0, height_scale, width_scale], dtype=np.float32)
    return _resize(x, Tensor._from_array(scales), None, _legacy(mode))
