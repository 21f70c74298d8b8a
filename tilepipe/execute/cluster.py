"""Getting a Dask client: an existing scheduler by address, or an embedded LocalCluster."""

from __future__ import annotations

import importlib.util
import logging
import os
from collections.abc import Iterator
from contextlib import contextmanager

from distributed import Client, LocalCluster

from tilepipe.errors import ClusterError
from tilepipe.logs import current_log_file, route_process_logs

__all__ = ["connect", "resolve_address"]


def resolve_address(address: str | None) -> str | None:
    """The scheduler address to use: the argument, else ``DASK_SCHEDULER_ADDRESS``, else None."""
    return address or os.environ.get("DASK_SCHEDULER_ADDRESS") or None


@contextmanager
def connect(
    address: str | None = None,
    *,
    n_workers: int | None = None,
    threads_per_worker: int | None = None,
    gpu: bool = False,
    timeout: float = 15.0,
) -> Iterator[Client]:
    """Yield a client: to ``address`` (or ``DASK_SCHEDULER_ADDRESS``), else to an embedded cluster.

    The embedded cluster runs one single-threaded worker process per core
    (TensorFlow inside each is sized to one thread, so processes never
    oversubscribe the cores); with ``gpu`` each worker carries ``GPU=1``.
    """
    address = resolve_address(address)
    if address:
        try:
            client = Client(address, timeout=timeout)
        except Exception as exc:  # noqa: BLE001 - OSError, TimeoutError, TLS set-up errors (TypeError, ValueError)
            why = " ".join(str(exc).split()) or type(exc).__name__
            raise ClusterError(f"cannot reach the Dask scheduler at {address}: {why}") from None
        try:
            yield client
        finally:
            client.close()
        return
    cores = os.cpu_count() or 1
    threads = threads_per_worker or 1
    workers = n_workers or (1 if gpu else max(1, cores // threads))
    dashboard = ":0" if _has_bokeh() else None
    cluster = LocalCluster(
        n_workers=workers,
        threads_per_worker=threads,
        processes=True,
        host="127.0.0.1",
        dashboard_address=dashboard,
        resources={"GPU": 1} if gpu else None,
        silence_logs=logging.ERROR,
    )
    client = Client(cluster)
    log_file = current_log_file()
    if log_file is not None:
        # The workers are ours: their records (a failed task's traceback among them) go to the CLI's log file.
        client.run(route_process_logs, log_file)
    try:
        yield client
    finally:
        client.close()
        cluster.close()


def _has_bokeh() -> bool:
    return importlib.util.find_spec("bokeh") is not None
