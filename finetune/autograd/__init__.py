"""Reverse-mode automatic differentiation: ``backward``, ``grad``, ``gradcheck``, ``Function``."""

from __future__ import annotations

from collections.abc import Sequence

from .engine import (
    enable_grad,
    inference_mode,
    is_grad_enabled,
    no_grad,
    run_backward,
    set_grad_enabled,
)
from .function import Function
from .gradcheck import gradcheck


def Variable(tensor, requires_grad: bool = False):  # noqa: N802 - legacy PyTorch name
    """Legacy alias: returns the tensor itself, with ``requires_grad`` set as asked."""
    if requires_grad:
        tensor.requires_grad_(True)
    return tensor


def _as_list(x) -> list:
    from ..tensor import Tensor

    if x is None:
        return []
    if isinstance(x, Tensor):
        return [x]
    return list(x)


def _no_higher_order(create_graph: bool) -> None:
    if create_graph:
        raise NotImplementedError(
            "create_graph=True (gradients of gradients) is not supported: finetune's backward "
            "formulas run on numpy arrays and are not themselves recorded"
        )


def backward(tensors, grad_tensors=None, retain_graph=None, create_graph=False, inputs=None):
    """Accumulate gradients of ``tensors`` into the ``.grad`` of the graph's leaves."""
    _no_higher_order(create_graph)
    tensors = _as_list(tensors)
    grads = _as_list(grad_tensors) or [None] * len(tensors)
    if inputs is not None:
        captured = run_backward(tensors, grads, bool(retain_graph), capture=_as_list(inputs))
        from .engine import _accumulate

        for t, g in zip(_as_list(inputs), captured):
            if g is not None:
                _accumulate(t, g)
        return
    run_backward(tensors, grads, bool(retain_graph))


def grad(
    outputs,
    inputs,
    grad_outputs=None,
    retain_graph: bool | None = None,
    create_graph: bool = False,
    allow_unused: bool = False,
) -> tuple:
    """Gradients of ``outputs`` with respect to ``inputs``, returned (``.grad`` is untouched)."""
    from ..errors import AutogradError
    from ..tensor import Tensor

    _no_higher_order(create_graph)
    outputs = _as_list(outputs)
    inputs = _as_list(inputs)
    grads = _as_list(grad_outputs) or [None] * len(outputs)
    captured = run_backward(outputs, grads, bool(retain_graph), capture=inputs)
    result = []
    for g in captured:
        if g is None and not allow_unused:
            raise AutogradError(
                "One of the differentiated Tensors appears to not have been used in the graph. "
                "Set allow_unused=True if this is the desired behavior."
            )
        result.append(None if g is None else Tensor._from_array(g.copy()))
    return tuple(result)


__all__: Sequence[str] = [
    "Function",
    "Variable",
    "backward",
    "enable_grad",
    "inference_mode",
    "grad",
    "gradcheck",
    "is_grad_enabled",
    "no_grad",
    "set_grad_enabled",
]
