"""Linear, BatchNorm, activations, dropout, flatten, adaptive pooling and init against numpy
loops and finite differences."""

from __future__ import annotations

import math

import numpy as np
import pytest

import finetune as torch
import finetune.nn.functional as F
from finetune import nn
from finetune.autograd import gradcheck
from finetune.errors import ShapeError
from finetune.nn import init


def leaf(array) -> torch.Tensor:
    return torch.tensor(np.asarray(array, dtype=np.float64), requires_grad=True)


def rng(seed: int = 0) -> np.random.Generator:
    return np.random.default_rng(seed)


# -- Linear -----------------------------------------------------------------------------------


def test_linear_matches_a_loop_and_defaults_to_float32():
    torch.manual_seed(0)
    layer = nn.Linear(3, 2)
    assert layer.weight.dtype == torch.float32 and layer.bias.dtype == torch.float32
    x = rng().standard_normal((4, 3)).astype(np.float32)
    w, b = layer.weight.detach().numpy(), layer.bias.detach().numpy()
    expected = np.zeros((4, 2), dtype=np.float64)
    for n in range(4):
        for o in range(2):
            expected[n, o] = b[o] + sum(x[n, i] * w[o, i] for i in range(3))
    out = layer(torch.from_numpy(x))
    assert out.dtype == torch.float32
    assert np.allclose(out.detach().numpy(), expected, atol=1e-6)


@pytest.mark.parametrize("rows", [1, 8, 64, 65, 200])
@pytest.mark.parametrize("order", ["C", "F"])
def test_linear_with_a_large_weight_matches_float64_whatever_the_product_order(rows, order):
    """Few rows against a large row-major weight are multiplied the other way round (the
    weight times the rows' transpose); the result is the same product, C-contiguous."""
    weight = rng(4).standard_normal((300, 256)).astype(np.float32)  # 76,800 values
    bias = rng(5).standard_normal(300).astype(np.float32)
    x = rng(6).standard_normal((rows, 256)).astype(np.float32)
    w = torch.from_numpy(np.asarray(weight, order=order))
    out = F.linear(torch.from_numpy(x), w, torch.from_numpy(bias)).numpy()
    want = x.astype(np.float64) @ weight.T.astype(np.float64) + bias
    assert out.flags.c_contiguous and out.dtype == np.float32
    np.testing.assert_allclose(out, want, rtol=1e-5, atol=1e-4)


def test_linear_grad_fn_names_follow_pytorch():
    x = torch.ones(2, 3, requires_grad=True)
    assert F.linear(x, torch.ones(4, 3), torch.ones(4)).grad_fn.name() == "AddmmBackward0"
    assert F.linear(x, torch.ones(4, 3)).grad_fn.name() == "MmBackward0"


@pytest.mark.parametrize("shape", [(4, 3), (2, 2, 3), (3,)])
@pytest.mark.parametrize("bias", [True, False])
def test_linear_gradcheck(shape, bias):
    x = leaf(rng(1).standard_normal(shape))
    w = leaf(rng(2).standard_normal((2, 3)))
    b = leaf(rng(3).standard_normal(2)) if bias else None
    args = (x, w, b) if bias else (x, w)
    assert gradcheck(lambda *a: F.linear(*a), args)


def test_frozen_linear_computes_and_saves_no_weight_gradient():
    layer = nn.Linear(3, 2).requires_grad_(False)
    x = torch.randn(4, 3, requires_grad=True)
    out = layer(x)
    saved_input, saved_weight = out.grad_fn.saved_tensors
    assert saved_input is None and saved_weight is not None
    out.sum().backward()
    assert layer.weight.grad is None and layer.bias.grad is None
    assert np.allclose(x.grad.numpy(), np.broadcast_to(layer.weight.numpy().sum(0), (4, 3)))
    assert layer(torch.randn(4, 3)).grad_fn is None


def test_linear_shape_mistake_names_layer_and_shapes():
    with pytest.raises(ShapeError) as info:
        nn.Linear(512, 10)(torch.zeros(4, 256))
    message = str(info.value)
    assert "Linear(in_features=512, out_features=10, bias=True)" in message
    assert "512" in message and "[4, 256]" in message
    with pytest.raises(ShapeError, match=r"4x256 and 512x10"):
        F.linear(torch.zeros(4, 256), torch.zeros(10, 512))


