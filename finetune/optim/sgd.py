"""Stochastic gradient descent with momentum, dampening, Nesterov, weight decay and maximize.

The rule and its order of float operations follow PyTorch 2.1's ``_single_tensor_sgd``; each
scalar is rounded to the parameter's dtype before it multiplies a tensor, as PyTorch does.
PyTorch's vectorised CPU kernels may fuse ``a + alpha * b`` into one FMA, so the last bit can
differ on some elements; the algorithm and rounding of each step are the same.
"""

from __future__ import annotations

from typing import Any

from ..tensor import Tensor
from .optimizer import Optimizer, ParamsT, add_in_place, check_unsupported


class SGD(Optimizer):
    """``SGD(params, lr=1e-3, momentum=0, dampening=0, weight_decay=0, nesterov=False)``.

    The first momentum buffer is a copy of the gradient, not zeros; weight decay is added to the
    gradient (L2); ``maximize`` ascends; ``foreach`` is accepted and changes nothing.
    """

    def __init__(
        self,
        params: ParamsT,
        lr: float = 1e-3,
        momentum: float = 0,
        dampening: float = 0,
        weight_decay: float = 0,
        nesterov: bool = False,
        *,
        maximize: bool = False,
        foreach: bool | None = None,
        differentiable: bool = False,
    ) -> None:
        if lr < 0.0:
            raise ValueError(f"Invalid learning rate: {lr}")
        if momentum < 0.0:
            raise ValueError(f"Invalid momentum value: {momentum}")
        if weight_decay < 0.0:
            raise ValueError(f"Invalid weight_decay value: {weight_decay}")
        if nesterov and (momentum <= 0 or dampening != 0):
            raise ValueError("Nesterov momentum requires a momentum and zero dampening")
        check_unsupported(differentiable=differentiable)
        defaults = dict(
            lr=lr,
            momentum=momentum,
            dampening=dampening,
            weight_decay=weight_decay,
            nesterov=nesterov,
            maximize=maximize,
            foreach=foreach,
            differentiable=differentiable,
        )
        super().__init__(params, defaults)

    def _update_group(self, group: dict[str, Any]) -> None:
        lr, momentum, dampening = group["lr"], group["momentum"], group["dampening"]
        weight_decay, nesterov, maximize = (
            group["weight_decay"],
            group["nesterov"],
            group["maximize"],
        )
        for p in group["params"]:
            if p.grad is None:
                continue
            state = self.state[p]
            d_p = -p.grad._data if maximize else p.grad._data
            if weight_decay != 0:
                d_p = d_p + weight_decay * p._data
            if momentum != 0:
                buf = state.get("momentum_buffer")
                if buf is None:
                    buf = Tensor._from_array(d_p.copy())
                    state["momentum_buffer"] = buf
                else:
                    buf._data *= momentum
                    # times 1 leaves every float as it is, so undampened momentum skips it
                    buf._data += d_p if dampening == 0 else (1 - dampening) * d_p
                d_p = d_p + momentum * buf._data if nesterov else buf._data
            else:
                state.setdefault("momentum_buffer", None)  # PyTorch 2.1 records the absent buffer
            add_in_place(p, -lr * d_p)
