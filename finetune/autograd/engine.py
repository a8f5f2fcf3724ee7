"""The backward pass: iterative topological walk, gradient accumulation, grad-mode state.

The walk never recurses, so graphs tens of thousands of ops deep work. Each node's incoming
gradients are summed (``+=``) before its backward runs, so a value used twice needs no
special case. Broadcasting is undone here, once for every op: a gradient in the broadcast shape
is summed back to its input's shape (``sum_to_shape``); any other shape mismatch is a bug in
that op's backward and raises.
"""

from __future__ import annotations

import functools
import threading
from collections.abc import Sequence

import numpy as np

from ..errors import AutogradError, ShapeError
from .broadcast import sum_to_shape

# -- grad mode ------------------------------------------------------------------------------


class _GradMode(threading.local):
    enabled = True


_mode = _GradMode()


def is_grad_enabled() -> bool:
    return _mode.enabled


class _GradModeContext:
    """Base of ``no_grad`` / ``enable_grad``: a context manager that also decorates functions."""

    enabled: bool

    def __enter__(self) -> None:
        self._prev = _mode.enabled
        _mode.enabled = self.enabled

    def __exit__(self, *exc) -> None:
        _mode.enabled = self._prev

    def __call__(self, fn):
        enabled = self.enabled

        @functools.wraps(fn)
        def wrapper(*args, **kwargs):
            prev, _mode.enabled = _mode.enabled, enabled
            try:
                return fn(*args, **kwargs)
            finally:
                _mode.enabled = prev

        return wrapper


class no_grad(_GradModeContext):  # noqa: N801 - the PyTorch name
    """Record no graph and save nothing for backward inside this block (or decorated function)."""

    enabled = False


class enable_grad(_GradModeContext):  # noqa: N801
    """Record the graph again inside a ``no_grad`` block."""

    enabled = True


class inference_mode(_GradModeContext):  # noqa: N801
    """``no_grad`` under PyTorch's faster-inference name; ``inference_mode(False)`` records."""

    def __init__(self, mode: bool = True) -> None:
        self.enabled = not mode


class set_grad_enabled(_GradModeContext):  # noqa: N801
    """Switch recording on or off now; as a context manager or decorator, restore it after."""

    def __init__(self, mode: bool) -> None:
        self._prev = _mode.enabled
        self.enabled = bool(mode)
        _mode.enabled = self.enabled

    def __enter__(self) -> None:
        pass

    def __call__(self, fn):
        _mode.enabled = self._prev
        return super().__call__(fn)


# -- backward -------------------------------------------------------------------------------


def _roots(tensors: Sequence, grad_tensors: Sequence) -> list[tuple]:
    from ..tensor import Size, Tensor
    from .function import edge_of

    roots = []
    for i, (t, g) in enumerate(zip(tensors, grad_tensors)):
        if not t.requires_grad:
            raise AutogradError(
                f"element {i} of tensors does not require grad and does not have a grad_fn"
            )
        if g is None:
            if t.numel() != 1:
                raise AutogradError("grad can be implicitly created only for scalar outputs")
            g = np.ones(t.shape, dtype=t._data.dtype)
        else:
            g = g._data if isinstance(g, Tensor) else np.asarray(g)
            if g.shape != t.shape:
                raise ShapeError(
                    f"Mismatch in shape: grad_output[{i}] has a shape of {Size(g.shape)} and "
                    f"output[{i}] has a shape of {t.shape}."
                )
            g = g.astype(t._data.dtype, copy=False)
        roots.append((edge_of(t), g))
    return roots


def _dependencies(start_nodes) -> dict:
    """For every node reachable from ``start_nodes``: how many edges point into it."""
    deps = {n: 0 for n in start_nodes}
    stack = list(start_nodes)
    seen = set(stack)
    while stack:
        node = stack.pop()
        for nxt, _ in node.next_functions:
            if nxt is None:
                continue
            deps[nxt] = deps.get(nxt, 0) + 1
            if nxt not in seen:
                seen.add(nxt)
                stack.append(nxt)
    return deps


def _add_into(buffers: dict, node, nr: int, n_outputs: int, grad: np.ndarray) -> None:
    slot = buffers.get(node)
    if slot is None:
        slot = buffers[node] = [None] * n_outputs
    current = slot[nr]
    if current is None:
        slot[nr] = grad
    else:
        slot[nr] = current + grad


