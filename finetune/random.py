"""The global random generator behind ``randn``, ``rand``, initialisers and dropout."""

from __future__ import annotations

import numpy as np

_generator = np.random.default_rng()


def manual_seed(seed: int) -> np.random.Generator:
    """Seed every random draw the library makes (``torch.manual_seed``)."""
    global _generator
    _generator = np.random.default_rng(int(seed))
    return _generator


seed = manual_seed


def generator() -> np.random.Generator:
    return _generator


def get_rng_state() -> dict:
    return _generator.bit_generator.state


def set_rng_state(state: dict) -> None:
    _generator.bit_generator.state = state
