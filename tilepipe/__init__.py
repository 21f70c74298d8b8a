"""tilepipe: Keras Conv2D models over huge, sparse scenes, tiled exactly, on Dask.

Importing tilepipe is cheap and changes nothing in the caller's process: TensorFlow
is started (by :func:`tilepipe.model._tf.start`, the one place that does) on first
use of a function that needs a model.

Dependency order, lower never imports higher (enforced by the import-linter contracts in
pyproject.toml; names on one line do not import each other)::

    _version, errors
      <- location, logs, progress, _worker   (paths and URLs, log capture, progress bars, worker facts)
      <- geometry
      <- store                 (scene and result stores: their metadata, readers and writers)
      <- sources               (inputs: GeoTIFFs, stacks, STAC items, points, synthetic scenes)
      <- model                 (footprints, loading, per-process caches; TensorFlow)
      <- plan, demo            (plan is pure: scene info + model facts + status -> RunPlan;
                                demo builds the demo models)
      <- execute               (one executor for ingest and run, on a Client or threads)
      <- api, conv, verify, export
      <- workflow <- workflow_runner <- watch <- cli <- __main__

A module whose name starts with ``_`` is imported only from inside its own package.
"""

from __future__ import annotations

import importlib
from typing import Any

from tilepipe._version import __version__
from tilepipe.errors import (
    ClusterError,
    InputError,
    ModelError,
    StoreError,
    TilepipeError,
    UntileableModelError,
    WorkflowError,
)

__all__ = [
    "ClusterError",
    "IncompleteRunError",
    "InputError",
    "ModelError",
    "RunReport",
    "StoreError",
    "TilepipeError",
    "UntileableModelError",
    "VerifyReport",
    "WorkflowError",
    "__version__",
    "conv_sparse",
    "export_geotiff",
    "footprint_of",
    "info",
    "ingest",
    "open_result",
    "open_scene",
    "quicklook",
    "run",
    "run_workflow",
    "verify_result",
]

_LAZY = {
    "conv_sparse": ("tilepipe.conv", "conv_sparse"),
    "export_geotiff": ("tilepipe.export", "export_geotiff"),
    "quicklook": ("tilepipe.export", "quicklook"),
    "footprint_of": ("tilepipe.model", "footprint_of"),
    "info": ("tilepipe.api", "info"),
    "ingest": ("tilepipe.api", "ingest"),
    "open_result": ("tilepipe.api", "open_result"),
    "open_scene": ("tilepipe.api", "open_scene"),
    "run": ("tilepipe.api", "run"),
    "RunReport": ("tilepipe.execute.run", "RunReport"),
    "IncompleteRunError": ("tilepipe.errors", "IncompleteRunError"),
    "run_workflow": ("tilepipe.workflow_runner", "run_workflow"),
    "verify_result": ("tilepipe.verify", "verify_result"),
    "VerifyReport": ("tilepipe.verify", "VerifyReport"),
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        module, attr = _LAZY[name]
        value = getattr(importlib.import_module(module), attr)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'tilepipe' has no attribute {name!r}")
