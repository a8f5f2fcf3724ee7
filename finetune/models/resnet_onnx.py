"""Recognise a ResNet-18 ONNX graph by its structure and load its weights into ``ResNet``.

The graph is walked backwards from its output: the linear head, the global pooling, eight
residual blocks (``Relu(Add(main, shortcut))``), the max pool and the stem. Names never matter,
so the zoo's MXNet export, PyTorch's legacy exporter (BatchNorm folded or kept) and its dynamo
exporter (``ReduceMean`` + ``Reshape`` head, ``Identity`` aliases) all map onto the same tree.

A convolution whose BatchNorm was folded into it (a conv with a bias and no BatchNorm node)
becomes a BatchNorm that adds the bias and changes nothing else: weight 1, bias = the conv's
bias, running_mean 0, running_var = 1 - eps, so that ``sqrt(running_var + eps)`` is exactly 1.
A conv with a bias *and* a BatchNorm moves the bias into the running mean
(``BN(conv(x) + c) = BN'(conv(x))`` with ``running_mean' = running_mean - c``).
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np
import onnx
from onnx import numpy_helper

from ..errors import OnnxImportError
from ..onnx.load import read_model
from ..serialization import SAFETENSORS_SUFFIX
from ..tensor import Tensor
from .resnet import BasicBlock, ResNet, resnet18_from_safetensors

_EPS = 1e-5  # PyTorch's BatchNorm default, used for BatchNorms that were folded away
_STEM = (64, 3, 7, 2, 3)  # out, in, kernel, stride, pad
# (in_channels, out_channels, stride) of the eight BasicBlocks, input to output
_BLOCKS = [(64, 64, 1), (64, 64, 1), (64, 128, 2), (128, 128, 1),
           (128, 256, 2), (256, 256, 1), (256, 512, 2), (512, 512, 1)]  # fmt: skip


# inputs each matched op needs (Add is binary; BatchNormalization takes x, scale, B, mean, var)
_ARITY = {"Conv": 2, "BatchNormalization": 5, "Add": 2, "Gemm": 2, "MatMul": 2, "Reshape": 2}


class _Mismatch(Exception):
    """The graph departs from ResNet-18 here; the message says where."""


@dataclass
class _ConvBN:
    """A convolution and what normalises it, as found in the file."""

    node: str
    weight: np.ndarray
    stride: int
    pad: int
    bias: np.ndarray | None
    bn: tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray] | None  # scale, B, mean, var
    eps: float = _EPS
    momentum: float | None = None  # PyTorch's convention (1 - ONNX's)

    def check(self, where: str, out: int, inp: int, kernel: int, stride: int, pad: int) -> None:
        want = (out, inp, kernel, kernel)
        if self.weight.shape != want or (self.stride, self.pad) != (stride, pad):
            raise _Mismatch(
                f"{where}: Conv {self.node!r} has weight {list(self.weight.shape)}, stride "
                f"{self.stride}, pad {self.pad}; ResNet-18 has {list(want)}, stride {stride}, "
                f"pad {pad}"
            )
        for array in (self.bias, *(self.bn or ())):
            if array is not None and array.shape != (out,):
                raise _Mismatch(f"{where}: per-channel values of {self.node!r} are not ({out},)")

    def state(self, conv: str, bn: str) -> dict[str, np.ndarray]:
        """State-dict entries of the modules named ``conv`` and ``bn`` (see the module doc)."""
        channels = self.weight.shape[0]
        bias = np.zeros(channels, np.float32) if self.bias is None else self.bias
        if self.bn is None:
            scale, shift = np.ones(channels, np.float32), bias
            mean, var = np.zeros(channels, np.float32), np.full(channels, 1 - _EPS, np.float32)
        else:
            scale, shift, mean, var = self.bn
            mean = mean - bias
        return {
            f"{conv}.weight": self.weight,
            f"{bn}.weight": scale,
            f"{bn}.bias": shift,
            f"{bn}.running_mean": mean,
            f"{bn}.running_var": var,
        }


@dataclass
class _Block:
    conv1: _ConvBN
    conv2: _ConvBN
    downsample: _ConvBN | None


def load_resnet18(source: str | os.PathLike | onnx.ModelProto) -> ResNet:
    """A ``ResNet`` holding the weights of the ResNet-18 in ``source``, frozen, in eval mode.

    Raises ``OnnxImportError`` when the graph is not a ResNet-18, pointing to the generic
    importer ``finetune.onnx.load``, which takes any graph. A ``.safetensors`` file of
    torchvision-named weights is read by ``resnet18_from_safetensors`` instead.
    """
    if isinstance(source, (str, os.PathLike)) and os.fspath(source).lower().endswith(
        SAFETENSORS_SUFFIX
    ):
        return resnet18_from_safetensors(source)
    model, _, label = read_model(source)
    try:
        stem, blocks, fc_weight, fc_bias = _Walker(model.graph).resnet18()
    except _Mismatch as why:
        raise OnnxImportError(
            f"{label} is not a ResNet-18 ({why}); import it as a generic graph with "
            f"finetune.onnx.load({label!r}), whose head can be replaced too"
        ) from None
    found = [("conv1", "bn1", stem)]
    for index, block in enumerate(blocks):
        p = f"layer{index // 2 + 1}.{index % 2}"
        found += [(f"{p}.conv1", f"{p}.bn1", block.conv1), (f"{p}.conv2", f"{p}.bn2", block.conv2)]
        if block.downsample is not None:
            found.append((f"{p}.downsample.0", f"{p}.downsample.1", block.downsample))
    net = ResNet(BasicBlock, [2, 2, 2, 2], num_classes=fc_weight.shape[0])
    modules = dict(net.named_modules())
    state = {"fc.weight": fc_weight, "fc.bias": fc_bias}
    for conv, bn, convbn in found:
        state.update(convbn.state(conv, bn))
        modules[bn].eps = convbn.eps
        if convbn.momentum is not None:
            modules[bn].momentum = convbn.momentum
    net.load_state_dict(
        {k: Tensor._from_array(np.ascontiguousarray(v, np.float32)) for k, v in state.items()}
    )
    for param in net.parameters():
        param.requires_grad = False
    return net.eval()


class _Walker:
    """Follows a graph backwards from its output, matching ResNet-18's nodes one by one."""

    def __init__(self, graph: onnx.GraphProto) -> None:
        self.graph = graph
        self.constants = {t.name: t for t in graph.initializer}
        self.producers: dict[str, onnx.NodeProto] = {}
        for node in graph.node:
            if node.op_type == "Constant" and len(node.output) == 1:
                self.constants[node.output[0]] = node
            for name in node.output:
                self.producers[name] = node
        self.inputs = {i.name for i in graph.input} - set(self.constants)

    def resnet18(self) -> tuple[_ConvBN, list[_Block], np.ndarray, np.ndarray]:
        if len(self.graph.output) != 1:
            raise _Mismatch(f"{len(self.graph.output)} graph outputs, ResNet-18 has one")
        features, fc_weight, fc_bias = self.head(self.graph.output[0].name)
        if fc_weight.ndim != 2 or fc_weight.shape[1] != 512:
            shape = list(fc_weight.shape)
            raise _Mismatch(f"the classifier's weight is {shape}, not [classes, 512]")
        blocks: list[_Block] = []
        x = self.pooled(features)
        for index in reversed(range(len(_BLOCKS))):
            block, x = self.block(x, index)
            blocks.insert(0, block)
        pool = self.producer(x, "MaxPool")
        kernel, strides, pads = (_ints(pool, k) for k in ("kernel_shape", "strides", "pads"))
        dilations, ceil = _ints(pool, "dilations") or [1, 1], _int(pool, "ceil_mode", 0)
        if (kernel, strides, pads, dilations, ceil, _auto_pad(pool)) != (
            [3, 3], [2, 2], [1, 1, 1, 1], [1, 1], 0, False
        ):  # fmt: skip
            raise _Mismatch(
                f"MaxPool {pool.name!r} has kernel {kernel}, strides {strides}, pads {pads}, "
                f"dilations {dilations}, ceil_mode {ceil}; ResNet-18 pools 3x3, stride 2, pad 1"
            )
        relu = self.producer(pool.input[0], "Relu")
        stem, x = self.conv_bn(relu.input[0])
        stem.check("stem", *_STEM)
        if self.source(x) not in self.inputs:
            raise _Mismatch(f"the stem Conv {stem.node!r} does not read the graph's input")
        return stem, blocks, fc_weight, fc_bias

    # -- the head ---------------------------------------------------------------------------

    def head(self, name: str) -> tuple[str, np.ndarray, np.ndarray]:
        """``(features, weight [classes, in], bias)`` of the final Gemm or MatMul (+ Add)."""
        node = self.producer(name, "Gemm", "Add", "MatMul")
        if node.op_type == "Gemm":
            if _float(node, "alpha", 1.0) != 1.0 or _int(node, "transA", 0):
                raise _Mismatch(f"Gemm {node.name!r} scales or transposes its input")
            weight = self.constant(node.input[1])
            weight = weight if _int(node, "transB", 0) else weight.T
            bias = np.zeros((), np.float32)
            if len(node.input) > 2 and node.input[2]:
                bias = _float(node, "beta", 1.0) * self.constant(node.input[2])
            return node.input[0], weight, _per_class(bias, weight, node)
        bias = np.zeros((), np.float32)
        if node.op_type == "Add":
            if len(node.input) != 2:
                raise _Mismatch(f"Add {node.name!r} has {len(node.input)} inputs")
            a, b = node.input
            bias, name = (self.constant(b), a) if b in self.constants else (self.constant(a), b)
            node = self.producer(name, "MatMul")
        weight = self.constant(node.input[1]).T
        return node.input[0], weight, _per_class(bias, weight, node)

    def pooled(self, name: str) -> str:
        """Undo Flatten/Reshape and the global average pool; return the pooled feature map."""
        node = self.producer(name, "Flatten", "Reshape", "GlobalAveragePool", "ReduceMean")
        if node.op_type == "Flatten" and _int(node, "axis", 1) != 1:
            raise _Mismatch(f"Flatten {node.name!r} does not keep the batch axis")
        if node.op_type == "Reshape":
            shape = self.constant(node.input[1])
            if shape.shape != (2,) or shape[1] not in (512, -1):
                raise _Mismatch(f"Reshape {node.name!r} to {shape.tolist()} is not (N, 512)")
        if node.op_type in ("Flatten", "Reshape"):
            node = self.producer(node.input[0], "GlobalAveragePool", "ReduceMean")
        if node.op_type == "ReduceMean":
            axes = _ints(node, "axes") or (
                self.constant(node.input[1]).tolist() if len(node.input) > 1 else []
            )
            if sorted(a % 4 for a in axes) != [2, 3]:
                raise _Mismatch(f"ReduceMean {node.name!r} averages axes {axes}, not (2, 3)")
        return node.input[0]

    # -- residual blocks --------------------------------------------------------------------

    def block(self, name: str, index: int) -> tuple[_Block, str]:
        """The BasicBlock ending in ``name``: ``Relu(Add(bn2(conv2(relu(bn1(conv1 x)))), x'))``."""
        add = self.producer(self.producer(name, "Relu").input[0], "Add")
        for main, shortcut in (tuple(add.input), tuple(add.input)[::-1]):
            try:
                conv2, mid = self.conv_bn(main)
                conv1, x = self.conv_bn(self.producer(mid, "Relu").input[0])
                downsample = None
                if self.source(shortcut) != self.source(x):
                    downsample, x_short = self.conv_bn(shortcut)
                    if self.source(x_short) != self.source(x):
                        continue
            except _Mismatch:
                continue
            where = f"layer{index // 2 + 1}.{index % 2}"
            inp, out, stride = _BLOCKS[index]
            conv1.check(f"{where} conv1", out, inp, 3, stride, 1)
            conv2.check(f"{where} conv2", out, out, 3, 1, 1)
            if (downsample is None) != (stride == 1 and inp == out):
                raise _Mismatch(f"{where} {'lacks' if downsample is None else 'has'} a projection")
            if downsample is not None:
                downsample.check(f"{where} downsample", out, inp, 1, stride, 0)
            return _Block(conv1, conv2, downsample), x
        raise _Mismatch(
            f"Add {add.name!r} is not the sum of a BasicBlock (layer{index // 2 + 1}.{index % 2})"
        )

    def conv_bn(self, name: str) -> tuple[_ConvBN, str]:
        """The Conv (and BatchNormalization, if kept) producing ``name``, and the conv's input."""
        node = self.producer(name, "Conv", "BatchNormalization")
        bn, eps, momentum = None, _EPS, None
        if node.op_type == "BatchNormalization":
            if _int(node, "spatial", 1) != 1 or len(node.output) > 1 and any(node.output[1:]):
                raise _Mismatch(f"BatchNormalization {node.name!r} is not per-channel inference")
            bn = tuple(self.constant(n) for n in node.input[1:5])
            eps = _float(node, "epsilon", 1e-5)
            if any(a.name == "momentum" for a in node.attribute):
                momentum = _shortest(1 - _float(node, "momentum", 0.9))
            node = self.producer(node.input[0], "Conv")
        strides, pads = _ints(node, "strides") or [1, 1], _ints(node, "pads") or [0] * 4
        if (
            _int(node, "group", 1) != 1
            or any(d != 1 for d in _ints(node, "dilations"))
            or _auto_pad(node)
            or len(set(strides)) != 1
            or len(set(pads)) != 1
        ):
            raise _Mismatch(f"Conv {node.name!r} is grouped, dilated or asymmetric")
        bias = self.constant(node.input[2]) if len(node.input) > 2 and node.input[2] else None
        weight = self.constant(node.input[1])
        found = _ConvBN(node.name, weight, strides[0], pads[0], bias, bn, eps, momentum)
        return found, node.input[0]

    # -- graph access -----------------------------------------------------------------------

    def source(self, name: str) -> str:
        """``name`` with Identity aliases followed back to the tensor that has the data."""
        seen = {name}
        while name in self.producers and self.producers[name].op_type == "Identity":
            name = self.producers[name].input[0] if self.producers[name].input else ""
            if name in seen:
                raise _Mismatch(f"Identity nodes form a cycle through {name!r}")
            seen.add(name)
        return name

    def producer(self, name: str, *op_types: str) -> onnx.NodeProto:
        """The node of one of ``op_types`` computing ``name``, with the inputs that op needs."""
        node = self.producers.get(self.source(name))
        if node is None or node.op_type not in op_types:
            found = f"a {node.op_type} node ({node.name!r})" if node else "no node"
            raise _Mismatch(f"expected {' or '.join(op_types)} producing {name!r}, found {found}")
        if sum(1 for i in node.input if i) < _ARITY.get(node.op_type, 1):
            raise _Mismatch(f"{node.op_type} {node.name!r} lacks inputs")
        return node

    def constant(self, name: str) -> np.ndarray:
        found = self.constants.get(self.source(name))
        if found is None:
            raise _Mismatch(f"{name!r} should be a weight but is computed")
        if isinstance(found, onnx.NodeProto):
            attribute = next((a for a in found.attribute if a.name == "value"), None)
            if attribute is None:
                raise _Mismatch(f"Constant {found.name!r} has no tensor value")
            found = attribute.t
        array = numpy_helper.to_array(found)
        if array.dtype.kind == "f":
            return array.astype(np.float32, copy=False)
        return array


