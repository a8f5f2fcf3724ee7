"""The inference plan of an imported graph: its walk with the work that cannot matter taken out.

``OnnxModule.forward`` runs the plan instead of the node-by-node walk only where the two agree
beyond float rounding: the model in eval mode, nothing needing a gradient (grad disabled, or no
parameter and no input requiring one), the exporter not tracing (export always sees the whole
graph, BatchNorms included, with a symbolic batch). In the plan:

- ``Identity`` and eval ``Dropout`` steps disappear: their outputs are their inputs.
- Values that depend only on constants and on input *shapes* (``Constant`` nodes, PyTorch
  exporters' ``Shape -> Gather -> Unsqueeze -> Concat -> Reshape`` chains, Swin's window
  arithmetic) are computed on the first call for each input signature (shapes and dtypes) and
  kept for the last few signatures, so later calls skip those nodes. Which values qualify is
  decided from the op types: ``SHAPE_FROM_SHAPES`` and ``SHAPE_FROM_VALUES`` say whose output
  shape follows from what, and anything else (NonZero, Loop, a module) ends the chain.
- A ``BatchNormalization`` module that alone reads a ``Conv`` module's output is folded into the
  convolution (``nn.fusion.conv_bn``, which caches the folded weights by tensor version).
- The legacy exporter's GELU (``Div sqrt2 -> Erf -> Add 1 -> Mul x -> Mul 0.5``) runs as one
  ``F.gelu``, ``Sigmoid(x) * x`` as ``F.silu``, ``HardSigmoid(x) * x`` as ``F.hardswish``:
  matched by structure and constant values.
- A ReLU, a Clip with constant bounds, a HardSwish, a SiLU, a Sigmoid or a HardSigmoid (a
  squeeze-and-excitation gate) that alone reads a 2-d convolution's output (BatchNorm folded in
  or not) runs inside the convolution's last pass over its output (``autograd.conv.epilogue``),
  block by block while each is in cache. A ReLU, clip or hard-swish that alone reads an eval
  BatchNorm's output (one no convolution precedes, as DenseNet's after each concatenation) runs
  on each block of the BatchNorm's pass (``nn.fusion.FrozenBatchNorm``).
- A ``Mul`` whose product only a convolution reads (squeeze-and-excitation's gate before a
  projection) joins it: when the Mul turns out to be a per-sample, per-channel gate of a 1x1
  convolution, the gate scales the convolution's weights instead of the activation
  (``nn.fusion.GatedConvolution``; EfficientNet-B0 0.96-0.97x at batch 1 and 8).
- An ``Add`` of a 2-d convolution's output and another value of the same shape (a skip
  connection), and the activation that alone reads the sum, run in the convolution's last pass
  too (``nn.fusion.ResidualConvolution``): ResNet's blocks, the inverted residuals of
  MobileNetV2, MNASNet and EfficientNet.
- Each 2-d convolution (its BatchNorm folded in and its activation riding along, if any) runs
  straight on the kernels (``nn.fusion.FrozenConvolution``) while nothing needs a gradient: no
  module call, functional checks or graph machinery around a small product (MNASNet 0.5 at
  batch 1: 12.2 -> 10.3 ms a forward, interleaved in one process).
- A two-group channel shuffle (ShuffleNetV2's ``Concat -> Reshape -> Transpose -> Reshape``,
  and the two ``Slice`` nodes taking its halves) is one pass interleaving the two inputs'
  channels (``shuffle.ChannelShuffle``) on later calls of an input signature: ShuffleNetV2 x0.5
  0.77-0.82x at batch 1, 0.84-0.90x at batch 8.
- Modules are looked up once; values live in a list indexed by position, not a dict by name.

The plan keeps the modules it found: every call checks that each still sits where it was found
(so ``model.fc = ...`` is seen) and that the constants it read are the same tensors at the same
version; otherwise it is rebuilt. A module the plan calls runs its hooks as usual; one it folds
away (a Dropout, a fused BatchNorm) with a hook makes the plan step aside.
"""

from __future__ import annotations

import functools
import inspect
import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from ..autograd import jit, nn_ops, piecewise
from ..autograd.conv import epilogue
from ..autograd.elementwise import sigmoid_into
from ..autograd.engine import is_grad_enabled
from ..autograd.function import is_tracing
from ..errors import FinetuneError, OnnxImportError
from ..nn import functional as F
from ..nn.fusion import (
    FrozenBatchNorm,
    FrozenConvolution,
    GatedConvolution,
    ResidualConvolution,
    conv_bn,
    foldable,
)
from ..nn.layers.batchnorm import BatchNorm2d
from ..nn.layers.conv import Conv2d
from ..nn.layers.dropout import Dropout
from ..tensor import Tensor
from .registry import call_module
from .shuffle import ChannelShuffle

