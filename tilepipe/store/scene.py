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
``written`` (format 3)
    uint8 over the block grid, 1 where the block's ``nnz`` and ``entries``
    chunks were written. Only blocks whose tiles' windows can hold a value are
    ingested at all (the source says which: the points themselves, or a sparse
    GeoTIFF's empty blocks), so a scene of 400 occupied tiles on a grid of
    16 million writes a few hundred chunks, not millions, and reading its index
    reads only those. Written once, when the ingest completes, with the count
    of its ones in the attributes (``blocks_written``): an absent index chunk
    of a block the record lists is a damaged store, one it does not list is a
    block of empty tiles, and a lost or flipped record is an error too (its
    chunk's checksum, and its count).

Every chunk carries a crc32c checksum (:func:`tilepipe.store._zarr.compressors`):
a flipped or truncated chunk file is an error naming the tile or block, never
wrong values.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Sequence
from typing import Any

import numpy as np
import zarr

from tilepipe.errors import StoreError
from tilepipe.geometry import tile_name
from tilepipe.location import Location
from tilepipe.store._zarr import (
    SCENE_FORMAT_VERSION,
    Chunk,
    chunk_encoder,
    chunk_problem,
    compressors,
    create_group,
    open_group,
    present_chunks,
    quiet_vlen,
    read_many,
    vlen_bytes_dtype,
    write_many,
)
from tilepipe.store.codec import TileData, decode_tile, encode_tile
from tilepipe.store.info import NOT_WRITTEN, SceneInfo, block_size_for

__all__ = ["NOT_WRITTEN", "SceneInfo", "SceneStore", "TileEntries", "block_size_for"]

#: One tile's window entries as ingest writes them: ``(row, col, shape, flat, values)``.
TileEntries = tuple[int, int, tuple[int, int, int], np.ndarray, np.ndarray]

class SceneStore:
    """A scene store on disk (or at a URL). Cheap to open; nothing is read eagerly."""

    def __init__(self, location: Location, group: zarr.Group, attrs: dict[str, Any]) -> None:
        self.location = location
        self.path = str(location)
        self._group = group
        self._attrs = attrs
        self.info = SceneInfo.from_attrs(attrs)
        self._tiles: Any = None
        self._arrays: dict[str, Any] = {}
        self._encoders: dict[str, Any] = {}
        self._written: np.ndarray | None = None

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

    def mark_complete(self, written: np.ndarray | None = None, **extra: Any) -> None:
        """Record that every tile is written (the last step of an ingest).

        ``written``: the blocks that were ingested, a bool mask over the block grid
        (default: every block); the others hold only empty tiles.
        """
        attrs = dict(self._group.attrs["tilepipe"])  # type: ignore[arg-type]
        attrs.update(extra)
        attrs["complete"] = True
        try:
            if self.sparse_index:
                mask = np.ones(self.info.block_grid, bool) if written is None else np.asarray(written, bool)
                self._array("written")[...] = mask.astype(np.uint8)
                attrs["blocks_written"] = int(np.count_nonzero(mask))
            self._group.attrs["tilepipe"] = attrs
        except OSError as exc:  # as in create
            raise StoreError(f"{self.path}: cannot mark the store complete: {exc.strerror or exc}") from exc
        self._attrs = attrs

    @property
    def attrs(self) -> dict[str, Any]:
        """The store's ``tilepipe`` attributes."""
        return dict(self._attrs)

    @property
    def sparse_index(self) -> bool:
        """Whether only the blocks that hold data are written (format 3), not every block."""
        return int(self._attrs.get("format_version", 0)) >= 3

    def _array(self, name: str) -> Any:
        """One of the store's arrays, opened once (opening reads its metadata)."""
        if name not in self._arrays:
            self._arrays[name] = self._group[name]
        return self._arrays[name]

    def _write(self, name: str, chunk: tuple[int, ...], values: np.ndarray) -> Any:
        """The write of one whole chunk of array ``name`` for :func:`write_many`: its bytes where
        tilepipe encodes the array's codecs itself, else ``array[chunk's selection] = values``."""
        array = self._tile_array() if name == "tiles" else self._array(name)
        if name not in self._encoders:
            self._encoders[name] = chunk_encoder(array)
        encode = self._encoders[name]
        if encode is not None:
            return Chunk(array, chunk, encode(values))
        size = array.metadata.chunk_grid.chunk_shape
        selection = tuple(slice(c * n, c * n + min(n, dim - c * n)) for c, n, dim in zip(chunk, size, array.shape,
                                                                                        strict=True))
        return array, selection, values[tuple(slice(0, sel.stop - sel.start) for sel in selection)]

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
            raise StoreError(f"{self.path}: cannot write {tile_name(row, col)}: {problem}")

    def write_tiles(self, tiles: list[TileEntries], indices: Sequence[tuple[tuple[int, int], np.ndarray, int]] = ()
                    ) -> None:
        """:meth:`write_tile` for each ``(row, col, shape, flat, values)``, the chunks written concurrently; then,
        once every one of them is written, ``indices`` as :meth:`write_index_block` takes them:
        ``(block, counts, entries)`` each, also concurrently (a block is done once its index is there)."""
        cells = []
        for row, col, shape, flat, values in tiles:
            if flat.size:
                cell = np.empty((1, 1), dtype=object)
                cell[0, 0] = encode_tile(shape, flat, values.astype(self.info.dtype, copy=False))
                cells.append(self._write("tiles", (row, col), cell))
        last = [write for index in indices for write in self._index_writes(*index)]
        failed = write_many(cells, last)
        if failed is None:
            return
        if not isinstance(failed, OSError):
            raise failed
        problem = failed.strerror or str(failed)  # as in write_tile
        if len(indices) == 1:
            raise StoreError(f"{self.path}: cannot write index block {indices[0][0]} or its tiles: {problem}")
        if indices:
            blocks = ", ".join(str(index[0]) for index in indices)
            raise StoreError(f"{self.path}: cannot write index blocks {blocks} or their tiles: {problem}")
        raise StoreError(f"{self.path}: cannot write {len(cells)} tiles from {tile_name(*tiles[0][:2])}: {problem}")

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
            raise StoreError(f"{self.path}: {tile_name(row, col)} {problem}; ingest again")
        if tile is not None:
            return tile
        expected = self._index_entry(row, col)
        if expected == 0:
            return None
        if expected > 0:
            raise StoreError(
                f"{self.path}: {tile_name(row, col)} is missing (its index says {expected} entries); ingest again"
            )
        raise StoreError(f"{self.path}: index block {self._block_of(row, col)} ({tile_name(row, col)}) is missing; "
                         "ingest again")

    def write_index_block(self, block_row: int, block_col: int, counts: np.ndarray, entries: int) -> None:
        """Record one finished block: ``entries`` (values in its tiles' cores), then its tiles' counts.

        The counts are exactly one index chunk, written last: once it is there, the block is done.
        """
        failed = write_many(self._index_writes((block_row, block_col), counts, entries))
        if isinstance(failed, OSError):  # as in write_tile
            problem = failed.strerror or str(failed)
            raise StoreError(f"{self.path}: cannot write index block ({block_row}, {block_col}): {problem}")
        if failed is not None:
            raise failed

    def _index_writes(self, block: tuple[int, int], counts: np.ndarray, entries: int) -> list[Any]:
        """The writes of one block's index: its entry count and its tiles' counts (one chunk each; a block
        at the grid's edge is a chunk padded with the fill value, as Zarr stores it)."""
        chunk = np.full(self.info.block, NOT_WRITTEN, np.int64)
        chunk[: counts.shape[0], : counts.shape[1]] = counts
        return [self._write("entries", block, np.array([[entries]], np.int64)), self._write("nnz", block, chunk)]

    def index(self) -> np.ndarray:
        """Non-zero entries per tile window, ``(tile_rows, tile_cols)`` int64.

        Entries of blocks not written yet are -1 (:data:`NOT_WRITTEN`); a store
        marked complete with such a block, or with an index chunk that fails
        its checksum, raises :class:`StoreError` naming the block. A complete
        format 3 store reads only the blocks its record lists (the rest are 0).
        """
        if self.sparse_index and self._attrs.get("complete"):
            nnz = np.zeros(self.info.grid.grid_shape, np.int64)
            by, bx = self.info.block
            listed = [(int(br), int(bc)) for br, bc in np.argwhere(self.written_blocks())]
            for (br, bc), counts in zip(listed, self._read_blocks(listed), strict=True):
                nnz[br * by : (br + 1) * by, bc * bx : (bc + 1) * bx] = counts
        else:
            nnz = self._read_index()
        if self._attrs.get("complete") and (nnz < 0).any():
            row, col = (int(v) for v in np.argwhere(nnz < 0)[0])
            raise StoreError(f"{self.path}: index block {self._block_of(row, col)} ({tile_name(row, col)}) is "
                             "missing; ingest again")
        return nnz

    def written_blocks(self) -> np.ndarray:
        """Blocks whose index chunks were written, a bool mask over the block grid (a complete store).

        Every block in a format 2 store. Raises :class:`StoreError` where the record
        cannot be read or disagrees with the count the attributes keep.
        """
        if self._written is not None:
            return self._written
        if not self.sparse_index:
            self._written = np.ones(self.info.block_grid, bool)
            return self._written
        problem = None
        try:
            written = np.asarray(self._array("written")[...]) == 1
        except Exception as exc:  # noqa: BLE001 - a record that cannot be read is a damaged store
            problem = chunk_problem(exc)
        else:
            expected = self._attrs.get("blocks_written")
            if expected != int(np.count_nonzero(written)):
                problem = f"lists {int(np.count_nonzero(written))} blocks, but the store says {expected}"
        if problem is not None:  # unchained, as in read_tile
            raise StoreError(f"{self.path}: the record of written index blocks {problem}; ingest again")
        self._written = written
        return written

    def blocks(self) -> list[tuple[int, int]]:
        """``(block_row, block_col)`` of every index chunk."""
        nby, nbx = self.info.block_grid
        return [(r, c) for r in range(nby) for c in range(nbx)]

    def unfinished_blocks(self, occupied: np.ndarray | None = None) -> list[tuple[int, int]]:
        """Blocks of ``occupied`` whose ingest did not finish: entry count or index chunk absent, or failing
        its checksum.

        ``occupied``: the blocks to ingest, a bool mask over the block grid (default:
        every block). Where that is every block, two whole-array reads where every
        chunk reads; otherwise each block is judged on its own chunks (a damaged chunk
        is written again like an absent one), reading nothing of the other blocks.
        """
        return self.finished(occupied)[0]

    def finished(self, occupied: np.ndarray | None = None) -> tuple[list[tuple[int, int]], int]:
        """:meth:`unfinished_blocks`, and the values in the finished blocks' cores, from one read of each chunk."""
        by, bx = self.info.block
        if occupied is None or bool(np.all(occupied)):
            # The usual dense case: every chunk reads, and two whole-array reads say it all. Where
            # some chunk is damaged, each block is judged on its own below.
            with contextlib.suppress(Exception):
                entries, nnz = np.asarray(self._array("entries")[...]), np.asarray(self._array("nnz")[...])
                left = [(br, bc) for br, bc in self.blocks()
                        if entries[br, bc] < 0 or (nnz[br * by : (br + 1) * by, bc * bx : (bc + 1) * bx] < 0).any()]
                return left, int(entries[entries > 0].sum())
            candidates = self.blocks()
        else:
            candidates = [(int(r), int(c)) for r, c in np.argwhere(occupied)]
        totals = read_many(self._array("entries"), [(br, bc) for br, bc in candidates])
        counts = read_many(self._array("nnz"), [self._block_slices(br, bc) for br, bc in candidates])
        left, total = [], 0
        for block, written, nnz in zip(candidates, totals, counts, strict=True):
            # A damaged chunk of an unfinished ingest is written again, as an absent one is.
            if isinstance(written, BaseException) or isinstance(nnz, BaseException) or int(written) < 0 \
                    or (np.asarray(nnz) < 0).any():
                left.append(block)
            else:
                total += int(written)
        return left, total

    def missing_blocks(self, occupied: np.ndarray) -> list[tuple[int, int]]:
        """Blocks of ``occupied`` (a bool mask over the block grid) whose entry count or index chunk is absent.

        One listing of each array, no chunk read: what ingest checks once its tasks are
        done (a block lost after its write). :meth:`unfinished_blocks` also reads each chunk.
        """
        entries, nnz = present_chunks(self._array("entries")), present_chunks(self._array("nnz"))
        blocks = [(int(r), int(c)) for r, c in np.argwhere(occupied)]
        return [b for b in blocks if b not in entries or b not in nnz]

    def entries_total(self, occupied: np.ndarray | None = None) -> int:
        """Values in the scene (each counted in the one core that holds it), over the finished blocks
        (of ``occupied``, a bool mask over the block grid, where given: the others are not read)."""
        if occupied is None:
            entries = self._block_entries()
            return int(entries[entries > 0].sum())
        listed = [(int(br), int(bc)) for br, bc in np.argwhere(occupied)]
        total = 0
        for (br, bc), entry in zip(listed, read_many(self._array("entries"), listed), strict=True):
            if isinstance(entry, BaseException):
                raise StoreError(f"{self.path}: the entry count of block ({br}, {bc}) {chunk_problem(entry)}; "
                                 "ingest again")
            total += max(int(entry), 0)
        return total

    # -- index internals ----------------------------------------------------
    def _block_of(self, row: int, col: int) -> tuple[int, int]:
        by, bx = self.info.block
        return row // by, col // bx

    def _index_entry(self, row: int, col: int) -> int:
        if self.sparse_index and self._attrs.get("complete") and not self.written_blocks()[self._block_of(row, col)]:
            return 0  # a block the record does not list holds only empty tiles
        problem = None
        try:
            value = int(self._array("nnz")[row, col])
        except Exception as exc:  # noqa: BLE001 - a chunk that cannot be read is a damaged store
            problem = chunk_problem(exc)
        if problem is not None:  # unchained, as in read_tile
            raise StoreError(f"{self.path}: index block {self._block_of(row, col)} {problem}; ingest again")
        return value

    def _block_slices(self, br: int, bc: int) -> tuple[slice, slice]:
        by, bx = self.info.block
        return slice(br * by, (br + 1) * by), slice(bc * bx, (bc + 1) * bx)

    def _read_blocks(self, blocks: list[tuple[int, int]]) -> list[np.ndarray]:
        """:meth:`_read_block` of each block, read concurrently; raises for the first absent or damaged one."""
        counts = read_many(self._array("nnz"), [self._block_slices(br, bc) for br, bc in blocks])
        by, bx = self.info.block
        for (br, bc), got in zip(blocks, counts, strict=True):
            problem = None
            if isinstance(got, BaseException):
                problem = chunk_problem(got)
            elif (np.asarray(got) < 0).any():
                problem = f"({tile_name(br * by, bc * bx)}) is missing"
            if problem is not None:  # unchained, as in read_tile
                raise StoreError(f"{self.path}: index block ({br}, {bc}) {problem}; ingest again")
        return [np.asarray(c) for c in counts]

    def _read_index(self) -> np.ndarray:
        with contextlib.suppress(Exception):  # some chunk is damaged: find it below, and name it
            return np.asarray(self._array("nnz")[...])
        by, bx = self.info.block
        for br, bc in self.blocks():
            self._index_entry(br * by, bc * bx)  # raises for the first chunk that cannot be read
        # Every chunk reads on its own: the whole read failed for another reason, raised as it is.
        return np.asarray(self._array("nnz")[...])

    def _block_entries(self) -> np.ndarray:
        problem = None
        try:
            return np.asarray(self._array("entries")[...])
        except Exception as exc:  # noqa: BLE001 - a chunk that cannot be read is a damaged store
            problem = chunk_problem(exc)
        raise StoreError(f"{self.path}: the block entry counts {problem}; ingest again")


#: The largest side, in blocks, of one chunk of the ``written`` record (a million blocks: 1 MB).
_RECORD_CHUNK = 1024


def _create_arrays(group: zarr.Group, attrs: dict[str, Any], info: SceneInfo) -> None:
    """Write the store's attributes and create its empty arrays (see "Layout, and why" above)."""
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
        shape=info.block_grid,
        chunks=(1, 1),
        dtype="int64",
        fill_value=NOT_WRITTEN,
        compressors=compressors(3),
        dimension_names=("block_row", "block_col"),
    )
    group.create_array(
        "written",
        shape=info.block_grid,
        chunks=tuple(min(n, _RECORD_CHUNK) for n in info.block_grid),
        dtype="uint8",
        fill_value=0,
        compressors=compressors(3),
        dimension_names=("block_row", "block_col"),
    )
