"""Everything that knows about Keras models: footprints, loading, running, per-process state.

Importing this package does not start TensorFlow; its names load it on first use,
so a client that only submits work never pays for it. Its modules, low to high:
``_tf`` (starts TensorFlow) <- ``loader``, ``receptive``, ``runner`` <- ``cache``,
``responses`` <- ``facts``. Nothing here imports :mod:`tilepipe.execute`.
"""

from __future__ import annotations

import importlib
from typing import Any

__all__ = [
    "CompiledModel",
    "ModelFacts",
    "compiled",
    "densify",
    "empty_response",
    "footprint_of",
    "load_keras_model",
    "model_facts",
    "model_sha256",
    "resolve_model",
    "worker_model",
    "keras",
    "start_tensorflow",
    "zero_response_interior",
]

_LAZY = {
    "CompiledModel": "tilepipe.model.runner",
    "densify": "tilepipe.model.runner",
    "footprint_of": "tilepipe.model.receptive",
    "load_keras_model": "tilepipe.model.loader",
    "model_sha256": "tilepipe.model.loader",
    "resolve_model": "tilepipe.model.loader",
    "compiled": "tilepipe.model.cache",
    "worker_model": "tilepipe.model.cache",
    "empty_response": "tilepipe.model.responses",
    "zero_response_interior": "tilepipe.model.responses",
    "ModelFacts": "tilepipe.model.facts",
    "model_facts": "tilepipe.model.facts",
}

# Names whose home calls them otherwise: the Keras module (TensorFlow started first) and the one start.
_RENAMED = {"keras": ("tilepipe.model._tf", "keras"), "start_tensorflow": ("tilepipe.model._tf", "start")}


def __getattr__(name: str) -> Any:
    if name in _LAZY or name in _RENAMED:
        module, attr = _RENAMED.get(name, (_LAZY.get(name, ""), name))
        value = getattr(importlib.import_module(module), attr)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'tilepipe.model' has no attribute {name!r}")
