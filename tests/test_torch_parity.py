"""PyTorch spellings a training script reaches for: ``torch.utils.data``, ``nn.utils`` clipping,
``F.one_hot``, ``torch.bmm``, ``inference_mode``, ``type_as`` and ``is_contiguous``."""

import numpy as np
import pytest

import finetune as torch
import finetune.nn.functional as F
from finetune import nn
from finetune.autograd import gradcheck
from finetune.errors import ShapeError, TrainingError


def test_utils_data_is_the_data_package():
    from finetune.utils.data import DataLoader, Dataset, TensorDataset, random_split

    assert DataLoader is torch.data.DataLoader
    assert random_split is torch.data.random_split
    assert torch.utils.data.TensorDataset is TensorDataset

    class Squares(Dataset):
        def __len__(self):
            return 4

        def __getitem__(self, i):
            return torch.tensor([float(i * i)]), i

    x, y = next(iter(DataLoader(Squares(), batch_size=4)))
    assert x.flatten().tolist() == [0.0, 1.0, 4.0, 9.0]
    assert y.tolist() == [0, 1, 2, 3]
    assert isinstance(TensorDataset(torch.zeros(2)), Dataset)


def _grads(model):
    return [p.grad.numpy().copy() for p in model.parameters()]


def test_clip_grad_norm_scales_to_max_norm_and_returns_total():
    model = nn.Linear(3, 2)
    model(torch.randn(4, 3)).pow(2).sum().mul(10).backward()
    before = _grads(model)
    total = np.sqrt(sum(float((g.astype(np.float64) ** 2).sum()) for g in before))
    out = nn.utils.clip_grad_norm_(model.parameters(), max_norm=0.5)
    assert isinstance(out, torch.Tensor) and out.dtype == torch.float32
    np.testing.assert_allclose(out.item(), total, rtol=1e-6)
    coef = 0.5 / (total + 1e-6)
    for g, p in zip(before, model.parameters()):
        np.testing.assert_allclose(p.grad.numpy(), g * coef, rtol=1e-6)
        assert p.grad.dtype == torch.float32


def test_clip_grad_norm_leaves_small_gradients_and_takes_inf_norm():
    w = nn.Parameter(torch.tensor([3.0, -4.0]))
    w.grad = torch.tensor([0.3, -0.4])
    assert nn.utils.clip_grad_norm_([w], 1.0).item() == pytest.approx(0.5)
    assert w.grad.tolist() == pytest.approx([0.3, -0.4])
    assert nn.utils.clip_grad_norm_(w, 1.0, norm_type="inf").item() == pytest.approx(0.4)


def test_clip_grad_norm_non_finite():
    w = nn.Parameter(torch.zeros(2))
    w.grad = torch.tensor([float("nan"), 1.0])
    with pytest.raises(TrainingError, match="non-finite"):
        nn.utils.clip_grad_norm_([w], 1.0, error_if_nonfinite=True)


def test_clip_grad_value_():
    w = nn.Parameter(torch.zeros(3))
    w.grad = torch.tensor([-2.0, 0.5, 3.0])
    assert nn.utils.clip_grad_value_([w], 1.0) is None
    assert w.grad.tolist() == [-1.0, 0.5, 1.0]


def test_one_hot():
    out = F.one_hot(torch.tensor([[0, 2], [1, 0]]))
    assert out.dtype == torch.int64 and out.shape == (2, 2, 3)
    np.testing.assert_array_equal(out.numpy(), np.eye(3, dtype=np.int64)[[[0, 2], [1, 0]]])
    assert F.one_hot(torch.tensor([1]), num_classes=4).tolist() == [[0, 1, 0, 0]]
    with pytest.raises(RuntimeError, match="smaller than num_classes"):
        F.one_hot(torch.tensor([3]), 3)
    with pytest.raises(RuntimeError, match="non-negative"):
        F.one_hot(torch.tensor([-1]))
    with pytest.raises(RuntimeError, match="index tensor"):
        F.one_hot(torch.tensor([1.0]))


