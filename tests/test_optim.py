"""Optimizers against hand-written update rules, plus groups, frozen params, repr and state dicts.

Each reference below is PyTorch 2.1's single-tensor algorithm written out in plain numpy float64;
the optimizers run on float64 parameters (so any difference is a wrong formula, not rounding)
and on float32 ones (which must stay float32).
"""

from __future__ import annotations

import io
import math

import numpy as np
import pytest

import finetune as torch
from finetune import optim
from finetune.errors import ShapeError

C = np.array([[0.5, 1.5, -0.7], [2.0, -0.3, 1.1]])
D = np.array([[0.2, -1.0, 0.4], [-0.6, 0.9, 0.1]])
THETA0 = np.array([[1.0, -2.0, 0.5], [0.3, 1.7, -1.2]])
STEPS = 5


def _grad(theta: np.ndarray) -> np.ndarray:
    """Gradient of the test loss sum(C * theta**2) / 2 + sum(D * theta)."""
    return C * theta + D


def _run(make_optimizer, dtype=torch.float64, steps: int = STEPS) -> list[np.ndarray]:
    """Optimise the test loss with a finetune optimizer; return the parameter after each step."""
    p = torch.tensor(THETA0, dtype=dtype, requires_grad=True)
    c, d = torch.tensor(C, dtype=dtype), torch.tensor(D, dtype=dtype)
    opt = make_optimizer([p])
    trajectory = []
    for _ in range(steps):
        opt.zero_grad()
        loss = (c * p * p).sum() * 0.5 + (d * p).sum()
        loss.backward()
        opt.step()
        trajectory.append(p.detach().numpy().copy())
    return trajectory


def _sgd_reference(
    lr, momentum=0.0, dampening=0.0, weight_decay=0.0, nesterov=False, maximize=False
):
    theta, buf, out = THETA0.copy(), None, []
    for _ in range(STEPS):
        g = _grad(theta)
        g = -g if maximize else g
        g = g + weight_decay * theta
        if momentum:
            buf = g.copy() if buf is None else momentum * buf + (1 - dampening) * g
            g = g + momentum * buf if nesterov else buf
        theta = theta - lr * g
        out.append(theta.copy())
    return out


def _adam_reference(
    lr,
    betas=(0.9, 0.999),
    eps=1e-8,
    weight_decay=0.0,
    amsgrad=False,
    maximize=False,
    decoupled=False,
):
    theta = THETA0.copy()
    m, v, v_max, out = np.zeros_like(theta), np.zeros_like(theta), np.zeros_like(theta), []
    for t in range(1, STEPS + 1):
        g = _grad(theta)
        g = -g if maximize else g
        if decoupled:
            theta = theta * (1 - lr * weight_decay)
        else:
            g = g + weight_decay * theta
        m = betas[0] * m + (1 - betas[0]) * g
        v = betas[1] * v + (1 - betas[1]) * g * g
        v_max = np.maximum(v_max, v)
        m_hat = m / (1 - betas[0] ** t)
        v_hat = (v_max if amsgrad else v) / (1 - betas[1] ** t)
        theta = theta - lr * m_hat / (np.sqrt(v_hat) + eps)
        out.append(theta.copy())
    return out


SGD_CASES = [
    dict(lr=0.1),
    dict(lr=0.1, momentum=0.9),
    dict(lr=0.05, momentum=0.8, dampening=0.3),
    dict(lr=0.05, momentum=0.9, nesterov=True),
    dict(lr=0.1, weight_decay=0.2),
    dict(lr=0.05, momentum=0.9, weight_decay=0.1, nesterov=True),
    dict(lr=0.1, maximize=True),
    dict(lr=0.05, momentum=0.7, dampening=0.1, weight_decay=0.3, maximize=True),
]

ADAM_CASES = [
    dict(lr=0.1),
    dict(lr=0.05, betas=(0.8, 0.99), eps=1e-6),
    dict(lr=0.1, weight_decay=0.3),
    dict(lr=0.1, amsgrad=True),
    dict(lr=0.1, maximize=True),
    dict(lr=0.05, weight_decay=0.2, amsgrad=True, maximize=True),
    dict(lr=0.1, betas=(0.3, 0.9)),  # beta1 < 0.5: lerp takes its other branch
]


def _assert_trajectory(actual, expected):
    for step, (a, e) in enumerate(zip(actual, expected, strict=True)):
        np.testing.assert_allclose(a, e, rtol=1e-12, atol=1e-14, err_msg=f"step {step + 1}")


