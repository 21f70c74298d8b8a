"""Everything that knows about Keras models: their footprint, loading and running them.

Importing this package does not start TensorFlow; its names load it on first use,
so a client that only submits work never pays for it.
"""

from __future__ import annotations

from typing import Any

__all__ = [
    "CompiledModel",
    "ModelFacts",
    "densify",
    "describe_footprint",
    "file_sha256",
    "footprint_of",
    "load_keras_model",
    "model_facts",
    "model_sha256",
]

_LAZY = {
    "CompiledModel": "tilepipe.model.runner",
    "densify": "tilepipe.model.runner",
    "describe_footprint": "tilepipe.model.receptive",
    "footprint_of": "tilepipe.model.receptive",
    "file_sha256": "tilepipe.model.loader",
    "load_keras_model": "tilepipe.model.loader",
    "model_sha256": "tilepipe.model.loader",
    "ModelFacts": "tilepipe.model.facts",
    "model_facts": "tilepipe.model.facts",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'tilepipe.model' has no attribute {name!r}")
