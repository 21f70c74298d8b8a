"""Loading Keras models safely.

Only Keras v3 ``.keras`` files, loaded with ``safe_mode=True`` (no pickled
Python, no Lambda layers); never ``.h5``. Files are identified by their sha256
(:func:`tilepipe.sources.identity.content_sha256`; :mod:`tilepipe.model.cache` keeps one
loaded model per sha256 and process).
"""

from __future__ import annotations

import os
import threading
import zipfile
from typing import Any

from tilepipe.errors import ModelError
from tilepipe.sources.identity import content_sha256

__all__ = ["MODEL_SUFFIX", "is_model_file", "load_keras_model", "model_sha256", "resolve_model"]

#: The one kind of model file tilepipe loads: Keras v3.
MODEL_SUFFIX = ".keras"

_LOCK = threading.Lock()


def is_model_file(path: str) -> bool:
    """Whether ``path`` names a Keras v3 model file by its suffix (:data:`MODEL_SUFFIX`); nothing is opened."""
    return path.endswith(MODEL_SUFFIX)


def model_sha256(path: str) -> str:
    """sha256 of a model file, after checking it is a readable ``.keras`` file."""
    _check_model_file(path)
    return content_sha256(path)


def _check_model_file(path: str) -> None:
    if not is_model_file(path):
        raise ModelError(f"{path}: expected a Keras v3 .keras file (.h5 and SavedModel are not accepted)")
    if not os.path.isfile(path):
        raise ModelError(f"{path}: no such model file")
    if not zipfile.is_zipfile(path):
        raise ModelError(f"{path}: not a Keras v3 .keras file (it is not a zip archive)")


def load_keras_model(path: str) -> Any:
    """Load a ``.keras`` model with ``safe_mode=True``; errors name the file."""
    _check_model_file(path)
    from tilepipe.model._tf import keras  # noqa: PLC0415 - TensorFlow starts only when a model is loaded

    with _LOCK:
        try:
            return keras.saving.load_model(path, compile=False, safe_mode=True)
        except Exception as exc:  # noqa: BLE001 - Keras raises many types for a bad file
            text = str(exc).strip().splitlines()
            why = text[0] if text else type(exc).__name__
    # Raised unchained, outside the except block: Keras' exception may not survive
    # pickling back from a Dask worker, and would turn this into a plain Exception.
    raise ModelError(f"{path}: cannot load the model: {why}")


def resolve_model(model: Any) -> Any:
    """A ``keras.Model`` from a model object or a ``.keras`` path."""
    if isinstance(model, (str, os.PathLike)):
        return load_keras_model(os.fspath(model))
    if not hasattr(model, "layers"):
        raise ModelError(f"model: expected a keras.Model or a .keras path, got {type(model).__name__}")
    return model
