"""The result store: the model's output as a dense, georeferenced Zarr v3 group.

Layout (format 4)
-----------------
``zarr.json`` attributes, key ``"tilepipe"``
    Format version, ``shape = (bands, rows, cols)``, CRS (WKT), affine
    transform of the output grid, ``complete`` (false until every tile is
    done and checked), provenance (model sha256, halo, tile size, tilepipe
    version, scene store identity, run id) and the run report.
``band_1`` ... ``band_<bands>``
    One float32 ``(y, x)`` array per output band, one chunk per tile core, so
    every tile writes chunks of its own only: safe in parallel, and idempotent
    (a tile run twice writes the same bytes). Every chunk carries a crc32c
    checksum. Each array's fill value is its own band's response deep inside an
    all-zero scene: one array per band, because one Zarr array has one fill
    value, and an absent chunk must read right in every reader (xarray, zarr),
    not only in tilepipe's. :attr:`ResultStore.data` shows them as one
    ``(band, y, x)`` array.
``status``
    uint8 per tile: 0 not done, 1 computed, 2 empty, 3 free. Chunks of up to
    256 x 256 tiles, written only by the client as tasks finish (a task that
    dies before its status is written is simply redone). A rerun resumes from it.
    Its fill value is 3, free (format 4): a chunk of free tiles only is never
    written, so a continent of empty tiles costs no status files; every tile a
    run must do is recorded "not done" before any task starts.
``status_written``
    uint8 over the status chunk grid: 1 where a status chunk must exist. Its
    fill value is 1, so a lost record reads as "every chunk must exist": an
    absent status chunk is then called damage, never silently "all free".
``spatial_ref``, ``y``, ``x``
    CF georeferencing (:mod:`tilepipe.store._cf`): a grid mapping with the CRS
    (``crs_wkt``) and ``GeoTransform``, named by every band's ``grid_mapping``,
    and pixel-centre coordinates, so ``xarray.open_zarr`` gives variables whose
    ``rio.crs``, ``rio.transform()`` (rioxarray) and ``odc.geobox`` (odc-geo)
    are the result's grid.

Format 3 stores (status chunks of free tiles written too, status fill "not done")
and format 2 stores (one ``(band, y, x)`` array ``data`` with band 0's fill value
for every band, and a ``band`` coordinate) are still read, verified, exported and
resumed; a run writes format 4 (:data:`~tilepipe.store.info.FORMAT_VERSION`).

An absent chunk, and why it is never ambiguous
----------------------------------------------
A tile recorded *free* (an empty interior tile whose response in every band
is that band's fill value) is never written: its absent chunks read as exactly
its values. Every other done tile, *computed* or *empty*, writes the chunk of
every band, even one that equals the fill value (a compressed constant chunk
costs a few bytes). So for a done tile an absent chunk means one thing only:
the store is damaged. :meth:`ResultStore.verify` checks that against one
listing of the chunks, at the end of every run, on a rerun that would call the
store up to date, and before every export.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import os
import warnings
from collections.abc import Sequence
from dataclasses import replace
from typing import Any

import numpy as np
import zarr
from zarr.core.array_spec import ArrayConfigParams
from zarr.core.sync import sync

from tilepipe.errors import StoreError
from tilepipe.geometry import Window, tile_name
from tilepipe.location import Location
from tilepipe.store import _cf
from tilepipe.store._zarr import (
    FORMAT_VERSION,
    array_prefix,
    chunk_problem,
    compressors,
    create_group,
    decode_chunk_key,
    open_group,
)
from tilepipe.store.info import (
    LEGACY_FORMAT_VERSION,
    STATUS_COMPUTED,
    STATUS_EMPTY,
    STATUS_FREE,
    STATUS_NOT_DONE,
    ResultInfo,
    TileDamage,
)

_DONE_WRITTEN = (STATUS_COMPUTED, STATUS_EMPTY)

__all__ = [
    "LEGACY_FORMAT_VERSION",
    "STATUS_COMPUTED",
    "STATUS_EMPTY",
    "STATUS_FREE",
    "STATUS_NOT_DONE",
    "BandStack",
    "ResultInfo",
    "ResultStore",
    "TileDamage",
    "band_array_name",
    "chunks_touched",
    "status_chunks",
]

# zarr skips writing a chunk equal to the fill value (and deletes one already there) unless
# told otherwise: then an absent chunk would be ambiguous again. See the module docstring.
_WRITE_EVERY_CHUNK: ArrayConfigParams = {"write_empty_chunks": True}


#: The largest status chunk, in tiles a side: 64 KB of status, a few hundred chunks for a
#: grid of 16 million tiles.
_STATUS_CHUNK = 256


def status_chunks(grid_shape: tuple[int, int]) -> tuple[int, int]:
    """Tiles per status chunk ``(rows, cols)`` of a new result store over ``grid_shape`` tiles."""
    return min(grid_shape[0], _STATUS_CHUNK), min(grid_shape[1], _STATUS_CHUNK)


def chunks_touched(mask: np.ndarray, chunks: tuple[int, int]) -> np.ndarray:
    """Which chunks of ``chunks`` tiles hold a True of ``mask``, a bool mask over the chunk grid."""
    (ny, nx), (cy, cx) = mask.shape, chunks
    padded = np.zeros((-(-ny // cy) * cy, -(-nx // cx) * cx), bool)
    padded[:ny, :nx] = mask
    return np.asarray(padded.reshape(padded.shape[0] // cy, cy, padded.shape[1] // cx, cx).any(axis=(1, 3)))


def band_array_name(band: int) -> str:
    """The name of the Zarr array of zero-based ``band`` in a store of one array per band (format 3 and
    later): ``band_1``, ``band_2``, ..."""
    return f"band_{band + 1}"


class BandStack:
    """A result's bands as one float32 ``(band, y, x)`` array, whatever the store's layout.

    ``stack[b, rows, cols]`` reads band ``b`` (an int) or a slice of bands
    (stacked), ``rows`` and ``cols`` being ints or slices; assigning to
    ``stack[b, rows, cols]`` writes band ``b``. A format 3 or 4 store keeps band ``b`` in
    an array of its own (its own fill value), a format 2 store at index ``b`` of
    one ``(band, y, x)`` array: each band is a ``(zarr array, leading index)`` pair.
    ``shape`` and ``chunks`` are those of the ``(band, y, x)`` view.
    """

    def __init__(self, planes: Sequence[tuple[Any, tuple[int, ...]]], shape: tuple[int, int, int],
                 tile_size: tuple[int, int]) -> None:
        if len(planes) != shape[0]:
            raise ValueError(f"Expected {shape[0]} bands. Got {len(planes)} instead.")
        self._planes = tuple(planes)
        self.shape = shape
        self.chunks = (1, *tile_size)
        self.dtype = np.dtype(np.float32)
        self.ndim = 3

    def __len__(self) -> int:
        return self.shape[0]

    def array(self, band: int) -> tuple[Any, tuple[int, ...]]:
        """The Zarr array that holds ``band`` and the band's leading index in it (``()`` for its own array)."""
        return self._planes[band]

    def fill_value(self, band: int) -> float:
        """What an absent chunk of ``band`` reads as."""
        return float(self._planes[band][0].fill_value)

    def chunk_key(self, band: int, row: int, col: int) -> str:
        """The store key of band ``band``'s chunk of tile ``(row, col)`` (whatever the chunk key encoding)."""
        array, lead = self._planes[band]
        return array_prefix(array) + str(array.metadata.encode_chunk_key((*lead, row, col)))

    def arrays(self) -> list[Any]:
        """The distinct Zarr arrays that hold the bands."""
        seen: dict[str, Any] = {}
        for array, _ in self._planes:
            seen.setdefault(array_prefix(array), array)
        return list(seen.values())

    def _split(self, key: Any) -> tuple[Any, tuple[Any, Any]]:
        parts = key if isinstance(key, tuple) else (key,)
        if parts and parts[0] is Ellipsis:
            parts = (slice(None), *parts[1:])
        if len(parts) > 3 or any(p is Ellipsis for p in parts[1:]):
            raise IndexError(f"Expected (band, rows, cols) indices. Got {key!r} instead.")
        band, *rest = parts or (slice(None),)
        rest += [slice(None)] * (2 - len(rest))
        return band, (rest[0], rest[1])

    def __getitem__(self, key: Any) -> np.ndarray:
        band, (rows, cols) = self._split(key)
        if isinstance(band, slice):
            planes = [self[b, rows, cols] for b in range(*band.indices(self.shape[0]))]
            if planes:
                return np.stack(planes)
            return np.empty((0, *np.empty(self.shape[1:], np.bool_)[rows, cols].shape), np.float32)
        array, lead = self._planes[int(band)]
        return np.asarray(array[(*lead, rows, cols)])

    def __setitem__(self, key: Any, value: Any) -> None:
        band, (rows, cols) = self._split(key)
        if isinstance(band, slice):
            values = np.asarray(value, dtype=np.float32)
            for i, b in enumerate(range(*band.indices(self.shape[0]))):
                self[b, rows, cols] = values[i] if values.ndim == 3 else values
            return
        array, lead = self._planes[int(band)]
        array[(*lead, rows, cols)] = value

    def write(self, rows: slice, cols: slice, planes: np.ndarray) -> None:
        """Write ``planes`` ``(band, y, x)`` into every band's ``rows`` and ``cols``, the bands at once."""

        async def write_all() -> None:
            await asyncio.gather(*(
                array.async_array.setitem((*lead, rows, cols), plane)
                for (array, lead), plane in zip(self._planes, planes, strict=True)
            ))

        sync(write_all())


