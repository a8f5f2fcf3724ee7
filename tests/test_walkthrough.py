"""The seed walkthrough of issue 2 runs verbatim and prints what PyTorch prints."""

from __future__ import annotations

import re
import runpy
from pathlib import Path

import numpy as np

import finetune

SCRIPT = Path(__file__).resolve().parents[1] / "examples" / "seed_walkthrough.py"

# What PyTorch prints for the deterministic first half (the grad_fn address aside).
PYTORCH_PRINTS = """\
tensor([[1., 1.],
        [1., 1.]], requires_grad=True)
tensor([[3., 3.],
        [3., 3.]], grad_fn=<AddBackward0>)
<AddBackward0 object at ADDRESS>
tensor([[27., 27.],
        [27., 27.]], grad_fn=<MulBackward0>) tensor(27., grad_fn=<MeanBackward0>)
tensor([[4.5000, 4.5000],
        [4.5000, 4.5000]])
"""


def _run(capsys) -> tuple[str, dict]:
    namespace = runpy.run_path(str(SCRIPT), run_name="__main__")
    return capsys.readouterr().out, namespace


def test_deterministic_part_prints_as_pytorch(capsys) -> None:
    out, _ = _run(capsys)
    out = re.sub(r"object at 0x[0-9a-f]+", "object at ADDRESS", out)
    assert out.startswith(PYTORCH_PRINTS)


def test_random_part_gradient_is_power_of_two_times_the_vector(capsys) -> None:
    finetune.manual_seed(0)
    out, ns = _run(capsys)
    x, y = ns["x"], ns["y"]
    scale = y.data.numpy() / x.data.numpy()
    k = int(round(np.log2(scale[0])))
    np.testing.assert_array_equal(scale, np.full(3, 2.0**k, dtype=np.float32))
    assert float(y.data.norm()) >= 1000 > float((y.data / 2).norm())
    expected = np.float32(2.0**k) * np.array([0.1, 1.0, 0.0001], dtype=np.float32)
    np.testing.assert_array_equal(x.grad.numpy(), expected)
    last_line = out.rstrip("\n").split("\n")[-1]
    sci = r"-?\d\.\d{4}e[+-]\d\d"
    assert re.fullmatch(rf"tensor\(\[{sci}, {sci}, {sci}\]\)", last_line)
    assert last_line == repr(finetune.from_numpy(expected))


def test_known_power_prints_like_the_issue() -> None:
    """With k = 10 the gradient prints as in PyTorch's own walkthrough."""
    grad = finetune.FloatTensor([0.1, 1.0, 0.0001]) * 2**10
    assert repr(grad) == "tensor([1.0240e+02, 1.0240e+03, 1.0240e-01])"
