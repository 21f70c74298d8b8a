"""The one place TensorFlow is imported, quietly, with threads sized on request."""

from __future__ import annotations

import contextlib
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras
import tensorflow as tf

__all__ = ["configure_threads", "keras", "tf"]

_CONFIGURED: dict[str, int] = {}


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