# ops whose outputs' shapes follow from their inputs' shapes (and attributes) alone
SHAPE_FROM_SHAPES = frozenset(
    {
        *("Abs", "Acos", "Acosh", "Asin", "Asinh", "Atan", "Atanh", "Ceil", "Cos", "Cosh"),
        *("Elu", "Erf", "Exp", "Floor", "Gelu", "HardSigmoid", "HardSwish", "Identity"),
        *("IsInf", "IsNaN", "LeakyRelu", "Log", "Mish", "Neg", "Not", "Reciprocal", "Relu"),
        *("Round", "Selu", "Shrink", "Sigmoid", "Sign", "Sin", "Sinh", "Softplus", "Softsign"),
        *("Sqrt", "Tan", "Tanh", "ThresholdedRelu", "Celu", "BitwiseNot", "Cast", "CastLike"),
        *("Clip", "Swish", "Hardmax", "Softmax", "LogSoftmax", "LpNormalization", "CumSum"),
        *("CumProd", "Trilu", "Dropout", "MeanVarianceNormalization", "LRN"),
        *("Add", "Sub", "Mul", "Div", "Pow", "Mod", "Max", "Min", "Mean", "Sum", "Equal"),
        *("Greater", "GreaterOrEqual", "Less", "LessOrEqual", "And", "Or", "Xor", "Where"),
        *("PRelu", "BitShift", "BitwiseAnd", "BitwiseOr", "BitwiseXor"),
        *("Transpose", "Flatten", "Concat", "MatMul", "MatMul+Add", "Gemm", "Einsum", "Conv"),
        *("ConvTranspose", "MaxPool", "AveragePool", "LpPool", "GlobalAveragePool"),
        *("GlobalMaxPool", "GlobalLpPool", "BatchNormalization", "LayerNormalization"),
        *("InstanceNormalization", "GroupNormalization", "RMSNormalization", "DepthToSpace"),
        *("SpaceToDepth", "Gather", "GatherElements", "GatherND", "ScatterND", "Scatter"),
        *("ScatterElements", "Shape", "Size", "ArgMax", "ArgMin", "EyeLike"),
    }
)
# ops whose outputs' shapes also follow from the values of these inputs
SHAPE_FROM_VALUES = {
    "Reshape": {1},
    "Expand": {1},
    "Slice": {1, 2, 3, 4},
    "Tile": {1},
    "Pad": {1, 3},
    "ConstantOfShape": {0},
    "Range": {0, 1, 2},
    "Squeeze": {1},
    "Unsqueeze": {1},
    "Split": {1},
    "TopK": {1},
    "Resize": {1, 2, 3},
    "Upsample": {1},
    "OneHot": {1},
    "CenterCropPad": {1, 2},
    **{
        f"Reduce{kind}": {1}
        for kind in ("L1", "L2", "LogSum", "LogSumExp", "Max", "Mean", "Min", "Prod", "Sum")
    },
    "ReduceSumSquare": {1},
}
# never computed ahead: random draws, and values (sequences, optionals) an op may change in place
NOT_FOLDED = frozenset(
    {
        *("RandomNormal", "RandomUniform", "RandomNormalLike", "RandomUniformLike"),
        *("Bernoulli", "Multinomial", "Dropout", "SequenceConstruct", "SequenceEmpty"),
        *("SequenceErase", "SequenceInsert", "SplitToSequence", "SequenceMap", "Optional"),
    }
)
# the units fusion makes (shape from shapes, as the chains they replace)
_FUSED = frozenset({"Conv+BatchNormalization", "Gelu(fused)", "Silu(fused)", "HardSwish(fused)"})
_CONVOLUTIONS = ("Conv", "Conv+BatchNormalization")  # what an activation can ride in
_CACHED_SIGNATURES = 8  # input signatures whose folded values are kept (the oldest leaves)
_EMPTY, _DISCARD = 0, 1  # slots: an omitted input (always None), an output nobody reads


@dataclass(slots=True)
class _Unit:
    """One call of the plan: ``run(*inputs)`` on values named ``inputs``, giving ``outputs``;
    ``step`` is the node it stands for in error messages."""

    run: Callable
    inputs: tuple[str, ...]
    outputs: tuple[str, ...]
    step: object
    op_type: str
    module: object = None
    static: bool = False
    folded_modules: tuple = ()
    # (Conv2d, BatchNorm2d or None, epilogue or None, the node's padding first or None) when the
    # unit is their composition: it may then run as a ``FrozenConvolution``
    layers: tuple | None = None
    # (BatchNorm2d, piecewise.Activation or None) when the unit is their composition: it may
    # then run as a ``FrozenBatchNorm``
    normalization: tuple | None = None


class _ConvThenBatchNorm:
    """Stands in for a Conv step's module: the node's call (its padding included) reaches
    ``conv_bn``, which folds the BatchNorm into the convolution when that is exact."""

    __slots__ = ("conv", "bn")

    def __init__(self, conv, bn) -> None:
        self.conv, self.bn = conv, bn

    def __call__(self, x):
        return conv_bn(self.conv, self.bn, x)


def _conv_then_batch_norm(conv_run, conv, bn, x):
    return conv_run(_ConvThenBatchNorm(conv, bn), x)


