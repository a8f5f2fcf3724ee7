"""The optional compiled kernels (``finetune.autograd.jit``): used when numba is there and
allowed, never required. Their values are checked with the kernels' own tests (for the
depthwise forward: tests/test_grouped_conv.py runs every case compiled and with numpy)."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest

from finetune.autograd import conv, depthwise, jit


def _loop(x):
    return x


def test_disabled_gives_no_kernel(monkeypatch):
    monkeypatch.setattr(jit, "ENABLED", False)
    assert jit.compiled(_loop) is None


def test_without_numba_gives_no_kernel(monkeypatch):
    monkeypatch.setattr(jit, "ENABLED", True)
    monkeypatch.setattr(jit, "_compiled", {})
    monkeypatch.setitem(sys.modules, "numba", None)  # import numba raises ImportError
    assert jit.compiled(_loop) is None


def test_environment_variable_turns_it_off():
    env = {**os.environ, "FINETUNE_JIT": "0"}
    code = "from finetune.autograd import jit; print(jit.ENABLED)"
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert out.stdout.strip() == "False", out.stderr


def _depthwise_forward():
    r = np.random.default_rng(0)
    x = r.standard_normal((2, 3, 6, 5)).astype(np.float32)
    w = r.standard_normal((3, 1, 3, 3)).astype(np.float32)
    plan = conv._ConvPlan(x.shape, w.shape, (1, 1), ((1, 1), (1, 1)), (1, 1), 3).depthwise
    return plan.forward(x, w, None)


def _fail(*args, **kwargs):
    raise AssertionError("this path should not run")


def test_depthwise_forward_runs_compiled_when_numba_is_there(monkeypatch):
    pytest.importorskip("numba")
    monkeypatch.setattr(jit, "ENABLED", True)
    monkeypatch.setattr(depthwise, "_correlate", _fail)
    assert jit.compiled(depthwise._correlate_rows) is not None
    assert _depthwise_forward().shape == (2, 3, 6, 5)


def test_depthwise_forward_runs_numpy_when_disabled(monkeypatch):
    monkeypatch.setattr(jit, "ENABLED", False)
    monkeypatch.setattr(depthwise, "_correlate_compiled", _fail)
    assert _depthwise_forward().shape == (2, 3, 6, 5)
