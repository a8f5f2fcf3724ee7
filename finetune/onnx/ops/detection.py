"""Image ops around a vision model: ImageDecoder (encoded bytes → pixels, with Pillow) and
NonMaxSuppression (detection post-processing, onnxruntime's greedy algorithm). Neither has a
gradient."""

from __future__ import annotations

import io

import numpy as np

from ...errors import OnnxImportError, ShapeError
from ...tensor import Tensor
from ..registry import register
from ._common import scalar, wrap


@register("ImageDecoder", 20, differentiable=False)
def image_decoder(encoded_stream: Tensor, *, pixel_format="RGB") -> Tensor:
    """A 1-D uint8 encoded image (JPEG, PNG, BMP, TIFF, WebP, ... whatever Pillow reads) →
    (H, W, 3) uint8 in RGB or BGR order, or (H, W, 1) for Grayscale."""
    try:
        from PIL import Image, UnidentifiedImageError
    except ImportError:  # pragma: no cover - Pillow is a dependency of the data module
        raise OnnxImportError("ImageDecoder needs Pillow (pip install pillow)") from None
    if pixel_format not in ("RGB", "BGR", "Grayscale"):
        raise OnnxImportError(
            f"ImageDecoder: pixel_format {pixel_format!r} is not RGB, BGR or Grayscale"
        )
    data = np.asarray(encoded_stream._data)
    if data.dtype != np.uint8 or data.ndim != 1:
        raise ShapeError(
            f"ImageDecoder: expects a 1-D uint8 byte stream, got {data.dtype} of shape "
            f"{list(data.shape)}"
        )
    try:
        with Image.open(io.BytesIO(data.tobytes())) as image:
            image.load()
            if pixel_format == "Grayscale":
                return wrap(np.asarray(image.convert("L"))[:, :, None].copy())
            pixels = np.asarray(image.convert("RGB"))
    except (UnidentifiedImageError, OSError, ValueError) as error:
        raise ShapeError(f"ImageDecoder: the stream is not a readable image ({error})") from None
    return wrap(np.ascontiguousarray(pixels[:, :, ::-1] if pixel_format == "BGR" else pixels))


def _corners(boxes: np.ndarray, center_point_box: int) -> np.ndarray:
    """(n, 4) boxes → (n, 4) as x_min, y_min, x_max, y_max in the boxes' own precision."""
    if center_point_box:
        # x_center y_center width height
        half_w, half_h = boxes[:, 2] / 2, boxes[:, 3] / 2
        return np.stack(
            [
                boxes[:, 0] - half_w,
                boxes[:, 1] - half_h,
                boxes[:, 0] + half_w,
                boxes[:, 1] + half_h,
            ],
            axis=1,
        )
    # y1 x1 y2 x2, either corner first
    return np.stack(
        [
            np.minimum(boxes[:, 1], boxes[:, 3]),
            np.minimum(boxes[:, 0], boxes[:, 2]),
            np.maximum(boxes[:, 1], boxes[:, 3]),
            np.maximum(boxes[:, 0], boxes[:, 2]),
        ],
        axis=1,
    )


def _overlapping(corners: np.ndarray, chosen: int, others: np.ndarray, threshold) -> np.ndarray:
    """Whether each of ``others`` has an IoU above ``threshold`` with box ``chosen``; boxes
    that do not intersect, or have no area, never do (onnxruntime's rule)."""
    a, b = corners[chosen], corners[others]
    width = np.minimum(a[2], b[:, 2]) - np.maximum(a[0], b[:, 0])
    height = np.minimum(a[3], b[:, 3]) - np.maximum(a[1], b[:, 1])
    inter = width * height
    area_a = (a[2] - a[0]) * (a[3] - a[1])
    area_b = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    union = area_a + area_b - inter
    valid = (width > 0) & (height > 0) & (inter > 0) & (area_a > 0) & (area_b > 0) & (union > 0)
    with np.errstate(divide="ignore", invalid="ignore"):
        return valid & (inter / np.where(valid, union, 1) > threshold)


@register("NonMaxSuppression", 10, 11, differentiable=False)
def non_max_suppression(
    boxes: Tensor,
    scores: Tensor,
    max_output_boxes_per_class: Tensor | None = None,
    iou_threshold: Tensor | None = None,
    score_threshold: Tensor | None = None,
    *,
    center_point_box=0,
) -> Tensor:
    """Per batch and class: boxes scoring above ``score_threshold`` (if given), highest score
    first (lower index on ties), each kept unless its IoU with a kept box exceeds
    ``iou_threshold``, at most ``max_output_boxes_per_class``. Returns (selected, 3) int64 rows
    of batch, class, box index."""
    b, s = np.asarray(boxes._data), np.asarray(scores._data)
    if b.ndim != 3 or b.shape[2] != 4 or s.ndim != 3 or s.shape[0] != b.shape[0]:
        raise ShapeError(
            f"NonMaxSuppression: boxes {list(b.shape)} must be (batch, boxes, 4) and scores "
            f"{list(s.shape)} (batch, classes, boxes)"
        )
    if s.shape[2] != b.shape[1]:
        raise ShapeError(
            f"NonMaxSuppression: {b.shape[1]} boxes but scores for {s.shape[2]} per class"
        )
    if center_point_box not in (0, 1):
        raise OnnxImportError(f"NonMaxSuppression: center_point_box {center_point_box} is not 0/1")
    limit = 0 if max_output_boxes_per_class is None else int(scalar(max_output_boxes_per_class))
    if max_output_boxes_per_class is not None and max_output_boxes_per_class._data.size == 0:
        limit = 0
    iou = 0.0 if iou_threshold is None or iou_threshold._data.size == 0 else scalar(iou_threshold)
    has_floor = score_threshold is not None and score_threshold._data.size > 0
    floor = scalar(score_threshold) if has_floor else None
    iou = np.asarray(iou, dtype=b.dtype)
    selected = []
    for batch in range(b.shape[0] if limit > 0 else 0):
        corners = _corners(b[batch], center_point_box)
        for cls in range(s.shape[1]):
            row = s[batch, cls]
            candidates = np.flatnonzero(row > floor) if has_floor else np.arange(row.size)
            # highest score first, the lower index first among equal scores
            order = candidates[np.lexsort((candidates, -row[candidates].astype(np.float64)))]
            kept = 0
            while order.size and kept < limit:
                chosen, order = order[0], order[1:]
                selected.append((batch, cls, chosen))
                kept += 1
                order = order[~_overlapping(corners, chosen, order, iou)]
    return wrap(np.array(selected, dtype=np.int64).reshape(-1, 3))