class Plan:
    """The plan of one ``OnnxModule``'s walk (see the module docstring). ``build`` makes it,
    or returns None when the graph has no plan (a subgraph, non-tensor inputs, a step reading a
    value nobody produced: the exact walk reports those)."""

    def __init__(self) -> None:
        self._edges: dict = {}  # (id of a module's children, name) -> (children, name, child)
        self._watched: list[tuple[str, Tensor, int, np.ndarray]] = []
        self._skipped_modules: list = []
        self._cache: dict = {}  # input signature -> [(slot, folded value)]
        self._alias: dict[str, str] = {}  # an Identity's or eval Dropout's output -> its input
        self._outputs: tuple[str, ...] = ()

    # -- building ------------------------------------------------------------------------------
    @classmethod
    def build(cls, owner) -> Plan | None:
        if owner._outer or any(spec.kind != "tensor" for spec in owner._graph_inputs):
            return None
        plan = cls()
        try:
            units = plan._units(owner)
        except _NoPlan:
            return None
        units = plan._fuse(owner, units)
        units = plan._fuse_gates(units)
        units = plan._fuse_residuals(owner, units)
        units = plan._fuse_epilogues(owner, units)
        for unit in units:
            if unit.layers is not None:
                conv, bn, tail, pads_first = unit.layers
                unit.run = FrozenConvolution(conv, bn, tail, unit.run, pads_first)
            elif unit.normalization is not None:
                unit.run = FrozenBatchNorm(*unit.normalization, unit.run)
        plan._mark_static(owner, units)
        plan._compile(owner, units, plan._fuse_shuffles(units))
        plan._edges = list(plan._edges.values())
        return plan

    def _bind(self, owner, path: str):
        module = owner
        for part in path.split("."):
            child = module._modules.get(part) if hasattr(module, "_modules") else None
            if child is None:
                raise _NoPlan
            self._edges[id(module._modules), part] = (module._modules, part, child)
            module = child
        return module

    def _units(self, owner) -> list[_Unit]:
        """The steps with Identity and eval Dropout made aliases, modules looked up."""
        known = {spec.name for spec in owner._graph_inputs} | set(owner._constants)
        units = []
        for step in owner._steps:
            names = tuple(self._alias.get(n, n) for n in step.inputs)
            if any(n and n not in known for n in names):
                raise _NoPlan
            module = self._bind(owner, step.module) if step.module is not None else None
            if len(step.outputs) == 1 and step.outputs[0] and names and names[0]:
                if step.op_type == "Identity" and module is None and len(names) == 1:
                    self._alias[step.outputs[0]] = names[0]
                    continue
                if type(module) is Dropout and len(names) == 1:
                    self._alias[step.outputs[0]] = names[0]
                    self._skipped_modules.append(module)
                    continue
            known.update(n for n in step.outputs if n)
            run = functools.partial(step.run, module) if module is not None else step.run
            unit = _Unit(run, names, step.outputs, step, step.op_type, module)
            if step.op_type == "Conv" and type(module) is Conv2d:
                if step.run is call_module or hasattr(step.run, "pairs"):
                    unit.layers = (module, None, None, getattr(step.run, "pairs", None))
            if type(module) is BatchNorm2d and step.run is call_module and len(names) == 1:
                unit.normalization = (module, None)
            units.append(unit)
        self._outputs = tuple(self._alias.get(n, n) for n in owner._graph_outputs)
        return units

    def _constant(self, owner, units_by_output: dict, name: str) -> np.ndarray | None:
        """The value of ``name`` when it is a constant of the graph (watched from now on)."""
        if name in owner._constants:
            attribute = owner._constants[name]
            tensor = getattr(owner, attribute)
            if not isinstance(tensor, Tensor):
                return None
            self._watch(attribute, tensor)
            return tensor._data
        unit = units_by_output.get(name)
        if unit is None or unit.op_type != "Constant" or unit.inputs:
            return None
        try:
            value = unit.run()
        except NODE_ERRORS:  # the walk reports it, naming the node
            return None
        return value._data if isinstance(value, Tensor) else None

    def _watch(self, attribute: str, tensor: Tensor) -> None:
        if any(attribute == seen[0] for seen in self._watched):
            return
        self._watched.append((attribute, tensor, tensor._version.value, tensor._data))

    def _fuse(self, owner, units: list[_Unit]) -> list[_Unit]:
        """Conv + BatchNorm, GELU, SiLU and HardSwish chains, each become one unit."""
        produced, only_reader = _links(units, self._outputs)

        def scalar(name: str, want: float, tolerance: float = 0.0) -> bool:
            value = self._constant(owner, produced, name)
            return (
                value is not None
                and value.ndim == 0
                and value.dtype.kind == "f"
                and abs(float(value) - want) <= tolerance
            )

        removed: set[int] = set()
        tails: dict[int, _Unit] = {}
        for unit in units:
            if id(unit) in removed or len(unit.outputs) != 1:
                continue
            chain = None
            if unit.op_type == "BatchNormalization" and type(unit.module) is BatchNorm2d:
                chain = _conv_batch_norm(unit, produced, only_reader)
            elif _functional(unit, "Erf"):
                chain = _gelu(unit, produced, only_reader, scalar)
            elif unit.op_type in ("Sigmoid", "HardSigmoid") and unit.module is None:
                chain = _gated(unit, only_reader)
            if chain is None or any(id(u) in removed for u in chain[0]):
                continue
            gone, fused = chain
            removed.update(id(u) for u in gone)
            tails[id(gone[-1])] = fused  # in the place of the chain's last node
            self._skipped_modules.extend(fused.folded_modules)
        return [tails.get(id(u), u) for u in units if id(u) in tails or id(u) not in removed]

    def _fuse_gates(self, units: list[_Unit]) -> list[_Unit]:
        """Each ``Mul`` whose product only a convolution module reads (no activation riding on
        it, no padding of the node's own) joins it: ``nn.fusion.GatedConvolution``, which
        decides on each call whether the Mul is a gate it can fold into a 1x1's weights."""
        produced, only_reader = _links(units, self._outputs)
        joined: dict[int, _Unit] = {}  # the convolution's id: the unit in its place
        for mul in units:
            if not _functional(mul, "Mul") or len(mul.inputs) != 2 or len(mul.outputs) != 1:
                continue
            conv = only_reader(mul.outputs[0])
            if (
                conv is None
                or conv.layers is None
                or conv.inputs != mul.outputs
                or conv.layers[2] is not None
                or conv.layers[3] is not None
            ):
                continue
            layer, bn = conv.layers[:2]
            frozen = FrozenConvolution(layer, bn, None, conv.run)
            run = GatedConvolution(frozen, mul.run)
            fused = _Unit(run, mul.inputs, conv.outputs, conv.step, f"Mul+{conv.op_type}")
            fused.folded_modules = conv.folded_modules
            joined[id(conv)] = fused
        gone = {id(produced[u.inputs[0]]) for u in units if id(u) in joined}
        return [joined.get(id(u), u) for u in units if id(u) not in gone]

    def _fuse_residuals(self, owner, units: list[_Unit]) -> list[_Unit]:
        """Each ``Add`` of a convolution's or a gated projection's output (which nothing else
        reads, no activation riding on it) and another value, with the activation that alone
        reads the sum if there is one, becomes one unit in the place of the last:
        ``nn.fusion.ResidualConvolution``."""
        produced, only_reader = _links(units, self._outputs)

        def constant(name: str) -> np.ndarray | None:
            return self._constant(owner, produced, name)

        joined: dict[int, _Unit] = {}  # the chain's last unit's id: the unit in its place
        gone: set[int] = set()
        for add in units:
            if not _functional(add, "Add") or len(add.inputs) != 2 or len(add.outputs) != 1:
                continue
            for side in (0, 1):
                conv = produced.get(add.inputs[side])
                skip = add.inputs[1 - side]
                if (
                    conv is not None
                    and (
                        (conv.layers is not None and conv.layers[2] is None)
                        or isinstance(conv.run, GatedConvolution)
                    )
                    and id(conv) not in gone
                    and skip
                    and skip != add.inputs[side]
                    and only_reader(conv.outputs[0]) is add
                ):
                    break
            else:
                continue
            act = only_reader(add.outputs[0])
            tail = None if act is None else _activation_tail(act, constant)
            if tail is None:
                act = None
            if conv.layers is None:  # a gated projection
                inner = conv.run
                layer, bn = inner.frozen.conv, inner.frozen.bn
            else:
                layer, bn, _, pads_first = conv.layers
                inner = FrozenConvolution(layer, bn, None, conv.run, pads_first)
            arity = len(conv.inputs)
            run = ResidualConvolution(inner, arity, tail, add.run, act and act.run, side == 1)
            last = act or add
            names = (*conv.inputs, skip, *(act.inputs[1:] if act else ()))
            op = "+".join((conv.op_type, "Add", *((act.op_type,) if act else ())))
            fused = _Unit(run, names, last.outputs, conv.step, op, conv.module)
            fused.folded_modules = (layer, *((bn,) if bn is not None else ()))
            self._skipped_modules.extend(fused.folded_modules)
            joined[id(last)] = fused
            gone.update((id(conv), id(add)))
        return [joined.get(id(u), u) for u in units if id(u) in joined or id(u) not in gone]

    def _fuse_epilogues(self, owner, units: list[_Unit]) -> list[_Unit]:
        """Each activation that alone reads a convolution's output joins it (``_with_epilogue``)."""
        produced, only_reader = _links(units, self._outputs)
        joined: dict[int, _Unit] = {}  # the activation's id: the unit in its place
        for act in units:
            tail = _activation_tail(act, lambda name: self._constant(owner, produced, name))
            conv = produced.get(act.inputs[0]) if tail is not None else None
            if (
                conv is not None
                and conv.normalization is not None
                and isinstance(tail, piecewise.Activation)
                and only_reader(conv.outputs[0]) is act
            ):
                joined[id(act)] = _normalization_then(conv, act, tail)
                continue
            if (
                conv is None
                or conv.op_type not in _CONVOLUTIONS
                or len(conv.inputs) != 1
                or only_reader(conv.outputs[0]) is not act
                or not isinstance(conv.module, (Conv2d, BatchNorm2d))
            ):
                continue
            fused = _with_epilogue(conv, act, tail)
            joined[id(act)] = fused
            self._skipped_modules.extend(fused.folded_modules)
        gone = {id(produced[u.inputs[0]]) for u in units if id(u) in joined}
        return [joined.get(id(u), u) for u in units if id(u) not in gone]

    def _fuse_shuffles(self, units: list[_Unit]) -> list[_Unit]:
        """The units of the fast program: each two-group channel shuffle (``Concat -> Reshape
        -> Transpose (0, 2, 1, 3, 4) -> Reshape``, with the two ``Slice`` nodes taking its
        halves if they alone read it) one ``shuffle.ChannelShuffle`` in the place of its last
        node. Only for the fast program: the first call for an input signature runs the nodes,
        as the static ones (the reshapes' ``Shape`` chains) read the Concat's value."""
        readers: dict[str, list[_Unit]] = {}
        for unit in units:
            if not unit.static:
                for name in unit.inputs:
                    readers.setdefault(name, []).append(unit)
        outputs = set(self._outputs)

        def next_node(unit: _Unit, op_type: str) -> _Unit | None:
            """The one dynamic unit reading ``unit``'s output, when it is an ``op_type`` node
            taking it as its first input (and it is no graph output)."""
            found = readers.get(unit.outputs[0], [])
            if len(found) != 1 or unit.outputs[0] in outputs or not _functional(found[0], op_type):
                return None
            return found[0] if found[0].inputs[0] == unit.outputs[0] else None

        fused: dict[int, _Unit] = {}  # the chain's last unit's id: the unit in its place
        gone: set[int] = set()
        for cat in units:
            if not _functional(cat, "Concat") or len(cat.inputs) != 2 or not all(cat.inputs):
                continue
            if cat.static or _attributes(cat, "axis") != (1,):
                continue
            first = next_node(cat, "Reshape")
            turn = first and next_node(first, "Transpose")
            second = turn and next_node(turn, "Reshape")
            if second is None or list(_attributes(turn, "perm")[0] or ()) != [0, 2, 1, 3, 4]:
                continue
            allowzero = [_attributes(r, "allowzero") if "allowzero" in _parameters(r) else None
                         for r in (first, second)]  # fmt: skip
            if None in allowzero or len(first.inputs) != 2 or len(second.inputs) != 2:
                continue
            shuffled = second.outputs[0]
            slices = readers.get(shuffled, [])
            halves = (
                shuffled not in outputs
                and len(slices) == 2
                and all(_functional(u, "Slice") and u.inputs[0] == shuffled for u in slices)
                and all("steps" in _parameters(u) for u in slices)  # inputs, not attributes
            )
            chain = [cat, first, turn, second, *(slices if halves else ())]
            tail = slices if halves else []
            run = ChannelShuffle(
                [u.run for u in chain],
                halves,
                tuple(len(u.inputs) - 1 for u in tail),
                tuple(a[0] for a in allowzero),
            )
            names = (*cat.inputs, first.inputs[1], second.inputs[1],
                     *(n for u in tail for n in u.inputs[1:]))  # fmt: skip
            last = max(chain, key=units.index)
            outs = tuple(u.outputs[0] for u in tail) if halves else second.outputs
            fused[id(last)] = _Unit(run, names, outs, second.step, "ChannelShuffle")
            gone.update(id(u) for u in chain)
        return [fused.get(id(u), u) for u in units if id(u) in fused or id(u) not in gone]

    def _mark_static(self, owner, units: list[_Unit]) -> None:
        """Which units compute values from constants and input shapes only."""
        values = set(owner._constants)
        shapes = {spec.name for spec in owner._graph_inputs} | values
        for unit in units:
            names = [n for n in unit.inputs if n]
            op = unit.op_type
            if unit.module is None and op not in NOT_FOLDED and op != "Identity":
                if all(n in values for n in names) or (
                    op in ("Shape", "Size") and names and names[0] in shapes
                ):
                    unit.static = True
                    values.update(n for n in unit.outputs if n)
                    shapes.update(n for n in unit.outputs if n)
                    continue
            if op in SHAPE_FROM_SHAPES or op in _FUSED or op.startswith(_CONVOLUTIONS):
                follows = all(n in shapes for n in names)
            elif op in SHAPE_FROM_VALUES:
                by_value = SHAPE_FROM_VALUES[op]
                follows = all(
                    (n in values) if i in by_value else (n in shapes)
                    for i, n in enumerate(unit.inputs)
                    if n
                )
            else:
                follows = False
            if follows:
                shapes.update(n for n in unit.outputs if n)
        for unit in units:
            if unit.static:
                for name in unit.inputs:
                    if name in owner._constants:
                        tensor = getattr(owner, owner._constants[name])
                        if isinstance(tensor, Tensor):
                            self._watch(owner._constants[name], tensor)

    def _compile(self, owner, units: list[_Unit], fast: list[_Unit]) -> None:
        """The programs: ``units`` for a new input signature's first call (recording the static
        values), the dynamic ones of ``fast`` (``units`` with more fused) for later calls."""
        slots: dict[str, int] = {}

        def slot(name: str) -> int:
            if not name:
                return _EMPTY
            if name not in slots:
                slots[name] = len(slots) + 2
            return slots[name]

        self._inputs = tuple(slot(spec.name) for spec in owner._graph_inputs)
        self._constants = tuple((slot(n), a) for n, a in owner._constants.items())
        outputs = set(self._outputs)
        dynamic = [u for u in fast if not u.static]
        needed = {n for u in dynamic for n in u.inputs if n} | outputs
        self._static_outputs = {
            slot(n) for u in units if u.static for n in u.outputs if n in outputs
        }
        self._full = _program(units, slot, outputs, needed)
        self._fast = _program(dynamic, slot, outputs, set())
        self._output_slots = tuple(slot(n) for n in self._outputs)
        self._size = len(slots) + 2

    # -- running -------------------------------------------------------------------------------
    def current(self, owner) -> bool:
        """Whether the modules and constants the plan was built on are still the model's."""
        for registry, key, child in self._edges:
            if registry.get(key) is not child:
                return False
        for attribute, tensor, version, data in self._watched:
            now = getattr(owner, attribute, None)
            if now is not tensor or tensor._version.value != version or tensor._data is not data:
                return False
        return True

    def usable(self, owner, inputs: tuple) -> bool:
        """Whether the plan's result is the exact walk's for these inputs: the model in eval
        mode (``model.train()`` reaches every layer), and so each module the plan folds away,
        with no hooks; not tracing; no input needing a gradient, nor a constant the folded
        values were computed from. A frozen backbone under a trainable head runs planned: a
        fused unit whose inputs need a gradient runs the nodes it stands for (``conv_bn``
        checks the same for its layers), and the modules the plan calls run as in the walk,
        whatever their mode and hooks."""
        if is_tracing() or owner.training:
            return False
        for module in self._skipped_modules:
            if module.training or module._forward_hooks or module._forward_pre_hooks:
                return False
        for x in inputs:
            if not isinstance(x, Tensor):
                return False
        if is_grad_enabled():
            if any(x.requires_grad for x in inputs) or self.folds_trainable():
                return False
        return True

    def folds_trainable(self) -> bool:
        """Whether a constant that folded values were computed from requires a gradient."""
        return any(tensor.requires_grad for _, tensor, _, _ in self._watched)

    def run(self, owner, inputs: tuple) -> tuple:
        if not is_grad_enabled():
            jit.load()  # inference: the compiled passes around the products (see there)
        key = tuple((x._data.shape, x._data.dtype) for x in inputs)
        folded = self._cache.get(key)
        slots = [None] * self._size
        for index, attribute in self._constants:
            slots[index] = getattr(owner, attribute)
        for index, x in zip(self._inputs, inputs):
            slots[index] = x
        if folded is None:
            folded = []
            _execute(self._full, slots, owner.source, folded)
            if len(self._cache) >= _CACHED_SIGNATURES:
                self._cache.pop(next(iter(self._cache)), None)  # the oldest
            self._cache[key] = folded
        else:
            for index, value in folded:
                slots[index] = value
            _execute(self._fast, slots, owner.source, None)
        results = []
        for index in self._output_slots:
            value = slots[index]
            if index in self._static_outputs and isinstance(value, Tensor):
                value = Tensor._from_array(np.array(value._data))  # the cached copy stays ours
            results.append(value)
        return tuple(results)


