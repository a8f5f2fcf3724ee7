"""``nn.Embedding`` and ``F.embedding`` as PyTorch defines them, checked by hand and gradcheck."""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest

import finetune as torch
from finetune import nn
from finetune.autograd import gradcheck
from finetune.errors import ShapeError
from finetune.nn import functional as F


def test_lookup_values_gradient_and_grad_fn():
    weight = torch.tensor(np.arange(12.0).reshape(4, 3), requires_grad=True)
    idx = torch.tensor([[0, 2], [2, 3]])
    out = F.embedding(idx, weight)
    np.testing.assert_array_equal(out.detach().numpy(), weight.detach().numpy()[[[0, 2], [2, 3]]])
    assert out.grad_fn.name() == "EmbeddingBackward0"
    out.backward(torch.ones(2, 2, 3))
    np.testing.assert_array_equal(weight.grad.numpy()[:, 0], [1, 0, 2, 1])  # row 2 picked twice
    w64 = torch.tensor(np.random.default_rng(0).standard_normal((5, 2)), requires_grad=True)
    assert gradcheck(lambda w: F.embedding(torch.tensor([1, 4, 1, 0]), w), (w64,))


def test_padding_idx_scale_grad_by_freq_and_max_norm():
    emb = nn.Embedding(5, 2, padding_idx=-1)
    assert emb.padding_idx == 4 and not emb.weight.detach().numpy()[4].any()
    idx = torch.tensor([4, 1, 1, 3])
    emb(idx).sum().backward()
    np.testing.assert_array_equal(emb.weight.grad.numpy()[:, 0], [0, 2, 0, 1, 0])

    scaled = nn.Embedding(5, 2, scale_grad_by_freq=True)
    scaled(idx).sum().backward()
    np.testing.assert_array_equal(scaled.weight.grad.numpy()[:, 0], [0, 1, 0, 1, 1])

    table = torch.tensor([[3.0, 4.0], [0.3, 0.4], [6.0, 8.0]])
    capped = nn.Embedding.from_pretrained(table, max_norm=1.0)
    out = capped(torch.tensor([0, 1]))
    np.testing.assert_allclose(np.linalg.norm(out.numpy(), axis=1), [1.0, 0.5], rtol=1e-5)
    # the picked row was renormalised in place, the unpicked one left alone
    np.testing.assert_allclose(capped.weight.detach().numpy()[2], [6.0, 8.0])
    assert not capped.weight.requires_grad  # from_pretrained freezes by default


def test_repr_and_errors():
    assert repr(nn.Embedding(10, 3)) == "Embedding(10, 3)"
    assert repr(nn.Embedding(10, 3, padding_idx=0)) == "Embedding(10, 3, padding_idx=0)"
    emb = nn.Embedding(4, 2)
    with pytest.raises(ShapeError, match="index out of range in self"):
        emb(torch.tensor([4]))
    with pytest.raises(ShapeError, match="integer type"):
        emb(torch.tensor([1.0]))
    with pytest.raises(ValueError, match="Padding_idx must be within num_embeddings"):
        nn.Embedding(4, 2, padding_idx=4)


def test_embedding_exports_as_gather(tmp_path):
    class Bag(nn.Module):
        def __init__(self):
            super().__init__()
            self.emb = nn.Embedding(7, 3)
            self.fc = nn.Linear(3, 2)

        def forward(self, idx):
            return self.fc(self.emb(idx).mean(dim=1))

    model = Bag().eval()
    path = tmp_path / "bag.onnx"
    torch.onnx.export(model, torch.tensor([[1, 2, 3], [4, 5, 6]]), path)
    idx = np.array([[0, 6, 6], [2, 2, 1], [5, 4, 3]], dtype=np.int64)
    (theirs,) = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(
        None, {"input": idx}
    )
    np.testing.assert_allclose(theirs, model(torch.tensor(idx)).detach().numpy(), atol=1e-6)
