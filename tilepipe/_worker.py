"""Which Dask worker this process is, if any: its name and its threads, asked in one place."""

from __future__ import annotations

import contextlib
import os

__all__ = ["worker_name", "worker_threads"]


def _this_worker() -> object | None:
    try:
        from distributed import Worker, get_worker  # noqa: PLC0415 - keeps `import tilepipe` free of distributed
    except ImportError:
        return None
    with contextlib.suppress(ValueError):  # not in a task's thread: see below
        return get_worker()
    # Task functions are unpickled (importing TensorFlow) outside the task's thread,
    # where get_worker() does not answer; the process's worker is still known.
    workers = list(getattr(Worker, "_instances", ()))
    return workers[0] if workers else None


def worker_name() -> str:
    """This worker's address, or ``"local"`` outside a Dask worker."""
    worker = _this_worker()
    return str(getattr(worker, "address", "local")) if worker is not None else "local"


def worker_threads() -> int:
    """Threads of this process's Dask worker (0 outside one), or ``$TILEPIPE_TF_THREADS`` when set."""
    if os.environ.get("TILEPIPE_TF_THREADS"):
        return int(os.environ["TILEPIPE_TF_THREADS"])
    worker = _this_worker()
    state = getattr(worker, "state", None)
    return int(getattr(state, "nthreads", 0)) if state is not None else 0
