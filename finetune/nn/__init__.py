"""``finetune.nn``: modules, parameters, layers, losses (``torch.nn``)."""

from . import functional, init, layers, utils
from .layers import *  # noqa: F403 - every layer, listed once in layers.__all__
from .module import Module
from .parameter import Parameter

__all__ = ["Module", "Parameter", "functional", "init", "utils"]
__all__ += layers.__all__  # the form static checkers follow
