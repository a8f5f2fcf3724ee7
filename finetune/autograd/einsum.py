"""``einsum``: Einstein summation with its gradient, ellipsis and implicit output included.

The equation is first made explicit (every ``...`` becomes letters the equation does not use,
right-aligned across operands as broadcasting aligns them; an implicit output becomes the letters
used once, ellipsis first, then in alphabetical order), so forward and backward are plain
``np.einsum`` calls. The gradient of operand ``i`` is the einsum of the output gradient with the
other operands onto ``i``'s letters; letters only ``i`` has are broadcast back, dimensions it
broadcast are summed back, and a repeated letter (a diagonal, ``ii->i``) is written into the
diagonal of a zero tensor.
"""

from __future__ import annotations

import string

import numpy as np

from ..errors import ShapeError
from .function import Function


def parse(equation: str, ndims: list[int]) -> tuple[list[str], str]:
    """The explicit subscripts of each operand and of the output."""
    equation = equation.replace(" ", "")
    lhs, arrow, rhs = equation.partition("->")
    inputs = lhs.split(",")
    if len(inputs) != len(ndims):
        raise ValueError(
            f"einsum(): the equation names {len(inputs)} operand(s) but {len(ndims)} were given"
        )
    used = set(equation) - set(".,->")
    if not all(c in string.ascii_letters for c in used):
        raise ValueError(f"einsum(): subscripts must be letters, got {equation!r}")
    spare = [c for c in string.ascii_letters if c not in used]
    ellipsis_dims = 0
    for sub, ndim in zip(inputs, ndims):
        if "..." in sub:
            ellipsis_dims = max(ellipsis_dims, ndim - len(sub.replace("...", "")))
    broadcast = "".join(spare[:ellipsis_dims])
    explicit = []
    for k, (sub, ndim) in enumerate(zip(inputs, ndims)):
        if "..." in sub:
            count = ndim - len(sub.replace("...", ""))
            sub = sub.replace("...", broadcast[ellipsis_dims - count :])
        if len(sub) != ndim:
            raise ShapeError(
                f"einsum(): operand {k} has {ndim} dimension(s) but the equation gives it "
                f"{len(sub)} subscript(s) ({equation!r})"
            )
        explicit.append(sub)
    if arrow:
        output = rhs.replace("...", broadcast)
    else:
        letters = "".join(explicit)
        output = broadcast + "".join(
            sorted(c for c in set(letters) if letters.count(c) == 1 and c not in broadcast)
        )
    return explicit, output


class Einsum(Function):
    name = "EinsumBackward0"

    @staticmethod
    def forward(ctx, *operands, equation):
        inputs, output = parse(equation, [np.ndim(x) for x in operands])
        dtype = np.result_type(*operands)
        arrays = [np.asarray(x, dtype=dtype) for x in operands]
        try:
            out = np.einsum(f"{','.join(inputs)}->{output}", *arrays, optimize=True)
        except ValueError as error:
            shapes = ", ".join(str(list(x.shape)) for x in arrays)
            raise ShapeError(
                f"einsum(): {equation!r} does not fit shapes {shapes}: {error}"
            ) from None
        ctx.inputs, ctx.output = inputs, output
        ctx.save_for_backward(*arrays)
        return np.asarray(out, dtype=dtype)

    @staticmethod
    def backward(ctx, grad):
        arrays = ctx.saved_tensors
        return tuple(
            _operand_grad(i, ctx.inputs, ctx.output, arrays, grad) if needed else None
            for i, needed in enumerate(ctx.needs_input_grad)
        )


def _operand_grad(i: int, inputs: list[str], output: str, arrays, grad) -> np.ndarray:
    sub, x = inputs[i], arrays[i]
    unique = "".join(dict.fromkeys(sub))
    others = [s for j, s in enumerate(inputs) if j != i]
    reachable = set(output).union(*others)
    kept = "".join(c for c in unique if c in reachable)
    operands = [grad] + [a for j, a in enumerate(arrays) if j != i]
    g = np.einsum(f"{','.join([output, *others])}->{kept}", *operands, optimize=True)
    size = dict(zip(sub, x.shape))
    # letters only this operand has were summed in the forward: every element got the gradient
    shape = [g.shape[kept.index(c)] if c in kept else 1 for c in unique]
    g = np.broadcast_to(g.reshape(shape), [max(n, size[c]) for n, c in zip(shape, unique)])
    # dimensions this operand broadcast (size 1 against a larger one) add their gradients up
    axes = tuple(k for k, c in enumerate(unique) if size[c] == 1 and g.shape[k] != 1)
    if axes:
        g = g.sum(axis=axes, keepdims=True)
    if unique == sub:
        return np.ascontiguousarray(g, dtype=x.dtype)
    diagonal = np.zeros(x.shape, dtype=x.dtype)
    np.einsum(f"{sub}->{unique}", diagonal)[...] = g
    return diagonal
