"""BatchNorm folded into the convolution for frozen inference: same results, never stale."""

import numpy as np
import onnx
import pytest

import finetune as ft
from finetune import nn
from finetune.nn.fusion import FrozenBatchNorm, FrozenConvolution, conv_bn


def _pair(bias=False, affine=True, seed=0):
    ft.manual_seed(seed)
    conv = nn.Conv2d(3, 4, 3, stride=2, padding=1, bias=bias)
    bn = nn.BatchNorm2d(4, affine=affine)
    rng = np.random.default_rng(seed)
    with ft.no_grad():
        bn.running_mean.copy_(ft.from_numpy(rng.standard_normal(4).astype(np.float32)))
        bn.running_var.copy_(ft.from_numpy(rng.uniform(0.5, 2, 4).astype(np.float32)))
        if affine:
            bn.weight.copy_(ft.from_numpy(rng.uniform(0.5, 1.5, 4).astype(np.float32)))
            bn.bias.copy_(ft.from_numpy(rng.standard_normal(4).astype(np.float32)))
    return conv.eval(), bn.eval()


def _x(seed=1, shape=(2, 3, 9, 9)):
    return ft.from_numpy(np.random.default_rng(seed).standard_normal(shape).astype(np.float32))


@pytest.mark.parametrize("bias", [False, True])
@pytest.mark.parametrize("affine", [False, True])
def test_folded_equals_conv_then_batchnorm(bias, affine):
    conv, bn = _pair(bias, affine)
    x = _x()
    with ft.no_grad():
        expected = bn(conv(x)).numpy()
        got = conv_bn(conv, bn, x)
    assert got.dtype == ft.float32
    np.testing.assert_allclose(got.numpy(), expected, rtol=1e-5, atol=1e-6)


def test_cache_follows_in_place_changes_and_new_parameters():
    conv, bn = _pair()
    x = _x()
    with ft.no_grad():
        first = conv_bn(conv, bn, x).numpy().copy()
        bn.running_mean.add_(1.0)
        np.testing.assert_allclose(
            conv_bn(conv, bn, x).numpy(), bn(conv(x)).numpy(), rtol=1e-5, atol=1e-6
        )
        assert not np.allclose(conv_bn(conv, bn, x).numpy(), first)
        conv.weight = nn.Parameter(conv.weight.detach() * 2)
        np.testing.assert_allclose(
            conv_bn(conv, bn, x).numpy(), bn(conv(x)).numpy(), rtol=1e-5, atol=1e-6
        )
        bn.load_state_dict(_pair(seed=5)[1].state_dict())
        np.testing.assert_allclose(
            conv_bn(conv, bn, x).numpy(), bn(conv(x)).numpy(), rtol=1e-5, atol=1e-6
        )


def test_gradients_and_training_take_the_plain_path():
    conv, bn = _pair()
    x = _x().requires_grad_()
    out = conv_bn(conv, bn, x)
    assert out.grad_fn is not None and out.grad_fn.name() != "ConvolutionBackward0"
    out.sum().backward()
    assert x.grad is not None and conv.weight.grad is not None
    conv.train()
    bn.train()
    before = bn.running_mean.numpy().copy()
    with ft.no_grad():
        conv_bn(conv, bn, _x())
    assert not np.array_equal(bn.running_mean.numpy(), before)  # batch statistics were used


def test_hooks_are_honoured():
    conv, bn = _pair()
    seen = []
    bn.register_forward_hook(lambda m, args, out: seen.append(out.shape))
    with ft.no_grad():
        conv_bn(conv, bn, _x())
    assert seen == [(2, 4, 5, 5)]


