"""``torch.device`` and ``torch.cuda`` for scripts written for both: this library runs on the CPU.

``device = torch.device("cuda" if torch.cuda.is_available() else "cpu")`` picks the CPU here, and
``tensor.to(device)`` / ``model.to(device)`` are no-ops.
"""

from __future__ import annotations

import types


class device:  # noqa: N801 - the PyTorch name
    """A device name (``"cpu"``, ``"cuda:0"``) that compares equal to its string form."""

    __slots__ = ("type", "index")

    def __init__(self, type: str | device = "cpu", index: int | None = None) -> None:  # noqa: A002
        name, _, number = str(type).partition(":")
        self.type = name
        self.index = int(number) if number else index

    def __repr__(self) -> str:
        index = "" if self.index is None else f", index={self.index}"
        return f"device(type={self.type!r}{index})"

    def __str__(self) -> str:
        return self.type if self.index is None else f"{self.type}:{self.index}"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, (device, str)) and str(self) == str(device(other))

    def __hash__(self) -> int:
        return hash(str(self))


def _no_op(*args, **kwargs) -> None:
    """Seeding a GPU generator: there is none."""


cuda = types.SimpleNamespace(
    is_available=lambda: False,
    device_count=lambda: 0,
    manual_seed=_no_op,
    manual_seed_all=_no_op,
)
