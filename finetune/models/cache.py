"""The cache of pretrained files: fetched once, streamed, retried, checked by sha256.

The bytes go to ``<file>.<pid>.part`` and are renamed into place only after their sha256 matches,
so the cache never holds a partial or wrong file. Connection errors, timeouts and 5xx answers are
retried with exponential backoff; a 4xx moves on to the next URL, and so does a host name that
does not resolve (no network: retrying cannot help, so offline is known in milliseconds).
"""

from __future__ import annotations

import hashlib
import os
import socket
import time
from collections.abc import Sequence
from pathlib import Path
from urllib.parse import urlsplit

import requests
from tqdm import tqdm

from ..errors import DownloadError

TIMEOUT = (10.0, 60.0)  # seconds to connect, seconds between bytes
RETRIES = 4  # attempts per URL
BACKOFF = 1.0  # seconds before the first retry, doubled after each
_CHUNK = 1 << 20
_BAR = "{desc}: {percentage:3.0f}%|{bar}| {n_fmt}B/{total_fmt}B [{elapsed}<{remaining}, {rate_fmt}]"

_verified: dict[tuple[str, int, int], str] = {}  # (path, mtime_ns, size) -> sha256


def cache_dir() -> Path:
    """``$FINETUNE_HOME`` if set, else ``~/.cache/finetune``."""
    home = os.environ.get("FINETUNE_HOME")
    return Path(home).expanduser() if home else Path.home() / ".cache" / "finetune"


def offline() -> bool:
    """True when ``FINETUNE_OFFLINE`` is set to anything but ``0``/empty."""
    return os.environ.get("FINETUNE_OFFLINE", "") not in ("", "0")


def sha256_of(path: Path) -> str:
    """The file's sha256, memoised by path, mtime and size so a cached file is hashed once."""
    stat = path.stat()
    key = (str(path.resolve()), stat.st_mtime_ns, stat.st_size)
    if key not in _verified:
        digest = hashlib.sha256()
        with open(path, "rb") as f:
            for chunk in iter(lambda: f.read(_CHUNK), b""):
                digest.update(chunk)
        _verified[key] = digest.hexdigest()
    return _verified[key]


def is_valid(path: Path, sha256: str, size: int | None = None) -> bool:
    """True when ``path`` exists with the expected size (checked first, cheaply) and sha256."""
    if not path.is_file() or (size is not None and path.stat().st_size != size):
        return False
    return sha256_of(path) == sha256


def fetch(
    urls: Sequence[str],
    dest: Path,
    sha256: str,
    size: int | None = None,
    progress: bool = True,
    timeout: float | tuple[float, float] | None = None,
    retries: int | None = None,
    backoff: float | None = None,
) -> Path:
    """Return ``dest`` holding the file with ``sha256``, downloading it from the first URL that
    answers unless a valid copy is already there. Raises ``DownloadError`` otherwise.
    ``timeout``, ``retries`` and ``backoff`` default to the module's ``TIMEOUT``, ``RETRIES``
    and ``BACKOFF``."""
    dest = Path(dest)
    timeout = TIMEOUT if timeout is None else timeout
    retries = RETRIES if retries is None else retries
    backoff = BACKOFF if backoff is None else backoff
    if is_valid(dest, sha256, size):
        return dest
    if offline():
        raise DownloadError(
            f"FINETUNE_OFFLINE is set, so {dest.name} was not downloaded. "
            f"{_by_hand(urls, dest, sha256, offline_hint=False)}"
        )
    try:
        dest.parent.mkdir(parents=True, exist_ok=True)
        return _download(urls, dest, sha256, size, progress, timeout, max(1, retries), backoff)
    except OSError as error:  # network errors were handled per URL; this is the file system
        raise DownloadError(
            f"cannot write {dest} ({error}); pass another folder or set FINETUNE_HOME"
        ) from error


def _download(urls, dest, sha256, size, progress, timeout, retries, backoff) -> Path:
    """Try each URL in turn; the first complete transfer is kept if its sha256 matches."""
    part = dest.with_name(f"{dest.name}.{os.getpid()}.part")  # one per process: no clashes
    failures: list[tuple[str, _Unreachable]] = []
    for url in urls:
        try:
            _stream(url, part, size, progress, timeout, retries, backoff)
        except _Unreachable as why:
            part.unlink(missing_ok=True)
            failures.append((url, why))
            continue
        got = sha256_of(part)
        if got != sha256:
            part.unlink()
            raise DownloadError(
                f"{url} sent a file with sha256 {got}, expected {sha256}; nothing was saved"
            )
        os.replace(part, dest)
        stat = dest.stat()
        _verified[(str(dest.resolve()), stat.st_mtime_ns, stat.st_size)] = got
        return dest
    if all(why.unresolved for _, why in failures):
        hosts = ", ".join(dict.fromkeys(urlsplit(url).hostname or url for url, _ in failures))
        reason = f"no network (cannot resolve {hosts})"
    else:
        reason = "; ".join(f"{url}: {why}" for url, why in failures)
    raise DownloadError(f"could not download {dest.name}: {reason}. {_by_hand(urls, dest, sha256)}")


