"""nn.Module and nn.Parameter: registration, walking, state dicts, modes, printing, containers."""

from __future__ import annotations

import copy
from collections import OrderedDict

import numpy as np
import pytest

import finetune as torch
from finetune import nn
from finetune.errors import CheckpointError, ShapeError


class BasicBlock(nn.Module):
    expansion = 1

    def __init__(self, inplanes: int, planes: int, stride: int = 1, downsample=None) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample = downsample


class TinyResNet(nn.Module):
    def __init__(self, num_classes: int = 10) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, kernel_size=7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(8)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        down = nn.Sequential(
            nn.Conv2d(8, 16, kernel_size=1, stride=2, bias=False), nn.BatchNorm2d(16)
        )
        self.layer1 = nn.Sequential(BasicBlock(8, 16, 2, down))
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.fc = nn.Linear(16, num_classes)


BN8 = "BatchNorm2d(8, eps=1e-05, momentum=0.1, affine=True, track_running_stats=True)"
BN16 = "BatchNorm2d(16, eps=1e-05, momentum=0.1, affine=True, track_running_stats=True)"
TINY_RESNET_REPR = f"""TinyResNet(
  (conv1): Conv2d(3, 8, kernel_size=(7, 7), stride=(2, 2), padding=(3, 3), bias=False)
  (bn1): {BN8}
  (relu): ReLU(inplace=True)
  (maxpool): MaxPool2d(kernel_size=3, stride=2, padding=1, dilation=1, ceil_mode=False)
  (layer1): Sequential(
    (0): BasicBlock(
      (conv1): Conv2d(8, 16, kernel_size=(3, 3), stride=(2, 2), padding=(1, 1), bias=False)
      (bn1): {BN16}
      (relu): ReLU(inplace=True)
      (conv2): Conv2d(16, 16, kernel_size=(3, 3), stride=(1, 1), padding=(1, 1), bias=False)
      (bn2): {BN16}
      (downsample): Sequential(
        (0): Conv2d(8, 16, kernel_size=(1, 1), stride=(2, 2), bias=False)
        (1): {BN16}
      )
    )
  )
  (avgpool): AdaptiveAvgPool2d(output_size=(1, 1))
  (fc): Linear(in_features=16, out_features=10, bias=True)
)"""


def test_repr_matches_pytorch_nested_listing():
    assert repr(TinyResNet()) == TINY_RESNET_REPR


def test_leaf_layer_reprs():
    assert repr(nn.Conv2d(4, 4, 3, groups=4, dilation=2)) == (
        "Conv2d(4, 4, kernel_size=(3, 3), stride=(1, 1), dilation=(2, 2), groups=4)"
    )
    assert repr(nn.Conv2d(2, 3, 3, padding="same")) == (
        "Conv2d(2, 3, kernel_size=(3, 3), stride=(1, 1), padding=same)"
    )
    assert repr(nn.ReLU()) == "ReLU()"
    assert repr(nn.Dropout(0.2)) == "Dropout(p=0.2, inplace=False)"
    assert repr(nn.Flatten()) == "Flatten(start_dim=1, end_dim=-1)"
    assert repr(nn.AvgPool2d(2)) == "AvgPool2d(kernel_size=2, stride=2, padding=0)"
    assert repr(nn.LeakyReLU(0.2)) == "LeakyReLU(negative_slope=0.2)"
    assert repr(nn.Identity()) == "Identity()"
    assert repr(nn.CrossEntropyLoss()) == "CrossEntropyLoss()"
    assert repr(nn.Softmax(dim=1)) == "Softmax(dim=1)"


