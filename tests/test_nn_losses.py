"""Losses against the textbook formulas written as loops, and gradcheck in float64."""

from __future__ import annotations

import math

import numpy as np
import pytest

import finetune as torch
import finetune.nn.functional as F
from finetune import nn
from finetune.autograd import gradcheck
from finetune.errors import DataError, ShapeError


def leaf(array) -> torch.Tensor:
    return torch.tensor(np.asarray(array, dtype=np.float64), requires_grad=True)


def logits(shape, seed=0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal(shape) * 2


def cross_entropy_loop(x, target, weight=None, smoothing=0.0, ignore_index=-100, reduction="mean"):
    """PyTorch's documented formula: smoothed one-hot q, loss_n = -sum_c w_c q_c log p_c, the mean
    divided by the summed weights of the target classes; ignored targets count for nothing."""
    n, c = x.shape
    w = np.ones(c) if weight is None else np.asarray(weight, dtype=np.float64)
    losses, norm = [], 0.0
    for i in range(n):
        if target[i] == ignore_index:
            losses.append(0.0)
            continue
        log_p = x[i] - math.log(sum(math.exp(v) for v in x[i]))
        q = [smoothing / c + (1 - smoothing) * (k == target[i]) for k in range(c)]
        losses.append(-sum(w[k] * q[k] * log_p[k] for k in range(c)))
        norm += w[target[i]]
    if reduction == "none":
        return np.array(losses)
    if reduction == "sum":
        return sum(losses)
    return sum(losses) / norm


CASES = [
    dict(),
    dict(smoothing=0.1),
    dict(weight=[0.5, 2.0, 1.0, 0.3]),
    dict(weight=[0.5, 2.0, 1.0, 0.3], smoothing=0.2),
    dict(ignore_index=1),
    dict(ignore_index=1, smoothing=0.3, weight=[1.0, 2.0, 3.0, 4.0]),
]


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("case", CASES, ids=lambda c: ",".join(c) or "plain")
def test_cross_entropy_matches_formula_and_gradcheck(case, reduction):
    x = logits((5, 4))
    target = np.array([0, 1, 3, 2, 1])
    expected = cross_entropy_loop(x, target, reduction=reduction, **case)
    kwargs = dict(
        weight=None if "weight" not in case else torch.tensor(case["weight"], dtype=torch.float64),
        ignore_index=case.get("ignore_index", -100),
        label_smoothing=case.get("smoothing", 0.0),
        reduction=reduction,
    )
    target_t = torch.tensor(target)
    out = F.cross_entropy(torch.from_numpy(x), target_t, **kwargs)
    assert np.allclose(out.numpy(), expected, atol=1e-12)
    assert gradcheck(lambda t: F.cross_entropy(t, target_t, **kwargs), (leaf(x),))


def test_cross_entropy_module_float32_and_grad_fn():
    x = torch.from_numpy(logits((3, 5)).astype(np.float32)).requires_grad_(True)
    target = torch.tensor([4, 0, 2])
    loss = nn.CrossEntropyLoss()(x, target)
    assert loss.dtype == torch.float32 and loss.shape == torch.Size([])
    assert loss.grad_fn.name() == "NllLossBackward0"
    assert np.isclose(
        loss.item(), cross_entropy_loop(x.detach().numpy(), target.numpy()), rtol=1e-6
    )
    smoothed = nn.CrossEntropyLoss(label_smoothing=0.1, reduction="sum")(x, target)
    assert np.isclose(
        smoothed.item(),
        cross_entropy_loop(x.detach().numpy(), target.numpy(), smoothing=0.1, reduction="sum"),
        rtol=1e-6,
    )
    smoothed.backward()
    assert x.grad.dtype == torch.float32
    assert np.allclose(x.grad.numpy().sum(axis=1), 0, atol=1e-6)


def test_cross_entropy_spatial_targets_match_the_flattened_form():
    x = logits((2, 3, 2, 2))
    target = np.random.default_rng(1).integers(0, 3, (2, 2, 2))
    flat_x = np.moveaxis(x, 1, -1).reshape(-1, 3)
    expected = cross_entropy_loop(flat_x, target.ravel(), smoothing=0.2)
    target_t = torch.tensor(target)
    out = F.cross_entropy(torch.from_numpy(x), target_t, label_smoothing=0.2)
    assert np.isclose(out.item(), expected)
    assert gradcheck(lambda t: F.cross_entropy(t, target_t), (leaf(x),))


def test_cross_entropy_with_probability_targets():
    x = logits((3, 4))
    probs = np.random.default_rng(2).dirichlet(np.ones(4), size=3)
    log_p = x - np.log(np.exp(x).sum(axis=1, keepdims=True))
    expected = -(probs * log_p).sum(axis=1).mean()
    target = torch.from_numpy(probs)
    assert np.isclose(F.cross_entropy(torch.from_numpy(x), target).item(), expected)
    assert gradcheck(lambda t: F.cross_entropy(t, target, label_smoothing=0.1), (leaf(x),))


def test_nll_loss_and_unbatched_input():
    log_p = np.log(np.random.default_rng(3).dirichlet(np.ones(3), size=4))
    target = torch.tensor([2, 0, 1, 2])
    expected = -np.mean([log_p[i, t] for i, t in enumerate([2, 0, 1, 2])])
    assert np.isclose(nn.NLLLoss()(torch.from_numpy(log_p), target).item(), expected)
    assert gradcheck(lambda t: F.nll_loss(t, target, reduction="sum"), (leaf(log_p),))
    single = F.cross_entropy(torch.from_numpy(log_p[0]), torch.tensor(1), reduction="none")
    assert single.shape == torch.Size([])
    assert gradcheck(lambda t: F.cross_entropy(t, torch.tensor(1)), (leaf(log_p[0]),))


def test_cross_entropy_mistakes_are_explained():
    x = torch.zeros(4, 10)
    with pytest.raises(ShapeError, match=r"Target 12 is out of bounds.*\[4, 10\].*10 classes"):
        F.cross_entropy(x, torch.tensor([1, 12, 0, 3]))
    with pytest.raises(ShapeError, match=r"batch_size \(4\).*batch_size \(3\)"):
        F.cross_entropy(x, torch.tensor([1, 2, 0]))
    with pytest.raises(DataError, match="integer class indices"):
        F.cross_entropy(x, torch.tensor([1.0, 2.0, 0.0, 3.0]))
    with pytest.raises(ValueError, match="not a valid value for reduction"):
        F.cross_entropy(x, torch.tensor([1, 2, 0, 3]), reduction="avg")


def test_mse_loss_matches_loop_and_gradcheck():
    x, y = logits((3, 4), 4), logits((3, 4), 5)
    expected = sum((a - b) ** 2 for a, b in zip(x.ravel(), y.ravel())) / x.size
    out = nn.MSELoss()(torch.from_numpy(x), torch.from_numpy(y))
    assert np.isclose(out.item(), expected)
    assert out.grad_fn is None
    for reduction in ("mean", "sum", "none"):
        assert gradcheck(
            lambda a, b, r=reduction: F.mse_loss(a, b, reduction=r), (leaf(x), leaf(y))
        )
    assert gradcheck(lambda a, b: F.mse_loss(a, b), (leaf(x), leaf(y[:1])))
    assert F.mse_loss(leaf(x), torch.from_numpy(y)).grad_fn.name() == "MseLossBackward0"


def bce_loop(x, y, weight=None, pos_weight=None):
    out = np.zeros_like(x)
    for idx in np.ndindex(x.shape):
        s = 1 / (1 + math.exp(-x[idx]))
        pw = 1.0 if pos_weight is None else pos_weight[idx[-1]]
        w = 1.0 if weight is None else weight[idx[-1]]
        out[idx] = -w * (pw * y[idx] * math.log(s) + (1 - y[idx]) * math.log(1 - s))
    return out


def test_bce_with_logits_matches_loop_and_gradcheck():
    x = logits((3, 2), 6)
    y = np.random.default_rng(7).uniform(0, 1, (3, 2))
    weight, pos_weight = np.array([0.5, 2.0]), np.array([3.0, 0.7])
    out = nn.BCEWithLogitsLoss(reduction="none")(torch.from_numpy(x), torch.from_numpy(y))
    assert np.allclose(out.numpy(), bce_loop(x, y))
    module = nn.BCEWithLogitsLoss(
        weight=torch.from_numpy(weight), pos_weight=torch.from_numpy(pos_weight)
    )
    assert np.isclose(
        module(torch.from_numpy(x), torch.from_numpy(y)).item(),
        bce_loop(x, y, weight, pos_weight).mean(),
    )
    assert gradcheck(lambda a, b: module(a, b), (leaf(x), leaf(y)))
    assert gradcheck(
        lambda a, b: F.binary_cross_entropy_with_logits(a, b, reduction="sum"), (leaf(x), leaf(y))
    )


def test_bce_with_logits_is_stable_for_extreme_logits():
    x = torch.tensor([100.0, -100.0, 0.0], requires_grad=True)
    y = torch.tensor([0.0, 1.0, 1.0])
    loss = F.binary_cross_entropy_with_logits(x, y, reduction="none")
    assert np.allclose(loss.detach().numpy(), [100.0, 100.0, math.log(2)], rtol=1e-6)
    loss.sum().backward()
    assert np.allclose(x.grad.numpy(), [1.0, -1.0, -0.5])
    with pytest.raises(ShapeError, match="must be the same as input size"):
        F.binary_cross_entropy_with_logits(x, torch.zeros(2))
