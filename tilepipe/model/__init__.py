"""Everything that knows about Keras models: their footprint, loading and running them."""

from tilepipe.model import _tf  # noqa: F401  (first: TensorFlow is imported quietly there)
from tilepipe.model.loader import file_sha256, load_keras_model, model_sha256
from tilepipe.model.receptive import describe_footprint, footprint_of
from tilepipe.model.runner import CompiledModel, densify

__all__ = [
    "CompiledModel",
    "densify",
    "describe_footprint",
    "file_sha256",
    "footprint_of",
    "load_keras_model",
    "model_sha256",
]
