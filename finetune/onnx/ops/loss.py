"""Losses: NegativeLogLikelihoodLoss and SoftmaxCrossEntropyLoss.

Composed of gather, mul and sum, so gradients reach the scores and the class weights (a float
input that may be a trainable constant). The mean divides by the summed weights of the
targets that count (``ignore_index`` ones weigh zero), as PyTorch and the spec do.
"""

from __future__ import annotations

import numpy as np

from ... import functions as fn
from ...errors import OnnxImportError, ShapeError
from ...tensor import Tensor
from ..registry import register
from ._common import wrap

_REDUCTIONS = ("none", "sum", "mean")


def _nll(op: str, log_prob: Tensor, target: Tensor, weight, ignore_index, reduction: str):
    if reduction not in _REDUCTIONS:
        raise OnnxImportError(f"{op}: reduction must be one of {_REDUCTIONS}, got {reduction!r}")
    if log_prob.ndim < 2:
        raise ShapeError(f"{op}: input must be (N, C, d1, ...), got shape {list(log_prob.shape)}")
    labels = np.asarray(target._data)
    expected = (log_prob.shape[0], *log_prob.shape[2:])
    if labels.dtype.kind not in "iu" or labels.shape != expected:
        raise ShapeError(
            f"{op}: target must be integer class indices of shape {list(expected)} for input "
            f"{list(log_prob.shape)}, got {labels.dtype} of shape {list(labels.shape)}"
        )
    classes = log_prob.shape[1]
    counted = np.ones(labels.shape, bool) if ignore_index is None else labels != ignore_index
    bad = counted & ((labels < 0) | (labels >= classes))
    if bad.any():
        raise ShapeError(
            f"{op}: target {int(labels[bad].flat[0])} is out of range for {classes} classes"
        )
    safe = np.where(counted, labels, 0).astype(np.int64)
    # n c d..., n 1 d... -> n d...
    picked = fn.squeeze(fn.gather(log_prob, 1, wrap(safe[:, None])), 1)
    dtype = log_prob._data.dtype
    if weight is None:
        w = wrap(counted.astype(dtype))
    else:
        if weight.ndim != 1 or weight.shape[0] != classes:
            raise ShapeError(
                f"{op}: weight must have shape [{classes}] (one per class), got "
                f"{list(weight.shape)}"
            )
        w = fn.reshape(fn.index_select(weight, 0, wrap(safe.reshape(-1))), labels.shape)
        w = fn.mul(w, wrap(counted.astype(dtype)))
    loss = fn.neg(fn.mul(picked, w))
    if reduction == "none":
        return loss
    total = fn.sum(loss)
    return total if reduction == "sum" else fn.div(total, fn.sum(w))


@register("NegativeLogLikelihoodLoss", 12, 13, 22)
def negative_log_likelihood_loss(
    input: Tensor,
    target: Tensor,
    weight: Tensor | None = None,
    *,
    ignore_index=None,
    reduction="mean",
) -> Tensor:
    """``-input[n, target[n, d...], d...] * weight[target]``, reduced as ``reduction`` says."""
    return _nll("NegativeLogLikelihoodLoss", input, target, weight, ignore_index, reduction)


@register("SoftmaxCrossEntropyLoss", 12, 13)
def softmax_cross_entropy_loss(
    scores: Tensor,
    labels: Tensor,
    weights: Tensor | None = None,
    *,
    ignore_index=None,
    reduction="mean",
    _outputs=1,
) -> Tensor | tuple[Tensor, Tensor]:
    """The NLL of ``log_softmax(scores)`` over the class axis 1; the second output is that
    log-probability."""
    if scores.ndim < 2:
        raise ShapeError(
            f"SoftmaxCrossEntropyLoss: scores must be (N, C, d1, ...), got {list(scores.shape)}"
        )
    log_prob = fn.log_softmax(scores, 1)
    loss = _nll("SoftmaxCrossEntropyLoss", log_prob, labels, weights, ignore_index, reduction)
    return (loss, log_prob)[:_outputs]
