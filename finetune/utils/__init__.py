"""Small helpers shared across the library (atomic file writes); ``utils.data`` as in PyTorch."""


def __getattr__(name: str):
    # `torch.utils.data.X` without an import: loaded on first use, as the data package is heavier
    if name == "data":
        import importlib

        return importlib.import_module(".data", __name__)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
