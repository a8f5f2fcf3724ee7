"""The seed's promise: frozen parameters get no gradient, do not change, and cost no graph."""

from __future__ import annotations

import numpy as np

import finetune as torch
import finetune.nn.functional as F
from finetune import nn


def small_cnn() -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(3, 4, 3, padding=1, bias=False),
        nn.BatchNorm2d(4),
        nn.ReLU(inplace=True),
        nn.MaxPool2d(2),
        nn.Conv2d(4, 8, 3, stride=2),
        nn.BatchNorm2d(8),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d((1, 1)),
        nn.Flatten(),
        nn.Linear(8, 10),
    )


def graph_node_names(root) -> set[str]:
    names, stack, seen = set(), [root], set()
    while stack:
        node = stack.pop()
        if node is None or id(node) in seen:
            continue
        seen.add(id(node))
        names.add(node.name())
        stack.extend(nxt for nxt, _ in node.next_functions)
    return names


def test_frozen_backbone_new_head_step():
    torch.manual_seed(0)
    model = small_cnn()
    model.requires_grad_(False)
    model[9] = nn.Linear(8, 3)
    head = model[9]
    frozen = {n: p.detach().numpy().copy() for n, p in model.named_parameters() if n[0] != "9"}
    head_before = {n: p.detach().numpy().copy() for n, p in head.named_parameters()}
    outputs = {}
    for name, module in model.named_children():
        module.register_forward_hook(lambda m, args, out, name=name: outputs.setdefault(name, out))

    x = torch.randn(4, 3, 8, 8)
    loss = F.cross_entropy(model(x), torch.tensor([0, 2, 1, 2]))
    loss.backward()
    lr = 0.5
    for p in model.parameters():
        if p.grad is not None:
            p.data -= lr * p.grad

    assert [n for n, p in model.named_parameters() if p.grad is not None] == ["9.weight", "9.bias"]
    for name, before in head_before.items():
        assert not np.array_equal(head.get_parameter(name).detach().numpy(), before), name
    for name, before in frozen.items():
        after = model.get_parameter(name).numpy()
        assert after.tobytes() == before.tobytes(), name
    # no frozen layer recorded a node: the graph is only the head and the loss
    assert all(outputs[str(i)].grad_fn is None for i in range(9))
    assert graph_node_names(loss.grad_fn) == {
        "NllLossBackward0",
        "LogSoftmaxBackward0",
        "AddmmBackward0",
        "AccumulateGrad",
    }


def test_unfrozen_model_gets_every_gradient():
    torch.manual_seed(1)
    model = small_cnn()
    F.cross_entropy(model(torch.randn(2, 3, 8, 8)), torch.tensor([1, 9])).backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None]
    assert missing == []
    assert all(p.grad.dtype == torch.float32 for p in model.parameters())
