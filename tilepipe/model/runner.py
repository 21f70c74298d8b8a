"""Calling a Keras model on tiles: compiled per window shape, batched.

A dilated Conv2D traced with ``reduce_retracing=True`` (shapes generalised to
None) fails on odd edge sizes (SpaceToBatchND, seen with TF 2.21), so we trace
one concrete function per exact batch shape. There are few: interior, edges and
corners, times the batch sizes in use.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import threading
from collections import OrderedDict
from typing import Any

import numpy as np

from tilepipe.errors import ModelError
from tilepipe.model._tf import tf

__all__ = ["CompiledModel", "auto_batch_size", "densify", "gpu_free_bytes"]


def densify(shape: tuple[int, ...], indices: np.ndarray, values: np.ndarray) -> Any:
    """Densify a batch given as COO through ``tf.SparseTensor`` -> ``tf.sparse.to_dense``.

    ``indices`` is ``(n, len(shape))`` int64; returns a float32 ``tf.Tensor``, which
    goes into the model as it is (``np.asarray`` of it is read-only).
    """
    st = tf.SparseTensor(indices=indices, values=values.astype(np.float32, copy=False), dense_shape=shape)
    return tf.sparse.to_dense(st, validate_indices=False)


class CompiledModel:
    """A Keras model wrapped in ``tf.function``, one concrete function per window shape.

    A window shape ``(rows, cols, bands)`` seen for the first time runs eagerly: most
    edge and corner windows occur once, and tracing them would cost more than it saves.
    A shape seen again is traced once, for any batch size (the batch axis is left
    unknown: only the spatial sizes must be concrete, see the module docstring), and
    kept (up to :data:`MAX_TRACES` shapes, least recently used dropped first).
    Thread-safe: a worker with several threads shares one instance.

    ``empty_cache`` holds the model's responses to all-zero windows, keyed by the
    caller; it shares the model's lock (:attr:`lock`) and lifetime.
    """

    def __init__(self, model: Any) -> None:
        self.model = model
        self._fns: OrderedDict[tuple[int, ...], Any] = OrderedDict()
        self._seen: set[tuple[int, ...]] = set()
        self.lock = threading.Lock()
        self.empty_cache: OrderedDict[object, np.ndarray] = OrderedDict()
        inputs = getattr(model, "inputs", None)
        self.in_channels: int | None = None
        if inputs:
            shape = tuple(inputs[0].shape)
            if len(shape) != 4:
                raise ModelError(f"model: expected a model taking images (N, H, W, C), got one taking {shape}")
            self.in_channels = None if shape[-1] is None else int(shape[-1])
        self.max_channels = _widest(model, self.in_channels or 1)

    def _fn(self, shape: tuple[int, ...], recurring: bool = False) -> Any:
        """The traced function for windows of ``shape = (rows, cols, bands)``, or None the first time a
        shape is seen (run it eagerly), unless it is ``recurring`` (traced at once)."""
        with self.lock:
            fn = self._fns.get(shape)
            if fn is not None:
                self._fns.move_to_end(shape)
                return fn
            if shape not in self._seen and not recurring:
                self._seen.add(shape)
                return None
            model = self.model

            def call(x: Any) -> Any:
                return model(x, training=False)

            spec = tf.TensorSpec((None, *shape), tf.float32)
            fn = tf.function(call, jit_compile=False).get_concrete_function(spec)
            self._fns[shape] = fn
            if len(self._fns) > MAX_TRACES:
                self._fns.popitem(last=False)
            return fn

    def __call__(self, batch: Any, *, recurring: bool = False) -> np.ndarray:
        """Run the model on ``batch`` of shape ``(N, rows, cols, bands)``: float32 numpy or a tf.Tensor.

        ``recurring``: the caller's shape comes back (a mosaic sheet's): traced at its first
        call rather than its second, which saves a large input's eager run.
        """
        if not isinstance(batch, tf.Tensor):
            batch = tf.constant(np.ascontiguousarray(batch, dtype=np.float32))
        fn = self._fn(tuple(batch.shape[1:]), recurring)
        out = self.model(batch, training=False) if fn is None else fn(batch)
        if isinstance(out, (list, tuple)):
            out = out[0]
        out = np.asarray(out)
        if out.ndim != 4:
            raise ModelError(f"model: expected images (N, H, W, C) out, got an output of shape {out.shape}")
        return out


#: Traced shapes kept per model (tile windows, block-sparse rectangles of a few dozen sides, times the
#: batch sizes in use).
MAX_TRACES = 256


def _widest(model: Any, default: int) -> int:
    """The most channels any layer outputs: what bounds a tile's activation memory."""
    widest = default
    for layer in getattr(model, "layers", []):
        try:
            channels = layer.output.shape[-1]
        except (AttributeError, ValueError):
            continue
        if isinstance(channels, int):
            widest = max(widest, channels)
    return widest


def gpu_free_bytes() -> int | None:
    """Free memory of the GPU this process uses, in bytes (None without a GPU or nvidia-smi)."""
    if not tf.config.list_physical_devices("GPU") or shutil.which("nvidia-smi") is None:
        return None
    index = (os.environ.get("CUDA_VISIBLE_DEVICES") or "0").split(",")[0]
    try:
        out = subprocess.run(
            ["nvidia-smi", "--query-gpu=memory.free", "--format=csv,noheader,nounits", "-i", index],
            capture_output=True, text=True, timeout=10, check=True,
        ).stdout
        return int(out.strip().splitlines()[0]) * 2**20
    except (OSError, subprocess.SubprocessError, ValueError, IndexError):
        return None


# Activation memory a CPU worker may spend on one model call: batching big tiles
# on a CPU saves little time and costs memory in proportion.
CPU_BATCH_BYTES = 512 * 2**20


def auto_batch_size(window: tuple[int, int], channels: int, free_bytes: int | None, *, cap: int = 64) -> int:
    """Tiles per model call that fit ``free_bytes`` of GPU memory (None: a CPU worker).

    A tile needs about four float32 activations of ``channels`` at once (the
    input, the layer's output, and the workspace convolutions use). On a GPU we
    take half the free memory, leaving room for TensorFlow's own buffers; on a
    CPU, :data:`CPU_BATCH_BYTES`.
    """
    budget = CPU_BATCH_BYTES if free_bytes is None else free_bytes // 2
    per_tile = window[0] * window[1] * channels * 4 * 4
    return int(max(1, min(cap, budget // max(per_tile, 1))))
