"""Schedulers: PyTorch's recursive updates against the closed forms, state dicts, warnings."""

from __future__ import annotations

import io
import math
import warnings
from bisect import bisect_right

import pytest

import finetune as torch
from finetune import optim
from finetune.optim import lr_scheduler

EPOCHS = 13


def _optimizer(lrs=(0.1,)):
    groups = [{"params": [torch.zeros(1, requires_grad=True)], "lr": lr} for lr in lrs]
    return optim.SGD(groups, lr=lrs[0], momentum=0.9)


def _schedule(scheduler, epochs=EPOCHS):
    """The rates in force during each epoch, stepping the optimizer first as PyTorch asks."""
    lrs = []
    for _ in range(epochs):
        in_force = [group["lr"] for group in scheduler.optimizer.param_groups]
        assert scheduler.get_last_lr() == in_force
        lrs.append(in_force)
        scheduler.optimizer.step()
        scheduler.step()
    return lrs


def _assert_close(actual, expected):
    assert len(actual) == len(expected)
    for epoch, (a, e) in enumerate(zip(actual, expected)):
        assert all(math.isclose(x, y, rel_tol=1e-12, abs_tol=1e-15) for x, y in zip(a, e)), (
            f"epoch {epoch}: {a} != {e}"
        )


BASES = (0.1, 0.03)


def test_step_lr_divides_every_step_size_epochs():
    sched = lr_scheduler.StepLR(_optimizer(BASES), step_size=3, gamma=0.5)
    expected = [[b * 0.5 ** (e // 3) for b in BASES] for e in range(EPOCHS)]
    _assert_close(_schedule(sched), expected)


def test_multistep_lr_counts_repeated_milestones():
    sched = lr_scheduler.MultiStepLR(_optimizer(BASES), milestones=[5, 2, 5], gamma=0.1)
    expected = [[b * 0.1 ** bisect_right([2, 5, 5], e) for b in BASES] for e in range(EPOCHS)]
    _assert_close(_schedule(sched), expected)


def test_exponential_lr():
    sched = lr_scheduler.ExponentialLR(_optimizer(BASES), gamma=0.9)
    _assert_close(_schedule(sched), [[b * 0.9**e for b in BASES] for e in range(EPOCHS)])


@pytest.mark.parametrize("eta_min", [0.0, 0.01])
def test_cosine_annealing_follows_the_cosine_past_t_max(eta_min):
    t_max = 4
    sched = lr_scheduler.CosineAnnealingLR(_optimizer(BASES), T_max=t_max, eta_min=eta_min)
    expected = [
        [eta_min + (b - eta_min) * (1 + math.cos(math.pi * e / t_max)) / 2 for b in BASES]
        for e in range(EPOCHS)
    ]
    lrs = _schedule(sched)
    _assert_close(lrs, expected)
    assert math.isclose(lrs[t_max][0], eta_min, abs_tol=1e-15)


def test_lambda_lr_with_one_function_per_group():
    sched = lr_scheduler.LambdaLR(_optimizer(BASES), [lambda e: 0.95**e, lambda e: 1 / (e + 1)])
    expected = [[0.1 * 0.95**e, 0.03 / (e + 1)] for e in range(EPOCHS)]
    _assert_close(_schedule(sched), expected)
    with pytest.raises(ValueError, match="Expected 2 lr_lambdas, but got 1"):
        lr_scheduler.LambdaLR(_optimizer(BASES), [lambda e: 1.0])


def test_construction_records_initial_lr_and_takes_the_first_step():
    opt = _optimizer(BASES)
    sched = lr_scheduler.StepLR(opt, step_size=2)
    assert [g["initial_lr"] for g in opt.param_groups] == list(BASES) == sched.base_lrs
    assert sched.last_epoch == 0 and sched.get_last_lr() == list(BASES)
    opt.step()
    sched.step()
    assert sched.last_epoch == 1
    assert "    initial_lr: 0.1\n" in repr(opt)


def test_resuming_needs_initial_lr():
    with pytest.raises(KeyError, match=r"initial_lr' is not specified in param_groups\[0\]"):
        lr_scheduler.StepLR(_optimizer(), step_size=2, last_epoch=4)


def test_stepping_with_an_epoch_uses_the_closed_form_and_warns():
    sched = lr_scheduler.StepLR(_optimizer(), step_size=3, gamma=0.1)
    sched.optimizer.step()
    with pytest.warns(UserWarning, match="epoch parameter in `scheduler.step\\(\\)`"):
        sched.step(7)
    assert sched.last_epoch == 7
    assert math.isclose(sched.get_last_lr()[0], 0.1 * 0.1**2, rel_tol=1e-12)


def test_scheduler_before_optimizer_step_warns_once_the_right_order_does_not():
    sched = lr_scheduler.ExponentialLR(_optimizer(), gamma=0.5)
    with pytest.warns(UserWarning, match="before `optimizer.step\\(\\)`"):
        sched.step()
    sched = lr_scheduler.ExponentialLR(_optimizer(), gamma=0.5)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        sched.optimizer.step()
        sched.step()


def test_verbose_prints_each_new_rate(capsys):
    lr_scheduler.StepLR(_optimizer(), step_size=1, verbose=True)
    assert capsys.readouterr().out == "Adjusting learning rate of group 0 to 1.0000e-01.\n"


class _Warmup:
    """A callable object: its attributes are saved in the scheduler's state dict."""

    def __init__(self, epochs: int) -> None:
        self.epochs = epochs

    def __call__(self, epoch: int) -> float:
        return min(1.0, (epoch + 1) / self.epochs)


@pytest.mark.parametrize(
    "make",
    [
        lambda o: lr_scheduler.StepLR(o, step_size=2, gamma=0.5),
        lambda o: lr_scheduler.MultiStepLR(o, milestones=[3, 3, 6]),
        lambda o: lr_scheduler.CosineAnnealingLR(o, T_max=5, eta_min=1e-3),
        lambda o: lr_scheduler.ExponentialLR(o, gamma=0.8),
        lambda o: lr_scheduler.LambdaLR(o, [_Warmup(4), lambda e: 0.9**e]),
    ],
    ids=["step", "multistep", "cosine", "exponential", "lambda"],
)
def test_state_dict_through_save_and_load_resumes_the_schedule(make):
    opt = _optimizer(BASES)
    sched = make(opt)
    _schedule(sched, 4)
    buffer = io.BytesIO()
    torch.save({"optimizer": opt.state_dict(), "scheduler": sched.state_dict()}, buffer)
    assert "optimizer" not in sched.state_dict()
    expected = _schedule(sched, 6)

    buffer.seek(0)
    checkpoint = torch.load(buffer)
    opt2 = _optimizer((0.5, 0.5))
    sched2 = make(opt2)
    if isinstance(sched2, lr_scheduler.LambdaLR):
        sched2.lr_lambdas[0].epochs = 99  # restored from the checkpoint below
    opt2.load_state_dict(checkpoint["optimizer"])
    sched2.load_state_dict(checkpoint["scheduler"])
    _assert_close(_schedule(sched2, 6), expected)