def last_uses(steps, keep) -> dict[int, tuple[str, ...]]:
    """For each of ``steps`` (anything with ``inputs``, names; "" for none), the values no
    later step reads, except those in ``keep``: what a walk can free after that step."""
    last: dict[str, int] = {}
    for index, step in enumerate(steps):
        for name in step.inputs:
            if name:
                last[name] = index
    by_step: dict[int, list[str]] = {}
    for name, index in last.items():
        if name not in keep:
            by_step.setdefault(index, []).append(name)
    return {index: tuple(names) for index, names in by_step.items()}


def _program(units: list[_Unit], slot, outputs: set, record: set) -> tuple:
    """``units`` as ``(run, input slots, output slots, slots to free after, slots to record,
    unit)`` tuples: a value's slot is emptied after its last reader (graph outputs are kept);
    a static unit's outputs named in ``record`` are kept for the input signature."""
    frees = {
        index: [slot(name) for name in names] for index, names in last_uses(units, outputs).items()
    }
    program = []
    for index, unit in enumerate(units):
        ins = tuple(slot(n) for n in unit.inputs)
        outs = tuple(slot(n) if n else _DISCARD for n in unit.outputs)
        kept = tuple(slot(n) for n in unit.outputs if unit.static and n in record)
        program.append((unit.run, ins, outs, tuple(frees.get(index, ())), kept, unit))
    return tuple(program)