def test_identity_and_flatten():
    x = torch.randn(2, 3, 4, 5)
    assert nn.Identity(54, unused=1)(x) is x
    assert nn.Flatten()(x).shape == torch.Size([2, 60])
    assert nn.Flatten(0, 2)(x).shape == torch.Size([24, 5])
    assert F.flatten(x, 1).shape == torch.Size([2, 60])
    y = leaf(rng().standard_normal((2, 3, 2)))
    assert gradcheck(lambda t: nn.Flatten()(t) * 2, (y,))


# -- BatchNorm ------------------------------------------------------------------------------------


def batch_norm_loop(x, weight, bias, eps):
    """Per-channel normalisation with the biased batch variance, one channel at a time."""
    out = np.empty_like(x, dtype=np.float64)
    means, unbiased = [], []
    for c in range(x.shape[1]):
        values = x[:, c].astype(np.float64).ravel()
        mean = sum(values) / len(values)
        var = sum((v - mean) ** 2 for v in values) / len(values)
        out[:, c] = (x[:, c] - mean) / math.sqrt(var + eps) * weight[c] + bias[c]
        means.append(mean)
        unbiased.append(var * len(values) / (len(values) - 1))
    return out, np.array(means), np.array(unbiased)


def test_batchnorm2d_train_matches_loop_and_updates_running_stats():
    bn = nn.BatchNorm2d(3)
    bn.weight.data = torch.tensor([1.0, 2.0, 0.5])
    bn.bias.data = torch.tensor([0.0, -1.0, 0.3])
    x1 = rng(1).standard_normal((4, 3, 2, 2)).astype(np.float32) * 3 + 1
    x2 = rng(2).standard_normal((4, 3, 2, 2)).astype(np.float32)
    out = bn(torch.from_numpy(x1))
    expected, mean1, var1 = batch_norm_loop(x1, [1, 2, 0.5], [0, -1, 0.3], 1e-5)
    assert out.grad_fn.name() == "NativeBatchNormBackward0"
    assert out.dtype == torch.float32
    assert np.allclose(out.detach().numpy(), expected, atol=1e-5)
    bn(torch.from_numpy(x2))
    _, mean2, var2 = batch_norm_loop(x2, [1] * 3, [0] * 3, 1e-5)
    running_mean = 0.9 * (0.9 * 0 + 0.1 * mean1) + 0.1 * mean2
    running_var = 0.9 * (0.9 * 1 + 0.1 * var1) + 0.1 * var2
    assert np.allclose(bn.running_mean.numpy(), running_mean, atol=1e-6)
    assert np.allclose(bn.running_var.numpy(), running_var, atol=1e-5)
    assert bn.num_batches_tracked.item() == 2
    assert bn.running_mean.dtype == torch.float32


def test_batchnorm_momentum_none_is_a_cumulative_average():
    bn = nn.BatchNorm1d(2, momentum=None)
    batches = [rng(i).standard_normal((5, 2)).astype(np.float32) for i in range(3)]
    for b in batches:
        bn(torch.from_numpy(b))
    means = [batch_norm_loop(b, [1, 1], [0, 0], 1e-5)[1] for b in batches]
    variances = [batch_norm_loop(b, [1, 1], [0, 0], 1e-5)[2] for b in batches]
    assert np.allclose(bn.running_mean.numpy(), np.mean(means, axis=0), atol=1e-6)
    assert np.allclose(bn.running_var.numpy(), np.mean(variances, axis=0), atol=1e-5)


