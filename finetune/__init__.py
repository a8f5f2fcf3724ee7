"""finetune: import pretrained ONNX models into a numpy autograd engine, fine-tune, export to ONNX.

The surface reads like PyTorch on purpose: ``import finetune as torch`` runs PyTorch autograd code.
"""

from __future__ import annotations

# first: it sets OpenBLAS's thread timeout, which only counts before numpy loads OpenBLAS
from .parallel import get_num_threads, set_num_threads  # isort: skip
from . import allocator, dtypes  # allocator: freed memory kept for reuse (see allocator.py)
from ._printing import set_printoptions
from .autograd import (
    enable_grad,
    inference_mode,
    is_grad_enabled,
    no_grad,
    set_grad_enabled,
)
from .creation import (
    BoolTensor,
    DoubleTensor,
    FloatTensor,
    IntTensor,
    LongTensor,
    arange,
    as_tensor,
    empty,
    empty_like,
    eye,
    from_numpy,
    full,
    full_like,
    linspace,
    ones,
    ones_like,
    rand,
    rand_like,
    randint,
    randn,
    randn_like,
    randperm,
    tensor,
    zeros,
    zeros_like,
)
from .device import cuda, device
from .dtypes import (
    bool_ as bool,  # noqa: A004
)
from .dtypes import (
    double,
    dtype,
    float16,
    float32,
    float64,
    half,
    int8,
    int16,
    int32,
    int64,
    long,
    uint8,
)
from .dtypes import float as float  # noqa: A004, PLC0414
from .dtypes import int as int  # noqa: A004, PLC0414
from .functions import (
    abs,
    add,
    amax,
    amin,
    argmax,
    argmin,
    argsort,
    bmm,
    cat,
    chunk,
    clamp,
    clip,
    clone,
    concat,
    cos,
    cumsum,
    div,
    einsum,
    erf,
    exp,
    expand,
    flatten,
    flip,
    gather,
    index_select,
    isfinite,
    isinf,
    isnan,
    log,
    log1p,
    log_softmax,
    logsumexp,
    matmul,
    max,
    maximum,
    mean,
    min,
    minimum,
    mm,
    mul,
    neg,
    norm,
    permute,
    pow,
    prod,
    relu,
    reshape,
    sigmoid,
    sin,
    softmax,
    sort,
    split,
    sqrt,
    squeeze,
    stack,
    std,
    sub,
    sum,
    t,
    tanh,
    topk,
    transpose,
    unsqueeze,
    var,
    where,
)
from .memory_format import channels_last, contiguous_format, memory_format, preserve_format
from .random import (
    Generator,
    default_generator,
    get_rng_state,
    initial_seed,
    manual_seed,
    seed,
    set_rng_state,
)
from .tensor import Size, Tensor, is_tensor

__version__ = "0.1.0"


def numel(input: Tensor) -> int:  # noqa: A002 - the PyTorch name
    return input.numel()


def is_floating_point(input: Tensor) -> bool:  # noqa: A002
    return input.is_floating_point()


def allclose(a: Tensor, b: Tensor, rtol: float = 1e-5, atol: float = 1e-8, equal_nan=False):
    return a.allclose(b, rtol=rtol, atol=atol, equal_nan=equal_nan)


def equal(a: Tensor, b: Tensor) -> bool:
    return a.equal(b)


def get_default_dtype():
    return float32


def __getattr__(name: str):
    # subpackages load on first use so `import finetune` stays light
    import importlib

    if name in {"nn", "optim", "onnx", "models", "data", "train", "utils"}:
        return importlib.import_module(f".{name}", __name__)
    if name in {"save", "load"}:
        from . import serialization

        return getattr(serialization, name)
    raise AttributeError(f"module 'finetune' has no attribute {name!r}")
