"""The one place TensorFlow is started: quietly, sized to the worker, once per process.

Nothing happens on import of this module. :func:`start` imports TensorFlow and
Keras, sizes TensorFlow's thread pools to the Dask worker's threads (so worker
processes never oversubscribe the cores), turns on GPU memory growth, and starts
the eager context. ``from tilepipe.model._tf import tf, keras`` calls it.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import threading
from collections.abc import Iterator
from typing import Any

from tilepipe._worker import worker_threads
from tilepipe.logs import native_stderr

__all__ = ["start"]  # and, on first access, the modules ``tf`` and ``keras``

_log = logging.getLogger("tilepipe")
_LOCK = threading.Lock()
_STARTED: dict[str, Any] = {}


@contextlib.contextmanager
def _quiet_native_stderr() -> Iterator[None]:
    """Hide what is printed on fd 2 while TensorFlow starts (absl notes printed before its log
    level applies: oneDNN, "could not find cuda drivers", cuInit; collected by
    :func:`tilepipe.logs.native_stderr`); show it all if the start fails.
    ``TILEPIPE_TF_VERBOSE=1`` keeps it visible."""
    if os.environ.get("TILEPIPE_TF_VERBOSE"):
        yield
        return
    printed: list[str] = []
    try:
        with native_stderr(python_too=True) as printed:
            yield
    except BaseException:
        if sys.stderr is not None:
            sys.stderr.write("".join(f"{line}\n" for line in printed))
        raise


def _size_threads(tf: Any, threads: int) -> None:
    """Size the thread pools, which TensorFlow allows only before its runtime starts.

    A user's script that builds a model at module level has started it already in
    every spawned worker (workers re-import the main module): then the pools keep
    TensorFlow's sizes, and we say so once instead of failing.
    """
    try:
        tf.config.threading.set_intra_op_parallelism_threads(threads)
        tf.config.threading.set_inter_op_parallelism_threads(min(threads, 2))
    except RuntimeError:
        _log.warning(
            "TensorFlow was started in this process before tilepipe (by code run at import?): "
            "its thread pools keep their sizes instead of %d thread(s)", threads
        )


def start() -> Any:
    """Import and set up TensorFlow once in this process; returns the ``tensorflow`` module."""
    with _LOCK:
        if "tf" in _STARTED:
            return _STARTED["tf"]
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
        with _quiet_native_stderr():
            import keras  # noqa: PLC0415 - TensorFlow starts only when a model is needed
            import tensorflow as tf  # noqa: PLC0415 - as above

            threads = worker_threads()
            if threads:
                _size_threads(tf, threads)
            for gpu in tf.config.list_physical_devices("GPU"):  # CUDA is probed (and logs) once, here
                with contextlib.suppress(RuntimeError):  # the device was initialised before us
                    tf.config.experimental.set_memory_growth(gpu, True)
            tf.constant(0)  # the eager context starts here, quietly, not inside a task
        _STARTED.update(tf=tf, keras=keras)
        return tf


def __getattr__(name: str) -> Any:
    if name in ("tf", "keras"):
        start()
        return _STARTED[name]
    raise AttributeError(f"module 'tilepipe.model._tf' has no attribute {name!r}")