def test_resnet18_frozen_inference_matches_the_unfolded_network(tmp_path):
    ft.manual_seed(0)
    model = ft.models.resnet18(num_classes=10).eval()
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            with ft.no_grad():
                m.running_mean.copy_(ft.randn(m.num_features) * 0.1)
                m.running_var.copy_(ft.rand(m.num_features) + 0.5)
    x = _x(shape=(2, 3, 64, 64))
    with ft.no_grad():
        folded = model(x).numpy()
    reference = model(x.clone().requires_grad_()).detach().numpy()  # gradients: plain path
    np.testing.assert_allclose(folded, reference, rtol=1e-4, atol=1e-5)
    path = tmp_path / "r18.onnx"
    ft.onnx.export(model, ft.zeros(1, 3, 64, 64), path)  # the exporter sees the real layers
    ops = [n.op_type for n in onnx.load(str(path)).graph.node]
    assert ops.count("BatchNormalization") == 20 and ops.count("Conv") == 20


def test_folded_weights_follow_a_conversion_to_float64():
    """``.double()`` swaps every array without an in-place write: the fold must see it."""
    conv, bn = _pair(bias=True)
    x = _x()
    with ft.no_grad():
        conv_bn(conv, bn, x)  # caches the float32 fold
        conv.double(), bn.double()
        x64 = ft.from_numpy(x.numpy().astype(np.float64))
        got = conv_bn(conv, bn, x64)
        expected = bn(conv(x64))
    assert got.dtype == ft.float64
    np.testing.assert_allclose(got.numpy(), expected.numpy(), rtol=1e-12, atol=1e-12)


def _recording(calls):
    def fallback(x, *others):
        calls.append(x)
        return "fallback"

    return fallback


@pytest.mark.parametrize("with_bn", [False, True])
@pytest.mark.parametrize("relu", [False, True])
def test_a_frozen_convolution_runs_straight_on_the_kernels(with_bn, relu):
    from finetune.autograd import piecewise

    conv, bn = _pair(bias=True)
    calls = []
    frozen = FrozenConvolution(
        conv, bn if with_bn else None, piecewise.relu() if relu else None, _recording(calls)
    )
    x = _x()
    with ft.no_grad():
        got = frozen(x)
        expected = bn(conv(x)) if with_bn else conv(x)
    expected = np.maximum(expected.numpy(), 0) if relu else expected.numpy()
    assert calls == [] and got.dtype == ft.float32 and not got.requires_grad
    np.testing.assert_allclose(got.numpy(), expected, rtol=1e-5, atol=1e-6)


def _step_aside_cases():
    """What makes ``FrozenConvolution`` hand over to its layers, each a change to make."""

    def hook(conv, bn, x):
        conv.register_forward_hook(lambda *args: None)

    def train_bn(conv, bn, x):
        bn.train()

    def trainable(conv, bn, x):
        conv.weight.requires_grad_()

    def reflect(conv, bn, x):
        conv.padding_mode = "reflect"

    return {"hook": hook, "bn-train": train_bn, "trainable": trainable, "reflect": reflect}


@pytest.mark.parametrize("case", list(_step_aside_cases()))
def test_a_frozen_convolution_steps_aside_when_its_layers_would_differ(case):
    conv, bn = _pair()
    for p in (*conv.parameters(), *bn.parameters()):
        p.requires_grad_(False)
    _step_aside_cases()[case](conv, bn, None)
    calls = []
    x = _x()
    assert FrozenConvolution(conv, bn, None, _recording(calls))(x) == "fallback"
    assert calls == [x]


@pytest.mark.parametrize("shape, dtype", [((2, 5, 9, 9), np.float32), ((2, 3, 9, 9), np.float64)])
def test_inputs_the_layer_would_refuse_or_convert_take_its_own_path(shape, dtype):
    conv, _ = _pair()
    calls = []
    x = ft.from_numpy(np.zeros(shape, dtype))
    with ft.no_grad():
        assert FrozenConvolution(conv, None, None, _recording(calls))(x) == "fallback"
    assert calls == [x]


def test_an_input_needing_a_gradient_takes_the_layers_path():
    conv, bn = _pair()
    for p in conv.parameters():
        p.requires_grad_(False)
    calls = []
    x = _x().requires_grad_()
    FrozenConvolution(conv, None, None, _recording(calls))(x)
    assert calls == [x]
    with ft.no_grad():  # no gradient recorded: the direct path is exact
        assert FrozenConvolution(conv, None, None, _recording(calls))(x).shape == (2, 4, 5, 5)
    assert calls == [x]


