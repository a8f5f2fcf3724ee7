"""A fixed-size pool of Ray actors that survives their deaths.

Tasks go to idle actors; when an actor's process dies (killed, its node lost), a fresh actor
takes its place and the task is redone, up to ``MAX_ATTEMPTS`` times per task. An actor out of
memory is reported at once, not retried: the same task would run out again. An error raised by
the task itself (a ``FinetuneError`` such as a missing image) reaches the driver unchanged.
"""

from __future__ import annotations

import weakref
from collections import deque
from collections.abc import Callable, Iterator, Sequence

from ..errors import FinetuneError
from .cluster import ClusterError

MAX_ATTEMPTS = 3


def _kill_all(ray, actors: list) -> None:
    if not ray.is_initialized():  # Ray already shut down (and ray.kill would start it again)
        return
    for actor in actors:
        try:
            ray.kill(actor)
        except Exception:  # already gone, or Ray shut down before us: nothing to free
            pass


def _out_of_memory(ray, error) -> bool:
    """Ray's memory monitor killed the worker (a kernel OOM kill looks like any other death)."""
    text = str(error).lower()
    return isinstance(error, ray.exceptions.OutOfMemoryError) or "low on memory" in text


class ActorPool:
    """``size`` actors made by ``make()``; ``run`` maps tasks over them, replacing dead ones."""

    def __init__(self, ray, make: Callable[[], object], size: int, log=None) -> None:
        self.ray = ray
        self.make = make
        self.log = log
        self.actors = [make() for _ in range(size)]
        self.restarts = 0
        self._finalizer = weakref.finalize(self, _kill_all, ray, self.actors)

    def close(self) -> None:
        self._finalizer()

    def run(
        self, tasks: Sequence[Callable[[object], object]], what: Callable[[int], str]
    ) -> Iterator[tuple[int, object]]:
        """Yield ``(task number, result)`` as tasks finish; ``tasks[i](actor)`` submits task
        ``i`` and returns its ObjectRef, ``what(i)`` names it in messages."""
        ray = self.ray
        queue = deque(range(len(tasks)))
        idle = deque(self.actors)
        pending: dict = {}
        attempts = [0] * len(tasks)
        while queue or pending:
            while queue and idle:
                i, actor = queue.popleft(), idle.popleft()
                attempts[i] += 1
                pending[tasks[i](actor)] = (i, actor)
            (ref,), _ = ray.wait(list(pending), num_returns=1)
            i, actor = pending.pop(ref)
            try:
                result = ray.get(ref)
            except ray.exceptions.RayTaskError as error:
                cause = error.cause
                if isinstance(cause, FinetuneError):
                    raise cause.with_traceback(None) from None
                if isinstance(cause, MemoryError):
                    raise ClusterError(f"a Ray worker ran out of memory on {what(i)}") from None
                raise ClusterError(f"a Ray worker failed on {what(i)}: {cause!r}") from None
            except (ray.exceptions.RayActorError, ray.exceptions.WorkerCrashedError) as error:
                if _out_of_memory(ray, error):
                    raise ClusterError(
                        f"a Ray worker ran out of memory on {what(i)}; use fewer workers per "
                        "machine or a smaller batch"
                    ) from None
                if attempts[i] >= MAX_ATTEMPTS:
                    raise ClusterError(
                        f"Ray workers died {attempts[i]} times on {what(i)} (killed, crashed or "
                        "out of memory; see `ray logs`); giving up"
                    ) from None
                idle.append(self._replace(actor))
                queue.appendleft(i)
                if self.log:
                    self.log(f"a Ray worker died during {what(i)}; replaced it and redoing that")
                continue
            idle.append(actor)
            yield i, result

    def _replace(self, dead) -> object:
        index = self.actors.index(dead)
        _kill_all(self.ray, [dead])
        self.actors[index] = self.make()
        self.restarts += 1
        return self.actors[index]