def _execute(program: tuple, slots: list, source: str, record: list | None) -> None:
    """Run ``program`` on ``slots``; with ``record``, append the static values to keep."""
    index = 0
    try:
        for index, (run, ins, outs, free, kept, _) in enumerate(program):  # noqa: B007
            out = run(*[slots[i] for i in ins])
            if type(out) is tuple:
                for i, value in zip(outs, out):
                    slots[i] = value
            else:
                slots[outs[0]] = out
            if kept and record is not None:
                record.extend((i, slots[i]) for i in kept)
            for i in free:
                slots[i] = None
    except NODE_ERRORS as error:
        if isinstance(error, OnnxImportError):
            raise
        _, ins, _, _, _, unit = program[index]
        raise node_failed(source, unit.step, [slots[i] for i in ins], error) from error


# the errors a node's run may raise on bad input: reported as an OnnxImportError naming the node
NODE_ERRORS = (FinetuneError, ValueError, IndexError, TypeError, AttributeError, MemoryError)


def node_failed(source: str, step, args: list, error: Exception) -> OnnxImportError:
    """The error for a node that failed on its inputs: the node, its inputs and their shapes."""
    shapes = [_describe(a) for a in args]
    return OnnxImportError(
        f"{source}: node {step.node!r} ({step.op_type}) failed on inputs {list(step.inputs)} "
        f"of shapes {shapes}: {error}"
    )