@pytest.mark.parametrize("options", SGD_CASES, ids=str)
def test_sgd_matches_the_update_rule(options):
    _assert_trajectory(_run(lambda ps: optim.SGD(ps, **options)), _sgd_reference(**options))


@pytest.mark.parametrize("options", ADAM_CASES, ids=str)
def test_adam_matches_the_update_rule(options):
    _assert_trajectory(_run(lambda ps: optim.Adam(ps, **options)), _adam_reference(**options))


@pytest.mark.parametrize("options", ADAM_CASES + [dict(lr=0.1, weight_decay=0.5)], ids=str)
def test_adamw_decays_weights_decoupled(options):
    options = {"weight_decay": 1e-2, **options}
    expected = _adam_reference(**options, decoupled=True)
    _assert_trajectory(_run(lambda ps: optim.AdamW(ps, **options)), expected)


def test_adamw_default_weight_decay_is_one_hundredth():
    p = torch.zeros(1, requires_grad=True)
    assert optim.AdamW([p]).defaults["weight_decay"] == 1e-2
    assert optim.Adam([p]).defaults["weight_decay"] == 0


@pytest.mark.parametrize(
    "make",
    [
        lambda ps: optim.SGD(ps, lr=0.05, momentum=0.9, weight_decay=0.1, nesterov=True),
        lambda ps: optim.Adam(ps, lr=0.05, weight_decay=0.1, amsgrad=True),
        lambda ps: optim.AdamW(ps, lr=0.05),
    ],
    ids=["sgd", "adam", "adamw"],
)
def test_float32_parameters_stay_float32_and_follow_the_float64_path(make):
    p32 = _run(make, dtype=torch.float32)
    p64 = _run(make, dtype=torch.float64)
    for a, e in zip(p32, p64, strict=True):
        assert a.dtype == np.float32
        np.testing.assert_allclose(a, e, rtol=1e-5, atol=1e-6)


def test_first_momentum_buffer_is_a_copy_of_the_gradient():
    p = torch.tensor([1.0, -2.0], requires_grad=True)
    opt = optim.SGD([p], lr=0.1, momentum=0.9, dampening=0.5)
    (p * p).sum().backward()
    opt.step()
    buf = opt.state[p]["momentum_buffer"]
    np.testing.assert_array_equal(buf.numpy(), [2.0, -4.0])  # no (1 - dampening) on the first step
    assert not np.shares_memory(buf.numpy(), p.grad.numpy())


def test_update_is_in_place_and_outside_autograd():
    p = torch.tensor([1.0, 2.0], requires_grad=True)
    alias = p.detach().numpy()
    opt = optim.Adam([p], lr=0.1)
    (p * p).sum().backward()
    opt.step()
    assert p.is_leaf and p.grad_fn is None and p.requires_grad
    assert np.shares_memory(alias, p.detach().numpy()) and not np.array_equal(alias, [1.0, 2.0])


def test_param_groups_use_their_own_options():
    a = torch.tensor([1.0], requires_grad=True)
    b = torch.tensor([1.0], requires_grad=True)
    opt = optim.SGD([{"params": [a]}, {"params": b, "lr": 0.5, "momentum": 0.9}], lr=0.1)
    assert [g["lr"] for g in opt.param_groups] == [0.1, 0.5]
    assert opt.param_groups[0]["momentum"] == 0 and opt.param_groups[1]["params"] == [b]
    (a * 2 + b * 3).sum().backward()
    opt.step()
    np.testing.assert_allclose(a.detach().numpy(), [1.0 - 0.1 * 2])
    np.testing.assert_allclose(b.detach().numpy(), [1.0 - 0.5 * 3])


def test_add_param_group_rejects_a_parameter_already_present():
    a = torch.tensor([1.0], requires_grad=True)
    b = torch.tensor([1.0], requires_grad=True)
    opt = optim.SGD([a], lr=0.1)
    opt.add_param_group({"params": [b], "lr": 0.01})
    assert len(opt.param_groups) == 2 and opt.param_groups[1]["momentum"] == 0
    with pytest.raises(ValueError, match="more than one parameter group"):
        opt.add_param_group({"params": [a]})