def test_batchnorm_eval_uses_running_stats_and_saves_nothing_when_frozen():
    bn = nn.BatchNorm2d(2, eps=1e-3)
    bn.running_mean.copy_(torch.tensor([0.5, -1.0]))
    bn.running_var.copy_(torch.tensor([4.0, 0.25]))
    bn.weight.data = torch.tensor([2.0, 3.0])
    bn.bias.data = torch.tensor([0.1, 0.2])
    bn.eval()
    x = rng().standard_normal((2, 2, 3, 3)).astype(np.float32)
    expected = np.empty_like(x)
    for c, (m, v, w, b) in enumerate(zip([0.5, -1.0], [4.0, 0.25], [2.0, 3.0], [0.1, 0.2])):
        expected[:, c] = (x[:, c] - m) / math.sqrt(v + 1e-3) * w + b
    out = bn(torch.from_numpy(x))
    assert np.allclose(out.detach().numpy(), expected, atol=1e-6)
    assert bn.num_batches_tracked.item() == 0
    assert np.allclose(bn.running_mean.numpy(), [0.5, -1.0])
    bn.requires_grad_(False)
    assert bn(torch.from_numpy(x)).grad_fn is None
    frozen_affine = bn(torch.from_numpy(x).requires_grad_(True)).grad_fn
    saved_x_hat, saved_scale = frozen_affine.saved_tensors
    assert saved_x_hat is None and saved_scale is not None


def test_batchnorm_train_gradcheck():
    bn = nn.BatchNorm2d(3).double()
    bn.weight.data = torch.tensor([1.5, -0.5, 2.0], dtype=torch.float64)
    bn.bias.data = torch.tensor([0.1, 0.2, 0.3], dtype=torch.float64)
    x = leaf(rng(4).standard_normal((2, 3, 2, 2)))
    assert gradcheck(lambda t: bn(t), (x,))
    w, b = leaf([1.5, -0.5, 2.0]), leaf([0.1, 0.2, 0.3])
    assert gradcheck(lambda t, w, b: F.batch_norm(t, None, None, w, b, training=True), (x, w, b))
    assert gradcheck(lambda t: F.batch_norm(t, None, None, training=True), (x,))
    x1d = leaf(rng(5).standard_normal((4, 2)))
    assert gradcheck(lambda t: nn.BatchNorm1d(2).double()(t), (x1d,))


def test_batchnorm_eval_gradcheck():
    x = leaf(rng(6).standard_normal((2, 3, 2, 2)))
    w, b = leaf([1.5, -0.5, 2.0]), leaf([0.1, 0.2, 0.3])
    rm = torch.tensor([0.3, -0.2, 0.0], dtype=torch.float64)
    rv = torch.tensor([1.5, 0.5, 2.0], dtype=torch.float64)
    assert gradcheck(lambda t, w, b: F.batch_norm(t, rm, rv, w, b, training=False), (x, w, b))


def test_batchnorm_shape_mistakes_name_layer_and_shapes():
    with pytest.raises(ShapeError) as info:
        nn.BatchNorm2d(64)(torch.zeros(2, 32, 4, 4))
    assert "BatchNorm2d(64," in str(info.value) and "[2, 32, 4, 4]" in str(info.value)
    with pytest.raises(ShapeError, match=r"\[2, 64\]"):
        nn.BatchNorm2d(64)(torch.zeros(2, 64))
    with pytest.raises(ShapeError, match="more than 1 value per channel"):
        nn.BatchNorm1d(3)(torch.zeros(1, 3))


def test_batchnorm_without_affine_or_tracking():
    bn = nn.BatchNorm1d(2, affine=False, track_running_stats=False)
    assert list(bn.state_dict()) == []
    x = rng().standard_normal((6, 2)).astype(np.float32)
    expected, _, _ = batch_norm_loop(x, [1, 1], [0, 0], 1e-5)
    assert np.allclose(bn.eval()(torch.from_numpy(x)).numpy(), expected, atol=1e-5)


# -- activations ------------------------------------------------------------------------------


def away_from_kinks(shape, seed=7):
    """Values at least 0.1 away from 0 and ±1 and 6, where the activations are not smooth."""
    values = rng(seed).uniform(-8, 8, shape)
    for kink in (0.0, 1.0, -1.0, 6.0):
        near = np.abs(values - kink) < 0.1
        values[near] += 0.25
    return values


