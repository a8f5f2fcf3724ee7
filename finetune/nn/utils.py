"""``torch.nn.utils``: gradient clipping (scale or clamp the ``.grad`` of parameters in place) and
``skip_init`` (build a module without initialising its weights)."""

from __future__ import annotations

import math
from collections.abc import Iterable

import numpy as np

from ..autograd import no_grad
from ..errors import TrainingError
from ..tensor import Tensor


def _grads(parameters: Tensor | Iterable[Tensor]) -> list[Tensor]:
    if isinstance(parameters, Tensor):
        parameters = [parameters]
    return [p.grad for p in parameters if p.grad is not None]


def clip_grad_norm_(
    parameters: Tensor | Iterable[Tensor],
    max_norm: float,
    norm_type: float | str = 2.0,
    error_if_nonfinite: bool = False,
    foreach: bool | None = None,
) -> Tensor:
    """Scale all gradients by one factor so their joint ``norm_type`` norm is at most ``max_norm``.

    Returns the norm before clipping, as PyTorch does (the norm of the per-parameter norms).
    """
    grads = _grads(parameters)
    if not grads:
        return Tensor._from_array(np.zeros((), dtype=np.float32))
    order = float(norm_type)
    dtype = np.result_type(*(g._data.dtype for g in grads))
    norms = np.array([np.linalg.norm(g._data.ravel(), order) for g in grads], dtype=dtype)
    total = np.linalg.norm(norms, order).astype(dtype)
    if error_if_nonfinite and not np.isfinite(total):
        raise TrainingError(
            f"The total norm of order {order} for gradients from `parameters` is non-finite, so "
            "it cannot be clipped. To disable this error and scale the gradients by the "
            "non-finite norm anyway, set `error_if_nonfinite=False`"
        )
    coef = float(max_norm) / (float(total) + 1e-6)
    if coef < 1.0 or math.isnan(coef):
        with no_grad():
            for g in grads:
                g.mul_(coef)
    return Tensor._from_array(total)


def clip_grad_value_(
    parameters: Tensor | Iterable[Tensor], clip_value: float, foreach: bool | None = None
) -> None:
    """Clamp every gradient element into ``[-clip_value, clip_value]``."""
    with no_grad():
        for g in _grads(parameters):
            g.clamp_(-clip_value, clip_value)


def skip_init(module_cls: type, *args, **kwargs):
    """``torch.nn.utils.skip_init``: ``module_cls(*args, **kwargs)`` without running its
    ``reset_parameters``, for weights that are about to be replaced (an imported layer's): the
    random draws would be thrown away, and for a large layer they cost seconds. The parameters
    hold uninitialised memory until assigned."""
    skipping = type(module_cls.__name__, (module_cls,), {"reset_parameters": lambda self: None})
    module = skipping(*args, **kwargs)
    module.__class__ = module_cls
    return module