def test_bmm_matches_a_loop_and_gradchecks():
    rng = np.random.default_rng(0)
    a, b = rng.standard_normal((2, 3, 4)), rng.standard_normal((2, 4, 5))
    out = torch.bmm(torch.tensor(a), torch.tensor(b)).numpy()
    np.testing.assert_allclose(out, np.stack([a[i] @ b[i] for i in range(2)]), rtol=1e-12)
    assert gradcheck(
        torch.bmm,
        (torch.tensor(a, requires_grad=True), torch.tensor(b, requires_grad=True)),
    )
    with pytest.raises(RuntimeError, match="3D"):
        torch.bmm(torch.zeros(3, 4), torch.zeros(4, 5))


def test_inference_mode_records_no_graph():
    x = torch.ones(2, requires_grad=True)
    with torch.inference_mode():
        assert not (x * 2).requires_grad

    @torch.inference_mode()
    def f(v):
        return v * 2

    assert not f(x).requires_grad
    with torch.inference_mode(False):
        assert (x * 2).requires_grad
    assert torch.is_grad_enabled()


def test_type_as_and_is_contiguous():
    x = torch.tensor([1, 2])
    assert x.type_as(torch.zeros(1, dtype=torch.float64)).dtype == torch.float64
    y = torch.zeros(2, 3)
    assert y.is_contiguous() and not y.t().is_contiguous()
    assert y.t().contiguous().is_contiguous()


def test_grad_mode_decorators_keep_their_mode():
    x = torch.ones(1, requires_grad=True)
    records = torch.inference_mode(False)(lambda v: (v * 2).requires_grad)
    with torch.no_grad():
        assert records(x)
    assert torch.set_grad_enabled(False)(lambda v: (v * 2).requires_grad)(x) is False
    assert torch.is_grad_enabled()


@pytest.mark.parametrize(
    "make",
    [
        lambda dt: nn.Linear(3, 2, dtype=dt),
        lambda dt: nn.Conv2d(2, 2, 3, dtype=dt),
        lambda dt: nn.BatchNorm2d(2, dtype=dt),
    ],
)
def test_layers_honour_the_dtype_argument(make):
    layer = make(torch.float64)
    for name, value in layer.state_dict().items():
        expected = torch.int64 if name == "num_batches_tracked" else torch.float64
        assert value.dtype == expected, name


def test_isnan_isinf_isfinite_functions():
    x = torch.tensor([1.0, float("nan"), float("inf")])
    assert torch.isnan(x).tolist() == [False, True, False]
    assert torch.isinf(x).tolist() == [False, False, True]
    assert torch.isfinite(x).tolist() == [True, False, False]


def test_silu_matches_numpy_and_gradchecks():
    x = np.linspace(-3, 3, 7)
    out = F.silu(torch.tensor(x, dtype=torch.float32))
    assert out.dtype == torch.float32
    np.testing.assert_allclose(out.numpy(), x / (1 + np.exp(-x)), rtol=1e-6, atol=1e-7)
    assert nn.SiLU()(torch.tensor(x)).allclose(F.silu(torch.tensor(x)))
    assert gradcheck(F.silu, (torch.tensor(x, requires_grad=True),))
    y = torch.tensor(x)
    assert F.silu(y, inplace=True) is y and np.allclose(y.numpy(), x / (1 + np.exp(-x)))


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_l1_loss(reduction):
    a, b = np.array([[1.0, -2.0], [0.5, 3.0]]), np.array([0.0, 1.0])
    expected = {"mean": np.mean, "sum": np.sum, "none": lambda v: v}[reduction](np.abs(a - b))
    out = F.l1_loss(torch.tensor(a), torch.tensor(b), reduction=reduction)
    np.testing.assert_allclose(out.numpy(), expected)
    layer = nn.L1Loss(reduction=reduction)
    assert layer(torch.tensor(a), torch.tensor(b)).allclose(out)
    assert gradcheck(
        lambda u: F.l1_loss(u, torch.tensor(b), reduction=reduction),
        (torch.tensor(a, requires_grad=True),),
    )


