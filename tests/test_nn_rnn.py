"""nn.RNN, nn.LSTM and nn.GRU against plain numpy loops of PyTorch's equations, their parameter
names and shapes, their errors, and backward through time with gradcheck."""

from __future__ import annotations

import warnings

import numpy as np
import pytest

import finetune as torch
from finetune import nn
from finetune.autograd import gradcheck
from finetune.errors import ShapeError


def sigmoid(x):
    return 1 / (1 + np.exp(-x))


def reference(mode, params, x, h0, c0=None, proj=False, bidirectional=False, layers=1):
    """PyTorch's equations, one sequence element and one layer at a time. ``x`` [T, B, I]."""
    directions = 2 if bidirectional else 1
    seq = x
    hs, cs = [], []
    for layer in range(layers):
        outs = []
        for d in range(directions):
            suffix = f"l{layer}" + ("_reverse" if d else "")
            w_ih, w_hh = params[f"weight_ih_{suffix}"], params[f"weight_hh_{suffix}"]
            b_ih = params.get(f"bias_ih_{suffix}", np.zeros(w_ih.shape[0]))
            b_hh = params.get(f"bias_hh_{suffix}", np.zeros(w_ih.shape[0]))
            k = layer * directions + d
            h, c = h0[k].copy(), None if c0 is None else c0[k].copy()
            out = np.zeros((seq.shape[0], seq.shape[1], h.shape[1]))
            order = range(seq.shape[0] - 1, -1, -1) if d else range(seq.shape[0])
            for t in order:
                gi, gh = seq[t] @ w_ih.T + b_ih, h @ w_hh.T + b_hh
                if mode == "LSTM":
                    i, f, g, o = np.split(gi + gh, 4, axis=1)
                    c = sigmoid(f) * c + sigmoid(i) * np.tanh(g)
                    h = sigmoid(o) * np.tanh(c)
                    if proj:
                        h = h @ params[f"weight_hr_{suffix}"].T
                elif mode == "GRU":
                    ir, iz, in_ = np.split(gi, 3, axis=1)
                    hr, hz, hn = np.split(gh, 3, axis=1)
                    r, z = sigmoid(ir + hr), sigmoid(iz + hz)
                    n = np.tanh(in_ + r * hn)
                    h = (1 - z) * n + z * h
                else:
                    h = np.tanh(gi + gh) if mode == "tanh" else np.maximum(gi + gh, 0)
                out[t] = h
            outs.append(out)
            hs.append(h)
            cs.append(c)
        seq = np.concatenate(outs, axis=2)
    return seq, np.stack(hs), (np.stack(cs) if c0 is not None else None)


def params_of(module):
    return {name: p.detach().numpy().astype(np.float64) for name, p in module.named_parameters()}


def test_lstm_parameter_names_shapes_and_order_follow_pytorch():
    lstm = nn.LSTM(3, 8, num_layers=2, bidirectional=True, proj_size=5)
    got = [(n, tuple(p.shape)) for n, p in lstm.named_parameters()]
    assert got == [
        ("weight_ih_l0", (32, 3)),
        ("weight_hh_l0", (32, 5)),
        ("bias_ih_l0", (32,)),
        ("bias_hh_l0", (32,)),
        ("weight_hr_l0", (5, 8)),
        ("weight_ih_l0_reverse", (32, 3)),
        ("weight_hh_l0_reverse", (32, 5)),
        ("bias_ih_l0_reverse", (32,)),
        ("bias_hh_l0_reverse", (32,)),
        ("weight_hr_l0_reverse", (5, 8)),
        ("weight_ih_l1", (32, 10)),
        ("weight_hh_l1", (32, 5)),
        ("bias_ih_l1", (32,)),
        ("bias_hh_l1", (32,)),
        ("weight_hr_l1", (5, 8)),
        ("weight_ih_l1_reverse", (32, 10)),
        ("weight_hh_l1_reverse", (32, 5)),
        ("bias_ih_l1_reverse", (32,)),
        ("bias_hh_l1_reverse", (32,)),
        ("weight_hr_l1_reverse", (5, 8)),
    ]
    assert [n for n, _ in nn.GRU(2, 4, bias=False).named_parameters()] == [
        "weight_ih_l0",
        "weight_hh_l0",
    ]
    assert nn.GRU(2, 4).weight_ih_l0.shape == (12, 2)
    assert nn.RNN(2, 4).weight_hh_l0.shape == (4, 4)
    assert len(lstm.all_weights) == 4 and len(lstm.all_weights[0]) == 5


