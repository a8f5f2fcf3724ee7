"""The ``Optimizer`` base: parameter groups, per-parameter state, ``state_dict`` and ``repr``.

It follows PyTorch 2.1's ``torch/optim/optimizer.py`` contract so training code, checkpoints and
printed output carry over: ``param_groups`` is a list of dicts (``params`` plus every option),
``state`` maps a parameter tensor to its dict of buffers, and ``state_dict`` replaces parameters
by integer ids in group order.
"""

from __future__ import annotations

import functools
import warnings
from collections import defaultdict
from collections.abc import Callable, Iterable
from itertools import chain
from typing import Any

import numpy as np

from ..autograd import enable_grad, no_grad
from ..errors import CheckpointError, ShapeError
from ..tensor import Tensor

ParamsT = Iterable[Tensor] | Iterable[dict[str, Any]]


def _counted(step: Callable[..., Any]) -> Callable[..., Any]:
    """``step`` that adds one to ``_step_count`` per call from outside, however many overriding
    ``step`` methods call ``super().step()`` on the way."""

    @functools.wraps(step)
    def counted_step(self: Optimizer, *args: Any, **kw: Any) -> Any:
        if self.__dict__.get("_stepping"):
            return step(self, *args, **kw)
        self._step_count = getattr(self, "_step_count", 0) + 1
        self._stepping = True
        try:
            return step(self, *args, **kw)
        finally:
            self._stepping = False

    return counted_step