def test_normalize():
    a = np.array([[3.0, 4.0], [0.0, 0.0]])
    out = F.normalize(torch.tensor(a, dtype=torch.float32))
    assert out.dtype == torch.float32
    np.testing.assert_allclose(out.numpy(), [[0.6, 0.8], [0.0, 0.0]], rtol=1e-6)
    np.testing.assert_allclose(
        F.normalize(torch.tensor(a), p=1.0, dim=0).numpy(), a / np.abs(a).sum(0, keepdims=True)
    )
    u = torch.tensor([[1.0, -2.0], [0.5, 3.0]], dtype=torch.float64, requires_grad=True)
    assert gradcheck(lambda v: F.normalize(v, dim=-1), (u,))


def test_repeat_tiles_like_numpy_and_gradchecks():
    a = np.arange(6.0).reshape(2, 3)
    for reps in [(2, 1), (1, 3), (2, 2, 1), (1, 0), (1, 1)]:
        np.testing.assert_array_equal(torch.tensor(a).repeat(*reps).numpy(), np.tile(a, reps))
    assert torch.tensor(a).repeat((2, 1)).shape == (4, 3)
    assert gradcheck(lambda u: u.repeat(2, 1, 2), (torch.tensor(a, requires_grad=True),))
    with pytest.raises(RuntimeError, match="repeat dims"):
        torch.tensor(a).repeat(2)


def test_flip_reverses_dims_and_gradchecks():
    a = np.arange(6.0).reshape(2, 3)
    np.testing.assert_array_equal(torch.flip(torch.tensor(a), [0, -1]).numpy(), a[::-1, ::-1])
    np.testing.assert_array_equal(torch.tensor(a).flip(1).numpy(), a[:, ::-1])
    assert gradcheck(
        lambda u: u.flip(0) * torch.tensor([[1.0], [2.0]]), (torch.tensor(a, requires_grad=True),)
    )


@pytest.mark.filterwarnings("error")
def test_ieee_results_without_numpy_warnings():
    z = torch.zeros(1, requires_grad=True)
    out = torch.ones(1) / z + z**-1 + torch.exp(z + 1000) + z.reciprocal()
    assert out.item() == float("inf")
    out.backward()
    assert np.isnan(z.grad.item()) or np.isinf(z.grad.item())
    assert np.isnan(((z - 1) ** 0.5).item())
    assert torch.softmax(torch.tensor([float("-inf")] * 2), 0).isnan().all()


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_binary_cross_entropy(reduction):
    p, t, w = np.array([0.2, 0.9, 1.0]), np.array([0.0, 1.0, 0.0]), np.array([1.0, 2.0, 0.5])
    with np.errstate(divide="ignore"):
        logs = np.maximum(np.log(p), -100), np.maximum(np.log1p(-p), -100)
    per = -w * (t * logs[0] + (1 - t) * logs[1])
    expected = {"mean": np.mean, "sum": np.sum, "none": lambda v: v}[reduction](per)
    args = torch.tensor(p), torch.tensor(t)
    out = F.binary_cross_entropy(*args, weight=torch.tensor(w), reduction=reduction)
    np.testing.assert_allclose(out.numpy(), expected, rtol=1e-12)
    layer = nn.BCELoss(weight=torch.tensor(w), reduction=reduction)
    assert layer(*args).allclose(out)
    inner = torch.tensor(p[:2], requires_grad=True)
    assert gradcheck(
        lambda u: F.binary_cross_entropy(u, args[1][:2], reduction=reduction), (inner,)
    )


def test_binary_cross_entropy_refusals():
    with pytest.raises(ShapeError, match=r"\[2\].*\[3\]"):
        F.binary_cross_entropy(torch.full((3,), 0.5), torch.zeros(2))
    with pytest.raises(RuntimeError, match="between 0 and 1"):
        F.binary_cross_entropy(torch.tensor([1.5]), torch.zeros(1))


def test_log1p_and_cumsum_match_numpy_and_gradcheck():
    x = np.array([[0.5, 1e-9, 2.0], [3.0, -0.5, 0.25]])
    out = torch.log1p(torch.tensor(x, dtype=torch.float32))
    assert out.dtype == torch.float32
    np.testing.assert_allclose(out.numpy(), np.log1p(x), rtol=1e-6)
    for dim in (0, 1, -1):
        np.testing.assert_allclose(torch.tensor(x).cumsum(dim).numpy(), np.cumsum(x, axis=dim))
        assert gradcheck(
            lambda u, d=dim: torch.cumsum(u, dim=d), (torch.tensor(x, requires_grad=True),)
        )
    assert gradcheck(torch.log1p, (torch.tensor(x, requires_grad=True),))
    assert torch.tensor([1, 2, 3]).cumsum(0).dtype == torch.int64