def _n_outputs(node) -> int:
    return len(node._output_meta) or 1


@np.errstate(all="ignore")  # inf and nan gradients arrive silently, as in PyTorch
def run_backward(
    tensors: Sequence,
    grad_tensors: Sequence,
    retain_graph: bool = False,
    capture: Sequence | None = None,
) -> list | None:
    """Propagate gradients from ``tensors`` to the graph's leaves.

    With ``capture`` (a list of tensors), gradients reaching them are returned instead of being
    accumulated into ``.grad`` (this is ``autograd.grad``); otherwise leaves accumulate.
    """
    from .function import AccumulateGrad, edge_of

    roots = _roots(tensors, grad_tensors)
    buffers: dict = {}
    for (node, nr), g in roots:
        _add_into(buffers, node, nr, _n_outputs(node), g)
    deps = _dependencies([node for (node, _), _ in roots])

    captured = None
    capture_keys: dict = {}
    if capture is not None:
        captured = [None] * len(capture)
        for i, t in enumerate(capture):
            if not t.requires_grad:
                raise AutogradError("One of the differentiated Tensors does not require grad")
            capture_keys.setdefault(edge_of(t), []).append(i)

    ready = [n for n, d in deps.items() if d == 0]
    with no_grad():
        while ready:
            node = ready.pop()
            grads = buffers.pop(node, None)
            if capture_keys and grads is not None:
                for nr, g in enumerate(grads):
                    for i in capture_keys.get((node, nr), ()):
                        captured[i] = g
            if isinstance(node, AccumulateGrad):
                if captured is None and grads is not None and grads[0] is not None:
                    _accumulate(node.variable, grads[0])
                continue
            in_grads = None
            if grads is not None and any(g is not None for g in grads):
                in_grads = _call_backward(node, grads)
                _retain(node, grads)
            if not retain_graph:
                node.release()
            for i, (nxt, nr) in enumerate(node.next_functions):
                if nxt is None:
                    continue
                if in_grads is not None and in_grads[i] is not None:
                    _add_into(buffers, nxt, nr, _n_outputs(nxt), in_grads[i])
                deps[nxt] -= 1
                if deps[nxt] == 0:
                    ready.append(nxt)
    return captured


def _call_backward(node, grads: list) -> tuple:
    meta = node._output_meta
    if len(grads) > 1 or grads[0] is None:
        grads = [
            g if g is not None else np.zeros(shape, dtype=dtype)
            for g, (shape, dtype) in zip(grads, meta)
        ]
    in_grads = node.apply_backward(*grads)
    if len(in_grads) != len(node.next_functions):
        raise AutogradError(
            f"function {node.name()} returned {len(in_grads)} gradients, "
            f"expected {len(node.next_functions)}"
        )
    checked = []
    for g, m, (nxt, _) in zip(in_grads, node._input_meta, node.next_functions):
        if g is None or nxt is None:
            checked.append(None)
            continue
        shape, dtype = m
        g = np.asarray(g)
        if g.shape != shape and _broadcasts_to(shape, g.shape):
            g = sum_to_shape(g, shape)
        if g.shape != shape:
            raise ShapeError(
                f"Function {node.name()} returned an invalid gradient - got {list(g.shape)} "
                f"but expected shape compatible with {list(shape)}"
            )
        if g.dtype != dtype:
            g = g.astype(dtype)
        checked.append(g)
    return tuple(checked)


def _broadcasts_to(shape: tuple, target: tuple) -> bool:
    """Whether numpy broadcasting stretches ``shape`` to ``target``."""
    lead = len(target) - len(shape)
    return lead >= 0 and all(s in (1, t) for s, t in zip(shape, target[lead:]))


def _retain(node, grads: list) -> None:
    """Store gradients into non-leaf tensors that asked for them with ``retain_grad()``."""
    if not node._retained:
        return
    from ..tensor import Tensor

    for nr, ref in node._retained.items():
        t = ref()
        if t is None or grads[nr] is None:
            continue
        if t.grad is None:
            t.grad = Tensor._from_array(np.array(grads[nr]))
        else:
            t.grad._data = t.grad._data + grads[nr]


def _accumulate(variable, grad: np.ndarray) -> None:
    from ..tensor import Tensor

    if variable.grad is None:
        variable.grad = Tensor._from_array(np.array(grad, dtype=variable._data.dtype, copy=True))
    else:
        variable.grad._data += grad