def test_a_frozen_convolution_sees_every_change_to_its_layers():
    """The weights, bias and plan it keeps between calls follow in-place changes, new
    parameters, a conversion to float64, new padding and another input size."""
    conv, bn = _pair(bias=True)
    calls = []
    frozen = FrozenConvolution(conv, bn, None, _recording(calls))

    def check(x):
        with ft.no_grad():
            got, want = frozen(x), bn(conv(x))
        assert got.dtype == want.dtype and got.shape == want.shape
        np.testing.assert_allclose(got.numpy(), want.numpy(), rtol=1e-5, atol=1e-5)

    check(_x())
    with ft.no_grad():
        bn.running_var.mul_(2.0)
        check(_x())
        conv.weight.add_(0.5)
        check(_x())
    conv.bias = nn.Parameter(conv.bias.detach() + 1)
    check(_x())
    bn.eps = 0.5
    check(_x())
    conv.padding = (0, 0)
    check(_x())
    check(_x(shape=(1, 3, 12, 7)))
    conv.double(), bn.double()
    check(ft.from_numpy(_x().numpy().astype(np.float64)))
    assert calls == []  # every call took the direct path


@pytest.mark.parametrize("affine", [False, True])
@pytest.mark.parametrize("layout", ["row-major", "channels-last"])
def test_a_frozen_batchnorm_is_the_layers_then_the_activation(affine, layout):
    from finetune.autograd import piecewise

    _, bn = _pair(affine=affine)
    x = np.random.default_rng(2).standard_normal((2, 4, 5, 6)).astype(np.float32)
    if layout == "channels-last":
        x = np.ascontiguousarray(x.transpose(0, 2, 3, 1)).transpose(0, 3, 1, 2)
    calls = []
    frozen = FrozenBatchNorm(bn, piecewise.relu(), _recording(calls))
    with ft.no_grad():
        got = frozen(ft.from_numpy(x))
        want = np.maximum(bn(ft.from_numpy(x)).numpy(), 0)
    assert calls == [] and got.dtype == ft.float32
    np.testing.assert_array_equal(got.numpy(), want)
    with ft.no_grad():
        bn.running_mean.add_(1.0)  # a change to the statistics is seen
        np.testing.assert_array_equal(
            frozen(ft.from_numpy(x)).numpy(), np.maximum(bn(ft.from_numpy(x)).numpy(), 0)
        )


@pytest.mark.parametrize("case", ["train", "hook", "trainable", "channels", "grad-input"])
def test_a_frozen_batchnorm_steps_aside_when_its_layer_would_differ(case):
    _, bn = _pair()
    for p in bn.parameters():
        p.requires_grad_(False)
    x = _x(shape=(2, 4, 3, 3))
    if case == "train":
        bn.train()
    elif case == "hook":
        bn.register_forward_pre_hook(lambda *args: None)
    elif case == "trainable":
        bn.weight.requires_grad_()
    elif case == "channels":
        x = _x(shape=(2, 5, 3, 3))
    else:
        x.requires_grad_()
    calls = []
    assert FrozenBatchNorm(bn, None, _recording(calls))(x) == "fallback"
    assert calls == [x]


