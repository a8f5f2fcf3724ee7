"""The converter registry: ONNX ``(domain, op_type, since_version)`` → how to run that node.

As in onnx2torch, a model's opset is normalised to the op's ``since_version`` with
``onnx.defs.get_schema(op, max_inclusive_version=opset)``, so one converter serves every opset
until the op's schema changes, and a schema change nobody has converted is refused, not guessed.
As in tinygrad, a converter's Python signature is the ONNX signature: inputs are positional
(``None`` for an omitted optional input), attributes are keyword-only with the spec's defaults.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable
from dataclasses import dataclass

import onnx

from ..errors import OnnxImportError
from ..tensor import Tensor

Key = tuple[str, str, int]


@dataclass(frozen=True)
class Converter:
    """How to run one ONNX op: ``run(*inputs, **attributes)`` on tensors, and optionally
    ``module(node)`` that turns a node with constant weights into a real ``nn.Module`` (or
    returns None to leave the node functional). Keyword-only parameters of ``run`` are the op's
    attributes, except ``_outputs`` (the number of outputs the node asks for)."""

    op_type: str
    since_versions: tuple[int, ...]
    run: Callable
    module: Callable | None = None
    differentiable: bool = True

    def attribute_names(self) -> set[str]:
        return {
            name
            for name, p in _parameters(self.run).items()
            if p.kind is inspect.Parameter.KEYWORD_ONLY and not name.startswith("_")
        }

    def wants_output_count(self) -> bool:
        """Whether ``run`` takes ``_outputs``: how many outputs the node asks for (Split)."""
        return "_outputs" in _parameters(self.run)


@functools.cache
def _parameters(run: Callable):
    """``run``'s parameters, read once per converter (an import asks for every node)."""
    return inspect.signature(run).parameters


_REGISTRY: dict[Key, Converter] = {}


def register(
    op_type: str,
    *since_versions: int,
    domain: str = "",
    module: Callable | None = None,
    differentiable: bool = True,
):
    """Register the decorated function for each schema version it implements; no duplicates.

    ``differentiable=False`` marks an op with no gradient (comparisons, ArgMax, NonZero, integer
    and string ops): a backward that reaches one of its float outputs raises ``AutogradError``
    naming the op, instead of passing a silent zero."""

    def decorate(run: Callable) -> Callable:
        converter = Converter(
            op_type,
            since_versions,
            run if differentiable else _guarded(op_type, run),
            module,
            differentiable,
        )
        for version in since_versions:
            key = (domain, op_type, version)
            if key in _REGISTRY:
                raise ValueError(f"a converter for {key} is already registered")
            _REGISTRY[key] = converter
        return run

    return decorate


def _guarded(op_type: str, run: Callable) -> Callable:
    """``run`` whose float outputs, when an input requires grad, refuse a backward."""
    from ..autograd.function import NoGradient

    @functools.wraps(run)
    def guarded(*inputs, **attributes):
        out = run(*inputs, **attributes)
        sources = [x for x in inputs if isinstance(x, Tensor) and x.requires_grad]
        if not sources:
            return out
        outs = out if isinstance(out, tuple) else (out,)
        outs = tuple(
            NoGradient.apply(o, *sources, op=op_type)
            if isinstance(o, Tensor) and o._data.dtype.kind == "f"
            else o
            for o in outs
        )
        return outs if isinstance(out, tuple) else outs[0]

    return guarded


@functools.cache
def since_version(op_type: str, opset: int, domain: str = "") -> int | None:
    """The ``since_version`` of the schema ``op_type`` has at ``opset`` (None if unknown).
    Cached: an import asks twice per node (Swin-T: 12,474 lookups, 43-56 ms uncached); after
    ``onnx.defs.register_schema``, call ``since_version.cache_clear()``."""
    try:
        return onnx.defs.get_schema(
            op_type, max_inclusive_version=opset, domain=domain
        ).since_version
    except onnx.defs.SchemaError:
        return None


def lookup(op_type: str, opset: int, domain: str = "") -> Converter | None:
    """The converter for ``op_type`` at ``opset``, or None when the library has none."""
    domain = "" if domain == "ai.onnx" else domain
    version = since_version(op_type, opset, domain)
    if version is None:
        return None
    return _REGISTRY.get((domain, op_type, version))


def supported() -> dict[str, tuple[int, ...]]:
    """Each supported default-domain op type → the schema versions it is converted for."""
    _load_converters()
    ops: dict[str, set[int]] = {}
    for domain, op_type, version in _REGISTRY:
        if domain == "":
            ops.setdefault(op_type, set()).add(version)
    return {op: tuple(sorted(v)) for op, v in sorted(ops.items())}


def _load_converters() -> None:
    from . import ops  # noqa: F401 - importing registers every converter


def converter_for(node: onnx.NodeProto, opset: int) -> Converter:
    """The converter for ``node`` (registry loaded on first use); OnnxImportError if missing."""
    _load_converters()
    found = lookup(node.op_type, opset, node.domain)
    if found is None:
        raise OnnxImportError(f"no converter for {node.op_type!r} at opset {opset}")
    return found


@dataclass(frozen=True)
class NodeView:
    """What a module builder sees of a node: its attributes, which inputs are constants, ranks."""

    node: onnx.NodeProto
    opset: int
    attributes: dict
    constants: tuple  # one numpy array (a constant input) or None per node input
    ranks: tuple  # one int (known from shape inference) or None per node input

    def constant(self, i: int):
        return self.constants[i] if i < len(self.constants) else None

    def rank(self, i: int) -> int | None:
        return self.ranks[i] if i < len(self.ranks) else None

    def has_input(self, i: int) -> bool:
        return i < len(self.node.input) and self.node.input[i] != ""


def call_module(module, x):
    """The usual call: the module on the node's first input."""
    return module(x)


@dataclass(frozen=True)
class Built:
    """A node turned into a module: ``call(module, *inputs)`` runs it on the node's inputs listed
    in ``inputs`` (indices); the module's tensors came from the node's other, constant inputs."""

    module: object
    inputs: tuple[int, ...] = (0,)
    call: Callable = call_module