def test_state_dict_keys_include_buffers_in_pytorch_order():
    keys = list(TinyResNet().state_dict())
    bn = ["weight", "bias", "running_mean", "running_var", "num_batches_tracked"]
    expected = (
        ["conv1.weight"]
        + [f"bn1.{k}" for k in bn]
        + ["layer1.0.conv1.weight"]
        + [f"layer1.0.bn1.{k}" for k in bn]
        + ["layer1.0.conv2.weight"]
        + [f"layer1.0.bn2.{k}" for k in bn]
        + ["layer1.0.downsample.0.weight"]
        + [f"layer1.0.downsample.1.{k}" for k in bn]
        + ["fc.weight", "fc.bias"]
    )
    assert keys == expected
    sd = TinyResNet().state_dict()
    assert sd["bn1.num_batches_tracked"].dtype == torch.int64
    assert not sd["fc.weight"].requires_grad


def test_named_parameters_and_modules_use_dotted_prefixes():
    model = TinyResNet()
    names = [n for n, _ in model.named_parameters()]
    assert names[:3] == ["conv1.weight", "bn1.weight", "bn1.bias"]
    assert "layer1.0.downsample.1.bias" in names
    assert all(isinstance(p, nn.Parameter) for p in model.parameters())
    module_names = [n for n, _ in model.named_modules()]
    assert module_names[:3] == ["", "conv1", "bn1"]
    assert "layer1.0.downsample.0" in module_names
    assert [n for n, _ in model.named_children()] == [
        "conv1",
        "bn1",
        "relu",
        "maxpool",
        "layer1",
        "avgpool",
        "fc",
    ]
    assert [n for n, _ in model.named_buffers()][:2] == ["bn1.running_mean", "bn1.running_var"]
    assert model.get_submodule("layer1.0.bn2") is model.layer1[0].bn2
    assert model.get_parameter("fc.bias") is model.fc.bias


def test_shared_weights_appear_once():
    shared = nn.Linear(3, 3)
    model = nn.Sequential(shared, nn.ReLU(), shared)
    assert len(list(model.parameters())) == 2
    assert [n for n, _ in model.named_modules()] == ["", "0", "1"]
    tied = nn.Sequential(nn.Linear(2, 2), nn.Linear(2, 2))
    tied[1].weight = tied[0].weight
    assert len(list(tied.parameters())) == 3
    # the state dict keeps both names, as PyTorch's does
    assert list(tied.state_dict()) == ["0.weight", "0.bias", "1.weight", "1.bias"]


def test_setattr_sorts_and_replaces():
    model = TinyResNet()
    old = model.fc.weight
    model.fc = nn.Linear(16, 3)
    params = list(model.parameters())
    assert all(p is not old for p in params)
    assert any(p is model.fc.weight for p in params)
    assert model.fc.out_features == 3
    model.extra = nn.Parameter(torch.zeros(2))
    assert list(model.state_dict())[0] == "extra"  # own parameters come before children
    model.extra = None
    assert "extra" not in model.state_dict()
    with pytest.raises(TypeError, match="parameter 'extra'"):
        model.extra = torch.zeros(2)
    del model.fc
    assert "fc.weight" not in model.state_dict()
    with pytest.raises(AttributeError, match="'TinyResNet' object has no attribute 'fc'"):
        model.fc  # noqa: B018


def test_buffers_registration_and_non_persistent():
    m = nn.Module()
    m.register_buffer("stats", torch.ones(2))
    m.register_buffer("scratch", torch.zeros(1), persistent=False)
    m.plain = 3
    assert list(m.state_dict()) == ["stats"]
    assert [n for n, _ in m.named_buffers()] == ["stats", "scratch"]
    m.stats = torch.zeros(2)
    assert m.state_dict()["stats"].tolist() == [0.0, 0.0]
    with pytest.raises(KeyError):
        m.register_buffer("plain", torch.zeros(1))


def test_assign_before_init_is_explained():
    class Broken(nn.Module):
        def __init__(self):
            self.fc = nn.Linear(1, 1)

    with pytest.raises(AttributeError, match=r"before Module.__init__\(\) call"):
        Broken()