def test_bad_arguments_raise_like_pytorch():
    p = torch.tensor([1.0], requires_grad=True)
    with pytest.raises(
        ValueError, match="Nesterov momentum requires a momentum and zero dampening"
    ):
        optim.SGD([p], lr=0.1, nesterov=True)
    with pytest.raises(ValueError, match="Nesterov"):
        optim.SGD([p], lr=0.1, momentum=0.9, dampening=0.1, nesterov=True)
    with pytest.raises(ValueError, match="Invalid learning rate: -1"):
        optim.SGD([p], lr=-1)
    with pytest.raises(ValueError, match="Invalid beta parameter at index 1: 1.0"):
        optim.Adam([p], betas=(0.9, 1.0))
    with pytest.raises(ValueError, match="empty parameter list"):
        optim.Adam([])
    with pytest.raises(TypeError, match="iterable of Tensors or dicts"):
        optim.SGD(p, lr=0.1)
    with pytest.raises(TypeError, match="sets"):
        optim.SGD([{"params": {p}}], lr=0.1)
    with pytest.raises(ValueError, match="non-leaf"):
        optim.SGD([p * 2], lr=0.1)


def test_frozen_parameters_are_skipped_and_get_no_state():
    trained = torch.tensor([1.0, 2.0], requires_grad=True)
    frozen = torch.tensor([3.0, 4.0], requires_grad=False)
    before = frozen.numpy().copy()
    for opt in (
        optim.SGD([trained, frozen], lr=0.1, momentum=0.9, weight_decay=0.1),
        optim.Adam([trained, frozen], lr=0.1, weight_decay=0.1),
        optim.AdamW([trained, frozen], lr=0.1),
    ):
        (trained * frozen).sum().backward()
        opt.step()
        opt.zero_grad()
        assert frozen.grad is None and frozen not in opt.state and trained in opt.state
        np.testing.assert_array_equal(frozen.numpy(), before)


def test_zero_grad_sets_to_none_or_zeros_in_place():
    p = torch.tensor([1.0, 2.0], requires_grad=True)
    opt = optim.SGD([p], lr=0.1)
    (p * 3).sum().backward()
    grad = p.grad
    opt.zero_grad(set_to_none=False)
    assert p.grad is grad
    np.testing.assert_array_equal(grad.numpy(), [0.0, 0.0])
    opt.zero_grad()
    assert p.grad is None


def test_step_calls_the_closure_with_grad_enabled_and_returns_its_loss():
    p = torch.tensor([2.0], requires_grad=True)
    opt = optim.SGD([p], lr=0.25)

    def closure():
        opt.zero_grad()
        loss = (p * p).sum()
        loss.backward()
        return loss

    with torch.no_grad():
        loss = opt.step(closure)
    assert loss.item() == 4.0
    np.testing.assert_array_equal(p.detach().numpy(), [2.0 - 0.25 * 4.0])


SGD_REPR = """\
SGD (
Parameter Group 0
    dampening: 0
    differentiable: False
    foreach: None
    lr: 0.01
    maximize: False
    momentum: 0.9
    nesterov: False
    weight_decay: 0
)"""


def test_print_sgd_matches_pytorch(capsys):
    params = [torch.zeros(2, 3, requires_grad=True), torch.zeros(2, requires_grad=True)]
    print(optim.SGD(params, lr=1e-2, momentum=0.9))
    assert capsys.readouterr().out == SGD_REPR + "\n"


def test_print_adam_lists_pytorch_2_1_keys_and_every_group():
    a, b = torch.zeros(1, requires_grad=True), torch.zeros(1, requires_grad=True)
    text = repr(optim.AdamW([{"params": [a]}, {"params": [b], "lr": 0.1}]))
    group = (
        "    amsgrad: False\n    betas: (0.9, 0.999)\n    capturable: False\n"
        "    differentiable: False\n    eps: 1e-08\n    foreach: None\n    fused: None\n"
        "    lr: {lr}\n    maximize: False\n    weight_decay: 0.01\n"
    )
    expected = (
        "AdamW (\nParameter Group 0\n"
        + group.format(lr=0.001)
        + "Parameter Group 1\n"
        + group.format(lr=0.1)
        + ")"
    )
    assert text == expected


def _train(opt, params, steps):
    for _ in range(steps):
        opt.zero_grad()
        loss = sum(((p - 0.3) * (p - 0.3) * (i + 1)).sum() for i, p in enumerate(params))
        loss.backward()
        opt.step()