def test_where_with_two_python_scalars():
    cond = torch.tensor([True, False])
    out = torch.where(cond, 1.0, 0.0)
    assert out.dtype == torch.float32 and out.tolist() == [1.0, 0.0]
    assert torch.where(cond, 2, 3).dtype == torch.int64


def test_trunc_normal_stays_in_bounds_with_the_right_spread():
    torch.manual_seed(0)
    w = nn.init.trunc_normal_(torch.empty(4000), mean=0.5, std=1.0, a=0.0, b=1.0)
    values = w.numpy()
    assert w.dtype == torch.float32 and values.min() >= 0.0 and values.max() <= 1.0
    # N(0.5, 1) kept to half a std either side of its mean has std 0.284
    assert values.mean() == pytest.approx(0.5, abs=0.03)
    assert values.std() == pytest.approx(0.284, abs=0.01)


def _sgd(lr=0.1):
    return torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=lr)


def test_linear_lr_warms_up_then_holds():
    opt = _sgd()
    sched = torch.optim.lr_scheduler.LinearLR(opt, start_factor=0.25, total_iters=4)
    seen = [sched.get_last_lr()[0]]
    for _ in range(5):
        opt.step()
        sched.step()
        seen.append(sched.get_last_lr()[0])
    assert seen == pytest.approx([0.025, 0.04375, 0.0625, 0.08125, 0.1, 0.1])
    with pytest.raises(ValueError, match="Starting multiplicative factor"):
        torch.optim.lr_scheduler.LinearLR(_sgd(), start_factor=0)


def test_reduce_lr_on_plateau():
    opt = _sgd()
    sched = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, factor=0.5, patience=1)
    seen = []
    for loss in [1.0, 1.0, 1.0, 0.5, 0.6, 0.6]:
        sched.step(loss)
        seen.append(opt.param_groups[0]["lr"])
    assert seen == pytest.approx([0.1, 0.1, 0.05, 0.05, 0.05, 0.025])
    assert sched.get_last_lr() == [0.025]
    restored = torch.optim.lr_scheduler.ReduceLROnPlateau(_sgd(), mode="max")
    restored.load_state_dict(sched.state_dict())
    assert restored.best == 0.5 and restored.mode == "min"


def test_pooling_takes_unbatched_input():
    x = torch.randn(2, 5, 5, dtype=torch.float64)
    batched = x.unsqueeze(0)
    for pool in (nn.MaxPool2d(2, ceil_mode=True), nn.AvgPool2d(3, 1, 1, count_include_pad=False)):
        assert pool(x).shape == pool(batched).shape[1:]
        assert pool(x).equal(pool(batched)[0])
    with pytest.raises(ShapeError, match=r"3-D or 4-D input.*\[5, 5\]"):
        F.max_pool2d(torch.zeros(5, 5), 2)


def test_layer_norm_matches_numpy_and_gradchecks():
    rng = np.random.default_rng(0)
    x, w, b = rng.standard_normal((2, 3, 4)), rng.standard_normal(4), rng.standard_normal(4)
    mean, var = x.mean(-1, keepdims=True), x.var(-1, keepdims=True)
    expected = (x - mean) / np.sqrt(var + 1e-5) * w + b
    out = F.layer_norm(torch.tensor(x), 4, torch.tensor(w), torch.tensor(b))
    np.testing.assert_allclose(out.numpy(), expected, rtol=1e-10)
    leaves = [torch.tensor(a, requires_grad=True) for a in (x, w, b)]
    assert gradcheck(lambda u, v, c: F.layer_norm(u, (4,), v, c), leaves)
    layer = nn.LayerNorm([3, 4])
    assert repr(layer) == "LayerNorm((3, 4), eps=1e-05, elementwise_affine=True)"
    assert layer(torch.tensor(x, dtype=torch.float32)).dtype == torch.float32
    assert [n for n, _ in layer.named_parameters()] == ["weight", "bias"]
    with pytest.raises(ShapeError, match=r"normalized_shape \[5\].*\[2, 3, 4\]"):
        F.layer_norm(torch.tensor(x), 5)


