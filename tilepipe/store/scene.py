"""The scene store: a sparse scene cut into overlapping tiles, in Zarr v3.

Layout, and why
---------------
``zarr.json`` attributes, key ``"tilepipe"``
    Self-description: format version, shape ``(rows, cols)``, bands, dtype,
    nodata, CRS (WKT), affine transform, tile size, halo, the source's identity
    and ``complete`` (false until ingest has written every tile).
``tiles``
    2-D array over the tile grid, one chunk per tile, dtype variable-length
    bytes. Each element is one tile's haloed window packed by
    :mod:`tilepipe.store.codec` (sparse COO, or dense when fuller than half).
    A worker reads one tile with one small read and nothing else; empty tiles
    are never written (the fill value is ``b""``). We chose this over
    fixed-dtype arrays per tile (metadata grows with the tile count: 10^5
    arrays for a large scene) and over one ragged array with an offsets index
    (compact, but parallel writers would share chunks unless written in two
    phases). zarr-python warns that this dtype has no v3 spec yet; the bytes
    inside are our own documented format, so the risk is limited to zarr's
    envelope, which is pinned by the format version.
``nnz``
    2-D int64 index over the tile grid: non-zero entries in each tile's window.
    It says which tiles are empty without reading any tile. One chunk covers a
    block of tiles; an ingest task owns exactly one block, so no two tasks ever
    write the same chunk. Its fill value is -1, "not written": a block's chunk
    is written last, after its tiles, so an absent chunk means the block was
    never finished (an ingest that was stopped resumes from exactly those) and
    never "empty". A tile is empty only where its written count is 0; a tile
    whose count is above 0 but whose chunk is absent is a damaged store.
``entries``
    int64 over the block grid, one chunk per block, fill -1: the values in the
    cores of the block's tiles (each scene value lies in exactly one core; the
    counts in ``nnz`` include the halo, so they cannot give this). Written just
    before the block's ``nnz`` chunk, so a finished block has both and a
    resumed ingest still knows the scene's total.

Every chunk carries a crc32c checksum (:func:`tilepipe.store._zarr.compressors`):
a flipped or truncated chunk file is an error naming the tile or block, never
wrong values.
"""

from __future__ import annotations

import contextlib
import os
from typing import Any

import numpy as np
import zarr

from tilepipe.errors import StoreError
from tilepipe.location import Location
from tilepipe.store._zarr import (
    SCENE_FORMAT_VERSION,
    chunk_problem,
    compressors,
    create_group,
    open_group,
    quiet_vlen,
    vlen_bytes_dtype,
)
from tilepipe.store.codec import TileData, decode_tile, encode_tile
from tilepipe.store.info import NOT_WRITTEN, SceneInfo, block_size_for

__all__ = ["NOT_WRITTEN", "SceneInfo", "SceneStore", "block_size_for"]

