"""``Function``: one primitive op, its forward next to its backward, and the graph node it records.

A subclass writes ``forward(ctx, *arrays, **options)`` on numpy arrays and
``backward(ctx, *grads)`` returning one gradient (or ``None``) per positional input.
``Function.apply`` unwraps tensors, runs forward, and records a node only when grad mode is on
and some input requires grad; otherwise the ``ctx`` the forward saw is discarded with whatever
it saved, so frozen layers keep nothing alive.
"""

from __future__ import annotations

import weakref
from typing import Any

import numpy as np

from ..errors import AutogradError
from . import engine, pool


class Node:
    """A recorded operation: what a tensor's ``grad_fn`` holds. Its class name is PyTorch's."""

    __slots__ = (
        "next_functions",
        "needs_input_grad",
        "_input_meta",
        "_output_meta",
        "_saved",
        "_saved_versions",
        "_freed",
        "_retained",
        "__dict__",
        "__weakref__",
    )

    def __init__(self) -> None:
        self.next_functions: tuple = ()
        self._output_meta: tuple = ()
        self._saved: tuple = ()
        self._saved_versions: tuple = ()
        self._freed = False
        self._retained = None

    def name(self) -> str:
        return type(self).__name__

    def __repr__(self) -> str:
        return f"<{type(self).__name__} object at {hex(id(self))}>"

    # -- saving for backward -------------------------------------------------------------
    def save_for_backward(self, *arrays: Any) -> None:
        self._saved = arrays

    @property
    def saved_tensors(self) -> tuple:
        if self._freed:
            raise AutogradError(_FREED_MESSAGE)
        return self._saved

    def _check_versions(self) -> None:
        for counter, version, array in self._saved_versions:
            if counter.value != version:
                raise AutogradError(
                    "one of the variables needed for gradient computation has been modified by an "
                    f"inplace operation: [{array.dtype} {list(array.shape)}] is at version "
                    f"{counter.value}; expected version {version} instead (in {self.name()}). "
                    "Use an out-of-place operation (x = x + y instead of x += y) or .clone() the "
                    "tensor."
                )

    def release(self) -> None:
        """Free what forward saved; a second backward through this node then raises. Arrays
        the forward took from the pool (``ctx.pooled``) go back to it for the next step."""
        for array in self.__dict__.get("pooled", ()):
            pool.give(array)
        self._saved = ()
        self._saved_versions = ()
        self.__dict__.clear()
        self._freed = True

    def apply_backward(self, *grads: np.ndarray) -> tuple:
        raise NotImplementedError


_FREED_MESSAGE = (
    "Trying to backward through the graph a second time (or directly access saved tensors after "
    "they have already been freed). Saved intermediate values of the graph are freed when you call "
    ".backward() or autograd.grad(). Specify retain_graph=True if you need to backward through the "
    "graph a second time or if you need to access saved tensors after calling backward."
)


class BackwardNode(Node):
    """A node recorded by a ``Function``; backward is the function's own."""

    __slots__ = ()
    function: type[Function]

    def apply_backward(self, *grads):
        if self._freed:
            raise AutogradError(_FREED_MESSAGE)
        self._check_versions()
        result = self.function.backward(self, *grads)
        return result if isinstance(result, tuple) else (result,)


class AccumulateGrad(Node):
    """The sink for a leaf tensor: adds the incoming gradient into ``variable.grad``."""

    __slots__ = ("variable",)

    def __init__(self, variable) -> None:
        super().__init__()
        self.variable = variable

    def release(self) -> None:  # leaves stay usable for the next backward
        pass


def accumulate_node(tensor) -> AccumulateGrad:
    """The (cached) AccumulateGrad node of a leaf that requires grad."""
    ref = tensor._accumulator
    node = ref() if ref is not None else None
    if node is None:
        node = AccumulateGrad(tensor)
        tensor._accumulator = weakref.ref(node)
    return node


def edge_of(tensor) -> tuple:
    """Where a gradient for ``tensor`` must go: ``(node, output_nr)`` or ``(None, 0)``."""
    if not tensor.requires_grad:
        return (None, 0)
    if tensor.grad_fn is not None:
        return (tensor.grad_fn, tensor._output_nr)
    return (accumulate_node(tensor), 0)


class _InertContext:
    """The ``ctx`` a forward sees when nothing is recorded: saves nothing, lives for the call."""

    __slots__ = ("needs_input_grad", "__dict__")

    def __init__(self, n: int) -> None:
        self.needs_input_grad = (False,) * n

    def save_for_backward(self, *arrays) -> None:
        pass


_tracer = None


