"""The buffer pool for arrays a forward keeps for its backward: reuse by size, the cap on idle
memory, nodes giving their arrays back on release, and the Winograd tiles that use it."""

from __future__ import annotations

import math

import numpy as np
import pytest
from test_conv_kernels import conv_loop

import finetune as torch
from finetune.autograd import conv as kernels
from finetune.autograd import pool, winograd


@pytest.fixture(autouse=True)
def empty_pool():
    pool.clear()
    yield
    pool.clear()


def test_a_given_buffer_is_taken_again_for_any_shape_of_its_size():
    a = pool.take((4, 6), np.float32)
    assert a.shape == (4, 6) and a.dtype == np.float32
    pool.give(a)
    assert pool.idle_bytes() == 96
    b = pool.take((3, 2, 2), np.float64)  # 96 bytes too
    assert b.shape == (3, 2, 2) and b.dtype == np.float64 and np.shares_memory(a, b)
    assert pool.idle_bytes() == 0
    c = pool.take((4, 6), np.float32)  # nothing idle: a new buffer
    assert not np.shares_memory(b, c)


def test_give_refuses_arrays_the_pool_did_not_hand_out():
    with pytest.raises(ValueError, match="pool.take"):
        pool.give(np.zeros(4))
    with pytest.raises(ValueError, match="pool.take"):
        pool.give(pool.take((4, 4), np.float32)[:2])


def test_idle_memory_is_capped(monkeypatch):
    monkeypatch.setattr(pool, "MAX_IDLE_BYTES", 100)
    first, second = pool.take((16,), np.float32), pool.take((16,), np.float32)
    pool.give(first)
    pool.give(second)  # 128 bytes would pass the cap: dropped
    assert pool.idle_bytes() == 64


def winograd_conv(m: int):
    """Inputs of a convolution that takes ``m`` x ``m`` Winograd tiles."""
    size = 28 if m == 4 else 9
    rng = np.random.default_rng(m)
    x = torch.tensor(rng.standard_normal((2, 64, size, size)), requires_grad=True)
    w = torch.tensor(rng.standard_normal((64, 64, 3, 3)) * 0.05, requires_grad=True)
    return x, w


@pytest.mark.parametrize("m", [2, 4])
def test_the_weight_gradient_reuses_the_forward_tiles_from_the_pool(m):
    x, w = winograd_conv(m)
    pads = ((1, 1), (1, 1))
    y = kernels.conv(x, w, None, (1, 1), pads)
    node = y.grad_fn
    assert node.plan.winograd == m
    kept = node.kept
    assert kept.shape == winograd.tiles_shape(x.shape, pads, m)
    assert node._saved[0] is None  # the input itself is not kept
    g = np.random.default_rng(0).standard_normal(y.shape)
    y.backward(torch.tensor(g))
    # the tiles went back to the pool with the node; the gradient is the recomputed one
    assert pool.idle_bytes() == kept.nbytes
    want = winograd.weight_gradient(winograd.transformed_tiles(x.detach().numpy(), pads, m), g, m)
    np.testing.assert_allclose(w.grad.numpy(), want, rtol=1e-12, atol=1e-12)
    # the next step takes the same buffer
    y = kernels.conv(x, w, None, (1, 1), pads)
    assert np.shares_memory(y.grad_fn.kept, kept) and pool.idle_bytes() == 0


def test_kept_tiles_survive_a_retained_graph_and_a_dropped_one():
    x, w = winograd_conv(2)
    y = kernels.conv(x, w, None, (1, 1), ((1, 1), (1, 1)))
    y.sum().backward(retain_graph=True)
    assert pool.idle_bytes() == 0  # still held by the node
    first = w.grad.numpy().copy()
    w.grad = None
    y.sum().backward()
    np.testing.assert_array_equal(w.grad.numpy(), first)
    assert pool.idle_bytes() > 0
    pool.clear()
    kernels.conv(x, w, None, (1, 1), ((1, 1), (1, 1)))  # never backward: collected as usual
    assert pool.idle_bytes() == 0


def test_tiles_are_kept_only_for_a_weight_that_needs_its_gradient():
    x, w = winograd_conv(2)
    frozen = torch.tensor(w.detach().numpy())
    y = kernels.conv(x, frozen, None, (1, 1), ((1, 1), (1, 1)))
    assert y.grad_fn.plan.winograd == 2 and y.grad_fn.kept is None
    y.sum().backward()
    assert x.grad is not None and pool.idle_bytes() == 0


@pytest.mark.parametrize("bias", [False, True])
def test_per_sample_columns_are_kept_for_the_weight_gradient(monkeypatch, bias):
    """conv1's path (one sample's columns at a time) builds them in a pooled buffer; the
    weight gradient reads them instead of gathering the input again (a bias's row of ones
    stays out of it)."""
    monkeypatch.setattr(kernels, "_PER_SAMPLE_PIXELS", 0)
    rng = np.random.default_rng(5)
    x = torch.tensor(rng.standard_normal((3, 2, 9, 8)))
    w = torch.tensor(rng.standard_normal((4, 2, 3, 3)), requires_grad=True)
    b = torch.tensor(rng.standard_normal(4), requires_grad=True) if bias else None
    y = kernels.conv(x, w, b, (2, 2), ((1, 1), (1, 1)))
    node = y.grad_fn
    shape = node.plan.sample_columns_shape(bias)
    assert node.plan.per_sample and node.kept.shape == shape
    assert node._saved[0] is None  # the input itself is not kept
    g = rng.standard_normal(y.shape)
    y.backward(torch.tensor(g))
    assert pool.idle_bytes() == math.prod(shape) * 8  # given back with the node
    # against the plain loop's gradient: the convolution is linear in w
    want = np.zeros(w.shape)
    for index in np.ndindex(*w.shape):
        unit = np.zeros(w.shape)
        unit[index] = 1
        want[index] = (
            conv_loop(x.numpy(), unit, None, (2, 2), ((1, 1), (1, 1)), (1, 1), 1) * g
        ).sum()
    np.testing.assert_allclose(w.grad.numpy(), want, rtol=1e-10, atol=1e-10)