class SceneStore:
    """A scene store on disk (or at a URL). Cheap to open; nothing is read eagerly."""

    def __init__(self, location: Location, group: zarr.Group, attrs: dict[str, Any]) -> None:
        self.location = location
        self.path = str(location)
        self._group = group
        self._attrs = attrs
        self.info = SceneInfo.from_attrs(attrs)
        self._tiles: Any = None

    # -- creation -----------------------------------------------------------
    @classmethod
    def create(cls, path: str | os.PathLike[str] | Location, info: SceneInfo) -> SceneStore:
        """Create an empty, incomplete store at ``path`` (replacing whatever is there)."""
        location = Location.of(path)
        group = create_group(location)
        attrs = {"format_version": SCENE_FORMAT_VERSION, "kind": "scene", "complete": False, **info.to_attrs()}
        try:
            _create_arrays(group, attrs, info)
        except OSError as exc:  # a full disk, a folder made read-only: the user's to mend (on the client: chained)
            raise StoreError(f"{location}: cannot create the store: {exc.strerror or exc}") from exc
        return cls(location, group, attrs)

    @classmethod
    def open(
        cls, path: str | os.PathLike[str] | Location, *, require_complete: bool = True, mode: str = "r"
    ) -> SceneStore:
        """Open an existing scene store (``mode="r+"`` to write tiles); refuse one whose ingest did not finish."""
        location = Location.of(path)
        group, attrs = open_group(location, mode, kind="scene")
        if require_complete and not attrs.get("complete"):
            raise StoreError(f"{location}: the scene store is incomplete (its ingest did not finish); ingest again")
        return cls(location, group, attrs)

    def mark_complete(self, **extra: Any) -> None:
        """Record that every tile is written (the last step of an ingest)."""
        attrs = dict(self._group.attrs["tilepipe"])  # type: ignore[arg-type]
        attrs.update(extra)
        attrs["complete"] = True
        try:
            self._group.attrs["tilepipe"] = attrs
        except OSError as exc:  # as in create
            raise StoreError(f"{self.path}: cannot mark the store complete: {exc.strerror or exc}") from exc
        self._attrs = attrs

    @property
    def attrs(self) -> dict[str, Any]:
        """The store's ``tilepipe`` attributes."""
        return dict(self._attrs)

    # -- tiles --------------------------------------------------------------
    def _tile_array(self) -> Any:
        if self._tiles is None:
            with quiet_vlen():
                self._tiles = self._group["tiles"]
        assert self._tiles is not None
        return self._tiles

    def write_tile(self, row: int, col: int, shape: tuple[int, int, int], flat: np.ndarray, values: np.ndarray) -> None:
        """Write one tile's entries (sorted flat window indices, values); empty tiles are skipped."""
        if flat.size == 0:
            return
        cell = np.empty((1, 1), dtype=object)
        cell[0, 0] = encode_tile(shape, flat, values.astype(self.info.dtype, copy=False))
        problem = None
        try:
            self._tile_array()[row : row + 1, col : col + 1] = cell
        except OSError as exc:  # a full disk, a folder made read-only: the user's to mend
            problem = exc.strerror or str(exc)
        if problem is not None:  # unchained, as in read_tile
            raise StoreError(f"{self.path}: cannot write tile ({row}, {col}): {problem}")

    def read_tile(self, row: int, col: int) -> TileData | None:
        """One tile's window values, or None if the tile is empty.

        An absent tile chunk is "empty" only where the index says the tile holds
        0 entries (the index is read only then, so a tile with data costs one
        read); otherwise, and for a chunk that fails its checksum or does not
        decode, raises :class:`StoreError` naming the tile.
        """
        problem = None
        try:
            blob = self._tile_array()[row : row + 1, col : col + 1][0, 0]
            tile = decode_tile(bytes(blob), self.info.dtype) if blob else None
        except Exception as exc:  # noqa: BLE001 - any failure to read or decode a chunk is a damaged store
            problem = f"is corrupt ({exc})" if isinstance(exc, StoreError) else chunk_problem(exc)
        if problem is not None:  # raised here, unchained: zarr's and numcodecs' errors need not unpickle on a client
            raise StoreError(f"{self.path}: tile ({row}, {col}) {problem}; ingest again")
        if tile is not None:
            return tile
        expected = self._index_entry(row, col)
        if expected == 0:
            return None
        if expected > 0:
            raise StoreError(
                f"{self.path}: tile ({row}, {col}) is missing (its index says {expected} entries); ingest again"
            )
        raise StoreError(f"{self.path}: index block {self._block_of(row, col)} (tile ({row}, {col})) is missing; "
                         "ingest again")

    def write_index_block(self, block_row: int, block_col: int, counts: np.ndarray, entries: int) -> None:
        """Record one finished block: ``entries`` (values in its tiles' cores), then its tiles' counts.

        The counts are exactly one index chunk, written last: once it is there, the block is done.
        """
        by, bx = self.info.block
        r0, c0 = block_row * by, block_col * bx
        problem = None
        try:
            self._group["entries"][block_row, block_col] = entries  # type: ignore[index]
            self._group["nnz"][r0 : r0 + counts.shape[0], c0 : c0 + counts.shape[1]] = counts  # type: ignore[index]
        except OSError as exc:  # as in write_tile
            problem = exc.strerror or str(exc)
        if problem is not None:
            raise StoreError(f"{self.path}: cannot write index block ({block_row}, {block_col}): {problem}")

    def index(self) -> np.ndarray:
        """Non-zero entries per tile window, ``(tile_rows, tile_cols)`` int64.

        Entries of blocks not written yet are -1 (:data:`NOT_WRITTEN`); a store
        marked complete with such a block, or with an index chunk that fails
        its checksum, raises :class:`StoreError` naming the block.
        """
        nnz = self._read_index()
        if self._attrs.get("complete") and (nnz < 0).any():
            row, col = (int(v) for v in np.argwhere(nnz < 0)[0])
            raise StoreError(f"{self.path}: index block {self._block_of(row, col)} (tile ({row}, {col})) is "
                             "missing; ingest again")
        return nnz

    def blocks(self) -> list[tuple[int, int]]:
        """``(block_row, block_col)`` of every index chunk."""
        nby, nbx = _block_grid(self.info)
        return [(r, c) for r in range(nby) for c in range(nbx)]

    def unfinished_blocks(self) -> list[tuple[int, int]]:
        """Blocks whose ingest did not finish: entry count or index chunk absent, or failing its checksum.

        Two whole-array reads where every chunk reads; otherwise each block is
        judged on its own chunks (a damaged chunk is written again like an absent one).
        """
        by, bx = self.info.block
        # The usual case: every chunk reads, and two whole-array reads say it all. Where some chunk
        # is damaged, each block is judged on its own below.
        with contextlib.suppress(Exception):
            entries, nnz = self._block_entries(), np.asarray(self._group["nnz"][...])  # type: ignore[index]
            return [(br, bc) for br, bc in self.blocks()
                    if entries[br, bc] < 0 or (nnz[br * by : (br + 1) * by, bc * bx : (bc + 1) * bx] < 0).any()]
        todo = []
        for br, bc in self.blocks():
            try:
                written = int(self._group["entries"][br, bc])  # type: ignore[index, arg-type]
                counts = np.asarray(self._group["nnz"][br * by : (br + 1) * by, bc * bx : (bc + 1) * bx])  # type: ignore[index]
            except Exception:  # noqa: BLE001 - a damaged chunk of an unfinished ingest is written again
                todo.append((br, bc))
                continue
            if written < 0 or (counts < 0).any():
                todo.append((br, bc))
        return todo

    def entries_total(self) -> int:
        """Values in the scene (each counted in the one core that holds it), over the finished blocks."""
        entries = self._block_entries()
        return int(entries[entries > 0].sum())

    # -- index internals ----------------------------------------------------
    def _block_of(self, row: int, col: int) -> tuple[int, int]:
        by, bx = self.info.block
        return row // by, col // bx

    def _index_entry(self, row: int, col: int) -> int:
        problem = None
        try:
            value = int(self._group["nnz"][row, col])  # type: ignore[index, arg-type]
        except Exception as exc:  # noqa: BLE001 - a chunk that cannot be read is a damaged store
            problem = chunk_problem(exc)
        if problem is not None:  # unchained, as in read_tile
            raise StoreError(f"{self.path}: index block {self._block_of(row, col)} {problem}; ingest again")
        return value

    def _read_index(self) -> np.ndarray:
        with contextlib.suppress(Exception):  # some chunk is damaged: find it below, and name it
            return np.asarray(self._group["nnz"][...])  # type: ignore[index]
        by, bx = self.info.block
        for br, bc in self.blocks():
            self._index_entry(br * by, bc * bx)  # raises for the first chunk that cannot be read
        # Every chunk reads on its own: the whole read failed for another reason, raised as it is.
        return np.asarray(self._group["nnz"][...])  # type: ignore[index]

    def _block_entries(self) -> np.ndarray:
        problem = None
        try:
            return np.asarray(self._group["entries"][...])  # type: ignore[index]
        except Exception as exc:  # noqa: BLE001 - a chunk that cannot be read is a damaged store
            problem = chunk_problem(exc)
        raise StoreError(f"{self.path}: the block entry counts {problem}; ingest again")


