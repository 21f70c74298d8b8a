"""Getting a Dask client, in one place: the caller's, an existing scheduler by address, or an embedded LocalCluster.

The API, the CLI, the workflow runner and the watcher all open their cluster with
:func:`connect`; what differs between them is only which options they pass.
"""

from __future__ import annotations

import importlib.util
import logging
import os
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from typing import Any

from distributed import Client, LocalCluster

from tilepipe.errors import ClusterError
from tilepipe.logs import current_log_file, route_process_logs, without_tensorflow_lines

__all__ = ["connect", "resolve_address", "worker_count"]


def resolve_address(address: str | None) -> str | None:
    """The scheduler address to use: the argument, else ``DASK_SCHEDULER_ADDRESS``, else None."""
    return address or os.environ.get("DASK_SCHEDULER_ADDRESS") or None


@contextmanager
def connect(
    address: str | None = None,
    *,
    client: Any = None,
    n_workers: int | None = None,
    threads_per_worker: int | None = None,
    memory_limit: str | float | None = "auto",
    gpu: bool = False,
    embedded: bool = True,
    quiet: bool = True,
    timeout: float = 15.0,
) -> Iterator[Any]:
    """Yield a ``distributed.Client``: ``client`` itself, else one to ``address``, else an embedded cluster's.

    Parameters
    ----------
    address
        A scheduler to join (``tcp://host:8786``); None: ``DASK_SCHEDULER_ADDRESS``
        where it is set, else an embedded ``LocalCluster`` is started.
    client
        A client the caller holds: yielded as it is, and left open.
    n_workers, threads_per_worker, memory_limit
        The embedded cluster's size (ignored when joining a scheduler): by default one
        single-threaded worker process per core (TensorFlow inside each is sized to its
        threads, so processes never oversubscribe the cores), one in all with ``gpu``;
        ``memory_limit`` per worker, as ``LocalCluster`` takes it (bytes, ``"4GiB"``, ``"auto"``).
    gpu
        Each embedded worker carries the ``GPU=1`` resource that model tasks ask for.
    embedded
        False: where no scheduler is given, yield None (the caller runs on local threads).
    quiet
        The embedded workers' TensorFlow start-up lines are not shown
        (:func:`tilepipe.logs.without_tensorflow_lines`); the caller's process is left alone.
    timeout
        Seconds to wait for a scheduler at ``address``.

    Raises
    ------
    ClusterError
        The scheduler at ``address`` cannot be reached.
    """
    if client is not None:
        yield client
        return
    address = resolve_address(address)
    if address:
        try:
            joined = Client(address, timeout=timeout)
        except Exception as exc:  # noqa: BLE001 - OSError, TimeoutError, TLS set-up errors (TypeError, ValueError)
            why = " ".join(str(exc).split()) or type(exc).__name__
            raise ClusterError(f"cannot reach the Dask scheduler at {address}: {why}") from None
        try:
            yield joined
        finally:
            joined.close()
        return
    if not embedded:
        yield None
        return
    cores = os.cpu_count() or 1
    threads = threads_per_worker or 1
    # The workers are started inside the block: they inherit the filtered stderr for their life.
    with without_tensorflow_lines() if quiet else nullcontext():
        cluster = LocalCluster(
            n_workers=n_workers or (1 if gpu else max(1, cores // threads)),
            threads_per_worker=threads,
            memory_limit=memory_limit,
            processes=True,
            host="127.0.0.1",
            dashboard_address=":0" if _has_bokeh() else None,
            resources={"GPU": 1} if gpu else None,
            silence_logs=logging.ERROR,
        )
    try:
        own = Client(cluster)
        log_file = current_log_file()
        if log_file is not None:
            # The workers are ours: their records (a failed task's traceback among them) go to the CLI's log file.
            own.run(route_process_logs, log_file)
        try:
            yield own
        finally:
            own.close()
    finally:
        cluster.close()


def worker_count(client: Any) -> int:
    """Worker processes on ``client``'s cluster now; None: this machine's cores (tasks on local threads)."""
    if client is None:
        return os.cpu_count() or 1
    return len(client.scheduler_info().get("workers", {}))


def _has_bokeh() -> bool:
    return importlib.util.find_spec("bokeh") is not None