@pytest.mark.parametrize(
    "make",
    [
        lambda ps: optim.SGD(ps, lr=0.1, momentum=0.9, nesterov=True),
        lambda ps: optim.Adam(ps, lr=0.1, amsgrad=True),
        lambda ps: optim.AdamW([{"params": ps[:1]}, {"params": ps[1:], "lr": 0.05}], lr=0.1),
    ],
    ids=["sgd", "adam", "adamw-groups"],
)
def test_state_dict_round_trip_continues_identically(make):
    def fresh():
        return [
            torch.tensor([1.0, -1.0], requires_grad=True),
            torch.tensor([[2.0]], requires_grad=True),
        ]

    params = fresh()
    opt = make(params)
    _train(opt, params, 3)
    saved_params = [p.detach().clone() for p in params]
    state = opt.state_dict()  # holds the live buffers, as in PyTorch: checkpoint it to freeze it
    checkpoint = io.BytesIO()
    torch.save(state, checkpoint)
    assert sorted(state) == ["param_groups", "state"]
    assert sorted(state["state"]) == [0, 1]
    assert [g["params"] for g in state["param_groups"]] in ([[0, 1]], [[0], [1]])
    _train(opt, params, 2)

    resumed = fresh()
    for p, s in zip(resumed, saved_params):
        p.data = s.clone()
    opt2 = make(resumed)
    checkpoint.seek(0)
    opt2.load_state_dict(torch.load(checkpoint))
    _train(opt2, resumed, 2)
    for a, b in zip(params, resumed):
        np.testing.assert_array_equal(a.detach().numpy(), b.detach().numpy())


def test_load_state_dict_copies_so_later_steps_do_not_touch_the_source():
    p = torch.tensor([1.0], requires_grad=True)
    opt = optim.SGD([p], lr=0.1, momentum=0.9)
    _train(opt, [p], 1)
    state = opt.state_dict()
    buffer = state["state"][0]["momentum_buffer"].numpy().copy()
    opt.load_state_dict(state)
    _train(opt, [p], 1)
    np.testing.assert_array_equal(state["state"][0]["momentum_buffer"].numpy(), buffer)


def test_load_state_dict_rejects_mismatched_groups():
    a, b = torch.zeros(2, requires_grad=True), torch.zeros(3, requires_grad=True)
    state = optim.SGD([a, b], lr=0.1).state_dict()
    with pytest.raises(ShapeError, match="different number of parameter groups"):
        optim.SGD([{"params": [a]}, {"params": [b]}], lr=0.1).load_state_dict(state)
    with pytest.raises(ShapeError, match="group 0 has 2 parameters saved, 1 in this SGD"):
        optim.SGD([a], lr=0.1).load_state_dict(state)


def test_load_state_dict_rejects_buffers_of_the_wrong_shape():
    a = torch.zeros(2, requires_grad=True)
    opt = optim.Adam([a], lr=0.1)
    _train(opt, [a], 1)
    state = opt.state_dict()
    with pytest.raises(
        ShapeError, match=r"'exp_avg' of parameter 0 has shape \[2\] .* shape \[4\]"
    ):
        optim.Adam([torch.zeros(4, requires_grad=True)]).load_state_dict(state)


def test_adam_step_is_a_float32_scalar_tensor_counting_updates():
    p = torch.zeros(2, requires_grad=True)
    opt = optim.Adam([p])
    _train(opt, [p], 3)
    step = opt.state[p]["step"]
    assert step.dtype == torch.float32 and step.shape == () and step.item() == 3.0
    assert math.isclose(opt.param_groups[0]["lr"], 1e-3)


# -- float32: PyTorch 2.1's sequence of ATen ops, each with its scalar kernel's rounding ----------
# ATen casts a Python scalar to the tensor's dtype before using it; these helpers are the scalar
# (non-vectorised) kernels of add(alpha=), addcmul, addcdiv and lerp.


def _f32(x: float) -> np.float32:
    return np.float32(x)


def _add(a, b, alpha=1.0):  # a.add(b, alpha=alpha)
    return a + _f32(alpha) * b


def _addcmul(a, t1, t2, value):  # a.addcmul(t1, t2, value=value)
    return a + _f32(value) * t1 * t2


def _addcdiv(a, t1, t2, value):  # a.addcdiv(t1, t2, value=value)
    return a + _f32(value) * t1 / t2


def _lerp(start, end, weight):  # start.lerp(end, weight)
    w = _f32(weight)
    return start + w * (end - start) if abs(w) < 0.5 else end - (end - start) * (_f32(1) - w)


def _run_f32(make_optimizer) -> list[np.ndarray]:
    """Like ``_run`` in float32, with the gradient set directly so it has one rounding."""
    p = torch.tensor(THETA0, dtype=torch.float32, requires_grad=True)
    c, d = C.astype(np.float32), D.astype(np.float32)
    opt = make_optimizer([p])
    trajectory = []
    for _ in range(STEPS):
        p.grad = torch.from_numpy(c * p.detach().numpy() + d)
        opt.step()
        trajectory.append(p.detach().numpy().copy())
    return trajectory


