"""The one place TensorFlow is imported, quietly, with threads sized on request."""

from __future__ import annotations

import contextlib
import os
import sys
import tempfile
from collections.abc import Iterator

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


@contextlib.contextmanager
def _quiet_native_stderr() -> Iterator[None]:
    """Hide what native code prints on fd 2 while TensorFlow starts (absl notes printed
    before its log level applies: oneDNN, "could not find cuda drivers", cuInit);
    show it all if the start fails. ``TILEPIPE_TF_VERBOSE=1`` keeps it visible."""
    if os.environ.get("TILEPIPE_TF_VERBOSE"):
        yield
        return
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as sink:
        os.dup2(sink.fileno(), 2)
        try:
            yield
        except BaseException:
            os.dup2(saved, 2)
            sink.seek(0)
            sys.stderr.write(sink.read().decode(errors="replace"))
            raise
        finally:
            os.dup2(saved, 2)
            os.close(saved)


def _worker_threads() -> int:
    """Threads of the Dask worker importing us (0 outside a worker), or $TILEPIPE_TF_THREADS."""
    if os.environ.get("TILEPIPE_TF_THREADS"):
        return int(os.environ["TILEPIPE_TF_THREADS"])
    try:
        from distributed import Worker, get_worker
    except ImportError:
        return 0
    with contextlib.suppress(ValueError):  # not in a task's thread: see below
        return int(get_worker().state.nthreads)
    # Task functions are unpickled (importing TensorFlow) outside the task's thread,
    # where get_worker() does not answer; the process's worker is still known.
    workers = list(getattr(Worker, "_instances", ()))
    return int(workers[0].state.nthreads) if workers else 0


with _quiet_native_stderr():
    import keras
    import tensorflow as tf

    # Thread pools can only be sized before the runtime starts, which the
    # probe below does; so size them now, from the worker we are imported in.
    _threads = _worker_threads()
    if _threads:
        tf.config.threading.set_intra_op_parallelism_threads(_threads)
        tf.config.threading.set_inter_op_parallelism_threads(min(_threads, 2))
    for _gpu in tf.config.list_physical_devices("GPU"):  # CUDA is probed (and logs) once, here
        with contextlib.suppress(RuntimeError):
            tf.config.experimental.set_memory_growth(_gpu, True)
    tf.constant(0)  # the eager context starts here, quietly, not inside a task

__all__ = ["configure_threads", "keras", "tf"]

_CONFIGURED: dict[str, int] = {"threads": _threads} if _threads else {}


def configure_threads(n: int) -> None:
    """Size TensorFlow's thread pools to ``n`` (the worker's threads), once per process.

    Without this every worker process starts a pool as large as the machine
    and processes oversubscribe the cores. TensorFlow accepts it only before
    its runtime starts; later calls are ignored.
    """
    if _CONFIGURED:
        return
    # TensorFlow refuses once its runtime is up (the model ran in this process before): keep going.
    with contextlib.suppress(RuntimeError):
        tf.config.threading.set_intra_op_parallelism_threads(max(1, n))
        tf.config.threading.set_inter_op_parallelism_threads(max(1, min(n, 2)))
    for gpu in tf.config.list_physical_devices("GPU"):
        with contextlib.suppress(RuntimeError):  # the device is already initialised
            tf.config.experimental.set_memory_growth(gpu, True)
    _CONFIGURED["threads"] = n
