"""``nn.Parameter``: a leaf tensor that a ``Module`` registers as trainable state."""

from __future__ import annotations

import numpy as np

from ..tensor import Tensor


class Parameter(Tensor):
    """A tensor that is a module parameter: a leaf with ``requires_grad=True`` by default.

    Assigning one to a ``Module`` attribute registers it, so ``parameters()`` and
    ``state_dict()`` find it. It prints as ``Parameter containing:`` followed by the tensor.
    """

    __slots__ = ()
    _repr_prefix = "Parameter containing:\n"

    def __new__(cls, data: Tensor | np.ndarray | None = None, requires_grad: bool = True):
        if data is None:
            array = np.empty(0, dtype=np.float32)
        elif isinstance(data, Tensor):
            array = data._data
        else:
            array = np.asarray(data)
        param = cls._from_array(array)
        param.requires_grad = requires_grad
        return param

    def __init__(self, data=None, requires_grad: bool = True) -> None:
        """Everything happens in ``__new__``; this only stops ``Tensor.__init__`` from refusing."""