def _per_class(bias: np.ndarray, weight: np.ndarray, node: onnx.NodeProto) -> np.ndarray:
    """The classifier's bias as one value per class (a scalar bias broadcasts)."""
    classes = weight.shape[:1]
    if bias.size not in (1, *classes):
        raise _Mismatch(f"{node.op_type} {node.name!r} has a bias of shape {list(bias.shape)}")
    return np.broadcast_to(bias.reshape(-1), classes).astype(np.float32)


def _attribute(node: onnx.NodeProto, key: str):
    for a in node.attribute:
        if a.name == key:
            return onnx.helper.get_attribute_value(a)
    return None


def _ints(node: onnx.NodeProto, key: str) -> list[int]:
    return list(_attribute(node, key) or [])


def _int(node: onnx.NodeProto, key: str, default: int) -> int:
    value = _attribute(node, key)
    return default if value is None else int(value)


def _float(node: onnx.NodeProto, key: str, default: float) -> float:
    value = _attribute(node, key)
    return default if value is None else _shortest(value)


def _shortest(value: float) -> float:
    """A float32 attribute as the shortest decimal it stands for (``1e-05``, not
    ``9.99999974738e-06``), so imported layers print as PyTorch's do."""
    return float(str(np.float32(value)))


def _auto_pad(node: onnx.NodeProto) -> bool:
    """True when ``auto_pad`` asks for padding computed from the input size (SAME_*)."""
    return _attribute(node, "auto_pad") not in (None, b"NOTSET", b"VALID")
