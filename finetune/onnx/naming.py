"""Submodule names for imported nodes, taken from the graph's own names so users find them.

PyTorch exports name initializers by ``state_dict`` key (``layer1.0.conv1.weight``) or, once
folded, name nodes by module scope (``/layer1/layer1.0/conv1/Conv``); MXNet names weights
``resnetv15_dense0_weight`` / ``resnetv15_batchnorm0_gamma``. Each gives a dotted path;
anything else a sanitised node name.
"""

from __future__ import annotations

import re

from ..nn.module import Module

_PARAMETER_SUFFIXES = ("weight", "bias", "running_mean", "running_var")
_COMPONENT = re.compile(r"^(?:[A-Za-z_][A-Za-z0-9_]*|[0-9]+)$")


def candidate_path(node_name: str, op_type: str, weight_name: str | None, index: int) -> str:
    """The dotted path a module built from this node should live at (before de-duplication)."""
    if weight_name:
        prefix, dot, last = weight_name.rpartition(".")
        if dot and last in _PARAMETER_SUFFIXES and _valid_path(prefix):
            return prefix
    scoped = _scope_path(node_name)
    if scoped:
        return scoped
    if weight_name:
        for suffix in ("_weight", "_gamma", "_W"):
            if weight_name.endswith(suffix) and len(weight_name) > len(suffix):
                return sanitise(weight_name[: -len(suffix)])
    if node_name:
        return sanitise(node_name)
    return f"{op_type.lower()}_{index}"


def _valid_path(path: str) -> bool:
    return bool(path) and all(_COMPONENT.match(part) for part in path.split("."))


def _scope_path(node_name: str) -> str | None:
    """``/layer1/layer1.0/conv1/Conv`` → ``layer1.0.conv1`` (PyTorch's scoped node names)."""
    if not node_name.startswith("/"):
        return None
    scopes = node_name.strip("/").split("/")[:-1]
    path: list[str] = []
    for scope in scopes:
        if path and scope.startswith(path[-1] + "."):
            path.extend(scope[len(path[-1]) + 1 :].split("."))
        else:
            path.extend(scope.split("."))
    joined = ".".join(path)
    return joined if _valid_path(joined) else None


def sanitise(name: str) -> str:
    """One attribute name: non-identifier characters become ``_``; never a leading digit."""
    cleaned = re.sub(r"[^A-Za-z0-9_]", "_", name).strip("_") or "node"
    return f"n{cleaned}" if cleaned[0].isdigit() else cleaned


def place(root: Module, path: str, module: Module, scope_type: type[Module]) -> str:
    """Register ``module`` under ``root`` at ``path`` (creating ``scope_type`` containers on the
    way), renaming the last part if the place is taken; returns the path used."""
    *parents, leaf = path.split(".")
    owner = root
    for depth, part in enumerate(parents):
        child = owner._modules.get(part)
        if child is None and not hasattr(owner, part):
            child = scope_type()
            owner.add_module(part, child)
        if not isinstance(child, scope_type):
            return place(
                root, sanitise("_".join(parents[: depth + 1] + [leaf])), module, scope_type
            )
        owner = child
    name, n = leaf, 0
    while name in owner._modules or hasattr(owner, name):
        n += 1
        name = f"{leaf}_{n}"
    owner.add_module(name, module)
    return ".".join([*parents, name])