def _array(group: zarr.Group, name: str, location: Location) -> Any:
    """The group's array ``name``, set to write every chunk (see :data:`_WRITE_EVERY_CHUNK`)."""
    array = group.get(name)
    if not isinstance(array, zarr.Array):
        raise StoreError(f"{location}: the result store has no '{name}' array")
    return array.with_config(_WRITE_EVERY_CHUNK)


def _check_array(array: Any, name: str, shape: tuple[int, ...], location: Location, axes: str) -> None:
    if tuple(array.shape) != shape:
        raise StoreError(f"{location}: '{name}' has shape {tuple(array.shape)}, but the store says {shape} "
                         f"(expected {axes})")
    if np.dtype(array.dtype) != np.float32:
        raise StoreError(f"{location}: '{name}' holds {array.dtype}, expected float32")


class ResultStore:
    """A result store; cheap to open, nothing but metadata read eagerly."""

    def __init__(self, location: Location, group: zarr.Group, info: ResultInfo, bands: BandStack) -> None:
        self.location = location
        self.path = str(location)
        self._group = group
        self.info = info
        self._bands = bands
        self._status: Any = None

    @classmethod
    def create(
        cls, path: str | os.PathLike[str] | Location, info: ResultInfo, *, fill_values: Sequence[float]
    ) -> ResultStore:
        """Create an empty, incomplete result store described by ``info`` (replacing whatever is at ``path``).

        ``fill_values`` holds one value per band: what the chunks of free tiles
        (:data:`STATUS_FREE`) read as, the model's response to an all-zero interior
        window in that band. The store is written in :data:`FORMAT_VERSION`.
        """
        bands, rows, cols = info.shape
        fills = tuple(float(np.float32(v)) for v in fill_values)
        if len(fills) != bands:
            raise ValueError(f"Expected {bands} fill values, one per band. Got {len(fills)} instead.")
        info = replace(info, format_version=FORMAT_VERSION)
        location = Location.of(path)
        group = create_group(location)
        group.attrs["tilepipe"] = info.to_attrs()
        planes = []
        for band, fill in enumerate(fills):
            name = band_array_name(band)
            array = group.create_array(
                name,
                shape=(rows, cols),
                chunks=info.tile_size,
                dtype="float32",
                fill_value=fill,
                dimension_names=("y", "x"),
                # Level 1: float outputs barely compress better at higher levels, and
                # writing is a fifth of a dense run's time at level 3.
                compressors=compressors(1),
                attributes=_cf.variable_attrs(name),
                config=_WRITE_EVERY_CHUNK,
            )
            planes.append((array, ()))
        chunks = status_chunks(info.grid_shape)
        group.create_array(
            "status",
            shape=info.grid_shape,
            # Written by the client alone, as tasks finish.
            chunks=chunks,
            dtype="uint8",
            fill_value=STATUS_FREE,
            dimension_names=("tile_row", "tile_col"),
            compressors=compressors(1),
        )
        record = group.create_array(
            "status_written",
            shape=tuple(-(-n // c) for n, c in zip(info.grid_shape, chunks, strict=True)),
            chunks=tuple(-(-n // c) for n, c in zip(info.grid_shape, chunks, strict=True)),
            dtype="uint8",
            fill_value=1,
            dimension_names=("chunk_row", "chunk_col"),
            compressors=compressors(1),
        )
        record[...] = 0  # nothing must exist yet; once lost, the record says "everything"
        group.create_array(_cf.GRID_MAPPING, shape=(), dtype="int32", fill_value=0, dimension_names=(),
                           attributes=_cf.grid_mapping_attrs(info.crs_wkt, info.transform))
        axes = _cf.centres(info.transform, rows, cols)
        if axes is not None:  # a rotated grid has no 1-D coordinates: GeoTransform alone says where it is
            for name, values in zip(("y", "x"), axes, strict=True):
                coord = group.create_array(name, shape=values.shape, dtype="float64", dimension_names=(name,),
                                           compressors=compressors(1), attributes=_cf.axis_attrs(name))
                coord[...] = values
        return cls(location, group, info, BandStack(planes, info.shape, info.tile_size))

    @classmethod
    def open(cls, path: str | os.PathLike[str] | Location, *, mode: str = "r+") -> ResultStore:
        """Open an existing result store and check its band arrays agree with its attributes."""
        location = Location.of(path)
        group, attrs = open_group(location, mode, kind="result")
        info = ResultInfo.from_attrs(attrs, path=str(location))
        bands, rows, cols = info.shape
        planes: list[tuple[Any, tuple[int, ...]]] = []
        if info.format_version == LEGACY_FORMAT_VERSION:
            data = _array(group, "data", location)
            info = ResultInfo.from_attrs(attrs, path=str(location), chunks=tuple(data.chunks))
            _check_array(data, "data", info.shape, location, "(bands, rows, cols)")
            planes = [(data, (band,)) for band in range(bands)]
        else:
            for band in range(bands):
                name = band_array_name(band)
                array = _array(group, name, location)
                _check_array(array, name, (rows, cols), location, "(rows, cols)")
                planes.append((array, ()))
            chunks = tuple(int(v) for v in planes[0][0].chunks) if planes else info.tile_size
            if chunks != info.tile_size:
                raise StoreError(f"{location}: 'band_1' has chunks {chunks}, but the store says tiles of "
                                 f"{info.tile_size}")
        return cls(location, group, info, BandStack(planes, info.shape, info.tile_size))

    @property
    def attrs(self) -> dict[str, Any]:
        """The store's ``tilepipe`` attributes, as stored."""
        return self.info.to_attrs()

    @property
    def complete(self) -> bool:
        """Whether every tile is done."""
        return self.info.complete

    @property
    def data(self) -> BandStack:
        """Every band as one ``(band, y, x)`` float32 array (see :class:`BandStack`)."""
        return self._bands

    @property
    def fill_values(self) -> tuple[float, ...]:
        """What unwritten chunks read as, per band."""
        return tuple(self._bands.fill_value(band) for band in range(self.info.shape[0]))

    def _status_array(self) -> Any:
        if self._status is None:
            self._status = self._group["status"]
        return self._status

    def write_core(self, core: Window, values: np.ndarray) -> int:
        """Write one tile core, ``values`` as ``(rows, cols, bands)``; returns chunks written.

        Every band's chunk is written, one equal to the fill value too: an absent
        chunk of a done tile must mean a damaged store, never "the fill value"
        (see the module docstring).
        """
        planes = np.moveaxis(np.asarray(values, dtype=np.float32), 2, 0)
        self._bands.write(slice(core.row_start, core.row_stop), slice(core.col_start, core.col_stop), planes)
        return int(planes.shape[0])

    def copy_tile(self, source: tuple[int, int], targets: Sequence[tuple[int, int]]) -> None:
        """Give the tiles ``targets`` the chunks of tile ``source`` (written already), byte for byte.

        For tiles whose cores hold the same values in chunks of the same shape (empty tiles
        of one border class): their bytes are compressed and checksummed once, then copied,
        so a grid's perimeter costs writes, not compression.
        """
        from zarr.core.buffer import default_buffer_prototype  # noqa: PLC0415 - only runs that copy need it

        store = self._group.store_path.store

        async def copy_all() -> None:
            for band in range(len(self._bands)):
                key = self._chunk_key(band, *source)
                data = await store.get(key, prototype=default_buffer_prototype())
                if data is None:
                    raise StoreError(f"{self.path}: {tile_name(*source)} band {band}: its chunk "
                                     "is missing right after it was written; was the store removed while in use?")
                await asyncio.gather(*(store.set(self._chunk_key(band, r, c), data) for r, c in targets))

        sync(copy_all())

    @property
    def status_fill(self) -> int:
        """What an absent status chunk reads as: free (format 4), else not done."""
        return int(self._status_array().fill_value)

    @property
    def status_chunks(self) -> tuple[int, int]:
        """Tiles per status chunk ``(rows, cols)``."""
        return tuple(int(c) for c in self._status_array().chunks)  # type: ignore[return-value]

    def write_status(self, status: np.ndarray, chunks: np.ndarray | None = None) -> None:
        """Record the status of every tile, ``(tile_rows, tile_cols)`` uint8, rewriting only the status
        chunks ``chunks`` (a bool mask over the chunk grid; default: all of them).

        The chunks are written first, then the record of those that must exist: a run
        killed between the two leaves a chunk unlisted, never a listed chunk absent.
        """
        status = np.asarray(status, dtype=np.uint8)
        cy, cx = self.status_chunks
        todo = np.ones(self._chunk_grid(), bool) if chunks is None else chunks
        try:
            array = self._status_array()
            if todo.all():
                array[...] = status
            else:
                for r, c in np.argwhere(todo):
                    rows, cols = slice(r * cy, (r + 1) * cy), slice(c * cx, (c + 1) * cx)
                    array[rows, cols] = status[rows, cols]
            self._record_status_chunks(todo & chunks_touched(status != self.status_fill, (cy, cx)))
        except Exception as exc:  # zarr and its stores raise many types
            raise self._status_error(exc) from exc

    def _record_status_chunks(self, held: np.ndarray) -> None:
        """Add the chunks ``held`` (a bool mask over the chunk grid: chunks now holding a tile not free)
        to the record of those that must exist (format 4; earlier formats write every chunk)."""
        if "status_written" not in self._group:
            return
        record: Any = self._group["status_written"]
        listed = np.asarray(record[...]) == 1
        if (held & ~listed).any():
            record[...] = (listed | held).astype(np.uint8)

    def set_status(self, rows: np.ndarray, cols: np.ndarray, value: int) -> None:
        """Record the status of tiles at ``(rows[i], cols[i])`` (touches only their chunks)."""
        if len(rows):
            rows, cols = np.asarray(rows), np.asarray(cols)
            try:
                self._status_array().vindex[rows, cols] = np.full(len(rows), value, np.uint8)
                if value != self.status_fill:
                    cy, cx = self.status_chunks
                    held = np.zeros(self._chunk_grid(), bool)
                    held[rows // cy, cols // cx] = True
                    self._record_status_chunks(held)
            except Exception as exc:  # zarr and its stores raise many types
                raise self._status_error(exc) from exc

    def _chunk_grid(self) -> tuple[int, int]:
        """Status chunks per side ``(rows, cols)``."""
        (ny, nx), (cy, cx) = self.info.grid_shape, self.status_chunks
        return -(-ny // cy), -(-nx // cx)

    def _status_error(self, exc: BaseException) -> StoreError:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else f"{type(exc).__name__}: {exc}"
        gone = not isinstance(exc, OSError) or exc.errno in (errno.ENOENT, errno.ENOTDIR, None)
        hint = "; was the store removed or replaced while in use?" if gone else ""
        return StoreError(f"{self.path}: cannot record the status of its tiles ({reason}){hint}")

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

    def record_places(self, *, scene_store: str, result: str) -> None:
        """Record where the scene store and this store will be read from (a watcher's staged run is
        published elsewhere): the provenance's ``scene_store`` and the report's ``result``."""
        report = None if self.info.report is None else {**self.info.report, "result": result}
        self.info = replace(self.info, provenance={**self.info.provenance, "scene_store": scene_store},
                            report=report)
        self._group.attrs["tilepipe"] = self.info.to_attrs()
        if self.info.complete:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # zarr notes that consolidated metadata is not in the v3 spec yet
                zarr.consolidate_metadata(self._group.store)

    def mark_incomplete(self) -> None:
        """Record that the store is being written again (a resumed run)."""
        if self.info.complete:
            self.info = replace(self.info, complete=False)
            self._group.attrs["tilepipe"] = self.info.to_attrs()

    # -- integrity ----------------------------------------------------------
    def _chunk_key(self, band: int, row: int, col: int) -> str:
        """The store key of one data chunk (whatever the array's chunk key encoding)."""
        return self._bands.chunk_key(band, row, col)

    def _chunk_keys(self) -> set[str]:
        """The keys of every data chunk present, from one listing per band array (any zarr store)."""
        arrays = self._bands.arrays()
        store = self._group.store_path.store

        async def keys() -> set[str]:
            found: set[str] = set()
            for array in arrays:
                found.update([key async for key in store.list_prefix(array_prefix(array))])
            return found

        try:
            return sync(keys())
        except Exception as exc:  # any store failure: the store cannot be checked
            raise StoreError(f"{self.path}: cannot list the result's chunks: {exc}") from exc

    def damage(self, *, all_done: bool | None = None) -> list[TileDamage]:
        """Tiles whose stored chunks disagree with their status, in (row, col) order.

        Lists each band's chunks once and reads the status grid; the comparison is
        vectorised over the grid (millions of tiles cost milliseconds), and only the
        chunks present are looked at one by one. ``all_done`` (default: whether the
        store is marked complete) also reports tiles not done.
        """
        if all_done is None:
            all_done = self.complete
        try:
            status = self.status()
        except Exception as exc:  # a missing or unreadable status array
            raise StoreError(f"{self.path}: cannot read the status of its tiles: {exc}") from exc
        found = self._lost_status_chunks()
        written = np.isin(status, _DONE_WRITTEN)
        free = status == STATUS_FREE
        for band, present in enumerate(self._present()):
            found.extend(TileDamage(int(r), int(c), band, "missing", int(status[r, c]))
                         for r, c in np.argwhere(written & ~present))
            found.extend(TileDamage(int(r), int(c), band, "stray", STATUS_FREE) for r, c in np.argwhere(free & present))
        unknown = ~np.isin(status, (*_DONE_WRITTEN, STATUS_FREE, STATUS_NOT_DONE))
        found.extend(TileDamage(int(r), int(c), None, "unknown status", int(status[r, c]))
                     for r, c in np.argwhere(unknown))
        if all_done:
            problem = "not done" if self.complete else "unfinished"
            found.extend(TileDamage(int(r), int(c), None, problem, STATUS_NOT_DONE)
                         for r, c in np.argwhere(status == STATUS_NOT_DONE))
        found.sort(key=lambda d: (d.row, d.col, -1 if d.band is None else d.band))
        return found

    def _present(self) -> list[np.ndarray]:
        """Per band, which tiles have a data chunk: bool ``(tile_rows, tile_cols)``, from one listing per array."""
        keys = self._chunk_keys()
        grids = []
        for band in range(self.info.shape[0]):
            array, lead = self._bands.array(band)
            prefix = array_prefix(array)
            encoding = array.metadata.chunk_key_encoding
            grid = np.zeros(self.info.grid_shape, bool)
            for key in keys:
                if not key.startswith(prefix) or key.endswith((".partial", "zarr.json")):
                    continue
                try:
                    coords = decode_chunk_key(encoding, key[len(prefix):])
                except ValueError:  # not a chunk key
                    continue
                if coords[: len(lead)] == lead and len(coords) == len(lead) + 2:
                    grid[coords[-2], coords[-1]] = True
            grids.append(grid)
        return grids

    def _lost_status_chunks(self) -> list[TileDamage]:
        """The status chunks the record lists that are absent (format 4), each named by its first tile."""
        if "status_written" not in self._group:
            return []
        store = self._group.store_path.store
        status = self._status_array()
        prefix = array_prefix(status)

        async def keys() -> set[str]:
            return {key async for key in store.list_prefix(prefix)}

        try:
            listed = np.asarray(self._group["status_written"][...]) == 1  # type: ignore[index]
            present = sync(keys())
        except Exception as exc:
            raise StoreError(f"{self.path}: cannot read the record of its status chunks: {chunk_problem(exc)}") from exc
        cy, cx = self.status_chunks
        return [TileDamage(int(r) * cy, int(c) * cx, None, "status missing", STATUS_FREE)
                for r, c in np.argwhere(listed)
                if prefix + str(status.metadata.encode_chunk_key((int(r), int(c)))) not in present]

    def status_chunk_tiles(self, row: int, col: int) -> tuple[slice, slice]:
        """The tiles ``(rows, cols)`` of the status chunk that holds tile ``(row, col)``."""
        cy, cx = self.status_chunks
        return slice(row // cy * cy, (row // cy + 1) * cy), slice(col // cx * cx, (col // cx + 1) * cx)

    def still_here(self) -> None:
        """Raise :class:`StoreError` unless the store at this location is still the one opened here
        (not removed, not replaced by another run's: same run id)."""
        try:
            on_disk = ResultStore.open(self.location, mode="r").info
        except StoreError as exc:
            raise StoreError(f"{self.path}: the result store was removed or damaged while in use ({exc})") from None
        ours, theirs = self.info.provenance.get("run_id"), on_disk.provenance.get("run_id")
        if ours != theirs:
            raise StoreError(f"{self.path}: the result store was replaced by another run's (run id {theirs}, "
                             f"expected {ours}) while in use; run again")

    def verify(self, *, all_done: bool | None = None) -> None:
        """Check every tile's chunks against its status; raise :class:`StoreError` naming the first bad one.

        A done tile (computed or empty) must have every band's chunk; a free tile
        none; with ``all_done`` (default: whether the store is marked complete) every
        tile must be done; and the store at this location must still be this one (not
        removed or replaced by another run). Costs one listing of each band's chunks and
        one read of the status grid; chunk contents are checked (crc32c) when they are read.
        """
        self.still_here()
        found = self.damage(all_done=all_done)
        if found:
            more = f" (and {len(found) - 1} more)" if len(found) > 1 else ""
            raise StoreError(
                f"{self.path}: the result store is damaged: {found[0].describe()}{more}; "
                "run the model again (tilepipe run) to recompute it"
            )

    def reset(self, tiles: list[tuple[int, int]]) -> None:
        """Record ``(row, col)`` tiles as not done and remove their data chunks, so a run redoes them."""
        if not tiles:
            return
        store = self._group.store_path.store
        present = self._chunk_keys()  # one listing: a lost status chunk resets 65,536 tiles, most never written
        keys = [key for r, c in tiles for b in range(self.info.shape[0])
                if (key := self._chunk_key(b, r, c)) in present]

        async def delete() -> None:
            for key in keys:
                with contextlib.suppress(FileNotFoundError):
                    await store.delete(key)

        sync(delete())
        rows, cols = zip(*tiles, strict=True)
        self.set_status(np.array(rows), np.array(cols), STATUS_NOT_DONE)

    def read_error(self, exc: BaseException, band: int, window: Window | None = None) -> StoreError:
        """The error for a failed read of ``window`` (default: all) of ``band``, naming the bad tile.

        Reads the window's chunks one at a time to find the first that fails (its
        checksum, its decompression); called only after a read failed.
        """
        _, rows, cols = self.info.shape
        w = window or Window(0, rows, 0, cols)
        th, tw = self.info.tile_size
        for r in range(w.row_start // th, -(-w.row_stop // th)):
            for c in range(w.col_start // tw, -(-w.col_stop // tw)):
                try:
                    self.data[band, r * th : (r + 1) * th, c * tw : (c + 1) * tw]
                except Exception as tile_exc:  # noqa: BLE001 - zarr and its codecs raise many types
                    return StoreError(
                        f"{self.path}: {tile_name(r, c)} band {band}: its data chunk "
                        f"{chunk_problem(tile_exc)}; run again with overwrite (--overwrite) to recompute the result"
                    )
        return StoreError(
            f"{self.path}: cannot read band {band}, rows {w.row_start}..{w.row_stop}, "
            f"cols {w.col_start}..{w.col_stop}: {chunk_problem(exc)}"
        )

    def read(self) -> np.ndarray:
        """The whole result as ``(band, y, x)``, checked first: for small results and tests only."""
        if not self.complete:
            raise StoreError(f"{self.path}: the result is incomplete: its run did not finish; run it again to resume")
        self.verify()
        out = np.empty(self.info.shape, np.float32)
        for band in range(out.shape[0]):
            try:
                out[band] = self.data[band]
            except Exception as exc:  # zarr and its codecs raise many types
                raise self.read_error(exc, band) from exc
        return out

