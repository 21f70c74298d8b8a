"""The result store: the model's output as a dense, georeferenced Zarr v3 array.

Layout
------
``zarr.json`` attributes, key ``"tilepipe"``
    Format version, ``shape = (bands, rows, cols)``, CRS (WKT), affine
    transform of the output grid, ``complete`` (false until every tile is
    done), provenance (model sha256, halo, tile size, tilepipe version, scene
    store identity, run id) and the run report.
``data``
    float32 ``(band, y, x)``, one chunk per band and tile core, so every tile
    writes chunks of its own only: safe in parallel, and idempotent (a tile
    run twice writes the same bytes). The fill value is the model's response
    to an all-zero interior window (band 0), so empty interior tiles need no
    write at all.
``status``
    uint8 per tile: 0 not done, 1 computed, 2 empty. One chunk per block of
    tiles, written only by the client as tasks finish (a task that dies before
    its status is written is simply redone). A rerun resumes from it.
``y``, ``x``, ``band``
    Coordinates (pixel centres in CRS units) so ``xarray.open_zarr`` gives
    named, georeferenced axes.
"""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import zarr
from zarr.codecs import ZstdCodec

from tilepipe.errors import StoreError
from tilepipe.geometry import Window
from tilepipe.location import Location
from tilepipe.store._zarr import FORMAT_VERSION, create_group, open_group
from tilepipe.store.scene import block_size_for

__all__ = ["STATUS_COMPUTED", "STATUS_EMPTY", "STATUS_NOT_DONE", "ResultInfo", "ResultStore"]

STATUS_NOT_DONE = 0
STATUS_COMPUTED = 1
STATUS_EMPTY = 2