class _Unreachable(Exception):
    """This URL did not deliver the file (after its retries); the next one may.
    ``unresolved``: its host name did not resolve, which no retry can change."""

    def __init__(self, why: str, unresolved: bool = False) -> None:
        super().__init__(why)
        self.unresolved = unresolved


def _stream(url, part, size, progress, timeout, retries, backoff) -> None:
    """Download ``url`` into ``part``; retry connection errors, short reads and 5xx answers,
    but not a host name that does not resolve."""
    for attempt in range(retries):
        if attempt:
            time.sleep(backoff * 2 ** (attempt - 1))
        try:
            with requests.get(url, stream=True, timeout=timeout) as response:
                if 400 <= response.status_code < 500:
                    raise _Unreachable(f"HTTP {response.status_code}")
                if response.status_code >= 500:
                    why = f"HTTP {response.status_code}"
                    continue
                response.raise_for_status()
                expected = int(response.headers.get("Content-Length", 0)) or size
                written = _write(response, part, expected, progress)
            if expected is not None and written < expected:
                why = f"truncated transfer, got {written} of {expected} bytes"
                continue
            return  # complete; a file of the wrong size then fails its sha256
        except requests.exceptions.ChunkedEncodingError:
            why = "truncated transfer, the connection broke mid-file"
        except requests.RequestException as error:
            if _name_not_resolved(error):
                host = urlsplit(url).hostname or url
                raise _Unreachable(
                    f"cannot resolve {host} (no network?)", unresolved=True
                ) from None
            why = _describe(error)
    raise _Unreachable(f"{why} (after {retries} attempts)")


def _causes(error: BaseException):
    """``error`` and everything that led to it: urllib3 hides the socket error two or three
    wrappers deep (``__cause__``, ``__context__``, ``reason``, or an argument)."""
    seen, stack = set(), [error]
    while stack:
        e = stack.pop()
        if id(e) in seen:
            continue
        seen.add(id(e))
        yield e
        linked = (e.__cause__, e.__context__, getattr(e, "reason", None), *e.args)
        stack.extend(x for x in linked if isinstance(x, BaseException))


def _name_not_resolved(error: BaseException) -> bool:
    """True when the request failed because the host name did not resolve (DNS)."""
    return any(isinstance(e, socket.gaierror) for e in _causes(error))


def _describe(error: requests.RequestException) -> str:
    """A short reason such as ``ConnectionError: Connection refused``, without urllib3's text."""
    if isinstance(error, requests.Timeout):
        return f"{type(error).__name__}: no answer in time"
    for e in _causes(error):
        if isinstance(e, OSError) and e.strerror:
            return f"{type(error).__name__}: {e.strerror}"
    return type(error).__name__


def _write(response: requests.Response, part: Path, total: int | None, progress: bool) -> int:
    """Stream the body into ``part`` under a progress bar in bytes (``12.5MB/44.7MB``)."""
    written = 0
    with open(part, "wb") as f, tqdm(
        total=total, unit="B", unit_scale=True, unit_divisor=1024, desc=part.name.rsplit(".", 2)[0],
        disable=not progress, bar_format=_BAR,
    ) as bar:  # fmt: skip
        for chunk in response.iter_content(_CHUNK):
            f.write(chunk)
            written += len(chunk)
            bar.update(len(chunk))
    return written


def _by_hand(urls: Sequence[str], dest: Path, sha256: str, offline_hint: bool = True) -> str:
    """How to supply the file without this download, on one line."""
    text = (
        f"Supply it yourself: download {urls[0]} elsewhere and save it as {dest} "
        f"(sha256 {sha256}), or pass the file (--model path/to/{dest.name} on the command line, "
        f"weights='path/to/{dest.name}' in Python), or set FINETUNE_MODEL_URL to a mirror you "
        "can reach"
    )
    return text + ("; FINETUNE_OFFLINE=1 skips the network" if offline_hint else "")
