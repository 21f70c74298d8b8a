"""One exception tree for tilepipe.

Every error a user can cause is a :class:`TilepipeError`. Each subclass also
inherits the builtin it refines, so ``except ValueError`` keeps working for
callers that do not know tilepipe. The CLI turns these into one line on stderr
and a non-zero exit; anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

from typing import Any

__all__ = [
    "TilepipeError",
    "InputError",
    "ModelError",
    "UntileableModelError",
    "StoreError",
    "WrongStoreKindError",
    "WorkflowError",
    "ClusterError",
    "IncompleteRunError",
    "WatchError",
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


class WrongStoreKindError(StoreError):
    """A store that is not the kind of tilepipe store asked for.

    ``found`` is the kind it is (``"scene"``, ``"result"``), or None where it is
    not a tilepipe store at all.
    """

    def __init__(self, message: str, found: str | None = None) -> None:
        super().__init__(message)
        self.found = found

    def __reduce__(self) -> Any:
        return (type(self), (str(self), self.found))


class WorkflowError(TilepipeError, ValueError):
    """A workflow file that does not parse into a valid workflow."""


class ClusterError(TilepipeError, RuntimeError):
    """A Dask cluster that cannot be reached or cannot do the work."""


class IncompleteRunError(TilepipeError, RuntimeError):
    """A run that ended with tiles not done. ``report`` is its :class:`~tilepipe.execute.run.RunReport`;
    the result store stays incomplete, and running again resumes it."""

    def __init__(self, message: str, report: Any = None) -> None:
        super().__init__(message)
        self.report = report

    def __reduce__(self) -> Any:
        return (type(self), (str(self), self.report))


class WatchError(StoreError):
    """The watcher itself failed (not one scene): what happened to a scene could not be recorded."""