ACTIVATIONS = {
    "relu": (nn.ReLU(), lambda v: np.maximum(v, 0)),
    "relu6": (nn.ReLU6(), lambda v: np.minimum(np.maximum(v, 0), 6)),
    "leaky_relu": (nn.LeakyReLU(0.2), lambda v: np.where(v > 0, v, 0.2 * v)),
    "hardtanh": (nn.Hardtanh(), lambda v: np.clip(v, -1, 1)),
    "sigmoid": (nn.Sigmoid(), lambda v: 1 / (1 + np.exp(-v))),
    "tanh": (nn.Tanh(), np.tanh),
    "gelu": (nn.GELU(), lambda v: 0.5 * v * (1 + np.vectorize(math.erf)(v / math.sqrt(2)))),
    "gelu_tanh": (
        nn.GELU(approximate="tanh"),
        lambda v: 0.5 * v * (1 + np.tanh(math.sqrt(2 / math.pi) * (v + 0.044715 * v**3))),
    ),
}


@pytest.mark.parametrize("name", list(ACTIVATIONS))
def test_activation_values_and_gradcheck(name):
    layer, reference = ACTIVATIONS[name]
    values = away_from_kinks((3, 4))
    out = layer(torch.from_numpy(values.astype(np.float32)))
    assert out.dtype == torch.float32
    assert np.allclose(out.numpy(), reference(values), atol=1e-6)
    assert gradcheck(lambda t: layer(t), (leaf(values),))


def test_activation_grad_fn_names():
    x = torch.randn(3, requires_grad=True)
    assert F.relu(x).grad_fn.name() == "ReluBackward0"
    assert F.relu6(x).grad_fn.name() == "HardtanhBackward0"
    assert F.leaky_relu(x).grad_fn.name() == "LeakyReluBackward0"
    assert F.gelu(x).grad_fn.name() == "GeluBackward0"
    assert torch.erf(x).grad_fn.name() == "ErfBackward0"


def test_gelu_repr_and_bad_approximation():
    assert repr(nn.GELU()) == "GELU(approximate='none')"
    assert repr(nn.GELU("tanh")) == "GELU(approximate='tanh')"
    with pytest.raises(ValueError, match="approximate argument must be either none or tanh"):
        F.gelu(torch.ones(2), approximate="fast")


def test_inplace_relu_overwrites_without_graph_and_records_with_one():
    x = torch.tensor([-1.0, 2.0])
    assert nn.ReLU(inplace=True)(x) is x
    assert x.tolist() == [0.0, 2.0]
    values = away_from_kinks((2, 3))

    def through_inplace(t):
        hidden = t * 1.0
        return nn.ReLU(inplace=True)(hidden) * 3

    assert gradcheck(through_inplace, (leaf(values),))
    assert gradcheck(lambda t: F.relu6(t * 1.0, inplace=True), (leaf(values),))


@pytest.mark.parametrize("dim", [0, 1, -1])
def test_softmax_layers(dim):
    values = rng(8).standard_normal((3, 4))
    e = np.exp(values - values.max(axis=dim, keepdims=True))
    expected = e / e.sum(axis=dim, keepdims=True)
    assert np.allclose(nn.Softmax(dim)(torch.from_numpy(values)).numpy(), expected)
    assert np.allclose(nn.LogSoftmax(dim)(torch.from_numpy(values)).numpy(), np.log(expected))
    assert gradcheck(lambda t: F.softmax(t, dim), (leaf(values),))
    assert gradcheck(lambda t: F.log_softmax(t, dim), (leaf(values),))


# -- dropout ----------------------------------------------------------------------------------


def test_dropout_train_scales_kept_values_and_eval_is_identity():
    torch.manual_seed(0)
    layer = nn.Dropout(p=0.25)
    x = torch.ones(200, 50)
    out = layer(x).numpy()
    kept = out != 0
    assert np.allclose(out[kept], 1 / 0.75)
    assert abs(kept.mean() - 0.75) < 0.02
    torch.manual_seed(0)
    assert np.array_equal(layer(x).numpy(), out)
    assert layer.eval()(x) is x
    assert F.dropout(x, 0.0) is x
    assert F.dropout(x, 1.0).abs().sum().item() == 0.0
    with pytest.raises(ValueError, match="between 0 and 1"):
        nn.Dropout(1.5)


