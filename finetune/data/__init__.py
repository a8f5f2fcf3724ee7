"""Datasets, transforms and the loader: a folder of images becomes reproducible batches."""

from . import demo, transforms
from .folder import IMG_EXTENSIONS, ImageFolder, load_image
from .loader import (
    DataLoader,
    Dataset,
    DataWarning,
    Subset,
    TensorDataset,
    default_collate,
    random_split,
)

__all__ = [
    "IMG_EXTENSIONS",
    "DataLoader",
    "Dataset",
    "DataWarning",
    "ImageFolder",
    "Subset",
    "TensorDataset",
    "default_collate",
    "demo",
    "load_image",
    "random_split",
    "transforms",
]