def test_weights_are_uniform_within_one_over_sqrt_hidden_and_seeded():
    torch.manual_seed(3)
    a = nn.LSTM(4, 16)
    torch.manual_seed(3)
    b = nn.LSTM(4, 16)
    for (name, p), q in zip(a.named_parameters(), b.parameters()):
        assert p.dtype == torch.float32, name
        assert np.abs(p.detach().numpy()).max() <= 0.25
        np.testing.assert_array_equal(p.detach().numpy(), q.detach().numpy())


@pytest.mark.parametrize("bidirectional", [False, True])
@pytest.mark.parametrize("batch_first", [False, True])
def test_lstm_matches_a_loop_over_time(bidirectional, batch_first):
    torch.manual_seed(0)
    lstm = nn.LSTM(3, 4, num_layers=2, batch_first=batch_first, bidirectional=bidirectional)
    lstm.double()
    rng = np.random.default_rng(0)
    d = 2 if bidirectional else 1
    x = rng.standard_normal((5, 2, 3))
    h0, c0 = rng.standard_normal((2 * d, 2, 4)), rng.standard_normal((2 * d, 2, 4))
    fed = x.transpose(1, 0, 2) if batch_first else x
    out, (h_n, c_n) = lstm(torch.tensor(fed), (torch.tensor(h0), torch.tensor(c0)))
    y, h, c = reference("LSTM", params_of(lstm), x, h0, c0, bidirectional=bidirectional, layers=2)
    got = out.detach().numpy().transpose(1, 0, 2) if batch_first else out.detach().numpy()
    assert out.shape == ((2, 5, 4 * d) if batch_first else (5, 2, 4 * d))
    np.testing.assert_allclose(got, y, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(h_n.detach().numpy(), h, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(c_n.detach().numpy(), c, rtol=1e-10, atol=1e-12)


def test_lstm_with_projection_matches_a_loop():
    torch.manual_seed(1)
    lstm = nn.LSTM(3, 6, proj_size=2).double()
    x = np.random.default_rng(1).standard_normal((4, 3, 3))
    out, (h_n, c_n) = lstm(torch.tensor(x))
    y, h, c = reference(
        "LSTM", params_of(lstm), x, np.zeros((1, 3, 2)), np.zeros((1, 3, 6)), proj=True
    )
    assert out.shape == (4, 3, 2) and h_n.shape == (1, 3, 2) and c_n.shape == (1, 3, 6)
    np.testing.assert_allclose(out.detach().numpy(), y, atol=1e-12)
    np.testing.assert_allclose(c_n.detach().numpy(), c, atol=1e-12)


@pytest.mark.parametrize("bidirectional", [False, True])
def test_gru_matches_a_loop_over_time(bidirectional):
    torch.manual_seed(2)
    gru = nn.GRU(3, 4, num_layers=2, bidirectional=bidirectional).double()
    d = 2 if bidirectional else 1
    rng = np.random.default_rng(2)
    x, h0 = rng.standard_normal((6, 2, 3)), rng.standard_normal((2 * d, 2, 4))
    out, h_n = gru(torch.tensor(x), torch.tensor(h0))
    y, h, _ = reference("GRU", params_of(gru), x, h0, bidirectional=bidirectional, layers=2)
    np.testing.assert_allclose(out.detach().numpy(), y, atol=1e-12)
    np.testing.assert_allclose(h_n.detach().numpy(), h, atol=1e-12)


@pytest.mark.parametrize("nonlinearity", ["tanh", "relu"])
def test_rnn_matches_a_loop_over_time(nonlinearity):
    torch.manual_seed(3)
    rnn = nn.RNN(3, 5, 2, nonlinearity, bias=False).double()  # nonlinearity positional, as torch
    assert rnn.nonlinearity == nonlinearity and rnn.bias is False and rnn.num_layers == 2
    x = np.random.default_rng(3).standard_normal((4, 2, 3))
    out, h_n = rnn(torch.tensor(x))
    y, h, _ = reference(nonlinearity, params_of(rnn), x, np.zeros((2, 2, 5)), layers=2)
    np.testing.assert_allclose(out.detach().numpy(), y, atol=1e-12)
    np.testing.assert_allclose(h_n.detach().numpy(), h, atol=1e-12)


def test_unbatched_input_returns_unbatched_outputs():
    torch.manual_seed(4)
    lstm = nn.LSTM(3, 4, batch_first=True)
    x = torch.randn(5, 3)
    out, (h, c) = lstm(x)
    batched, (hb, cb) = lstm(x.unsqueeze(0))
    assert out.shape == (5, 4) and h.shape == (1, 4) and c.shape == (1, 4)
    np.testing.assert_allclose(out.detach().numpy(), batched.detach().numpy()[0], rtol=1e-6)
    np.testing.assert_allclose(c.detach().numpy(), cb.detach().numpy()[:, 0], rtol=1e-6)
    with pytest.raises(ShapeError, match="unbatched 2-D input, hx and cx should also be 2-D"):
        lstm(x, (torch.zeros(1, 1, 4), torch.zeros(1, 1, 4)))


def test_outputs_keep_float32_and_the_state_shapes():
    gru = nn.GRU(3, 4, bidirectional=True)
    out, h = gru(torch.randn(7, 2, 3))
    assert out.dtype == torch.float32 and h.dtype == torch.float32
    assert out.shape == (7, 2, 8) and h.shape == (2, 2, 4)


@pytest.mark.parametrize(
    "make, hx",
    [
        (lambda: nn.LSTM(2, 3, bidirectional=True), "lstm"),
        (lambda: nn.GRU(2, 3, num_layers=2), "h"),
        (lambda: nn.RNN(2, 3, nonlinearity="relu"), "h"),
        (lambda: nn.LSTM(2, 4, proj_size=2), "lstm"),
    ],
    ids=["lstm_bidirectional", "gru_two_layers", "rnn_relu", "lstm_projection"],
)
def test_backward_through_time_passes_gradcheck(make, hx):
    torch.manual_seed(5)
    module = make().double()
    d = 2 if module.bidirectional else 1
    rng = np.random.default_rng(5)
    x = torch.tensor(rng.standard_normal((3, 2, 2)), requires_grad=True)
    h_size, c_size = module._state_sizes()
    h0 = torch.tensor(rng.standard_normal((module.num_layers * d, 2, h_size)), requires_grad=True)
    c0 = torch.tensor(rng.standard_normal((module.num_layers * d, 2, c_size)), requires_grad=True)
    if hx == "lstm":
        args = (x, h0, c0, *module.parameters())

        def run(x, h0, c0, *weights):
            out, (h, c) = module(x, (h0, c0))
            return out, h, c
    else:
        args = (x, h0, *module.parameters())

        def run(x, h0, *weights):
            return module(x, h0)

    assert gradcheck(run, args)


def test_training_reduces_the_loss():
    torch.manual_seed(6)
    lstm = nn.LSTM(2, 8, batch_first=True)
    head = nn.Linear(8, 1)
    params = [*lstm.parameters(), *head.parameters()]
    opt = torch.optim.Adam(params, lr=0.05)
    rng = np.random.default_rng(6)
    x = torch.tensor(rng.standard_normal((16, 5, 2)).astype(np.float32))
    target = torch.tensor(x.detach().numpy().sum(axis=(1, 2))[:, None])
    losses = []
    for _ in range(30):
        out, _ = lstm(x)
        loss = ((head(out[:, -1]) - target) ** 2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0]
    assert all(p.grad is not None for p in lstm.parameters())


def test_dropout_between_layers_only_in_training():
    torch.manual_seed(7)
    lstm = nn.LSTM(3, 4, num_layers=2, dropout=0.5)
    x = torch.randn(4, 2, 3)
    lstm.eval()
    a, _ = lstm(x)
    b, _ = lstm(x)
    np.testing.assert_array_equal(a.detach().numpy(), b.detach().numpy())
    lstm.train()
    c, _ = lstm(x)
    assert not np.allclose(a.detach().numpy(), c.detach().numpy())


def test_constructor_errors_and_warnings_follow_pytorch():
    with pytest.raises(ValueError, match="Unknown nonlinearity 'gelu'"):
        nn.RNN(2, 3, nonlinearity="gelu")
    with pytest.raises(ValueError, match="proj_size has to be smaller than hidden_size"):
        nn.LSTM(2, 3, proj_size=3)
    with pytest.raises(ValueError, match="proj_size argument is only supported for LSTM"):
        nn.GRU(2, 3, proj_size=1)
    with pytest.raises(ValueError, match="dropout should be a number in range"):
        nn.GRU(2, 3, dropout=1.5)
    with pytest.raises(ValueError, match="hidden_size must be greater than zero"):
        nn.LSTM(2, 0)
    with pytest.raises(TypeError, match="hidden_size should be of type int"):
        nn.LSTM(2, 3.0)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        nn.LSTM(2, 3, dropout=0.2)
    assert any(
        "non-zero dropout expects num_layers greater than 1" in str(w.message) for w in caught
    )


def test_forward_errors_name_the_expected_shape():
    lstm = nn.LSTM(3, 4, num_layers=2)
    with pytest.raises(ShapeError, match="input.size\\(-1\\) must be equal to input_size"):
        lstm(torch.zeros(5, 2, 2))
    with pytest.raises(ShapeError, match="Expected input to be 2D or 3D"):
        lstm(torch.zeros(5, 2, 2, 3))
    with pytest.raises(ShapeError, match=r"Expected hidden\[0\] size \(2, 2, 4\), got \[1, 2, 4\]"):
        lstm(torch.zeros(5, 2, 3), (torch.zeros(1, 2, 4), torch.zeros(2, 2, 4)))
    with pytest.raises(ShapeError, match=r"Expected hidden size \(1, 2, 4\), got \[1, 3, 4\]"):
        nn.GRU(3, 4)(torch.zeros(5, 2, 3), torch.zeros(1, 3, 4))


def test_repr_follows_pytorch():
    assert repr(nn.LSTM(10, 20, 2)) == "LSTM(10, 20, num_layers=2)"
    with pytest.warns(UserWarning, match="non-zero dropout"):
        gru = nn.GRU(3, 4, bias=False, batch_first=True, dropout=0.5, bidirectional=True)
    assert repr(gru) == "GRU(3, 4, bias=False, batch_first=True, dropout=0.5, bidirectional=True)"
    assert repr(nn.LSTM(3, 4, proj_size=2)) == "LSTM(3, 4, proj_size=2)"


def test_state_dict_round_trips():
    torch.manual_seed(8)
    a, b = nn.GRU(3, 4, bidirectional=True), nn.GRU(3, 4, bidirectional=True)
    b.load_state_dict(a.state_dict())
    x = torch.randn(3, 1, 3)
    np.testing.assert_array_equal(a(x)[0].detach().numpy(), b(x)[0].detach().numpy())
    assert "bias_hh_l0_reverse" in a.state_dict()