def test_dropout_gradient_is_the_mask():
    values = rng(9).standard_normal((4, 5))

    def seeded_dropout(t):
        torch.manual_seed(3)
        return F.dropout(t, 0.4, training=True)

    assert gradcheck(seeded_dropout, (leaf(values),))
    x = leaf(values)
    out = seeded_dropout(x)
    assert out.grad_fn.name() == "NativeDropoutBackward0"
    out.sum().backward()
    assert np.allclose(x.grad.numpy(), out.detach().numpy() / values)


# -- adaptive average pooling ------------------------------------------------------------------


def adaptive_avg_loop(x, oh, ow):
    n, c, h, w = x.shape
    out = np.zeros((n, c, oh, ow))
    for i in range(oh):
        for j in range(ow):
            r0, r1 = (i * h) // oh, math.ceil((i + 1) * h / oh)
            c0, c1 = (j * w) // ow, math.ceil((j + 1) * w / ow)
            out[:, :, i, j] = x[:, :, r0:r1, c0:c1].mean(axis=(2, 3))
    return out


@pytest.mark.parametrize("size", [(1, 1), 1, (2, 3), (3, 2), (5, 4)])
def test_adaptive_avg_pool_matches_loop_and_gradcheck(size):
    values = rng(10).standard_normal((2, 2, 5, 4))
    out_hw = (size, size) if isinstance(size, int) else size
    expected = adaptive_avg_loop(values, *out_hw)
    out = nn.AdaptiveAvgPool2d(size)(torch.from_numpy(values))
    assert out.shape == torch.Size([2, 2, *out_hw])
    assert np.allclose(out.numpy(), expected)
    assert gradcheck(lambda t: F.adaptive_avg_pool2d(t, size), (leaf(values),))


def test_global_average_pool_is_a_mean():
    x = torch.randn(2, 3, 4, 4, requires_grad=True)
    assert F.adaptive_avg_pool2d(x, (1, 1)).grad_fn.name() == "MeanBackward1"


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("keepdim", [True, False])
def test_a_channels_last_global_average_is_the_float64_mean(keepdim, dtype, monkeypatch):
    """The mean over the pixels of a channels-last input (a product with a row of ones) gives
    numpy's float64 mean, its shape and dtype, and the same gradient."""
    from finetune.autograd import reductions

    calls = []
    means = reductions._pixel_means_last
    monkeypatch.setattr(reductions, "_pixel_means_last", lambda x: calls.append(1) or means(x))
    last = (rng(40).standard_normal((3, 9, 7, 5)) * 3 + 1).astype(dtype)  # n h w c
    x = np.moveaxis(last, 3, 1)  # n c h w, stored channels last
    got = torch.from_numpy(x).mean(dim=(-2, -1), keepdim=keepdim).numpy()
    assert calls  # the channels-last path ran
    want = x.astype(np.float64).mean(axis=(2, 3), keepdims=keepdim)
    assert got.shape == want.shape and got.dtype == dtype
    np.testing.assert_allclose(got, want, rtol=1e-6 if dtype == np.float32 else 1e-12)
    if dtype == np.float64:
        t = torch.from_numpy(x).requires_grad_(True)
        assert gradcheck(lambda t: t.mean(dim=(2, 3), keepdim=keepdim), (t,))


# -- init -------------------------------------------------------------------------------------


def test_calculate_gain_and_fans():
    assert init.calculate_gain("relu") == math.sqrt(2)
    assert init.calculate_gain("tanh") == 5 / 3
    assert init.calculate_gain("conv2d") == 1
    assert init.calculate_gain("leaky_relu", math.sqrt(5)) == math.sqrt(2 / 6)
    assert init._calculate_fan_in_and_fan_out(torch.empty(8, 3, 5, 5)) == (75, 200)
    assert init._calculate_fan_in_and_fan_out(torch.empty(10, 4)) == (4, 10)
    with pytest.raises(ShapeError):
        init._calculate_fan_in_and_fan_out(torch.empty(3))
    with pytest.raises(ValueError):
        init.calculate_gain("swish")


