"""Claims through a shared Dask scheduler: for watchers on several machines.

SQLite's locks do not reach across machines (and must not be used on a network file
system), so watchers on several machines, each with its own ledger, claim a scene on
the scheduler they share: a ``distributed.Lock`` named by the outputs' root and the
scene's identity, taken without waiting. A ``distributed.Lock`` is a one-lease
``Semaphore``: the holding client refreshes its lease, and a lease whose client died
runs out after ``distributed.scheduler.locks.lease-timeout`` (30 s by default), so a
killed watcher's scenes are free again without anyone's help.

The lock guards the check of the done marker beside the outputs, the run and the
marker's writing: whoever takes it second finds the marker and records the scene
as done elsewhere.
"""

from __future__ import annotations

import contextlib
from typing import Any

__all__ = ["SchedulerClaim"]


class SchedulerClaim:
    """A scene's lock on the scheduler of ``client``; :meth:`take` never waits."""

    def __init__(self, client: Any, root: str, name: str, identity: str) -> None:
        from distributed import Lock  # noqa: PLC0415 - only watchers on a shared scheduler need it

        self.name = f"tilepipe-watch:{root}:{name}@{identity}"
        self._lock = Lock(self.name, scheduler_rpc=client.scheduler, loop=client.loop)
        self._held = False

    def take(self) -> bool:
        """Take the lock if it is free; whether this watcher holds it now."""
        self._held = bool(self._lock.acquire(blocking=False))
        return self._held

    def release(self) -> None:
        """Give the lock back (where held; errors of a scheduler that went away are ignored)."""
        if self._held:
            self._held = False
            with contextlib.suppress(Exception):
                self._lock.release()
