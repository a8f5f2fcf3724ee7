"""``torch.utils.data``'s import path for :mod:`finetune.data`: PyTorch data code runs as is."""

from ..data import (
    DataLoader,
    Dataset,
    Subset,
    TensorDataset,
    default_collate,
    random_split,
)

__all__ = ["DataLoader", "Dataset", "Subset", "TensorDataset", "default_collate", "random_split"]