def test_initialisers_draw_the_right_distributions_in_place():
    torch.manual_seed(0)
    w = nn.Parameter(torch.empty(256, 128))
    same = w
    init.kaiming_normal_(w, mode="fan_out", nonlinearity="relu")
    assert w is same and w.is_leaf and w.requires_grad and w.dtype == torch.float32
    assert abs(w.detach().numpy().std() / math.sqrt(2 / 256) - 1) < 0.02
    init.kaiming_uniform_(w, a=math.sqrt(5))
    bound = 1 / math.sqrt(128)
    assert np.abs(w.detach().numpy()).max() <= bound
    assert abs(np.abs(w.detach().numpy()).max() / bound - 1) < 0.01
    init.xavier_uniform_(w, gain=2.0)
    assert np.abs(w.detach().numpy()).max() <= 2 * math.sqrt(6 / 384)
    init.xavier_normal_(w)
    assert abs(w.detach().numpy().std() / math.sqrt(2 / 384) - 1) < 0.02
    init.normal_(w, 3.0, 0.5)
    assert abs(w.detach().numpy().mean() - 3) < 0.01
    init.uniform_(w, -2, -1)
    assert w.detach().numpy().min() >= -2 and w.detach().numpy().max() <= -1
    init.constant_(w, 0.5)
    assert np.all(w.detach().numpy() == 0.5)
    init.zeros_(w)
    assert not w.detach().numpy().any()
    init.ones_(w)
    assert np.all(w.detach().numpy() == 1)


def test_default_layer_init_matches_pytorch_and_is_reproducible():
    torch.manual_seed(42)
    conv = nn.Conv2d(4, 6, 3)
    linear = nn.Linear(20, 5)
    torch.manual_seed(42)
    conv_again = nn.Conv2d(4, 6, 3)
    assert np.array_equal(conv.weight.detach().numpy(), conv_again.weight.detach().numpy())
    for layer, fan_in in ((conv, 36), (linear, 20)):
        bound = 1 / math.sqrt(fan_in)  # kaiming_uniform_(a=sqrt(5)) reduces to this bound
        assert np.abs(layer.weight.detach().numpy()).max() <= bound
        assert np.abs(layer.bias.detach().numpy()).max() <= bound
        assert layer.weight.dtype == torch.float32 and layer.weight.grad_fn is None
    depthwise = nn.Conv2d(8, 8, 3, groups=8)
    assert depthwise.weight.shape == torch.Size([8, 1, 3, 3])
    assert np.abs(depthwise.bias.detach().numpy()).max() <= 1 / 3
    bn = nn.BatchNorm2d(3)
    assert bn.weight.tolist() == [1.0, 1.0, 1.0] and bn.bias.tolist() == [0.0, 0.0, 0.0]


@pytest.mark.parametrize("mode", ["constant", "reflect", "replicate", "circular"])
def test_functional_pad_matches_numpy_and_gradcheck(mode):
    values = rng(11).standard_normal((1, 2, 3, 4))
    numpy_mode = {"replicate": "edge", "circular": "wrap"}.get(mode, mode)
    expected = np.pad(values, ((0, 0), (0, 0), (2, 1), (1, 2)), mode=numpy_mode)
    out = F.pad(torch.from_numpy(values), (1, 2, 2, 1), mode=mode)
    assert np.array_equal(out.numpy(), expected)
    assert gradcheck(lambda t: F.pad(t, (1, 2, 2, 1), mode=mode), (leaf(values),))


def test_skip_init_builds_the_module_without_drawing_weights():
    """torch.nn.utils.skip_init: same class, same shapes, no random draws consumed."""
    from finetune.nn.utils import skip_init

    torch.manual_seed(0)
    expected = torch.randn(3)
    torch.manual_seed(0)
    layer = skip_init(nn.Linear, 4, 2)
    assert type(layer) is nn.Linear and layer.weight.shape == (2, 4) and layer.bias.shape == (2,)
    np.testing.assert_array_equal(torch.randn(3).numpy(), expected.numpy())
