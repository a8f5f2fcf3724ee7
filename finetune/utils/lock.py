"""A run folder's lock: one training run writes a folder at a time.

The lock is ``run.lock`` in the folder, holding the owner's pid, host and start time, and an
operating-system lock on that file (``flock`` on POSIX, ``msvcrt.locking`` on Windows). The
operating system drops its lock when the owner exits, however it exits, so a lock file left by a
killed run is taken over by the next run; a live owner makes a second run fail at once, naming
the folder and the pid. A thread that already holds a folder's lock may take it again (the
recipe locks its run folder, then ``fit`` locks its checkpoint folder, which is the same).
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

from ..errors import TrainingError

LOCK_NAME = "run.lock"

_held: dict[tuple[str, int], int] = {}  # (real folder path, thread id) -> nesting depth
_held_guard = threading.Lock()


class FolderInUse(TrainingError):
    """Another run holds the lock of the folder this run would write."""


def _try_lock(fd: int) -> bool:
    """Take the operating-system lock on ``fd`` without waiting; False if another holds it."""
    try:
        import fcntl
    except ImportError:  # Windows: lock one byte far past any content, so readers still read
        import msvcrt

        os.lseek(fd, 1 << 30, os.SEEK_SET)
        try:
            msvcrt.locking(fd, msvcrt.LK_NBLCK, 1)
        except OSError:
            return False
        finally:
            os.lseek(fd, 0, os.SEEK_SET)
        return True
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except (BlockingIOError, PermissionError):
        return False
    return True


def _read_owner(fd: int) -> dict:
    os.lseek(fd, 0, os.SEEK_SET)
    raw = os.read(fd, 4096)
    try:
        owner = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        return {}
    return owner if isinstance(owner, dict) else {}


def _describe(owner: dict) -> str:
    parts = []
    if "pid" in owner:
        parts.append(f"pid {owner['pid']}")
    if owner.get("host") and owner.get("host") != socket.gethostname():
        parts.append(f"on {owner['host']}")
    if owner.get("started"):
        parts.append(f"since {owner['started']}")
    return " ".join(parts) or "an unknown process"


@contextlib.contextmanager
def folder_lock(folder: str | os.PathLike, log: Callable[[str], None] | None = None) -> Iterator:
    """Hold ``folder``'s lock for the ``with`` block; ``FolderInUse`` at once if another has it.

    The folder must exist. On exit the lock file is removed, so a finished run leaves none.
    """
    folder = Path(folder)
    key = (os.path.realpath(folder), threading.get_ident())
    with _held_guard:
        if key in _held:
            _held[key] += 1
            reentered = True
        else:
            reentered = False
    if reentered:
        try:
            yield
        finally:
            with _held_guard:
                _held[key] -= 1
        return

    path = folder / LOCK_NAME
    fd = _acquire(folder, path)
    try:
        previous = _read_owner(fd)
        if previous and log:
            log(
                f"took over the lock in {folder} left by a run that is no longer running "
                f"({_describe(previous)})"
            )
        owner = {
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        }
        os.lseek(fd, 0, os.SEEK_SET)
        os.ftruncate(fd, 0)
        os.write(fd, json.dumps(owner).encode("utf-8"))
        with _held_guard:
            _held[key] = 0
        try:
            yield
        finally:
            with _held_guard:
                del _held[key]
            if os.name == "posix":  # removed while still locked, so no one can lock it in between
                path.unlink(missing_ok=True)
    finally:
        os.close(fd)
        if os.name != "posix":  # Windows cannot remove an open file
            with contextlib.suppress(OSError):
                path.unlink(missing_ok=True)


def _acquire(folder: Path, path: Path) -> int:
    """Open and lock ``path``; retry if the previous owner removed the file meanwhile."""
    for _ in range(100):
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
        if not _try_lock(fd):
            owner = _read_owner(fd)
            os.close(fd)
            raise FolderInUse(
                f"run folder {folder} is in use by another finetune run ({_describe(owner)}); "
                "wait for it to finish or choose another --out"
            )
        try:
            same = os.path.samestat(os.fstat(fd), os.stat(path))
        except FileNotFoundError:
            same = False
        if same or os.name != "posix":
            return fd
        os.close(fd)  # we locked a file its owner had just removed: lock the new one instead
    raise FolderInUse(f"could not lock run folder {folder}: its lock file keeps changing")
