"""The library's error hierarchy: every failure a user can cause ends in one of these.

Each message says what was wrong, where (file, node, op type, layer, shapes) and what to do.
Errors that PyTorch raises as ``RuntimeError`` (autograd misuse, shape mismatches) subclass it
too, so PyTorch code that catches ``RuntimeError`` keeps working.
"""

from __future__ import annotations


class FinetuneError(Exception):
    """Base class of every error the library raises on purpose."""


class ShapeError(FinetuneError, RuntimeError, ValueError):
    """Tensor shapes do not fit an operation, a layer or a state dict."""


class AutogradError(FinetuneError, RuntimeError):
    """Autograd was misused: a second backward through a freed graph, an in-place change of a
    tensor that backward still needs."""


class OnnxImportError(FinetuneError):
    """An ONNX file could not be read, checked or converted into modules."""


class OnnxExportError(FinetuneError):
    """A model could not be written as ONNX."""


class DataError(FinetuneError):
    """A dataset folder, image file or batch is unusable."""


class DownloadError(FinetuneError):
    """A pretrained file could not be fetched or failed its checksum."""


class CheckpointError(FinetuneError):
    """A checkpoint or saved state could not be written, read or applied."""


class TrainingError(FinetuneError):
    """Training cannot go on: a non-finite loss or gradient, an interrupted run."""