def test_load_state_dict_round_trip_and_shares_nothing_new():
    torch.manual_seed(0)
    a = TinyResNet()
    torch.manual_seed(1)
    b = TinyResNet()
    result = b.load_state_dict(a.state_dict())
    assert repr(result) == "<All keys matched successfully>"
    for (name, x), (_, y) in zip(a.state_dict().items(), b.state_dict().items()):
        assert np.array_equal(x.numpy(), y.numpy()), name
    # loading copies into the existing parameters (optimizers keep pointing at them)
    weight = b.fc.weight
    b.load_state_dict(TinyResNet().state_dict())
    assert b.fc.weight is weight


def test_load_state_dict_reports_every_problem_at_once():
    model = TinyResNet()
    sd = model.state_dict()
    del sd["fc.bias"]
    del sd["bn1.running_var"]
    sd["fc2.weight"] = torch.zeros(1)
    with pytest.raises(CheckpointError) as info:
        model.load_state_dict(sd)
    message = str(info.value)
    assert message.startswith("Error(s) in loading state_dict for TinyResNet:")
    assert 'Missing key(s) in state_dict: "bn1.running_var", "fc.bias".' in message
    assert 'Unexpected key(s) in state_dict: "fc2.weight".' in message
    result = model.load_state_dict(sd, strict=False)
    assert result.missing_keys == ["bn1.running_var", "fc.bias"]
    assert result.unexpected_keys == ["fc2.weight"]


def test_checkpoints_without_batchnorm_counters_load_strictly():
    model = TinyResNet()
    sd = {k: v for k, v in TinyResNet().state_dict().items() if "num_batches_tracked" not in k}
    assert repr(model.load_state_dict(sd)) == "<All keys matched successfully>"


def test_load_state_dict_size_mismatch_is_a_shape_error_naming_both_shapes():
    model = TinyResNet(num_classes=10)
    sd = TinyResNet(num_classes=4).state_dict()
    before = model.fc.weight.detach().numpy().copy()
    with pytest.raises(ShapeError) as info:
        model.load_state_dict(sd, strict=False)
    message = str(info.value)
    assert (
        "size mismatch for fc.weight: copying a param with shape torch.Size([4, 16]) from "
        "checkpoint, the shape in current model is torch.Size([10, 16])."
    ) in message
    assert "size mismatch for fc.bias" in message
    assert isinstance(info.value, RuntimeError)
    # nothing was half-loaded
    assert np.array_equal(model.fc.weight.detach().numpy(), before)


def test_train_eval_requires_grad_zero_grad_apply():
    model = TinyResNet()
    assert model.training and model.layer1[0].bn1.training
    assert model.eval() is model
    assert not any(m.training for m in model.modules())
    model.train()
    assert all(m.training for m in model.modules())
    model.requires_grad_(False)
    assert not any(p.requires_grad for p in model.parameters())
    model.fc.requires_grad_(True)
    assert [n for n, p in model.named_parameters() if p.requires_grad] == ["fc.weight", "fc.bias"]
    out = model.fc(torch.ones(2, 16)).sum()
    out.backward()
    assert model.fc.weight.grad is not None
    model.zero_grad(set_to_none=False)
    assert model.fc.weight.grad.abs().sum().item() == 0.0
    model.zero_grad()
    assert model.fc.weight.grad is None
    seen = []
    model.apply(lambda m: seen.append(type(m).__name__))
    assert seen[0] == "Conv2d" and seen[-1] == "TinyResNet"


def test_train_calls_each_childs_own_train():
    class FrozenStats(nn.BatchNorm2d):
        def train(self, mode: bool = True):
            return super().train(False)

    model = nn.Sequential(nn.Linear(2, 2), nn.Sequential(FrozenStats(2)))
    model.train()
    assert model.training and model[0].training and model[1].training
    assert not model[1][0].training


