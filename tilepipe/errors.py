"""One exception tree for tilepipe.

Every error a user can cause is a :class:`TilepipeError`. Each subclass also
inherits the builtin it refines, so ``except ValueError`` keeps working for
callers that do not know tilepipe. The CLI turns these into one line on stderr
and a non-zero exit; anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

__all__ = [
    "TilepipeError",
    "InputError",
    "ModelError",
    "UntileableModelError",
    "StoreError",
    "WorkflowError",
    "ClusterError",
]


class TilepipeError(Exception):
    """Root of every error tilepipe raises on purpose."""


class InputError(TilepipeError, ValueError):
    """A source raster, SparseTensor or argument that cannot be used."""


class ModelError(TilepipeError, ValueError):
    """A model file or object that cannot be loaded or used."""


class UntileableModelError(ModelError):
    """A model with a layer that is not local, so no tiling can be exact."""


class StoreError(TilepipeError, OSError):
    """A scene or result store that is missing, incomplete or inconsistent."""


class WorkflowError(TilepipeError, ValueError):
    """A workflow file that does not parse into a valid workflow."""


class ClusterError(TilepipeError, RuntimeError):
    """A Dask cluster that cannot be reached or cannot do the work."""