def _describe(value):
    """A value's shape for an error message: a list of shapes for a sequence, None if empty."""
    if isinstance(value, Tensor):
        return list(value.shape)
    if isinstance(value, list):
        return [_describe(v) for v in value]
    return value


def _links(units: list[_Unit], outputs) -> tuple[dict, Callable]:
    """The unit producing each value, and ``only_reader(name)``: the one unit reading a value
    that is not a graph output (None if several, or none, read it)."""
    produced = {n: u for u in units for n in u.outputs if n}
    readers: dict[str, list[_Unit]] = {}
    for unit in units:
        for name in unit.inputs:
            if name:
                readers.setdefault(name, []).append(unit)
    outputs = set(outputs)

    def only_reader(name: str) -> _Unit | None:
        found = readers.get(name, ())
        return found[0] if len(found) == 1 and name not in outputs else None

    return produced, only_reader


class _NoPlan(Exception):
    """The graph gets no plan (the exact walk runs, and reports what is wrong)."""


def _conv_batch_norm(bn: _Unit, produced: dict, only_reader):
    """A Conv2d module whose output only this BatchNorm2d reads: one unit, the convolution's
    call (its padding included) with the BatchNorm folded in."""
    conv = produced.get(bn.inputs[0])
    if (
        conv is None
        or conv.op_type != "Conv"
        or type(conv.module) is not Conv2d
        or len(conv.inputs) != 1
        or only_reader(conv.outputs[0]) is not bn
    ):
        return None
    run = functools.partial(_conv_then_batch_norm, conv.step.run, conv.module, bn.module)
    fused = _Unit(run, conv.inputs, bn.outputs, conv.step, "Conv+BatchNormalization", bn.module)
    fused.folded_modules = (conv.module, bn.module)
    if conv.layers is not None:
        fused.layers = (conv.module, bn.module, None, conv.layers[3])
    return [conv, bn], fused