def test_forward_hooks_and_call():
    layer = nn.Linear(2, 2)
    calls = []
    handle = layer.register_forward_hook(lambda m, args, out: calls.append(out.shape))
    pre = layer.register_forward_pre_hook(lambda m, args: (args[0] * 0,))
    out = layer(torch.ones(3, 2))
    assert calls == [torch.Size([3, 2])]
    assert np.allclose(out.detach().numpy(), np.broadcast_to(layer.bias.detach().numpy(), (3, 2)))
    handle.remove()
    pre.remove()
    layer(torch.ones(1, 2))
    assert len(calls) == 1
    with pytest.raises(NotImplementedError, match='missing the required "forward"'):
        nn.Module()(1)


def test_parameter_is_a_leaf_that_requires_grad():
    p = nn.Parameter(torch.ones(2, 3))
    assert p.requires_grad and p.is_leaf and p.grad_fn is None
    assert isinstance(p, torch.Tensor)
    assert not nn.Parameter(torch.ones(1), requires_grad=False).requires_grad
    assert nn.Parameter._repr_prefix == "Parameter containing:\n"
    assert repr(nn.Parameter(torch.ones(2))) == (
        "Parameter containing:\ntensor([1., 1.], requires_grad=True)"
    )
    y = p * 2
    assert type(y) is torch.Tensor


def test_module_to_double_and_deepcopy():
    model = nn.Sequential(nn.Linear(2, 2), nn.BatchNorm1d(2))
    weight = model[0].weight
    model.double()
    assert model[0].weight is weight and weight.dtype == torch.float64
    assert model[1].running_mean.dtype == torch.float64
    assert model[1].num_batches_tracked.dtype == torch.int64
    clone = copy.deepcopy(model)
    assert clone[0].weight is not weight
    assert np.array_equal(clone[0].weight.detach().numpy(), weight.detach().numpy())
    assert clone[0].weight.requires_grad


# -- containers -----------------------------------------------------------------------------


def test_sequential_indexing_slicing_assignment():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 3))
    assert len(model) == 5
    assert isinstance(model[-1], nn.Linear) and model[-1] is model[4]
    head = model[1:3]
    assert isinstance(head, nn.Sequential) and len(head) == 2
    assert list(head._modules) == ["1", "2"]
    model[4] = nn.Linear(8, 2)
    assert model(torch.ones(5, 4)).shape == torch.Size([5, 2])
    assert "4.weight" in model.state_dict() and model.state_dict()["4.weight"].shape == (2, 8)
    model.append(nn.Softmax(dim=1))
    assert len(model) == 6 and isinstance(model[5], nn.Softmax)
    assert [type(m).__name__ for m in model][:2] == ["Linear", "ReLU"]
    del model[1]
    assert list(model._modules) == ["0", "1", "2", "3", "4"]
    with pytest.raises(IndexError):
        model[10]  # noqa: B018
    named = nn.Sequential(OrderedDict(conv=nn.Linear(1, 1), act=nn.ReLU()))
    assert list(named.state_dict()) == ["conv.weight", "conv.bias"]
    assert named.act is named[1]


def test_module_list_and_dict():
    layers = nn.ModuleList([nn.Linear(2, 2) for _ in range(3)])
    assert len(layers) == 3 and len(list(layers.parameters())) == 6
    layers.append(nn.ReLU())
    layers[0] = nn.Linear(2, 5)
    assert layers[0].out_features == 5
    assert list(layers.state_dict())[:2] == ["0.weight", "0.bias"]
    assert len(layers[1:]) == 3
    heads = nn.ModuleDict({"a": nn.Linear(2, 1), "b": nn.Linear(2, 2)})
    assert list(heads) == ["a", "b"] and "a" in heads
    assert list(heads.state_dict()) == ["a.weight", "a.bias", "b.weight", "b.bias"]
    heads["c"] = nn.Identity()
    assert list(heads.keys()) == ["a", "b", "c"]
    holder = nn.Module()
    holder.heads = heads
    assert "heads.b.weight" in holder.state_dict()
