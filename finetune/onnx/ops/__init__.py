"""ONNX op converters, one module per family; importing this package registers them all."""

from . import (  # noqa: F401
    activation,
    constant,
    conv,
    elementwise,
    gemm,
    normalization,
    pooling,
    reduction,
    resize,
    shape,
)