def _block_grid(info: SceneInfo) -> tuple[int, int]:
    """Index chunks (blocks) per side ``(rows, cols)``."""
    ny, nx = info.grid.grid_shape
    by, bx = info.block
    return -(-ny // by), -(-nx // bx)


def _create_arrays(group: zarr.Group, attrs: dict[str, Any], info: SceneInfo) -> None:
    """Write the store's attributes and create its three empty arrays (see "Layout, and why" above)."""
    ny, nx = info.grid.grid_shape
    group.attrs["tilepipe"] = attrs
    with quiet_vlen():
        group.create_array(
            "tiles",
            shape=(ny, nx),
            chunks=(1, 1),
            dtype=vlen_bytes_dtype(),
            compressors=compressors(3),
            dimension_names=("tile_row", "tile_col"),
        )
    group.create_array(
        "nnz",
        shape=(ny, nx),
        chunks=info.block,
        dtype="int64",
        fill_value=NOT_WRITTEN,
        compressors=compressors(3),
        dimension_names=("tile_row", "tile_col"),
    )
    group.create_array(
        "entries",
        shape=_block_grid(info),
        chunks=(1, 1),
        dtype="int64",
        fill_value=NOT_WRITTEN,
        compressors=compressors(3),
        dimension_names=("block_row", "block_col"),
    )
