"""What a run needs to know about a model, worked out wherever TensorFlow is.

A client that submits work to a cluster need not load TensorFlow (about 600 MB
of memory): it asks a worker for these facts, and the worker keeps the model
loaded for the tasks that follow.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from tilepipe.errors import ModelError
from tilepipe.geometry import Footprint

__all__ = ["ModelFacts", "model_facts"]


@dataclass(frozen=True, slots=True)
class ModelFacts:
    """A model's footprint, channels and response to an all-zero interior window.

    ``interior`` holds one value per output band: what the model gives deep
    inside an empty scene of ``bands`` input bands. ``interior_uniform`` says
    that value holds at every pixel there; a strided model's may instead repeat
    with its stride (a transposed convolution), and then no empty tile is free.
    """

    sha256: str
    footprint: Footprint
    in_channels: int | None
    max_channels: int
    interior: tuple[float, ...]
    interior_uniform: bool = True


def model_facts(path: str, sha256: str, bands: int | None, name: str | None = None) -> ModelFacts:
    """Load (or reuse) the model at ``path`` in this process and describe it.

    With ``bands``, also check the model takes that many input bands and work out
    its response to zeros; without, the response is for the model's own input bands
    (ingest needs only the footprint, and the run that follows reuses the rest), and
    ``interior`` is empty where the model does not say how many it takes. ``name``: the
    model file as the user named it, said in a refusal of its layers (None: a model
    object, saved to ``path`` for the run).
    """
    # Imported here, where the facts are worked out: ModelFacts itself is for clients without TensorFlow.
    from tilepipe.model.cache import worker_model  # noqa: PLC0415 - keeps TensorFlow out of the client
    from tilepipe.model.receptive import footprint_of  # noqa: PLC0415 - as above
    from tilepipe.model.responses import zero_response_interior  # noqa: PLC0415 - as above

    compiled = worker_model(path, sha256)
    footprint = footprint_of(compiled.model, name=name)
    interior: tuple[float, ...] = ()
    uniform = True
    if bands is None:
        bands = compiled.in_channels
    elif compiled.in_channels is not None and compiled.in_channels != bands:
        raise ModelError(f"{path}: the model expects {compiled.in_channels} input bands, the scene has {bands}")
    if bands is not None:
        period = zero_response_interior(compiled, footprint, bands)
        interior = tuple(float(v) for v in period[0, 0])
        uniform = bool(np.all(period == period[:1, :1]))
    return ModelFacts(sha256, footprint, compiled.in_channels, compiled.max_channels, interior, uniform)
