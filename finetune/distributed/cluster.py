"""Connecting to Ray: a local instance on this machine's cores, or an existing cluster.

``ray.init`` can wait minutes on an address nobody answers, so the address is first checked
with a plain socket connect (a few seconds at most). Ray's own logging stays out of the user's
terminal: workers' output is not forwarded to the driver and Ray logs only warnings.
"""

from __future__ import annotations

import logging
import os
import socket
import time
from urllib.parse import urlsplit

from ..errors import FinetuneError

CONNECT_TIMEOUT = 3.0  # seconds for the reachability check
DEFAULT_GCS_PORT = 6379  # `ray start --head` listens here
DEFAULT_CLIENT_PORT = 10001  # Ray Client (ray://)


class ClusterError(FinetuneError):
    """A Ray cluster could not be reached or used, or a worker failed for good."""


def check_cluster(cluster: str) -> None:
    """Fail in seconds, before any data or model loads, when ``cluster`` cannot be reached or
    Ray is not installed: ``ray.init`` itself can wait minutes on a dead address."""
    check_reachable(cluster)
    import_ray(cluster)


def import_ray(cluster: str = "local"):
    """The ``ray`` module, or a ClusterError saying how to install it."""
    if cluster != "local" and "RAY_AUTH_MODE" not in os.environ and _auth_token_available():
        # Ray 2.60 turns token authentication on by itself only for clusters it starts, and
        # reads the mode once, when first imported
        os.environ["RAY_AUTH_MODE"] = "token"
    try:
        import ray
    except ImportError:
        raise ClusterError(
            "training on Ray needs the ray package: pip install 'finetune[ray]'"
        ) from None
    return ray


def parse_address(cluster: str) -> tuple[str, int] | None:
    """``(host, port)`` to check before joining ``cluster``; ``None`` for "local" and "auto"."""
    if cluster in ("local", "auto"):
        return None
    if "://" in cluster:
        parts = urlsplit(cluster)
        if parts.scheme != "ray" or not parts.hostname:
            raise ClusterError(
                f"cluster address {cluster!r} is not understood; use 'local', host:port or "
                "ray://host:port"
            )
        try:
            return parts.hostname, parts.port or DEFAULT_CLIENT_PORT
        except ValueError:
            raise ClusterError(f"cluster address {cluster!r} has an invalid port") from None
    host, sep, port = cluster.rpartition(":")
    if not sep:
        return cluster, DEFAULT_GCS_PORT
    if not port.isdigit() or not 0 < int(port) < 65536 or not host:
        raise ClusterError(
            f"cluster address {cluster!r} is not understood; use 'local', host:port or "
            "ray://host:port"
        )
    return host.strip("[]"), int(port)


def check_reachable(cluster: str, timeout: float = CONNECT_TIMEOUT) -> None:
    """Raise ClusterError naming ``cluster`` unless something accepts a TCP connection there."""
    target = parse_address(cluster)
    if target is None:
        return
    try:
        with socket.create_connection(target, timeout=timeout):
            pass
    except OSError as error:
        reason = "timed out" if isinstance(error, TimeoutError) else error.strerror or error
        raise ClusterError(
            f"cannot reach the Ray cluster at {cluster} ({reason}); start it there with "
            "`ray start --head` or check the address and port"
        ) from None


def connect(cluster: str, num_cpus: int | None = None, log=None):
    """Join ``cluster`` ("local", "auto", host:port or ray://host:port) unless this process is
    already connected; returns the ``ray`` module."""
    parse_address(cluster)
    ray = import_ray(cluster)
    if ray.is_initialized():  # ray.init was called by the user, or by an earlier fit
        return ray
    check_reachable(cluster)
    options = dict(log_to_driver=False, logging_level=logging.ERROR)
    os.environ.setdefault("RAY_DEDUP_LOGS", "0")
    started = time.perf_counter()
    try:
        if cluster == "local":
            ray.init(
                address="local",  # a new instance, even where `ray start` left one running
                num_cpus=num_cpus or os.cpu_count(),
                include_dashboard=False,
                **options,
            )
        else:
            ray.init(address=cluster, **options)
    except (ConnectionError, RuntimeError, ValueError, TimeoutError) as error:
        hint = ""
        if cluster != "local" and not _auth_token_available():
            hint = (
                "; if the cluster uses token authentication, copy its ~/.ray/auth_token to this "
                "machine or set RAY_AUTH_TOKEN"
            )
        raise ClusterError(f"cannot join the Ray cluster at {cluster}: {error}{hint}") from None
    if log:
        cpus = int(ray.cluster_resources().get("CPU", 0))
        what = (
            "started a local Ray instance"
            if cluster == "local"
            else f"joined the Ray cluster at {cluster}"
        )
        log(f"{what} ({cpus} CPUs) in {time.perf_counter() - started:.1f} s")
    return ray


def _auth_token_available() -> bool:
    """A Ray authentication token is set or in its default file (``ray start`` writes one)."""
    if os.environ.get("RAY_AUTH_TOKEN"):
        return True
    path = os.environ.get("RAY_AUTH_TOKEN_PATH") or os.path.expanduser("~/.ray/auth_token")
    return os.path.isfile(path)


def worker_name() -> str:
    """Host and process id, to name the worker in messages."""
    return f"{socket.gethostname()} pid {os.getpid()}"
