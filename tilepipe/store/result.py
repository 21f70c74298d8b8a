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
from typing import Any

import numpy as np
import zarr
from zarr.codecs import ZstdCodec

from tilepipe.errors import StoreError
from tilepipe.geometry import Window
from tilepipe.store._zarr import FORMAT_VERSION, local_path, open_group

__all__ = ["ResultStore", "STATUS_COMPUTED", "STATUS_EMPTY", "STATUS_NOT_DONE"]

STATUS_NOT_DONE = 0
STATUS_COMPUTED = 1
STATUS_EMPTY = 2


class ResultStore:
    """A result store; cheap to open, nothing read eagerly."""

    def __init__(self, path: str, group: zarr.Group, attrs: dict[str, Any]) -> None:
        self.path = path
        self._group = group
        self._attrs = attrs
        self._data: Any = None
        self._status: Any = None

    @classmethod
    def create(
        cls,
        path: str,
        *,
        shape: tuple[int, int, int],
        tile_size: tuple[int, int],
        grid_shape: tuple[int, int],
        fill_value: float,
        crs_wkt: str | None,
        transform: tuple[float, ...],
        provenance: dict[str, Any],
    ) -> ResultStore:
        """Create an empty, incomplete result store (replacing whatever is at ``path``)."""
        group = zarr.open_group(local_path(path), mode="w")
        attrs: dict[str, Any] = {
            "format_version": FORMAT_VERSION,
            "kind": "result",
            "shape": list(shape),
            "tile_size": list(tile_size),
            "crs_wkt": crs_wkt,
            "transform": list(transform),
            "complete": False,
            "provenance": provenance,
            "report": None,
        }
        group.attrs["tilepipe"] = attrs  # type: ignore[assignment]
        bands, rows, cols = shape
        group.create_array(
            "data",
            shape=shape,
            chunks=(1, *tile_size),
            dtype="float32",
            fill_value=float(fill_value),
            dimension_names=("band", "y", "x"),
            # Level 1: float outputs barely compress better at higher levels, and
            # writing is a fifth of a dense run's time at level 3.
            compressors=[ZstdCodec(level=1)],
        )
        from tilepipe.store.scene import block_size_for

        group.create_array(
            "status",
            shape=grid_shape,
            # One chunk per block of tiles, written by the client alone as tasks finish.
            chunks=block_size_for(tile_size, grid_shape),
            dtype="uint8",
            fill_value=STATUS_NOT_DONE,
            dimension_names=("tile_row", "tile_col"),
        )
        a, b, c, d, e, f = transform
        if b == 0 and d == 0:
            ys = group.create_array("y", shape=(rows,), dtype="float64", dimension_names=("y",))
            ys[...] = f + e * (np.arange(rows) + 0.5)
            xs = group.create_array("x", shape=(cols,), dtype="float64", dimension_names=("x",))
            xs[...] = c + a * (np.arange(cols) + 0.5)
        bs = group.create_array("band", shape=(bands,), dtype="int32", dimension_names=("band",))
        bs[...] = np.arange(1, bands + 1)
        return cls(path, group, attrs)

    @classmethod
    def open(cls, path: str | os.PathLike[str], *, mode: str = "r+") -> ResultStore:
        """Open an existing result store."""
        path = os.fspath(path)
        group, attrs = open_group(path, mode, kind="result")
        return cls(path, group, attrs)

    @property
    def attrs(self) -> dict[str, Any]:
        """The store's ``tilepipe`` attributes."""
        return dict(self._attrs)

    @property
    def complete(self) -> bool:
        """Whether every tile is done."""
        return bool(self._attrs.get("complete"))

    @property
    def data(self) -> Any:
        """The ``(band, y, x)`` float32 array."""
        if self._data is None:
            self._data = self._group["data"]
        assert self._data is not None
        return self._data

    @property
    def fill_value(self) -> float:
        """What unwritten chunks read as."""
        return float(self.data.fill_value)

    def _status_array(self) -> Any:
        if self._status is None:
            self._status = self._group["status"]
        assert self._status is not None
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

    def set_status(self, rows: np.ndarray, cols: np.ndarray, value: int) -> None:
        """Record the status of tiles at ``(rows[i], cols[i])`` (touches only their chunks)."""
        if len(rows):
            self._status_array().vindex[np.asarray(rows), np.asarray(cols)] = np.full(len(rows), value, np.uint8)

    def status(self) -> np.ndarray:
        """Status per tile, ``(tile_rows, tile_cols)`` uint8."""
        return np.asarray(self._status_array()[...])

    def update_attrs(self, **values: Any) -> None:
        """Merge ``values`` into the ``tilepipe`` attributes."""
        attrs = dict(self._group.attrs["tilepipe"])  # type: ignore[arg-type]
        attrs.update(values)
        self._group.attrs["tilepipe"] = attrs
        self._attrs = attrs

    def consolidate(self) -> None:
        """Write consolidated metadata, so readers (xarray) open the store with one read."""
        import warnings

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # zarr notes that consolidated metadata is not in the v3 spec yet
            zarr.consolidate_metadata(self._group.store)

    def read(self) -> np.ndarray:
        """The whole result as ``(band, y, x)``: for small results and tests only."""
        if not self.complete:
            raise StoreError(f"{self.path}: the result is incomplete: its run did not finish; run it again to resume")
        return np.asarray(self.data[...])