def _gelu(erf: _Unit, produced: dict, only_reader, scalar):
    """``0.5 * (x * (1 + erf(x / sqrt(2))))`` in the legacy exporter's node order, either
    operand order at each binary node."""
    div = produced.get(erf.inputs[0])
    if not _functional(div, "Div") or len(div.inputs) != 2:
        return None
    x = div.inputs[0]
    if not scalar(div.inputs[1], math.sqrt(2.0), 1e-6) or only_reader(div.outputs[0]) is not erf:
        return None

    def then(unit: _Unit | None, op: str, other_is: Callable[[str | None], bool]):
        """The one ``op`` node reading ``unit``'s output, if its other input passes."""
        if unit is None:
            return None
        reader = only_reader(unit.outputs[0])
        if not _functional(reader, op):
            return None
        return reader if other_is(_other(reader.inputs, unit.outputs[0])) else None

    add = then(erf, "Add", lambda other: other is not None and scalar(other, 1.0))
    mul = then(add, "Mul", lambda other: other == x)
    half = then(mul, "Mul", lambda other: other is not None and scalar(other, 0.5))
    if half is None:
        return None
    chain = [div, erf, add, mul, half]
    return chain, _fused_unit(chain, F.gelu, x, "Gelu(fused)")


def _gated(gate: _Unit, only_reader):
    """``x * sigmoid(x)`` (SiLU) or ``x * hardsigmoid(x)`` with PyTorch's 1/6 and 1/2
    (HardSwish); the gate must be read by that one Mul only."""
    if len(gate.inputs) != 1 or not gate.inputs[0]:
        return None
    x = gate.inputs[0]
    if gate.op_type == "HardSigmoid":
        alpha, beta = _attributes(gate, "alpha", "beta") or (None, None)
        if alpha is None or abs(alpha - 1.0 / 6.0) > 1e-7 or beta != 0.5:
            return None
    mul = only_reader(gate.outputs[0])
    if not _functional(mul, "Mul") or len(mul.inputs) != 2:
        return None
    if _other(mul.inputs, gate.outputs[0]) != x:
        return None
    if gate.op_type == "Sigmoid":
        return [gate, mul], _fused_unit([gate, mul], F.silu, x, "Silu(fused)")
    return [gate, mul], _fused_unit([gate, mul], F.hardswish, x, "HardSwish(fused)")


