"""Random streams: ``Generator`` (``torch.Generator``) and the default one behind ``randn``,
``rand``, initialisers, dropout and shuffling.

A ``Generator`` wraps a numpy ``Generator`` (PCG64). ``manual_seed(n)`` makes its stream, and so
every draw made with it, reproducible; ``get_state()`` returns the state as a uint8 tensor (JSON
of numpy's bit-generator state, the role PyTorch's ByteTensor state plays) that ``set_state``
takes back. Functions that take ``generator=`` accept a ``finetune.Generator``, a numpy
``Generator`` or ``None`` (the default generator).
"""

from __future__ import annotations

import json

import numpy as np

from .device import device as _device


class Generator:
    """An independent random stream (``torch.Generator``); CPU only."""

    def __init__(self, device="cpu") -> None:
        self.device = _device(device)
        if self.device.type != "cpu":
            raise RuntimeError(f"finetune runs on the CPU only; got a Generator for {device!r}")
        self.seed()

    def manual_seed(self, seed: int) -> Generator:
        """Restart the stream from ``seed``; returns the generator, as PyTorch's does."""
        # PyTorch takes seeds modulo 2**64, negative ones included
        self._initial_seed = int(seed) % 2**64
        self._rng = np.random.default_rng(self._initial_seed)
        return self

    def seed(self) -> int:
        """Reseed from the operating system's entropy and return the new seed."""
        seed = int(np.random.SeedSequence().entropy % 2**63)
        self.manual_seed(seed)
        return seed

    def initial_seed(self) -> int:
        return self._initial_seed

    def get_state(self):
        from .creation import tensor

        text = json.dumps(self._rng.bit_generator.state).encode()
        return tensor(np.frombuffer(text, dtype=np.uint8).copy())

    def set_state(self, new_state) -> Generator:
        data = getattr(new_state, "_data", new_state)
        try:
            state = json.loads(np.asarray(data, dtype=np.uint8).tobytes().decode())
            self._rng.bit_generator.state = state
        except (ValueError, TypeError, KeyError, UnicodeDecodeError) as error:
            raise RuntimeError(
                "set_state expects a state returned by get_state() (a uint8 tensor)"
            ) from error
        return self

    @property
    def numpy(self) -> np.random.Generator:
        """The numpy generator drawing this stream."""
        return self._rng


default_generator = Generator()


def numpy_generator(generator=None) -> np.random.Generator:
    """The numpy generator behind ``generator=``: a ``finetune.Generator``, a numpy
    ``Generator`` or ``None`` for the default."""
    if generator is None:
        return default_generator.numpy
    if isinstance(generator, Generator):
        return generator.numpy
    if isinstance(generator, np.random.Generator):
        return generator
    raise TypeError(
        f"generator must be a finetune.Generator or a numpy Generator, got {type(generator)}"
    )


def generator() -> np.random.Generator:
    """The default generator's numpy stream (what draws without ``generator=`` use)."""
    return default_generator.numpy


def manual_seed(seed: int) -> Generator:
    """Seed every random draw the library makes (``torch.manual_seed``); returns the default
    generator."""
    return default_generator.manual_seed(seed)


def seed() -> int:
    """Reseed the default generator from the operating system (``torch.seed``)."""
    return default_generator.seed()


def initial_seed() -> int:
    return default_generator.initial_seed()


def get_rng_state():
    """The default generator's state as a uint8 tensor (``torch.get_rng_state``)."""
    return default_generator.get_state()


def set_rng_state(new_state) -> None:
    default_generator.set_state(new_state)
