"""The one executor: a list of picklable tasks, run on a Dask client or on local threads.

Ingest and run both hand their work here. One place decides, for both:

- how tasks are submitted (keys unique per attempt: a resumed run is never handed
  an earlier attempt's answers by a scheduler that still remembers them),
- how progress is shown (one bar, in the units the caller counts),
- what a failure does: an error of the user's (:class:`TilepipeError`: a bad model,
  a bad store) stops everything, since every task would fail alike; any other
  failure of a task is counted, with the first one's message, and the rest go on
  when the caller tolerates failures, or stops everything when it does not,
- and how it stops: cancel what has not started, wait for what is running (so
  nothing writes into a store its caller is about to remove), then raise.
"""

from __future__ import annotations

import contextlib
import os
import time
import uuid
from collections.abc import Callable, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

from tilepipe.errors import TilepipeError
from tilepipe.progress import progress_bar

__all__ = ["Execution", "Task", "execute"]

R = TypeVar("R")

#: Seconds to wait for running tasks to end after a failure, before giving up on them.
_DRAIN_SECONDS = 60.0


@dataclass(frozen=True, slots=True)
class Task(Generic[R]):
    """One unit of work: ``fn(*args)``, counted as ``weight`` units of progress.

    ``priority``: higher runs first on a cluster. ``gpu``: only on workers that
    have the ``GPU`` resource.
    """

    fn: Callable[..., R]
    args: tuple[Any, ...]
    weight: int = 1
    priority: int = 0
    gpu: bool = False


@dataclass(slots=True)
class Execution:
    """How an execution went: tasks done and failed, the first failure, wall time in seconds."""

    done: int = 0
    failed: int = 0
    failed_weight: int = 0
    first_error: str | None = None
    wall_seconds: float = 0.0
    failures: list[str] = field(default_factory=list)


def execute(
    tasks: Sequence[Task[R]],
    on_result: Callable[[Task[R], R], None],
    *,
    client: Any = None,
    name: str,
    progress: bool = False,
    unit: str = "tile",
    total: int | None = None,
    initial: int = 0,
    tolerate_failures: bool = False,
) -> Execution:
    """Run ``tasks``, calling ``on_result(task, value)`` in this thread as each one finishes.

    Parameters
    ----------
    tasks
        The work; each task's ``fn`` and ``args`` must pickle where ``client`` is given.
    on_result
        Called once per successful task, in completion order, in the calling thread.
    client
        A ``distributed.Client``, or None for a pool of local threads (one per core).
    name
        Short name for task keys and the progress bar (``"run"``, ``"ingest"``).
    progress, unit, total, initial
        The progress bar: on or off, its unit, its total (default: the tasks'
        weights) and the units already done before (a resumed run).
    tolerate_failures
        Count a task's failure (other than a :class:`TilepipeError`) and go on;
        otherwise stop at the first one and raise it.
    """
    outcome = Execution()
    if not tasks:
        return outcome
    started = time.perf_counter()
    weight = sum(t.weight for t in tasks)
    bar = progress_bar(total if total is not None else weight + initial, name, unit, enabled=progress, initial=initial)
    run = _on_cluster if client is not None else _on_threads
    try:
        run(tasks, on_result, outcome, bar, client, name, tolerate_failures)
    finally:
        bar.close()
        outcome.wall_seconds = time.perf_counter() - started
    return outcome


def _settle(
    task: Task[R], value: Callable[[], R], on_result: Callable[[Task[R], R], None], outcome: Execution,
    bar: Any, tolerate: bool,
) -> None:
    """Take one finished task's value (or failure) into ``outcome``; raise what must stop the run."""
    try:
        result = value()
    except TilepipeError:
        raise
    except Exception as exc:
        if not tolerate:
            raise
        outcome.failed += 1
        outcome.failed_weight += task.weight
        message = f"{type(exc).__name__}: {exc}"
        outcome.first_error = outcome.first_error or message
        outcome.failures.append(message)
        return
    on_result(task, result)
    outcome.done += 1
    bar.update(task.weight)


def _on_cluster(
    tasks: Sequence[Task[R]], on_result: Callable[[Task[R], R], None], outcome: Execution, bar: Any,
    client: Any, name: str, tolerate: bool,
) -> None:
    from distributed import as_completed  # noqa: PLC0415 - runs without a cluster need no distributed

    attempt = uuid.uuid4().hex[:12]
    futures = {
        client.submit(
            task.fn, *task.args,
            key=f"tilepipe-{name}-{attempt}-{i}",
            pure=False,
            priority=task.priority,
            resources={"GPU": 1} if task.gpu else None,
            retries=1,
        ): task
        for i, task in enumerate(tasks)
    }
    try:
        for future in as_completed(futures):
            _settle(futures[future], future.result, on_result, outcome, bar, tolerate)
    except BaseException:
        # A cancelled task that a worker is already running goes on to its end (threads cannot be
        # stopped), and waiting on a cancelled future returns at once: so cancel everything, then ask
        # the workers themselves until none of them still runs one of these tasks.
        client.cancel(list(futures))
        with contextlib.suppress(Exception):
            _drain(client, {str(f.key) for f in futures})
        raise
    finally:
        # Forget the results: a long-lived client must not keep every task's answer.
        futures.clear()


def _drain(client: Any, ours: set[str]) -> None:
    """Wait until no worker holds one of ``ours`` in a state that runs or may still run.

    The scheduler has forgotten the cancelled keys when ``cancel`` returns, but its messages
    to the workers (a task to start, then the order to drop it) travel on another stream
    than this query: a task can be queued on a worker, or about to arrive there, when the
    query looks. So a task waiting on a worker counts as running, and the workers must be
    found quiet twice, a few batching intervals apart.
    """
    deadline = time.monotonic() + _DRAIN_SECONDS
    quiet = 0
    while quiet < 2 and time.monotonic() < deadline:
        held = {key for keys in client.run(_unfinished_keys).values() for key in keys}
        quiet = 0 if held & ours else quiet + 1
        time.sleep(0.05)


def _unfinished_keys(dask_worker: Any) -> list[str]:
    """Keys of this worker's tasks that run or may still run, cancelled ones included (runs on a worker)."""
    settled = ("memory", "error", "released", "forgotten")
    return [str(ts.key) for ts in dask_worker.state.tasks.values() if ts.state not in settled]


def _on_threads(
    tasks: Sequence[Task[R]], on_result: Callable[[Task[R], R], None], outcome: Execution, bar: Any,
    client: Any, name: str, tolerate: bool,
) -> None:
    del client, name  # local threads need no keys
    pool = ThreadPoolExecutor(max_workers=os.cpu_count() or 1, thread_name_prefix="tilepipe")
    futures: dict[Future[R], Task[R]] = {}
    try:
        # Higher priority first, as the scheduler would.
        for task in sorted(tasks, key=lambda t: -t.priority):
            futures[pool.submit(task.fn, *task.args)] = task
        pending = set(futures)
        while pending:
            finished, pending = wait(pending, return_when=FIRST_COMPLETED)
            for future in finished:
                _settle(futures[future], future.result, on_result, outcome, bar, tolerate)
    except BaseException:
        for future in futures:
            future.cancel()
        raise
    finally:
        pool.shutdown(wait=True)  # running tasks end before the caller cleans up
