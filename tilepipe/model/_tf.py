"""The one place TensorFlow is imported, quietly, with threads sized on request."""

from __future__ import annotations

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import tensorflow as tf  # noqa: E402

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
    try:
        tf.config.threading.set_intra_op_parallelism_threads(max(1, n))
        tf.config.threading.set_inter_op_parallelism_threads(max(1, min(n, 2)))
    except RuntimeError:
        pass  # the runtime is already up (e.g. the model ran in this process before)
    for gpu in tf.config.list_physical_devices("GPU"):
        try:
            tf.config.experimental.set_memory_growth(gpu, True)
        except RuntimeError:
            pass
    _CONFIGURED["threads"] = n