def _activation_tail(act: _Unit, constant: Callable) -> Callable | None:
    """``act`` as an in-place function of a block of its input (what ``conv.epilogue`` takes),
    computing what its node computes; None for any other unit."""
    if act.module is not None or not act.inputs or not act.inputs[0] or len(act.outputs) != 1:
        return None
    op = act.op_type
    if op == "Relu":
        return piecewise.relu()
    if op in ("HardSwish", "HardSwish(fused)"):
        return piecewise.hardswish()
    if op == "Silu(fused)":
        return nn_ops.SiluEpilogue()
    if op == "Sigmoid" and len(act.inputs) == 1:  # squeeze-and-excitation's gate
        return nn_ops.Epilogue(sigmoid_into)
    if op == "HardSigmoid" and len(act.inputs) == 1:
        attributes = _attributes(act, "alpha", "beta")
        if attributes is None:
            return None
        alpha, beta = attributes
        return nn_ops.Epilogue(functools.partial(nn_ops.hardsigmoid_into, alpha=alpha, beta=beta))
    if op != "Clip":
        return None
    if len(act.inputs) == 1:  # before opset 11 the bounds are attributes, with defaults
        attributes = _attributes(act, "min", "max")
        if attributes is None:
            return None
        lo, hi = attributes
    else:
        bounds = []
        for name in (*act.inputs[1:3], "")[:2]:
            value = constant(name) if name else None
            if name and (value is None or value.size != 1 or value.dtype.kind != "f"):
                return None  # a bound computed at run time, or one per element
            bounds.append(None if value is None else value.item())
        lo, hi = bounds
    return piecewise.clip(lo, hi)


def _attributes(unit: _Unit, *names: str) -> tuple | None:
    """The node attributes ``names`` of a functional unit (its converter called with the node's
    attributes as keywords), the converter's defaults where the node gave none; None when the
    unit's run is not such a call."""
    if not isinstance(unit.run, functools.partial):
        return None
    defaults = inspect.signature(unit.run.func).parameters
    return tuple(unit.run.keywords.get(name, defaults[name].default) for name in names)


def _with_epilogue(conv: _Unit, act: _Unit, tail: Callable) -> _Unit:
    """One unit for ``act(conv(x))``: the activation as the convolution's epilogue when nothing
    needs a gradient and the convolution is the call's last (a BatchNorm that does not fold runs
    after it); otherwise the two units in turn."""
    bn = conv.module if isinstance(conv.module, BatchNorm2d) else None
    layer = conv.folded_modules[0] if bn is not None else conv.module
    modules = (layer,) if bn is None else (layer, bn)

    def run(x, *others):
        fits = bn is None or foldable(layer, bn, x)
        if fits and is_grad_enabled():  # the parameters as they are now (a user may swap one)
            fits = not x.requires_grad and not any(
                p.requires_grad for m in modules for p in m.parameters()
            )
        if not fits:
            return act.run(conv.run(x), *others)
        with epilogue(tail):
            return conv.run(x)

    names = (*conv.inputs, *act.inputs[1:])
    fused = _Unit(run, names, act.outputs, conv.step, f"{conv.op_type}+{act.op_type}", conv.module)
    fused.folded_modules = (layer, *((bn,) if bn is not None else ()))
    if conv.layers is not None:
        fused.layers = (layer, bn, tail, conv.layers[3])
    return fused


def _normalization_then(bn: _Unit, act: _Unit, tail: piecewise.Activation) -> _Unit:
    """One unit for ``act(bn(x))``, an eval BatchNorm and the activation on each of its
    blocks (``FrozenBatchNorm``, which runs the two nodes in turn where that could differ)."""

    def nodes(x, *others):
        return act.run(bn.run(x), *others)

    names = (*bn.inputs, *act.inputs[1:])
    fused = _Unit(nodes, names, act.outputs, bn.step, f"{bn.op_type}+{act.op_type}", bn.module)
    fused.normalization = (bn.module, tail)
    return fused


def _fused_unit(chain: list[_Unit], fast: Callable, x: str, op_type: str) -> _Unit:
    """One unit computing ``fast(x)`` in place of ``chain`` (elementwise nodes of ``x`` and
    constants); where any of its inputs needs a gradient, the chain's own nodes run instead, so
    gradients are the exact walk's."""
    made = {name for unit in chain for name in unit.outputs}
    reads = [name for unit in chain for name in unit.inputs if name and name not in made]
    names = tuple(dict.fromkeys([x, *reads]))
    result = chain[-1].outputs[0]

    def run(*values):
        if is_grad_enabled() and any(isinstance(v, Tensor) and v.requires_grad for v in values):
            known = dict(zip(names, values))
            for unit in chain:
                known[unit.outputs[0]] = unit.run(*[known[n] for n in unit.inputs])
            return known[result]
        return fast(values[0])

    return _Unit(run, names, chain[-1].outputs, chain[-1].step, op_type)


def _parameters(unit: _Unit) -> tuple[str, ...]:
    """The parameter names of a functional unit's converter (none for any other unit)."""
    if not isinstance(unit.run, functools.partial):
        return ()
    return tuple(inspect.signature(unit.run.func).parameters)


def _functional(unit: _Unit | None, op_type: str) -> bool:
    """Whether ``unit`` is a node of ``op_type`` without a module (a plain function of its
    inputs)."""
    return unit is not None and unit.op_type == op_type and unit.module is None


def _other(pair: tuple[str, ...], name: str) -> str | None:
    """The input of a binary node that is not ``name`` (None unless exactly one is)."""
    if len(pair) != 2:
        return None
    if pair[0] == name and pair[1] != name:
        return pair[1]
    if pair[1] == name and pair[0] != name:
        return pair[0]
    return None