def test_composed_layers_export_to_onnx(tmp_path):
    ort = pytest.importorskip("onnxruntime")
    import finetune.onnx as fonnx

    model = nn.Sequential(nn.Linear(4, 6), nn.LayerNorm(6), nn.SiLU(), nn.Linear(6, 3)).eval()
    x = torch.randn(2, 4)
    fonnx.export(model, x, tmp_path / "m.onnx")
    session = ort.InferenceSession(str(tmp_path / "m.onnx"))
    (out,) = session.run(None, {session.get_inputs()[0].name: x.numpy()})
    np.testing.assert_allclose(out, model(x).detach().numpy(), rtol=1e-5, atol=1e-6)


def test_repeat_and_flip_export_with_a_free_batch(tmp_path):
    ort = pytest.importorskip("onnxruntime")
    import finetune.onnx as fonnx

    class Tile(nn.Module):
        def forward(self, x):
            return x.repeat(1, 2).flip(1)

    fonnx.export(Tile(), torch.randn(2, 3), tmp_path / "m.onnx")
    session = ort.InferenceSession(str(tmp_path / "m.onnx"))
    x = np.random.default_rng(0).standard_normal((5, 3)).astype(np.float32)
    (out,) = session.run(None, {session.get_inputs()[0].name: x})
    np.testing.assert_array_equal(out, np.tile(x, (1, 2))[:, ::-1])


def test_data_loader_accepts_pytorch_cuda_and_worker_options():
    from finetune.utils.data import DataLoader, TensorDataset

    ds = TensorDataset(torch.arange(4))
    options = dict(pin_memory=True, persistent_workers=True, prefetch_factor=2, timeout=5)
    loader = DataLoader(ds, batch_size=2, shuffle=False, num_workers=2, **options)
    assert [b.tolist() for (b,) in loader] == [[0, 1], [2, 3]]


def _cos_anneal(start, end, pct):
    return end + (start - end) * (1 + np.cos(np.pi * pct)) / 2


def test_one_cycle_lr_rises_then_anneals_with_momentum_opposite():
    opt = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=0.1, momentum=0.9)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=1.0, total_steps=10)
    lrs, momenta = [], []
    for _ in range(10):
        lrs.append(opt.param_groups[0]["lr"])
        momenta.append(opt.param_groups[0]["momentum"])
        opt.step()
        sched.step()
    # rise over steps 0..2 from 1/25 to 1, then fall over steps 2..9 to 1/25/1e4
    expected = [_cos_anneal(0.04, 1.0, t / 2) for t in range(3)]
    expected += [_cos_anneal(1.0, 4e-6, (t - 2) / 7) for t in range(3, 10)]
    assert lrs == pytest.approx(expected)
    assert momenta[0] == pytest.approx(0.95) and momenta[2] == pytest.approx(0.85)
    assert momenta[-1] == pytest.approx(0.95)
    with pytest.raises(ValueError, match="Tried to step 11 times"):
        sched.step()


def test_one_cycle_lr_cycles_adam_beta1_and_saves(tmp_path):
    opt = torch.optim.Adam([nn.Parameter(torch.zeros(1))])
    sched = torch.optim.lr_scheduler.OneCycleLR(
        opt, max_lr=0.01, epochs=2, steps_per_epoch=5, anneal_strategy="linear"
    )
    assert opt.param_groups[0]["betas"] == (0.95, 0.999)
    opt.step()
    sched.step()
    assert opt.param_groups[0]["lr"] == pytest.approx(0.0004 + (0.01 - 0.0004) / 2)
    torch.save(sched.state_dict(), tmp_path / "sched.pt")
    restored = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=0.01, total_steps=3)
    restored.load_state_dict(torch.load(tmp_path / "sched.pt"))
    assert restored.total_steps == 10 and restored.last_epoch == 1
    with pytest.raises(ValueError, match="total_steps OR"):
        torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=0.01)
