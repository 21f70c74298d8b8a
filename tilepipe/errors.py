"""One exception tree for tilepipe.

Every error a user can cause is a :class:`TilepipeError`. Each subclass also
inherits the builtin it refines, so ``except ValueError`` keeps working for
callers that do not know tilepipe. The CLI turns these into one line on stderr
and a non-zero exit; anything else is a bug and keeps its traceback.

How messages read, across the package
-------------------------------------
- A :class:`TilepipeError` is one line led by the thing at fault, then what was
  expected and what was found: ``NAME: expected X, got Y`` (lower case, no full
  stop), NAME being the file, store, key path or argument (``in.tif: expected
  distinct band indexes, got 1, 1``; ``x.yaml: tiling.tile_size: expected an
  integer > 0, got -5``). A layer that knows a better NAME (the result store an
  argument did not fit) puts it in front: ``r.zarr: bands: expected ...``.
- A function that cannot know the NAME (a ``parse_*`` of a user's value, the tile
  codec) raises the rest, ``expected X, got Y``; its caller puts NAME in front
  (``tile_size: expected a tile size > 0, got 0``; ``s.zarr: tile (row 2, col 4)
  is corrupt (expected ..., got ...)``), as a :class:`TilepipeError`.
- A builtin error a value object raises on a broken invariant (a ``Window`` with
  stop < start, an index outside a ``TileGrid``) is a programming error, seen by
  programmers only: it keeps zarr's ``Expected X. Got Y instead.``.
- A tile is named ``tile (row R, col C)``, always by
  :func:`tilepipe.geometry.tile_name`.
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