def _residual_case(kind: str, seed=7):
    """A frozen (conv, BatchNorm) pair in eval mode, an input, and a skip of the output's shape:
    ``im2col`` (3x3 stride 2, a channels-last product), ``winograd`` (3x3 stride 1, 16
    channels) or ``1x1``."""
    c, o, k, stride, padding, size = {
        "im2col": (3, 4, 3, 2, 1, 9),
        "winograd": (16, 16, 3, 1, 1, 8),
        "1x1": (6, 5, 1, 1, 0, 7),
    }[kind]
    ft.manual_seed(seed)
    conv = nn.Conv2d(c, o, k, stride=stride, padding=padding, bias=False).eval()
    bn = nn.BatchNorm2d(o).eval()
    rng = np.random.default_rng(seed)
    with ft.no_grad():
        bn.running_mean.copy_(ft.from_numpy(rng.standard_normal(o).astype(np.float32)))
        bn.running_var.copy_(ft.from_numpy(rng.uniform(0.5, 2, o).astype(np.float32)))
    for p in (*conv.parameters(), *bn.parameters()):
        p.requires_grad_(False)  # a frozen backbone's
    x = _x(seed, (2, c, size, size))
    out = (size + 2 * padding - k) // stride + 1
    skip = _x(seed + 1, (2, o, out, out))
    return conv, bn, x, skip


def _residuals_seen(monkeypatch) -> list:
    """The residuals the convolution kernels are handed, appended as they come."""
    from finetune.autograd import conv as kernels

    seen, convolve = [], kernels._convolve

    def recorded(*args):
        seen.append(args[7] if len(args) > 7 else None)
        return convolve(*args)

    monkeypatch.setattr(kernels, "_convolve", recorded)
    return seen


@pytest.mark.parametrize("layout", ["channels_last", "contiguous"])
@pytest.mark.parametrize("kind", ["im2col", "winograd", "1x1"])
def test_a_skip_connection_and_relu_ride_in_the_convolution(kind, layout, monkeypatch):
    """``conv_bn(conv, bn, x, residual, relu)`` is ``relu(bn(conv(x)) + residual)``, the sum
    and the ReLU in the convolution's last pass; under gradients too when nothing needs one
    (a frozen backbone's step)."""
    conv, bn, x, skip = _residual_case(kind)
    if layout == "channels_last":
        skip = skip.contiguous(memory_format=ft.channels_last)
    with ft.no_grad():
        want = np.maximum(bn(conv(x)).numpy() + skip.numpy(), 0)
    seen = _residuals_seen(monkeypatch)
    with ft.no_grad():
        got = conv_bn(conv, bn, x, residual=skip, relu=nn.ReLU(inplace=True))
    frozen_step = conv_bn(conv, bn, x, residual=skip, relu=nn.ReLU())
    assert len(seen) == 2 and all(r is skip._data for r in seen)
    assert frozen_step.grad_fn is None
    np.testing.assert_allclose(got.numpy(), want, rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(frozen_step.numpy(), got.numpy())


def test_a_skip_connection_steps_aside_when_the_sum_could_differ(monkeypatch):
    """A hooked ReLU, a skip needing a gradient or one that broadcasts: the convolution, the
    sum and the ReLU run as layers and operators (hooks fire, gradients flow)."""
    conv, bn, x, skip = _residual_case("im2col")
    with ft.no_grad():
        plain = bn(conv(x))
    seen = _residuals_seen(monkeypatch)
    relu, calls = nn.ReLU(), []
    relu.register_forward_hook(lambda m, args, out: calls.append(out.shape))
    with ft.no_grad():
        hooked = conv_bn(conv, bn, x, residual=skip, relu=relu)
    assert calls == [(2, 4, 5, 5)]
    np.testing.assert_allclose(
        hooked.numpy(), np.maximum(plain.numpy() + skip.numpy(), 0), rtol=1e-5, atol=1e-5
    )
    trained = skip.clone().requires_grad_()
    out = conv_bn(conv, bn, x, residual=trained, relu=nn.ReLU())
    out.sum().backward()
    np.testing.assert_array_equal(trained.grad.numpy(), (out.detach().numpy() > 0) * 1.0)
    row = _x(9, (1, 4, 1, 1))
    with ft.no_grad():
        broadcast = conv_bn(conv, bn, x, residual=row)
    want = plain.numpy() + row.numpy()
    np.testing.assert_allclose(broadcast.numpy(), want, rtol=1e-5, atol=1e-5)
    assert seen == [None, None, None]  # the convolution alone each time
