"""``finetune.onnx``: import ONNX graphs as trainable modules (and export them back)."""

from .export import export
from .graph import OnnxModule, find_head, replace_head
from .load import load

__all__ = ["OnnxModule", "export", "find_head", "load", "replace_head"]