def set_tracer(tracer) -> object:
    """Install ``tracer`` (an object with ``record(function, args, kwargs, results)`` and
    ``rebind(tensor, result)``) and return the previous one. The ONNX exporter uses it to see
    every primitive a forward runs, and every tensor an in-place op gives a new value."""
    global _tracer
    previous, _tracer = _tracer, tracer
    return previous


def is_tracing() -> bool:
    """True while a tracer is installed: in-place fast paths must then go through ``apply``."""
    return _tracer is not None


def trace_inplace(tensor, result) -> None:
    """Tell the tracer that ``tensor`` now holds ``result``'s values (an in-place op)."""
    if _tracer is not None:
        _tracer.rebind(tensor, result)


class Function:
    """Base of every primitive op. Subclasses set ``name`` (PyTorch's grad_fn class name)."""

    name: str | None = None
    differentiable_outputs: bool = True
    _node_class: type[BackwardNode]

    def __init_subclass__(cls, **kwargs) -> None:
        super().__init_subclass__(**kwargs)
        node_name = cls.__dict__.get("name") or f"{cls.__name__}Backward0"
        cls._node_class = type(node_name, (BackwardNode,), {"__slots__": (), "function": cls})

    @staticmethod
    def forward(ctx, *args, **kwargs):
        raise NotImplementedError

    @staticmethod
    def backward(ctx, *grads):
        raise NotImplementedError

    @classmethod
    def apply(cls, *args, **kwargs):
        # the hot path of every op: one pass over the arguments, no per-call import
        tensor = _Tensor or _tensor_class()
        arrays, needs, record = [], [], False
        for a in args:
            if isinstance(a, tensor):
                arrays.append(a._data)
                needs.append(a._requires_grad)
                record = record or a._requires_grad
            else:
                arrays.append(a)
                needs.append(False)
        record = record and engine._mode.enabled
        if record:
            ctx = cls._node_class()
            ctx.needs_input_grad = tuple(needs)
        else:
            ctx = _InertContext(len(args))
        with np.errstate(all="ignore"):  # 1/0 is inf and 0/0 nan, silently, as in PyTorch
            out = cls.forward(ctx, *arrays, **kwargs)
        multi = type(out) is tuple
        # numpy turns 0-d results into scalars (np.float64); a tensor always holds an ndarray
        outs = tuple(
            o if isinstance(o, np.ndarray) else np.asarray(o) for o in (out if multi else (out,))
        )
        results = tuple(tensor._from_array(o) for o in outs)
        if _tracer is not None:
            _tracer.record(cls, args, kwargs, results)
        if record:
            ctx.next_functions = tuple(
                edge_of(a) if isinstance(a, tensor) else (None, 0) for a in args
            )
            ctx._input_meta = tuple(
                (a._data.shape, a._data.dtype) if isinstance(a, tensor) else None for a in args
            )
            ctx._output_meta = tuple((o.shape, o.dtype) for o in outs)
            if ctx._saved:
                ctx._saved_versions = _saved_versions(ctx._saved, args, arrays, results, outs)
            if cls.differentiable_outputs:
                for nr, r in enumerate(results):
                    if r._data.dtype.kind in "fc":
                        r.grad_fn = ctx
                        r._requires_grad = True
                        r._output_nr = nr
        return results if multi else results[0]


_Tensor = None  # finetune.tensor.Tensor, bound on first use (tensor.py imports this module)


def _tensor_class() -> type:
    global _Tensor
    from ..tensor import Tensor

    _Tensor = Tensor
    return Tensor


def _saved_versions(saved, args, arrays, results, outs) -> tuple:
    """Version stamps of the tensors whose arrays forward saved, to catch later in-place changes.

    Only the shared version counter is kept, never the tensor, so no reference cycle is made.
    """
    stamps = []
    for s in saved:
        if not isinstance(s, np.ndarray):
            continue
        for tensor, arr in zip((*args, *results), (*arrays, *outs)):
            if arr is s and not isinstance(tensor, np.ndarray):  # a raw array has no version
                stamps.append((tensor._version, tensor._version.value, s))
                break
    return tuple(stamps)


class NoGradient(Function):
    """Marks a value computed by an op without a gradient (ONNX's ArgMax, NonZero, comparisons):
    ``apply(value, *sources, op=...)`` passes ``value`` through, and a backward that reaches it
    raises instead of sending a silent zero to ``sources``."""

    @staticmethod
    def forward(ctx, value, *sources, op):
        ctx.op = op
        return value

    @staticmethod
    def backward(ctx, grad):
        raise AutogradError(
            f"{ctx.op} has no gradient: its output cannot be differentiated with respect to its "
            "inputs; detach() the value or keep it out of the loss"
        )
