"""Models kept per process: loaded once by sha256 on workers, compiled once per model object.

A worker process loads a run's model the first time a task names it and keeps it
for every task after (and every later run of the same file). A ``keras.Model``
passed to :func:`tilepipe.conv_sparse` keeps its compiled shapes across calls.
"""

from __future__ import annotations

import threading
import weakref
from collections import OrderedDict
from typing import Any

from tilepipe.errors import ModelError
from tilepipe.model.loader import load_keras_model
from tilepipe.model.runner import CompiledModel
from tilepipe.sources.identity import content_sha256, short_identity

__all__ = ["compiled", "worker_model"]

#: Models a worker keeps loaded at once (a watcher may run several).
MAX_MODELS = 4

_LOCK = threading.Lock()
_BY_SHA: OrderedDict[str, CompiledModel] = OrderedDict()
_BY_OBJECT: weakref.WeakKeyDictionary[Any, CompiledModel] = weakref.WeakKeyDictionary()


def worker_model(path: str, sha256: str) -> CompiledModel:
    """The compiled model whose file has ``sha256``, loaded from ``path`` once per process."""
    with _LOCK:
        model = _BY_SHA.get(sha256)
        if model is not None:
            _BY_SHA.move_to_end(sha256)
            return model
        found = content_sha256(path)
        if found != sha256:
            raise ModelError(f"{path}: the model file changed since the run started "
                             f"(sha256 {short_identity(found)}...)")
        model = CompiledModel(load_keras_model(path))
        _BY_SHA[sha256] = model
        while len(_BY_SHA) > MAX_MODELS:
            _BY_SHA.popitem(last=False)
        return model


def compiled(keras_model: Any) -> CompiledModel:
    """The :class:`CompiledModel` of a ``keras.Model`` object, made once and kept while the object lives."""
    with _LOCK:
        model = _BY_OBJECT.get(keras_model)
        if model is None:
            model = CompiledModel(keras_model)
            _BY_OBJECT[keras_model] = model
        return model
