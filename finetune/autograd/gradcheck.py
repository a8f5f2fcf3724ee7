"""Finite-difference gradient checking in float64 (``torch.autograd.gradcheck``)."""

from __future__ import annotations

import numpy as np

from ..errors import AutogradError


def _flat_outputs(out) -> list:
    from ..tensor import Tensor

    if isinstance(out, Tensor):
        return [out]
    return [o for o in out if isinstance(o, Tensor)]


def gradcheck(
    fn,
    inputs,
    eps: float = 1e-6,
    atol: float = 1e-5,
    rtol: float = 1e-3,
    raise_exception: bool = True,
    fast_mode: bool = False,
) -> bool:
    """Compare analytical gradients of ``fn(*inputs)`` with central differences.

    Every floating input that requires grad should be float64, as in PyTorch. Each output element
    is back-propagated in turn (the full Jacobian), so keep the inputs small; ``fast_mode=True``
    compares ``u^T J v`` for seeded random ``u`` and ``v`` instead (PyTorch's fast mode): two
    evaluations and one backward per input, whatever the sizes.
    """
    from ..autograd import grad
    from ..tensor import Tensor

    inputs = tuple(inputs) if isinstance(inputs, (tuple, list)) else (inputs,)
    diff_inputs = [t for t in inputs if isinstance(t, Tensor) and t.requires_grad]
    for t in diff_inputs:
        if t._data.dtype != np.float64:
            raise AutogradError(
                f"gradcheck expects float64 inputs that require grad, got {t._data.dtype}"
            )

    def evaluate() -> list[np.ndarray]:
        return [o._data.astype(np.float64).copy() for o in _flat_outputs(fn(*inputs))]

    outputs = _flat_outputs(fn(*inputs))
    if fast_mode:
        return _fast_check(
            fn, inputs, diff_inputs, outputs, evaluate, eps, atol, rtol, raise_exception
        )
    # numerical Jacobian, column by column
    numerical = []
    for t in diff_inputs:
        if not (t._data.flags.c_contiguous and t._data.flags.writeable):
            t._data = np.array(t._data, order="C")  # perturbed in place through a flat view
        flat = t._data.reshape(-1)
        cols = []
        for i in range(flat.size):
            orig = flat[i]
            flat[i] = orig + eps
            plus = evaluate()
            flat[i] = orig - eps
            minus = evaluate()
            flat[i] = orig
            cols.append(
                np.concatenate([((p - m) / (2 * eps)).ravel() for p, m in zip(plus, minus)])
            )
        n_out = sum(o.numel() for o in outputs)
        numerical.append(np.stack(cols, axis=1) if cols else np.zeros((n_out, 0)))
    # analytical Jacobian, row by row
    n_out = sum(o.numel() for o in outputs)
    analytical = [np.zeros((n_out, t.numel())) for t in diff_inputs]
    row = 0
    for o in outputs:
        if not o.requires_grad:
            row += o.numel()
            continue
        for j in range(o.numel()):
            seed = np.zeros(o.shape, dtype=o._data.dtype)
            seed.reshape(-1)[j] = 1
            grads = grad(
                [o], diff_inputs, [Tensor._from_array(seed)], retain_graph=True, allow_unused=True
            )
            for k, g in enumerate(grads):
                if g is not None:
                    analytical[k][row + j] = g._data.reshape(-1)
        row += o.numel()
    ends = np.cumsum([o.numel() for o in outputs])
    for k, (a, n) in enumerate(zip(analytical, numerical)):
        if a.shape != n.shape or not np.allclose(a, n, atol=atol, rtol=rtol):
            if raise_exception:
                diff = np.abs(a - n) if a.shape == n.shape else np.full(1, np.nan)
                worst_row = (
                    int(np.unravel_index(np.nanargmax(diff), diff.shape)[0]) if diff.size > 1 else 0
                )
                out_index = int(np.searchsorted(ends, worst_row, side="right"))
                raise AutogradError(
                    f"Jacobian mismatch for output {out_index} with respect to input {k},\n"
                    f"numerical:{n}\nanalytical:{a}\n(max abs difference {np.nanmax(diff)})"
                )
            return False
    return True


def _fast_check(fn, inputs, diff_inputs, outputs, evaluate, eps, atol, rtol, raise_exception):
    """``u^T J v`` by central differences along ``v`` against the backward of ``u``, per input."""
    from ..autograd import grad
    from ..tensor import Tensor

    rng = np.random.default_rng(0)
    weights = [rng.standard_normal(o.shape) for o in outputs]
    live = [(o, u) for o, u in zip(outputs, weights) if o.requires_grad]
    grads = (
        grad(
            [o for o, _ in live],
            diff_inputs,
            [Tensor._from_array(u.astype(o._data.dtype)) for o, u in live],
            retain_graph=True,
            allow_unused=True,
        )
        if live
        else [None] * len(diff_inputs)
    )
    for k, (t, g) in enumerate(zip(diff_inputs, grads)):
        v = rng.standard_normal(t.shape)
        original = t._data
        t._data = original + eps * v
        plus = evaluate()
        t._data = original - eps * v
        minus = evaluate()
        t._data = original
        numerical = sum(
            float(np.sum(u * (p - m) / (2 * eps))) for u, p, m in zip(weights, plus, minus)
        )
        analytical = 0.0 if g is None else float(np.sum(g._data * v))
        if not np.isclose(analytical, numerical, atol=atol, rtol=rtol):
            if raise_exception:
                raise AutogradError(
                    f"Jacobian mismatch with respect to input {k} (fast mode): u^T J v is "
                    f"{numerical} numerically, {analytical} analytically"
                )
            return False
    return True
