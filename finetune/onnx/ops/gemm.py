"""Gemm, MatMul and Einsum. A constant weight makes Gemm and MatMul a real ``nn.Linear`` (alpha
and beta folded in, ``transB`` honoured), and ``MatMul`` followed by ``Add`` of a constant bias
becomes one."""

from __future__ import annotations

import numpy as np
import onnx

from ... import functions as fn
from ...errors import ShapeError
from ...nn.layers.linear import Linear
from ...nn.utils import skip_init
from ...tensor import Tensor
from ..limits import check_broadcast
from ..registry import Built, NodeView, call_module, register
from ._common import holding, keep_dtype


def linear(weight: np.ndarray, bias: np.ndarray | None) -> Linear:
    """An ``nn.Linear`` holding ``weight`` (out, in) and ``bias`` (out,) as they are."""
    out_features, in_features = weight.shape
    layer = skip_init(Linear, in_features, out_features, bias=bias is not None)
    return holding(layer, weight, bias)


def _bias_vector(c: np.ndarray | None, n: int) -> np.ndarray | None | bool:
    """``C`` as an (n,) bias when it broadcasts along rows only; False when it doesn't."""
    if c is None:
        return None
    if c.size == 1:
        return np.full(n, c.reshape(-1)[0], dtype=c.dtype)
    if c.shape in ((n,), (1, n)):
        return c.reshape(n)
    return False


def _transposed_input(module, a):
    return module(fn.transpose(a, 0, 1))


def _gemm_module(view: NodeView) -> Built | None:
    b, c = view.constant(1), view.constant(2) if view.has_input(2) else None
    if view.constant(0) is not None or b is None or b.ndim != 2 or b.dtype.kind != "f":
        return None
    if view.has_input(2) and c is None:
        return None
    a = view.attributes
    weight = (b if a.get("transB", 0) else b.T) * np.asarray(a.get("alpha", 1.0), b.dtype)
    bias = _bias_vector(c, weight.shape[0])
    if bias is False:
        return None
    if bias is not None:
        bias = bias.astype(b.dtype) * np.asarray(a.get("beta", 1.0), b.dtype)
    call = _transposed_input if a.get("transA", 0) else call_module
    return Built(linear(weight, bias), (0,), call)


@register("Gemm", 7, 9, 11, 13, module=_gemm_module)
def gemm(
    a: Tensor, b: Tensor, c: Tensor | None = None, *, alpha=1.0, beta=1.0, transA=0, transB=0
) -> Tensor:
    dtype = a._data.dtype
    if transA:
        a = fn.transpose(a, 0, 1)
    if transB:
        b = fn.transpose(b, 0, 1)
    check_broadcast("Gemm", (a.shape[0], 1), (1, b.shape[-1]))
    y = fn.matmul(a, b)
    if alpha != 1.0:
        y = fn.mul(y, alpha)
    if c is not None:
        y = fn.add(y, c if beta == 1.0 else fn.mul(c, beta))
    return keep_dtype(y, dtype)


def _matmul_module(view: NodeView) -> Built | None:
    w = view.constant(1)
    if view.constant(0) is not None or w is None or w.ndim != 2 or w.dtype.kind != "f":
        return None
    return Built(linear(w.T, None))


@register("MatMul", 1, 9, 13, module=_matmul_module)
def matmul(a: Tensor, b: Tensor) -> Tensor:
    if a.ndim >= 2 and b.ndim >= 2:  # (..., m, k) @ (..., k, n): m * n can outgrow both inputs
        check_broadcast("MatMul", (*a.shape[:-1], 1), (*b.shape[:-2], 1, b.shape[-1]))
    return fn.matmul(a, b)


def fuse_matmul_add(
    nodes: list[onnx.NodeProto], constants: dict[str, np.ndarray], graph_outputs: set[str]
) -> dict[int, tuple[int, Built, str]]:
    """Find ``MatMul(x, W)`` feeding only ``Add(·, b)`` with constant ``W`` (in, out) and bias
    ``b`` (out,): ``{matmul index: (add index, Built Linear, weight name)}``."""
    consumers: dict[str, list[int]] = {}
    for index, node in enumerate(nodes):
        for name in node.input:
            consumers.setdefault(name, []).append(index)
    fused = {}
    for index, node in enumerate(nodes):
        if node.op_type != "MatMul" or node.domain not in ("", "ai.onnx") or len(node.input) != 2:
            continue
        x, w_name = node.input
        w, out = constants.get(w_name), node.output[0]
        users = consumers.get(out, [])
        if x in constants or w is None or w.ndim != 2 or w.dtype.kind != "f":
            continue
        if out in graph_outputs or len(users) != 1 or nodes[users[0]].op_type != "Add":
            continue
        add = nodes[users[0]]
        others = [name for name in add.input if name != out]
        if len(others) != 1 or len(add.input) != 2:
            continue
        bias = constants.get(others[0])
        if (
            bias is None
            or bias.dtype != w.dtype
            or bias.shape not in ((w.shape[1],), (1, w.shape[1]))
        ):
            continue
        fused[index] = (users[0], Built(linear(w.T, bias.reshape(-1))), w_name)
    return fused


@register("Einsum", 12, 28)
def einsum(*inputs: Tensor, equation) -> Tensor:
    return fn.einsum(equation, *inputs)


@register("Gemm", 1, 6, module=_gemm_module)
def gemm_6(
    a: Tensor,
    b: Tensor,
    c: Tensor,
    *,
    alpha=1.0,
    beta=1.0,
    broadcast=0,
    transA=0,
    transB=0,
) -> Tensor:
    """Opsets 1-6: ``C`` is required, and broadcasts only with ``broadcast=1``; without it,
    it must have the output's shape."""
    if not broadcast:
        rows = a.shape[1] if transA else a.shape[0]
        cols = b.shape[0] if transB else b.shape[1]
        if tuple(c.shape) != (rows, cols):
            raise ShapeError(
                f"Gemm: C of shape {list(c.shape)} must be {[rows, cols]} without broadcast=1"
            )
    return gemm(a, b, c, alpha=alpha, beta=beta, transA=transA, transB=transB)