class Optimizer:
    """Base class: subclasses pass their option ``defaults`` and implement ``step``."""

    def __init__(self, params: ParamsT, defaults: dict[str, Any]) -> None:
        self.defaults = defaults
        if isinstance(params, Tensor):
            raise TypeError(
                "params argument given to the optimizer should be an iterable of Tensors or dicts, "
                "but got a Tensor"
            )
        self.state: defaultdict[Tensor, dict[str, Any]] = defaultdict(dict)
        self.param_groups: list[dict[str, Any]] = []
        groups = list(params)
        if not groups:
            raise ValueError("optimizer got an empty parameter list")
        if not isinstance(groups[0], dict):
            groups = [{"params": groups}]
        for group in groups:
            self.add_param_group(group)
        self._step_count = 0

    def __init_subclass__(cls, **kwargs: Any) -> None:
        """Count calls of every subclass's ``step``, so schedulers can warn about a wrong order."""
        super().__init_subclass__(**kwargs)
        if "step" in cls.__dict__:
            cls.step = _counted(cls.__dict__["step"])  # type: ignore[method-assign]

    def __repr__(self) -> str:
        lines = [f"{type(self).__name__} ("]
        for i, group in enumerate(self.param_groups):
            lines.append(f"Parameter Group {i}")
            lines.extend(f"    {key}: {group[key]}" for key in sorted(group) if key != "params")
        return "\n".join(lines) + "\n)"

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        """Add a group of parameters with its own options (missing ones come from ``defaults``)."""
        if not isinstance(param_group, dict):
            raise TypeError(f"param group must be a dict, got {type(param_group).__name__}")
        params = param_group["params"]
        if isinstance(params, Tensor):
            param_group["params"] = [params]
        elif isinstance(params, set):
            raise TypeError(
                "optimizer parameters need to be organized in ordered collections, but the "
                "ordering of tensors in sets will change between runs. Please use a list instead."
            )
        else:
            param_group["params"] = list(params)
        for p in param_group["params"]:
            if not isinstance(p, Tensor):
                raise TypeError(
                    "optimizer can only optimize Tensors, but one of the params is "
                    + type(p).__name__
                )
            if not p.is_leaf:
                raise ValueError("can't optimize a non-leaf Tensor")
        for name, default in self.defaults.items():
            param_group.setdefault(name, default)
        ids = [id(p) for p in param_group["params"]]
        if len(ids) != len(set(ids)):
            warnings.warn(
                "optimizer contains a parameter group with duplicate parameters; in future, "
                "this will cause an error; see github.com/pytorch/pytorch/issues/40967 for more "
                "information",
                stacklevel=3,
            )
        existing = {id(p) for group in self.param_groups for p in group["params"]}
        if not existing.isdisjoint(ids):
            raise ValueError("some parameters appear in more than one parameter group")
        self.param_groups.append(param_group)

    def zero_grad(self, set_to_none: bool = True) -> None:
        """Drop every gradient (the default) or fill it with zeros."""
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is None:
                    continue
                if set_to_none:
                    p.grad = None
                else:
                    if p.grad.grad_fn is not None:
                        p.grad = p.grad.detach()
                    p.grad.zero_()

    @_counted
    def step(self, closure: Callable[[], Any] | None = None) -> Any:
        """One update of every parameter with a gradient; returns ``closure()``'s loss if given."""
        loss = self._closure_loss(closure)
        with no_grad():
            for group in self.param_groups:
                self._update_group(group)
        return loss

    def _update_group(self, group: dict[str, Any]) -> None:
        """Apply the subclass's rule to the parameters of one group (called without a graph)."""
        raise NotImplementedError(f"{type(self).__name__} defines no update rule")

    def _closure_loss(self, closure: Callable[[], Any] | None) -> Any:
        if closure is None:
            return None
        with enable_grad():
            return closure()

    # -- checkpoints --------------------------------------------------------------------------

    def state_dict(self) -> dict[str, Any]:
        """PyTorch's ``{"state": {id: buffers}, "param_groups": [options, params as ids]}``."""
        ids: dict[int, int] = {}
        groups = []
        for group in self.param_groups:
            for p in group["params"]:
                ids.setdefault(id(p), len(ids))
            packed = {k: v for k, v in group.items() if k != "params"}
            packed["params"] = [ids[id(p)] for p in group["params"]]
            groups.append(packed)
        state = {(ids[id(k)] if isinstance(k, Tensor) else k): v for k, v in self.state.items()}
        return {"state": state, "param_groups": groups}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Restore buffers and options from :meth:`state_dict` of an optimizer of the same shape."""
        saved_groups = [dict(g) for g in state_dict["param_groups"]]
        if len(saved_groups) != len(self.param_groups):
            raise ShapeError(
                f"loaded state dict has a different number of parameter groups: "
                f"{len(saved_groups)} saved, {len(self.param_groups)} in this {type(self).__name__}"
            )
        for i, (group, saved) in enumerate(zip(self.param_groups, saved_groups)):
            missing = sorted(set(group) - set(saved))
            if missing:
                raise CheckpointError(
                    f"loaded state dict's group {i} lacks the options {missing} this "
                    f"{type(self).__name__} needs; was it saved by another optimizer?"
                )
            if len(group["params"]) != len(saved["params"]):
                raise ShapeError(
                    f"loaded state dict contains a parameter group that doesn't match the size of "
                    f"optimizer's group: group {i} has {len(saved['params'])} parameters saved, "
                    f"{len(group['params'])} in this {type(self).__name__}"
                )
        id_map = dict(
            zip(
                chain.from_iterable(g["params"] for g in saved_groups),
                chain.from_iterable(g["params"] for g in self.param_groups),
            )
        )
        state: defaultdict[Any, dict[str, Any]] = defaultdict(dict)
        for key, value in state_dict["state"].items():
            if key in id_map:
                param = id_map[key]
                state[param] = {k: _cast_state(param, k, v, key) for k, v in value.items()}
            else:
                state[key] = dict(value)
        for group, saved in zip(self.param_groups, saved_groups):
            saved["params"] = group["params"]
        self.state = state
        self.param_groups = saved_groups


def _cast_state(param: Tensor, name: str, value: Any, index: int) -> Any:
    """Bring a saved buffer to its parameter's dtype (``step`` stays as saved), checking shapes."""
    if not isinstance(value, (Tensor, np.ndarray)):
        return value
    data = value._data if isinstance(value, Tensor) else value
    if name == "step":
        return Tensor._from_array(np.array(data))
    if data.shape != param._data.shape:
        raise ShapeError(
            f"optimizer state {name!r} of parameter {index} has shape {list(data.shape)} but the "
            f"parameter has shape {list(param._data.shape)}"
        )
    if param.is_floating_point():
        data = data.astype(param._data.dtype, copy=True)
    return Tensor._from_array(np.array(data))


def update_in_place(p: Tensor, value: np.ndarray) -> None:
    """Write an update into ``p``'s own buffer, so views and references see it (``p.add_``)."""
    if p._data.flags.writeable:
        np.copyto(p._data, value, casting="same_kind")
    else:
        p._data = value.astype(p._data.dtype, copy=True)
    p._version.value += 1


def add_in_place(p: Tensor, step: np.ndarray) -> None:
    """``p += step`` in ``p``'s own buffer, the sum rounded as ``p + step`` is, without a
    temporary for it."""
    if p._data.flags.writeable:
        np.add(p._data, step, out=p._data, casting="same_kind")
        p._version.value += 1
    else:
        update_in_place(p, p._data + step)


def check_unsupported(**flags: bool | None) -> None:
    """Reject PyTorch options that need a GPU or a differentiable update, which we don't have."""
    for name, value in flags.items():
        if value:
            raise ValueError(
                f"{name}=True is not supported: finetune optimizers run a single-tensor CPU loop "
                "that updates parameters in place outside autograd"
            )