@dataclass(frozen=True, slots=True)
class ResultInfo:
    """What a result store says about itself: the one way its attributes are read.

    Attributes
    ----------
    shape : tuple of int
        ``(bands, rows, cols)`` of the output raster, pixels.
    transform : tuple of float
        The six affine coefficients (rasterio order) of the output grid.
    crs_wkt : str or None
        The scene's CRS as WKT.
    tile_size : tuple of int
        ``(rows, cols)`` of a tile core, pixels: the data array's chunk.
    identity : dict
        What makes two runs the same run (scene source and tiling, model sha256).
    provenance : dict
        The record of the run that made the store (model, footprint, version, run id, ...).
    complete : bool
        Whether every tile was written and checked.
    report : dict or None
        The last run's report (:meth:`tilepipe.execute.run.RunReport.to_dict`).
    """

    shape: tuple[int, int, int]
    transform: tuple[float, float, float, float, float, float]
    crs_wkt: str | None
    tile_size: tuple[int, int]
    identity: dict[str, Any] = field(default_factory=dict)
    provenance: dict[str, Any] = field(default_factory=dict)
    complete: bool = False
    report: dict[str, Any] | None = None

    @property
    def grid_shape(self) -> tuple[int, int]:
        """Tiles ``(rows, cols)`` over the output raster."""
        return (-(-self.shape[1] // self.tile_size[0]), -(-self.shape[2] // self.tile_size[1]))

    def to_attrs(self) -> dict[str, Any]:
        """JSON-ready ``tilepipe`` attributes."""
        return {
            "format_version": FORMAT_VERSION,
            "kind": "result",
            "shape": list(self.shape),
            "tile_size": list(self.tile_size),
            "crs_wkt": self.crs_wkt,
            "transform": list(self.transform),
            "complete": self.complete,
            "provenance": {**self.provenance, "identity": self.identity},
            "report": self.report,
        }

    @classmethod
    def from_attrs(cls, d: dict[str, Any], *, path: str = "", chunks: tuple[int, ...] | None = None) -> ResultInfo:
        """Inverse of :meth:`to_attrs`; ``chunks`` of the data array stand in for a missing tile size.

        Raises :class:`StoreError` naming ``path`` where a value is missing or malformed.
        """
        try:
            shape = tuple(int(v) for v in d["shape"])
            transform = tuple(float(v) for v in d["transform"])[:6]
            tile = d.get("tile_size") or (list(chunks[1:]) if chunks else None)
            tile_size = (int(tile[0]), int(tile[1])) if tile else (shape[1], shape[2])
        except (KeyError, TypeError, ValueError, IndexError) as exc:
            raise StoreError(
                f"{path}: the result store's attributes are malformed ({type(exc).__name__}: {exc})"
            ) from None
        if len(shape) != 3 or len(transform) != 6:
            raise StoreError(
                f"{path}: expected a (bands, rows, cols) shape and six transform coefficients, "
                f"got {d.get('shape')!r} and {d.get('transform')!r}"
            )
        crs_wkt = d.get("crs_wkt")
        if crs_wkt is not None and not isinstance(crs_wkt, str):
            raise StoreError(f"{path}: expected the CRS as a WKT string or null, got {crs_wkt!r}")
        provenance = d.get("provenance")
        provenance = dict(provenance) if isinstance(provenance, dict) else {}
        identity = provenance.pop("identity", None)
        report = d.get("report")
        return cls(
            shape=(shape[0], shape[1], shape[2]),
            transform=(transform[0], transform[1], transform[2], transform[3], transform[4], transform[5]),
            crs_wkt=crs_wkt,
            tile_size=tile_size,
            identity=dict(identity) if isinstance(identity, dict) else {},
            provenance=provenance,
            complete=d.get("complete") is True,
            report=report if isinstance(report, dict) else None,
        )


class ResultStore:
    """A result store; cheap to open, nothing read eagerly."""

    def __init__(self, location: Location, group: zarr.Group, info: ResultInfo) -> None:
        self.location = location
        self.path = str(location)
        self._group = group
        self.info = info
        self._data: Any = None
        self._status: Any = None

    @classmethod
    def create(cls, path: str | os.PathLike[str] | Location, info: ResultInfo, *, fill_value: float) -> ResultStore:
        """Create an empty, incomplete result store described by ``info`` (replacing whatever is at ``path``).

        ``fill_value`` is what unwritten data chunks read as: the model's response
        to an all-zero interior window, so empty interior tiles need no write.
        """
        location = Location.of(path)
        group = create_group(location)
        group.attrs["tilepipe"] = info.to_attrs()
        bands, rows, cols = info.shape
        group.create_array(
            "data",
            shape=info.shape,
            chunks=(1, *info.tile_size),
            dtype="float32",
            fill_value=float(fill_value),
            dimension_names=("band", "y", "x"),
            # Level 1: float outputs barely compress better at higher levels, and
            # writing is a fifth of a dense run's time at level 3.
            compressors=[ZstdCodec(level=1)],
        )
        group.create_array(
            "status",
            shape=info.grid_shape,
            # One chunk per block of tiles, written by the client alone as tasks finish.
            chunks=block_size_for(info.tile_size, info.grid_shape),
            dtype="uint8",
            fill_value=STATUS_NOT_DONE,
            dimension_names=("tile_row", "tile_col"),
        )
        a, b, c, d, e, f = info.transform
        if b == 0 and d == 0:
            ys = group.create_array("y", shape=(rows,), dtype="float64", dimension_names=("y",))
            ys[...] = f + e * (np.arange(rows) + 0.5)
            xs = group.create_array("x", shape=(cols,), dtype="float64", dimension_names=("x",))
            xs[...] = c + a * (np.arange(cols) + 0.5)
        bs = group.create_array("band", shape=(bands,), dtype="int32", dimension_names=("band",))
        bs[...] = np.arange(1, bands + 1)
        return cls(location, group, info)

    @classmethod
    def open(cls, path: str | os.PathLike[str] | Location, *, mode: str = "r+") -> ResultStore:
        """Open an existing result store and check its ``data`` array agrees with its attributes."""
        location = Location.of(path)
        group, attrs = open_group(location, mode, kind="result")
        data = group.get("data")
        if not isinstance(data, zarr.Array):
            raise StoreError(f"{location}: the result store has no 'data' array")
        info = ResultInfo.from_attrs(attrs, path=str(location), chunks=tuple(data.chunks))
        if tuple(data.shape) != info.shape:
            raise StoreError(
                f"{location}: 'data' has shape {tuple(data.shape)}, but the store says {info.shape} "
                "(expected (bands, rows, cols))"
            )
        if np.dtype(data.dtype) != np.float32:
            raise StoreError(f"{location}: 'data' holds {data.dtype}, expected float32")
        store = cls(location, group, info)
        store._data = data
        return store

    @property
    def attrs(self) -> dict[str, Any]:
        """The store's ``tilepipe`` attributes, as stored."""
        return self.info.to_attrs()

    @property
    def complete(self) -> bool:
        """Whether every tile is done."""
        return self.info.complete

    @property
    def data(self) -> Any:
        """The ``(band, y, x)`` float32 array."""
        if self._data is None:
            self._data = self._group["data"]
        return self._data

    @property
    def fill_value(self) -> float:
        """What unwritten chunks read as."""
        return float(self.data.fill_value)

    def _status_array(self) -> Any:
        if self._status is None:
            self._status = self._group["status"]
        return self._status

    def write_core(self, core: Window, values: np.ndarray) -> int:
        """Write one tile core, ``values`` as ``(rows, cols, bands)``; returns chunks written.

        Bands whose values all equal the fill value are not written: reading
        them already gives exactly those values.
        """
        fill = np.float32(self.fill_value)
        written = 0
        for band in range(values.shape[2]):
            plane = values[:, :, band]
            if np.all(plane == fill):
                continue
            self.data[band, core.row_start : core.row_stop, core.col_start : core.col_stop] = plane
            written += 1
        return written

    def write_status(self, status: np.ndarray) -> None:
        """Record the status of every tile at once, ``(tile_rows, tile_cols)`` uint8 (one write per chunk)."""
        self._status_array()[...] = np.asarray(status, dtype=np.uint8)

    def set_status(self, rows: np.ndarray, cols: np.ndarray, value: int) -> None:
        """Record the status of tiles at ``(rows[i], cols[i])`` (touches only their chunks)."""
        if len(rows):
            self._status_array().vindex[np.asarray(rows), np.asarray(cols)] = np.full(len(rows), value, np.uint8)

    def status(self) -> np.ndarray:
        """Status per tile, ``(tile_rows, tile_cols)`` uint8: ``STATUS_*``."""
        return np.asarray(self._status_array()[...])

    def finish(self, *, complete: bool, report: dict[str, Any]) -> None:
        """Record the run's report and whether the store is complete (the last write of a run)."""
        self.info = replace(self.info, complete=complete, report=report)
        self._group.attrs["tilepipe"] = self.info.to_attrs()
        if complete:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # zarr notes that consolidated metadata is not in the v3 spec yet
                zarr.consolidate_metadata(self._group.store)

    def mark_incomplete(self) -> None:
        """Record that the store is being written again (a resumed run)."""
        if self.info.complete:
            self.info = replace(self.info, complete=False)
            self._group.attrs["tilepipe"] = self.info.to_attrs()

    def read(self) -> np.ndarray:
        """The whole result as ``(band, y, x)``: for small results and tests only."""
        if not self.complete:
            raise StoreError(f"{self.path}: the result is incomplete: its run did not finish; run it again to resume")
        return np.asarray(self.data[...])