def _torch_sgd_f32(lr, momentum, dampening, weight_decay, nesterov, maximize):
    param, buf, out = THETA0.astype(np.float32), None, []
    c, d = C.astype(np.float32), D.astype(np.float32)
    for _ in range(STEPS):
        grad = c * param + d
        d_p = -grad if maximize else grad
        if weight_decay != 0:
            d_p = _add(d_p, param, alpha=weight_decay)
        if momentum != 0:
            buf = d_p.copy() if buf is None else _add(buf * _f32(momentum), d_p, 1 - dampening)
            d_p = _add(d_p, buf, alpha=momentum) if nesterov else buf
        param = _add(param, d_p, alpha=-lr)
        out.append(param)
    return out


def _torch_adam_f32(lr, betas, eps, weight_decay, amsgrad, maximize, decoupled):
    param, step_t = THETA0.astype(np.float32), np.float32(0)
    c, d = C.astype(np.float32), D.astype(np.float32)
    exp_avg, exp_avg_sq = np.zeros_like(param), np.zeros_like(param)
    max_exp_avg_sq, out = np.zeros_like(param), []
    for _ in range(STEPS):
        grad = c * param + d
        grad = -grad if maximize else grad
        step_t += np.float32(1)
        if decoupled:
            param = param * _f32(1 - lr * weight_decay)
        elif weight_decay != 0:
            grad = _add(grad, param, alpha=weight_decay)
        exp_avg = _lerp(exp_avg, grad, 1 - betas[0])
        exp_avg_sq = _addcmul(exp_avg_sq * _f32(betas[1]), grad, grad, value=1 - betas[1])
        step = float(step_t)
        bias_correction1 = 1 - betas[0] ** step
        bias_correction2_sqrt = math.sqrt(1 - betas[1] ** step)
        step_size = lr / bias_correction1
        if amsgrad:
            max_exp_avg_sq = np.maximum(max_exp_avg_sq, exp_avg_sq)
            denom = np.sqrt(max_exp_avg_sq) / _f32(bias_correction2_sqrt) + _f32(eps)
        else:
            denom = np.sqrt(exp_avg_sq) / _f32(bias_correction2_sqrt) + _f32(eps)
        param = _addcdiv(param, exp_avg, denom, value=-step_size)
        out.append(param)
    return out


@pytest.mark.parametrize(
    "options",
    [
        dict(lr=0.05, momentum=0.9, dampening=0.0, weight_decay=0.1, nesterov=True, maximize=False),
        dict(lr=0.05, momentum=0.9, dampening=0.0, weight_decay=0.1, nesterov=True, maximize=True),
        dict(
            lr=0.05, momentum=0.8, dampening=0.3, weight_decay=0.0, nesterov=False, maximize=False
        ),
    ],
    ids=str,
)
def test_float32_sgd_is_bit_identical_to_pytorch_op_sequence(options):
    actual = _run_f32(lambda ps: optim.SGD(ps, **options))
    for a, e in zip(actual, _torch_sgd_f32(**options), strict=True):
        np.testing.assert_array_equal(a, e)


@pytest.mark.parametrize("decoupled", [False, True], ids=["adam", "adamw"])
@pytest.mark.parametrize("betas", [(0.9, 0.999), (0.3, 0.9)])
def test_float32_adam_is_bit_identical_to_pytorch_op_sequence(decoupled, betas):
    options = dict(lr=0.05, betas=betas, eps=1e-6, weight_decay=0.2, amsgrad=True, maximize=True)
    cls = optim.AdamW if decoupled else optim.Adam
    actual = _run_f32(lambda ps: cls(ps, **options))
    for a, e in zip(actual, _torch_adam_f32(**options, decoupled=decoupled), strict=True):
        np.testing.assert_array_equal(a, e)


def test_a_step_override_calling_super_counts_one_step_per_call():
    class Logged(optim.SGD):
        def step(self, closure=None):
            self.calls = getattr(self, "calls", 0) + 1
            return super().step(closure)

    w = torch.nn.Parameter(torch.ones(2))
    opt = Logged([w], lr=0.1)
    for expected in (1, 2, 3):
        w.grad = torch.ones(2)
        opt.step()
        assert opt._step_count == expected and opt.calls == expected
    np.testing.assert_allclose(w.detach().numpy(), [0.7, 0.7], rtol=1e-6)
