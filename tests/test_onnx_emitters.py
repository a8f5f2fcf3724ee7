"""Every autograd ``Function`` has an ONNX emitter, or is listed here with the reason it has
none: a new Function must get one or a stated reason, so a model using it never fails at export
by surprise."""

from __future__ import annotations

import importlib
import pkgutil

import finetune.autograd
from finetune.autograd.function import Function
from finetune.onnx.export_ops import emitter_for
from finetune.onnx.registry import _load_converters

TRAINING_ONLY = {
    "BatchNormTrain": "batch statistics exist only while training; eval exports BatchNormalization",
    "Dropout": "drops only while training; eval exports nothing",
    "BinaryCrossEntropyWithLogits": "a loss, computed while training, never part of a model",
    "MseLoss": "a loss, computed while training, never part of a model",
    "NllLoss": "a loss, computed while training, never part of a model",
}
NOT_EXPORTED = {
    "_UnaryMath": "the abstract base of the unary math table; each row has its emitter",
    "_SelfGated": "the abstract base of Silu and HardSwish; each has its emitter",
    "IndexPut": "an in-place assignment through an arbitrary index (ScatterND needs its indices)",
    "Sample": "fractional-point sampling (GridSample, RoiAlign, DeformConv) has no emitter yet",
}


def _all_functions() -> dict[str, type]:
    _load_converters()  # the converter families define and register theirs
    for module in pkgutil.iter_modules(finetune.autograd.__path__):
        importlib.import_module(f"finetune.autograd.{module.name}")
    found, stack = {}, [Function]
    while stack:
        for sub in stack.pop().__subclasses__():
            if sub.__module__.startswith("finetune."):  # tests define their own
                found[sub.__name__] = sub
            stack.append(sub)
    return found


def test_every_function_has_an_emitter_or_a_stated_reason():
    missing = {name for name, f in _all_functions().items() if emitter_for(f) is None}
    assert missing == set(TRAINING_ONLY) | set(NOT_EXPORTED)
